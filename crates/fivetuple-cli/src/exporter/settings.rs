//! The `settings` collector: the per-namespace sysctls that set the port
//! budget, read from `/proc/sys/net/ipv4` on every scrape.

use std::sync::Arc;
use std::time::Instant;

use fivetuple_scan::{ScanError, Settings};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{gauge, RunLog};

/// Reads the settings of the calling thread's namespace.
pub type ReadSettings = fn() -> Result<Settings, ScanError>;

/// Exports `ip_local_port_range`, reserved ports and the TIME_WAIT reuse switches.
pub struct SettingsCollector {
    read: ReadSettings,
    log: Arc<RunLog>,
}

impl SettingsCollector {
    /// A collector that calls `read` on each scrape.
    pub fn new(read: ReadSettings, log: Arc<RunLog>) -> Self {
        SettingsCollector { read, log }
    }
}

impl std::fmt::Debug for SettingsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SettingsCollector")
    }
}

impl Collector for SettingsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let s = match (self.read)() {
            Ok(s) => s,
            Err(e) => {
                self.log.failed("settings", started, &e);
                return Ok(());
            }
        };
        let (lo, hi) = s.ip_local_port_range.bounds();
        gauge(
            &mut enc,
            "fivetuple_ip_local_port_range_low",
            "First port of net.ipv4.ip_local_port_range.",
            f64::from(lo),
        )?;
        gauge(
            &mut enc,
            "fivetuple_ip_local_port_range_high",
            "Last port of net.ipv4.ip_local_port_range.",
            f64::from(hi),
        )?;
        gauge(
            &mut enc,
            "fivetuple_ip_local_port_range_ports",
            "Ports in net.ipv4.ip_local_port_range.",
            f64::from(s.range_len()),
        )?;
        gauge(
            &mut enc,
            "fivetuple_ip_local_reserved_ports_in_range",
            "Ports of net.ipv4.ip_local_reserved_ports inside the local port range.",
            f64::from(s.reserved_in_range()),
        )?;
        gauge(
            &mut enc,
            "fivetuple_tcp_tw_reuse",
            "net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only.",
            f64::from(s.tcp_tw_reuse),
        )?;
        gauge(
            &mut enc,
            "fivetuple_tcp_tw_reuse_delay_seconds",
            "TIME_WAIT age before tcp_tw_reuse may reuse it (net.ipv4.tcp_tw_reuse_delay, 1 s before Linux 6.14).",
            f64::from(s.effective_tw_reuse_delay_ms()) / 1000.0,
        )?;
        gauge(
            &mut enc,
            "fivetuple_tcp_timestamps",
            "net.ipv4.tcp_timestamps: tcp_tw_reuse works only when not 0.",
            f64::from(s.tcp_timestamps),
        )?;
        gauge(
            &mut enc,
            "fivetuple_tcp_max_tw_buckets",
            "net.ipv4.tcp_max_tw_buckets: past this many TIME_WAIT sockets the kernel destroys new ones.",
            s.tcp_max_tw_buckets as f64,
        )?;
        self.log.ok("settings", started);
        Ok(())
    }
}

//! The `self` collector: how this scrape went (per collector success and
//! duration, recorded by the collectors that ran before it) and the
//! exporter's own footprint. Registered last, so it reports the scrape it
//! is part of.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::server::{Reason, Stats};
use super::{counter, counters_by, gauge, gauges, RunLog};

/// Exports `fivetuple_scrape_collector_*` and `fivetuple_exporter_*`.
pub struct SelfCollector {
    log: Arc<RunLog>,
    stats: Arc<Stats>,
}

impl SelfCollector {
    /// `stats` are the HTTP side's counters.
    pub fn new(log: Arc<RunLog>, stats: Arc<Stats>) -> Self {
        SelfCollector { log, stats }
    }
}

impl std::fmt::Debug for SelfCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfCollector")
    }
}

/// Resident set size from the second field of `/proc/self/statm` (pages).
fn rss_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then_some(pages * page as f64)
}

impl Collector for SelfCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let runs = self.log.take();
        let success: Vec<_> = runs
            .iter()
            .map(|r| {
                (
                    vec![("collector", r.name.to_string())],
                    if r.ok { 1.0 } else { 0.0 },
                )
            })
            .collect();
        let duration: Vec<_> = runs
            .iter()
            .map(|r| (vec![("collector", r.name.to_string())], r.seconds))
            .collect();
        if !runs.is_empty() {
            gauges(
                &mut enc,
                "fivetuple_scrape_collector_success",
                "Whether a collector succeeded in this scrape (1) or failed (0; its metrics are then absent).",
                &success,
            )?;
            gauges(
                &mut enc,
                "fivetuple_scrape_collector_duration_seconds",
                "How long a collector took in this scrape.",
                &duration,
            )?;
        }
        gauges(
            &mut enc,
            "fivetuple_exporter_build_info",
            "Version of the fivetuple exporter, as a label.",
            &[(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        if let Some(rss) = rss_bytes() {
            gauge(
                &mut enc,
                "fivetuple_exporter_resident_memory_bytes",
                "Resident memory of the exporter process.",
                rss,
            )?;
        }
        let st = &self.stats;
        let refused: Vec<(&str, u64)> = Reason::ALL
            .iter()
            .map(|r| (r.label(), st.refused(*r)))
            .collect();
        counters_by(
            &mut enc,
            "fivetuple_exporter_connections_refused",
            "Connections refused or closed before they were served: slots_full, peer_limit (every slot busy), evicted_idle (closed to make room), request_timeout (no request within the deadline), tls_failed.",
            "reason",
            &refused,
        )?;
        counter(
            &mut enc,
            "fivetuple_exporter_connections_accepted",
            "Connections accepted (before the slot check).",
            st.accepted.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "fivetuple_exporter_connections_open",
            "Connections holding a slot now.",
            st.open.load(Ordering::Relaxed) as f64,
        )?;
        counter(
            &mut enc,
            "fivetuple_exporter_scrapes_shared",
            "Scrapes answered from a scan that another concurrent scrape had started.",
            st.shared_scrapes.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "fivetuple_exporter_requests_unauthorized",
            "Requests answered 401 (no or wrong basic auth credentials).",
            st.unauthorized.load(Ordering::Relaxed),
        )
    }
}

//! The source-port budget: pure arithmetic over the settings, apart from
//! the prose that explains it (findings and advice live in
//! `fivetuple-scan`'s model, the lab's verdicts in `fivetuple-lab`).
//!
//! Capacity is counted per (local IP, remote IP, remote port): a plain
//! `connect()` shares ports across destinations and only the 4-tuple must
//! be unique (`__inet_hash_connect()`). A closed connection holds its
//! 4-tuple for [`TIME_WAIT_SECS`], so a destination sustains
//! `usable ports / hold time` new connections per second.

use std::net::IpAddr;

/// Linux TIME_WAIT length, `TCP_TIMEWAIT_LEN` (include/net/tcp.h): fixed at
/// compile time, whatever `tcp_fin_timeout` says.
pub const TIME_WAIT_SECS: f64 = 60.0;

/// The TIME_WAIT age before `tcp_tw_reuse` may reuse it when the kernel
/// has no `tcp_tw_reuse_delay` sysctl (before Linux 6.14): 1 s.
pub const DEFAULT_TW_REUSE_DELAY_MS: u32 = 1000;

/// The IPv4 form of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`); other
/// addresses unchanged. A dual-stack socket connecting to `::ffff:a.b.c.d`
/// is an IPv4 connection to the kernel (`tcp_v6_connect()` hands it to
/// `tcp_v4_connect()`): it takes its port from the same pool as an IPv4
/// socket to `a.b.c.d`.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Loopback, IPv4-mapped addresses included (127.0.0.0/8, `::1`,
/// `::ffff:127.x.y.z`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback(),
    }
}

/// Whether `connect()` may reuse a TIME_WAIT 4-tuple: `tcp_tw_reuse` is 1,
/// or 2 and both ends are loopback; and timestamps are on, because
/// `tcp_twsk_unique()` checks the old connection's `tw_ts_recent_stamp`.
pub fn tw_reuse_applies(tcp_tw_reuse: u32, tcp_timestamps: u32, both_loopback: bool) -> bool {
    tcp_timestamps != 0 && (tcp_tw_reuse == 1 || (tcp_tw_reuse == 2 && both_loopback))
}

/// How long a used port stays unavailable to a new connection to the same
/// destination, in seconds: the reuse delay (`tcp_tw_reuse_delay`, at
/// least 1 ms) when reuse applies, else the TIME_WAIT length.
pub fn port_hold_secs(reuse_applies: bool, reuse_delay_ms: u32) -> f64 {
    if reuse_applies {
        f64::from(reuse_delay_ms.max(1)) / 1000.0
    } else {
        TIME_WAIT_SECS
    }
}

/// New connections per second that `endpoints` usable (address, port)
/// pairs sustain when each is held `hold_secs` after use.
pub fn sustainable_rate(endpoints: f64, hold_secs: f64) -> f64 {
    endpoints / hold_secs
}

/// Ports left for `connect()`: the range's `range_len` ports minus the
/// `reserved` ones inside it minus `held` by listeners and binds, never
/// below 0.
pub fn usable_ports(range_len: u32, reserved: u32, held: u32) -> u32 {
    range_len.saturating_sub(reserved).saturating_sub(held)
}

/// Seconds until the free ports of a destination are gone at `rate` new
/// connections/s, net of the TIME_WAIT sockets freeing in the next 10 s
/// (`freeing_within_10s`). `Some(0.0)` when none is free already (capacity
/// 0 included); `None` when the rate is unknown or sustainable.
pub fn seconds_to_exhaustion(
    in_use: u32,
    capacity: u32,
    rate: Option<f64>,
    sustainable: f64,
    freeing_within_10s: u32,
) -> Option<f64> {
    if in_use >= capacity {
        return Some(0.0);
    }
    let rate = rate?;
    if rate <= sustainable || rate <= 0.0 {
        return None;
    }
    let free = f64::from(capacity.saturating_sub(in_use));
    let released = f64::from(freeing_within_10s) / 10.0;
    let net = if rate > released {
        rate - released
    } else {
        rate - sustainable
    };
    (net > 0.0).then(|| free / net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_table_budgets() {
        // DESIGN §1: Linux default 28,232 ports / 60 s is about 470/s.
        let r = sustainable_rate(28_232.0, port_hold_secs(false, 1000));
        assert!((r - 470.5).abs() < 0.1, "{r}");
        // Reuse on loopback: 1000 ports, 1 s delay, 1000/s.
        assert_eq!(sustainable_rate(1000.0, port_hold_secs(true, 1000)), 1000.0);
        assert_eq!(port_hold_secs(true, 0), 0.001, "delay 0 counts as 1 ms");
    }

    #[test]
    fn reuse_needs_timestamps_and_the_right_mode() {
        assert!(tw_reuse_applies(1, 1, false));
        assert!(tw_reuse_applies(2, 1, true));
        assert!(!tw_reuse_applies(2, 1, false));
        assert!(!tw_reuse_applies(1, 0, true), "timestamps off");
        assert!(!tw_reuse_applies(0, 1, true));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn exhaustion_arithmetic() {
        assert_eq!(usable_ports(100, 10, 95), 0);
        assert_eq!(seconds_to_exhaustion(0, 0, None, 0.0, 0), Some(0.0));
        assert_eq!(seconds_to_exhaustion(10, 100, None, 1.0, 0), None);
        assert_eq!(seconds_to_exhaustion(10, 100, Some(1.0), 1.5, 0), None);
        // 90 free, 10/s in, 2/s freeing: 90 / 8 s.
        assert_eq!(
            seconds_to_exhaustion(10, 100, Some(10.0), 1.5, 20),
            Some(11.25)
        );
    }
}

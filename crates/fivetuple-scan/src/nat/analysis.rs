//! The NAT arithmetic: per post-NAT destination, ports in use against the
//! capacity, utilization, net growth and time to exhaustion, the conntrack
//! failure counters over the interval, and the resulting severity. The
//! words (findings and advice) live in [`super::advice`].

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Capacity, CtTcpState, NatKey, NatSnapshot, StateCounts, Stats};
use crate::model::{Finding, Severity, Thresholds};
use crate::Baselines;

/// One post-NAT destination, analysed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatDestination {
    /// Post-NAT source and destination.
    #[serde(flatten)]
    pub key: NatKey,
    /// NAT ports held toward it: every conntrack entry, any state.
    pub in_use: u32,
    /// Of `in_use`, entries in `TIME_WAIT` or `CLOSE`: on Linux 6.4+ a new
    /// SYN may evict them when no other port is free (`nf_nat_used_tuple_harder()`).
    pub closing: u32,
    /// Entries per conntrack TCP state.
    pub states: StateCounts,
    /// What the NAT can hand out.
    pub capacity: Capacity,
    /// `in_use / capacity.ports`.
    pub utilization: f64,
    /// Net growth of `in_use` per second over the interval; `None` with one scan.
    pub growth_per_s: Option<f64>,
    /// Seconds until `in_use` reaches the capacity at that growth; `None`
    /// when it is not growing or there was one scan; 0 when full.
    pub seconds_to_exhaustion: Option<f64>,
    /// Against the thresholds.
    pub severity: Severity,
}

/// Conntrack's failure counters, with their rise over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConntrackCounters {
    /// The counters of the second scan.
    #[serde(flatten)]
    pub stats: Stats,
    /// Rise of `insert_failed` over the interval; `None` with one scan.
    pub insert_failed_delta: Option<u64>,
    /// Rise of `drop` over the interval.
    pub drop_delta: Option<u64>,
    /// Rise of `early_drop` over the interval.
    pub early_drop_delta: Option<u64>,
    /// `count / max`: how full the conntrack table is.
    pub table_fill: f64,
}

/// The NAT view of a namespace, analysed.
#[derive(Debug, Clone, Serialize)]
pub struct NatAnalysis {
    /// Worst severity of the destinations and findings.
    pub status: Severity,
    /// Destinations, worst first (severity, then utilization).
    pub destinations: Vec<NatDestination>,
    /// The conntrack counters; `None` when they could not be read.
    pub conntrack: Option<ConntrackCounters>,
    /// Source-NATed TCP entries seen.
    pub snat_entries: u64,
    /// The NAT rules found.
    pub rules: Vec<super::NatRule>,
    /// What was found, with advice.
    pub findings: Vec<Finding>,
    /// What could not be read.
    pub notes: Vec<String>,
}

/// Severity of one destination: by utilization (percent of the NAT range)
/// or by time to exhaustion, whichever is worse, with the same thresholds
/// as the socket budget.
pub fn severity(utilization: f64, seconds_to_exhaustion: Option<f64>, t: &Thresholds) -> Severity {
    let pct = utilization * 100.0;
    let by_pct = if pct >= t.crit_pct {
        Severity::Critical
    } else if pct >= t.warn_pct {
        Severity::Warning
    } else {
        Severity::Ok
    };
    let by_time = match seconds_to_exhaustion {
        Some(s) if s < t.crit_seconds => Severity::Critical,
        Some(s) if s < t.warn_seconds => Severity::Warning,
        _ => Severity::Ok,
    };
    by_pct.max(by_time)
}

/// Analyses `now`, with `before` (taken `interval` earlier) for the rates.
/// Returns `None` when the namespace has no source-NAT hook.
pub fn analyze(
    before: Option<(&NatSnapshot, Duration)>,
    now: &NatSnapshot,
    t: &Thresholds,
) -> Option<NatAnalysis> {
    if !now.source_nat {
        return None;
    }
    let secs = before.map(|(_, d)| d.as_secs_f64()).filter(|s| *s > 0.0);
    let mut destinations: Vec<NatDestination> = now
        .groups
        .iter()
        .map(|g| {
            let growth = before.zip(secs).map(|((b, _), s)| {
                let prev = b
                    .groups
                    .iter()
                    .find(|p| p.key == g.key)
                    .map_or(0, |p| p.total);
                (f64::from(g.total) - f64::from(prev)) / s
            });
            let free = f64::from(g.capacity.ports.saturating_sub(g.total));
            let tte = match growth {
                _ if free == 0.0 => Some(0.0),
                Some(r) if r > 0.0 => Some(free / r),
                _ => None,
            };
            let utilization = g.utilization();
            NatDestination {
                key: g.key,
                in_use: g.total,
                closing: g.states.get(CtTcpState::TimeWait) + g.states.get(CtTcpState::Close),
                states: g.states,
                capacity: g.capacity.clone(),
                utilization,
                growth_per_s: growth,
                seconds_to_exhaustion: tte,
                severity: severity(utilization, tte, t),
            }
        })
        .collect();
    destinations.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.utilization.total_cmp(&a.utilization))
            .then(a.key.cmp(&b.key))
    });
    let conntrack = now.stats.map(|s| {
        let prev = before.and_then(|(b, _)| b.stats);
        ConntrackCounters {
            stats: s,
            insert_failed_delta: prev.map(|p| s.insert_failed.saturating_sub(p.insert_failed)),
            drop_delta: prev.map(|p| s.drop.saturating_sub(p.drop)),
            early_drop_delta: prev.map(|p| s.early_drop.saturating_sub(p.early_drop)),
            table_fill: if s.max == 0 {
                0.0
            } else {
                s.count as f64 / s.max as f64
            },
        }
    });
    let mut a = NatAnalysis {
        status: Severity::Ok,
        destinations,
        conntrack,
        snat_entries: now.snat_entries,
        rules: now.rules.rules.clone(),
        findings: Vec::new(),
        notes: now.notes.iter().chain(&now.rules.notes).cloned().collect(),
    };
    a.findings = super::advice::findings(&a, t);
    a.status = a
        .destinations
        .iter()
        .map(|d| d.severity)
        .chain(a.findings.iter().map(|f| f.severity))
        .max()
        .unwrap_or(Severity::Ok);
    Some(a)
}

/// Earlier NAT scans of one namespace, for the rates of a long-running
/// reader (the exporter): the same baseline choice as [`crate::History`].
#[derive(Debug, Clone)]
pub struct NatHistory(Baselines<NatSnapshot>);

impl NatHistory {
    /// A history whose rates span at least `min_interval` whenever such a scan is kept.
    pub fn new(min_interval: Duration) -> NatHistory {
        NatHistory(Baselines::new(min_interval))
    }

    /// Analyses `now` (taken at `at`) against the best baseline (see
    /// [`analyze`]), then keeps its groups and counters as the next one.
    pub fn analyze(
        &mut self,
        now: NatSnapshot,
        at: Instant,
        t: &Thresholds,
    ) -> Option<NatAnalysis> {
        let analysis = analyze(self.0.baseline(at), &now, t);
        // A baseline is asked only for its groups and counters.
        self.0.keep(now, at, |mut s| {
            s.rules = Default::default();
            s.notes = Vec::new();
            s
        });
        analysis
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Basis, NatGroup, Rules};
    use super::*;

    fn snap(total: u32, stats: Stats) -> NatSnapshot {
        let mut states = StateCounts::default();
        states.0[CtTcpState::Established.index()] = total.saturating_sub(10);
        states.0[CtTcpState::TimeWait.index()] = total.min(10);
        NatSnapshot {
            source_nat: true,
            stats: Some(stats),
            groups: vec![NatGroup {
                key: NatKey {
                    nat_source: "198.18.0.1".parse().unwrap(),
                    destination: "198.18.0.2:80".parse().unwrap(),
                },
                states,
                total,
                ports_seen: (20000, 20099),
                capacity: Capacity {
                    ports: 100,
                    range: (20000, 20099),
                    basis: Basis::KernelDefault {
                        reason: "test".into(),
                    },
                    random_fully: false,
                },
            }],
            snat_entries: u64::from(total),
            rules: Rules::default(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn utilization_growth_and_time_to_exhaustion() {
        let t = Thresholds::default();
        let b = snap(40, Stats::default());
        let n = snap(60, Stats::default());
        let a = analyze(Some((&b, Duration::from_secs(2))), &n, &t).unwrap();
        let d = &a.destinations[0];
        assert_eq!(d.in_use, 60);
        assert_eq!(d.closing, 10);
        assert!((d.utilization - 0.6).abs() < 1e-9);
        assert_eq!(d.growth_per_s, Some(10.0));
        assert_eq!(d.seconds_to_exhaustion, Some(4.0));
        assert_eq!(d.severity, Severity::Critical, "4 s to exhaustion < 60 s");
        // One scan: no rate, severity by utilization only (60% >= 50%).
        let a = analyze(None, &n, &t).unwrap();
        assert_eq!(a.destinations[0].growth_per_s, None);
        assert_eq!(a.destinations[0].severity, Severity::Warning);
    }

    #[test]
    fn full_range_is_critical_and_counter_rises_are_reported() {
        let t = Thresholds::default();
        let b = snap(
            100,
            Stats {
                insert_failed: 5,
                drop: 5,
                count: 100,
                max: 1000,
                ..Stats::default()
            },
        );
        let n = snap(
            100,
            Stats {
                insert_failed: 25,
                drop: 26,
                count: 950,
                max: 1000,
                ..Stats::default()
            },
        );
        let a = analyze(Some((&b, Duration::from_secs(1))), &n, &t).unwrap();
        let d = &a.destinations[0];
        assert_eq!(d.seconds_to_exhaustion, Some(0.0));
        assert_eq!(d.severity, Severity::Critical);
        let c = a.conntrack.unwrap();
        assert_eq!((c.insert_failed_delta, c.drop_delta), (Some(20), Some(21)));
        assert!((c.table_fill - 0.95).abs() < 1e-9);
        assert_eq!(a.status, Severity::Critical);
        let codes: Vec<&str> = a.findings.iter().map(|f| f.code.as_str()).collect();
        assert!(codes.contains(&"nat_port_utilization"), "{codes:?}");
        assert!(codes.contains(&"conntrack_drops"), "{codes:?}");
        assert!(codes.contains(&"conntrack_table_full"), "{codes:?}");
    }

    #[test]
    fn history_measures_growth_between_scans() {
        let t = Thresholds::default();
        let mut h = NatHistory::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let a = h.analyze(snap(40, Stats::default()), t0, &t).unwrap();
        assert_eq!(a.destinations[0].growth_per_s, None, "first scan: no rate");
        let a = h
            .analyze(snap(60, Stats::default()), t0 + Duration::from_secs(2), &t)
            .unwrap();
        assert_eq!(a.destinations[0].growth_per_s, Some(10.0));
        assert_eq!(a.destinations[0].seconds_to_exhaustion, Some(4.0));
    }

    #[test]
    fn no_source_nat_means_no_section() {
        let mut s = snap(0, Stats::default());
        s.source_nat = false;
        assert!(analyze(None, &s, &Thresholds::default()).is_none());
    }
}

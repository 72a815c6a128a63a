//! Rates for repeated scans: keeps earlier scans so that each new one can be
//! analysed against a baseline taken a sensible time before it.
//!
//! A long-running reader (the exporter answering scrapes, `top` refreshing
//! every second) cannot sleep between two scans the way `doctor` does. It
//! hands each scan to [`History::analyze`], which picks as baseline the
//! newest kept scan that is at least `min_interval` old, so two scrapes
//! arriving 10 ms apart (two Prometheus servers) do not produce a rate from
//! a 10 ms window.

use std::time::{Duration, Instant};

use crate::model::{self, listening_ports, may_be_outbound, Analysis, Snapshot, Thresholds};

/// Earlier readings of one kind, at most two, each with the instant it was
/// taken: the baseline choice of [`History`], for any reading (the socket
/// table here, the NAT view in [`crate::nat::analysis::NatHistory`]).
#[derive(Debug, Clone)]
pub struct Baselines<T> {
    min_interval: Duration,
    older: Option<(T, Instant)>,
    newer: Option<(T, Instant)>,
}

impl<T> Baselines<T> {
    /// Baselines whose rates span at least `min_interval` whenever such a reading is kept.
    pub fn new(min_interval: Duration) -> Baselines<T> {
        Baselines {
            min_interval,
            older: None,
            newer: None,
        }
    }

    /// The baseline for a reading taken at `at`, with its age: the newest
    /// kept reading at least `min_interval` old, else the oldest kept one;
    /// `None` when nothing is kept or it is no older than `at`.
    pub fn baseline(&self, at: Instant) -> Option<(&T, Duration)> {
        let age = |t: &Instant| at.saturating_duration_since(*t);
        let newer = self.newer.as_ref().map(|(s, t)| (s, age(t)));
        let older = self.older.as_ref().map(|(s, t)| (s, age(t)));
        match (newer, older) {
            (Some(n), _) if n.1 >= self.min_interval => Some(n),
            (_, Some(o)) if o.1 >= self.min_interval => Some(o),
            // Nothing old enough yet: the oldest kept reading is the best there is.
            (n, o) => o.or(n).filter(|(_, d)| !d.is_zero()),
        }
    }

    /// Keeps `now` (taken at `at`) as the next baseline, made by `slim`,
    /// unless the newest kept reading is still younger than `min_interval`
    /// (a burst of scrapes), in which case `now` is dropped.
    pub fn keep(&mut self, now: T, at: Instant, slim: impl FnOnce(T) -> T) {
        let keep = match &self.newer {
            None => true,
            Some((_, t)) => at.saturating_duration_since(*t) >= self.min_interval,
        };
        if keep {
            self.older = self.newer.take();
            self.newer = Some((slim(now), at));
        }
    }
}

/// Earlier scans of one namespace, at most two, with only their outbound sockets.
#[derive(Debug, Clone)]
pub struct History(Baselines<Snapshot>);

impl History {
    /// A history whose rates span at least `min_interval` whenever such a scan is kept.
    pub fn new(min_interval: Duration) -> History {
        History(Baselines::new(min_interval))
    }

    /// Analyses `now` (taken at `at`) against the best baseline, then keeps
    /// `now` as the next baseline unless the newest kept scan is still
    /// younger than `min_interval`.
    pub fn analyze(&mut self, now: Snapshot, at: Instant, thresholds: Thresholds) -> Analysis {
        let analysis = model::analyze(self.0.baseline(at), &now, None, thresholds);
        self.0.keep(now, at, outbound_only);
        analysis
    }

    /// Age of the baseline the next analysis at `at` would use.
    pub fn baseline_age(&self, at: Instant) -> Option<Duration> {
        self.0.baseline(at).map(|(_, d)| d)
    }
}

/// A baseline needs only the 4-tuples that may be outbound (the analysis
/// asks it about outbound sockets only) and the counters.
fn outbound_only(mut snap: Snapshot) -> Snapshot {
    let listening = listening_ports(&snap.sockets);
    snap.sockets.retain(|s| may_be_outbound(s, &listening));
    snap.sockets.shrink_to_fit();
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Counters, Settings};
    use crate::socket::{Socket, Source, TcpState};

    fn snap(n: u16) -> Snapshot {
        let mut sockets = vec![Socket {
            state: TcpState::Listen,
            local: "0.0.0.0:8080".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            inode: 1,
            uid: 0,
            tw_remaining_ms: None,
            cookie: 0,
        }];
        for i in 0..n {
            sockets.push(Socket {
                state: TcpState::TimeWait,
                local: format!("192.0.2.1:{}", 40000 + i).parse().unwrap(),
                remote: "192.0.2.2:443".parse().unwrap(),
                inode: 0,
                uid: 0,
                tw_remaining_ms: Some(50_000),
                cookie: 0,
            });
        }
        Snapshot {
            sockets,
            source: Source::Netlink,
            settings: Settings {
                ip_local_port_range: fivetuple_kernel::PortRange::new(40000, 40999).unwrap(),
                tcp_tw_reuse: 0,
                ..Settings::default()
            },
            counters: Counters {
                active_opens: Some(u64::from(n)),
                ..Counters::default()
            },
            fallback_reason: None,
        }
    }

    #[test]
    fn first_scan_has_no_rate_then_rates_span_the_interval() {
        let mut h = History::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let a = h.analyze(snap(10), t0, Thresholds::default());
        assert_eq!(a.destinations[0].rate_per_s, None);
        let a = h.analyze(snap(40), t0 + Duration::from_secs(2), Thresholds::default());
        assert_eq!(a.destinations[0].rate_per_s, Some(15.0));
        assert_eq!(a.active_opens_per_s, Some(15.0));
    }

    #[test]
    fn a_burst_scrape_uses_the_older_baseline_and_is_not_kept() {
        let mut h = History::new(Duration::from_secs(10));
        let t0 = Instant::now();
        h.analyze(snap(0), t0, Thresholds::default());
        let t1 = t0 + Duration::from_secs(15);
        h.analyze(snap(150), t1, Thresholds::default());
        // 10 ms later: the 15 s old scan is the baseline, not the 10 ms old one.
        let t2 = t1 + Duration::from_millis(10);
        let a = h.analyze(snap(151), t2, Thresholds::default());
        let r = a.destinations[0].rate_per_s.unwrap();
        assert!((r - 151.0 / 15.01).abs() < 1e-9, "{r}");
        // The burst scan was not kept: the next regular scrape measures against t1.
        let t3 = t1 + Duration::from_secs(15);
        assert_eq!(h.baseline_age(t3), Some(Duration::from_secs(15)));
        let a = h.analyze(snap(300), t3, Thresholds::default());
        assert_eq!(a.destinations[0].rate_per_s, Some(10.0));
    }

    #[test]
    fn young_baseline_is_used_when_nothing_older_exists() {
        let mut h = History::new(Duration::from_secs(10));
        let t0 = Instant::now();
        h.analyze(snap(0), t0, Thresholds::default());
        let a = h.analyze(snap(5), t0 + Duration::from_secs(1), Thresholds::default());
        assert_eq!(a.destinations[0].rate_per_s, Some(5.0));
        // Same instant: no window at all, so no rate.
        let mut h = History::new(Duration::from_secs(10));
        h.analyze(snap(0), t0, Thresholds::default());
        let a = h.analyze(snap(5), t0, Thresholds::default());
        assert_eq!(a.destinations[0].rate_per_s, None);
    }

    #[test]
    fn baselines_keep_outbound_sockets_only() {
        let mut h = History::new(Duration::from_secs(1));
        h.analyze(snap(3), Instant::now(), Thresholds::default());
        let (kept, _) = h.0.newer.as_ref().unwrap();
        assert_eq!(kept.sockets.len(), 3, "the listener is dropped");
    }
}

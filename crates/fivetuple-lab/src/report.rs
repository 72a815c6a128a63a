//! Results: one [`RemedyResult`] per remedy, the budget arithmetic, the
//! verdict, the table and the `--json` document.
//!
//! The budget is `usable ports × sources / seconds a port stays held`: 60 s
//! of TIME_WAIT, or `tcp_tw_reuse_delay` when `tcp_tw_reuse` applies (and
//! timestamps are on). Rotation with timestamps and pooling have no TIME_WAIT
//! bound at all.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{Remedy, Topology, TIME_WAIT_SECS};
use crate::driver::Second;
pub use crate::nat::ConntrackCounts;
use fivetuple_kernel::budget;

/// The box as it was built (what `--json` calls `"box"`).
#[derive(Debug, Clone, Serialize)]
pub struct BoxInfo {
    /// `loopback` or `two-hosts`.
    pub topology: Topology,
    /// How the namespaces were made.
    pub namespace: String,
    /// The kernel release.
    pub kernel: String,
    /// Ports in the base range.
    pub ports: u32,
    /// The base `ip_local_port_range` (`wide-range` uses 5001-65534).
    pub port_range: [u16; 2],
    /// The base `tcp_tw_reuse` (`tw-reuse` uses 1).
    pub tcp_tw_reuse: u8,
    /// `tcp_tw_reuse_delay` in ms, when the kernel has it (6.14+).
    pub tcp_tw_reuse_delay_ms: Option<u64>,
    /// `tcp_timestamps` on or off.
    pub tcp_timestamps: bool,
    /// TIME_WAIT length (fixed at 60 s on Linux).
    pub time_wait_s: f64,
    /// Calls per second the driver sent.
    pub rate_per_s: u32,
    /// Seconds each remedy ran.
    pub duration_s: f64,
    /// Source addresses `spread` used.
    pub spread_sources: u8,
    /// `--topology nat` only: the NAT in front of the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatBox>,
}

/// The NAT of `--topology nat` (what `--json` calls `"box"."nat"`).
#[derive(Debug, Clone, Serialize)]
pub struct NatBox {
    /// Client namespaces behind the node.
    pub pods: u8,
    /// The NAT rule's port range (`masquerade to :lo-hi`): `--ports` ports.
    pub nat_port_range: [u16; 2],
    /// `nf_conntrack_tcp_timeout_time_wait` in the node: how long a closed
    /// connection keeps its NAT port (120 s by default).
    pub conntrack_time_wait_s: f64,
    /// Milliseconds after which a pod gives up a `connect()` (a SYN the NAT
    /// dropped is never answered).
    pub connect_timeout_ms: u64,
}

/// The three verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Calls failed.
    Fails,
    /// No failure in this run, but a port budget still applies.
    Postpones,
    /// No failure and no TIME_WAIT bound.
    Holds,
}

/// The settings one remedy's box actually had.
#[derive(Debug, Clone, Serialize)]
pub struct RemedySettings {
    /// `ip_local_port_range` in the box.
    pub port_range: [u16; 2],
    /// `tcp_tw_reuse` in the box.
    pub tcp_tw_reuse: u8,
    /// Source addresses the client used.
    pub sources: u32,
    /// How the client chose its local endpoint.
    pub client: String,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct RemedyResult {
    /// The remedy.
    pub name: Remedy,
    /// Calls sent to A.
    pub calls: u64,
    /// Calls answered 200.
    pub ok: u64,
    /// Calls that failed (shed calls included).
    pub failed: u64,
    /// Calls not sent because the driver's in-flight limit was reached (the
    /// system fell behind the rate); counted in `failed`.
    pub shed: u64,
    /// When the first failing call was sent, seconds from the start.
    pub first_failure_s: Option<f64>,
    /// The first failure's text (the OS error A got).
    pub error: Option<String>,
    /// Highest TIME_WAIT count seen in the box.
    pub peak_time_wait: u64,
    /// Sustainable new-connection rate, or `None` when TIME_WAIT does not bound it.
    pub budget_per_s: Option<f64>,
    /// The rate sustained with zero errors: calls answered 200 before the
    /// first failure arrived, over `error_free_s`. Counted from completed
    /// calls when they completed, so a box that falls behind the schedule
    /// shows the rate it really kept.
    pub achieved_per_s: f64,
    /// Seconds from the start until the first failure arrived, or until the
    /// last answer (at least the run's duration) when nothing failed.
    pub error_free_s: f64,
    /// Median time from a call being due to its answer, in ms.
    pub latency_ms_p50: f64,
    /// 99th percentile of that time, in ms.
    pub latency_ms_p99: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// The verdict in words.
    pub verdict_text: String,
    /// The box's settings for this remedy.
    pub settings: RemedySettings,
    /// `--topology nat` only: how the node's conntrack counters rose (the
    /// timeline's `time_wait` is then the node's conntrack entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackCounts>,
    /// One entry per second.
    pub timeline: Vec<Second>,
}

/// The whole experiment (the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The box.
    #[serde(rename = "box")]
    pub box_info: BoxInfo,
    /// One entry per remedy that finished, in the order run.
    pub remedies: Vec<RemedyResult>,
    /// Set when the run was stopped (Ctrl-C) before every remedy finished.
    pub interrupted: Option<Interruption>,
}

/// Where a stopped run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interruption {
    /// The remedy that was running (or about to start); it has no row.
    pub during: Remedy,
    /// The remedies after it, which did not run.
    pub not_run: Vec<Remedy>,
}

/// The port budget of one remedy: how long a used (address, port) stays
/// unusable toward the destination, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Usable (source address, port) pairs toward the destination.
    pub endpoints: f64,
    /// Seconds one stays held after its connection closes, or `None` when
    /// TIME_WAIT does not hold it (rotation with timestamps, pooling).
    pub hold_s: Option<f64>,
}

impl Budget {
    /// The budget of `remedy` behind the NAT of `--topology nat`: the NAT's
    /// `ports` on each of `addresses`, each held `ct_time_wait_s` after its
    /// connection closes. Conntrack reuses an entry only for the same
    /// original tuple (a SYN reopening a closed entry replaces it), so
    /// rotation in the pods bounds the entries at `rotating_tuples` (pods ×
    /// rotation length): no limit when those fit the NAT's ports, the NAT's
    /// budget when they do not. Pooling has no limit.
    pub fn nat(
        remedy: Remedy,
        ports: u32,
        addresses: u32,
        ct_time_wait_s: f64,
        rotating_tuples: u32,
    ) -> Budget {
        let endpoints = f64::from(ports) * f64::from(addresses);
        let hold_s = match remedy {
            Remedy::Pooled => None,
            Remedy::Rotate if f64::from(rotating_tuples) <= endpoints => None,
            _ => Some(ct_time_wait_s),
        };
        Budget { endpoints, hold_s }
    }

    /// New connections per second that can be sustained, if bounded.
    pub fn per_s(&self) -> Option<f64> {
        self.hold_s
            .map(|h| budget::sustainable_rate(self.endpoints, h))
    }

    /// The budget of `remedy` in a box with these settings.
    pub fn of(
        remedy: Remedy,
        ports: u32,
        sources: u32,
        tw_reuse: u8,
        timestamps: bool,
        reuse_delay_ms: Option<u64>,
        topology: Topology,
    ) -> Budget {
        let endpoints = f64::from(ports) * f64::from(sources);
        // The same rules as doctor's: one home in fivetuple_kernel::budget.
        let reuse_applies = budget::tw_reuse_applies(
            u32::from(tw_reuse),
            u32::from(timestamps),
            topology == Topology::Loopback,
        );
        let delay_ms = reuse_delay_ms.map_or(budget::DEFAULT_TW_REUSE_DELAY_MS, |d| {
            u32::try_from(d).unwrap_or(u32::MAX)
        });
        let kernel_hold = budget::port_hold_secs(reuse_applies, delay_ms);
        let hold_s = match remedy {
            Remedy::Pooled => None,
            // An explicit bind takes over a TIME_WAIT at once when it carried
            // timestamps (tcp_twsk_unique without twp).
            Remedy::Rotate | Remedy::Attach if timestamps => None,
            Remedy::Rotate | Remedy::Attach => Some(TIME_WAIT_SECS),
            _ => Some(kernel_hold),
        };
        Budget { endpoints, hold_s }
    }
}

/// Decides the verdict for a run at `rate` calls/s.
pub fn verdict(
    failed: u64,
    first_failure_s: Option<f64>,
    budget: Budget,
    rate: u32,
) -> (Verdict, String) {
    if failed > 0 {
        let at = first_failure_s.map_or(String::new(), |t| format!(" at {t:.1} s"));
        return (Verdict::Fails, format!("fails{at}"));
    }
    match (budget.per_s(), budget.hold_s) {
        (Some(b), Some(_)) if f64::from(rate) > b => (
            Verdict::Postpones,
            format!(
                "postpones exhaustion to about {:.0} s at this rate",
                budget.endpoints / f64::from(rate)
            ),
        ),
        (Some(b), Some(hold)) => (
            Verdict::Postpones,
            format!(
                "holds here; postpones exhaustion to rates above {} (then within {:.0} s)",
                per_s(b),
                hold
            ),
        ),
        _ => (Verdict::Holds, "holds (no TIME_WAIT limit)".into()),
    }
}

/// [`verdict`] behind the NAT: a run that made more new connections than
/// the NAT budget allows, without a failure, held because closed NAT
/// entries were taken over before conntrack's TIME_WAIT expired; it says so
/// and how many, rather than predicting an exhaustion that did not come.
pub fn verdict_behind_nat(
    failed: u64,
    first_failure_s: Option<f64>,
    budget: Budget,
    rate: u32,
    conntrack: &ConntrackCounts,
) -> (Verdict, String) {
    match conntrack.reused {
        Some(n) if failed == 0 && n > 0 && budget.hold_s.is_some() => (
            Verdict::Holds,
            format!("holds past the NAT budget: {n} new connections took over closed NAT entries"),
        ),
        _ => verdict(failed, first_failure_s, budget, rate),
    }
}

fn per_s(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

/// The results as a plain-text table, one row per remedy, followed by notes.
pub fn table(report: &Report) -> String {
    let nat = report.box_info.nat.as_ref();
    // Behind the NAT the sampled count is the node's NAT entries toward B.
    let peak = if nat.is_some() { "peak NAT" } else { "peak TW" };
    let header = [
        "remedy", "calls", "ok", "failed", "1st fail", "error", peak, "budget", "achieved",
        "verdict",
    ];
    let rows: Vec<[String; 10]> = report
        .remedies
        .iter()
        .map(|r| {
            [
                r.name.to_string(),
                r.calls.to_string(),
                r.ok.to_string(),
                r.failed.to_string(),
                r.first_failure_s
                    .map_or("-".into(), |t| format!("{t:.1} s")),
                r.error.clone().unwrap_or_else(|| "-".into()),
                r.peak_time_wait.to_string(),
                r.budget_per_s.map_or("no limit".into(), per_s),
                per_s(r.achieved_per_s),
                r.verdict_text.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = [
        false, true, true, true, true, false, true, true, true, false,
    ];
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    let b = &report.box_info;
    let _ = writeln!(
        out,
        "\nbox: {}, {}, {} ports ({}-{}), tcp_tw_reuse={}, tcp_timestamps={}, {} calls/s for {:.1} s per remedy, kernel {}",
        b.topology.name(),
        b.namespace,
        b.ports,
        b.port_range[0],
        b.port_range[1],
        b.tcp_tw_reuse,
        u8::from(b.tcp_timestamps),
        b.rate_per_s,
        b.duration_s,
        b.kernel
    );
    if let Some(n) = nat {
        let _ = writeln!(
            out,
            "nat: {} pods behind a node that source-NATs them to one address with {} ports ({}-{}), \
             conntrack keeps a closed connection {:.0} s, pods give up a connect after {} ms",
            n.pods,
            b.ports,
            n.nat_port_range[0],
            n.nat_port_range[1],
            n.conntrack_time_wait_s,
            n.connect_timeout_ms
        );
        let _ = writeln!(
            out,
            "budget = NAT ports x NAT addresses / {:.0} s (nf_conntrack_tcp_timeout_time_wait); peak NAT = source-NATed conntrack entries toward B",
            n.conntrack_time_wait_s
        );
        out.push_str("conntrack counters of the node (conntrack -S), rise during each run:\n");
        for r in &report.remedies {
            if let Some(c) = &r.conntrack {
                let reused = c.reused.map_or(String::new(), |n| format!("  reused {n}"));
                let _ = writeln!(
                    out,
                    "  {:<12}  insert_failed +{}  drop +{}  early_drop +{}  NAT entries peak {} at end {} on {} address(es){reused}",
                    r.name.name(),
                    c.insert_failed,
                    c.drop,
                    c.early_drop,
                    c.peak_entries,
                    c.entries_at_end,
                    c.addresses_used
                );
            }
        }
    } else {
        let _ = writeln!(
            out,
            "budget = usable ports x sources / {:.0} s of TIME_WAIT (or / tcp_tw_reuse_delay where tcp_tw_reuse applies)",
            b.time_wait_s
        );
    }
    for r in &report.remedies {
        let _ = writeln!(out, "  {:<12}  {}", r.name.name(), r.name.describe());
    }
    for r in report.remedies.iter().filter(|r| r.shed > 0) {
        let _ = writeln!(
            out,
            "note: {}: {} of {} calls were not sent: the system fell behind {} calls/s and the driver \
             sheds calls beyond its in-flight limit instead of queueing them; they count as failed",
            r.name, r.shed, r.calls, b.rate_per_s
        );
    }
    if report.remedies.iter().any(|r| r.name == Remedy::TwReuse) {
        out.push_str(
            "note: Linux cannot shorten TIME_WAIT (60 s, fixed at compile time). net.ipv4.tcp_fin_timeout is the \
             FIN_WAIT_2 timeout, not TIME_WAIT: lowering it does not help. tcp_tw_reuse=1 lets connect() take over \
             a TIME_WAIT older than tcp_tw_reuse_delay, only when TCP timestamps are on.\n",
        );
    }
    if let Some(i) = &report.interrupted {
        let not_run = if i.not_run.is_empty() {
            String::new()
        } else {
            format!(
                "; not run: {}",
                i.not_run
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            out,
            "interrupted during {}: the rows above are the remedies that finished{not_run}",
            i.during
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(remedy: Remedy, ports: u32, sources: u32, reuse: u8, ts: bool) -> Option<f64> {
        Budget::of(
            remedy,
            ports,
            sources,
            reuse,
            ts,
            Some(1000),
            Topology::Loopback,
        )
        .per_s()
    }

    #[test]
    fn budgets_follow_the_arithmetic() {
        let naive = budget(Remedy::Naive, 1000, 1, 0, true).unwrap();
        assert!((naive - 16.67).abs() < 0.01, "{naive}");
        assert!((budget(Remedy::WideRange, 60534, 1, 0, true).unwrap() - 1008.9).abs() < 0.1);
        assert!((budget(Remedy::Spread, 1000, 16, 0, true).unwrap() - 266.67).abs() < 0.01);
        assert!((budget(Remedy::TwReuse, 1000, 1, 1, true).unwrap() - 1000.0).abs() < 0.01);
        // Without timestamps tcp_tw_reuse does nothing, and rotation is bounded again.
        assert!((budget(Remedy::TwReuse, 1000, 1, 1, false).unwrap() - 16.67).abs() < 0.01);
        assert!((budget(Remedy::Rotate, 1000, 1, 0, false).unwrap() - 16.67).abs() < 0.01);
        assert_eq!(budget(Remedy::Rotate, 1000, 1, 0, true), None);
        assert_eq!(budget(Remedy::Pooled, 1000, 1, 0, true), None);
        // tcp_tw_reuse=2 is loopback only.
        let two_hosts = Budget::of(Remedy::Naive, 1000, 1, 2, true, None, Topology::TwoHosts);
        assert!((two_hosts.per_s().unwrap() - 16.67).abs() < 0.01);
    }

    #[test]
    fn nat_budgets_follow_the_arithmetic() {
        let naive = Budget::nat(Remedy::Naive, 1000, 1, 120.0, 2000);
        assert!((naive.per_s().unwrap() - 8.333).abs() < 0.001);
        let pool = Budget::nat(Remedy::SnatPool, 1000, 4, 120.0, 2000);
        assert!((pool.per_s().unwrap() - 33.333).abs() < 0.001);
        // Rotation bounds the entries only when pods x its range fit the NAT.
        assert_eq!(Budget::nat(Remedy::Rotate, 1000, 1, 120.0, 2000), naive);
        assert_eq!(
            Budget::nat(Remedy::Rotate, 1000, 1, 120.0, 1000).per_s(),
            None
        );
        assert_eq!(
            Budget::nat(Remedy::Pooled, 1000, 1, 120.0, 2000).per_s(),
            None
        );
        let reused = ConntrackCounts {
            reused: Some(5),
            ..Default::default()
        };
        let (v, text) = verdict_behind_nat(0, None, naive, 50, &reused);
        assert_eq!(v, Verdict::Holds);
        assert!(text.contains("5 new connections took over"), "{text}");
        assert_eq!(
            verdict_behind_nat(3, Some(1.0), naive, 50, &reused).0,
            Verdict::Fails
        );
    }

    #[test]
    fn verdicts() {
        let naive = Budget::of(Remedy::Naive, 1000, 1, 0, true, None, Topology::Loopback);
        assert_eq!(
            verdict(3, Some(5.0), naive, 200),
            (Verdict::Fails, "fails at 5.0 s".into())
        );
        let wide = Budget::of(
            Remedy::WideRange,
            60534,
            1,
            0,
            true,
            None,
            Topology::Loopback,
        );
        let (v, text) = verdict(0, None, wide, 200);
        assert_eq!(v, Verdict::Postpones);
        assert!(text.contains("1009/s") && text.contains("60 s"), "{text}");
        let (v, text) = verdict(0, None, naive, 50);
        assert_eq!(v, Verdict::Postpones);
        assert_eq!(text, "postpones exhaustion to about 20 s at this rate");
        let rotate = Budget::of(Remedy::Rotate, 1000, 1, 0, true, None, Topology::Loopback);
        assert_eq!(verdict(0, None, rotate, 200).0, Verdict::Holds);
    }
}

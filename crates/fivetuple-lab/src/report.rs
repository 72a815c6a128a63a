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
    /// New connections per second that can be sustained, if bounded.
    pub fn per_s(&self) -> Option<f64> {
        self.hold_s.map(|h| self.endpoints / h)
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
        // tcp_tw_reuse only helps when the old connection carried timestamps
        // (tcp_twsk_unique checks tw_ts_recent_stamp).
        let reuse_applies =
            timestamps && (tw_reuse == 1 || (tw_reuse == 2 && topology == Topology::Loopback));
        let kernel_hold = if reuse_applies {
            reuse_delay_ms.unwrap_or(1000) as f64 / 1000.0
        } else {
            TIME_WAIT_SECS
        };
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

fn per_s(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

/// The results as a plain-text table, one row per remedy, followed by notes.
pub fn table(report: &Report) -> String {
    let header = [
        "remedy", "calls", "ok", "failed", "1st fail", "error", "peak TW", "budget", "achieved",
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
    let _ = writeln!(
        out,
        "budget = usable ports x sources / {:.0} s of TIME_WAIT (or / tcp_tw_reuse_delay where tcp_tw_reuse applies)",
        b.time_wait_s
    );
    for r in &report.remedies {
        let _ = writeln!(out, "  {:<10}  {}", r.name.name(), r.name.describe());
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

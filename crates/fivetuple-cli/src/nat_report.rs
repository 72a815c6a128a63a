//! The "NAT" section of `fivetuple doctor`'s report: per post-NAT
//! destination, the NAT ports in use against the capacity, the conntrack
//! failure counters, and the NAT findings with their advice.

use std::io::Write;

use anyhow::Result;
use fivetuple_scan::model::Severity;
use fivetuple_scan::nat::analysis::NatAnalysis;
use fivetuple_scan::nat::Basis;

/// Writes the NAT section; `top` limits the destinations shown (0: all).
pub fn write_text(
    out: &mut dyn Write,
    n: &NatAnalysis,
    top: usize,
    severity_name: fn(Severity) -> &'static str,
) -> Result<()> {
    writeln!(
        out,
        "\nNAT (source NAT in this namespace; ports from conntrack)"
    )?;
    if n.destinations.is_empty() {
        writeln!(out, "  no source-NATed TCP connections right now")?;
    } else {
        writeln!(
            out,
            "  {:<8} {:<15} {:<21} {:>7} {:>9} {:>6} {:>12} {:>8} {:>9}  capacity from",
            "status",
            "NAT address",
            "destination",
            "in use",
            "capacity",
            "util",
            "est/tw/other",
            "growth/s",
            "full in"
        )?;
        let shown = if top == 0 { n.destinations.len() } else { top };
        for d in n.destinations.iter().take(shown) {
            let est = d.states.get(fivetuple_scan::nat::CtTcpState::Established);
            let tw = d.states.get(fivetuple_scan::nat::CtTcpState::TimeWait);
            let basis = match &d.capacity.basis {
                Basis::Rule { location, .. } => format!(
                    "rule {location} ({}-{})",
                    d.capacity.range.0, d.capacity.range.1
                ),
                Basis::KernelDefault { reason } => format!("kernel default 1024-65535 ({reason})"),
            };
            writeln!(
                out,
                "  {:<8} {:<15} {:<21} {:>7} {:>9} {:>5.0}% {:>12} {:>8} {:>9}  {basis}",
                severity_name(d.severity),
                d.key.nat_source.to_string(),
                d.key.destination.to_string(),
                d.in_use,
                d.capacity.ports,
                d.utilization * 100.0,
                format!("{est}/{tw}/{}", d.in_use - est - tw),
                d.growth_per_s.map_or("-".into(), |r| format!("{r:+.1}")),
                d.seconds_to_exhaustion
                    .map_or("-".into(), |s| format!("{s:.0} s")),
            )?;
        }
        if n.destinations.len() > shown {
            writeln!(
                out,
                "  ... {} more (--top 0 shows all)",
                n.destinations.len() - shown
            )?;
        }
    }
    if let Some(c) = &n.conntrack {
        let delta = |d: Option<u64>| d.map_or(String::new(), |d| format!(" (+{d})"));
        writeln!(
            out,
            "  conntrack: insert_failed {}{}, drop {}{}, early_drop {}{}, table {} of {} ({:.0}%)",
            c.stats.insert_failed,
            delta(c.insert_failed_delta),
            c.stats.drop,
            delta(c.drop_delta),
            c.stats.early_drop,
            delta(c.early_drop_delta),
            c.stats.count,
            c.stats.max,
            c.table_fill * 100.0
        )?;
    }
    for f in &n.findings {
        writeln!(out, "  {:<8} {}", severity_name(f.severity), f.message)?;
        if let Some(d) = &f.destination {
            writeln!(out, "           ({d})")?;
        }
        for adv in &f.advice {
            writeln!(out, "           -> {adv}")?;
        }
    }
    for note in &n.notes {
        writeln!(out, "  note: {note}")?;
    }
    Ok(())
}

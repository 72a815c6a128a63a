//! What `doctor` adds from the BPF observer while it waits `--interval`
//! between its two scans: owners of the TIME_WAIT sockets created in that
//! time (the socket table has none for them: `ss -p` prints nothing), and
//! the connects and binds that failed for lack of a port in that time,
//! which no socket table shows at all. Without BPF the doctor runs as
//! before and says once, in its notes, what is missing; the socket table's
//! "TIME_WAIT sockets have no owning process" note stays only then.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use fivetuple_bpf::observe::{self, Failures, Observer, Options};
use fivetuple_scan::model::{Analysis, ProcessRef, Snapshot};
use fivetuple_scan::netns::Target;
use fivetuple_scan::TcpState;
use serde::Serialize;

/// The observer while the doctor's interval runs, or why there is none.
pub enum Attribution {
    /// Loaded (or loading, on its own thread, so the first scan is not
    /// delayed: the programs attach a few hundred ms into the interval).
    Loading(std::thread::JoinHandle<Attribution>),
    /// Loaded.
    Loaded(Box<Observer>),
    /// BPF cannot be used here; the text names what is missing.
    Unavailable(String),
    /// Not asked for (`--interval 0`).
    Off,
}

/// Starts loading the observer for `target` when `interval` is not zero.
pub fn start(target: &Target, interval: Duration) -> Attribution {
    if interval.is_zero() {
        return Attribution::Off;
    }
    let target = target.clone();
    match std::thread::Builder::new()
        .name("fivetuple-bpf".into())
        .spawn(move || load(&target))
    {
        Ok(handle) => Attribution::Loading(handle),
        Err(e) => Attribution::Unavailable(format!("cannot start a thread: {e}")),
    }
}

fn load(target: &Target) -> Attribution {
    let netns = match crate::trace::netns_inode(target) {
        Ok(n) => n,
        Err(e) => return Attribution::Unavailable(format!("{e:#}")),
    };
    match observe::load(Options::default().netns(Some(netns)).events(false)) {
        Ok(o) => Attribution::Loaded(Box::new(o)),
        Err(e) => Attribution::Unavailable(crate::trace::chain(&e)),
    }
}

/// The BPF part of the report (`bpf` in the JSON document).
#[derive(Debug, Serialize)]
pub struct Report {
    /// "bpf" when the observer ran, "none" when it could not.
    pub source: &'static str,
    /// The seconds observed.
    pub interval_s: f64,
    /// TIME_WAIT sockets in the second scan whose owner BPF saw connect.
    pub time_wait_attributed: usize,
    /// TIME_WAIT sockets in the second scan.
    pub time_wait_total: usize,
    /// Exhaustion failures during the interval.
    pub failures: Vec<Failures>,
    /// Why there is no BPF attribution, when there is none.
    pub unavailable: Option<String>,
}

/// (local IP, remote IP, remote port), as doctor groups destinations.
type DestKey = (std::net::IpAddr, std::net::IpAddr, u16);

/// Adds the owners of TIME_WAIT sockets to each destination's processes and
/// a note saying where they came from; returns the section's data.
pub fn finish(
    attribution: Attribution,
    interval: Duration,
    now: &Snapshot,
    analysis: &mut Analysis,
) -> Result<Option<Report>> {
    let attribution = match attribution {
        Attribution::Loading(handle) => handle
            .join()
            .unwrap_or_else(|_| Attribution::Unavailable("the loading thread panicked".into())),
        other => other,
    };
    let observer = match attribution {
        Attribution::Off | Attribution::Loading(_) => return Ok(None),
        Attribution::Unavailable(why) => {
            analysis.notes.push(format!(
                "no BPF attribution of TIME_WAIT owners or exhaustion failures: {why}"
            ));
            return Ok(Some(Report {
                source: "none",
                interval_s: interval.as_secs_f64(),
                time_wait_attributed: 0,
                time_wait_total: 0,
                failures: Vec::new(),
                unavailable: Some(why),
            }));
        }
        Attribution::Loaded(o) => o,
    };
    // destination key -> pid -> (comm, sockets)
    let mut by_dest: HashMap<DestKey, HashMap<u32, (String, u32)>> = HashMap::new();
    let (mut attributed, mut total) = (0, 0);
    for s in now.sockets.iter().filter(|s| s.state == TcpState::TimeWait) {
        total += 1;
        // A TIME_WAIT socket keeps the cookie of the connection it replaced.
        let Some(owner) = observer.owner(s.cookie)? else {
            continue;
        };
        attributed += 1;
        let e = by_dest
            .entry((
                s.local.ip().to_canonical(),
                s.remote.ip().to_canonical(),
                s.remote.port(),
            ))
            .or_default()
            .entry(owner.pid)
            .or_insert_with(|| (owner.comm, 0));
        e.1 += 1;
    }
    for d in analysis.destinations.iter_mut() {
        let key = (
            d.local_ip.to_canonical(),
            d.remote_ip.to_canonical(),
            d.remote_port,
        );
        let Some(pids) = by_dest.remove(&key) else {
            continue;
        };
        for (pid, (comm, n)) in pids {
            match d.processes.iter_mut().find(|p| p.pid == pid) {
                Some(p) => p.sockets += n,
                None => d.processes.push(ProcessRef {
                    pid,
                    comm,
                    sockets: n,
                }),
            }
        }
        d.processes
            .sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    }
    // BPF is the owner source now: its note replaces the socket table's
    // "no owning process", which would contradict the owners just added.
    analysis
        .notes
        .retain(|n| n != fivetuple_scan::model::TIME_WAIT_NO_OWNER);
    if total > 0 {
        analysis
            .notes
            .push(time_wait_note(attributed, total, interval));
    }
    Ok(Some(Report {
        source: "bpf",
        interval_s: interval.as_secs_f64(),
        time_wait_attributed: attributed,
        time_wait_total: total,
        failures: observer.failures()?,
        unavailable: None,
    }))
}

/// The note naming BPF as the source of TIME_WAIT owners, and why the
/// rest have none.
fn time_wait_note(attributed: usize, total: usize, interval: Duration) -> String {
    let secs = interval.as_secs_f64();
    let mut note = format!(
        "TIME_WAIT owners come from BPF (source: the kernel's connect and state-change tracepoints, during the {secs:.0}s interval): {attributed} of {total} TIME_WAIT sockets attributed"
    );
    if attributed < total {
        note.push_str(&format!(
            "; the other {} entered TIME_WAIT before the observer ran, or were closed first by this host's accepted side, and have no owner",
            total - attributed
        ));
    }

    note
}

/// The text section "failures in the last N seconds" (nothing when BPF was
/// not available: the notes say why, once).
pub fn write_section(out: &mut dyn Write, report: &Report) -> Result<()> {
    if report.unavailable.is_some() {
        return Ok(());
    }
    writeln!(
        out,
        "\nExhaustion failures in the last {:.0} seconds (BPF)",
        report.interval_s
    )?;
    if report.failures.is_empty() {
        writeln!(out, "  none: every connect() and bind() found a port")?;
        return Ok(());
    }
    for f in &report.failures {
        let dest = if f.flow.destination.port() == 0 {
            "-".to_string()
        } else {
            f.flow.destination.to_string()
        };
        writeln!(
            out,
            "  {:>7}  {:<15} {:<22} {}() {}",
            f.count,
            f.flow.comm,
            dest,
            f.stage,
            observe::errno_name(f.errno)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_wait_note_names_bpf_and_the_unattributed() {
        let all = time_wait_note(20, 20, Duration::from_secs(10));
        assert!(all.starts_with("TIME_WAIT owners come from BPF"), "{all}");
        assert!(
            all.contains("20 of 20") && !all.contains("no owner"),
            "{all}"
        );
        let some = time_wait_note(5, 8, Duration::from_secs(10));
        assert!(
            some.contains("5 of 8") && some.contains("the other 3"),
            "{some}"
        );
        assert!(some.contains("have no owner"), "{some}");
    }
}

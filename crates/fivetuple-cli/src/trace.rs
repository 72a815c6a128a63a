//! `fivetuple trace`: the live stream of connects that failed for lack of a
//! source port (`EADDRNOTAVAIL`, `EADDRINUSE`), which never become sockets and
//! so show in no socket table, with who made them (pid, comm, container) and
//! where to; a summary line every second; totals per process and destination
//! on Ctrl-C. The kernel side is `fivetuple_bpf::observe`.
//!
//! Exit codes: 0 after Ctrl-C/SIGTERM or `--duration`; 3 on a bad argument or
//! when BPF cannot be used here (the message names the missing capability
//! or kernel feature, once).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use fivetuple_bpf::observe::{self, CgroupNames, Counts, Event, Observer, Options};
use fivetuple_scan::netns::{self, Target};
use serde::Serialize;

use crate::EXIT_UNKNOWN;

/// Arguments of `fivetuple trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace the named network namespace under /run/netns (default: the current one).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pid", "all_netns"])]
    netns: Option<String>,
    /// Trace the network namespace of this process.
    #[arg(long, value_name = "PID", conflicts_with = "all_netns")]
    pid: Option<u32>,
    /// Trace every network namespace on the host (containers, pods).
    #[arg(long)]
    all_netns: bool,
    /// One JSON object per line: {"type":"failure"|"summary"|"total", ...}.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
}

/// Runs `fivetuple trace`.
pub fn run(args: Args, out: &mut impl Write) -> Result<u8> {
    let target = match (&args.netns, args.pid) {
        (Some(name), _) => Target::Named(name.clone()),
        (None, Some(pid)) => Target::Pid(pid),
        (None, None) => Target::Current,
    };
    let netns = if args.all_netns {
        None
    } else {
        Some(netns_inode(&target)?)
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    let mut observer = match observe::load(Options::default().netns(netns)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fivetuple: trace: {}", chain(&e));
            return Ok(EXIT_UNKNOWN);
        }
    };
    let scope = if args.all_netns {
        "all network namespaces".to_string()
    } else {
        format!("network namespace {target} (inode {})", netns.unwrap_or(0))
    };
    if !args.json {
        writeln!(
            out,
            "tracing connects that fail for lack of a source port in {scope}; Ctrl-C to stop"
        )?;
        out.flush()?;
    }
    let mut trace = Trace {
        names: CgroupNames::new(),
        json: args.json,
        previous: Totals::default(),
        failures_by: BTreeMap::new(),
    };
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let mut next_summary = started + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        let wait = next_summary.saturating_duration_since(Instant::now());
        observer.wait_events(wait.min(Duration::from_millis(200)));
        for event in observer.drain_events() {
            trace.failure(&event, out)?;
        }
        if Instant::now() >= next_summary {
            trace.summary(&observer, out, "summary")?;
            next_summary += Duration::from_secs(1);
        }
    }
    for event in observer.drain_events() {
        trace.failure(&event, out)?;
    }
    trace.summary(&observer, out, "total")?;
    trace.totals(&observer, out, started.elapsed())?;
    Ok(0)
}

pub(crate) fn netns_inode(target: &Target) -> Result<u32> {
    let ino = match netns::open(target)? {
        Some(file) => file.metadata().context("reading the namespace file")?.ino(),
        None => std::fs::metadata("/proc/thread-self/ns/net")
            .context("reading /proc/thread-self/ns/net")?
            .ino(),
    };
    u32::try_from(ino).with_context(|| format!("namespace inode {ino} does not fit 32 bits"))
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sums of the counts maps at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
struct Totals {
    attempts: u64,
    successes: u64,
    time_wait: u64,
    failures: u64,
    dropped: u64,
}

fn totals(observer: &Observer) -> Result<Totals> {
    let mut t = Totals::default();
    for (_, c) in observer.counts()? {
        t.attempts += c.attempts;
        t.successes += c.successes;
        t.time_wait += c.time_wait;
    }
    t.failures = observer.failures()?.iter().map(|f| f.count).sum();
    let d = observer.drops()?;
    t.dropped = d.counts_full + d.failures_full + d.ringbuf_full + d.owner_full;
    Ok(t)
}

struct Trace {
    names: CgroupNames,
    json: bool,
    previous: Totals,
    /// Failures seen in the stream per (comm, destination, errno), for the end.
    failures_by: BTreeMap<(String, String, &'static str), u64>,
}

#[derive(Serialize)]
struct FailureLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    event: &'a Event,
    errno_name: &'static str,
    cgroup_path: Option<String>,
    container: Option<String>,
    pod_uid: Option<String>,
}

#[derive(Serialize)]
struct SummaryLine {
    r#type: &'static str,
    time: f64,
    /// Counts over the last second ("summary") or since the start ("total").
    #[serde(flatten)]
    counts: Totals,
}

impl Trace {
    fn failure(&mut self, e: &Event, out: &mut impl Write) -> Result<()> {
        let path = self.names.path(e.cgroup).map(|p| p.display().to_string());
        let ident = path
            .as_deref()
            .map(fivetuple_scan::identity::parse_cgroup_path)
            .unwrap_or_default();
        let errno_name = observe::errno_name(e.errno);
        let dest = e
            .destination
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        *self
            .failures_by
            .entry((e.comm.clone(), dest.clone(), errno_name))
            .or_default() += 1;
        if self.json {
            let line = FailureLine {
                r#type: "failure",
                event: e,
                errno_name,
                cgroup_path: path,
                container: ident.container_id,
                pod_uid: ident.pod_uid,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)?;
        } else {
            let who = match (&ident.pod_uid, &ident.container_id) {
                (Some(pod), Some(c)) => format!("pod {pod} container {}", short(c)),
                (None, Some(c)) => format!("container {}", short(c)),
                _ => path.unwrap_or_else(|| format!("cgroup {}", e.cgroup)),
            };
            let source = e.source.map(|s| format!("{s} ")).unwrap_or_default();
            writeln!(
                out,
                "{} {} pid {} {} [{}] {}-> {} {} ({})",
                clock(e.time),
                e.stage,
                e.pid,
                e.comm,
                who,
                source,
                dest,
                errno_name,
                e.errno
            )?;
        }
        out.flush()?;
        Ok(())
    }

    fn summary(
        &mut self,
        observer: &Observer,
        out: &mut impl Write,
        kind: &'static str,
    ) -> Result<()> {
        let now = totals(observer)?;
        let counts = if kind == "total" {
            now
        } else {
            Totals {
                attempts: now.attempts - self.previous.attempts,
                successes: now.successes - self.previous.successes,
                time_wait: now.time_wait - self.previous.time_wait,
                failures: now.failures - self.previous.failures,
                dropped: now.dropped - self.previous.dropped,
            }
        };
        self.previous = now;
        if self.json {
            let time = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            serde_json::to_writer(
                &mut *out,
                &SummaryLine {
                    r#type: kind,
                    time,
                    counts,
                },
            )?;
            writeln!(out)?;
        } else if kind == "summary" {
            writeln!(
                out,
                "-- {} last 1s: {} connects, {} established, {} exhaustion failures, {} TIME_WAIT entries{}",
                clock(SystemTime::now()),
                counts.attempts,
                counts.successes,
                counts.failures,
                counts.time_wait,
                dropped_note(counts.dropped)
            )?;
        }
        out.flush()?;
        Ok(())
    }

    fn totals(
        &mut self,
        observer: &Observer,
        out: &mut impl Write,
        elapsed: Duration,
    ) -> Result<()> {
        if self.json {
            return Ok(());
        }
        let t = self.previous;
        writeln!(
            out,
            "\ntotal over {:.1}s: {} connects, {} established, {} exhaustion failures, {} TIME_WAIT entries{}",
            elapsed.as_secs_f64(),
            t.attempts,
            t.successes,
            t.failures,
            t.time_wait,
            dropped_note(t.dropped)
        )?;
        let failures = observer.failures()?;
        let counts = observer.counts()?;
        // With --all-netns the same comm and destination may be counted in
        // several namespaces: name the namespace then.
        let namespaces: std::collections::BTreeSet<u32> = counts
            .iter()
            .map(|(f, _)| f.netns)
            .chain(failures.iter().map(|f| f.flow.netns))
            .collect();
        let in_netns = |netns: u32| {
            if namespaces.len() > 1 {
                format!(" (netns {netns})")
            } else {
                String::new()
            }
        };
        if !failures.is_empty() {
            writeln!(out, "exhaustion failures by process and destination:")?;
            for f in &failures {
                let dest = if f.flow.destination.port() == 0 {
                    "-".to_string()
                } else {
                    f.flow.destination.to_string()
                };
                writeln!(
                    out,
                    "  {:>7}  {:<15} {:<22} {} {}{}",
                    f.count,
                    f.flow.comm,
                    dest,
                    f.stage,
                    observe::errno_name(f.errno),
                    in_netns(f.flow.netns)
                )?;
            }
        }
        let mut busiest: Vec<(String, SocketAddr, Counts, u32)> = counts
            .into_iter()
            .map(|(f, c)| (f.comm, f.destination, c, f.netns))
            .collect();
        busiest.sort_by_key(|b| std::cmp::Reverse(b.2.attempts));
        if !busiest.is_empty() {
            writeln!(out, "busiest (connects, established, TIME_WAIT entries):")?;
            for (comm, dest, c, netns) in busiest.iter().take(10) {
                writeln!(
                    out,
                    "  {:>7} {:>7} {:>7}  {:<15} {}{}",
                    c.attempts,
                    c.successes,
                    c.time_wait,
                    comm,
                    dest,
                    in_netns(*netns)
                )?;
            }
        }
        Ok(())
    }
}

fn dropped_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} not counted: a BPF map or the ring buffer was full)")
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `HH:MM:SS.mmm` UTC.
fn clock(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(86_400_000 + 3_723_045);
        assert_eq!(clock(t), "01:02:03.045Z");
    }
}

//! `fivetuple repro`: builds "service A calls service B on the same box" in
//! throwaway network namespaces, drives it into source-port exhaustion, and
//! runs each remedy side by side. The work lives in `fivetuple-lab`; this
//! module parses the arguments, shows progress and prints the results.
//!
//! Exit codes: 0 when the experiment ran (whatever it found), 2 on a bad
//! argument (`--chart` included, checked before anything starts) or when
//! namespaces cannot be created, 3 on any other error, 130 (143) after
//! Ctrl-C (SIGTERM), with the rows of the remedies that finished printed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use fivetuple_lab::{Config, LabError, Observer, Remedy, RemedyResult, Topology};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit code for bad arguments and missing namespace support.
pub const EXIT_USAGE: u8 = 2;

/// Raw `repro` arguments, as typed; checked in [`resolve`] so every bad value
/// is named in the message and exits 2.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remedies to run, comma-separated. loopback and two-hosts: naive, auth, wide-range, tw-reuse, rotate, spread, pooled (the default), attach (root, BPF) only when named. nat: naive, snat-pool, random-fully, rotate, pooled (the default).
    #[arg(long, value_name = "LIST")]
    only: Option<String>,
    /// Ports in the box's ip_local_port_range (1,000 ports with 60 s of TIME_WAIT: about 16 new connections/s); with --topology nat, the ports of the NAT rule (masquerade to :lo-hi; 1,000 ports with conntrack's 120 s: about 8/s).
    #[arg(long, value_name = "N", default_value = "1000")]
    ports: String,
    /// First port of the box's range; the range must fit 1024-65535.
    #[arg(long, value_name = "PORT", default_value = "32768")]
    port_base: String,
    /// Calls per second the driver sends to frontend A (open loop).
    #[arg(long, value_name = "R", default_value = "200")]
    rate: String,
    /// How long each remedy is driven ("10s", "500ms", "2m").
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    duration: String,
    /// net.ipv4.tcp_tw_reuse in the box: 0 off, 1 on, 2 loopback only (tw-reuse always uses 1).
    #[arg(long, value_name = "0|1|2", default_value = "0")]
    tw_reuse: String,
    /// net.ipv4.tcp_timestamps in the box: on or off.
    #[arg(long, value_name = "on|off", default_value = "on")]
    timestamps: String,
    /// loopback (both services on 127.0.0.1), two-hosts (two namespaces joined by a veth on 198.18.0.0/15) or nat (2 pods behind a node that source-NATs them with nft to one address on the way to B; needs nft).
    #[arg(long, value_name = "TOPOLOGY", default_value = "loopback")]
    topology: String,
    /// Kept-alive connections from the driver to A (they take ports of the box's range, so --ports must be at least this).
    #[arg(long, value_name = "N", default_value = "64")]
    connections: String,
    /// Calls the driver keeps outstanding at once; calls due beyond this are not sent and count as failed (bounds memory at any --rate).
    #[arg(long, value_name = "N", default_value = "4096")]
    max_in_flight: String,
    /// Print the results as JSON (schema in docs/guide.md) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also draw a timeline per remedy (calls ok/failed per second, TIME_WAIT) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
}

/// True when the command line names this subcommand (so that argument
/// errors caught by clap exit 2 like the others).
pub fn invoked() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "repro")
}

fn number<T: std::str::FromStr>(flag: &'static str, value: &str) -> Result<T, LabError> {
    value.trim().parse().map_err(|_| LabError::BadArgument {
        flag,
        value: value.to_string(),
        reason: "expected a whole number".into(),
    })
}

/// Turns the raw arguments into the lab's configuration.
fn resolve(args: &Args) -> Result<Config, LabError> {
    let topology = args.topology.parse::<Topology>()?;
    let mut c = Config {
        remedies: match &args.only {
            Some(list) => fivetuple_lab::parse_remedies(list)?,
            None => Remedy::defaults(topology),
        },
        topology,
        ..Config::default()
    };
    c.set_ports(
        number("--ports", &args.ports)?,
        number("--port-base", &args.port_base)?,
    )?;
    c.set_rate(number("--rate", &args.rate)?)?;
    c.set_duration(fivetuple_lab::parse_duration(&args.duration)?)?;
    c.set_tw_reuse(number("--tw-reuse", &args.tw_reuse)?)?;
    c.timestamps = match args.timestamps.trim() {
        "on" | "1" => true,
        "off" | "0" => false,
        _ => {
            return Err(LabError::BadArgument {
                flag: "--timestamps",
                value: args.timestamps.clone(),
                reason: "expected on or off".into(),
            })
        }
    };
    c.set_connections(number("--connections", &args.connections)?)?;
    c.set_max_in_flight(number("--max-in-flight", &args.max_in_flight)?)?;
    c.check()?;
    if let Some(path) = &args.chart {
        fivetuple_lab::chart::check_target(path)?;
    }
    Ok(c)
}

/// One progress bar per remedy on stderr; when stderr is not a terminal
/// (a log file, CI), one plain line when each remedy starts and finishes.
struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    plain: bool,
    /// What the sampled count is: TIME_WAIT sockets, or the NAT node's
    /// conntrack entries.
    sampled: &'static str,
}

impl Observer for Progress {
    fn started(&self, remedy: Remedy, calls: u64) {
        if self.plain {
            eprintln!("fivetuple: repro: {remedy}: started, {calls} calls");
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(calls), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:24}] {pos:>6}/{len:<6} {msg}")
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(remedy.name());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn progress(&self, _remedy: Remedy, ok: u64, failed: u64, time_wait: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.set_position(ok + failed);
            bar.set_message(format!(
                "ok {ok}  failed {failed}  {} {time_wait}",
                self.sampled
            ));
        }
    }

    fn finished(&self, r: &RemedyResult) {
        let text = format!(
            "ok {}  failed {}  peak {} {}  {}",
            r.ok, r.failed, self.sampled, r.peak_time_wait, r.verdict_text
        );
        if self.plain {
            eprintln!("fivetuple: repro: {}: finished, {text}", r.name);
            return;
        }
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.set_position(r.calls);
            bar.finish_with_message(text);
        }
    }
}

/// Runs `fivetuple repro`; returns the exit code.
pub fn run(args: Args, out: &mut impl Write) -> Result<u8> {
    let config = match resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fivetuple: repro: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    // Before any thread exists: an unprivileged process may need to enter a
    // user namespace, which the kernel allows only while single-threaded.
    let privilege = match fivetuple_lab::prepare() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fivetuple: repro: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let progress = Arc::new(Progress {
        bar: Mutex::new(None),
        plain: !std::io::stderr().is_terminal(),
        sampled: if config.topology == Topology::Nat {
            "NAT entries"
        } else {
            "TIME_WAIT"
        },
    });
    let (stop, signal) = stop_on_signals()?;
    let report = fivetuple_lab::run_until(&config, privilege, progress.clone(), stop)
        .context("running the experiment")?;
    if let Some(bar) = progress.bar.lock().expect("progress lock").take() {
        bar.abandon_with_message("interrupted");
    }
    if let Some(i) = &report.interrupted {
        let n = report.remedies.len();
        eprintln!(
            "fivetuple: repro: interrupted during {}; printing the {n} finished {}",
            i.during,
            if n == 1 { "remedy" } else { "remedies" }
        );
    }
    // An interrupted run with no finished remedy has nothing to draw.
    let chart = args.chart.as_ref().filter(|_| !report.remedies.is_empty());
    if let Some(path) = chart {
        fivetuple_lab::chart::write_svg(&report, path)
            .with_context(|| format!("writing the chart to {}", path.display()))?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(fivetuple_lab::report::table(&report).as_bytes())?;
        if let Some(path) = chart {
            writeln!(out, "chart: {}", path.display())?;
        }
    }
    if report.interrupted.is_some() {
        return Ok(128 + signal.load(Ordering::Relaxed) as u8);
    }
    Ok(0)
}

/// On SIGINT or SIGTERM, sets the returned flag (the lab stops the running
/// remedy, tears its box down and returns the finished ones) and records
/// the signal; a second one exits at once. Registered after
/// [`fivetuple_lab::prepare`]: signal-hook starts no thread.
fn stop_on_signals() -> Result<(Arc<AtomicBool>, Arc<AtomicUsize>)> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM] {
        let code = 128 + signal;
        // Registered first, so the first signal finds the flag still false.
        signal_hook::flag::register_conditional_shutdown(signal, code, stop.clone())
            .context("installing the Ctrl-C handler")?;
        signal_hook::flag::register_usize(signal, which.clone(), signal as usize)
            .context("installing the Ctrl-C handler")?;
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the Ctrl-C handler")?;
    }
    Ok((stop, which))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Config, LabError> {
        let mut argv = vec!["repro"];
        argv.extend_from_slice(extra);
        resolve(&Cmd::parse_from(argv).args)
    }

    #[test]
    fn defaults_are_the_issue_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.ports(), 1000);
        assert_eq!(c.rate, 200);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.tw_reuse, 0);
        assert!(c.timestamps);
        assert_eq!(c.remedies, Remedy::ALL.to_vec());
        let nat = parse(&["--topology", "nat"]).unwrap();
        assert_eq!(nat.remedies, Remedy::NAT.to_vec());
        // The driver calls the pods from the node: no --connections bound on the NAT's ports.
        assert!(parse(&["--topology", "nat", "--ports", "10"]).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        for (args, needle) in [
            (&["--ports", "0"][..], "\"0\""),
            (&["--ports", "x"][..], "\"x\""),
            (&["--rate", "0"][..], "--rate \"0\""),
            (&["--only", "naive,magic"][..], "\"magic\""),
            (&["--timestamps", "maybe"][..], "\"maybe\""),
            (&["--topology", "mesh"][..], "\"mesh\""),
            (
                &["--topology", "nat", "--only", "naive,spread"][..],
                "--only \"spread\": makes no sense with --topology nat",
            ),
            (
                &["--only", "snat-pool"][..],
                "--only \"snat-pool\": makes no sense with --topology loopback",
            ),
            (&["--topology", "nat", "--ports", "70000"][..], "70000"),
            (&["--topology", "nat", "--ports", "0"][..], "--ports \"0\""),
            (
                &["--port-base", "65000", "--ports", "1000"][..],
                "65000-65999",
            ),
            (&["--ports", "10"][..], "--connections 64"),
            (&["--connections", "2000"][..], "\"2000\""),
            (&["--max-in-flight", "0"][..], "--max-in-flight \"0\""),
            (
                &["--chart", "/nonexistent-dir/x.svg"][..],
                "/nonexistent-dir",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}

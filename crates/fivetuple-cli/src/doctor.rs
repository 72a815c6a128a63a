//! `fivetuple doctor`: reads the settings and the socket table of a
//! namespace twice, `--interval` apart, and reports per-destination headroom,
//! time to exhaustion, owners and advice, as text or as JSON (schema in
//! docs/doctor.md). Exit codes follow the monitoring-plugin convention.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

mod node;

use crate::table_args::{TableArgs, ThresholdArgs};
use anyhow::{Context, Result};
use fivetuple_scan::model::{self, Analysis, Destination, Severity, Snapshot, Thresholds};
use fivetuple_scan::nat::{self, analysis::NatAnalysis};
use fivetuple_scan::netns::{self, Target};
use fivetuple_scan::{procs, Reader, ScanError, Settings, TcpState};
use serde::Serialize;

/// Version of the `--json` document; bumped only on incompatible changes.
const SCHEMA_VERSION: u32 = 1;
/// The longest `--interval` accepted.
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest non-zero `--interval` accepted: over a shorter window a
/// handful of connections reads as a huge rate (one new connection in 1 ms
/// is "1000/s"), and the time to exhaustion with it.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Raw `doctor` arguments, as typed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON document (schema: docs/doctor.md) instead of the report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    table: TableArgs,
    /// Show this many destinations, highest utilization first (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// Time between the two scans that measure the rate ("1s", "500ms", "2"; at least 100ms; "0" for one scan, no rate).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Skip process attribution (scanning /proc/PID/fd).
    #[arg(long)]
    no_processes: bool,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
struct Config {
    json: bool,
    all_netns: bool,
    bound_inactive: bool,
    target: Target,
    top: usize,
    thresholds: Thresholds,
    interval: Duration,
    reader: Reader,
    processes: bool,
}

impl Config {
    fn resolve(args: Args) -> Result<Config> {
        let thresholds = args.thresholds.thresholds()?;
        let target = args.table.target();
        if args.table.all_netns {
            args.table.check_all_netns()?;
        }
        // Open the namespace now so a bad --netns/--pid fails before any scan.
        netns::open(&target)?;
        let reader = args.table.reader();
        Ok(Config {
            json: args.json,
            all_netns: args.table.all_netns,
            bound_inactive: args.table.bound_inactive(),
            target,
            top: args.top,
            thresholds,
            interval: args.interval,
            reader,
            processes: !args.no_processes,
        })
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 1s, 500ms, 2)");
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    let d = Duration::from_secs_f64(v * scale);
    if d > MAX_INTERVAL {
        return Err(format!(
            "{s} is too long: at most {} s",
            MAX_INTERVAL.as_secs()
        ));
    }
    if !d.is_zero() && d < MIN_INTERVAL {
        return Err(format!(
            "{s} is too short to measure a rate: at least {} ms (or 0 for one scan and no rate)",
            MIN_INTERVAL.as_millis()
        ));
    }
    Ok(d)
}

/// Runs `doctor` and returns the exit code.
pub fn run(args: Args, out: &mut dyn Write) -> Result<u8> {
    let cfg = Config::resolve(args)?;
    if cfg.all_netns {
        return node::run(&cfg, out);
    }
    let (reader, interval) = (cfg.reader, cfg.interval);
    let attribution = if cfg.processes {
        crate::doctor_bpf::start(&cfg.target, interval)
    } else {
        crate::doctor_bpf::Attribution::Off
    };
    let scans = netns::run_in(&cfg.target, move || -> Result<_, ScanError> {
        // The NAT view costs two netlink round trips where there is no NAT.
        if interval.is_zero() {
            return Ok((None, fivetuple_scan::snapshot(reader)?, None, nat::scan()));
        }
        let before = fivetuple_scan::snapshot(reader)?;
        let nat_before = nat::scan();
        std::thread::sleep(interval);
        let now = fivetuple_scan::snapshot(reader)?;
        Ok((Some(before), now, Some(nat_before), nat::scan()))
    });
    let (before, now, nat_before, nat_now) = scans
        .and_then(|r| r)
        .with_context(|| format!("cannot scan the {} network namespace", cfg.target))?;

    let owners = cfg.processes.then(|| {
        let directions = model::Directions::new(&now.sockets, &now.settings);
        let wanted: HashSet<u64> = now
            .sockets
            .iter()
            .filter(|s| s.inode != 0 && directions.is_outbound(s))
            .map(|s| s.inode)
            .collect();
        procs::find_owners(&wanted)
    });
    let mut analysis = model::analyze(
        before.as_ref().map(|b| (b, interval)),
        &now,
        owners.as_ref(),
        cfg.thresholds,
    );
    let bpf = crate::doctor_bpf::finish(attribution, interval, &now, &mut analysis)?;
    let nat = nat::analysis::analyze(
        nat_before.as_ref().map(|b| (b, interval)),
        &nat_now,
        &cfg.thresholds,
    );
    // NAT exhaustion counts like socket exhaustion in the status and exit code.
    match &nat {
        Some(n) => analysis.status = analysis.status.max(n.status),
        // No NAT section: say when that is because the view could not be
        // read (conntrack and nftables refuse without CAP_NET_ADMIN), so
        // "no NAT here" and "cannot see" do not look the same.
        None => analysis.notes.extend(
            nat_now
                .notes
                .iter()
                .map(|note| format!("NAT view incomplete (it needs CAP_NET_ADMIN): {note}")),
        ),
    }
    let code = exit_code(analysis.status);
    if cfg.json {
        write_json(out, &cfg, &now, &analysis, nat.as_ref(), bpf.as_ref())?;
    } else {
        write_report(out, &cfg, &now, &analysis, nat.as_ref(), code, bpf.as_ref())?;
    }
    Ok(code)
}

fn exit_code(status: Severity) -> u8 {
    match status {
        Severity::Ok | Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

fn shown<'a>(cfg: &Config, a: &'a Analysis) -> &'a [Destination] {
    if cfg.top == 0 {
        &a.destinations
    } else {
        &a.destinations[..a.destinations.len().min(cfg.top)]
    }
}

#[derive(Serialize)]
struct JsonDoc<'a> {
    schema_version: u32,
    status: Severity,
    exit_code: u8,
    namespace: String,
    source: fivetuple_scan::Source,
    interval_s: f64,
    thresholds: JsonThresholds,
    settings: JsonSettings<'a>,
    counters: JsonCounters<'a>,
    totals: &'a model::Totals,
    destinations_total: usize,
    destinations: &'a [Destination],
    findings: &'a [model::Finding],
    notes: &'a [String],
    /// The NAT section; absent when the namespace has no source-NAT hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    nat: Option<JsonNat<'a>>,
    /// BPF attribution during the interval (docs/trace.md); absent with `--interval 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    bpf: Option<&'a crate::doctor_bpf::Report>,
}

#[derive(Serialize)]
struct JsonNat<'a> {
    #[serde(flatten)]
    analysis: &'a NatAnalysis,
    destinations_total: usize,
}

/// What the document says about one namespace (the top level of a
/// one-namespace document; each entry of `namespaces` with `--all-netns`).
#[derive(Serialize)]
struct JsonBody<'a> {
    status: Severity,
    exit_code: u8,
    source: fivetuple_scan::Source,
    settings: JsonSettings<'a>,
    counters: JsonCounters<'a>,
    totals: &'a model::Totals,
    destinations_total: usize,
    destinations: &'a [Destination],
    findings: &'a [model::Finding],
    notes: &'a [String],
}

impl<'a> JsonBody<'a> {
    fn new(
        cfg: &Config,
        settings: &'a Settings,
        counters: &'a fivetuple_scan::Counters,
        a: &'a Analysis,
    ) -> JsonBody<'a> {
        JsonBody {
            status: a.status,
            exit_code: exit_code(a.status),
            source: a.source,
            settings: JsonSettings {
                settings,
                usable_ports: a.totals.usable_ports,
            },
            counters: JsonCounters {
                counters,
                active_opens_per_s: a.active_opens_per_s,
            },
            totals: &a.totals,
            destinations_total: a.destinations.len(),
            destinations: shown(cfg, a),
            findings: &a.findings,
            notes: &a.notes,
        }
    }
}

impl JsonThresholds {
    fn new(t: &Thresholds) -> JsonThresholds {
        JsonThresholds {
            warn_pct: t.warn_pct,
            crit_pct: t.crit_pct,
            warn_seconds: t.warn_seconds,
            crit_seconds: t.crit_seconds,
        }
    }
}

#[derive(Serialize)]
struct JsonThresholds {
    warn_pct: f64,
    crit_pct: f64,
    warn_seconds: f64,
    crit_seconds: f64,
}

#[derive(Serialize)]
struct JsonSettings<'a> {
    #[serde(flatten)]
    settings: &'a Settings,
    usable_ports: u32,
}

#[derive(Serialize)]
struct JsonCounters<'a> {
    #[serde(flatten)]
    counters: &'a fivetuple_scan::Counters,
    active_opens_per_s: Option<f64>,
}

fn write_json(
    out: &mut dyn Write,
    cfg: &Config,
    now: &Snapshot,
    a: &Analysis,
    nat: Option<&NatAnalysis>,
    bpf: Option<&crate::doctor_bpf::Report>,
) -> Result<()> {
    // The one-namespace document keeps its field order (golden files).
    let b = JsonBody::new(cfg, &now.settings, &now.counters, a);
    let nat = nat.map(|n| nat_shown(cfg, n));
    let doc = JsonDoc {
        schema_version: SCHEMA_VERSION,
        status: b.status,
        exit_code: b.exit_code,
        namespace: cfg.target.to_string(),
        source: b.source,
        interval_s: cfg.interval.as_secs_f64(),
        thresholds: JsonThresholds::new(&cfg.thresholds),
        settings: b.settings,
        counters: b.counters,
        totals: b.totals,
        destinations_total: b.destinations_total,
        destinations: b.destinations,
        findings: b.findings,
        notes: b.notes,
        nat: nat.as_ref().map(|(analysis, total)| JsonNat {
            analysis,
            destinations_total: *total,
        }),
        bpf,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

/// The NAT analysis with `--top` destinations, and how many there are in all.
fn nat_shown(cfg: &Config, n: &NatAnalysis) -> (NatAnalysis, usize) {
    let mut shown = n.clone();
    shown
        .destinations
        .truncate(if cfg.top == 0 { usize::MAX } else { cfg.top });
    (shown, n.destinations.len())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

fn rate_note(cfg: &Config) -> String {
    if cfg.interval.is_zero() {
        "one scan, no rate (--interval 0)".to_string()
    } else {
        format!("rate over {} s", cfg.interval.as_secs_f64())
    }
}

fn write_report(
    out: &mut dyn Write,
    cfg: &Config,
    now: &Snapshot,
    a: &Analysis,
    nat: Option<&NatAnalysis>,
    code: u8,
    bpf: Option<&crate::doctor_bpf::Report>,
) -> Result<()> {
    writeln!(
        out,
        "fivetuple doctor: namespace {}, socket table from {} ({} sockets), {}",
        cfg.target,
        a.source,
        a.totals.sockets,
        rate_note(cfg)
    )?;
    write_namespace(out, cfg, &now.settings, &now.counters, a)?;
    if let Some(n) = nat {
        crate::nat_report::write_text(out, n, cfg.top, severity_name)?;
    }
    if let Some(report) = bpf {
        crate::doctor_bpf::write_section(out, report)?;
    }
    writeln!(out, "\nStatus: {} (exit {code})", severity_name(a.status))?;
    Ok(())
}

/// Settings, sockets, destinations, findings and notes of one namespace.
fn write_namespace(
    out: &mut dyn Write,
    cfg: &Config,
    s: &Settings,
    c: &fivetuple_scan::Counters,
    a: &Analysis,
) -> Result<()> {
    let t = &a.totals;
    writeln!(out, "\nSettings")?;
    let (lo, hi) = s.ip_local_port_range.bounds();
    let reserved = if s.ip_local_reserved_ports.is_empty() {
        "(none)".to_string()
    } else {
        s.ip_local_reserved_ports.to_string()
    };
    let reuse_meaning = match s.tcp_tw_reuse {
        0 => "off: connect() never reuses a TIME_WAIT 4-tuple",
        1 => "on: connect() may reuse a TIME_WAIT 4-tuple",
        2 => "loopback only (default): connect() may reuse TIME_WAIT toward 127.0.0.0/8 and ::1",
        _ => "unknown value",
    };
    let rows: Vec<(String, String, String)> = vec![
        (
            "net.ipv4.ip_local_port_range".into(),
            format!("{lo} {hi}"),
            format!("ports connect() picks from ({} ports)", s.range_len()),
        ),
        (
            "net.ipv4.ip_local_reserved_ports".into(),
            reserved,
            format!(
                "never picked by connect() ({} inside the range)",
                s.reserved_in_range()
            ),
        ),
        (
            "net.ipv4.tcp_tw_reuse".into(),
            s.tcp_tw_reuse.to_string(),
            reuse_meaning.into(),
        ),
        (
            "net.ipv4.tcp_tw_reuse_delay".into(),
            s.tcp_tw_reuse_delay_ms
                .map_or("(absent)".into(), |v| format!("{v} ms")),
            "age a TIME_WAIT needs before reuse (fixed 1000 ms before Linux 6.14)".into(),
        ),
        (
            "net.ipv4.tcp_timestamps".into(),
            s.tcp_timestamps.to_string(),
            "tcp_tw_reuse works only when this is on".into(),
        ),
        (
            "net.ipv4.tcp_max_tw_buckets".into(),
            s.tcp_max_tw_buckets.to_string(),
            "TIME_WAIT sockets beyond this are dropped, not kept".into(),
        ),
        (
            "net.ipv4.tcp_fin_timeout".into(),
            s.tcp_fin_timeout.to_string(),
            "FIN_WAIT2 timeout; NOT TIME_WAIT, which is fixed at 60 s: changing it frees no ports"
                .into(),
        ),
    ];
    for (k, v, m) in rows {
        writeln!(out, "  {k:<34} {v:<12} {m}")?;
    }
    writeln!(
        out,
        "  counters: ActiveOpens {}{}, TcpExt TW {}, TWRecycled {}, TCPTimeWaitOverflow {}, sockstat tw {}",
        opt(c.active_opens),
        a.active_opens_per_s.map_or(String::new(), |r| format!(" ({r:.1}/s)")),
        opt(c.tw),
        opt(c.tw_recycled),
        opt(c.tcp_time_wait_overflow),
        opt(c.sockstat_tw)
    )?;
    writeln!(
        out,
        "\nSockets: {} total, {} listening, {} inbound (not counted{}), {} outbound to {} destinations, {} TIME_WAIT",
        t.sockets,
        t.listening,
        t.inbound,
        if t.inbound_without_listener > 0 {
            format!(
                "; {} of them of a server that no longer listens",
                t.inbound_without_listener
            )
        } else {
            String::new()
        },
        t.outbound,
        a.destinations.len(),
        t.time_wait
    )?;
    writeln!(
        out,
        "Usable ports per destination: {} (range {} - reserved {} - held by bind()/listen() {})",
        t.usable_ports,
        s.range_len(),
        s.reserved_in_range(),
        t.ports_held_by_binds
    )?;

    let list = shown(cfg, a);
    if list.is_empty() {
        writeln!(out, "\nNo outbound connections.")?;
    } else {
        writeln!(
            out,
            "\nDestinations ({} of {}, highest utilization first)",
            list.len(),
            a.destinations.len()
        )?;
        writeln!(
            out,
            "  {:<40} {:>7} {:>8} {:>6} {:>7} {:>7} {:>6} {:>14} {:>8} {:>9} {:>10}  PROCESSES",
            "LOCAL -> REMOTE",
            "IN USE",
            "CAPACITY",
            "UTIL",
            "TW",
            "ESTAB",
            "OTHER",
            "TW FREE 10/30/60",
            "RATE/s",
            "SUSTAIN/s",
            "EXHAUST IN"
        )?;
        for d in list {
            let tw = d.states.get(TcpState::TimeWait);
            let est = d.states.get(TcpState::Established);
            let other = d.states.total() - tw - est;
            let f = d.time_wait_freeing;
            let procs = if d.processes.is_empty() {
                "-".to_string()
            } else {
                d.processes
                    .iter()
                    .take(3)
                    .map(|p| format!("{}[{}]×{}", p.comm, p.pid, p.sockets))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            writeln!(
                out,
                "  {:<40} {:>7} {:>8} {:>5.1}% {:>7} {:>7} {:>6} {:>14} {:>8} {:>9.1} {:>10}  {}",
                d.label(),
                d.in_use,
                d.capacity,
                d.utilization * 100.0,
                tw,
                est,
                other,
                format!("{}/{}/{}", f.within_10s, f.within_30s, f.within_60s),
                d.rate_per_s.map_or("-".into(), |r| format!("{r:.1}")),
                d.sustainable_rate_per_s,
                d.seconds_to_exhaustion
                    .map_or("-".into(), |s| format!("{s:.0} s")),
                procs
            )?;
        }
    }

    writeln!(out, "\nFindings")?;
    if a.findings.is_empty() {
        writeln!(
            out,
            "  none: every destination is below {}% of its ports and not running out within {} s",
            cfg.thresholds.warn_pct, cfg.thresholds.warn_seconds
        )?;
    }
    write_findings(out, &a.findings)?;
    if !a.notes.is_empty() {
        writeln!(out, "\nNotes")?;
        for n in &a.notes {
            writeln!(out, "  {n}")?;
        }
    }
    Ok(())
}

/// One line per finding with its advice below it.
fn write_findings(out: &mut dyn Write, findings: &[model::Finding]) -> Result<()> {
    for f in findings {
        writeln!(out, "  {:<8} {}", severity_name(f.severity), f.message)?;
        for adv in &f.advice {
            writeln!(out, "           -> {adv}")?;
        }
    }
    Ok(())
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Ok => "OK",
        Severity::Info => "INFO",
        Severity::Warning => "WARNING",
        Severity::Critical => "CRITICAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("0").unwrap(), Duration::ZERO);
        assert!(parse_interval("-1").unwrap_err().contains("-1"));
        assert!(parse_interval("1h").unwrap_err().contains("1h"));
        assert!(parse_interval("301s").unwrap_err().contains("301s"));
        assert_eq!(parse_interval("100ms").unwrap(), Duration::from_millis(100));
        let e = parse_interval("99ms").unwrap_err();
        assert!(e.contains("99ms") && e.contains("100 ms"), "{e}");
        assert!(parse_interval("0.00001").unwrap_err().contains("0.00001"));
    }

    #[test]
    fn severities_map_to_plugin_codes() {
        assert_eq!(exit_code(Severity::Ok), 0);
        assert_eq!(exit_code(Severity::Info), 0);
        assert_eq!(exit_code(Severity::Warning), 1);
        assert_eq!(exit_code(Severity::Critical), 2);
    }
}

#[cfg(test)]
mod golden;

//! Exporter under hostile load (docs/BENCHMARKS.md, "fivetuple exporter
//! under hostile load"): issue 9's acceptance, measured.
//!
//! In a fresh network namespace with a 10k-socket table (TIME_WAITs toward
//! one listener), a well-behaved scraper GETs /metrics once a second:
//! 1. alone (baseline);
//! 2. while 64 idle connections (from 127.0.0.2) and 300 slowloris
//!    connections (from 127.0.0.1, the scraper's own address) are held
//!    open against the exporter and reopened whenever it closes them;
//! 3. while 8 scrapers (from 127.0.0.3) GET /metrics back to back.
//!
//! For each phase it prints successes, how many were answered within 1 s,
//! and p50/p99/max latency. Needs root. Run with
//! `cargo bench -p fivetuple-cli --bench exporter_hostile`
//! (FT_BENCH_SECONDS changes the 30 s per attacked phase, FT_BENCH_SOCKETS the table).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_testkit::hostile;

const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(phase: &str, results: &[Result<Duration, String>], extra: &str) {
    let ok: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let fast = ok.iter().filter(|d| **d < Duration::from_secs(1)).count();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "| {phase} | {}/{} | {}/{} ({:.0}%) | {:.1} ms | {:.1} ms | {:.1} ms | {extra} |",
        ok.len(),
        results.len(),
        fast,
        results.len(),
        100.0 * fast as f64 / results.len() as f64,
        ms(hostile::quantile(&ok, 0.5)),
        ms(hostile::quantile(&ok, 0.99)),
        ms(ok.iter().max().copied().unwrap_or_default()),
    );
    if !failures.is_empty() {
        eprintln!("{phase}: failures: {failures:?}");
    }
}

fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    let a = hostile::get(
        [127, 0, 0, 1],
        addr,
        "/metrics",
        "",
        Duration::from_secs(10),
    )
    .unwrap();
    a.body
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("exporter_hostile benchmark skipped: needs root (unshare CLONE_NEWNET)");
        return;
    }
    let secs = env("FT_BENCH_SECONDS", 30);
    let sockets = env("FT_BENCH_SOCKETS", 10_000);
    fivetuple_testkit::raise_fd_limit();
    let sysctls = [("tcp_tw_reuse", "0")];
    fivetuple_testkit::in_fresh_netns(&sysctls, move || {
        let l = TcpListener::bind("127.0.0.1:8080").unwrap();
        fivetuple_testkit::make_time_wait(&l, sockets);
        let mut child = Command::new(BIN)
            .args(["exporter", "--listen", "127.0.0.1:19299"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run fivetuple exporter");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _exporter = Reaper(child);
        let addr: SocketAddr = "127.0.0.1:19299".parse().unwrap();
        let every = Duration::from_secs(1);
        let timeout = Duration::from_secs(10);
        let seen = metric(addr, "fivetuple_time_wait_sockets");

        println!(
            "table: {seen} TIME_WAIT sockets; scraper: 1 GET /metrics per second, {secs} per attacked phase"
        );
        println!("| phase | answered 200 | within 1 s | p50 | p99 | max | notes |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        let base = hostile::scrape_every(addr, [127, 0, 0, 1], "/metrics", "", every, 10, timeout);
        row("alone", &base, "");

        let attack = hostile::hold_open(
            addr,
            [127, 0, 0, 2],
            64,
            [127, 0, 0, 1],
            300,
            Duration::from_millis(250),
            Duration::from_secs(secs as u64 + 30),
        );
        std::thread::sleep(Duration::from_secs(2));
        let held = attack.open();
        let under =
            hostile::scrape_every(addr, [127, 0, 0, 1], "/metrics", "", every, secs, timeout);
        let report = attack.finish();
        let evicted = metric(
            addr,
            "fivetuple_exporter_connections_refused_total{reason=\"evicted_idle\"}",
        );
        let timed_out = metric(
            addr,
            "fivetuple_exporter_connections_refused_total{reason=\"request_timeout\"}",
        );
        row(
            "64 idle + 300 slowloris held open",
            &under,
            &format!(
                "{held} attacking connections open at start; {} attacker connects; exporter closed {evicted} to make room, {timed_out} for the deadline",
                report.connects
            ),
        );

        let shared_before = metric(addr, "fivetuple_exporter_scrapes_shared_total");
        let until = Instant::now() + Duration::from_secs(secs as u64 + 2);
        let flooders = hostile::flood(addr, [127, 0, 0, 3], 8, "/metrics", until);
        std::thread::sleep(Duration::from_secs(1));
        let ninth =
            hostile::scrape_every(addr, [127, 0, 0, 4], "/metrics", "", every, secs, timeout);
        let (mut ok, mut other) = (0, 0);
        for f in flooders {
            let (o, x) = f.join().unwrap();
            ok += o;
            other += x;
        }
        let shared = metric(addr, "fivetuple_exporter_scrapes_shared_total") - shared_before;
        row(
            "ninth scraper beside 8 flooding scrapers",
            &ninth,
            &format!(
                "flooders: {ok} answered 200, {other} otherwise; {shared} scrapes shared a scan"
            ),
        );
    });
}

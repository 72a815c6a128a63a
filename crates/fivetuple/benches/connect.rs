//! Connect benchmarks (not timed tests): figures go to docs/BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p fivetuple --bench connect
//! ```
//!
//! Needs root: every measurement runs in a fresh network namespace, so the
//! socket table starts empty and the host is untouched.
//!
//! 1. **Overhead**: connect+close rate of plain `std::net::TcpStream::connect`
//!    vs fivetuple's kernel default vs rotation, empty table, interleaved
//!    rounds; the median round per contender and its ratio to std.
//! 2. **Occupancy cliff**: a 10,000-port range; hold 50 % and then 90 % of it
//!    toward one destination (connections opened with the policy under test,
//!    as in a service that has used it all along), then measure connects/s.
//!    Measured connections close with RST (`SO_LINGER {on, 0}`) so that the
//!    occupancy stays where it was set.
//!
//! Environment: `ROUNDS` (default 5), `CONNECTS` per round (default 4000),
//! `CLIFF_CONNECTS` per cliff cell (default 1000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{in_netns, Mode, Sink};
use fivetuple::{Connector, KernelDefault, PortRange, PortWindow, Rotation};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        eprintln!("usage: cargo bench -p fivetuple --bench connect (settings via ROUNDS, CONNECTS, CLIFF_CONNECTS)");
        std::process::exit(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("connect benchmark: needs root (a network namespace per measurement)");
        std::process::exit(2);
    }
    common::raise_fd_limit();
    overhead();
    cliff();
}

#[derive(Clone, Copy, Debug)]
enum Contender {
    Std,
    Kernel,
    Rotation,
}

fn overhead() {
    let rounds = env("ROUNDS", 5);
    let n = env("CONNECTS", 4000);
    let contenders = [Contender::Std, Contender::Kernel, Contender::Rotation];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        // Rotate the order each round so no contender always runs first.
        for k in 0..contenders.len() {
            let i = (k + round) % contenders.len();
            let c = contenders[i];
            let rate = in_netns("bench overhead", &[], move || {
                // Hold mode: the sink only accepts (it never falls behind and
                // overflows the accept queue); the client still closes first.
                let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
                let dest = sink.addr;
                let connector = match c {
                    Contender::Rotation => Connector::new(
                        Rotation::new(PortRange::new(20000, 29999).unwrap()).unwrap(),
                    ),
                    _ => Connector::new(KernelDefault),
                };
                let (start, cpu) = (Instant::now(), thread_cpu());
                for _ in 0..n {
                    let s = match c {
                        Contender::Std => TcpStream::connect(dest).expect("std connect"),
                        _ => connector.connect_std(dest).expect("fivetuple connect"),
                    };
                    drop(s);
                }
                let cpu_us = (thread_cpu() - cpu).as_secs_f64() * 1e6 / n as f64;
                (n as f64 / start.elapsed().as_secs_f64(), cpu_us)
            })
            .expect("root");
            rates[i].push(rate.0);
            cpu[i].push(rate.1);
        }
        eprintln!("overhead round {}/{rounds} done", round + 1);
    }
    let med: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let med_cpu: Vec<f64> = cpu.iter_mut().map(|r| median(r)).collect();
    println!(
        "\n## connect+close rate, empty table ({rounds} rounds x {n} connects, median round)\n"
    );
    println!("| contender | connects/s (median) | all rounds | rate ratio to std | client CPU us/connect (median) | CPU ratio to std |");
    println!("|---|---|---|---|---|---|");
    for (i, c) in contenders.iter().enumerate() {
        let all: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {c:?} | {:.0} | {} | {:.3} | {:.2} | {:.3} |",
            med[i],
            all.join(", "),
            med[i] / med[0],
            med_cpu[i],
            med_cpu[i] / med_cpu[0]
        );
    }
}

/// CPU time (user + system) the calling thread has used: unlike wall time,
/// it does not count the time the thread waited while other work ran on a
/// busy machine.
fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill for the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn cliff() {
    let m = env("CLIFF_CONNECTS", 1000);
    println!("\n## occupancy cliff: 10,000-port range (30000-39999), one destination, {m} connects per cell\n");
    println!("| policy | occupancy | held | connects/s | client CPU us/connect | failed | attempts per connect |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for occupancy in [0.0, 0.5, 0.9] {
        for policy in ["kernel", "rotate", "window"] {
            let row = in_netns(
                "bench cliff",
                &[
                    ("ip_local_port_range", "30000 39999"),
                    ("tcp_tw_reuse", "0"),
                ],
                move || cliff_cell(policy, occupancy, m),
            )
            .expect("root");
            println!(
                "| {policy} | {:.0} % | {} | {:.0} | {:.1} | {} | {:.2} |",
                occupancy * 100.0,
                row.held,
                row.rate,
                row.cpu_us,
                row.failed,
                row.attempts_per_connect
            );
            results.push((policy, occupancy, row.rate, row.cpu_us));
        }
    }
    let rate = |p: &str, o: f64| {
        results
            .iter()
            .find(|r| r.0 == p && r.1 == o)
            .map_or(f64::NAN, |r| r.2)
    };
    let cpu = |p: &str, o: f64| {
        results
            .iter()
            .find(|r| r.0 == p && r.1 == o)
            .map_or(f64::NAN, |r| r.3)
    };
    println!();
    for o in [0.5, 0.9] {
        println!(
            "- at {:.0} %: connects/s rotation / kernel = {:.1}x, window / kernel = {:.1}x; CPU per connect kernel / rotation = {:.1}x, kernel / window = {:.1}x",
            o * 100.0,
            rate("rotate", o) / rate("kernel", o),
            rate("window", o) / rate("kernel", o),
            cpu("kernel", o) / cpu("rotate", o),
            cpu("kernel", o) / cpu("window", o)
        );
    }
}

struct Cell {
    held: usize,
    rate: f64,
    cpu_us: f64,
    failed: usize,
    attempts_per_connect: f64,
}

fn cliff_cell(policy: &str, occupancy: f64, m: usize) -> Cell {
    let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
    let dest: SocketAddr = sink.addr;
    let range = PortRange::new(30000, 39999).unwrap();
    let mut connector = match policy {
        "kernel" => Connector::new(KernelDefault),
        "rotate" => Connector::new(Rotation::new(range).unwrap().with_start(0)),
        _ => Connector::new(PortWindow::new(range).unwrap()),
    };
    let target = (10_000.0 * occupancy) as usize;
    let mut held = Vec::with_capacity(target);
    while held.len() < target {
        match connector.connect_std(dest) {
            Ok(s) => held.push(s),
            Err(e) => panic!(
                "holding {target} connections with {policy}: failed at {}: {e:#?}",
                held.len()
            ),
        }
    }
    sink.wait_for(target);
    connector
        .set_linger_zero(true)
        .set_connect_timeout(Some(Duration::from_secs(5)));
    let before = connector.stats().snapshot();
    let mut failed = 0;
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..m {
        match connector.connect_std(dest) {
            Ok(s) => drop(s),
            Err(_) => failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_us = (thread_cpu() - cpu).as_secs_f64() * 1e6 / m as f64;
    let after = connector.stats().snapshot();
    Cell {
        held: held.len(),
        rate: (m - failed) as f64 / elapsed,
        cpu_us,
        failed,
        attempts_per_connect: (after.attempts - before.attempts) as f64 / m as f64,
    }
}

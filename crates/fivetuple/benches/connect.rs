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
//! 3. **TIME_WAIT occupancy**: Linux's default range (32768-60999, 28,232
//!    ports), `tcp_tw_reuse=0`; connect+close (client first) toward one
//!    destination until 50 % and then 90 % of the range is in TIME_WAIT (no
//!    file descriptor held: counted with `ss`), then connects/s of each
//!    policy. The filler is either the kernel default (other traffic of the
//!    host, the common case) or the measured policy itself (a service that
//!    has used it all along). The TIME_WAIT count is checked before and
//!    after each measurement, and the bench fails if the fill's TIME_WAITs
//!    could have expired (60 s) or the count fell below the target.
//!
//! Environment: `ROUNDS` (default 5), `CONNECTS` per round (default 4000),
//! `CLIFF_CONNECTS` per cliff cell (default 1000), `TW_CONNECTS` per
//! TIME_WAIT cell (default 1000), `PARTS` (comma-separated subset of
//! `overhead,cliff,timewait`; default all).

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
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "overhead,cliff,timewait".into());
    for part in parts.split(',') {
        match part {
            "overhead" => overhead(),
            "cliff" => cliff(),
            "timewait" => time_wait(),
            other => {
                eprintln!("PARTS: unknown part {other:?}; expected overhead, cliff or timewait");
                std::process::exit(2);
            }
        }
    }
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
                row.measured.rate,
                row.measured.cpu_us,
                row.measured.failed,
                row.measured.attempts_per_connect
            );
            results.push((policy, occupancy, row.measured.rate, row.measured.cpu_us));
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
    measured: Measured,
}

/// `m` connects of one cell, closed with RST so the occupancy stays put.
struct Measured {
    rate: f64,
    cpu_us: f64,
    failed: usize,
    attempts_per_connect: f64,
}

fn measure(connector: &mut Connector, dest: SocketAddr, m: usize) -> Measured {
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
    Measured {
        rate: (m - failed) as f64 / elapsed,
        cpu_us,
        failed,
        attempts_per_connect: (after.attempts - before.attempts) as f64 / m as f64,
    }
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
    let measured = measure(&mut connector, dest, m);
    Cell {
        held: held.len(),
        measured,
    }
}

/// Linux's default `ip_local_port_range`.
const DEFAULT_LO: u16 = 32768;
const DEFAULT_HI: u16 = 60999;
/// Ports in that range: 28,232.
const DEFAULT_PORTS: usize = (DEFAULT_HI - DEFAULT_LO) as usize + 1;
/// TIME_WAIT's fixed length on Linux (`TCP_TIMEWAIT_LEN`).
const TIME_WAIT_LIFE: Duration = Duration::from_secs(60);

fn policy_connector(policy: &str) -> Connector {
    let range = PortRange::new(DEFAULT_LO, DEFAULT_HI).unwrap();
    match policy {
        "kernel" => Connector::new(KernelDefault),
        "rotate" => Connector::new(Rotation::new(range).unwrap().with_start(0)),
        "window" => Connector::new(PortWindow::new(range).unwrap()),
        other => panic!("policy {other:?}: expected kernel, rotate or window"),
    }
}

fn time_wait() {
    let m = env("TW_CONNECTS", 1000);
    let ports = DEFAULT_PORTS;
    println!("\n## TIME_WAIT occupancy: default range ({DEFAULT_LO}-{DEFAULT_HI}, {ports} ports), tcp_tw_reuse=0, one destination, {m} connects per cell\n");
    println!("| filled by | policy | occupancy | TIME_WAIT before / after | connects/s | client CPU us/connect | failed | attempts per connect | s since fill start |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // (filler, measured policy)
    let cells = [
        ("kernel", "kernel"),
        ("kernel", "rotate"),
        ("kernel", "window"),
        ("rotate", "rotate"),
        ("window", "window"),
    ];
    let mut results = Vec::new();
    for occupancy in [0.5, 0.9] {
        for (filler, policy) in cells {
            let range = format!("{DEFAULT_LO} {DEFAULT_HI}");
            let row = in_netns(
                "bench time_wait",
                &[
                    ("ip_local_port_range", range.as_str()),
                    ("tcp_tw_reuse", "0"),
                    // RFC 1337: a TIME_WAIT ignores RSTs. Without it, the few
                    // RSTs a busy loopback sends (a late ACK reaching a closed
                    // server socket) killed 7-283 of ~14,000 TIME_WAITs per
                    // fill here (TcpOutRsts matched the loss exactly).
                    ("tcp_rfc1337", "1"),
                ],
                move || time_wait_cell(filler, policy, (ports as f64 * occupancy) as usize, m),
            )
            .expect("root");
            println!(
                "| {filler} | {policy} | {:.0} % | {} / {} | {:.0} | {:.1} | {} | {:.2} | {:.1} |",
                occupancy * 100.0,
                row.tw_before,
                row.tw_after,
                row.measured.rate,
                row.measured.cpu_us,
                row.measured.failed,
                row.measured.attempts_per_connect,
                row.age.as_secs_f64()
            );
            results.push((
                filler,
                policy,
                occupancy,
                row.measured.rate,
                row.measured.cpu_us,
            ));
        }
    }
    let get = |f: &str, p: &str, o: f64| {
        results
            .iter()
            .find(|r| r.0 == f && r.1 == p && r.2 == o)
            .map_or((f64::NAN, f64::NAN), |r| (r.3, r.4))
    };
    println!();
    for o in [0.5, 0.9] {
        let (kr, kc) = get("kernel", "kernel", o);
        for (f, p) in &cells[1..] {
            let (r, c) = get(f, p, o);
            println!(
                "- at {:.0} %, {p} (filled by {f}) / kernel default: connects/s {:.1}x, CPU per connect kernel / {p} {:.1}x",
                o * 100.0,
                r / kr,
                kc / c
            );
        }
    }
}

struct TwCell {
    tw_before: usize,
    tw_after: usize,
    measured: Measured,
    age: Duration,
}

/// TIME_WAIT sockets of the calling thread's namespace: the `tw` field of
/// `/proc/thread-self/net/sockstat` (the namespace's TIME_WAIT count, exact;
/// `/proc/net` would show the main thread's namespace). The namespace is
/// fresh, so they all point at the one destination.
fn time_wait_count() -> usize {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat")
        .expect("read /proc/thread-self/net/sockstat");
    let tcp = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("a TCP: line in sockstat");
    let mut words = tcp.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next().and_then(|v| v.parse().ok()).expect("tw count");
        }
    }
    panic!("no tw field in sockstat line {tcp:?}")
}

fn time_wait_cell(filler: &str, policy: &str, target: usize, m: usize) -> TwCell {
    // The sink reads to EOF and closes: the client, closing first, keeps the
    // TIME_WAIT.
    let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
    let dest: SocketAddr = sink.addr;
    let fill_start = Instant::now();
    let fill = policy_connector(filler);
    // Above half the range the kernel default connects at ~150/s here (it
    // walks every busy even port first), so it could not reach 90 % within
    // TIME_WAIT's 60 s. Its fill stops at half the range, where every even
    // port is taken, exactly as the kernel leaves it; the rest is filled
    // through a per-socket window over the same range: still a port chosen at
    // connect() without SO_REUSEADDR, so the same TIME_WAIT state, but
    // without the even/odd walk.
    let half = DEFAULT_PORTS / 2;
    let window = policy_connector("window");
    for i in 0..target {
        let c = if filler == "kernel" && i >= half {
            &window
        } else {
            &fill
        };
        match c.connect_std(dest) {
            Ok(s) => drop(s),
            Err(e) => panic!("filling {target} TIME_WAITs with {filler}: failed at {i}: {e:#?}"),
        }
    }
    // The last connections may still be in FIN_WAIT2 for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tw_before = time_wait_count();
    while tw_before < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        tw_before = time_wait_count();
    }
    assert!(
        tw_before >= target,
        "{filler}: {tw_before} TIME_WAITs after {target} connect+close, expected {target}; sockets by state: {}",
        states()
    );
    // The measured policy: the filler itself when it is the same policy, so
    // rotation goes on from where its fill stopped.
    let mut connector = if filler == policy {
        fill
    } else {
        policy_connector(policy)
    };
    let measured = measure(&mut connector, dest, m);
    let tw_after = time_wait_count();
    let age = fill_start.elapsed();
    assert!(
        age < TIME_WAIT_LIFE,
        "{filler} -> {policy}: {age:?} since the fill started: the first TIME_WAITs may have expired; lower TW_CONNECTS"
    );
    assert!(
        tw_after >= target,
        "{filler} -> {policy}: TIME_WAIT count fell to {tw_after} (target {target}) during the measurement"
    );
    TwCell {
        tw_before,
        tw_after,
        measured,
        age,
    }
}

/// `ss`'s socket counts by state, for an assertion message.
fn states() -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "ss -Htan | awk '{print $1}' | sort | uniq -c | tr '\\n' ' '; nstat -az | grep -E \"TW|Overflow|Reset|AttemptFails|RcvPruned|Ofo|Drop\" | grep -v \" 0 \""])
        .output()
        .expect("run ss and nstat");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! The kernel hook against the library and against no policy (not a timed
//! test): figures go to docs/BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p fivetuple-bpf --bench hook
//! ```
//!
//! Needs root. One process, three contenders, the same plain
//! `std::net::TcpStream::connect` client loop except for the library:
//! - **no policy**: the kernel picks the port;
//! - **library**: fivetuple's `Connector` with `Rotation` over 20000-29999;
//! - **kernel hook**: the policy program with `rotate:20000-29999` attached
//!   to a transient cgroup the benchmark process moves into for its rounds.
//!
//! The hook runs in the connecting thread, so the client thread's CPU time
//! (`getrusage(RUSAGE_THREAD)`) includes it. Measured connections close with
//! RST (`SO_LINGER {on, 0}`) so no TIME_WAIT builds up between rounds.
//!
//! 1. **Empty table**: `ROUNDS` interleaved rounds (rotating order) of
//!    `CONNECTS` connects each in one fresh namespace; the median round.
//! 2. **90 % occupancy**: a 10,000-port `ip_local_port_range` (30000-39999);
//!    each contender first opens and holds 90 % of *its* range toward the
//!    destination (as a service that has used it all along), then
//!    `CLIFF_CONNECTS` connects are measured, in a fresh namespace each.
//!
//! Environment: `ROUNDS` (default 5), `CONNECTS` (default 4000),
//! `CLIFF_CONNECTS` (default 500: the hook cannot retry, and rotation with
//! 90 % of its ports held has 1,000 free ones before it wraps into held ones).

use fivetuple_testkit::bench::median;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fivetuple::{Connector, PortRange, ReservedPorts, Rotation};
use fivetuple_bpf::cgroup::{own_cgroup, Transient};
use fivetuple_bpf::{policy, KernelPolicy};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    NoPolicy,
    Library,
    Hook,
}

impl Contender {
    const ALL: [Contender; 3] = [Contender::NoPolicy, Contender::Library, Contender::Hook];

    fn name(self) -> &'static str {
        match self {
            Contender::NoPolicy => "no policy (kernel default)",
            Contender::Library => "library Connector, rotate:20000-29999",
            Contender::Hook => "kernel hook (fivetuple run), rotate:20000-29999",
        }
    }
}

/// Accepts on 127.0.0.1 (backlog 4096) and keeps or drops what it accepts.
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(keep: bool) -> Sink {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&"127.0.0.1:8080".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(4096).unwrap();
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) if keep => held.push(s),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Sink {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// Moves this whole process into `cgroup` (cgroup v2 moves every thread).
fn move_to(cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|e| panic!("moving into {}: {e}", cgroup.display()));
}

struct Round {
    rate: f64,
    cpu_us: f64,
    failed: usize,
}

/// `n` connects with `contender`'s client, each closed with RST.
fn connects(contender: Contender, connector: &Connector, addr: SocketAddr, n: usize) -> Round {
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut failed = 0;
    for _ in 0..n {
        let stream = match contender {
            Contender::Library => connector.connect_std(addr).map_err(|e| e.to_string()),
            _ => TcpStream::connect(addr).map_err(|e| e.to_string()),
        };
        match stream {
            Ok(s) => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            Err(_) => failed += 1,
        }
    }
    let wall = t0.elapsed();
    let cpu = thread_cpu() - cpu0;
    Round {
        rate: n as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        failed,
    }
}

fn library() -> Connector {
    Connector::new(
        Rotation::with_reserved(
            PortRange::new(20000, 29999).unwrap(),
            &ReservedPorts::none(),
        )
        .unwrap(),
    )
}

fn hook_policy() -> KernelPolicy {
    KernelPolicy::parse_with(
        "rotate:20000-29999",
        &ReservedPorts::none(),
        PortRange::new(20000, 29999).unwrap(),
    )
    .unwrap()
}

fn main() {
    if std::env::args().skip(1).any(|a| a != "--bench") {
        eprintln!("usage: cargo bench -p fivetuple-bpf --bench hook (settings via ROUNDS, CONNECTS, CLIFF_CONNECTS)");
        std::process::exit(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("hook benchmark: needs root (BPF, cgroups, a network namespace per measurement)");
        std::process::exit(2);
    }
    fivetuple_testkit::raise_fd_limit();
    let home = own_cgroup().expect("cgroup v2");
    let hooked = Transient::create(&home, "bench").expect("a transient cgroup");
    let mut loaded = policy::load(&hook_policy(), None).expect("load the policy program");
    loaded.attach(hooked.path()).expect("attach");

    let rounds = env("ROUNDS", 5);
    let n = env("CONNECTS", 4000);
    println!("## empty table: {rounds} rounds of {n} connects, median round\n");
    println!("| contender | connects/s (median) | all rounds | client CPU µs/connect (median) | failed |");
    println!("|---|---:|---|---:|---:|");
    let results = fivetuple_testkit::in_fresh_netns(&[("tcp_tw_reuse", "0")], || {
        let sink = Sink::start(false);
        let connector = library();
        let mut by: Vec<Vec<Round>> = (0..3).map(|_| Vec::new()).collect();
        for r in 0..rounds {
            for k in 0..3 {
                let c = Contender::ALL[(r + k) % 3];
                move_to(if c == Contender::Hook {
                    hooked.path()
                } else {
                    &home
                });
                by[Contender::ALL.iter().position(|x| *x == c).unwrap()]
                    .push(connects(c, &connector, sink.addr, n));
            }
        }
        move_to(&home);
        by
    });
    let mut medians = Vec::new();
    for (c, rs) in Contender::ALL.iter().zip(&results) {
        let rates: Vec<f64> = rs.iter().map(|r| r.rate).collect();
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        let rate = median(rates);
        let cpu = median(rs.iter().map(|r| r.cpu_us).collect());
        let failed: usize = rs.iter().map(|r| r.failed).sum();
        medians.push((rate, cpu));
        println!(
            "| {} | {:.0} | {:.0}-{:.0} | {:.2} | {failed} |",
            c.name(),
            rate,
            lo,
            hi,
            cpu
        );
    }
    let (lib, hook) = (medians[1], medians[2]);
    println!(
        "\nhook vs library: rate {:+.1} %, CPU per connect {:+.1} %; hook vs no policy: rate {:+.1} %, CPU {:+.1} %\n",
        (hook.0 / lib.0 - 1.0) * 100.0,
        (hook.1 / lib.1 - 1.0) * 100.0,
        (hook.0 / medians[0].0 - 1.0) * 100.0,
        (hook.1 / medians[0].1 - 1.0) * 100.0
    );

    let cliff_n = env("CLIFF_CONNECTS", 500);
    println!("## 90 % occupancy: 9,000 of 10,000 ports held, then {cliff_n} connects\n");
    println!("| contender | connects/s | client CPU µs/connect | failed |");
    println!("|---|---:|---:|---:|");
    let mut cliff = Vec::new();
    for c in Contender::ALL {
        let round = fivetuple_testkit::in_fresh_netns(
            &[
                ("ip_local_port_range", "30000 39999"),
                ("tcp_tw_reuse", "0"),
            ],
            || {
                let sink = Sink::start(true);
                let connector = library();
                move_to(if c == Contender::Hook {
                    hooked.path()
                } else {
                    &home
                });
                let mut held = Vec::with_capacity(9000);
                for i in 0..9000 {
                    let s = match c {
                        Contender::Library => {
                            connector.connect_std(sink.addr).map_err(|e| e.to_string())
                        }
                        _ => TcpStream::connect(sink.addr).map_err(|e| e.to_string()),
                    };
                    held.push(
                        s.unwrap_or_else(|e| panic!("{}: holding connection {i}: {e}", c.name())),
                    );
                }
                let round = connects(c, &connector, sink.addr, cliff_n);
                move_to(&home);
                drop(held);
                round
            },
        );
        println!(
            "| {} | {:.0} | {:.2} | {} |",
            c.name(),
            round.rate,
            round.cpu_us,
            round.failed
        );
        cliff.push(round);
    }
    println!(
        "\nat 90 %: hook / no policy = {:.1}x by rate, {:.1}x by CPU; library / no policy = {:.1}x by rate",
        cliff[2].rate / cliff[0].rate,
        cliff[0].cpu_us / cliff[2].cpu_us,
        cliff[1].rate / cliff[0].rate
    );
    drop(loaded);
    hooked.remove().expect("remove the transient cgroup");
}

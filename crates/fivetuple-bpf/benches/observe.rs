//! Observer overhead benchmark (docs/BENCHMARKS.md, "fivetuple trace / BPF
//! observer").
//!
//! In a fresh network namespace (loopback, port range 1024-65535, the
//! default `tcp_tw_reuse=2`), one thread connects and closes first as fast
//! as it can to 4 local listeners (a second thread accepts, reads to EOF
//! and closes), in paired rounds: without the observer, then with it
//! loaded (netns-filtered to this namespace, failure events on; with and
//! without the TIME_WAIT owner map, and without the syscall tracepoints), the order
//! swapped every pair so drift hits both sides. Reports connects/s and
//! process CPU (user+sys, both ends of each connection) per connect, the
//! median of the paired ratios, the time spent inside the programs (least
//! and median of 5 rounds with BPF_ENABLE_STATS), the
//! kernel memory of the maps as loaded, and the memory the socket-local
//! owner storage adds at 100,000 tracked sockets (FT_BENCH_TRACKED): the
//! growth of `SUnreclaim` while children hold that many connecting sockets,
//! with the observer minus without. Needs root.
//! Run with `cargo bench -p fivetuple-bpf --bench observe`
//! (FT_BENCH_CONNECTS per round, default 20000; FT_BENCH_PAIRS, default 8).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fivetuple_bpf::observe::{self, Options};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a count"))
        })
        .unwrap_or(default)
}

fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers, valid zeroed; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Round {
    rate: f64,
    cpu_us: f64,
}

fn round(dests: &[SocketAddr], n: usize) -> Round {
    let (t, c) = (Instant::now(), cpu_time());
    for i in 0..n {
        let s = TcpStream::connect(dests[i % dests.len()]).expect("connect");
        drop(s);
    }
    let (elapsed, cpu) = (t.elapsed(), cpu_time() - c);
    Round {
        rate: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `pairs` pairs of rounds of `n` connects, without and with the observer
/// (order swapped every pair); prints each pair and the median ratios.
fn paired(dests: &[SocketAddr], n: usize, pairs: usize, options: &Options) {
    let (mut rate_ratio, mut cpu_ratio) = (Vec::new(), Vec::new());
    println!("pair  off conn/s  on conn/s  off CPU/conn  on CPU/conn  (us)");
    for pair in 0..pairs {
        let mut off = None;
        let mut on = None;
        for attached in if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if attached {
                let observer = observe::load(options.clone()).unwrap_or_else(|e| panic!("{e:#?}"));
                let r = round(dests, n);
                let seen: u64 = observer
                    .counts()
                    .unwrap()
                    .iter()
                    .map(|(_, c)| c.attempts)
                    .sum();
                assert_eq!(
                    seen, n as u64,
                    "the observer saw every connect of the round"
                );
                on = Some(r);
            } else {
                off = Some(round(dests, n));
            }
        }
        let (off, on) = (off.unwrap(), on.unwrap());
        println!(
            "{pair:>4}  {:>10.0}  {:>9.0}  {:>12.2}  {:>11.2}",
            off.rate, on.rate, off.cpu_us, on.cpu_us
        );
        rate_ratio.push(on.rate / off.rate);
        cpu_ratio.push(on.cpu_us / off.cpu_us);
    }
    println!(
        "median attached/detached: connects/s {:.3}, CPU per connect {:.3} ({n} connects per round, {pairs} pairs)",
        median(rate_ratio),
        median(cpu_ratio),
    );
    // STATS_ROUNDS more attached rounds with the kernel's run-time
    // statistics on (not during the pairs: the statistics cost two clock
    // reads per run). A program preempted by other load keeps its clock
    // running, so the least loaded round (the minimum) is the closest to
    // the programs' own cost; the median is printed beside it.
    let mut per_round = Vec::new();
    for _ in 0..STATS_ROUNDS {
        let observer = observe::load(options.clone()).unwrap_or_else(|e| panic!("{e:#?}"));
        let stats = observe::enable_run_time_stats().expect("BPF_ENABLE_STATS");
        round(dests, n);
        drop(stats);
        let programs = observer.program_stats().unwrap();
        let spent: Duration = programs.iter().map(|p| p.run_time).sum();
        per_round.push((spent.as_nanos() as f64 / n as f64, programs));
    }
    per_round.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let all: Vec<String> = per_round.iter().map(|(ns, _)| format!("{ns:.0}")).collect();
    let (least, programs) = &per_round[0];
    let runs: Vec<String> = programs
        .iter()
        .filter(|p| p.runs > 0)
        .map(|p| {
            format!(
                "{} {:.2} runs {:.0} ns",
                p.name,
                p.runs as f64 / n as f64,
                p.run_time.as_nanos() as f64 / n as f64
            )
        })
        .collect();
    println!(
        "time inside the BPF programs per connect (both ends), {STATS_ROUNDS} rounds: least {least:.0} ns ({}), median {:.0} ns; all rounds: {} ns\n",
        runs.join("; "),
        per_round[per_round.len() / 2].0,
        all.join(", ")
    );
}

/// Rounds with BPF run-time statistics on, per mode.
const STATS_ROUNDS: usize = 5;

/// `SUnreclaim` of /proc/meminfo, in bytes (slab memory: sockets, BPF
/// local storage).
fn unreclaimable() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("SUnreclaim in /proc/meminfo");
    kib * 1024
}

const PER_CHILD: usize = 16_000;

/// Child mode (FT_BENCH_CHILD=N): N non-blocking connects to the
/// never-accepting listeners, "ready" on stdout, then holds them until stdin
/// closes.
fn child(n: usize) {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let dst: SocketAddr = format!("127.0.0.1:{}", 19100 + (i % 8)).parse().unwrap();
        let _ = s.connect(&dst.into()); // EINPROGRESS
        held.push(s);
    }
    println!("ready");
    let mut buf = [0u8; 1];
    let _ = std::io::stdin().read(&mut buf);
}

/// How much unreclaimable kernel memory `n` connecting sockets add (held by
/// children, FT_BENCH_CHILD, PER_CHILD each, as RLIMIT_NOFILE may be low).
fn unreclaimable_delta(n: usize) -> u64 {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    std::thread::sleep(Duration::from_millis(500));
    let before = unreclaimable();
    let mut children = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(PER_CHILD);
        left -= k;
        let mut c = Command::new(std::env::current_exe().unwrap())
            .env("FT_BENCH_CHILD", k.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        children.push(c);
    }
    let after = unreclaimable();
    for mut c in children {
        drop(c.stdin.take());
        c.wait().unwrap();
    }
    after.saturating_sub(before)
}

fn main() {
    if let Ok(n) = std::env::var("FT_BENCH_CHILD") {
        return child(n.parse().expect("FT_BENCH_CHILD is a count"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the observe benchmark needs root (a namespace, CAP_BPF, CAP_PERFMON)");
        return;
    }
    let n = env_or("FT_BENCH_CONNECTS", 20_000);
    let pairs = env_or("FT_BENCH_PAIRS", 8);
    fivetuple_testkit::in_fresh_netns(&[("ip_local_port_range", "1024 65535")], || {
        let netns = observe::netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        let mut dests = Vec::new();
        for port in 19001..=19004 {
            let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
            dests.push(l.local_addr().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                for conn in l.incoming() {
                    let mut conn = conn.expect("accept");
                    while matches!(conn.read(&mut buf), Ok(k) if k > 0) {}
                }
            });
        }
        // Listeners that never accept, for the tracked-sockets measurement:
        // their queues fill and the connecting sockets stay open (SYN_SENT
        // or, with syncookies, ESTABLISHED on the client side).
        let _idle: Vec<TcpListener> = (19100..19108)
            .map(|p| TcpListener::bind(("127.0.0.1", p)).expect("listen"))
            .collect();
        round(&dests, 2_000); // warm up
        for (label, syscalls, tw_owners) in [
            (
                "full: state tracepoint and syscall tracepoints, TIME_WAIT owners (doctor)",
                true,
                true,
            ),
            (
                "as exporter and trace: no TIME_WAIT owners, Options::time_wait_owners(false)",
                true,
                false,
            ),
            (
                "state tracepoint only, Options::syscalls(false)",
                false,
                true,
            ),
        ] {
            println!("observer {label}");
            let options = Options::default()
                .netns(Some(netns))
                .syscalls(syscalls)
                .time_wait_owners(tw_owners);
            paired(&dests, n, pairs, &options);
        }
        let observer = observe::load(Options::default().netns(Some(netns))).unwrap();
        let maps = observer.map_memory().unwrap();
        drop(observer);
        let total: u64 = maps.iter().map(|(_, b)| b).sum();
        let list: Vec<String> = maps
            .iter()
            .map(|(name, b)| format!("{name} {:.1} KiB", *b as f64 / 1024.0))
            .collect();
        println!(
            "maps as loaded (memlock, before any socket is tracked): {:.2} MiB ({})",
            total as f64 / 1048576.0,
            list.join(", ")
        );
        let tracked = env_or("FT_BENCH_TRACKED", 100_000);
        let without = unreclaimable_delta(tracked);
        let observer = observe::load(Options::default().netns(Some(netns))).unwrap();
        let with = unreclaimable_delta(tracked);
        let seen: u64 = observer
            .counts()
            .unwrap()
            .iter()
            .map(|(_, c)| c.attempts)
            .sum();
        drop(observer);
        println!(
            "{tracked} connecting sockets: unreclaimable kernel memory +{:.1} MiB without the observer, +{:.1} MiB with it ({seen} attempts resolved so far): {:.0} bytes of socket storage per tracked socket",
            without as f64 / 1048576.0,
            with as f64 / 1048576.0,
            (with as f64 - without as f64) / tracked as f64
        );
    });
}

//! Observer overhead benchmark (docs/BENCHMARKS.md, "BPF observer").
//!
//! One thread connects and closes first, to 8 listeners on loopback, and
//! plays the server too: it accepts, reads to EOF and closes. On loopback
//! the handshake completes inside connect() and the FIN inside close(), so
//! the loop never waits and never switches threads, and it runs pinned to
//! one CPU: its CPU time covers both ends of every connection.
//!
//! Each mode runs in a network namespace of its own, with the observer
//! loaded once (netns-filtered to it, failure events on). The measured
//! blocks of connects alternate with the programs detached and attached
//! ([`Observer::detach`]/[`Observer::attach`], done by a second thread on
//! another CPU while the measuring one spins), the order swapped every
//! pair. This VM's speed drifts by ±15% over tens of milliseconds (a fixed
//! arithmetic loop, timed again and again), so only adjacent blocks
//! compare: the result is the median and quartiles of the pairs' ratios,
//! CPU per connect and connects/s. Then the time spent inside the programs
//! (least and median of 5 attached blocks with BPF_ENABLE_STATS), the
//! kernel memory of the maps as loaded, and what tracking 100,000 sockets
//! adds (FT_BENCH_TRACKED): the growth of `SUnreclaim` while children hold
//! that many connecting sockets, with the observer minus without. Needs
//! root.
//!
//! Modes (FT_BENCH_MODES, in order, default `full,state`): `full` is what
//! doctor, the exporter and `trace` load; `state` is the state tracepoint
//! alone (`Options::syscalls(false)`).
//!
//! Run with `cargo bench -p fivetuple-bpf --bench observe`
//! (FT_BENCH_BLOCK connects per block, default 500; FT_BENCH_PAIRS, default
//! 120; FT_BENCH_CPU, the CPU to measure on, default the last one).
//!
//! [`Observer::detach`]: fivetuple_bpf::observe::Observer::detach
//! [`Observer::attach`]: fivetuple_bpf::observe::Observer::attach

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

/// The calling thread's CPU time. The bench's loop runs on one thread,
/// and on loopback the kernel's packet processing runs inline on it (as
/// softirq work charged to the thread), so this covers both ends.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One block: wall and CPU microseconds per connect.
struct Block {
    wall_us: f64,
    cpu_us: f64,
}

/// The listeners of a mode's namespace (8, so the TIME_WAIT sockets of a
/// whole mode fill under a fifth of the 4-tuples, and the port search
/// stays short).
const LISTENERS: usize = 8;

/// The first port of the listeners.
const PORT: u16 = 19001;

/// Unmeasured connects after each attach or detach. Attaching or detaching
/// the syscall tracepoints waits tens of milliseconds for RCU, in which the
/// CPU idles and cools (caches, frequency); the first connects after it are
/// slow whatever the observer does.
const SETTLE_CONNECTS: usize = 100;

/// Connects (attached and detached alike) made before the measured blocks.
const WARM: usize = 1_000;

/// A namespace's listeners and the connect+close loop, on one thread: on
/// loopback the handshake completes inside connect() and the FIN inside
/// close(), so the accept and the read to EOF that follow never wait. With
/// no context switch per connect there is no scheduler pattern to vary
/// between blocks.
struct Loop {
    listeners: Vec<TcpListener>,
    dests: Vec<SocketAddr>,
    next: usize,
}

impl Loop {
    fn new() -> Loop {
        let listeners: Vec<TcpListener> = (0..LISTENERS as u16)
            .map(|k| TcpListener::bind(("127.0.0.1", PORT + k)).expect("listen"))
            .collect();
        let dests = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        Loop {
            listeners,
            dests,
            next: 0,
        }
    }

    /// `n` connect+close calls, each accepted and read to EOF.
    fn run(&mut self, n: usize) -> Block {
        let mut buf = [0u8; 64];
        let (t, c) = (Instant::now(), thread_cpu());
        for _ in 0..n {
            let k = self.next % LISTENERS;
            self.next += 1;
            drop(TcpStream::connect(self.dests[k]).expect("connect"));
            let (mut conn, _) = self.listeners[k].accept().expect("accept");
            while matches!(conn.read(&mut buf), Ok(k) if k > 0) {}
        }
        let (wall, cpu) = (t.elapsed(), thread_cpu() - c);
        Block {
            wall_us: wall.as_secs_f64() * 1e6 / n as f64,
            cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        }
    }
}

/// The attempts the observer has counted, over every flow.
fn attempts(observer: &observe::Observer) -> u64 {
    observer
        .counts()
        .unwrap()
        .iter()
        .map(|(_, c)| c.attempts)
        .sum()
}

/// The quartiles (lower, median, upper) of `v`.
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// One mode, in a namespace of its own with the observer loaded once:
/// `pairs` pairs of adjacent blocks of `block` connects, the programs
/// detached in one and attached in the other (the order swapped every
/// pair), so each pair sees the same machine. This VM's CPU speed itself
/// drifts by ±15% over tens of milliseconds (a fixed arithmetic loop, timed
/// repeatedly), so only adjacent blocks compare. Prints the pair ratios'
/// median and quartiles, then the time inside the programs.
fn paired(block: usize, pairs: usize, options: &Options, other_cpu: Option<usize>) {
    fivetuple_testkit::in_fresh_netns(&[("ip_local_port_range", "1024 65535")], || {
        let netns = observe::netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        let mut looped = Loop::new();
        let mut observer =
            observe::load(options.clone().netns(Some(netns))).unwrap_or_else(|e| panic!("{e:#?}"));
        let mut attached_connects = WARM;
        looped.run(WARM);
        observer.detach().unwrap();
        looped.run(WARM);
        let (mut wall_ratio, mut cpu_ratio) = (Vec::new(), Vec::new());
        let (mut cpu_off, mut cpu_on) = (0.0, 0.0);
        let mut toggle = Duration::ZERO;
        // Attach and detach on another thread, pinned to another CPU: the
        // work the kernel defers when a tracepoint is attached or detached
        // (RCU callbacks, run in softirq on the CPU that queued them) then
        // lands there, not inside a measured block.
        let (ask, asked) = std::sync::mpsc::channel::<bool>();
        let (done, answered) = std::sync::mpsc::channel::<()>();
        let mut observer = std::thread::scope(|scope| {
            let controller = scope.spawn(move || {
                if let Some(other) = other_cpu {
                    pin_to(other);
                }
                for attach in asked {
                    if attach {
                        observer.attach().unwrap();
                    } else {
                        observer.detach().unwrap();
                    }
                    done.send(()).unwrap();
                }
                observer
            });
            // The measuring CPU spins while it waits, rather than idle and
            // cool down for the tens of milliseconds a switch can take.
            let switch = |attach: bool| {
                ask.send(attach).unwrap();
                while answered.try_recv().is_err() {
                    std::hint::spin_loop();
                }
            };
            for pair in 0..pairs {
                let (mut off, mut on) = (None, None);
                for attached in if pair % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                } {
                    let t = Instant::now();
                    switch(attached);
                    // A few unmeasured connects after each switch
                    // (SETTLE_CONNECTS).
                    looped.run(SETTLE_CONNECTS);
                    let measured = looped.run(block);
                    if attached {
                        attached_connects += SETTLE_CONNECTS + block;
                        on = Some(measured);
                    } else {
                        off = Some(measured);
                    }
                    toggle += t.elapsed();
                }
                let (off, on) = (off.unwrap(), on.unwrap());
                wall_ratio.push(off.wall_us / on.wall_us);
                cpu_ratio.push(on.cpu_us / off.cpu_us);
                cpu_off += off.cpu_us;
                cpu_on += on.cpu_us;
            }
            switch(false);
            drop(ask);
            controller.join().expect("the controller thread")
        });
        let seen = attempts(&observer);
        assert_eq!(
            seen, attached_connects as u64,
            "the observer counted every connect made while attached, and none other"
        );
        let (r25, r50, r75) = quartiles(wall_ratio);
        let (c25, c50, c75) = quartiles(cpu_ratio);
        println!(
            "attached/detached over {pairs} pairs of blocks of {block} connects: connects/s {r50:.3} [quartiles {r25:.3}, {r75:.3}], CPU per connect {c50:.3} [{c25:.3}, {c75:.3}]; summed CPU {:.3}; detached {:.1} us CPU per connect (mean); blocks with their attach/detach took {:.1} s",
            cpu_on / cpu_off,
            cpu_off / pairs as f64,
            toggle.as_secs_f64()
        );
        // STATS_ROUNDS attached blocks of 4 × `block` with the kernel's
        // run-time statistics on (not during the pairs: the statistics cost
        // two clock reads per run). The least is the closest to the
        // programs' own cost; the median is printed beside it.
        observer.attach().unwrap();
        let n = 4 * block;
        let mut per_round = Vec::new();
        for _ in 0..STATS_ROUNDS {
            let stats = observe::enable_run_time_stats().expect("BPF_ENABLE_STATS");
            let before = observer.program_stats().unwrap();
            looped.run(n);
            let after = observer.program_stats().unwrap();
            drop(stats);
            let programs: Vec<(String, u64, Duration)> = after
                .into_iter()
                .zip(before)
                .map(|(a, b)| (a.name, a.runs - b.runs, a.run_time - b.run_time))
                .collect();
            let spent: Duration = programs.iter().map(|p| p.2).sum();
            per_round.push((spent.as_nanos() as f64 / n as f64, programs));
        }
        per_round.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let all: Vec<String> = per_round.iter().map(|(ns, _)| format!("{ns:.0}")).collect();
        let (least, programs) = &per_round[0];
        let runs: Vec<String> = programs
            .iter()
            .filter(|p| p.1 > 0)
            .map(|(name, runs, time)| {
                format!(
                    "{name} {:.2} runs {:.0} ns",
                    *runs as f64 / n as f64,
                    time.as_nanos() as f64 / n as f64
                )
            })
            .collect();
        println!(
            "time inside the BPF programs per connect (both ends), {STATS_ROUNDS} blocks of {n}: least {least:.0} ns ({}), median {:.0} ns; all: {} ns\n",
            runs.join("; "),
            per_round[per_round.len() / 2].0,
            all.join(", ")
        );
    });
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

/// Pins the calling thread, and so every thread it starts afterwards, to
/// `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit set, valid zeroed; CPU_SET and
    // sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(
            rc,
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
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
    let block = env_or("FT_BENCH_BLOCK", 500);
    let pairs = env_or("FT_BENCH_PAIRS", 120);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let cpu = env_or("FT_BENCH_CPU", cpus - 1);
    pin_to(cpu);
    let other_cpu = (cpus > 1).then_some(if cpu == 0 { 1 } else { 0 });
    println!("pinned to CPU {cpu}; {pairs} pairs of blocks of {block} connects per mode");
    // FT_BENCH_MODES: a comma-separated subset of doctor,exporter,state.
    // FT_BENCH_MODES: which modes, in which order (default both).
    let modes = std::env::var("FT_BENCH_MODES").unwrap_or_else(|_| "full,state".into());
    for mode in modes.split(',') {
        let (label, syscalls) = match mode {
            "full" => (
                "as doctor, the exporter and trace load it: the state tracepoint and the syscall tracepoints",
                true,
            ),
            "state" => (
                "the state tracepoint only, Options::syscalls(false): no errno, no bind failures",
                false,
            ),
            other => panic!("FT_BENCH_MODES: unknown mode {other:?} (expected full or state)"),
        };
        println!("observer mode {mode}, {label}");
        let options = Options::default().syscalls(syscalls);
        paired(block, pairs, &options, other_cpu);
    }
    fivetuple_testkit::in_fresh_netns(&[], || {
        let netns = observe::netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        // Listeners that never accept, for the tracked-sockets measurement:
        // their queues fill and the connecting sockets stay open (SYN_SENT
        // or, with syncookies, ESTABLISHED on the client side).
        let _idle: Vec<TcpListener> = (19100..19108)
            .map(|p| TcpListener::bind(("127.0.0.1", p)).expect("listen"))
            .collect();
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
        let seen = attempts(&observer);
        drop(observer);
        println!(
            "{tracked} connecting sockets: unreclaimable kernel memory +{:.1} MiB without the observer, +{:.1} MiB with it ({seen} attempts resolved so far): {:.0} bytes of socket storage per tracked socket",
            without as f64 / 1048576.0,
            with as f64 / 1048576.0,
            (with as f64 - without as f64) / tracked as f64
        );
    });
}

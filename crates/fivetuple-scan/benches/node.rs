//! Whole-node scan benchmark (docs/BENCHMARKS.md, "fivetuple-scan: every
//! namespace of a node").
//!
//! Builds a node of 200 network namespaces (one `unshare -n sleep` process
//! each, like a pod's sandbox) with 500 loopback sockets in each: 2
//! listeners, 9 ESTABLISHED pairs and 480 TIME_WAIT, 100k sockets in all.
//! It builds it twice in one run: once with the host's default, where every
//! namespace shares the host's TCP established hash
//! (`net.ipv4.tcp_child_ehash_entries=0`), and once with
//! `tcp_child_ehash_entries` set on the host while the namespaces are
//! created (Linux 6.1+), so each has a hash of its own (the host's value
//! is put back right after, and on every exit path, by
//! `fivetuple_testkit::HostSysctl`). For each node it times, side by
//! side: the loop people run today, `nsenter -t PID -n ss -tan` over the
//! namespaces; the full scan (`node::discover` + `node::scan_all` with
//! `model::analyze` per namespace) at 1 and 2 workers; the same scan as it
//! was before (`node::scan`: a new thread per namespace, and the
//! bound-inactive walk that `scan_all` now leaves out); and the kernel's
//! dumps alone, with and without the bound-inactive walk. Peak memory is the `VmHWM` of a child process doing one full
//! scan. Needs root; run with
//! `cargo bench -p fivetuple-scan --bench node`
//! (`FT_BENCH_NAMESPACES=20` for a quick run).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_scan::model::{self, Thresholds};
use std::sync::atomic::{AtomicUsize, Ordering};

use fivetuple_scan::netns::{self, run_in, Target};
use fivetuple_scan::{netlink, node, Reader};
use fivetuple_testkit::HostSysctl;

const SOCKETS_PER_NS: usize = 500;
const PAIRS: usize = 9;
const TIME_WAIT: usize = SOCKETS_PER_NS - 2 - 2 * PAIRS;
const WORKERS: [usize; 2] = [1, 2];
/// `tcp_child_ehash_entries` for the second node: a power of two above the
/// 500 sockets of a namespace.
const CHILD_EHASH: &str = "1024";
const RSS_WORKERS: usize = 2;

/// One full scan with grouping, with or without the bound-inactive
/// sockets (`--skip-bound-inactive`); returns (namespaces scanned, sockets
/// seen, destinations, vanished, failed).
fn full_scan(workers: usize, bound_inactive: bool) -> (usize, usize, usize, usize, usize) {
    let d = node::discover().expect("discover");
    let r = node::scan_all(
        d.namespaces,
        Reader::Netlink,
        bound_inactive,
        workers,
        |_, snap| {
            let a = model::analyze(None, &snap, None, Thresholds::default());
            (snap.sockets.len(), a.destinations.len())
        },
    );
    for (ns, e) in r.failed.iter().take(3) {
        eprintln!("namespace {} failed: {e}", ns.inode);
    }
    let sockets = r.scanned.iter().map(|(_, (s, _))| s).sum();
    let dests = r.scanned.iter().map(|(_, (_, d))| d).sum();
    (
        r.scanned.len(),
        sockets,
        dests,
        r.vanished.len(),
        r.failed.len(),
    )
}

/// The full scan as `scan_all` did it before: a thread spawned per
/// namespace and bound-inactive sockets asked for (`node::scan`),
/// `workers` namespaces at a time. Returns the sockets seen.
fn full_scan_thread_per_ns(workers: usize) -> usize {
    let d = node::discover().expect("discover");
    let next = AtomicUsize::new(0);
    let seen = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(ns) = d.namespaces.get(i) else { break };
                if let Ok(Some(snap)) = node::scan(ns, Reader::Netlink) {
                    let a = model::analyze(None, &snap, None, Thresholds::default());
                    std::hint::black_box(a.destinations.len());
                    seen.fetch_add(snap.sockets.len(), Ordering::Relaxed);
                }
            });
        }
    });
    seen.into_inner()
}

/// The kernel's part alone: one thread enters each namespace in turn and
/// dumps its table (`netlink::read`, or without the bound-inactive walk),
/// nothing else. Returns the sockets seen.
fn dumps_only(pids: &[u32], bound_inactive: bool) -> usize {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut seen = 0;
            for &p in pids {
                let f = netns::open(&Target::Pid(p)).unwrap().unwrap();
                netns::enter_file(&f).unwrap();
                let table = if bound_inactive {
                    netlink::read()
                } else {
                    netlink::read_without_bound_inactive()
                };
                seen += table.unwrap().len();
            }
            seen
        })
        .join()
        .unwrap()
    })
}

/// Peak RSS in MiB of a child process doing one full scan; checks it saw
/// at least `want` sockets.
fn child_rss_mib(want: usize) -> f64 {
    let me = std::env::current_exe().unwrap();
    let child = Command::new(&me)
        .arg("--child-scan")
        .env("FT_WORKERS", RSS_WORKERS.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&child.stdout);
    let mut it = text.split_whitespace();
    let rss_mib = it.next().unwrap().parse::<f64>().unwrap() / 1024.0;
    let child_sockets: usize = it.next().unwrap().parse().unwrap();
    assert!(
        child_sockets >= want,
        "the child scan saw {child_sockets} sockets"
    );
    rss_mib
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Namespace {
    child: Child,
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The namespace goes with its last process and socket.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_sandbox() -> Child {
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sleep", "600"]).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it sets only the child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn unshare (util-linux)")
}

/// Waits until `pid` is in a network namespace other than ours.
fn wait_unshared(pid: u32, host: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| l.to_str().and_then(node::parse_ns_link));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if let Some(ns) = ns.filter(|n| *n != host && comm.trim_end() == "sleep") {
            return ns;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never left the host namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fills the namespace of `pid` with its 500 sockets.
fn fill(pid: u32) -> (Vec<TcpListener>, Vec<TcpStream>) {
    run_in(&Target::Pid(pid), || {
        // A child forked from this thread starts in its namespace.
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(st.success());
        fivetuple_testkit::set_sysctl("tcp_tw_reuse", "0");
        let svc = TcpListener::bind("127.0.0.1:8080").unwrap();
        let db = TcpListener::bind("127.0.0.1:5432").unwrap();
        for _ in 0..TIME_WAIT {
            let c = TcpStream::connect("127.0.0.1:8080").unwrap();
            let (mut s, _) = svc.accept().unwrap();
            drop(c);
            let _ = s.read(&mut [0u8; 1]);
        }
        let mut streams = Vec::new();
        for _ in 0..PAIRS {
            streams.push(TcpStream::connect("127.0.0.1:5432").unwrap());
            streams.push(db.accept().unwrap().0);
        }
        (vec![svc, db], streams)
    })
    .expect("enter the namespace")
}

/// One row of the results: what was timed and how long it took.
struct Row {
    what: String,
    took: Duration,
}

/// Builds a node of `n` namespaces (with `tcp_child_ehash_entries` set to
/// `child_ehash` while they are created, when given), measures every
/// method on it, checks each saw the whole table, and tears it down.
/// Returns the rows, the peak RSS in MiB, and the `tcp_ehash_entries` a
/// namespace of the node reads.
/// With the shared hash a pass takes 5 to 15 s on the shared test machine,
/// so that node gets only the loop and the full scan at 2 workers:
/// everything has to fit in the 60 s life of the first TIME_WAIT sockets.
/// The node with its own hashes gets every method and the peak RSS.
fn measure(n: usize, host: u64, child_ehash: Option<&str>) -> (Vec<Row>, f64, String) {
    let thorough = child_ehash.is_some();
    let t = Instant::now();
    let guard = child_ehash.map(|v| HostSysctl::set("ipv4.tcp_child_ehash_entries", v));
    let children: Vec<Child> = (0..n).map(|_| spawn_sandbox()).collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for &p in &pids {
        wait_unshared(p, host);
    }
    // The value is read when a namespace is created: put the host's back now.
    drop(guard);
    let ehash = run_in(&Target::Pid(pids[0]), || {
        fivetuple_kernel::sysctl::read("ipv4.tcp_ehash_entries")
            .expect("tcp_ehash_entries (Linux 6.1+)")
    })
    .expect("enter a namespace")
    .trim()
    .to_string();
    if let Some(v) = child_ehash {
        assert_eq!(
            ehash, v,
            "a namespace created with tcp_child_ehash_entries={v} has its own hash"
        );
    } else {
        assert!(
            ehash.starts_with('-'),
            "a namespace created with the default shares the host's hash, read {ehash}"
        );
    }
    // Two builders: the whole table must be built well inside the 60 s
    // life of its first TIME_WAIT sockets.
    let half = n.div_ceil(2);
    let tables: Vec<(Vec<TcpListener>, Vec<TcpStream>)> = std::thread::scope(|s| {
        let hs: Vec<_> = pids
            .chunks(half)
            .map(|chunk| s.spawn(move || chunk.iter().map(|&p| fill(p)).collect::<Vec<_>>()))
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let _node: Vec<Namespace> = children
        .into_iter()
        .zip(tables)
        .map(|(child, (l, s))| Namespace {
            child,
            _listeners: l,
            _streams: s,
        })
        .collect();
    let built = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let want = n * SOCKETS_PER_NS;
    eprintln!("built {n} namespaces x {SOCKETS_PER_NS} sockets (tcp_ehash_entries {ehash}) in {built:.1?}");
    let deadline = Instant::now() + Duration::from_secs(55) - built;

    let rss_mib = if thorough {
        child_rss_mib(want)
    } else {
        f64::NAN
    };

    let mut rows = Vec::new();
    // Where the rest of a full scan goes: discovery (no socket count to check).
    let t = Instant::now();
    let discovered = node::discover().expect("discover").namespaces.len();
    let discovery = Row {
        what: format!("discovery alone (`node::discover`, {discovered} namespaces)"),
        took: t.elapsed(),
    };
    let mut time = |what: String, f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        let seen = f();
        let took = t.elapsed();
        eprintln!("{what}: {took:.1?}, {seen} sockets");
        assert!(seen >= want, "{what} saw {seen} sockets, built {want}");
        rows.push(Row { what, took });
    };
    // One pass of each method.
    time("`nsenter -t PID -n ss -tan` loop".into(), &mut || {
        let mut lines = 0usize;
        for &p in &pids {
            let out = Command::new("nsenter")
                .args(["-t", &p.to_string(), "-n", "ss", "-tan"])
                .output()
                .expect("nsenter");
            assert!(out.status.success());
            // Minus the header line.
            lines += out
                .stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
                - 1;
        }
        assert_eq!(
            lines, want,
            "ss saw {lines} sockets in our namespaces, built {want}"
        );
        lines
    });
    for w in WORKERS.into_iter().filter(|&w| thorough || w == 2) {
        time(
            format!("full scan + grouping, --skip-bound-inactive, {w} worker(s)"),
            &mut || {
                // Other programs' namespaces may come and go (vanished, failed):
                // the socket count checks ours.
                full_scan(w, false).1
            },
        );
    }
    for w in WORKERS.into_iter().filter(|&w| w == 2) {
        time(
            format!("full scan + grouping, default (bound-inactive read), {w} worker(s)"),
            &mut || full_scan(w, true).1,
        );
    }
    for w in WORKERS.into_iter().filter(|_| thorough) {
        time(
            format!("before: a thread per namespace and the bound-inactive walk, {w} worker(s)"),
            &mut || full_scan_thread_per_ns(w),
        );
    }
    if thorough {
        let d = node::discover().expect("discover");
        time("`scan_all` without grouping, 1 worker".into(), &mut || {
            let r = node::scan_all(d.namespaces.clone(), Reader::Netlink, false, 1, |_, s| {
                s.sockets.len()
            });
            r.scanned.iter().map(|(_, n)| n).sum()
        });
    }
    time("dumps only (`netlink::read`, 1 thread)".into(), &mut || {
        dumps_only(&pids, true)
    });
    if thorough {
        time(
            "dumps only, without bound-inactive (`read_without_bound_inactive`)".into(),
            &mut || dumps_only(&pids, false),
        );
    }
    if thorough {
        rows.push(discovery);
    }
    assert!(
        Instant::now() < deadline,
        "measuring ran past the TIME_WAIT life of the first sockets; rerun on a quieter machine"
    );
    (rows, rss_mib, ehash)
}

fn main() {
    if std::env::args().any(|a| a == "--child-scan") {
        let workers = std::env::var("FT_WORKERS").unwrap().parse().unwrap();
        let (_, sockets, ..) = full_scan(workers, false);
        println!("{} {sockets}", vm_hwm_kib());
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("node benchmark skipped: needs root (namespaces, setns)");
        return;
    }
    let n: usize = std::env::var("FT_BENCH_NAMESPACES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    fivetuple_testkit::raise_fd_limit();
    let host = node::current_inode().unwrap();

    let shared = measure(n, host, None);
    // The first node's namespaces are gone; their TIME_WAIT sockets are
    // purged by the kernel's namespace cleanup (inet_twsk_purge()), which runs
    // from a workqueue: give it time.
    std::thread::sleep(Duration::from_secs(5));
    let own = measure(n, host, Some(CHILD_EHASH));

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{n} namespaces x {SOCKETS_PER_NS} sockets; one pass of each method per node");
    println!(
        "| method | shared hash (tcp_ehash_entries {}) | per ns | loop ÷ this | own hash (tcp_ehash_entries {}) | per ns | loop ÷ this | shared ÷ own |",
        shared.2, own.2
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let (loop_s, loop_o) = (shared.0[0].took, own.0[0].took);
    for b in &own.0 {
        let a = shared.0.iter().find(|a| a.what == b.what);
        let cells = match a {
            Some(a) => format!(
                "{:.0} ms | {:.1} ms | {:.1}× | ",
                ms(a.took),
                ms(a.took) / n as f64,
                loop_s.as_secs_f64() / a.took.as_secs_f64()
            ),
            None => "not run | | | ".to_string(),
        };
        println!(
            "| {} | {cells}{:.0} ms | {:.1} ms | {:.1}× | {} |",
            b.what,
            ms(b.took),
            ms(b.took) / n as f64,
            loop_o.as_secs_f64() / b.took.as_secs_f64(),
            a.map(|a| format!("{:.1}×", a.took.as_secs_f64() / b.took.as_secs_f64()))
                .unwrap_or_default(),
        );
    }
    println!(
        "peak RSS of a full scan ({RSS_WORKERS} workers, child process, own hashes): {:.1} MiB",
        own.1
    );
}

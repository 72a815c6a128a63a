//! Whole-node scan benchmark (docs/BENCHMARKS.md, "fivetuple-scan: every
//! namespace of a node").
//!
//! Builds a node of 200 network namespaces (one `unshare -n sleep` process
//! each, like a pod's sandbox) with 500 loopback sockets in each: 2
//! listeners, 9 ESTABLISHED pairs and 480 TIME_WAIT, 100k sockets in all.
//! Then times, side by side: the full scan (`node::discover` +
//! `node::scan_all` with `model::analyze` per namespace) at 1 and 2
//! workers, one pass each, and the loop people run today, `nsenter -t PID -n ss -tan` over
//! the namespaces. Peak memory is the `VmHWM` of a child process doing one
//! full scan. Needs root; run with
//! `cargo bench -p fivetuple-scan --bench node`
//! (`FT_BENCH_NAMESPACES=20` for a quick run).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_scan::model::{self, Thresholds};
use fivetuple_scan::netns::{run_in, Target};
use fivetuple_scan::node;
use fivetuple_scan::Reader;

const SOCKETS_PER_NS: usize = 500;
const PAIRS: usize = 9;
const TIME_WAIT: usize = SOCKETS_PER_NS - 2 - 2 * PAIRS;
const WORKERS: [usize; 2] = [1, 2];
const RSS_WORKERS: usize = 2;

/// One full scan with grouping; returns (namespaces scanned, sockets seen,
/// destinations, vanished, failed).
fn full_scan(workers: usize) -> (usize, usize, usize, usize, usize) {
    let d = node::discover().expect("discover");
    let r = node::scan_all(d.namespaces, Reader::Netlink, workers, |_, snap| {
        let a = model::analyze(None, &snap, None, Thresholds::default());
        (snap.sockets.len(), a.destinations.len())
    });
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

fn main() {
    if std::env::args().any(|a| a == "--child-scan") {
        let workers = std::env::var("FT_WORKERS").unwrap().parse().unwrap();
        let (_, sockets, ..) = full_scan(workers);
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

    let t = Instant::now();
    let children: Vec<Child> = (0..n).map(|_| spawn_sandbox()).collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for &p in &pids {
        wait_unshared(p, host);
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
    eprintln!("built {n} namespaces x {SOCKETS_PER_NS} sockets in {built:.1?}");
    let deadline = Instant::now() + Duration::from_secs(55) - built;

    // The nsenter loop, counting the sockets ss prints.
    let nsenter_loop = || {
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
        lines
    };

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
    // One pass of each method: a pass of the nsenter loop or a one-worker
    // scan takes seconds here, and everything must fit in the 60 s life of
    // the first TIME_WAIT sockets.
    let t = Instant::now();
    let lines = nsenter_loop();
    let lp = t.elapsed();
    eprintln!("nsenter loop: {lp:.1?}");
    assert_eq!(
        lines, want,
        "ss saw {lines} sockets in our namespaces, built {want}"
    );
    let mut rows = Vec::new();
    let mut seen = (0, 0, 0, 0, 0);
    for w in WORKERS {
        let t = Instant::now();
        seen = full_scan(w);
        rows.push((w, t.elapsed()));
        eprintln!("full scan, {w} worker(s): {:.1?}", t.elapsed());
        assert!(
            seen.1 >= want,
            "scan saw {} sockets, built {want} (scanned, sockets, destinations, vanished, failed: {seen:?})",
            seen.1
        );
    }
    assert!(
        Instant::now() < deadline,
        "measuring ran past the TIME_WAIT life of the first sockets; rerun on a quieter machine"
    );
    println!(
        "{n} namespaces x {SOCKETS_PER_NS} sockets built in {built:.1?}; the scan saw {} namespaces, {} sockets, {} destinations ({} vanished, {} failed)",
        seen.0, seen.1, seen.2, seen.3, seen.4
    );
    println!("| method | time | per namespace | nsenter loop ÷ this |");
    println!("|---|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| `nsenter -t PID -n ss -tan` loop | {:.0} ms | {:.1} ms | 1.0× |",
        ms(lp),
        ms(lp) / n as f64
    );
    for (w, d) in rows {
        println!(
            "| full scan + grouping, {w} worker(s) | {:.0} ms | {:.1} ms | {:.1}× |",
            ms(d),
            ms(d) / n as f64,
            lp.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!("peak RSS of a full scan ({RSS_WORKERS} workers, child process): {rss_mib:.1} MiB");
}

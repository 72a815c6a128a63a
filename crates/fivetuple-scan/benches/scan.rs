//! Socket-table scan benchmark (docs/BENCHMARKS.md, "fivetuple-scan").
//!
//! Builds tables of 100k and 200k TCP sockets inside a fresh network
//! namespace (loopback only; 4,000 ESTABLISHED pairs, a few listeners, the
//! rest TIME_WAIT, which hold no file descriptor: RLIMIT_NOFILE may be low) and times, side by side: the netlink scan with grouping,
//! the /proc fallback with grouping, and `ss -tan` as a whole command.
//! Peak memory is the peak RSS (`VmHWM`) of a child process doing one
//! netlink scan with grouping. Needs root; run with
//! `cargo bench -p fivetuple-scan --bench scan`.

use fivetuple_testkit::bench::{time_median, vm_hwm_kib};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_scan::{model, Reader};

const RUNS: usize = 5;
/// Many destinations keep each one's port search short (and the build well under
/// the 60 s TIME_WAIT lifetime): 200k sockets over 32 destinations is ~10% of each budget.
const LISTENERS: u16 = 32;
const ESTABLISHED_PAIRS: usize = 4_000;

fn scan_and_group(reader: Reader) -> usize {
    let snap = fivetuple_scan::snapshot(reader).expect("scan");
    let a = model::analyze(None, &snap, None, model::Thresholds::default());
    assert!(!a.destinations.is_empty());
    snap.sockets.len()
}

struct Table {
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

/// Grows the namespace's table to `target` sockets (listeners + TIME_WAIT + ESTABLISHED pairs).
fn grow(table: &mut Table, listeners: &[TcpListener], have: &mut usize, target: usize) {
    let mut i = 0usize;
    while *have < target {
        let l = &listeners[i % listeners.len()];
        i += 1;
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).expect("connect");
        let (mut s, _) = l.accept().expect("accept");
        if table._streams.len() < 2 * ESTABLISHED_PAIRS {
            table._streams.push(c);
            table._streams.push(s);
            *have += 2;
        } else {
            drop(c);
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            drop(s);
            *have += 1;
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--child-scan") {
        scan_and_group(Reader::Netlink);
        println!("{}", vm_hwm_kib());
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` would too, so only run on request.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("scan benchmark skipped: needs root (unshare CLONE_NEWNET)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("FT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 200_000]);
    fivetuple_testkit::raise_fd_limit();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-parameter.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert!(
        lim.rlim_cur as usize > 2 * ESTABLISHED_PAIRS + 100,
        "RLIMIT_NOFILE {} too low",
        lim.rlim_cur
    );
    let me = std::env::current_exe().unwrap();

    let sysctls = [
        ("ip_local_port_range", "1024 65535"),
        ("tcp_max_tw_buckets", "2000000"),
        // No TIME_WAIT reuse on loopback, or connect() would eat the table.
        ("tcp_tw_reuse", "0"),
    ];
    fivetuple_testkit::in_fresh_netns(&sysctls, move || {
        std::fs::write("/proc/sys/net/core/somaxconn", "4096").unwrap();
        let listeners: Vec<TcpListener> = (0..LISTENERS)
            .map(|i| TcpListener::bind(("127.0.0.1", 8000 + i)).unwrap())
            .collect();
        let mut table = Table {
            _listeners: Vec::new(),
            _streams: Vec::new(),
        };
        let mut have = listeners.len();
        println!("| sockets | netlink scan + grouping | per socket | /proc + grouping | per socket | `ss -tan` | per socket | ss ÷ netlink | peak RSS, netlink scan (child) |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &n in &sizes {
            let t = Instant::now();
            grow(&mut table, &listeners, &mut have, n);
            std::thread::sleep(Duration::from_millis(500));
            eprintln!("built {n} sockets in {:.1?}", t.elapsed());
            let got = scan_and_group(Reader::Netlink);
            assert!(got >= n, "table has {got} sockets, wanted {n}");
            let nl = time_median(RUNS, || {
                scan_and_group(Reader::Netlink);
            });
            let pr = time_median(RUNS, || {
                scan_and_group(Reader::Proc);
            });
            let ss = time_median(RUNS, || {
                let out = Command::new("ss")
                    .arg("-tan")
                    .stdout(Stdio::piped())
                    .output()
                    .unwrap();
                assert!(out.status.success() && out.stdout.len() > n * 20);
            });
            let child = Command::new(&me).arg("--child-scan").output().unwrap();
            let rss_nl: f64 = String::from_utf8_lossy(&child.stdout)
                .trim()
                .parse()
                .unwrap();
            let per = |d: Duration| d.as_secs_f64() * 1e6 / got as f64;
            println!(
                "| {got} | {:.1} ms | {:.2} µs | {:.1} ms | {:.2} µs | {:.1} ms | {:.2} µs | {:.1}× | {:.1} MiB |",
                nl.as_secs_f64() * 1e3,
                per(nl),
                pr.as_secs_f64() * 1e3,
                per(pr),
                ss.as_secs_f64() * 1e3,
                per(ss),
                ss.as_secs_f64() / nl.as_secs_f64(),
                rss_nl / 1024.0,
            );
        }
    });
}

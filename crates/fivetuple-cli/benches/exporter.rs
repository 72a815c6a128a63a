//! Exporter scrape benchmark (docs/BENCHMARKS.md, "fivetuple exporter").
//!
//! Builds a TCP table of about 100k sockets in a fresh network namespace
//! (loopback only: 32 listeners, 4,000 ESTABLISHED pairs, TIME_WAIT for the
//! rest, since TIME_WAIT holds no file descriptor and RLIMIT_NOFILE may be
//! low), then, in that namespace and in one run, scrapes `fivetuple exporter`
//! and Debian's `prometheus-node-exporter` with only its tcpstat collector,
//! alternating, and reports median and max scrape latency and each
//! exporter's RSS. Needs root. Run with
//! `cargo bench -p fivetuple-cli --bench exporter` (FT_BENCH_SOCKETS to change the size).

use fivetuple_testkit::bench::median;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");
const LISTENERS: u16 = 32;
const ESTABLISHED_PAIRS: usize = 4_000;
const SCRAPES: usize = 11;
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(addr: SocketAddr) -> (Duration, String) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to exporter");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let d = t.elapsed();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "{}",
        &body[..body.len().min(300)]
    );
    (d, body)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn value(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("exporter benchmark skipped: needs root (unshare CLONE_NEWNET)");
        return;
    }
    let target: usize = std::env::var("FT_BENCH_SOCKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    fivetuple_testkit::raise_fd_limit();
    let sysctls = [
        ("ip_local_port_range", "1024 65535"),
        ("tcp_max_tw_buckets", "2000000"),
        // No TIME_WAIT reuse on loopback, or connect() would eat the table.
        ("tcp_tw_reuse", "0"),
    ];
    fivetuple_testkit::in_fresh_netns(&sysctls, move || {
        std::fs::write("/proc/sys/net/core/somaxconn", "4096").unwrap();

        // Both exporters first, so their own listeners are part of the table from the start.
        let ours: SocketAddr = "127.0.0.1:19299".parse().unwrap();
        let node: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let fivetuple = Reaper(
            Command::new(BIN)
                .args(["exporter", "--listen", &ours.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("run fivetuple exporter"),
        );
        let node_exporter = Reaper(
            Command::new("prometheus-node-exporter")
                .args([
                    "--collector.disable-defaults",
                    "--collector.tcpstat",
                    &format!("--web.listen-address={node}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run prometheus-node-exporter (apt-get install prometheus-node-exporter)"),
        );
        wait_listening(ours);
        wait_listening(node);

        let listeners: Vec<TcpListener> = (0..LISTENERS)
            .map(|i| TcpListener::bind(("127.0.0.1", 8000 + i)).unwrap())
            .collect();
        let mut keep = Vec::new();
        let mut have = listeners.len();
        let t = Instant::now();
        let mut i = 0usize;
        while have < target {
            let l = &listeners[i % listeners.len()];
            i += 1;
            let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
            let (mut s, _) = l.accept().expect("accept");
            if keep.len() < 2 * ESTABLISHED_PAIRS {
                keep.push(c);
                keep.push(s);
                have += 2;
            } else {
                drop(c);
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
                have += 1;
            }
        }
        let built = t.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        eprintln!("built {have} sockets in {built:.1?}");

        // One warm-up scrape each (ours keeps it as the rate baseline).
        scrape(ours);
        scrape(node);
        let (mut ft, mut ne) = (Vec::new(), Vec::new());
        let (mut ft_body, mut ne_body) = (String::new(), String::new());
        for round in 0..SCRAPES {
            // Alternate who goes first, so drift hits both alike.
            let order = if round % 2 == 0 {
                [ours, node]
            } else {
                [node, ours]
            };
            for a in order {
                let (d, body) = scrape(a);
                if a == ours {
                    ft.push(d);
                    ft_body = body;
                } else {
                    ne.push(d);
                    ne_body = body;
                }
            }
        }
        let seen_ours = value(&ft_body, "fivetuple_sockets{");
        let seen_node = value(&ne_body, "node_tcp_connection_states{");
        let row = |name: &str, v: &Vec<Duration>, pid: u32, seen: f64, bytes: usize| {
            println!(
                "| {name} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.1} MiB | {} B |",
                seen,
                median(v.clone()).as_secs_f64() * 1e3,
                v.iter().min().unwrap().as_secs_f64() * 1e3,
                v.iter().max().unwrap().as_secs_f64() * 1e3,
                status_kib(pid, "VmRSS:") as f64 / 1024.0,
                status_kib(pid, "VmHWM:") as f64 / 1024.0,
                bytes,
            );
        };
        println!("table built: {have} sockets in {built:.1?}; {SCRAPES} scrapes each, alternating");
        println!("| exporter | sockets seen in last scrape | median scrape | min | max | RSS after | peak RSS | body |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        row(
            "fivetuple exporter",
            &ft,
            fivetuple.0.id(),
            seen_ours,
            ft_body.len(),
        );
        row(
            "node_exporter tcpstat",
            &ne,
            node_exporter.0.id(),
            seen_node,
            ne_body.len(),
        );
        drop(keep);
    });
}

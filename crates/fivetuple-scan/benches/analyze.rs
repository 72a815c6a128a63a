//! The occupancy model on its own, without I/O: how long `History::analyze`
//! (grouping, rates against the previous scan, findings) takes on synthetic
//! tables of 100k and 200k sockets, the part of an exporter scrape or a
//! `top` refresh that is ours rather than the kernel's dump.
//!
//! ```text
//! cargo bench -p fivetuple-scan --bench analyze
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use fivetuple_scan::{Counters, History, Settings, Snapshot, Socket, Source, TcpState, Thresholds};

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// `n` sockets: one listener on :8080; a quarter ESTABLISHED pairs (the
/// outbound side and the accepted side); the rest outbound TIME_WAIT to 16
/// destinations from 16 sources. `shift` moves the local ports, so two
/// tables with different shifts share only part of their 4-tuples.
fn table(n: usize, shift: usize) -> Snapshot {
    let mut sockets = Vec::with_capacity(n + 1);
    sockets.push(Socket {
        state: TcpState::Listen,
        local: addr([0, 0, 0, 0], 8080),
        remote: addr([0, 0, 0, 0], 0),
        inode: 1,
        uid: 0,
        tw_remaining_ms: None,
        cookie: 0,
    });
    let port = |i: usize| 1024 + ((i + shift) % 64_000) as u16;
    let pairs = n / 8;
    for i in 0..pairs {
        let client = addr([127, 0, 0, 2 + (i % 16) as u8], port(i));
        let server = addr([127, 0, 0, 1], 8080);
        for (state, local, remote) in [
            (TcpState::Established, client, server),
            (TcpState::Established, server, client),
        ] {
            sockets.push(Socket {
                state,
                local,
                remote,
                inode: 2 + i as u64,
                uid: 0,
                tw_remaining_ms: None,
                cookie: 0,
            });
        }
    }
    for i in 0..n - 2 * pairs {
        sockets.push(Socket {
            state: TcpState::TimeWait,
            local: addr([10, 0, 0, (i % 16) as u8], port(i)),
            remote: addr([10, 1, 0, (i / 16 % 16) as u8], 443),
            inode: 0,
            uid: 0,
            tw_remaining_ms: Some((i % 60_000) as u32),
            cookie: 0,
        });
    }
    Snapshot {
        sockets,
        source: Source::Netlink,
        settings: Settings {
            ip_local_port_range: fivetuple_kernel::PortRange::new(1024, 65023).unwrap(),
            ..Settings::default()
        },
        counters: Counters::default(),
        fallback_reason: None,
    }
}

fn main() {
    println!(
        "| sockets | first analysis (no baseline) | with baseline (median of 9) | per socket |"
    );
    println!("|---:|---:|---:|---:|");
    for n in [100_000, 200_000] {
        let mut history = History::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let start = Instant::now();
        let a = history.analyze(table(n, 0), t0, Thresholds::default());
        let first = start.elapsed();
        assert!(!a.destinations.is_empty());
        let mut runs = Vec::new();
        for k in 1..=9 {
            let snap = table(n, k * 997);
            let start = Instant::now();
            let a = history.analyze(
                snap,
                t0 + Duration::from_secs(2 * k as u64),
                Thresholds::default(),
            );
            runs.push(start.elapsed());
            assert!(a.destinations.iter().any(|d| d.rate_per_s.is_some()));
        }
        runs.sort();
        let median = runs[runs.len() / 2];
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.0} ns |",
            first.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e9 / n as f64
        );
    }
}

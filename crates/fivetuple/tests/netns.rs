//! Behaviour in a fresh network namespace with a shrunk port range. Every
//! test here needs root (CAP_NET_ADMIN to create the namespace); CI runs as
//! root. Each checks what the peer saw: the source address the server
//! accepted, the errno the client got, the count `ss` shows.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use common::{call, in_netns, ss_count, Mode, Sink};
use fivetuple::{Choice, Connector, KernelDefault, PortRange, PortWindow, Rotation, Spread, Stage};

/// The namespace's ephemeral range: 100 ports. Listeners use 8080/8081,
/// outside it and outside every rotation range below.
const RANGE_100: (&str, &str) = ("ip_local_port_range", "40000 40099");
const NO_TW_REUSE: (&str, &str) = ("tcp_tw_reuse", "0");

fn range(lo: u16, hi: u16) -> PortRange {
    PortRange::new(lo, hi).unwrap()
}

/// Sequential close-per-call connections until the first failure (at most
/// `calls`); returns (successes, first error).
fn churn(
    connector: &Connector,
    dest: SocketAddr,
    calls: usize,
) -> (usize, Option<fivetuple::ConnectError>) {
    for i in 0..calls {
        match connector.connect_std(dest) {
            Ok(s) => call(s),
            Err(e) => return (i, Some(e)),
        }
    }
    (calls, None)
}

#[test]
fn netns_root_kernel_default_exhausts_with_eaddrnotavail() {
    in_netns(
        "netns_root_kernel_default_exhausts_with_eaddrnotavail",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
            let connector = Connector::new(KernelDefault);
            let (ok, err) = churn(&connector, sink.addr, 1000);
            let err = err.expect("the kernel default must run out of ports in a 100-port range");
            assert!(
                (90..=300).contains(&ok),
                "failed after {ok} calls, expected within a few hundred"
            );
            assert!(err.is_exhaustion(), "{err:#?}");
            assert_eq!(err.os_error_name(), Some("EADDRNOTAVAIL"), "{err:?}");
            assert_eq!(err.stage(), Stage::Connect);
            assert_eq!(err.attempts(), connector.max_attempts());
            let peers = sink.wait_for(ok);
            assert_eq!(peers.len(), ok, "the server accepted every successful call");
            assert!(ss_count("time-wait") >= 90, "TIME_WAIT holds the ports");
        },
    );
}

#[test]
fn netns_root_rotation_20000_calls_zero_failures_ports_from_range() {
    in_netns(
        "netns_root_rotation_20000_calls_zero_failures_ports_from_range",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
            let connector = Connector::new(Rotation::new(range(20000, 20999)).unwrap());
            let (ok, err) = churn(&connector, sink.addr, 20_000);
            assert!(err.is_none(), "rotation failed after {ok} calls: {err:?}");
            let peers = sink.wait_for(20_000);
            assert_eq!(peers.len(), 20_000);
            let outside: Vec<_> = peers
                .iter()
                .filter(|p| !(20000..=20999).contains(&p.port()))
                .collect();
            assert!(
                outside.is_empty(),
                "server saw source ports outside 20000-20999: {:?}",
                &outside[..outside.len().min(5)]
            );
            // Every port of the range was used 20 times (the rotation is even).
            let mut per_port = HashMap::<u16, usize>::new();
            for p in &peers {
                *per_port.entry(p.port()).or_default() += 1;
            }
            assert_eq!(per_port.len(), 1000);
            assert!(
                per_port.values().all(|&n| n == 20),
                "uneven use: {:?}",
                per_port.values().collect::<HashSet<_>>()
            );
        },
    );
}

#[test]
fn netns_root_rotation_async_zero_failures_ports_from_range() {
    in_netns(
        "netns_root_rotation_async_zero_failures_ports_from_range",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
            let connector = Connector::new(Rotation::new(range(21000, 21099)).unwrap());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                for i in 0..3000 {
                    let mut s = connector
                        .connect(sink.addr)
                        .await
                        .unwrap_or_else(|e| panic!("call {i}: {e:#?}"));
                    s.write_all(b"x").await.unwrap();
                    s.shutdown().await.unwrap();
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).await.unwrap();
                }
            });
            let peers = sink.wait_for(3000);
            assert_eq!(peers.len(), 3000);
            assert!(peers.iter().all(|p| (21000..=21099).contains(&p.port())));
        },
    );
}

/// Without TCP timestamps an explicitly bound socket cannot take over a
/// TIME_WAIT 4-tuple (`tcp_twsk_unique` needs `tw_ts_recent_stamp`), so
/// rotation in a small range runs out like the kernel default does; with
/// timestamps the same run holds.
#[test]
fn netns_root_rotation_small_range_needs_timestamps() {
    let run = |timestamps: &'static str| {
        in_netns(
            "netns_root_rotation_small_range_needs_timestamps",
            &[RANGE_100, NO_TW_REUSE, ("tcp_timestamps", timestamps)],
            || {
                let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
                let connector = Connector::new(Rotation::new(range(20000, 20099)).unwrap());
                let (ok, err) = churn(&connector, sink.addr, 1000);
                (
                    ok,
                    err.map(|e| (e.is_exhaustion(), e.os_error_name(), e.attempts())),
                )
            },
        )
    };
    let Some((ok_ts, err_ts)) = run("1") else {
        return;
    };
    assert_eq!(
        (ok_ts, err_ts),
        (1000, None),
        "with timestamps rotation takes over TIME_WAIT"
    );
    let (ok, err) = run("0").unwrap();
    assert_eq!(
        ok, 100,
        "without timestamps each of the 100 ports serves once, then stays in TIME_WAIT"
    );
    assert_eq!(
        err,
        Some((true, Some("EADDRNOTAVAIL"), fivetuple::DEFAULT_MAX_ATTEMPTS))
    );
}

#[test]
fn netns_root_spread_holds_four_times_the_connections() {
    in_netns(
        "netns_root_spread_holds_four_times_the_connections",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let hold_until_full = |connector: &Connector, sink: &Sink| {
                let mut held = Vec::new();
                for _ in 0..1000 {
                    match connector.connect_std(sink.addr) {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            assert!(e.is_exhaustion(), "{e:#?}");
                            break;
                        }
                    }
                }
                held
            };
            let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
            let single = hold_until_full(
                &Connector::new(Spread::new(["127.0.0.1".parse().unwrap()]).unwrap()),
                &sink,
            );
            let n_single = single.len();
            let seen_single = sink.wait_for(n_single).len();
            drop(single);
            drop(sink);

            let sink = Sink::start("127.0.0.1:8081", Mode::Hold);
            let sources: Vec<IpAddr> = fivetuple::address_range(
                "127.0.0.2".parse().unwrap(),
                "127.0.0.5".parse().unwrap(),
            )
            .unwrap();
            let four = hold_until_full(
                &Connector::new(Spread::new(sources.clone()).unwrap()),
                &sink,
            );
            let peers = sink.wait_for(four.len());
            assert_eq!(seen_single, n_single);
            assert!(
                (95..=100).contains(&n_single),
                "one source held {n_single} connections, expected about 100"
            );
            assert!(
                four.len() >= 380,
                "four sources held {}, expected about 4 x {n_single}",
                four.len()
            );
            let mut per_source = HashMap::<IpAddr, usize>::new();
            for p in &peers {
                *per_source.entry(p.ip()).or_default() += 1;
            }
            assert_eq!(
                per_source.keys().copied().collect::<HashSet<_>>(),
                sources.into_iter().collect(),
                "the server saw each source address"
            );
            assert!(
                per_source.values().all(|&n| n >= 95),
                "per source: {per_source:?}"
            );
        },
    );
}

/// `IP_BIND_ADDRESS_NO_PORT`: an address-only bind leaves the port to
/// `connect()`, which shares it across destinations. Without the option,
/// `bind(ip, 0)` would reserve each port for all destinations and the two
/// destinations together could hold only 100.
#[test]
fn netns_root_address_bind_shares_ports_across_destinations() {
    in_netns(
        "netns_root_address_bind_shares_ports_across_destinations",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let a = Sink::start("127.0.0.1:8080", Mode::Hold);
            let b = Sink::start("127.0.0.1:8081", Mode::Hold);
            let connector = Connector::new(Spread::new(["127.0.0.2".parse().unwrap()]).unwrap());
            let mut held = Vec::new();
            for dest in [a.addr, b.addr] {
                for i in 0..95 {
                    held.push(
                        connector
                            .connect_std(dest)
                            .unwrap_or_else(|e| panic!("{dest} #{i}: {e:#?}")),
                    );
                }
            }
            let (pa, pb) = (a.wait_for(95), b.wait_for(95));
            let ports_a: HashSet<u16> = pa.iter().map(|p| p.port()).collect();
            let ports_b: HashSet<u16> = pb.iter().map(|p| p.port()).collect();
            assert!(pa
                .iter()
                .chain(&pb)
                .all(|p| p.ip() == "127.0.0.2".parse::<IpAddr>().unwrap()));
            assert!(
                ports_a.intersection(&ports_b).count() >= 90,
                "the same ports serve both destinations"
            );
        },
    );
}

#[test]
fn netns_root_window_keeps_ports_inside_the_window() {
    in_netns(
        "netns_root_window_keeps_ports_inside_the_window",
        &[RANGE_100, NO_TW_REUSE],
        || {
            assert!(
                PortWindow::is_native(),
                "this kernel ({}) should have IP_LOCAL_PORT_RANGE (6.3+)",
                kernel_release()
            );
            let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
            let connector = Connector::new(PortWindow::new(range(40050, 40059)).unwrap());
            let mut held = Vec::new();
            let err = loop {
                match connector.connect_std(sink.addr) {
                    Ok(s) => held.push(s),
                    Err(e) => break e,
                }
                assert!(held.len() <= 10, "the window has only 10 ports");
            };
            assert_eq!(held.len(), 10);
            assert!(err.is_exhaustion(), "{err:#?}");
            let peers = sink.wait_for(10);
            let ports: HashSet<u16> = peers.iter().map(|p| p.port()).collect();
            assert_eq!(
                ports,
                (40050..=40059).collect(),
                "server saw ports {ports:?}"
            );
            assert_eq!(connector.stats().snapshot().opened_window, 10);
        },
    );
}

#[test]
fn netns_root_linger_zero_leaves_no_time_wait() {
    in_netns(
        "netns_root_linger_zero_leaves_no_time_wait",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::ReadToEof);
            let mut rst = Connector::new(KernelDefault);
            rst.set_linger_zero(true);
            // Close right after the request: with SO_LINGER {on, 0} close() sends
            // RST. (Waiting for the server's FIN first would end in TIME_WAIT
            // before close() is called.)
            for i in 0..500 {
                let mut s = rst
                    .connect_std(sink.addr)
                    .unwrap_or_else(|e| panic!("call {i}: {e:#?}"));
                std::io::Write::write_all(&mut s, b"x").unwrap();
            }
            assert_eq!(ss_count("time-wait"), 0, "RST close leaves no TIME_WAIT");
            let (ok, _) = churn(&Connector::new(KernelDefault), sink.addr, 50);
            assert_eq!(ok, 50);
            assert_eq!(ss_count("time-wait"), 50, "a normal close does");
        },
    );
}

/// All ports held open: the connect gives up with `is_exhaustion()` after
/// exactly the configured number of attempts.
#[test]
fn netns_root_all_ports_held_fails_after_exact_attempts() {
    in_netns(
        "netns_root_all_ports_held_fails_after_exact_attempts",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
            let holder = Connector::new(Rotation::new(range(40000, 40099)).unwrap());
            let held: Vec<_> = (0..100)
                .map(|i| {
                    holder
                        .connect_std(sink.addr)
                        .unwrap_or_else(|e| panic!("#{i}: {e:#?}"))
                })
                .collect();
            assert_eq!(sink.wait_for(100).len(), 100);

            let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let c = std::sync::Arc::clone(&calls);
            let rotation = Rotation::new(range(40000, 40099)).unwrap();
            let mut connector = Connector::new(move |remote: SocketAddr, attempt: u32| {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fivetuple::LocalPolicy::choose(&rotation, remote, attempt)
            });
            connector.set_max_attempts(7).unwrap();
            let err = connector.connect_std(sink.addr).unwrap_err();
            assert!(err.is_exhaustion(), "{err:#?}");
            assert_eq!(err.attempts(), 7);
            assert_eq!(
                calls.load(std::sync::atomic::Ordering::Relaxed),
                7,
                "the policy was asked once per attempt"
            );
            assert_eq!(err.os_error_name(), Some("EADDRNOTAVAIL"));
            assert!(matches!(err.local_addr(), Some(a) if (40000..=40099).contains(&a.port())));

            let kernel = Connector::new(KernelDefault);
            let err = kernel.connect_std(sink.addr).unwrap_err();
            assert!(
                err.is_exhaustion() && err.attempts() == fivetuple::DEFAULT_MAX_ATTEMPTS,
                "{err:#?}"
            );
            let s = kernel.stats().snapshot();
            assert_eq!(
                (s.exhaustion_retries, s.exhaustion_failures, s.opened()),
                (u64::from(fivetuple::DEFAULT_MAX_ATTEMPTS) - 1, 1, 0)
            );
            drop(held);
        },
    );
}

/// A policy that gives up after exhaustion makes an exhaustion error; the
/// reason reaches the caller.
#[test]
fn netns_root_give_up_after_exhaustion_is_exhaustion() {
    in_netns(
        "netns_root_give_up_after_exhaustion_is_exhaustion",
        &[RANGE_100, NO_TW_REUSE],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
            let holder = Connector::new(KernelDefault);
            let held: Vec<_> = (0..100)
                .map(|_| holder.connect_std(sink.addr).unwrap())
                .collect();
            let connector = Connector::new(|_r: SocketAddr, attempt: u32| {
                if attempt > 2 {
                    Choice::GiveUp("two tries is all".into())
                } else {
                    Choice::Kernel
                }
            });
            let err = connector.connect_std(sink.addr).unwrap_err();
            assert_eq!(err.stage(), Stage::Policy);
            assert_eq!(err.attempts(), 3);
            assert!(err.is_exhaustion());
            assert!(err.io_error().to_string().contains("two tries is all"));
            drop(held);
        },
    );
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// An unreachable network is not a port problem: one attempt.
#[test]
fn netns_root_unreachable_is_attempted_once() {
    in_netns("netns_root_unreachable_is_attempted_once", &[], || {
        // Only loopback exists in this namespace: 198.18.0.1 has no route.
        let connector = Connector::new(KernelDefault);
        let err = connector
            .connect_std("198.18.0.1:9".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.os_error_name(), Some("ENETUNREACH"), "{err:#?}");
        assert_eq!(err.attempts(), 1);
        assert!(!err.is_exhaustion());
    });
}

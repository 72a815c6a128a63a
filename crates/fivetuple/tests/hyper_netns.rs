//! hyper-util's client through fivetuple's connector, in a throwaway network
//! namespace whose ephemeral range is shrunk to 100 ports with
//! `tcp_tw_reuse=0`, so that exhaustion comes after about 100 calls.
//!
//! Needs root (`netns_root_` tests); skipped elsewhere unless CI is set.
#![cfg(feature = "hyper")]

mod hyper_support;

use std::collections::HashSet;
use std::net::SocketAddr;

use fivetuple::http::HttpConnector;
use fivetuple::{Connector, KernelDefault, PortRange, Rotation, DEFAULT_MAX_ATTEMPTS};
use hyper_support::{
    close_per_call, connect_error_in_chain, get, in_netns, pooled, root_or_skip, Server,
};

/// The namespace's whole ephemeral range: 100 ports, even start and odd end
/// (the kernel warns about equal parity).
const LO: u16 = 40000;
const HI: u16 = 40099;
const CALLS: usize = 5000;

fn small_range() -> [(&'static str, &'static str); 3] {
    [
        ("ip_local_port_range", "40000 40099"),
        // No TIME_WAIT reuse at all for kernel-chosen ports (the default 2
        // would reuse on loopback after 1 s and blur the failure).
        ("tcp_tw_reuse", "0"),
        // Rotation's takeover of a TIME_WAIT 4-tuple needs timestamps (the
        // default, written to be explicit).
        ("tcp_timestamps", "1"),
    ]
}

/// Rotation over the *same* 100 ports the kernel has: the budget is equal,
/// so the only difference between the two runs is the mechanism (an
/// explicit bind with SO_REUSEADDR takes over a TIME_WAIT 4-tuple at once,
/// `tcp_twsk_unique` with no `twp`; the kernel's own pick never does with
/// `tcp_tw_reuse=0`).
///
/// Ten ports of the range are held by established connections to the same
/// server, so every cycle of the rotation meets ten 4-tuple clashes
/// (EADDRNOTAVAIL at `connect()`) and must retry: with the start fixed at the
/// first port, 5,000 connections take 56 cycles' worth of clashes, exactly
/// 560 retries.
#[test]
fn netns_root_rotation_5000_close_per_call_gets_in_100_ports() {
    if !root_or_skip("netns_root_rotation_5000_close_per_call_gets_in_100_ports") {
        return;
    }
    in_netns("rotation-100", &small_range(), || async {
        let server = Server::start("127.0.0.1:8080").await;
        const HELD: u16 = 10;
        let mut held = Vec::new();
        for port in LO..LO + HELD {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.set_reuseaddr(true).unwrap();
            s.bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
            held.push(s.connect(server.addr).await.unwrap());
        }

        let rotation = Rotation::new(PortRange::new(LO, HI).unwrap())
            .unwrap()
            .with_start(0);
        let connector = HttpConnector::new(Connector::new(rotation));
        let stats = connector.stats().clone();
        let client = close_per_call(connector);

        let held_ports: HashSet<u16> = (LO..LO + HELD).collect();
        let mut used = HashSet::new();
        for i in 0..CALLS {
            let (status, body, info) = get(&client, server.uri())
                .await
                .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
            assert_eq!(status, 200);
            let port = info.local_addr().port();
            // What the server saw is what the client says it used.
            assert_eq!(body, port.to_string(), "call {i}");
            assert!((LO..=HI).contains(&port), "call {i}: port {port}");
            assert!(!held_ports.contains(&port), "call {i}: held port {port}");
            used.insert(port);
        }

        assert_eq!(used.len(), usize::from(HI - LO + 1 - HELD));
        assert_eq!(server.accepts(), CALLS as u64 + u64::from(HELD));
        let s = stats.snapshot();
        assert_eq!(s.opened_endpoint, CALLS as u64, "{s:?}");
        assert_eq!(s.opened(), CALLS as u64, "{s:?}");
        assert_eq!(s.exhaustion_retries, 560, "{s:?}");
        assert_eq!(s.attempts, CALLS as u64 + 560, "{s:?}");
        assert_eq!((s.exhaustion_failures, s.other_failures), (0, 0), "{s:?}");
        drop(held);
    });
}

/// The kernel default in the same setting runs out after at most 100 calls;
/// the error reaches the caller through hyper's error chain. Afterwards, in
/// the same namespace, rotation over a range outside the kernel's works,
/// while rotation over the kernel's own (now all TIME_WAIT) ports cannot
/// bind: in a process that mixes kernel-chosen ports and rotation, give
/// rotation a range outside `ip_local_port_range`.
#[test]
fn netns_root_kernel_default_exhausts_rotation_outside_recovers() {
    if !root_or_skip("netns_root_kernel_default_exhausts_rotation_outside_recovers") {
        return;
    }
    in_netns("kernel-100", &small_range(), || async {
        let server = Server::start("127.0.0.1:8080").await;
        let connector = HttpConnector::new(Connector::new(KernelDefault));
        let stats = connector.stats().clone();
        let client = close_per_call(connector);

        let mut ok = 0u64;
        let mut failure = None;
        for _ in 0..CALLS {
            match get(&client, server.uri()).await {
                Ok((status, _, info)) => {
                    assert_eq!(status, 200);
                    assert!((LO..=HI).contains(&info.local_addr().port()));
                    ok += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let err = failure.expect("the kernel default should run out of its 100 ports");
        assert!(err.is_connect(), "{err:?}");
        assert!(
            (1..=100).contains(&ok),
            "{ok} calls succeeded with 100 ports"
        );
        let inner = connect_error_in_chain(&err).expect("ConnectError in the source() chain");
        assert!(inner.is_exhaustion(), "{inner:?}");
        assert_eq!(inner.os_error_name(), Some("EADDRNOTAVAIL"), "{inner:?}");
        assert_eq!(inner.attempts(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(inner.remote_addr(), server.addr);
        assert_eq!(server.accepts(), ok);

        let s = stats.snapshot();
        let retries = u64::from(DEFAULT_MAX_ATTEMPTS - 1);
        assert_eq!(s.opened_kernel, ok, "{s:?}");
        assert_eq!(s.attempts, ok + retries + 1, "{s:?}");
        assert_eq!(s.exhaustion_retries, retries, "{s:?}");
        assert_eq!((s.exhaustion_failures, s.other_failures), (1, 0), "{s:?}");

        // Rotation over the ports the kernel just left in TIME_WAIT does not
        // help: those TIME_WAITs come from sockets without SO_REUSEADDR, so
        // an explicit bind conflicts with them (`inet_bind_conflict` needs
        // `sk_reuse` on both) and fails with EADDRINUSE on every attempt.
        let inside = Rotation::new(PortRange::new(LO, HI).unwrap()).unwrap();
        let client = close_per_call(HttpConnector::new(Connector::new(inside)));
        let err = get(&client, server.uri())
            .await
            .expect_err("bind over kernel TIME_WAITs");
        let inner = connect_error_in_chain(&err).expect("ConnectError in the source() chain");
        assert_eq!(inner.stage(), fivetuple::Stage::Bind, "{inner:?}");
        assert_eq!(inner.os_error_name(), Some("EADDRINUSE"), "{inner:?}");
        assert!(inner.is_exhaustion());

        // Rotation over 100 ports *outside* the kernel's range works at once,
        // in the same namespace, with the kernel's ports all in TIME_WAIT.
        let outside = Rotation::new(PortRange::new(20000, 20099).unwrap()).unwrap();
        let connector = HttpConnector::new(Connector::new(outside));
        let stats = connector.stats().clone();
        let client = close_per_call(connector);
        for i in 0..300 {
            let (status, body, info) = get(&client, server.uri())
                .await
                .unwrap_or_else(|e| panic!("rotation call {i} after exhaustion: {e:?}"));
            assert_eq!(status, 200);
            assert_eq!(body, info.local_addr().port().to_string());
            assert!((20000..=20099).contains(&info.local_addr().port()));
        }
        let s = stats.snapshot();
        assert_eq!((s.opened_endpoint, s.attempts), (300, 300), "{s:?}");
    });
}

/// With pooling on (hyper-util's default), sequential calls reuse one
/// connection: one accept at the server, one connect in the stats.
#[test]
fn netns_root_pooled_client_reuses_one_connection() {
    if !root_or_skip("netns_root_pooled_client_reuses_one_connection") {
        return;
    }
    in_netns("pooled", &small_range(), || async {
        let server = Server::start("127.0.0.1:8080").await;
        let rotation = Rotation::new(PortRange::new(LO, HI).unwrap()).unwrap();
        let connector = HttpConnector::new(Connector::new(rotation));
        let stats = connector.stats().clone();
        let client = pooled(connector);
        let mut infos = HashSet::new();
        for i in 0..500 {
            let (status, body, info) = get(&client, server.uri())
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
            assert_eq!(status, 200);
            assert_eq!(body, info.local_addr().port().to_string());
            infos.insert(info);
        }
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert_eq!(server.accepts(), 1);
        let s = stats.snapshot();
        assert_eq!((s.attempts, s.opened_endpoint), (1, 1), "{s:?}");
    });
}

//! Readers against a real kernel: a fresh network namespace with a known
//! table, read over netlink and over /proc. Needs root (CAP_SYS_ADMIN for
//! unshare(CLONE_NEWNET)); under CI=true a missing privilege fails the test.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use fivetuple_scan::{netlink, procfs, Socket, TcpState};

use fivetuple_testkit::{make_time_wait, root_or_skip as have_root};

/// Runs `f` on a thread that has its own, fresh network namespace with `lo` up.
fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    fivetuple_testkit::in_fresh_netns(&[], f)
}

fn key(s: &Socket) -> (TcpState, SocketAddr, SocketAddr) {
    (s.state, s.local, s.remote)
}

#[test]
fn netns_root_netlink_and_proc_readers_agree() {
    if !have_root("netns_root_netlink_and_proc_readers_agree") {
        return;
    }
    in_fresh_netns(|| {
        let l4 = TcpListener::bind("127.0.0.1:8080").unwrap();
        let l6 = TcpListener::bind("[::1]:8443").unwrap();
        make_time_wait(&l4, 50);
        make_time_wait(&l6, 20);
        let mut keep = Vec::new();
        for _ in 0..30 {
            keep.push(TcpStream::connect("127.0.0.1:8080").unwrap());
            keep.push(l4.accept().unwrap().0);
        }
        for _ in 0..10 {
            keep.push(TcpStream::connect("[::1]:8443").unwrap());
            keep.push(l6.accept().unwrap().0);
        }
        // Wait (bounded) for the last FIN/ACKs to settle into TIME_WAIT.
        let deadline = Instant::now() + Duration::from_secs(5);
        let nl = loop {
            let t = netlink::read().expect("netlink read");
            let tw = t.iter().filter(|s| s.state == TcpState::TimeWait).count();
            if tw == 70 || Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let pr = procfs::read().expect("/proc read");

        let count = |v: &[Socket]| {
            let mut m: BTreeMap<_, usize> = BTreeMap::new();
            for s in v {
                *m.entry(key(s)).or_default() += 1;
            }
            m
        };
        assert_eq!(
            nl.len(),
            2 + 70 + 80,
            "listeners + TIME_WAIT + established pairs"
        );
        assert_eq!(count(&nl), count(&pr), "both readers see the same sockets");
        assert_eq!(nl.iter().filter(|s| s.local.is_ipv6()).count(), 1 + 20 + 20);

        // Netlink gives every socket its cookie, one per socket; /proc has none.
        let cookies: std::collections::BTreeSet<u64> = nl.iter().map(|s| s.cookie).collect();
        assert!(!cookies.contains(&0), "a netlink socket without a cookie");
        assert_eq!(cookies.len(), nl.len(), "cookies are per socket");
        assert!(pr.iter().all(|s| s.cookie == 0));

        // Same inodes, and TIME_WAIT remaining times agree within a second.
        let by_key: BTreeMap<_, &Socket> = pr.iter().map(|s| (key(s), s)).collect();
        for s in &nl {
            let p = by_key[&key(s)];
            assert_eq!(s.inode, p.inode, "{s:?}");
            if s.state == TcpState::TimeWait {
                let (a, b) = (s.tw_remaining_ms.unwrap(), p.tw_remaining_ms.unwrap());
                assert!(
                    a > 50_000 && a <= 60_000,
                    "fresh TIME_WAIT has ~60 s left, got {a} ms"
                );
                assert!(a.abs_diff(b) < 1_000, "netlink {a} ms vs /proc {b} ms");
            } else {
                assert_eq!(s.tw_remaining_ms, None);
            }
        }
        drop(keep);
    });
}

#[test]
fn netns_root_run_in_pid_scans_that_namespace_only() {
    if !have_root("netns_root_run_in_pid_scans_that_namespace_only") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        in_fresh_netns(move || {
            let l = TcpListener::bind("127.0.0.1:7001").unwrap();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            tx.send(tid).unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
            drop(l);
        })
    });
    let tid = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let target = fivetuple_scan::netns::Target::Pid(tid);
    let snap = fivetuple_scan::netns::run_in(&target, || {
        fivetuple_scan::snapshot(fivetuple_scan::Reader::Auto)
    })
    .unwrap()
    .unwrap();
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(
        snap.sockets.len(),
        1,
        "only the namespace's listener: {:?}",
        snap.sockets
    );
    assert_eq!(
        snap.sockets[0].local,
        "127.0.0.1:7001".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(snap.source, fivetuple_scan::Source::Netlink);
}

#[test]
fn netns_unknown_targets_are_named_in_errors() {
    let e = fivetuple_scan::netns::open(&fivetuple_scan::netns::Target::Named(
        "no-such-ns-ft".into(),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("no-such-ns-ft"), "{e}");
    let e = fivetuple_scan::netns::open(&fivetuple_scan::netns::Target::Named("../etc".into()))
        .unwrap_err();
    assert!(e.to_string().contains("../etc"), "{e}");
    let e = fivetuple_scan::netns::open(&fivetuple_scan::netns::Target::Pid(u32::MAX)).unwrap_err();
    assert!(e.to_string().contains(&u32::MAX.to_string()), "{e}");
}

#[test]
fn netns_root_default_settings_are_a_fresh_namespace() {
    if !have_root("netns_root_default_settings_are_a_fresh_namespace") {
        return;
    }
    let read = in_fresh_netns(|| fivetuple_scan::settings::read_settings().expect("read settings"));
    let d = fivetuple_scan::Settings::default();
    // tcp_max_tw_buckets depends on the machine's hash table size, and
    // tcp_tw_reuse_delay exists only from Linux 6.14 (default 1000 ms).
    assert_eq!(
        (
            read.ip_local_port_range,
            &read.ip_local_reserved_ports,
            read.tcp_tw_reuse,
            read.tcp_timestamps,
            read.tcp_fin_timeout,
            read.effective_tw_reuse_delay_ms(),
        ),
        (
            d.ip_local_port_range,
            &d.ip_local_reserved_ports,
            d.tcp_tw_reuse,
            d.tcp_timestamps,
            d.tcp_fin_timeout,
            d.effective_tw_reuse_delay_ms(),
        )
    );
}

#[test]
fn netns_root_netlink_sees_bound_unconnected_sockets_of_both_families() {
    if !have_root("netns_root_netlink_sees_bound_unconnected_sockets_of_both_families") {
        return;
    }
    in_fresh_netns(|| {
        // bind() without listen() or connect(): only the bind hash holds these
        // (TCP_BOUND_INACTIVE, Linux 6.8+), and the one-walk dump must still ask for them.
        let held: Vec<_> = ["127.0.0.1:0", "[::1]:0"]
            .iter()
            .map(|a| fivetuple_testkit::bind_only(a.parse().unwrap()))
            .collect();
        let bound: Vec<SocketAddr> = held.iter().map(|(_, a)| *a).collect();
        let table = netlink::read().expect("netlink read");
        for local in bound {
            assert!(
                table
                    .iter()
                    .any(|s| s.local == local && s.state == TcpState::Close),
                "{local} bound, not in {table:?}"
            );
        }
    });
}

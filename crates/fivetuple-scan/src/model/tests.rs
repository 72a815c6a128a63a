use super::*;
use crate::procs::Owners;
use crate::settings::{Counters, Settings};
use crate::socket::{Socket, Source, TcpState};
use std::net::IpAddr;

fn settings(lo: u16, hi: u16) -> Settings {
    Settings {
        ip_local_port_range: fivetuple_kernel::PortRange::new(lo, hi).unwrap(),
        ..Settings::default()
    }
}

fn sock(state: TcpState, local: &str, remote: &str, inode: u64, tw: Option<u32>) -> Socket {
    Socket {
        state,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        inode,
        uid: 0,
        tw_remaining_ms: tw,
        cookie: 0,
    }
}

fn snap(sockets: Vec<Socket>, s: Settings) -> Snapshot {
    Snapshot {
        sockets,
        source: Source::Netlink,
        settings: s,
        counters: Counters::default(),
        fallback_reason: None,
    }
}

/// 95 TIME_WAIT to 10.0.0.9:443 from a 100-port range, a listener on 8080
/// with one accepted connection, and 3 ESTABLISHED to 10.0.0.9:80.
fn table() -> Vec<Socket> {
    let mut v = vec![
        sock(TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0", 1, None),
        sock(
            TcpState::Established,
            "10.0.0.1:8080",
            "10.0.0.7:40001",
            2,
            None,
        ),
    ];
    for i in 0..95u32 {
        v.push(sock(
            TcpState::TimeWait,
            &format!("10.0.0.1:{}", 40000 + i),
            "10.0.0.9:443",
            0,
            Some(i * 600),
        ));
    }
    for i in 0..3 {
        v.push(sock(
            TcpState::Established,
            &format!("10.0.0.1:{}", 40000 + i),
            "10.0.0.9:80",
            100 + i as u64,
            None,
        ));
    }
    v
}

#[test]
fn groups_outbound_only_and_counts_capacity() {
    let a = analyze(
        None,
        &snap(table(), settings(40000, 40099)),
        None,
        Thresholds::default(),
    );
    assert_eq!(
        a.totals.inbound, 1,
        "the accepted socket on 8080 is inbound"
    );
    assert_eq!(a.destinations.len(), 2);
    let d = &a.destinations[0];
    assert_eq!((d.remote_port, d.in_use, d.capacity), (443, 95, 100));
    assert_eq!(d.states.get(TcpState::TimeWait), 95);
    assert!((d.utilization - 0.95).abs() < 1e-9);
    assert_eq!(d.severity, Severity::Critical);
    // remaining = i*600 ms: <=10 s for i<=16, <=30 s for i<=50, all <= 60 s
    assert_eq!(
        d.time_wait_freeing,
        Freeing {
            within_10s: 17,
            within_30s: 51,
            within_60s: 95
        }
    );
    assert_eq!(a.destinations[1].severity, Severity::Ok);
    assert_eq!(a.status, Severity::Critical);
    assert!(a.destinations.iter().all(|d| d.remote_port != 40001));
}

#[test]
fn not_loopback_without_reuse_sustains_capacity_over_60s() {
    let mut s = settings(40000, 40099);
    s.ip_local_reserved_ports =
        fivetuple_kernel::ReservedPorts::from_ranges([(40090, 40099)]).unwrap();
    let a = analyze(None, &snap(table(), s), None, Thresholds::default());
    let d = &a.destinations[0];
    assert_eq!(d.capacity, 90);
    assert_eq!(d.in_use, 90, "five sockets sit on reserved ports");
    assert_eq!(d.explicit_binds, 5);
    assert!(!d.tw_reuse_applies, "tcp_tw_reuse=2 is loopback only");
    assert!((d.sustainable_rate_per_s - 1.5).abs() < 1e-9);
    let codes: Vec<_> = a.findings.iter().map(|f| f.code).collect();
    assert!(
        codes.contains(&FindingCode::PortUtilization) && codes.contains(&FindingCode::ExplicitBind),
        "{codes:?}"
    );
}

#[test]
fn listeners_and_bound_sockets_in_range_reduce_capacity() {
    let mut t = table();
    t.push(sock(
        TcpState::Listen,
        "0.0.0.0:40097",
        "0.0.0.0:0",
        7,
        None,
    ));
    t.push(sock(
        TcpState::Close,
        "10.0.0.1:40098",
        "0.0.0.0:0",
        8,
        None,
    ));
    let a = analyze(
        None,
        &snap(t, settings(40000, 40099)),
        None,
        Thresholds::default(),
    );
    assert_eq!(a.totals.ports_held_by_binds, 2);
    assert_eq!(a.totals.bound_unconnected, 1);
    assert_eq!(a.destinations[0].capacity, 98);
    assert!(a.findings.iter().any(|f| f.code == "bind_before_connect"));
}

#[test]
fn rate_from_two_scans_and_time_to_exhaustion() {
    let s = settings(40000, 40999);
    let mut before = Vec::new();
    let mut now = Vec::new();
    for i in 0..100u16 {
        let so = sock(
            TcpState::TimeWait,
            &format!("192.0.2.1:{}", 40000 + i),
            "192.0.2.2:443",
            0,
            Some(59_000),
        );
        if i < 40 {
            before.push(so.clone());
        }
        now.push(so);
    }
    let b = snap(before, s.clone());
    let n = snap(now, s);
    let a = analyze(
        Some((&b, Duration::from_secs(2))),
        &n,
        None,
        Thresholds::default(),
    );
    let d = &a.destinations[0];
    assert_eq!(d.rate_per_s, Some(30.0));
    // sustainable 1000/60 = 16.7/s < 30/s: 900 free ports at 30/s net (nothing frees within 10 s)
    let t = d.seconds_to_exhaustion.expect("heading to exhaustion");
    assert!((t - 30.0).abs() < 1e-9, "{t}");
    assert!(a
        .findings
        .iter()
        .any(|f| f.code == "port_utilization" && f.message.contains("30.0 new connections/s")));
}

#[test]
fn sustainable_rate_is_not_exhaustion() {
    let s = settings(40000, 40999);
    let n = snap(
        vec![sock(
            TcpState::Established,
            "192.0.2.1:40000",
            "192.0.2.2:443",
            5,
            None,
        )],
        s,
    );
    let b = snap(vec![], n.settings.clone());
    let a = analyze(
        Some((&b, Duration::from_secs(1))),
        &n,
        None,
        Thresholds::default(),
    );
    assert_eq!(a.destinations[0].rate_per_s, Some(1.0));
    assert_eq!(a.destinations[0].seconds_to_exhaustion, None);
    assert!(a.findings.is_empty());
}

#[test]
fn loopback_reuse_raises_the_sustainable_rate() {
    let n = snap(
        vec![sock(
            TcpState::TimeWait,
            "127.0.0.1:40000",
            "127.0.0.1:8080",
            0,
            Some(1),
        )],
        settings(40000, 40099),
    );
    let a = analyze(None, &n, None, Thresholds::default());
    assert!(a.destinations[0].tw_reuse_applies);
    assert!((a.destinations[0].sustainable_rate_per_s - 100.0).abs() < 1e-9);
}

#[test]
fn owners_are_attributed_and_denied_is_noted() {
    let mut owners = Owners::default();
    owners.by_inode.insert(100, vec![4242]);
    owners.by_inode.insert(101, vec![4242]);
    owners.comm.insert(4242, "client".into());
    owners.denied = 3;
    let a = analyze(
        None,
        &snap(table(), settings(40000, 40099)),
        Some(&owners),
        Thresholds::default(),
    );
    let d = a.destinations.iter().find(|d| d.remote_port == 80).unwrap();
    assert_eq!(
        d.processes,
        vec![ProcessRef {
            pid: 4242,
            comm: "client".into(),
            sockets: 2
        }]
    );
    assert!(a
        .notes
        .iter()
        .any(|n| n.contains("3 processes") && n.contains("root")));
}

#[test]
fn advice_never_suggests_fin_timeout_or_tw_recycle() {
    let mut s = settings(40000, 40099);
    s.tcp_tw_reuse = 0;
    s.tcp_timestamps = 0;
    let c = Counters {
        tcp_time_wait_overflow: Some(5),
        ..Counters::default()
    };
    let mut n = snap(table(), s);
    n.counters = c;
    let a = analyze(None, &n, None, Thresholds::default());
    let text = serde_json_free_text(&a);
    assert!(text.contains("tcp_tw_reuse=1"), "{text}");
    assert!(
        !text.contains("tcp_fin_timeout") && !text.contains("tw_recycle"),
        "{text}"
    );
}

/// Issue 9, reading 1: a dual-stack client's `::ffff:127.0.0.1` sockets
/// and its `127.0.0.1` sockets share one pool of ports.
#[test]
fn ipv4_mapped_ipv6_shares_the_ipv4_destination() {
    let mut t = Vec::new();
    for i in 0..50u16 {
        t.push(sock(
            TcpState::Established,
            &format!("127.0.0.1:{}", 40000 + i),
            "127.0.0.1:9000",
            10 + u64::from(i),
            None,
        ));
        t.push(sock(
            TcpState::Established,
            &format!("[::ffff:127.0.0.1]:{}", 40050 + i),
            "[::ffff:127.0.0.1]:9000",
            100 + u64::from(i),
            None,
        ));
    }
    let mut owners = Owners::default();
    owners.by_inode.insert(10, vec![7]);
    owners.by_inode.insert(100, vec![7]);
    let a = analyze(
        None,
        &snap(t, settings(40000, 40099)),
        Some(&owners),
        Thresholds::default(),
    );
    assert_eq!(a.destinations.len(), 1, "{:#?}", a.destinations);
    let d = &a.destinations[0];
    assert_eq!(d.remote_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(d.local_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!((d.in_use, d.capacity), (100, 100));
    assert!(d.exhausted);
    assert_eq!(d.utilization, 1.0);
    assert_eq!(d.severity, Severity::Critical);
    assert_eq!(d.processes[0].sockets, 2, "owners follow the merged group");
    assert_eq!(a.status, Severity::Critical);
    assert_eq!(
        canonical_ip("::ffff:10.1.2.3".parse().unwrap()),
        "10.1.2.3".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        canonical_ip("::1".parse().unwrap()),
        "::1".parse::<IpAddr>().unwrap(),
        "only mapped addresses change"
    );
}

/// Issue 9, reading 2: a stopped server's TIME_WAITs (local :8080 to
/// 300 client ports, no listener) are no destinations; a real client
/// destination next to them still is.
#[test]
fn a_stopped_servers_time_waits_are_not_destinations() {
    let mut t = Vec::new();
    for i in 0..300u16 {
        t.push(sock(
            TcpState::TimeWait,
            "10.0.0.1:8080",
            &format!("10.0.0.7:{}", 50000 + i),
            0,
            Some(30_000),
        ));
    }
    // The client side of this host: 40 TIME_WAIT to 10.0.0.9:443.
    for i in 0..40u16 {
        t.push(sock(
            TcpState::TimeWait,
            &format!("10.0.0.1:{}", 40000 + i),
            "10.0.0.9:443",
            0,
            Some(30_000),
        ));
    }
    let a = analyze(
        None,
        &snap(t.clone(), settings(40000, 40099)),
        None,
        Thresholds::default(),
    );
    assert_eq!(a.destinations.len(), 1, "{:#?}", a.destinations);
    assert_eq!(a.destinations[0].remote_port, 443);
    assert_eq!(a.destinations[0].in_use, 40);
    assert_eq!(a.totals.inbound, 300);
    assert_eq!(a.totals.inbound_without_listener, 300);
    assert_eq!(a.totals.outbound, 40);
    assert_eq!(a.totals.ports_held_by_binds, 0, "8080 is outside the range");
    assert_eq!(a.status, Severity::Ok);

    // The same server on a port inside the range: its TIME_WAITs keep
    // the port's bind bucket, so connect() cannot use it.
    for s in t.iter_mut().take(300) {
        s.local = "10.0.0.1:40099".parse().unwrap();
    }
    let a = analyze(
        None,
        &snap(t, settings(40000, 40099)),
        None,
        Thresholds::default(),
    );
    assert_eq!(a.destinations.len(), 1);
    assert_eq!(a.totals.ports_held_by_binds, 1);
    assert_eq!(a.destinations[0].capacity, 99);
}

/// The fan-out rule keeps a busy client whose local ports are shared
/// across many destinations (4-tuple sharing in a full range).
#[test]
fn ports_shared_across_destinations_stay_outbound() {
    let mut t = Vec::new();
    // 100 destinations (one host, 100 ports), 100 sockets each, on the
    // same 100 local ports: every local port carries 100 sockets.
    for d in 0..100u16 {
        for p in 0..100u16 {
            t.push(sock(
                TcpState::Established,
                &format!("10.0.0.1:{}", 40000 + p),
                &format!("10.0.0.9:{}", 1000 + d),
                0,
                None,
            ));
        }
    }
    // And one-socket destinations on those ports too.
    for d in 0..30u16 {
        t.push(sock(
            TcpState::Established,
            "10.0.0.1:40000",
            &format!("10.0.0.8:{}", 2000 + d),
            0,
            None,
        ));
    }
    let dirs = Directions::new(&t, &settings(40000, 40099));
    assert!(t[..10_000].iter().all(|s| dirs.is_outbound(s)));
    let a = analyze(
        None,
        &snap(t, settings(40000, 40099)),
        None,
        Thresholds::default(),
    );
    let busy = a
        .destinations
        .iter()
        .filter(|d| d.remote_ip == "10.0.0.9".parse::<IpAddr>().unwrap())
        .count();
    assert_eq!(busy, 100);
    assert_eq!(a.destinations.len(), 130, "the one-socket ones too");
    assert_eq!(a.totals.inbound, 0);
    assert_eq!(a.totals.ports_held_by_binds, 0);
    assert!(a
        .destinations
        .iter()
        .take(100)
        .all(|d| d.in_use == 100 && d.exhausted));
    assert_eq!(a.status, Severity::Critical);
}

/// A port `connect()` could have picked needs 16 sockets before the
/// fan-out rule calls it a server's; a port outside the range needs 2.
#[test]
fn a_few_sockets_on_a_pickable_port_prove_nothing() {
    let fan = |local: &str, n: u16| -> Vec<Socket> {
        (0..n)
            .map(|i| {
                sock(
                    TcpState::TimeWait,
                    local,
                    &format!("10.0.0.7:{}", 50000 + i),
                    0,
                    Some(30_000),
                )
            })
            .collect()
    };
    let s = settings(40000, 40099);
    let a = analyze(
        None,
        &snap(fan("10.0.0.1:40050", 10), s.clone()),
        None,
        Thresholds::default(),
    );
    assert_eq!((a.destinations.len(), a.totals.inbound), (10, 0));
    let a = analyze(
        None,
        &snap(fan("10.0.0.1:40050", 16), s.clone()),
        None,
        Thresholds::default(),
    );
    assert_eq!((a.destinations.len(), a.totals.inbound), (0, 16));
    let a = analyze(
        None,
        &snap(fan("10.0.0.1:8080", 2), s.clone()),
        None,
        Thresholds::default(),
    );
    assert_eq!((a.destinations.len(), a.totals.inbound), (0, 2));
    // Reserved is not pickable either.
    let mut r = s;
    r.ip_local_reserved_ports =
        fivetuple_kernel::ReservedPorts::from_ranges([(40050, 40050)]).unwrap();
    let a = analyze(
        None,
        &snap(fan("10.0.0.1:40050", 3), r),
        None,
        Thresholds::default(),
    );
    assert_eq!((a.destinations.len(), a.totals.inbound), (0, 3));
}

/// Issue 9, reading 3: a range covered by reserved ports is exhaustion,
/// with a finding naming the cause, with and without sockets.
#[test]
fn zero_usable_ports_is_exhaustion_not_zero_percent() {
    let mut s = settings(40000, 40099);
    s.ip_local_reserved_ports =
        fivetuple_kernel::ReservedPorts::from_ranges([(40000, 40099)]).unwrap();
    let a = analyze(None, &snap(table(), s.clone()), None, Thresholds::default());
    assert_eq!(a.totals.usable_ports, 0);
    let d = &a.destinations[0];
    assert_eq!(d.capacity, 0);
    assert_eq!(d.utilization, 1.0);
    assert!(d.exhausted);
    assert_eq!(d.severity, Severity::Critical);
    assert_eq!(d.seconds_to_exhaustion, Some(0.0));
    assert!(a.destinations.iter().all(|d| d.utilization == 1.0));
    let f = a
        .findings
        .iter()
        .find(|f| f.code == "no_usable_ports")
        .expect("no_usable_ports finding");
    assert_eq!(f.severity, Severity::Critical);
    assert!(
        f.message.contains("ip_local_reserved_ports covers 100"),
        "{}",
        f.message
    );
    assert_eq!(a.status, Severity::Critical);

    // No socket at all: still critical, nothing can connect.
    let a = analyze(None, &snap(vec![], s), None, Thresholds::default());
    assert!(a.destinations.is_empty());
    assert_eq!(a.status, Severity::Critical);
    assert_eq!(a.findings[0].code, "no_usable_ports");

    // Listeners covering a 4-port range: the finding names them.
    let t: Vec<Socket> = (0..4)
        .map(|i| {
            sock(
                TcpState::Listen,
                &format!("0.0.0.0:{}", 40000 + i),
                "0.0.0.0:0",
                1,
                None,
            )
        })
        .collect();
    let a = analyze(
        None,
        &snap(t, settings(40000, 40003)),
        None,
        Thresholds::default(),
    );
    assert_eq!(a.status, Severity::Critical);
    assert!(
        a.findings[0]
            .message
            .contains("listeners and bound sockets hold 4"),
        "{}",
        a.findings[0].message
    );
}

/// Issue 9, reading 4: 40% in use but exhausted in about 6 s is
/// critical; in about 300 s a warning; the thresholds move it.
#[test]
fn time_to_exhaustion_drives_the_severity() {
    // 1000 ports, 400 in use, 100 new in 1 s (sustainable 16.7/s):
    // 600 free at 100/s = 6 s.
    let run = |new: u16, th: Thresholds| {
        let s = settings(40000, 40999);
        let mut before = Vec::new();
        let mut now = Vec::new();
        for i in 0..400u16 {
            let so = sock(
                TcpState::TimeWait,
                &format!("192.0.2.1:{}", 40000 + i),
                "192.0.2.2:443",
                0,
                Some(59_000),
            );
            if i >= new {
                before.push(so.clone());
            }
            now.push(so);
        }
        analyze(
            Some((&snap(before, s.clone()), Duration::from_secs(1))),
            &snap(now, s),
            None,
            th,
        )
    };
    let a = run(100, Thresholds::default());
    let d = &a.destinations[0];
    assert!((d.utilization - 0.4).abs() < 1e-9);
    assert!((d.seconds_to_exhaustion.unwrap() - 6.0).abs() < 1e-9);
    assert_eq!(d.severity, Severity::Critical);
    assert_eq!(a.status, Severity::Critical);
    assert_eq!(a.findings[0].severity, Severity::Critical);
    assert!(
        a.findings[0].message.contains("critical below 60 s"),
        "{}",
        a.findings[0].message
    );
    // 2 new per second is below the sustainable 16.7/s: not heading there.
    assert_eq!(run(2, Thresholds::default()).status, Severity::Ok);
    // Thresholds in seconds move the verdict: 6 s is only a warning below 5 s critical.
    let th = Thresholds {
        crit_seconds: 5.0,
        ..Thresholds::default()
    };
    assert_eq!(run(100, th).status, Severity::Warning);
    let th = Thresholds {
        warn_seconds: 5.0,
        crit_seconds: 1.0,
        ..Thresholds::default()
    };
    assert_eq!(run(100, th).status, Severity::Ok);
}

fn serde_json_free_text(a: &Analysis) -> String {
    a.findings
        .iter()
        .map(|f| format!("{} {}", f.message, f.advice.join(" ")))
        .collect::<Vec<_>>()
        .join("\n")
}

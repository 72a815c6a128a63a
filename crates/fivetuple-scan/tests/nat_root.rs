//! The NAT layer against a real kernel: two "pods" (namespaces) behind a
//! "node" namespace that masquerades them to one address with
//! `--to-ports 20000-20099` (iptables-nft) toward a "service" namespace,
//! veth addresses in 198.18.0.0/15. A curl loop in each pod opens more
//! connections than the NAT has ports while the service holds every
//! connection open. Needs root (namespaces, iptables) and iptables, conntrack
//! and curl (scripts/setup); under CI=true a missing one fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fivetuple_scan::nat::{self, Basis, CtTcpState, NatSnapshot};
use fivetuple_scan::netns::Target;
use fivetuple_testkit::nat::{
    can_build, conntrack_list, conntrack_s, Load, Topology, NAT_IP, PER_POD, PORTS, SVC,
};
use fivetuple_testkit::root_or_skip;

fn group_states(snap: &NatSnapshot) -> Option<BTreeMap<String, u32>> {
    let g = snap.groups.iter().find(|g| {
        g.key.nat_source == NAT_IP.parse::<IpAddr>().unwrap()
            && g.key.destination == SVC.parse::<SocketAddr>().unwrap()
    })?;
    Some(
        g.states
            .nonzero()
            .map(|(s, n)| (s.name().to_string(), n))
            .collect(),
    )
}

#[test]
fn nat_root_masquerade_past_the_port_budget_matches_conntrack_and_counts_drops() {
    let name = "nat_root_masquerade_past_the_port_budget_matches_conntrack_and_counts_drops";
    if !can_build(name) {
        return;
    }
    let topo = Topology::build();
    let node = Target::Named(topo.ns("node"));

    let before = nat::scan_in(&node).expect("scan the node");
    assert!(
        before.source_nat,
        "the MASQUERADE rule is a source-NAT hook: {before:?}"
    );
    let before_stats = before.stats.expect("conntrack statistics");

    // Every NAT port is taken once the service holds 100 connections, and
    // no further one arrives for longer than the curl connect timeout.
    let load = Load::saturate(&topo);

    // The scan and `conntrack -L` agree on the tuple (retried while the
    // table still moves; the held connections keep it still).
    let mut agreed = None;
    for _ in 0..20 {
        let a = nat::scan_in(&node).expect("scan");
        let listed = conntrack_list(&topo.ns("node"));
        let b = nat::scan_in(&node).expect("scan");
        if group_states(&a) == group_states(&b) && group_states(&a).as_ref() == Some(&listed) {
            agreed = Some((b, listed));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (snap, listed) = agreed.expect("the scan and conntrack -L never agreed on the tuple");
    let g = snap
        .groups
        .iter()
        .find(|g| g.key.destination == SVC.parse::<SocketAddr>().unwrap())
        .unwrap();
    assert_eq!(
        listed.get("ESTABLISHED"),
        Some(&100),
        "conntrack -L: {listed:?}"
    );
    assert_eq!(g.total, 100);
    assert_eq!(g.states.get(CtTcpState::Established), 100);
    assert_eq!(g.capacity.ports, 100);
    assert_eq!(g.capacity.range, PORTS);
    assert!(
        matches!(&g.capacity.basis, Basis::Rule { location, .. } if location == "nat POSTROUTING"),
        "{:?}",
        g.capacity.basis
    );
    assert!((g.utilization() - 1.0).abs() < 1e-9);
    assert!(g.ports_seen.0 >= PORTS.0 && g.ports_seen.1 <= PORTS.1);

    // The SYNs that found no NAT port were dropped, and the scan counts it.
    let s = snap.stats.expect("conntrack statistics");
    let after_insert_failed = conntrack_s(&topo.ns("node"), "insert_failed=");
    let after_drop = conntrack_s(&topo.ns("node"), "drop=");
    assert!(
        s.insert_failed > before_stats.insert_failed && s.drop > before_stats.drop,
        "insert_failed {} -> {}, drop {} -> {}",
        before_stats.insert_failed,
        s.insert_failed,
        before_stats.drop,
        s.drop
    );
    eprintln!(
        "NAT group {:?} states {listed:?}; insert_failed {} -> {}, drop {} -> {}, early_drop {}",
        g.key, before_stats.insert_failed, s.insert_failed, before_stats.drop, s.drop, s.early_drop
    );
    assert!(s.insert_failed <= after_insert_failed && s.drop <= after_drop);
    assert!(s.count >= 100 && s.max > 0, "{s:?}");

    // What the peers saw: the service only ever saw the NAT address, on at
    // most 100 distinct ports inside the range; callers beyond that timed out.
    let (codes, seen) = load.finish();
    let distinct: BTreeSet<u16> = seen.iter().map(|a| a.port()).collect();
    assert!(
        seen.iter()
            .all(|a| a.ip() == NAT_IP.parse::<IpAddr>().unwrap()),
        "{seen:?}"
    );
    assert!(
        distinct.iter().all(|p| (PORTS.0..=PORTS.1).contains(p)),
        "{distinct:?}"
    );
    assert_eq!(seen.len(), 100, "one connection per NAT port, none beyond");
    assert_eq!(codes.get("0"), Some(&100), "curl exit codes: {codes:?}");
    assert_eq!(
        codes.get("28"),
        Some(&(2 * PER_POD - 100)),
        "the rest timed out connecting (exit 28): {codes:?}"
    );
}

#[test]
fn nat_root_namespace_without_nat_reads_only_the_statistics() {
    let name = "nat_root_namespace_without_nat_reads_only_the_statistics";
    if !root_or_skip(name) {
        return;
    }
    let snap = fivetuple_testkit::in_fresh_netns(&[], nat::scan);
    assert!(!snap.source_nat, "{snap:?}");
    assert!(snap.groups.is_empty() && snap.rules.rules.is_empty());
    assert_eq!(snap.snat_entries, 0);
}

//! `fivetuple exporter`'s `nat` collector against a real masquerading node
//! (fivetuple_testkit::nat): two pods behind a node that masquerades them to
//! 100 ports toward a service that holds every connection, scraped by plain
//! HTTP from an exporter watching the node (`--netns`). Needs root,
//! iptables, conntrack, curl and promtool (scripts/setup); under CI=true a
//! missing one fails the test.

mod support;

use support::*;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use fivetuple_testkit::nat::{
    can_build, conntrack_list, conntrack_s, Load, Topology, NAT_IP, PORTS, SVC,
};

/// The labels of the tuple every pod is masqueraded to, as the exporter writes them.
fn tuple_labels() -> String {
    let (ip, port) = SVC.split_once(':').unwrap();
    format!("nat_ip=\"{NAT_IP}\",remote_ip=\"{ip}\",remote_port=\"{port}\"")
}

/// The namespace labels `exporter --all-netns` puts first on the series of the named namespace.
fn netns_labels(name: &str) -> String {
    let inode = std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino();
    format!("netns=\"{inode}\",container_id=\"\",pod_uid=\"\"")
}

/// `fivetuple_nat_ports` of the tuple, per state.
fn nat_ports(body: &str) -> BTreeMap<String, u32> {
    nat_ports_in(body, "")
}

/// `fivetuple_nat_ports` of the tuple, per state, in the namespace whose
/// labels are `ns` (with a trailing comma; empty for a one-namespace exporter).
fn nat_ports_in(body: &str, ns: &str) -> BTreeMap<String, u32> {
    let prefix = format!("fivetuple_nat_ports{{{ns}{},state=\"", tuple_labels());
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (state, value) = rest.split_once("\"} ").unwrap();
            (state.to_string(), value.parse::<f64>().unwrap() as u32)
        })
        .collect()
}

/// A gauge of the tuple (`fivetuple_nat_utilization_ratio`, ...).
fn of_tuple(body: &str, name: &str) -> Option<f64> {
    sample(body, &format!("{name}{{{}}} ", tuple_labels()))
}

/// `conntrack -S` sums of the failure counters, in the order the exporter's are read.
fn conntrack_counters(ns: &str) -> [u64; 3] {
    ["insert_failed=", "drop=", "early_drop="].map(|k| conntrack_s(ns, k))
}

fn exporter_counters(body: &str) -> [u64; 3] {
    [
        "fivetuple_conntrack_insert_failed_total ",
        "fivetuple_conntrack_drop_total ",
        "fivetuple_conntrack_early_drop_total ",
    ]
    .map(|p| sample(body, p).unwrap_or_else(|| panic!("no {p}in:\n{body}")) as u64)
}

#[test]
fn netns_root_exporter_nat_ports_match_conntrack_and_counters_match_conntrack_s() {
    let name = "netns_root_exporter_nat_ports_match_conntrack_and_counters_match_conntrack_s";
    if !can_build(name) || !have_tool(name, "promtool", "prometheus") {
        return;
    }
    let topo = Topology::build();
    let node = topo.ns("node");
    let (_node_exporter, node_addr) = start_exporter(&["--netns", &node], |_| {});
    let (_svc_exporter, svc_addr) = start_exporter(&["--netns", &topo.ns("svc")], |_| {});

    // Before any traffic: the node masquerades, but has no destination yet.
    let first = get(node_addr, "/metrics").body;
    assert_eq!(sample(&first, "fivetuple_nat_source_nat_hook "), Some(1.0));
    assert_eq!(
        sample(
            &first,
            "fivetuple_scrape_collector_success{collector=\"nat\"} "
        ),
        Some(1.0),
        "{first}"
    );
    assert!(nat_ports(&first).is_empty(), "{first}");

    let load = Load::saturate(&topo);

    // The exporter's counts equal conntrack -L for the tuple, and its
    // counters lie between conntrack -S read just before and just after the
    // scrape (retried while the table still moves).
    let mut agreed = None;
    for _ in 0..20 {
        let before = conntrack_counters(&node);
        let body = get(node_addr, "/metrics").body;
        let after = conntrack_counters(&node);
        let listed = conntrack_list(&node);
        if nat_ports(&body) == listed {
            agreed = Some((body, before, after, listed));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (body, before, after, listed) =
        agreed.expect("the exporter and conntrack -L never agreed on the tuple");
    assert_eq!(
        listed.values().sum::<u32>(),
        100,
        "conntrack -L: {listed:?}"
    );
    let capacity = of_tuple(&body, "fivetuple_nat_capacity_ports");
    assert_eq!(capacity, Some(f64::from(PORTS.1 - PORTS.0 + 1)), "{body}");
    let ratio = of_tuple(&body, "fivetuple_nat_utilization_ratio").expect("a utilization");
    assert!(ratio >= 0.9, "utilization {ratio}");
    assert_eq!(
        of_tuple(&body, "fivetuple_nat_seconds_to_exhaustion"),
        Some(0.0),
        "a full range has no time left"
    );
    let got = exporter_counters(&body);
    eprintln!(
        "conntrack -L {listed:?}; utilization {ratio}; insert_failed/drop/early_drop: conntrack -S {before:?}..{after:?}, exporter {got:?}"
    );
    for (i, what) in ["insert_failed", "drop", "early_drop"].iter().enumerate() {
        assert!(
            before[i] <= got[i] && got[i] <= after[i],
            "{what}: conntrack -S {} before and {} after the scrape, exporter {}",
            before[i],
            after[i],
            got[i]
        );
    }
    assert!(
        got[0] > 0 || got[1] > 0,
        "the SYNs that found no NAT port were dropped: {got:?}"
    );
    assert!(sample(&body, "fivetuple_conntrack_entries ").unwrap() >= 100.0);
    assert!(sample(&body, "fivetuple_conntrack_max ").unwrap() > 0.0);
    assert_eq!(
        sample(
            &body,
            "fivetuple_scrape_collector_success{collector=\"nat\"} "
        ),
        Some(1.0)
    );
    let dir = TempDir::new("exporter-nat");
    promtool_check(&body, &dir.0);

    // The service's namespace has no NAT: conntrack series, no NAT destination.
    let svc = get(svc_addr, "/metrics").body;
    assert!(!svc.contains("fivetuple_nat_ports"), "{svc}");
    assert!(!svc.contains("fivetuple_nat_utilization_ratio"), "{svc}");
    assert_eq!(sample(&svc, "fivetuple_nat_source_nat_hook "), Some(0.0));
    assert!(sample(&svc, "fivetuple_conntrack_max ").is_some(), "{svc}");
    assert_eq!(
        sample(
            &svc,
            "fivetuple_scrape_collector_success{collector=\"nat\"} "
        ),
        Some(1.0)
    );
    // What the NAT collector costs there, next to the socket table's (for the report).
    let cost = |c: &str| {
        sample(
            &svc,
            &format!("fivetuple_scrape_collector_duration_seconds{{collector=\"{c}\"}} "),
        )
        .unwrap()
    };
    eprintln!(
        "without NAT: nat collector {:.6} s, destinations collector {:.6} s",
        cost("nat"),
        cost("destinations")
    );

    // --all-netns: the node's series carry its namespace labels, with the
    // same counts; the service's namespace has none. Other namespaces on
    // the machine are scanned too, so the test looks only at its own.
    let (_all, all_addr) = start_exporter(&["--all-netns", "--top-k", "1000"], |_| {});
    let node_ns = format!("{},", netns_labels(&node));
    let svc_ns = netns_labels(&topo.ns("svc"));
    let mut agreed = None;
    for _ in 0..20 {
        let body = get(all_addr, "/metrics").body;
        let listed = conntrack_list(&node);
        if nat_ports_in(&body, &node_ns) == listed {
            agreed = Some(body);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let all = agreed.expect("exporter --all-netns and conntrack -L never agreed on the tuple");
    assert_eq!(
        sample(
            &all,
            &format!(
                "fivetuple_nat_utilization_ratio{{{node_ns}{}}} ",
                tuple_labels()
            )
        ),
        Some(ratio)
    );
    assert_eq!(
        sample(&all, &format!("fivetuple_nat_source_nat_hook{{{svc_ns}}} ")),
        Some(0.0),
        "{all}"
    );
    assert!(
        !all.lines()
            .any(|l| l.starts_with(&format!("fivetuple_nat_ports{{{svc_ns},"))),
        "{all}"
    );
    assert_eq!(
        sample(
            &all,
            "fivetuple_scrape_collector_success{collector=\"nat\"} "
        ),
        Some(1.0),
        "{all}"
    );

    let (codes, _) = load.finish();
    assert_eq!(codes.get("0"), Some(&100), "curl exit codes: {codes:?}");
}

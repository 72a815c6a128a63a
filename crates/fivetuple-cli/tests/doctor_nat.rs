//! `fivetuple doctor`'s NAT section against a real masquerading node
//! (fivetuple_testkit::nat): two pods behind a node that masquerades them to
//! 100 ports toward a service that holds every connection. Needs root,
//! iptables, conntrack and curl (scripts/setup); under CI=true a missing one
//! fails the test.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fivetuple_testkit::nat::{can_build, conntrack_list, Load, Topology, NAT_IP, PORTS, SVC};

fn doctor(netns: &str, json: bool) -> (i32, String) {
    let mut args = vec![
        "doctor",
        "--netns",
        netns,
        "--interval",
        "0",
        "--no-processes",
    ];
    if json {
        args.push("--json");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args(&args)
        .output()
        .expect("run fivetuple doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn netns_root_doctor_nat_section_matches_conntrack_and_exits_critical() {
    let name = "netns_root_doctor_nat_section_matches_conntrack_and_exits_critical";
    if !can_build(name) {
        return;
    }
    let topo = Topology::build();
    let node = topo.ns("node");

    // Before any traffic: a NAT section with no connections, exit 0.
    let (code, text) = doctor(&node, true);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("doctor --json");
    assert_eq!(code, 0, "{text}");
    assert_eq!(doc["nat"]["destinations_total"], 0, "{text}");
    // A namespace without NAT: no section, no `nat` key.
    let (_, svc_text) = doctor(&topo.ns("svc"), true);
    let svc: serde_json::Value = serde_json::from_str(&svc_text).unwrap();
    assert!(svc.get("nat").is_none(), "{svc_text}");
    let (_, svc_report) = doctor(&topo.ns("svc"), false);
    assert!(!svc_report.contains("\nNAT "), "{svc_report}");

    let load = Load::saturate(&topo);

    // doctor's NAT counts equal conntrack -L for the tuple (retried while the table moves).
    let mut agreed = None;
    for _ in 0..20 {
        let (code, text) = doctor(&node, true);
        let listed = conntrack_list(&node);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("doctor --json");
        let d = doc["nat"]["destinations"].as_array().and_then(|a| {
            a.iter()
                .find(|d| d["nat_source"] == NAT_IP && d["destination"] == SVC)
                .cloned()
        });
        let states: Option<BTreeMap<String, u32>> = d.as_ref().map(|d| {
            d["states"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as u32))
                .collect()
        });
        if states.as_ref() == Some(&listed) {
            agreed = Some((code, doc, d.unwrap()));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, doc, d) = agreed.expect("doctor and conntrack -L never agreed on the tuple");
    assert_eq!(d["in_use"], 100, "{d}");
    assert_eq!(d["capacity"]["ports"], 100);
    assert_eq!(
        d["capacity"]["range"],
        serde_json::json!([PORTS.0, PORTS.1])
    );
    assert_eq!(d["utilization"], 1.0);
    assert_eq!(d["severity"], "critical");
    assert_eq!(code, 2, "NAT exhaustion is critical: {doc}");
    assert_eq!(doc["exit_code"], 2);
    let ct = &doc["nat"]["conntrack"];
    assert!(
        ct["insert_failed"].as_u64().unwrap() > 0 && ct["drop"].as_u64().unwrap() > 0,
        "the dropped SYNs are counted: {ct}"
    );
    let codes: Vec<&str> = doc["nat"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"nat_port_utilization"), "{codes:?}");

    // The text report has the NAT section with the same numbers and the advice.
    let (code, report) = doctor(&node, false);
    assert_eq!(code, 2);
    let row = report
        .lines()
        .find(|l| l.contains(NAT_IP) && l.contains(SVC))
        .unwrap_or_else(|| panic!("no NAT row in:\n{report}"));
    assert!(row.contains(" 100 ") && row.contains("100%"), "{row}");
    assert!(
        report.contains("--random-fully") && report.contains("Keep connections alive"),
        "{report}"
    );
    assert!(report.contains("insert_failed"), "{report}");

    // --all-netns: the node's namespace has the same NAT section, the
    // service's none, and the exit code counts it (other namespaces on the
    // machine are scanned too; the test looks only at its own).
    let out = Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args([
            "doctor",
            "--all-netns",
            "--json",
            "--interval",
            "0",
            "--no-processes",
        ])
        .output()
        .expect("run fivetuple doctor --all-netns");
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("doctor --all-netns --json");
    let named = |name: &str| {
        doc["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| {
                n["netns"]["names"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == name))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no namespace {name} in {text}"))
    };
    let node_doc = named(&node);
    let d = node_doc["nat"]["destinations"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["nat_source"] == NAT_IP && d["destination"] == SVC)
        })
        .unwrap_or_else(|| panic!("no NAT destination in {node_doc}"));
    assert_eq!(
        d["in_use"].as_u64(),
        Some(u64::from(conntrack_list(&node).values().sum::<u32>())),
        "{d}"
    );
    assert_eq!(d["severity"], "critical");
    assert_eq!(node_doc["status"], "critical");
    assert!(named(&topo.ns("svc")).get("nat").is_none());
    assert_eq!(out.status.code(), Some(2), "{text}");

    load.finish();
}

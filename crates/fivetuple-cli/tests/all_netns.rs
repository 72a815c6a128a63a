//! `--all-netns` with the real binary against a node built in the test
//! (`fivetuple_testkit::pods`): pods in named namespaces with
//! Kubernetes-shaped cgroups and known tables. Tests named `netns_root_*`
//! need root (namespaces, setns, the cgroup v2 mount); under CI=true they
//! fail rather than skip. The unprivileged test drops to uid 65534 with
//! `setpriv` (util-linux).

mod support;

use support::*;

use std::net::SocketAddr;
use std::process::Command;

use fivetuple_testkit::pods::{ss_in, Node, PodSpec, DATABASE, SERVICE};
use serde_json::Value;

fn have_node_tools(test: &str) -> bool {
    have_root(test)
        && fivetuple_testkit::have_tool(test, "ip", "iproute2")
        && fivetuple_testkit::have_tool(test, "ss", "iproute2")
        && fivetuple_testkit::have_tool(test, "nsenter", "util-linux")
}

/// Four pods; pod 0 holds 95 of its 100 ports toward the service.
fn build_node(tag: &str) -> Node {
    let mut node = Node::new(tag);
    for i in 0..4 {
        node.add_pod(PodSpec {
            range_len: if i == 0 { 100 } else { 200 },
            time_wait: if i == 0 { 95 } else { 5 + i },
            established: 1 + i,
        });
    }
    node.settle();
    node
}

/// The JSON destination toward `remote`, if any.
fn destination(ns: &Value, remote: SocketAddr) -> Option<&Value> {
    ns["destinations"].as_array().unwrap().iter().find(|d| {
        d["remote_ip"].as_str() == Some(&remote.ip().to_string())
            && d["remote_port"].as_u64() == Some(u64::from(remote.port()))
    })
}

#[test]
fn netns_root_doctor_all_netns_reports_each_pod_like_ss_and_exits_with_the_worst() {
    let test = "netns_root_doctor_all_netns_reports_each_pod_like_ss_and_exits_with_the_worst";
    if !have_node_tools(test) {
        return;
    }
    let node = build_node("doctor");
    let out = doctor(&["--all-netns", "--json", "--interval", "0", "--top", "0"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(2), "pod 0 is at 95%");
    assert_eq!(doc["status"], "critical");
    assert_eq!(doc["exit_code"], 2);
    let namespaces = doc["namespaces"].as_array().unwrap();
    // Sorted by worst utilization (other tests' namespaces may be on the
    // host too): non-increasing, and pod 0 (95%) before the other pods.
    let worst: Vec<f64> = namespaces
        .iter()
        .map(|n| n["worst_utilization"].as_f64().unwrap())
        .collect();
    assert!(worst.windows(2).all(|w| w[0] >= w[1]), "{worst:?}");
    let position = |uid: &str| {
        namespaces
            .iter()
            .position(|n| n["netns"]["pod_uid"].as_str() == Some(uid))
            .unwrap_or_else(|| panic!("no namespace with pod_uid {uid}"))
    };
    let first = position(&node.pods[0].uid);
    assert!(node.pods[1..].iter().all(|p| position(&p.uid) > first));
    let service: SocketAddr = SERVICE.parse().unwrap();
    let database: SocketAddr = DATABASE.parse().unwrap();
    for pod in &node.pods {
        let ns = namespaces
            .iter()
            .find(|n| n["netns"]["pod_uid"].as_str() == Some(pod.uid.as_str()))
            .unwrap_or_else(|| panic!("no namespace with pod_uid {}", pod.uid));
        assert_eq!(ns["netns"]["inode"].as_u64(), Some(pod.inode));
        assert_eq!(
            ns["netns"]["container_id"].as_str(),
            Some(pod.container_id.as_str())
        );
        assert_eq!(ns["netns"]["names"][0].as_str(), Some(pod.name.as_str()));
        assert_eq!(
            ns["settings"]["ip_local_port_range"],
            serde_json::json!([pod.range.0, pod.range.1])
        );
        let ss = ss_in(&pod.name);
        for (remote, json_state, ss_state, built) in [
            (service, "TIME_WAIT", "TIME-WAIT", pod.spec.time_wait),
            (database, "ESTABLISHED", "ESTAB", pod.spec.established),
        ] {
            let by_ss = ss
                .get(&(ss_state.to_string(), remote.to_string()))
                .copied()
                .unwrap_or(0);
            let d = destination(ns, remote)
                .unwrap_or_else(|| panic!("{}: no destination {remote}", pod.name));
            let by_doctor = d["states"][json_state].as_u64().unwrap_or(0) as usize;
            assert_eq!(
                (by_doctor, by_ss),
                (built, built),
                "{} pod {}: {json_state} toward {remote}: doctor vs ss vs built",
                pod.name,
                pod.uid
            );
        }
        let expected = pod.worst_utilization();
        let worst = ns["worst_utilization"].as_f64().unwrap();
        assert!((worst - expected).abs() < 1e-9, "{}: {worst}", pod.name);
    }

    // The text report ends naming the critical pod.
    let out = doctor(&["--all-netns", "--interval", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text.lines().last().unwrap();
    assert!(
        status.starts_with("Status: CRITICAL (exit 2)") && status.contains(&node.pods[0].uid),
        "{status}"
    );
    assert!(
        !status.contains(&node.pods[1].uid),
        "only the critical pod is named: {status}"
    );
    assert!(
        text.contains(&format!(
            "== netns {} [{}]: pod {}",
            node.pods[2].inode, node.pods[2].name, node.pods[2].uid
        )),
        "{text}"
    );
}

#[test]
fn netns_root_exporter_all_netns_labels_series_by_pod_like_ss() {
    let test = "netns_root_exporter_all_netns_labels_series_by_pod_like_ss";
    if !have_node_tools(test) {
        return;
    }
    let node = build_node("exporter");
    let (_exporter, addr) = start_exporter(&["--all-netns"], |_| {});
    // Two scrapes: the second has rates (no new connections: 0).
    assert_eq!(get(addr, "/metrics").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    let text = &reply.body;
    assert_eq!(
        sample(
            text,
            "fivetuple_scrape_collector_success{collector=\"netns\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(text, "fivetuple_netns_namespaces").unwrap() >= 5.0,
        "4 pods and the host"
    );
    for pod in &node.pods {
        let ns = format!(
            "netns=\"{}\",container_id=\"{}\",pod_uid=\"{}\"",
            pod.inode, pod.container_id, pod.uid
        );
        let ss = ss_in(&pod.name);
        for (remote, state, ss_state) in [
            (SERVICE, "TIME_WAIT", "TIME-WAIT"),
            (DATABASE, "ESTABLISHED", "ESTAB"),
        ] {
            let r: SocketAddr = remote.parse().unwrap();
            let series = format!(
                "fivetuple_destination_sockets{{{ns},local_ip=\"127.0.0.1\",remote_ip=\"{}\",remote_port=\"{}\",state=\"{state}\"}}",
                r.ip(),
                r.port()
            );
            let by_ss = ss.get(&(ss_state.to_string(), remote.to_string())).copied();
            assert_eq!(
                sample(text, &series),
                by_ss.map(|n| n as f64),
                "{series} vs ss in {}",
                pod.name
            );
        }
        let range = format!("fivetuple_netns_ip_local_port_range_ports{{{ns}}}");
        assert_eq!(sample(text, &range), Some(f64::from(pod.spec.range_len)));
        let tw_total: usize = ss
            .iter()
            .filter(|((s, _), _)| s == "TIME-WAIT")
            .map(|(_, n)| n)
            .sum();
        let per_ns = format!("fivetuple_netns_sockets{{{ns},state=\"TIME_WAIT\"}}");
        assert_eq!(sample(text, &per_ns), Some(tw_total as f64));
    }
    if fivetuple_testkit::have_tool(test, "promtool", "prometheus") {
        let dir = TempDir::new("all-netns-promtool");
        promtool_check(text, &dir.0);
    }
}

#[test]
fn all_netns_unprivileged_exits_3_naming_the_capability_and_the_host_alone_still_works() {
    let test =
        "all_netns_unprivileged_exits_3_naming_the_capability_and_the_host_alone_still_works";
    if !have_root(test) || !fivetuple_testkit::have_tool(test, "setpriv", "util-linux") {
        return;
    }
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(BIN)
            .args(args)
            .output()
            .expect("run setpriv")
    };
    for sub in [
        &["doctor", "--all-netns", "--interval", "0"][..],
        &["exporter", "--all-netns", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = nobody(sub);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{sub:?}: {err}");
        assert!(
            err.contains("CAP_SYS_ADMIN") && err.contains("CAP_SYS_PTRACE"),
            "{sub:?}: {err}"
        );
    }
    let out = nobody(&["doctor", "--interval", "0", "--no-processes"]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0..=2)),
        "the current namespace needs no capability: exit {code:?}, {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without CAP_NET_ADMIN conntrack refuses: doctor says it could not see
    // the NAT layer rather than looking like a namespace without NAT.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NAT view incomplete (it needs CAP_NET_ADMIN)"),
        "{text}"
    );
    let root = doctor(&["--interval", "0", "--no-processes"]);
    let text = String::from_utf8_lossy(&root.stdout);
    assert!(!text.contains("NAT view incomplete"), "{text}");
}

/// The PromQL pod-name join of docs/exporter.md, as the docs print it (the
/// first `promql` block under "Pod names").
fn documented_join() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/exporter.md"
    ))
    .unwrap();
    let section = &doc[doc.find("### Pod names").expect("a Pod names section")..];
    let block = &section[section.find("```promql\n").expect("a promql block") + 10..];
    block[..block.find("```").unwrap()].trim().to_string()
}

/// A loopback HTTP server answering every request with `body` in the
/// Prometheus text format (kube-state-metrics' stand-in); it stops when
/// dropped. Every accept is bounded by the stop flag, checked every 50 ms.
struct StaticMetrics {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticMetrics {
    fn serve(body: String) -> StaticMetrics {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StaticMetrics {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StaticMetrics {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback port free now (for a server that takes only an explicit address).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn netns_root_prometheus_scrapes_all_netns_and_the_documented_pod_join_names_each_pod() {
    let test = "netns_root_prometheus_scrapes_all_netns_and_the_documented_pod_join_names_each_pod";
    if !have_node_tools(test) || !fivetuple_testkit::have_tool(test, "prometheus", "prometheus") {
        return;
    }
    let node = build_node("prom-join");
    // kube-state-metrics' series for our pods only: the join keeps these.
    let names: Vec<(String, String)> = node
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.uid.clone(), format!("web-{i}-{}", std::process::id())))
        .collect();
    let body: String = names
        .iter()
        .map(|(uid, pod)| {
            format!("kube_pod_info{{namespace=\"shop\",pod=\"{pod}\",uid=\"{uid}\",node=\"test-node\"}} 1\n")
        })
        .collect();
    let ksm = StaticMetrics::serve(format!("# TYPE kube_pod_info gauge\n{body}"));
    // The host's namespace: the exporter must see every namespace of the node.
    let (_exporter, exp) = start_exporter(&["--all-netns", "--top-k", "10000"], |_| {});
    let dir = TempDir::new("all-netns-prometheus");
    let prom = Prometheus::start_at(
        &dir.0,
        free_port(),
        &format!(
            "  - job_name: fivetuple\n    scrape_interval: 3s\n    scrape_timeout: 3s\n    static_configs:\n      - targets: ['{exp}']\n  - job_name: kube-state-metrics\n    honor_labels: true\n    static_configs:\n      - targets: ['{}']\n",
            ksm.addr
        ),
    );
    let join = documented_join();
    assert!(join.contains("kube_pod_info"), "{join}");
    let (mut r, log) = prom.wait_for(&[&join]);
    // Poll until every pod's two destinations are in (scrapes land one by one).
    let want_series = 2 * node.pods.len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while r[0].len() < want_series && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        r = vec![query(prom.addr, &join)];
    }
    let joined = &r[0];
    assert!(
        !joined.is_empty(),
        "the documented join returned nothing; prometheus log:\n{log}"
    );
    let mut per_pod: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for s in joined {
        let m = &s["metric"];
        per_pod
            .entry(m["pod_uid"].as_str().unwrap().to_string())
            .or_default()
            .push(s);
    }
    assert_eq!(
        per_pod.len(),
        node.pods.len(),
        "one pod per UID in the join: {joined:#?}"
    );
    for (pod, (uid, name)) in node.pods.iter().zip(&names) {
        let series = per_pod
            .get(uid)
            .unwrap_or_else(|| panic!("no joined series for pod {uid}: {joined:#?}"));
        // Two destinations per pod: the service (TIME_WAIT) and the database.
        assert_eq!(series.len(), 2, "{uid}: {series:#?}");
        for s in series {
            let m = &s["metric"];
            assert_eq!(m["pod"], name.as_str(), "{uid}");
            assert_eq!(m["namespace"], "shop", "{uid}");
            assert_eq!(m["netns"], pod.inode.to_string(), "{uid}");
        }
        let worst = series.iter().map(|s| value_of(s)).fold(0.0, f64::max);
        assert!(
            (worst - pod.worst_utilization()).abs() < 1e-9,
            "{uid}: joined utilization {worst}, built {}",
            pod.worst_utilization()
        );
    }
}

#[test]
fn netns_root_tcp_ehash_entries_own_for_a_namespace_created_after_tcp_child_ehash_entries_shared_before(
) {
    let test = "netns_root_tcp_ehash_entries_own_for_a_namespace_created_after_tcp_child_ehash_entries_shared_before";
    if !have_node_tools(test)
        || !std::path::Path::new("/proc/sys/net/ipv4/tcp_child_ehash_entries").exists()
            && !fail_under_ci(test, "Linux 6.1+ (net.ipv4.tcp_child_ehash_entries)")
    {
        return;
    }
    let spec = PodSpec {
        range_len: 200,
        time_wait: 3,
        established: 1,
    };
    let mut node = Node::new("ehash");
    // Created with the host's value (0 unless another test holds the lock: it waits).
    let shared = {
        let _host = fivetuple_testkit::HostSysctl::set("ipv4.tcp_child_ehash_entries", "0");
        node.add_pod(spec).inode
    };
    // Created while the host's tcp_child_ehash_entries is 4096; put back at once.
    let own = {
        let _host = fivetuple_testkit::HostSysctl::set("ipv4.tcp_child_ehash_entries", "4096");
        node.add_pod(spec).inode
    };
    node.settle();

    let out = doctor(&["--all-netns", "--json", "--interval", "0"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ehash_of = |inode: u64| {
        doc["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["netns"]["inode"].as_u64() == Some(inode))
            .unwrap_or_else(|| panic!("netns {inode} not in the doctor's report"))["settings"]
            ["tcp_ehash_entries"]
            .as_i64()
    };
    let host_buckets: i64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(ehash_of(own), Some(4096), "its own hash");
    assert_eq!(
        ehash_of(shared),
        Some(-host_buckets),
        "the host's hash, shared"
    );

    let (_exporter, addr) = start_exporter(&["--all-netns"], |_| {});
    let text = get(addr, "/metrics").body;
    for (pod, want) in node.pods.iter().zip([-host_buckets, 4096]) {
        let series = format!(
            "fivetuple_netns_tcp_ehash_entries{{netns=\"{}\",container_id=\"{}\",pod_uid=\"{}\"}}",
            pod.inode, pod.container_id, pod.uid
        );
        assert_eq!(sample(&text, &series), Some(want as f64), "{series}");
    }
}

/// Outside CI a missing kernel feature skips (with a message); under CI it fails.
fn fail_under_ci(test: &str, what: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {what} and CI is set"
    );
    eprintln!("skipping {test}: needs {what}");
    false
}

#[test]
fn netns_root_doctor_all_netns_advises_tcp_child_ehash_entries_when_many_pods_share_the_hash() {
    let test =
        "netns_root_doctor_all_netns_advises_tcp_child_ehash_entries_when_many_pods_share_the_hash";
    if !have_node_tools(test) {
        return;
    }
    // 11 pods of 951 sockets: past the finding's bounds (10 namespaces
    // sharing the host's hash, 10,000 sockets on the node). Created with
    // the host's tcp_child_ehash_entries at 0, so they share it, whatever
    // another test sets meanwhile (HostSysctl serializes them).
    let mut node = Node::new("sharing");
    {
        let _host = fivetuple_testkit::HostSysctl::set("ipv4.tcp_child_ehash_entries", "0");
        for _ in 0..11 {
            node.add_pod(PodSpec {
                range_len: 1000,
                time_wait: 950,
                established: 0,
            });
        }
    }
    node.settle();

    let out = doctor(&["--all-netns", "--json", "--interval", "0", "--no-processes"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&Value> = doc["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            node.pods
                .iter()
                .any(|p| n["netns"]["inode"].as_u64() == Some(p.inode))
        })
        .collect();
    assert_eq!(ours.len(), 11);
    assert!(
        ours.iter()
            .all(|n| n["settings"]["tcp_ehash_entries"].as_i64().unwrap() < 0),
        "every pod shares the host's hash"
    );
    let findings = doc["node_findings"].as_array().unwrap();
    let f = findings
        .iter()
        .find(|f| f["code"] == "shared_tcp_ehash")
        .unwrap_or_else(|| panic!("no shared_tcp_ehash in {findings:#?}"));
    assert_eq!(f["severity"], "info");
    let sharing: usize = f["message"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sharing >= 11, "{f}");
    assert!(
        f["advice"][0]
            .as_str()
            .unwrap()
            .contains("net.ipv4.tcp_child_ehash_entries"),
        "{f}"
    );

    let out = doctor(&["--all-netns", "--interval", "0", "--no-processes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let node_section = &text[text.find("\nNode\n").expect("a Node section")..];
    assert!(
        node_section.contains("INFO") && node_section.contains("tcp_child_ehash_entries"),
        "{node_section}"
    );
}

/// Ports held by `bind()` count with `--all-netns` as in one namespace: a
/// pod with 85 TIME_WAIT sockets toward the service and 10 sockets bound
/// but never connected has 90 usable ports left for the service, 94% used,
/// critical. `--skip-bound-inactive` trades that for speed and says so:
/// capacity 100, 85%, and the report names what was skipped.
#[test]
fn netns_root_doctor_all_netns_counts_ports_held_by_bind_unless_skipped() {
    let test = "netns_root_doctor_all_netns_counts_ports_held_by_bind_unless_skipped";
    if !have_node_tools(test) {
        return;
    }
    let mut node = Node::new("bound");
    node.add_pod(PodSpec {
        range_len: 100,
        time_wait: 85,
        established: 1,
    });
    node.settle();
    let pod = &node.pods[0];
    let (lo, hi) = pod.range;
    // Ten sockets bound to port 0 in the pod: the kernel picks their ports
    // from the pod's range, and they stay bound (never connected).
    let bound = fivetuple_testkit::pods::in_named_netns(&pod.name, move || {
        (0..10)
            .map(|_| fivetuple_testkit::bind_only("127.0.0.1:0".parse().unwrap()))
            .collect::<Vec<_>>()
    });
    assert!(
        bound.iter().all(|(_, a)| (lo..=hi).contains(&a.port())),
        "bound ports outside the pod's range"
    );
    let service: SocketAddr = SERVICE.parse().unwrap();
    let pod_of = |doc: &Value| -> Value {
        doc["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["netns"]["pod_uid"].as_str() == Some(pod.uid.as_str()))
            .unwrap_or_else(|| panic!("no namespace for the pod: {doc:#}"))
            .clone()
    };

    let out = doctor(&["--all-netns", "--json", "--interval", "0", "--top", "0"]);
    let doc = json_of(&out);
    assert_eq!(doc["bound_inactive"], true);
    let ns = pod_of(&doc);
    let d = destination(&ns, service).unwrap_or_else(|| panic!("{ns:#}"));
    assert_eq!(d["capacity"], 90, "{d:#}");
    assert_eq!(ns["totals"]["bound_unconnected"], 10, "{ns:#}");
    assert_eq!(ns["status"], "critical", "85 + 10 of 100 ports: {ns:#}");
    assert!(
        ns["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "bind_before_connect"),
        "{ns:#}"
    );

    let out = doctor(&[
        "--all-netns",
        "--json",
        "--interval",
        "0",
        "--top",
        "0",
        "--skip-bound-inactive",
    ]);
    let doc = json_of(&out);
    assert_eq!(doc["bound_inactive"], false);
    let ns = pod_of(&doc);
    let d = destination(&ns, service).unwrap_or_else(|| panic!("{ns:#}"));
    assert_eq!(d["capacity"], 100, "{d:#}");
    assert_eq!(ns["totals"]["bound_unconnected"], 0, "{ns:#}");
    assert_ne!(ns["status"], "critical", "{ns:#}");
    let text = doctor(&["--all-netns", "--interval", "0", "--skip-bound-inactive"]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("--skip-bound-inactive: sockets that called bind()"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    drop(bound);
}

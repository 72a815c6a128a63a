//! A node built in the test: 20 "pods", each a named network namespace
//! with its own port range, a `sleep` process whose cgroup v2 path has a
//! real Kubernetes shape (under a test-owned directory), and a known table
//! of real sockets. Discovery must find each pod with its identity, and the
//! scan must report, per pod UID and destination, exactly what
//! `ip netns exec NAME ss -tan` shows; a pod deleted during the scan is
//! counted as vanished.
//!
//! Needs root (CAP_SYS_ADMIN for namespaces and setns, write access to the
//! cgroup v2 mount) and iproute2; under CI=true a missing privilege fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fivetuple_scan::identity::{QosClass, Runtime};
use fivetuple_scan::model::{self, Analysis, Thresholds};
use fivetuple_scan::node::{self, Netns};
use fivetuple_scan::{Reader, Settings, TcpState};
use fivetuple_testkit::pods::{ss_in, Node, PodSpec, Shape, DATABASE, SERVICE};
use fivetuple_testkit::{have_tool, root_or_skip};

const PODS: usize = 20;

/// `ss` spelling of a state.
fn ss_state(s: TcpState) -> &'static str {
    match s {
        TcpState::TimeWait => "TIME-WAIT",
        TcpState::Established => "ESTAB",
        _ => unreachable!("only these two are built"),
    }
}

/// The scan's count of sockets in `state` toward `remote`, over every local address.
fn scanned(a: &Analysis, remote: SocketAddr, state: TcpState) -> usize {
    a.destinations
        .iter()
        .filter(|d| SocketAddr::new(d.remote_ip, d.remote_port) == remote)
        .map(|d| d.states.get(state) as usize)
        .sum()
}

#[test]
fn node_root_pods_are_discovered_with_identity_and_scanned_like_ss() {
    let test = "node_root_pods_are_discovered_with_identity_and_scanned_like_ss";
    if !root_or_skip(test)
        || !have_tool(test, "ip", "iproute2")
        || !have_tool(test, "ss", "iproute2")
        || !have_tool(test, "nsenter", "util-linux")
    {
        return;
    }
    let mut node = Node::new("scan");
    let started = Instant::now();
    for i in 0..PODS {
        // Pod i: a range of 100 + 10*i ports; pod 3 has 100 and holds 95
        // of them in TIME_WAIT toward the service.
        node.add_pod(PodSpec {
            range_len: if i == 3 { 100 } else { 100 + 10 * i as u16 },
            time_wait: if i == 3 { 95 } else { 5 + i },
            established: 1 + i % 4,
        });
    }
    eprintln!("built {PODS} pods in {:?}", started.elapsed());
    node.settle();

    // Discovery: every pod, with its name, process and identity.
    let discovery = node::discover().expect("discover");
    for pod in &node.pods {
        let ns = discovery
            .namespaces
            .iter()
            .find(|n| n.inode == pod.inode)
            .unwrap_or_else(|| panic!("{} (inode {}) not discovered", pod.name, pod.inode));
        assert_eq!(ns.names, std::slice::from_ref(&pod.name));
        assert!(!ns.host);
        assert_eq!(
            ns.processes
                .iter()
                .map(|p| (p.pid, p.comm.as_str()))
                .collect::<Vec<_>>(),
            [(pod.pid(), "sleep")],
            "{}",
            pod.name
        );
        let id = &ns.identity;
        assert_eq!(
            id.pod_uid.as_deref(),
            Some(pod.uid.as_str()),
            "{}",
            pod.name
        );
        assert_eq!(id.container_id.as_deref(), Some(pod.container_id.as_str()));
        let (qos, runtime) = match pod.shape {
            Shape::SystemdContainerdBurstable => (QosClass::Burstable, Some(Runtime::Containerd)),
            Shape::CgroupfsBestEffort => (QosClass::BestEffort, None),
            Shape::SystemdCrioGuaranteed => (QosClass::Guaranteed, Some(Runtime::CriO)),
        };
        assert_eq!(id.qos_class, Some(qos), "{}", pod.name);
        assert_eq!(id.runtime, runtime, "{}", pod.name);
    }
    assert!(
        discovery.namespaces.iter().any(|n| n.host),
        "the host namespace is discovered"
    );

    // Scan only this test's pods (other namespaces on the machine belong to
    // other tests), one at a time, so the pod deleted while the first one is
    // grouped is deterministically not scanned yet.
    let ours: Vec<Netns> = discovery
        .namespaces
        .into_iter()
        .filter(|n| node.pods.iter().any(|p| p.inode == n.inode))
        .collect();
    let last = ours.last().unwrap().inode;
    let victim_at = node.pods.iter().position(|p| p.inode == last).unwrap();
    let victim = Mutex::new(Some(node.pods.remove(victim_at)));
    let result = node::scan_all(ours, Reader::Netlink, false, 1, |ns, snap| {
        // Deleting the pod: kill its process, close its sockets, delete the name.
        drop(victim.lock().unwrap().take());
        let a = model::analyze(None, &snap, None, Thresholds::default());
        (ns.identity.pod_uid.clone(), snap.settings, a)
    });
    assert!(
        result.failed.is_empty(),
        "failures: {:?}",
        result
            .failed
            .iter()
            .map(|(n, e)| format!("{}: {e}", n.inode))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        result.vanished.iter().map(|n| n.inode).collect::<Vec<_>>(),
        [last],
        "the pod deleted during the scan is counted as vanished"
    );
    let by_uid: BTreeMap<String, (Settings, Analysis)> = result
        .scanned
        .into_iter()
        .map(|(_, (uid, settings, a))| (uid.expect("every pod has a UID"), (settings, a)))
        .collect();
    assert_eq!(by_uid.len(), PODS - 1);

    let service: SocketAddr = SERVICE.parse().unwrap();
    let database: SocketAddr = DATABASE.parse().unwrap();
    for pod in &node.pods {
        let (settings, a) = &by_uid[&pod.uid];
        assert_eq!(
            settings.ip_local_port_range.bounds(),
            pod.range,
            "{}",
            pod.name
        );
        assert_eq!(settings.tcp_tw_reuse, 0, "{}", pod.name);
        let ss = ss_in(&pod.name);
        for (remote, state, built) in [
            (service, TcpState::TimeWait, pod.spec.time_wait),
            (database, TcpState::Established, pod.spec.established),
        ] {
            let by_ss = ss
                .get(&(ss_state(state).to_string(), remote.to_string()))
                .copied()
                .unwrap_or(0);
            let by_scan = scanned(a, remote, state);
            assert_eq!(
                (by_scan, by_ss),
                (built, built),
                "{} (pod {}): {state} toward {remote}: scan vs ss vs built",
                pod.name,
                pod.uid
            );
        }
    }
    // Pod 3 holds 95 of its 100 ports toward the service: critical at 90%.
    let p3 = node.pods.iter().find(|p| p.name.ends_with("-3")).unwrap();
    let d = &by_uid[&p3.uid].1.destinations[0];
    assert_eq!(SocketAddr::new(d.remote_ip, d.remote_port), service);
    assert_eq!((d.in_use, d.capacity), (95, 100));
    assert_eq!(d.severity, fivetuple_scan::Severity::Critical);

    // The node analysis: two scans for rates, owners found once for the node.
    let again: Vec<Netns> = node::discover()
        .expect("discover")
        .namespaces
        .into_iter()
        .filter(|n| node.pods.iter().any(|p| p.inode == n.inode))
        .collect();
    let opts = node::NodeOptions {
        reader: Reader::Auto,
        workers: 2,
        bound_inactive: true,
        interval: Duration::from_millis(200),
        thresholds: Thresholds::default(),
        processes: true,
    };
    let reports = node::analyze_node(again, &opts);
    assert!(reports.failed.is_empty() && reports.vanished.is_empty());
    assert_eq!(reports.scanned.len(), PODS - 1);
    let me = std::process::id();
    for (ns, r) in &reports.scanned {
        let pod = node.pods.iter().find(|p| p.inode == ns.inode).unwrap();
        let db = r
            .analysis
            .destinations
            .iter()
            .find(|d| SocketAddr::new(d.remote_ip, d.remote_port) == database)
            .unwrap_or_else(|| panic!("{}: no destination {database}", pod.name));
        // The test process holds the ESTABLISHED client sockets.
        assert_eq!(
            db.processes
                .iter()
                .map(|p| (p.pid, p.sockets))
                .collect::<Vec<_>>(),
            [(me, pod.spec.established as u32)],
            "{}",
            pod.name
        );
        assert_eq!(db.rate_per_s, Some(0.0), "{}: no new connections", pod.name);
        let worst = pod.worst_utilization();
        assert!(
            (r.worst_utilization() - worst).abs() < 1e-9,
            "{}: {}",
            pod.name,
            r.worst_utilization()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the test took {:?}: the first pods' TIME_WAIT (60 s) may have expired",
        started.elapsed()
    );
    let cgroup = node.cgroup().to_path_buf();
    let names = node.names_left();
    assert_eq!(names.len(), PODS - 1);
    drop(node);
    // Everything is gone: names and the cgroup tree.
    assert!(
        names
            .iter()
            .all(|n| !std::path::Path::new("/run/netns").join(n).exists()),
        "namespaces left behind"
    );
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

//! The NAT layer against a real kernel: two "pods" (namespaces) behind a
//! "node" namespace that masquerades them to one address with
//! `--to-ports 20000-20099` (iptables-nft) toward a "service" namespace,
//! veth addresses in 198.18.0.0/15. A curl loop in each pod opens more
//! connections than the NAT has ports while the service holds every
//! connection open. Needs root (namespaces, iptables) and iptables, conntrack
//! and curl (scripts/setup); under CI=true a missing one fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fivetuple_scan::nat::{self, Basis, CtTcpState, NatSnapshot};
use fivetuple_scan::netns::Target;
use fivetuple_testkit::{have_tool, root_or_skip};

const NAT_IP: &str = "198.18.0.1";
const SVC: &str = "198.18.0.2:8080";
const PORTS: (u16, u16) = (20000, 20099);
const PER_POD: usize = 80;

/// Named namespaces `PREFIX-{node,svc,pod1,pod2}`, deleted on drop (also on panic).
struct Topology {
    prefix: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Topology {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn build() -> Topology {
        let t = Topology {
            prefix: format!("ftnat{}", std::process::id()),
        };
        for role in ["node", "svc", "pod1", "pod2"] {
            sh(&["ip", "netns", "add", &t.ns(role)]);
            sh(&["ip", "-n", &t.ns(role), "link", "set", "lo", "up"]);
        }
        let link = |a: &str, a_ip: &str, b: &str, b_ip: &str, tag: &str| {
            let (ea, eb) = (format!("{}{tag}a", t.prefix), format!("{}{tag}b", t.prefix));
            sh(&[
                "ip", "link", "add", &ea, "type", "veth", "peer", "name", &eb,
            ]);
            sh(&["ip", "link", "set", &ea, "netns", &t.ns(a)]);
            sh(&["ip", "link", "set", &eb, "netns", &t.ns(b)]);
            for (ns, dev, ip) in [(a, &ea, a_ip), (b, &eb, b_ip)] {
                sh(&["ip", "-n", &t.ns(ns), "addr", "add", ip, "dev", dev]);
                sh(&["ip", "-n", &t.ns(ns), "link", "set", dev, "up"]);
            }
            ea
        };
        let to_svc = link("node", "198.18.0.1/24", "svc", "198.18.0.2/24", "s");
        link("pod1", "198.18.1.2/24", "node", "198.18.1.1/24", "p");
        link("pod2", "198.18.2.2/24", "node", "198.18.2.1/24", "q");
        sh(&[
            "ip",
            "-n",
            &t.ns("pod1"),
            "route",
            "add",
            "default",
            "via",
            "198.18.1.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &t.ns("pod2"),
            "route",
            "add",
            "default",
            "via",
            "198.18.2.1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &t.ns("node"),
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let ports = format!("{}-{}", PORTS.0, PORTS.1);
        sh(&[
            "ip",
            "netns",
            "exec",
            &t.ns("node"),
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-p",
            "tcp",
            "-o",
            &to_svc,
            "-j",
            "MASQUERADE",
            "--to-ports",
            &ports,
        ]);
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for role in ["node", "svc", "pod1", "pod2"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// The service: accepts on 198.18.0.2:8080 inside `ns`, records each
/// peer address, and holds every connection until `release`, then answers
/// `200` and closes. Stops by itself after `limit`.
fn serve(
    ns: &str,
    release: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<(SocketAddr, Instant)>>>,
    limit: Duration,
) -> std::thread::JoinHandle<()> {
    let file = File::open(format!("/run/netns/{ns}")).expect("open the service namespace");
    std::thread::spawn(move || {
        // SAFETY: `file` is an open namespace fd; setns moves only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let l = TcpListener::bind(SVC).expect("bind the service");
        l.set_nonblocking(true).unwrap();
        let end = Instant::now() + limit;
        let mut held: Vec<TcpStream> = Vec::new();
        while Instant::now() < end {
            match l.accept() {
                Ok((s, peer)) => {
                    peers.lock().unwrap().push((peer, Instant::now()));
                    held.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
            if release.load(Ordering::SeqCst) {
                for mut s in held.drain(..) {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
                return;
            }
        }
    })
}

/// Starts the bounded curl loop in a pod: `PER_POD` calls at once, each
/// giving up on connect after 3 s; prints one curl exit code per call.
fn curl_loop(ns: &str) -> Child {
    let script = format!(
        "for i in $(seq 1 {PER_POD}); do \
           curl -s -o /dev/null --connect-timeout 3 -m 20 -w '%{{exitcode}}\\n' http://{SVC}/ & \
         done; wait"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the curl loop")
}

/// `conntrack -L -p tcp` in `ns`: per-state counts of the entries whose reply
/// tuple is (service -> NAT address), the same tuple the scan groups by.
fn conntrack_list(ns: &str) -> BTreeMap<String, u32> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-L", "-p", "tcp"])
        .output()
        .expect("run conntrack -L");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (svc_ip, svc_port) = SVC.split_once(':').unwrap();
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let vals = |k: &str| -> Vec<&str> { w.iter().filter_map(|x| x.strip_prefix(k)).collect() };
        let (src, dst, sport) = (vals("src="), vals("dst="), vals("sport="));
        if src.get(1) == Some(&svc_ip)
            && dst.get(1) == Some(&NAT_IP)
            && sport.get(1) == Some(&svc_port)
        {
            *m.entry(w[3].to_string()).or_default() += 1;
        }
    }
    m
}

fn conntrack_s(ns: &str, key: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-S"])
        .output()
        .expect("run conntrack -S");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

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
    if !root_or_skip(name)
        || !have_tool(name, "iptables", "iptables")
        || !have_tool(name, "conntrack", "conntrack")
        || !have_tool(name, "curl", "curl")
    {
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

    let release = Arc::new(AtomicBool::new(false));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let server = serve(
        &topo.ns("svc"),
        release.clone(),
        peers.clone(),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(200));
    let pods = [curl_loop(&topo.ns("pod1")), curl_loop(&topo.ns("pod2"))];

    // Every NAT port is taken once the service holds 100 connections, and
    // no further one arrives for longer than the curl connect timeout.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (n, last) = {
            let p = peers.lock().unwrap();
            (p.len(), p.last().map(|x| x.1))
        };
        let quiet = last.is_some_and(|t| t.elapsed() > Duration::from_secs(5));
        if n >= 100 && quiet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service accepted only {n} connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

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
    release.store(true, Ordering::SeqCst);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for mut p in pods {
        let mut out = String::new();
        p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        p.wait().unwrap();
        for c in out.lines() {
            *codes.entry(c.to_string()).or_default() += 1;
        }
    }
    server.join().expect("the service thread");
    let seen: Vec<SocketAddr> = peers.lock().unwrap().iter().map(|p| p.0).collect();
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

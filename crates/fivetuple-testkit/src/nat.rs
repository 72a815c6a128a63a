//! A NAT topology for tests (issue 13): two "pods" (namespaces) behind a
//! "node" namespace that masquerades them to one address with
//! `--to-ports 20000-20099` (iptables-nft) toward a "service" namespace,
//! veth addresses in 198.18.0.0/15; a service that holds every connection
//! until released; a bounded curl loop per pod; `conntrack -L`/`-S` readers.
//! Named namespaces are deleted when the [`Topology`] drops, also on panic.
//! Needs root, iproute2, iptables, conntrack and curl.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The node's address toward the service: every pod is masqueraded to it.
pub const NAT_IP: &str = "198.18.0.1";
/// The service.
pub const SVC: &str = "198.18.0.2:8080";
/// The NAT rule's `--to-ports`.
pub const PORTS: (u16, u16) = (20000, 20099);
/// Calls each curl loop makes at once.
pub const PER_POD: usize = 80;

/// Whether `test` can build the topology: root, iptables, conntrack and
/// curl (see [`crate::root_or_skip`] and [`crate::have_tool`]: outside CI a
/// missing one skips with a message, under CI it fails).
pub fn can_build(test: &str) -> bool {
    crate::root_or_skip(test)
        && crate::have_tool(test, "iptables", "iptables")
        && crate::have_tool(test, "conntrack", "conntrack")
        && crate::have_tool(test, "curl", "curl")
}

/// Named namespaces `PREFIX-{node,svc,pod1,pod2}`, deleted on drop (also on panic).
pub struct Topology {
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
    /// The name of role `node`, `svc`, `pod1` or `pod2` under /run/netns.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Builds the namespaces, links, routes and the MASQUERADE rule.
    pub fn build() -> Topology {
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
pub fn serve(
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
pub fn curl_loop(ns: &str) -> Child {
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

/// The service and a curl loop in each pod, driven past the NAT's ports.
/// Dropping it (also on panic) releases the service and waits for the loops.
pub struct Load {
    release: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<(SocketAddr, Instant)>>>,
    server: Option<std::thread::JoinHandle<()>>,
    pods: Vec<Child>,
}

impl Load {
    /// Starts the service in `svc` and both curl loops, and returns once
    /// every NAT port is taken: the service holds at least 100 connections
    /// and none has arrived for 5 s, longer than curl's 3 s connect
    /// timeout, so the calls beyond the budget have timed out. Bounded: 40 s.
    pub fn saturate(t: &Topology) -> Load {
        let release = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let server = serve(
            &t.ns("svc"),
            release.clone(),
            peers.clone(),
            Duration::from_secs(60),
        );
        std::thread::sleep(Duration::from_millis(200));
        let load = Load {
            release,
            peers,
            server: Some(server),
            pods: vec![curl_loop(&t.ns("pod1")), curl_loop(&t.ns("pod2"))],
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (n, last) = {
                let p = load.peers.lock().unwrap();
                (p.len(), p.last().map(|x| x.1))
            };
            if n >= 100 && last.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                return load;
            }
            assert!(
                Instant::now() < deadline,
                "the service accepted only {n} connections"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Releases the held connections, waits for the service and both
    /// loops, and returns what the peers saw: each curl exit code with its
    /// count, and the address of every connection the service accepted.
    pub fn finish(mut self) -> (BTreeMap<String, usize>, Vec<SocketAddr>) {
        let codes = self.stop();
        let seen = self.peers.lock().unwrap().iter().map(|p| p.0).collect();
        (codes, seen)
    }

    fn stop(&mut self) -> BTreeMap<String, usize> {
        self.release.store(true, Ordering::SeqCst);
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for mut p in self.pods.drain(..) {
            let mut out = String::new();
            if let Some(mut o) = p.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            let _ = p.wait();
            for c in out.lines() {
                *codes.entry(c.to_string()).or_default() += 1;
            }
        }
        if let Some(s) = self.server.take() {
            s.join().expect("the service thread");
        }
        codes
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else {
            // Unwinding: release and reap, but a second panic would abort.
            self.release.store(true, Ordering::SeqCst);
            for mut p in self.pods.drain(..) {
                let _ = p.wait();
            }
        }
    }
}

/// `conntrack -L -p tcp` in `ns`: per-state counts of the entries whose reply
/// tuple is (service -> NAT address), the same tuple the scan groups by.
pub fn conntrack_list(ns: &str) -> BTreeMap<String, u32> {
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

/// The sum over CPUs of counter `key` (`insert_failed=`) in `conntrack -S`.
pub fn conntrack_s(ns: &str, key: &str) -> u64 {
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

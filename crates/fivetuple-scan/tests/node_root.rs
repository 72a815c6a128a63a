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
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fivetuple_scan::identity::{QosClass, Runtime};
use fivetuple_scan::model::{self, Analysis, Thresholds};
use fivetuple_scan::netns::{run_in, Target};
use fivetuple_scan::node::{self, Netns};
use fivetuple_scan::{Reader, Settings, TcpState};
use fivetuple_testkit::{have_tool, make_time_wait, root_or_skip, set_sysctl};

const PODS: usize = 20;
const SERVICE: &str = "127.0.0.10:8080";
const DATABASE: &str = "127.0.0.20:5432";
const PREFIX: &str = "ftnode";

/// The mount point of the cgroup v2 hierarchy, from mountinfo text: the
/// fifth field of the line whose filesystem type (after " - ") is cgroup2.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[test]
fn cgroup2_mount_from_mountinfo() {
    let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
    assert_eq!(
        cgroup2_mount(text),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    assert_eq!(
        cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
        None
    );
}

/// Removes a cgroup directory tree bottom-up: cgroup directories are
/// removed with rmdir (their files cannot be unlinked), children first.
fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what an earlier run of this test that was killed (no Drop ran)
/// left: named namespaces and cgroup directories carrying a dead pid.
fn remove_leftovers(cgroup_root: &Path) {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| !pid_alive(p))
    };
    if let Ok(d) = fs::read_dir("/run/netns") {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, &format!("{PREFIX}-")) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(d) = fs::read_dir(cgroup_root) {
        for e in d.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name, "fivetuple-test-node-") {
                rmdir_tree(&e.path());
            }
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cgroup path shapes the kubelet and the runtimes create.
#[derive(Clone, Copy)]
enum Shape {
    SystemdContainerdBurstable,
    CgroupfsBestEffort,
    SystemdCrioGuaranteed,
}

struct Pod {
    name: String,
    inode: u64,
    uid: String,
    container_id: String,
    shape: Shape,
    range: (u16, u16),
    time_wait: usize,
    established: usize,
    child: Child,
    leaf: PathBuf,
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

impl Pod {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self._streams.clear();
        self._listeners.clear();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        rmdir_tree(&self.leaf);
    }
}

struct Node {
    cgroup: PathBuf,
    pods: Vec<Pod>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Processes out of the cgroups and namespaces first, then the tree.
        self.pods.clear();
        rmdir_tree(&self.cgroup);
    }
}

/// Waits (bounded) until `pid` has exec'd `sleep` inside namespace `inode`.
fn wait_in_namespace(pid: u32, inode: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| l.to_str().and_then(node::parse_ns_link));
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if ns == Some(inode) && comm.trim_end() == "sleep" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not reach namespace {inode} running sleep (ns {ns:?}, comm {comm:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn build_pod(node: &mut Node, i: usize) {
    let me = std::process::id();
    let name = format!("{PREFIX}-{me}-{i}");
    ip(&["netns", "add", &name]);
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    let inode = fs::metadata(format!("/run/netns/{name}"))
        .expect("stat the named namespace")
        .ino();

    let uid = format!("{me:08x}-0000-4000-8000-{i:012x}");
    let container_id = format!("{:064x}", (u128::from(me) << 32) | i as u128);
    let shape = [
        Shape::SystemdContainerdBurstable,
        Shape::CgroupfsBestEffort,
        Shape::SystemdCrioGuaranteed,
    ][i % 3];
    let uid_ = uid.replace('-', "_");
    let rel = match shape {
        Shape::SystemdContainerdBurstable => format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{container_id}.scope"
        ),
        Shape::CgroupfsBestEffort => format!("kubepods/besteffort/pod{uid}/{container_id}"),
        Shape::SystemdCrioGuaranteed => {
            format!("kubepods.slice/kubepods-pod{uid_}.slice/crio-{container_id}.scope")
        }
    };
    let leaf = node.cgroup.join(rel);
    fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("mkdir {}: {e}", leaf.display()));

    // Pod i: a range of 100 + 10*i ports; pod 3 has 100 and holds 95 of
    // them in TIME_WAIT toward the service.
    let lo = 40_000 + 1_000 * i as u16;
    let len = if i == 3 { 100 } else { 100 + 10 * i as u16 };
    let range = (lo, lo + len - 1);
    let time_wait = if i == 3 { 95 } else { 5 + i };
    let established = 1 + i % 4;
    let (listeners, streams) = run_in(&Target::Named(name.clone()), move || {
        set_sysctl("ip_local_port_range", &format!("{} {}", range.0, range.1));
        // No reuse of TIME_WAIT by connect(): the table stays as built.
        set_sysctl("tcp_tw_reuse", "0");
        let svc = TcpListener::bind(SERVICE).expect("bind the service");
        let db = TcpListener::bind(DATABASE).expect("bind the database");
        make_time_wait(&svc, time_wait);
        let mut streams = Vec::new();
        for _ in 0..established {
            streams.push(TcpStream::connect(DATABASE).expect("connect the database"));
            streams.push(db.accept().expect("accept").0);
        }
        (vec![svc, db], streams)
    })
    .expect("build the pod's table inside its namespace");

    // The pod's process: sleep in the namespace, killed if this test dies.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{name}"))
        .args(["sleep", "300"])
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn nsenter (util-linux)");
    let pod = Pod {
        name,
        inode,
        uid,
        container_id,
        shape,
        range,
        time_wait,
        established,
        child,
        leaf,
        _listeners: listeners,
        _streams: streams,
    };
    let pid = pod.pid();
    node.pods.push(pod);
    let procs = node.pods.last().unwrap().leaf.join("cgroup.procs");
    fs::write(&procs, pid.to_string())
        .unwrap_or_else(|e| panic!("move pid {pid} into {}: {e}", procs.display()));
    wait_in_namespace(pid, inode);
}

/// What `ip netns exec NAME ss -Htan` shows: (state, peer) -> count.
fn ss_in(name: &str) -> BTreeMap<(String, String), usize> {
    let out = Command::new("ip")
        .args(["netns", "exec", name, "ss", "-Htan"])
        .output()
        .expect("run ip netns exec ss");
    assert!(
        out.status.success(),
        "ip netns exec {name} ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 {
            *m.entry((f[0].to_string(), f[4].to_string())).or_default() += 1;
        }
    }
    m
}

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
        .map(|d| d.states.get(state.name()).copied().unwrap_or(0) as usize)
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
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let Some(cg2) = cgroup2_mount(&mountinfo) else {
        panic!("{test} needs a cgroup v2 mount (none in /proc/self/mountinfo)");
    };
    remove_leftovers(&cg2);
    let mut node = Node {
        cgroup: cg2.join(format!("fivetuple-test-node-{}", std::process::id())),
        pods: Vec::new(),
    };
    fs::create_dir(&node.cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", node.cgroup.display()));
    let started = Instant::now();
    for i in 0..PODS {
        build_pod(&mut node, i);
    }
    eprintln!("built {PODS} pods in {:?}", started.elapsed());

    // Let the last FIN/ACKs settle into TIME_WAIT (bounded), per ss.
    let deadline = Instant::now() + Duration::from_secs(10);
    for pod in &node.pods {
        loop {
            let tw = ss_in(&pod.name)
                .get(&("TIME-WAIT".to_string(), SERVICE.to_string()))
                .copied()
                .unwrap_or(0);
            if tw == pod.time_wait {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: ss shows {tw} TIME-WAIT toward {SERVICE}, built {}",
                pod.name,
                pod.time_wait
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

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
    let result = node::scan_all(ours, Reader::Netlink, 1, |ns, snap| {
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
        assert_eq!(settings.ip_local_port_range, pod.range, "{}", pod.name);
        assert_eq!(settings.tcp_tw_reuse, 0, "{}", pod.name);
        let ss = ss_in(&pod.name);
        for (remote, state, built) in [
            (service, TcpState::TimeWait, pod.time_wait),
            (database, TcpState::Established, pod.established),
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
            [(me, pod.established as u32)],
            "{}",
            pod.name
        );
        assert_eq!(db.rate_per_s, Some(0.0), "{}: no new connections", pod.name);
        let worst = if pod.name.ends_with("-3") {
            0.95
        } else {
            pod.time_wait as f64 / (pod.range.1 - pod.range.0 + 1) as f64
        };
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
    drop(node);
    // Everything is gone: names and the cgroup tree.
    let me = std::process::id();
    let left: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{PREFIX}-{me}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!cg2.join(format!("fivetuple-test-node-{me}")).exists());
}

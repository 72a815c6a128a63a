//! A node built in a test: "pods", each a named network namespace with its
//! own port range, a `sleep` process whose cgroup v2 path has a real
//! Kubernetes shape (under a test-owned directory of the cgroup v2 mount),
//! and a known table of real loopback sockets: TIME_WAIT toward
//! [`SERVICE`], ESTABLISHED pairs with [`DATABASE`].
//!
//! Everything is removed when the [`Node`] is dropped (processes killed,
//! namespaces deleted, cgroup directories removed bottom-up), and a run
//! that was killed before that is cleaned up by the next one. Needs root.

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{make_time_wait, set_sysctl};

/// The address every pod closes its connections to (client side in TIME_WAIT).
pub const SERVICE: &str = "127.0.0.10:8080";
/// The address every pod keeps connections open to.
pub const DATABASE: &str = "127.0.0.20:5432";

/// The mount point of the cgroup v2 hierarchy, from mountinfo text: the
/// fifth field of the line whose filesystem type (after " - ") is cgroup2.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
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

/// The cgroup path shapes the kubelet and the runtimes create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// systemd driver, containerd, Burstable: `kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
    SystemdContainerdBurstable,
    /// cgroupfs driver, BestEffort: `kubepods/besteffort/pod<uid>/<id>`.
    CgroupfsBestEffort,
    /// systemd driver, CRI-O, Guaranteed: `kubepods-pod<uid_>.slice/crio-<id>.scope`.
    SystemdCrioGuaranteed,
}

/// What to build in a pod.
#[derive(Debug, Clone, Copy)]
pub struct PodSpec {
    /// Ports in its `ip_local_port_range`.
    pub range_len: u16,
    /// Client-side TIME_WAIT sockets toward [`SERVICE`].
    pub time_wait: usize,
    /// ESTABLISHED connections to [`DATABASE`] (each a client and a server socket).
    pub established: usize,
}

/// One pod of the node.
pub struct Pod {
    /// Its name under /run/netns.
    pub name: String,
    /// Its namespace inode.
    pub inode: u64,
    /// Its pod UID (with dashes).
    pub uid: String,
    /// Its container id (64 hex digits).
    pub container_id: String,
    /// The cgroup path shape of its process.
    pub shape: Shape,
    /// Its port range.
    pub range: (u16, u16),
    /// What was built.
    pub spec: PodSpec,
    child: Child,
    leaf: PathBuf,
    sockets: (Vec<TcpListener>, Vec<TcpStream>),
}

impl Pod {
    /// The pid of its `sleep` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `sockets / range` of its busiest destination (the service).
    pub fn worst_utilization(&self) -> f64 {
        self.spec.time_wait.max(self.spec.established) as f64 / f64::from(self.spec.range_len)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.sockets.0.clear();
        self.sockets.1.clear();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        rmdir_tree(&self.leaf);
    }
}

/// The pods and the test-owned cgroup directory they live under.
pub struct Node {
    cgroup: PathBuf,
    prefix: String,
    /// The pods, in the order they were added.
    pub pods: Vec<Pod>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Processes out of the cgroups and namespaces first, then the tree.
        self.pods.clear();
        rmdir_tree(&self.cgroup);
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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

/// Runs `f` on a thread that has entered the named namespace.
pub fn in_named_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{name}: {e}"));
    std::thread::spawn(move || {
        // SAFETY: `file` is an open namespace fd; setns moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Waits (bounded) until `pid` has exec'd `sleep` inside namespace `inode`.
fn wait_in_namespace(pid: u32, inode: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .ok();
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

impl Node {
    /// An empty node whose names and cgroup directory carry `tag` (unique
    /// per test) and this process's pid. Removes what killed earlier runs
    /// with the same tag left behind.
    pub fn new(tag: &str) -> Node {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let cg2 =
            cgroup2_mount(&mountinfo).expect("a cgroup v2 mount (none in /proc/self/mountinfo)");
        let dir_prefix = format!("fivetuple-test-{tag}-");
        let prefix = format!("ft{tag}-");
        let dead = |name: &str, prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| !pid_alive(p))
        };
        if let Ok(d) = fs::read_dir("/run/netns") {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name, &prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        if let Ok(d) = fs::read_dir(&cg2) {
            for e in d.flatten() {
                if dead(&e.file_name().to_string_lossy(), &dir_prefix) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let me = std::process::id();
        let cgroup = cg2.join(format!("{dir_prefix}{me}"));
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
        Node {
            cgroup,
            prefix: format!("{prefix}{me}-"),
            pods: Vec::new(),
        }
    }

    /// The test-owned cgroup directory.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Names of this node's namespaces still under /run/netns.
    pub fn names_left(&self) -> Vec<String> {
        fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Builds the next pod (number `i` = pods so far): its namespace with
    /// port range `40000 + 1000 i` onward, its table, and its process,
    /// moved into a cgroup of shape `i % 3`.
    pub fn add_pod(&mut self, spec: PodSpec) -> &Pod {
        let i = self.pods.len();
        assert!(i < 25, "port ranges of 1000 from 40000 fit 25 pods");
        let me = std::process::id();
        let name = format!("{}{i}", self.prefix);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let inode = fs::metadata(format!("/run/netns/{name}"))
            .expect("stat the named namespace")
            .ino();
        // Unique across tags too: the tag's bytes go into the UID.
        let tag: u64 = self
            .prefix
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        // The pod number leads, so short forms (the first 8 digits) differ too.
        let uid = format!("{i:02x}{me:06x}-{:04x}-4000-8000-{me:012x}", tag & 0xffff);
        let container_id = format!("{:032x}{:016x}{:016x}", tag, me, i);
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
        let leaf = self.cgroup.join(rel);
        fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("mkdir {}: {e}", leaf.display()));

        let lo = 40_000 + 1_000 * i as u16;
        let range = (lo, lo + spec.range_len - 1);
        let sockets = in_named_netns(&name, move || {
            set_sysctl("ip_local_port_range", &format!("{} {}", range.0, range.1));
            // No reuse of TIME_WAIT by connect(): the table stays as built.
            set_sysctl("tcp_tw_reuse", "0");
            let svc = TcpListener::bind(SERVICE).expect("bind the service");
            let db = TcpListener::bind(DATABASE).expect("bind the database");
            make_time_wait(&svc, spec.time_wait);
            let mut streams = Vec::new();
            for _ in 0..spec.established {
                streams.push(TcpStream::connect(DATABASE).expect("connect the database"));
                streams.push(db.accept().expect("accept").0);
            }
            (vec![svc, db], streams)
        });

        // The pod's process: sleep in the namespace, killed if the test dies.
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
        let pid = child.id();
        self.pods.push(Pod {
            name,
            inode,
            uid,
            container_id,
            shape,
            range,
            spec,
            child,
            leaf,
            sockets,
        });
        let pod = self.pods.last().unwrap();
        let procs = pod.leaf.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move pid {pid} into {}: {e}", procs.display()));
        wait_in_namespace(pid, inode);
        pod
    }

    /// Waits (bounded) until `ss` shows every pod's TIME_WAIT sockets.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for pod in &self.pods {
            loop {
                let tw = ss_in(&pod.name)
                    .get(&("TIME-WAIT".to_string(), SERVICE.to_string()))
                    .copied()
                    .unwrap_or(0);
                if tw == pod.spec.time_wait {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: ss shows {tw} TIME-WAIT toward {SERVICE}, built {}",
                    pod.name,
                    pod.spec.time_wait
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What `ip netns exec NAME ss -Htan` shows: (state, peer) -> count.
pub fn ss_in(name: &str) -> BTreeMap<(String, String), usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Every network namespace of a node: discovery, container identity and a
//! scan of each from outside.
//!
//! Each pod or container has its own network namespace, with its own port
//! range and socket table, so a scan of the host namespace sees none of it
//! (DESIGN §7). [`discover`] lists the namespaces in use (from
//! `/proc/*/ns/net` and the named ones under `/run/netns`, deduplicated by
//! inode) with their processes and the container / pod identity of their
//! cgroup paths; [`scan_all`] has a few worker threads enter them one
//! after another with `setns()` and read each one's settings and table there.
//!
//! A namespace can vanish between discovery and its scan (a pod deleted);
//! it is then reported in [`NodeScan::vanished`], not as an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::ScanError;
use crate::identity::{self, Identity};
use crate::model::{self, Analysis, Finding, FindingCode, Severity, Snapshot, Thresholds};
use crate::netns::{self, Target};
use crate::procs;
use crate::settings::{Counters, Settings};
use crate::Reader;

/// A process in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`; empty when the process exited before it was read.
    pub comm: String,
    /// What its cgroup path says; empty for processes of the host namespace,
    /// whose cgroup is not read (see [`Netns::identity`]).
    pub identity: Identity,
}

/// One network namespace in use on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Netns {
    /// The namespace inode (`net:[INODE]`), unique on the node while it exists.
    pub inode: u64,
    /// Names under `/run/netns` that are bound to it (`ip netns add`, CNI's `cni-...`).
    pub names: Vec<String>,
    /// Its processes, by pid.
    pub processes: Vec<Process>,
    /// True for the host's namespace: pid 1's (or pid 2's, kthreadd, when
    /// pid 1's cannot be read).
    pub host: bool,
    /// The identity of the namespace: that of its lowest-pid process with a
    /// non-empty one. On Kubernetes that is the pod sandbox (`pause`), which
    /// the runtime starts before the pod's containers and which owns the
    /// namespace; every container of the pod carries the same pod UID.
    /// Always empty for the host namespace, where host-network pods and
    /// host daemons mix.
    pub identity: Identity,
}

impl Netns {
    fn empty(inode: u64, host: bool) -> Netns {
        Netns {
            inode,
            names: Vec::new(),
            processes: Vec::new(),
            host,
            identity: Identity::default(),
        }
    }

    /// The ways to enter it, most direct first: its processes' `/proc/PID/ns/net`
    /// (at most `MAX_HANDLES` of them), then its names.
    fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        self.processes
            .iter()
            .take(MAX_HANDLES)
            .map(|p| Target::Pid(p.pid))
            .chain(self.names.iter().cloned().map(Target::Named))
    }
}

/// How many processes of one namespace [`scan`] tries before calling it
/// gone: each failure costs an open (and maybe a thread), and a namespace
/// whose first few processes all exited is almost surely being torn down.
const MAX_HANDLES: usize = 8;

/// The namespaces found by [`discover`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Discovery {
    /// The namespaces, by inode.
    pub namespaces: Vec<Netns>,
    /// Processes whose `/proc/PID/ns/net` could not be read for lack of
    /// privilege (CAP_SYS_PTRACE): their namespaces may be missing.
    pub denied: usize,
}

/// Where [`discover_at`] looks: `/proc` and `/run/netns` on a real node.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The proc filesystem.
    pub proc: PathBuf,
    /// The directory of named namespaces.
    pub run_netns: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            proc: PathBuf::from("/proc"),
            run_netns: PathBuf::from("/run/netns"),
        }
    }
}

/// Parses a namespace link target, `net:[4026531840]`, to its inode.
pub fn parse_ns_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Lists the network namespaces in use on this node. See [`discover_at`].
pub fn discover() -> Result<Discovery, ScanError> {
    discover_at(&Roots::default())
}

/// Lists the network namespaces under `roots`: one entry per inode, from
/// the `ns/net` link of every process and from every file under
/// `run_netns`. Processes that exit while they are read are left out; a
/// `run_netns` that does not exist means no named namespaces. Fails only
/// when `proc` itself cannot be listed.
pub fn discover_at(roots: &Roots) -> Result<Discovery, ScanError> {
    let read_err = |path: &Path, source| ScanError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut by_inode: BTreeMap<u64, Netns> = BTreeMap::new();
    let mut denied = 0;
    let dir = fs::read_dir(&roots.proc).map_err(|e| read_err(&roots.proc, e))?;
    let mut pids: Vec<(u32, u64)> = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        match fs::read_link(e.path().join("ns/net")) {
            Ok(link) => {
                if let Some(inode) = link.to_str().and_then(parse_ns_link) {
                    pids.push((pid, inode));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied += 1,
            // Exited, or a kernel without the link: nothing to attribute.
            Err(_) => {}
        }
    }
    pids.sort_unstable();
    // The host namespace is pid 1's. When pid 1 holds a capability we lack,
    // reading its link is denied (ptrace access mode); pid 2, kthreadd, is
    // a kernel thread and so always in the initial namespace.
    let host_inode = [1, 2]
        .into_iter()
        .find_map(|want| pids.iter().find(|(pid, _)| *pid == want).map(|(_, i)| *i));
    for (pid, inode) in pids {
        let ns = by_inode
            .entry(inode)
            .or_insert_with(|| Netns::empty(inode, Some(inode) == host_inode));
        let base = roots.proc.join(pid.to_string());
        let comm = fs::read_to_string(base.join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        // The host's processes are skipped: their identity is not used and
        // a node has thousands of them.
        let identity = if ns.host {
            Identity::default()
        } else {
            fs::read_to_string(base.join("cgroup"))
                .map(|t| identity::parse_proc_cgroup(&t))
                .unwrap_or_default()
        };
        if ns.identity.is_empty() && !identity.is_empty() {
            ns.identity = identity.clone();
        }
        ns.processes.push(Process {
            pid,
            comm,
            identity,
        });
    }

    match fs::read_dir(&roots.run_netns) {
        Ok(dir) => {
            let mut named: Vec<(String, u64)> = Vec::new();
            for e in dir.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                // The bind mount of an nsfs file: its inode is the namespace's.
                // A name whose mount is gone (a plain file left behind) has
                // the tmpfs file's inode and is skipped when entering fails.
                match fs::metadata(e.path()) {
                    Ok(m) => named.push((name, m.ino())),
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied += 1,
                    Err(_) => {}
                }
            }
            named.sort();
            for (name, inode) in named {
                by_inode
                    .entry(inode)
                    .or_insert_with(|| Netns::empty(inode, Some(inode) == host_inode))
                    .names
                    .push(name);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(&roots.run_netns, e)),
    }
    Ok(Discovery {
        namespaces: by_inode.into_values().collect(),
        denied,
    })
}

/// Inode of the calling thread's network namespace.
pub fn current_inode() -> Result<u64, ScanError> {
    let path = Path::new("/proc/thread-self/ns/net");
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| ScanError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether an error opening or entering a namespace means it is gone (the
/// process exited, the name was deleted), as opposed to a real failure
/// such as missing privilege.
fn is_gone(e: &ScanError) -> bool {
    let source = match e {
        ScanError::NoSuchPid { source, .. }
        | ScanError::NoSuchNetns { source, .. }
        | ScanError::Setns { source, .. } => source,
        _ => return false,
    };
    matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
        || source.kind() == io::ErrorKind::NotFound
}

/// Scans one namespace from outside: enters it on a dedicated thread
/// (through its processes, then its names), checks that the thread landed
/// in the namespace with the expected inode (a pid can be reused), and
/// reads settings, table and counters there.
///
/// `Ok(None)` when the namespace is gone: every way in failed with "no
/// such process/file", or led to another namespace.
pub fn scan(ns: &Netns, reader: Reader) -> Result<Option<Snapshot>, ScanError> {
    run_in(ns, move || crate::snapshot_states(reader, true))
}

/// Runs `f` inside `ns` as [`scan`] enters it (on a thread of its own, the
/// same checks, the same `Ok(None)` when the namespace is gone), for
/// readings other than the socket table (the NAT view).
pub fn run_in<T, F>(ns: &Netns, f: F) -> Result<Option<T>, ScanError>
where
    T: Send + 'static,
    F: FnMut() -> Result<T, ScanError> + Send + 'static,
{
    let ns = ns.clone();
    std::thread::Builder::new()
        .name("fivetuple-netns".into())
        .spawn(move || enter_here(&ns, f))
        .map_err(ScanError::Spawn)?
        .join()
        .map_err(|_| ScanError::Thread("the namespace thread panicked".into()))?
}

/// [`scan`] on the calling thread, which it moves into `ns` (and leaves
/// there, or in the last namespace it tried): for threads that do nothing
/// but scan, such as [`scan_all`]'s workers, which so enter namespace
/// after namespace without a thread per namespace.
///
/// `bound_inactive`: whether the table includes the sockets that called
/// `bind()` but neither `listen()` nor `connect()` (see
/// [`crate::netlink::read_without_bound_inactive`]).
fn scan_here(
    ns: &Netns,
    reader: Reader,
    bound_inactive: bool,
) -> Result<Option<Snapshot>, ScanError> {
    enter_here(ns, || crate::snapshot_states(reader, bound_inactive))
}

/// Moves the calling thread into `ns` (through each of its ways in, in
/// turn), checks that it landed in the namespace with the expected inode
/// (a pid can be reused), and runs `f` there.
fn enter_here<T>(
    ns: &Netns,
    mut f: impl FnMut() -> Result<T, ScanError>,
) -> Result<Option<T>, ScanError> {
    let mut first_error = None;
    for target in ns.targets() {
        let entered = netns::open(&target).and_then(|file| {
            let Some(file) = file else { return Ok(()) };
            netns::enter_file(&file).map_err(|source| ScanError::Setns {
                target: target.to_string(),
                source,
            })
        });
        let r = entered.and_then(|()| {
            // Another namespace behind this handle (pid reuse): try the next.
            if current_inode()? != ns.inode {
                return Ok(None);
            }
            f().map(Some)
        });
        match r {
            Ok(Some(snap)) => return Ok(Some(snap)),
            Ok(None) => {}
            Err(e) => {
                if !is_gone(&e) && first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The outcome of [`scan_all`].
#[derive(Debug)]
pub struct NodeScan<T> {
    /// Each namespace scanned, with what the caller's function made of its
    /// snapshot, in discovery order.
    pub scanned: Vec<(Netns, T)>,
    /// Namespaces that were gone when their turn came (skipped, not errors).
    pub vanished: Vec<Netns>,
    /// Namespaces that could not be scanned, with why.
    pub failed: Vec<(Netns, ScanError)>,
}

/// Scans every namespace in `namespaces` with `workers` namespaces at a
/// time (at least 1), applying `f` to each snapshot on the worker that
/// read it, so grouping runs in parallel too and only `f`'s result is kept.
///
/// Each worker is a thread of its own that enters namespace after
/// namespace with `setns()` (no thread per namespace; the caller's threads
/// never move), so `f` runs inside the namespace just scanned, and may
/// read more of it there (the exporter reads the NAT view so).
///
/// `bound_inactive`: whether the tables include bound-inactive sockets
/// (`bind()` without `listen()` or `connect()`, Linux 6.8+), as [`scan`] of
/// one namespace always does. Asking for them makes the kernel walk the
/// bind hash that all namespaces share, once per namespace: on 200
/// namespaces × 500 sockets that walk was most of the scan's time
/// ([`crate::netlink::read_without_bound_inactive`], docs/BENCHMARKS.md).
pub fn scan_all<T, F>(
    namespaces: Vec<Netns>,
    reader: Reader,
    bound_inactive: bool,
    workers: usize,
    f: F,
) -> NodeScan<T>
where
    T: Send,
    F: Fn(&Netns, Snapshot) -> T + Sync,
{
    enum Outcome<T> {
        Scanned(T),
        Vanished,
        Failed(ScanError),
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome<T>>>> =
        Mutex::new((0..namespaces.len()).map(|_| None).collect());
    let workers = workers.clamp(1, namespaces.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(ns) = namespaces.get(i) else { break };
                let outcome = match scan_here(ns, reader, bound_inactive) {
                    Ok(Some(snap)) => Outcome::Scanned(f(ns, snap)),
                    Ok(None) => Outcome::Vanished,
                    Err(e) => Outcome::Failed(e),
                };
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(outcome);
            });
        }
    });
    let mut out = NodeScan {
        scanned: Vec::new(),
        vanished: Vec::new(),
        failed: Vec::new(),
    };
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    for (ns, r) in namespaces.into_iter().zip(results) {
        match r {
            Some(Outcome::Scanned(t)) => out.scanned.push((ns, t)),
            Some(Outcome::Vanished) => out.vanished.push(ns),
            Some(Outcome::Failed(e)) => out.failed.push((ns, e)),
            // A worker panicked (in `f`) before storing its result.
            None => out
                .failed
                .push((ns, ScanError::Thread("the scan worker panicked".into()))),
        }
    }
    out
}

/// The worker count [`scan_all`] callers use by default: the machine's
/// parallelism, at most 4. The kernel's dumps of different namespaces run
/// in parallel, and more workers than cores did not help (docs/BENCHMARKS.md).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// How [`analyze_node`] scans.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The socket-table reader.
    pub reader: Reader,
    /// Namespaces scanned at a time (at least 1).
    pub workers: usize,
    /// Include bound-inactive sockets (see [`scan_all`]).
    pub bound_inactive: bool,
    /// Time between the two scans that measure rates; zero for one scan.
    pub interval: std::time::Duration,
    /// Warning and critical thresholds.
    pub thresholds: Thresholds,
    /// Attribute sockets to processes (one pass over `/proc/*/fd` for the node).
    pub processes: bool,
}

/// One namespace, scanned and analysed.
#[derive(Debug, Clone)]
pub struct NamespaceReport {
    /// The namespace and its identity.
    pub netns: Netns,
    /// Its settings.
    pub settings: Settings,
    /// Its counters.
    pub counters: Counters,
    /// Its analysis.
    pub analysis: Analysis,
}

impl NamespaceReport {
    /// The highest utilization among its destinations (0 with none).
    pub fn worst_utilization(&self) -> f64 {
        self.analysis
            .destinations
            .iter()
            .map(|d| d.utilization)
            .fold(0.0, f64::max)
    }
}

/// Scans every namespace in `namespaces` (twice, `interval` apart, for
/// rates), attributes sockets to processes once for the whole node, and
/// analyses each namespace. A namespace that vanished before its second
/// scan is in `vanished`; one that appeared between the scans is analysed
/// without rates. Reports keep discovery order; sort them as needed.
pub fn analyze_node(namespaces: Vec<Netns>, opts: &NodeOptions) -> NodeScan<NamespaceReport> {
    let before: HashMap<u64, Snapshot> = if opts.interval.is_zero() {
        HashMap::new()
    } else {
        let first = scan_all(
            namespaces.clone(),
            opts.reader,
            opts.bound_inactive,
            opts.workers,
            |_, s| s,
        );
        std::thread::sleep(opts.interval);
        first
            .scanned
            .into_iter()
            .map(|(ns, s)| (ns.inode, s))
            .collect()
    };
    let now = scan_all(
        namespaces,
        opts.reader,
        opts.bound_inactive,
        opts.workers,
        |_, s| s,
    );
    let owners = opts.processes.then(|| {
        let mut wanted = HashSet::new();
        for (_, snap) in &now.scanned {
            let directions = model::Directions::new(&snap.sockets, &snap.settings);
            wanted.extend(
                snap.sockets
                    .iter()
                    .filter(|s| s.inode != 0 && directions.is_outbound(s))
                    .map(|s| s.inode),
            );
        }
        procs::find_owners(&wanted)
    });
    let scanned = now
        .scanned
        .into_iter()
        .map(|(netns, snap)| {
            let base = before.get(&netns.inode).map(|b| (b, opts.interval));
            let analysis = model::analyze(base, &snap, owners.as_ref(), opts.thresholds);
            let report = NamespaceReport {
                netns: netns.clone(),
                settings: snap.settings,
                counters: snap.counters,
                analysis,
            };
            (netns, report)
        })
        .collect();
    NodeScan {
        scanned,
        vanished: now.vanished,
        failed: now.failed,
    }
}

/// At least this many namespaces sharing the host's TCP established hash
/// (besides the host's own) make [`shared_ehash_finding`] speak...
pub const SHARED_EHASH_MIN_NAMESPACES: usize = 10;
/// ...when the node also holds at least this many sockets.
pub const SHARED_EHASH_MIN_SOCKETS: u64 = 10_000;

/// The node-wide finding `shared_tcp_ehash` (severity info): at least
/// [`SHARED_EHASH_MIN_NAMESPACES`] namespaces other than the host's share
/// its TCP established hash (`net.ipv4.tcp_ehash_entries` negative) and
/// the node holds at least [`SHARED_EHASH_MIN_SOCKETS`] sockets. Then every
/// lookup and every dump in each of them walks chains holding the whole
/// node's sockets, and a scan of every namespace costs namespaces × node
/// sockets (docs/BENCHMARKS.md). `None` otherwise, and on kernels before
/// 6.1, which do not say.
///
/// `namespaces`: for each namespace scanned, whether it is the host's, its
/// `tcp_ehash_entries`, and its sockets.
pub fn shared_ehash_finding(
    namespaces: impl IntoIterator<Item = (bool, Option<i64>, u64)>,
) -> Option<Finding> {
    let mut sharing = 0usize;
    let mut host_buckets = None;
    let mut sockets = 0u64;
    for (host, ehash, n) in namespaces {
        sockets += n;
        match ehash {
            Some(e) if host => host_buckets = Some(e.unsigned_abs()),
            Some(e) if e < 0 => {
                sharing += 1;
                host_buckets.get_or_insert(e.unsigned_abs());
            }
            _ => {}
        }
    }
    if sharing < SHARED_EHASH_MIN_NAMESPACES || sockets < SHARED_EHASH_MIN_SOCKETS {
        return None;
    }
    let buckets = host_buckets.unwrap_or_default();
    Some(Finding {
        severity: Severity::Info,
        code: FindingCode::SharedTcpEhash,
        destination: None,
        message: format!(
            "{sharing} network namespaces share the host's TCP established hash ({buckets} buckets; \
             net.ipv4.tcp_ehash_entries reads -{buckets} in them) while the node holds {sockets} sockets: \
             their socket lookups and every dump of their table (ss, doctor, the exporter) walk \
             chains holding the whole node's sockets, so a scan of every namespace costs \
             about {sharing} x {sockets} socket visits"
        ),
        advice: vec![
            "Set net.ipv4.tcp_child_ehash_entries on the node (Linux 6.1+; sysctl -w \
             net.ipv4.tcp_child_ehash_entries=N, and in /etc/sysctl.d/ to keep it): namespaces \
             created afterwards (new pods) get a hash of their own of N buckets (rounded up to \
             a power of two); existing ones keep sharing until they are recreated. The \
             listening and bind hashes stay shared."
                .to_string(),
            "Size N at least twice the TIME_WAIT sockets a pod may hold: a namespace's default \
             net.ipv4.tcp_max_tw_buckets is half its hash size, and TIME_WAIT sockets beyond it \
             are destroyed early (TCPTimeWaitOverflow). Each bucket costs 8 bytes per namespace \
             (N=65536: 512 KiB a pod)."
                .to_string(),
        ],
    })
}

/// A capability that `--all-netns` needs and the process lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `CAP_SYS_ADMIN` (21): `setns()` into another network namespace.
    SysAdmin,
    /// `CAP_SYS_PTRACE` (19): reading other users' `/proc/PID/ns/net`.
    SysPtrace,
}

impl Capability {
    /// The kernel name, `CAP_SYS_ADMIN` or `CAP_SYS_PTRACE`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
        }
    }

    fn bit(self) -> u32 {
        match self {
            Capability::SysAdmin => 21,
            Capability::SysPtrace => 19,
        }
    }
}

/// Parses the effective capability set (`CapEff:` in `/proc/PID/status`,
/// hex), e.g. `000001ffffffffff` for root.
pub fn parse_cap_eff(status: &str) -> Result<u64, String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| "no CapEff: line in /proc/self/status".to_string())?;
    u64::from_str_radix(line.trim(), 16)
        .map_err(|_| format!("CapEff: expected hex digits, got {:?}", line.trim()))
}

/// The capabilities of `[CAP_SYS_ADMIN, CAP_SYS_PTRACE]` missing from the
/// effective set `cap_eff`.
pub fn missing_capabilities(cap_eff: u64) -> Vec<Capability> {
    [Capability::SysAdmin, Capability::SysPtrace]
        .into_iter()
        .filter(|c| cap_eff & (1u64 << c.bit()) == 0)
        .collect()
}

/// The capabilities scanning every namespace needs that this process lacks
/// (read from `/proc/self/status`).
pub fn missing_capabilities_now() -> Result<Vec<Capability>, ScanError> {
    let path = Path::new("/proc/self/status");
    let text = fs::read_to_string(path).map_err(|source| ScanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let eff = parse_cap_eff(&text).map_err(|reason| ScanError::Parse {
        path: path.display().to_string(),
        line: 0,
        reason,
    })?;
    Ok(missing_capabilities(eff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /proc and /run/netns in a directory removed on drop.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("fivetuple-node-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("proc")).unwrap();
            Fixture(dir)
        }

        fn roots(&self) -> Roots {
            Roots {
                proc: self.0.join("proc"),
                run_netns: self.0.join("netns"),
            }
        }

        fn process(&self, pid: u32, inode: u64, comm: &str, cgroup: &str) {
            let p = self.0.join("proc").join(pid.to_string());
            fs::create_dir_all(p.join("ns")).unwrap();
            symlink(format!("net:[{inode}]"), p.join("ns/net")).unwrap();
            fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(p.join("cgroup"), cgroup).unwrap();
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const CID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const CID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const UID: &str = "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[]"), None);
        assert_eq!(parse_ns_link("net:4026531840"), None);
    }

    #[test]
    fn discovery_groups_by_inode_with_identity() {
        let fx = Fixture::new("groups");
        let uid_ = UID.replace('-', "_");
        fx.process(1, 100, "systemd", "0::/init.scope\n");
        fx.process(
            40,
            100,
            "dockerd",
            &format!("0::/system.slice/docker-{CID_B}.scope\n"),
        );
        // A pod: pause first, then the app container, both in namespace 200.
        let pod = |cid: &str| {
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{cid}.scope\n"
            )
        };
        fx.process(300, 200, "pause", &pod(CID_A));
        fx.process(310, 200, "app", &pod(CID_B));
        // A process that is in no container, in its own namespace.
        fx.process(500, 300, "unshare", "0::/user.slice\n");
        // Not a pid: ignored.
        fs::create_dir_all(fx.0.join("proc/self")).unwrap();

        let d = discover_at(&fx.roots()).unwrap();
        let inodes: Vec<u64> = d.namespaces.iter().map(|n| n.inode).collect();
        assert_eq!(inodes, [100, 200, 300]);
        let host = &d.namespaces[0];
        assert!(host.host);
        assert_eq!(host.processes.len(), 2);
        // The host's cgroups are not read: a host-network container does not label the host.
        assert!(host.identity.is_empty() && host.processes[1].identity.is_empty());

        let pod_ns = &d.namespaces[1];
        assert!(!pod_ns.host);
        assert_eq!(
            pod_ns
                .processes
                .iter()
                .map(|p| (p.pid, p.comm.as_str()))
                .collect::<Vec<_>>(),
            [(300, "pause"), (310, "app")]
        );
        assert_eq!(pod_ns.identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            pod_ns.identity.container_id.as_deref(),
            Some(CID_A),
            "the sandbox's id"
        );
        assert_eq!(
            pod_ns.processes[1].identity.container_id.as_deref(),
            Some(CID_B)
        );
        assert!(d.namespaces[2].identity.is_empty());
        assert_eq!(d.denied, 0);
    }

    #[test]
    fn discovery_adds_named_namespaces() {
        let fx = Fixture::new("named");
        fx.process(1, 100, "init", "0::/\n");
        fs::create_dir_all(fx.0.join("netns")).unwrap();
        fs::write(fx.0.join("netns/blue"), "").unwrap();
        let blue_inode = fs::metadata(fx.0.join("netns/blue")).unwrap().ino();
        // A process in the same namespace as the name "blue".
        fx.process(7, blue_inode, "sleep", "0::/\n");
        let d = discover_at(&fx.roots()).unwrap();
        assert_eq!(d.namespaces.len(), 2);
        let blue = d.namespaces.iter().find(|n| n.inode == blue_inode).unwrap();
        assert_eq!(blue.names, ["blue"]);
        assert_eq!(blue.processes[0].pid, 7);
        assert_eq!(
            blue.targets().collect::<Vec<_>>(),
            [Target::Pid(7), Target::Named("blue".into())]
        );
    }

    #[test]
    fn host_from_kthreadd_when_pid_1_is_unreadable() {
        let fx = Fixture::new("kthreadd");
        // pid 1 without a readable ns link (as when it holds a capability we lack).
        fs::create_dir_all(fx.0.join("proc/1")).unwrap();
        fx.process(2, 100, "kthreadd", "0::/\n");
        fx.process(9, 200, "sleep", "0::/\n");
        let d = discover_at(&fx.roots()).unwrap();
        let host: Vec<u64> = d
            .namespaces
            .iter()
            .filter(|n| n.host)
            .map(|n| n.inode)
            .collect();
        assert_eq!(host, [100]);
    }

    #[test]
    fn discovery_without_proc_is_an_error_naming_it() {
        let fx = Fixture::new("noproc");
        let mut roots = fx.roots();
        roots.proc = fx.0.join("missing");
        let e = discover_at(&roots).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn capabilities() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing_capabilities(parse_cap_eff(root).unwrap()), []);
        let none = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing_capabilities(parse_cap_eff(none).unwrap()),
            [Capability::SysAdmin, Capability::SysPtrace]
        );
        // CAP_SYS_PTRACE only.
        let ptrace = format!("CapEff:\t{:016x}\n", 1u64 << 19);
        assert_eq!(
            missing_capabilities(parse_cap_eff(&ptrace).unwrap()),
            [Capability::SysAdmin]
        );
        assert!(parse_cap_eff("CapEff:\tzz\n").unwrap_err().contains("zz"));
        assert!(parse_cap_eff("Name: x\n").is_err());
    }

    #[test]
    fn shared_ehash_finding_needs_many_sharing_namespaces_and_many_sockets() {
        let host = (true, Some(262_144), 5_000);
        let pods = |n: usize, ehash: i64, sockets: u64| {
            std::iter::repeat_n((false, Some(ehash), sockets), n)
        };
        // 10 sharing pods of 500 sockets plus the host's 5,000: 10,000 sockets.
        let f = shared_ehash_finding(std::iter::once(host).chain(pods(10, -262_144, 500)))
            .expect("10 sharing namespaces, 10,000 sockets");
        assert_eq!(f.code, FindingCode::SharedTcpEhash);
        assert_eq!(f.severity, Severity::Info);
        assert!(
            f.message.starts_with("10 network namespaces share"),
            "{}",
            f.message
        );
        assert!(f.message.contains("262144 buckets") && f.message.contains("10000 sockets"));
        assert!(f.advice[0].contains("net.ipv4.tcp_child_ehash_entries"));
        // One short of either bound: nothing.
        assert!(
            shared_ehash_finding(std::iter::once(host).chain(pods(9, -262_144, 1_000))).is_none()
        );
        assert!(
            shared_ehash_finding(std::iter::once(host).chain(pods(10, -262_144, 499))).is_none()
        );
        // Own hashes, or a kernel that does not say: nothing.
        assert!(shared_ehash_finding(std::iter::once(host).chain(pods(50, 1024, 1_000))).is_none());
        let unknown = std::iter::repeat_n((false, None, 1_000), 50);
        assert!(shared_ehash_finding(unknown).is_none());
    }

    #[test]
    fn gone_errors() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        assert!(is_gone(&ScanError::NoSuchPid {
            pid: 1,
            source: enoent()
        }));
        assert!(is_gone(&ScanError::NoSuchNetns {
            name: "x".into(),
            source: enoent()
        }));
        assert!(!is_gone(&ScanError::Setns {
            target: "pid 1".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        }));
        assert!(!is_gone(&ScanError::NoSuchPid {
            pid: 1,
            source: io::Error::from_raw_os_error(libc::EACCES),
        }));
    }
}

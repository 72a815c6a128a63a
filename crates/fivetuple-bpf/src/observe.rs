//! The kernel's view of who churns source ports (`src/bpf/observe.bpf.c`):
//! per (cgroup, comm, destination, network namespace) counts of TCP connect attempts,
//! successes, exhaustion failures (`EADDRNOTAVAIL`/`EADDRINUSE`, with the
//! stage) and sockets entering TIME_WAIT, attributed to the task that
//! connected them, plus a ring buffer that streams the failures only. A
//! failed connect never becomes a socket, so no socket table shows it; this
//! does.
//!
//! Counts live in bounded BPF maps read on demand ([`Observer::counts`],
//! [`Observer::failures`]); what did not fit is in [`Observer::drops`].
//! The owner of each connection is kept under its socket cookie, which a
//! TIME_WAIT socket inherits, so [`Observer::owner`] names the process
//! behind each TIME_WAIT of the socket table.
//! An attempt is counted when it resolves (established, failed, reset):
//! a blocking `connect()` is counted before it returns, a connect still
//! waiting for its SYN-ACK only once that comes or the socket closes.
//! Without the privileges or kernel features, [`load`] returns
//! [`Error::Missing`] naming each one ([`requirements`]).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::trace_point::TracePointLinkId;
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Pod};

use crate::probe::{self, Missing, MissingList};

/// Errors of loading the observer and reading its maps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host or process lacks something (privileges, BTF, tracefs).
    #[error("cannot observe connects in the kernel here: {0}")]
    Missing(MissingList),
    /// A system call or BPF operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// True when the error names something missing on the host.
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::Missing(_))
    }

    fn io(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Io {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Where a failure was born (`enum ft_obs_stage` in `src/bpf/observe.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// `connect()`: the kernel found no free port (or a bound 4-tuple clashed).
    Connect,
    /// `bind()`: no port for an explicit or port-0 bind.
    Bind,
}

impl Stage {
    fn from_raw(v: u16) -> Option<Stage> {
        match v {
            1 => Some(Stage::Connect),
            2 => Some(Stage::Bind),
            _ => None,
        }
    }

    /// `connect` or `bind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Bind => "bind",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who connected where: the key of every count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Flow {
    /// cgroup v2 id of the connecting task (the inode number of its cgroup directory).
    pub cgroup: u64,
    /// The task's comm (up to 15 bytes).
    pub comm: String,
    /// The destination; unspecified (`0.0.0.0:0` / `[::]:0`) for bind failures.
    pub destination: SocketAddr,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
}

/// Counts of one [`Flow`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Connects that reached port selection (CLOSE -> SYN_SENT), counted
    /// when they resolve: established, failed or reset (a connect still in
    /// SYN_SENT is not counted yet).
    pub attempts: u64,
    /// SYN_SENT -> ESTABLISHED, blocking or not.
    pub successes: u64,
    /// Sockets replaced by a timewait socket when they closed.
    pub time_wait: u64,
}

/// Exhaustion failures of one [`Flow`] with one errno at one stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failures {
    /// Who and where.
    pub flow: Flow,
    /// Where it was born.
    pub stage: Stage,
    /// The positive errno (98 `EADDRINUSE`, 99 `EADDRNOTAVAIL`).
    pub errno: i32,
    /// How many.
    pub count: u64,
}

/// What the maps could not hold, and events nobody owned (`enum ft_obs_drop`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// A new flow found the counts map full (its counts are lost).
    pub counts_full: u64,
    /// A new failure key found the failures map full.
    pub failures_full: u64,
    /// A failure event found the ring buffer full (its count was kept).
    pub ringbuf_full: u64,
    /// A failing connect's task storage could not be had (its errno is lost).
    pub owner_full: u64,
    /// Timewait sockets of connections not seen connecting (older than the
    /// observer, inbound connections closed first by this host, or
    /// connections that outlived their owner slot, see
    /// [`Options::max_sockets`]).
    pub time_wait_unowned: u64,
    /// Successes of connects not seen starting (or whose owner slot a newer
    /// connect took).
    pub established_unowned: u64,
}

impl Drops {
    /// True when counts were lost (map or ring buffer full), as opposed to
    /// events that had no owner.
    pub fn any_lost(&self) -> bool {
        self.counts_full + self.failures_full + self.ringbuf_full + self.owner_full > 0
    }
}

/// One failing connect or bind from the live stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// When it happened.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The task's comm.
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup: u64,
    /// The source the application bound (address and/or port), if any.
    pub source: Option<SocketAddr>,
    /// The destination (`None` for a bind failure).
    pub destination: Option<SocketAddr>,
    /// The positive errno.
    pub errno: i32,
    /// Where it was born.
    pub stage: Stage,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    s.serialize_f64(d.as_secs_f64())
}

/// Mirrors `struct ft_obs_key` (the destination in IPv6 form, IPv4 v4-mapped).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct RawKey {
    cgroup: u64,
    comm: [u8; 16],
    daddr: [u8; 16],
    netns: u32,
    dport: u16,
    stage: u8,
    err: u8,
}
// SAFETY: repr(C), integers and byte arrays in 8/4/2/1-byte slots, no padding.
unsafe impl Pod for RawKey {}

/// Mirrors `struct ft_obs_counts`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawCounts {
    attempts: u64,
    successes: u64,
    time_wait: u64,
}
// SAFETY: repr(C), three u64.
unsafe impl Pod for RawCounts {}

/// Mirrors `struct ft_obs_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawConfig {
    netns: u32,
    flags: u32,
    owners_mask: u32,
    max_flows: u32,
}

/// `enum ft_obs_config_flags`.
const CFG_EVENTS: u32 = 1;
const CFG_SYSCALLS: u32 = 2;
// SAFETY: repr(C), four u32.
unsafe impl Pod for RawConfig {}

/// Mirrors `struct ft_obs_event` (88 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawEvent {
    ts_ns: u64,
    cgroup: u64,
    tgid: u32,
    tid: u32,
    comm: [u8; 16],
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    family: u16,
    stage: u16,
    err: i32,
    netns: u32,
}

/// Mirrors `struct ft_obs_owner` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawOwner {
    cookie: u64,
    cgroup: u64,
    comm: [u8; 16],
    tgid: u32,
    flow: u32,
}
// SAFETY: repr(C), two u64, bytes and two u32, no padding.
unsafe impl Pod for RawOwner {}

/// The process that connected a socket, as the observer saw it at
/// `connect()`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Its comm.
    pub comm: String,
    /// Its cgroup id.
    pub cgroup: u64,
}

const AF_INET6: u16 = 10;

fn comm_string(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn address(family: u16, raw: &[u8; 16], port: u16) -> SocketAddr {
    if family == AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*raw)), port)
    } else {
        let v4: [u8; 4] = raw[..4].try_into().expect("4 bytes");
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(v4)), port)
    }
}

impl RawKey {
    fn flow(&self) -> Flow {
        Flow {
            cgroup: self.cgroup,
            comm: comm_string(&self.comm),
            destination: SocketAddr::new(Ipv6Addr::from(self.daddr).to_canonical(), self.dport),
            netns: self.netns,
        }
    }
}

impl RawEvent {
    fn parse(bytes: &[u8], boot_to_wall: impl Fn(u64) -> SystemTime) -> Option<Event> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: the length is checked; RawEvent is plain data valid for any
        // bit pattern, and read_unaligned does not need alignment.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let stage = Stage::from_raw(raw.stage)?;
        let src = address(raw.family, &raw.saddr, raw.sport);
        let source = (!src.ip().is_unspecified() || src.port() != 0).then_some(src);
        let destination =
            (stage == Stage::Connect).then(|| address(raw.family, &raw.daddr, raw.dport));
        Some(Event {
            time: boot_to_wall(raw.ts_ns),
            pid: raw.tgid,
            tid: raw.tid,
            comm: comm_string(&raw.comm),
            cgroup: raw.cgroup,
            source,
            destination,
            errno: raw.err,
            stage,
            netns: raw.netns,
        })
    }
}

/// What to observe and how big the maps are. Defaults: every network
/// namespace, failure events on, the syscall tracepoints on, 16,384 flows,
/// 4,096 failure keys, 131,072 owner slots. Every map is preallocated and
/// bounded; what does not fit is counted in [`Observer::drops`].
#[derive(Debug, Clone)]
pub struct Options {
    netns: Option<u32>,
    events: bool,
    max_flows: u32,
    max_failures: u32,
    max_sockets: u32,
    syscalls: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            netns: None,
            events: true,
            max_flows: 16_384,
            max_failures: 4_096,
            max_sockets: 131_072,
            syscalls: true,
        }
    }
}

impl Options {
    /// Observe only the network namespace with this inode number (see
    /// [`netns_inode`]). Default: all.
    pub fn netns(mut self, inode: Option<u32>) -> Options {
        self.netns = inode;
        self
    }

    /// Send failure events to the ring buffer (default on; the exporter
    /// needs only the counts).
    pub fn events(mut self, on: bool) -> Options {
        self.events = on;
        self
    }

    /// Flows (cgroup, comm, destination) the counts map holds. Default 16,384.
    pub fn max_flows(mut self, n: u32) -> Options {
        self.max_flows = n.max(1);
        self
    }

    /// Slots of the owner table (rounded up to a power of two; default
    /// 131,072, 40 bytes each, 5 MiB). Each connect takes the slot its
    /// socket's cookie picks, and cookies are handed out in increasing
    /// order, so a connection keeps its owner until this many newer sockets
    /// got a cookie. One that outlives that is not counted when it resolves
    /// or enters TIME_WAIT, and says so in [`Drops::established_unowned`]
    /// and [`Drops::time_wait_unowned`].
    pub fn max_sockets(mut self, n: u32) -> Options {
        self.max_sockets = n.clamp(1, 1 << 31);
        self
    }

    /// Attach the syscall tracepoints (`sys_exit_connect`, `sys_{enter,exit}_bind`)
    /// that give failures their errno and catch `bind()`'s `EADDRINUSE`.
    /// Default on. Off, only `sock:inet_sock_set_state` is attached: no
    /// failures are counted, and no syscall takes the kernel's traced path.
    pub fn syscalls(mut self, on: bool) -> Options {
        self.syscalls = on;
        self
    }
}

/// The name of an errno the observer reports (`EADDRINUSE`, `EADDRNOTAVAIL`),
/// `"errno"` for any other.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => "errno",
    }
}

/// The inode number of a network namespace file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`), as the kernel's `net->ns.inum`.
pub fn netns_inode(path: &Path) -> Result<u32, Error> {
    let meta = fs::metadata(path)
        .map_err(|e| Error::io(format!("network namespace {}", path.display()), e))?;
    u32::try_from(meta.ino()).map_err(|_| {
        Error::io(
            format!("network namespace {}", path.display()),
            io::Error::new(io::ErrorKind::InvalidData, "inode number above 32 bits"),
        )
    })
}

/// What loading the observer lacks here, empty when nothing: `CAP_BPF` and
/// `CAP_PERFMON` (tracing programs; `CAP_SYS_ADMIN` implies both), the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`, for the BTF tracepoint and CO-RE),
/// and a tracefs with the syscall tracepoints.
pub fn requirements() -> Vec<Missing> {
    let caps = probe::effective_capabilities().unwrap_or(0);
    let mut missing = probe::tracing_missing(caps);
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push(Missing::Feature(
            "no kernel BTF at /sys/kernel/btf/vmlinux (needs CONFIG_DEBUG_INFO_BTF, Linux 5.5+)"
                .into(),
        ));
    }
    if let Some(m) = tracefs_missing() {
        missing.push(m);
    }
    missing
}

/// The syscall tracepoints need tracefs at /sys/kernel/tracing (or under
/// debugfs) and `CONFIG_FTRACE_SYSCALLS`. Only root can look inside tracefs,
/// so without access just the mount is checked (mountinfo is world-readable).
fn tracefs_missing() -> Option<Missing> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug"]
        .iter()
        .any(|p| {
            mountinfo.lines().any(|l| {
                l.split_whitespace().nth(4) == Some(*p)
                    && l.split_once(" - ").is_some_and(|(_, r)| {
                        r.starts_with("tracefs ") || r.starts_with("debugfs ")
                    })
            })
        });
    if !mounted {
        return Some(Missing::Feature(
            "no tracefs mounted (mount -t tracefs none /sys/kernel/tracing)".into(),
        ));
    }
    let readable = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|p| fs::read_dir(p).is_ok());
    (readable && tracefs_event_dir().is_none()).then(|| {
        Missing::Feature(
            "the kernel has no syscall tracepoints (syscalls:sys_exit_connect; needs CONFIG_FTRACE_SYSCALLS)".into(),
        )
    })
}

fn tracefs_event_dir() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|p| Path::new(p).join("events/syscalls/sys_exit_connect"))
        .find(|p| p.exists())
}

/// The observer: programs attached, maps readable, while this value lives.
pub struct Observer {
    ebpf: Ebpf,
    events: Option<RingBuf<MapData>>,
    boot_offset: Duration,
    options: Options,
    /// The attachments while attached (see [`Observer::detach`]).
    links: Option<Links>,
}

/// The observer's attachments: the state tracepoint's and the syscall
/// tracepoints' (program name and link).
struct Links {
    state: BtfTracePointLinkId,
    syscalls: Vec<(&'static str, TracePointLinkId)>,
}

/// The syscall tracepoint programs and their events.
const SYSCALL_PROGRAMS: [(&str, &str); 2] = [
    ("ft_exit_connect", "sys_exit_connect"),
    ("ft_exit_bind", "sys_exit_bind"),
];

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("options", &self.options)
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

/// Checks [`requirements`], then loads and attaches the programs.
pub fn load(options: Options) -> Result<Observer, Error> {
    let missing = requirements();
    if !missing.is_empty() {
        return Err(Error::Missing(MissingList(missing)));
    }
    let btf = Btf::from_sys_fs().map_err(|e| Error::io("reading /sys/kernel/btf/vmlinux", e))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        // ft_pending is task storage, which aya creates and the programs
        // use but aya has no Rust handle for (user space never reads it).
        .allow_unsupported_maps()
        .map_max_entries("ft_flows", options.max_flows)
        .map_max_entries("ft_counts", options.max_flows)
        .map_max_entries("ft_failures", options.max_failures)
        .map_max_entries("ft_owners", owner_slots(&options))
        .load(crate::objects::OBSERVE)
        .map_err(|e| {
            if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &e
            {
                if io_error.raw_os_error() == Some(libc::EPERM) {
                    return Error::Missing(MissingList(vec![Missing::CapBpf]));
                }
            }
            Error::io("loading the BPF observer object", e)
        })?;
    {
        let mut config: Array<_, RawConfig> = Array::try_from(
            ebpf.map_mut("ft_obs_config")
                .expect("ft_obs_config in the object"),
        )
        .map_err(|e| Error::io("opening ft_obs_config", e))?;
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        let raw = RawConfig {
            netns: options.netns.unwrap_or(0),
            flags: flag(options.events, CFG_EVENTS) | flag(options.syscalls, CFG_SYSCALLS),
            owners_mask: owner_slots(&options) - 1,
            max_flows: options.max_flows,
        };
        config
            .set(0, raw, 0)
            .map_err(|e| Error::io("writing the observer configuration", e))?;
    }
    state_program(&mut ebpf)?
        .load("inet_sock_set_state", &btf)
        .map_err(|e| program_error("ft_set_state", e))?;
    if options.syscalls {
        for (name, _) in SYSCALL_PROGRAMS {
            syscall_program(&mut ebpf, name)?
                .load()
                .map_err(|e| program_error(name, e))?;
        }
    }
    let events = if options.events {
        let map = ebpf.take_map("ft_events").expect("ft_events in the object");
        Some(RingBuf::try_from(map).map_err(|e| Error::io("opening the failure ring buffer", e))?)
    } else {
        None
    };
    let mut observer = Observer {
        ebpf,
        events,
        boot_offset: boot_offset(),
        options,
        links: None,
    };
    observer.attach()?;
    Ok(observer)
}

/// The state tracepoint program of the loaded object.
fn state_program(ebpf: &mut Ebpf) -> Result<&mut BtfTracePoint, Error> {
    ebpf.program_mut("ft_set_state")
        .expect("ft_set_state in the object")
        .try_into()
        .map_err(|e| Error::io("ft_set_state is not a BTF tracepoint program", e))
}

/// The syscall tracepoint program `name` of the loaded object.
fn syscall_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint, Error> {
    ebpf.program_mut(name)
        .expect("program in the object")
        .try_into()
        .map_err(|e| Error::io(format!("{name} is not a tracepoint program"), e))
}

/// Slots of the owner table: `max_sockets` rounded up to a power of two.
fn owner_slots(options: &Options) -> u32 {
    options
        .max_sockets
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

fn program_error(name: &str, e: aya::programs::ProgramError) -> Error {
    // An old kernel (before 5.11) lacks the storage helpers for tracing programs.
    if let Some(missing) = probe::load_refusal(&e, &[Missing::CapBpf, Missing::CapPerfmon]) {
        return Error::Missing(missing);
    }
    Error::io(format!("loading the BPF program {name}"), e)
}

/// Wall clock minus `CLOCK_BOOTTIME`, to date events stamped with
/// `bpf_ktime_get_boot_ns()`.
fn boot_offset() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(boot)
}

impl Observer {
    /// Attaches the programs to their tracepoints again after
    /// [`Observer::detach`] (a no-op when attached). [`load`] attaches them.
    pub fn attach(&mut self) -> Result<(), Error> {
        if self.links.is_some() {
            return Ok(());
        }
        let state = state_program(&mut self.ebpf)?
            .attach()
            .map_err(|e| Error::io("attaching to the tracepoint sock:inet_sock_set_state", e))?;
        let mut links = Links {
            state,
            syscalls: Vec::new(),
        };
        if self.options.syscalls {
            for (name, event) in SYSCALL_PROGRAMS {
                match syscall_program(&mut self.ebpf, name)?.attach("syscalls", event) {
                    Ok(link) => links.syscalls.push((name, link)),
                    Err(e) => {
                        // Leave nothing half attached.
                        self.links = Some(links);
                        let _ = self.detach();
                        return Err(Error::io(
                            format!("attaching to the tracepoint syscalls:{event}"),
                            e,
                        ));
                    }
                }
            }
        }
        self.links = Some(links);
        Ok(())
    }

    /// Detaches every program from its tracepoint, keeping the maps and
    /// what they hold: the kernel then runs none of the observer's code
    /// until [`Observer::attach`]. Connections made meanwhile are not
    /// counted, and those that reach TIME_WAIT after the observer is
    /// attached again are counted as unowned ([`Drops`]). For sampling, and
    /// for measuring the observer's cost against none in one process
    /// (`benches/observe.rs`). A no-op when detached.
    pub fn detach(&mut self) -> Result<(), Error> {
        let Some(links) = self.links.take() else {
            return Ok(());
        };
        state_program(&mut self.ebpf)?
            .detach(links.state)
            .map_err(|e| Error::io("detaching from sock:inet_sock_set_state", e))?;
        for (name, link) in links.syscalls {
            syscall_program(&mut self.ebpf, name)?
                .detach(link)
                .map_err(|e| Error::io(format!("detaching {name}"), e))?;
        }
        Ok(())
    }

    /// Whether the programs are attached (see [`Observer::detach`]).
    pub fn is_attached(&self) -> bool {
        self.links.is_some()
    }

    /// The map `name` of the loaded object, opened as `M`.
    fn map<'a, M>(&'a self, name: &str) -> Result<M, Error>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .unwrap_or_else(|| panic!("{name} in the object"));
        M::try_from(map).map_err(|e| Error::io(format!("opening {name}"), e))
    }

    /// The counts per flow so far (summed over CPUs).
    pub fn counts(&self) -> Result<Vec<(Flow, Counts)>, Error> {
        let flows: BpfHashMap<_, RawKey, u32> = self.map("ft_flows")?;
        let counts: PerCpuArray<_, RawCounts> = self.map("ft_counts")?;
        let mut out = Vec::new();
        for entry in flows.iter() {
            let (k, index) = entry.map_err(|e| Error::io("reading ft_flows", e))?;
            let per_cpu = counts
                .get(&index, 0)
                .map_err(|e| Error::io("reading ft_counts", e))?;
            let mut sum = Counts::default();
            for v in per_cpu.iter() {
                sum.attempts += v.attempts;
                sum.successes += v.successes;
                sum.time_wait += v.time_wait;
            }
            out.push((k.flow(), sum));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The exhaustion failures so far.
    pub fn failures(&self) -> Result<Vec<Failures>, Error> {
        let map: BpfHashMap<_, RawKey, u64> = self.map("ft_failures")?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, count) = entry.map_err(|e| Error::io("reading ft_failures", e))?;
            let Some(stage) = Stage::from_raw(u16::from(k.stage)) else {
                continue;
            };
            out.push(Failures {
                flow: k.flow(),
                stage,
                errno: i32::from(k.err),
                count,
            });
        }
        out.sort_by(|a, b| (&a.flow, a.stage, a.errno).cmp(&(&b.flow, b.stage, b.errno)));
        Ok(out)
    }

    /// The process that connected the socket with this cookie
    /// (`Socket::cookie` in fivetuple-scan, `sk:` in `ss -e`), when the
    /// observer saw it connect and its owner slot has not been taken by a
    /// newer connect since (see [`Options::max_sockets`]). A TIME_WAIT socket
    /// keeps the cookie of the connection it replaced, so this names the
    /// owners of TIME_WAIT sockets, which the socket table cannot.
    pub fn owner(&self, cookie: u64) -> Result<Option<Owner>, Error> {
        if cookie == 0 {
            return Ok(None); // no cookie (a /proc reading): never a slot's
        }
        let owners: Array<_, RawOwner> = self.map("ft_owners")?;
        let slot = (cookie & u64::from(owners.len() - 1)) as u32;
        let raw = owners
            .get(&slot, 0)
            .map_err(|e| Error::io("reading ft_owners", e))?;
        Ok((raw.cookie == cookie).then(|| Owner {
            pid: raw.tgid,
            comm: comm_string(&raw.comm),
            cgroup: raw.cgroup,
        }))
    }

    /// What was dropped or unowned so far, summed over CPUs.
    pub fn drops(&self) -> Result<Drops, Error> {
        let array: PerCpuArray<_, u64> = self.map("ft_drops")?;
        let mut slots = [0u64; 6];
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = array
                .get(&(i as u32), 0)
                .map_err(|e| Error::io("reading ft_drops", e))?
                .iter()
                .sum();
        }
        Ok(Drops {
            counts_full: slots[0],
            failures_full: slots[1],
            ringbuf_full: slots[2],
            owner_full: slots[3],
            time_wait_unowned: slots[4],
            established_unowned: slots[5],
        })
    }

    /// Failure events waiting in the ring buffer (none when events are off).
    pub fn drain_events(&mut self) -> Vec<Event> {
        let offset = self.boot_offset;
        let to_wall = |ns: u64| SystemTime::UNIX_EPOCH + offset + Duration::from_nanos(ns);
        let mut out = Vec::new();
        if let Some(ring) = self.events.as_mut() {
            while let Some(item) = ring.next() {
                if let Some(e) = RawEvent::parse(&item, to_wall) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Waits up to `timeout` for a failure event (poll(2) on the ring
    /// buffer); true when one is ready. Without events it just sleeps.
    pub fn wait_events(&self, timeout: Duration) -> bool {
        let Some(ring) = self.events.as_ref() else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the fd lives as long as `ring`.
        let n = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        n > 0
    }

    /// Bytes of kernel memory the maps take (`memlock` of each, as the
    /// kernel reports it in /proc/self/fdinfo), by map name.
    pub fn map_memory(&self) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::new();
        for (name, map) in self.ebpf.maps() {
            let fd = match map {
                aya::maps::Map::Array(m)
                | aya::maps::Map::HashMap(m)
                | aya::maps::Map::LruHashMap(m)
                | aya::maps::Map::PerCpuArray(m)
                | aya::maps::Map::PerCpuHashMap(m)
                | aya::maps::Map::RingBuf(m)
                | aya::maps::Map::SkStorage(m)
                | aya::maps::Map::Unsupported(m) => m.fd().as_fd().as_raw_fd(),
                _ => continue,
            };
            out.push((name.to_string(), memlock_of(fd)?));
        }
        if let Some(ring) = &self.events {
            out.push(("ft_events".into(), memlock_of(ring.as_fd().as_raw_fd())?));
        }
        out.sort();
        Ok(out)
    }

    /// Runs and run time of each loaded program (`run_cnt`, `run_time_ns` in the
    /// program's fdinfo), which the kernel counts only while run-time
    /// statistics are on (see [`enable_run_time_stats`]).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, Error> {
        let mut out = Vec::new();
        for (name, program) in self.ebpf.programs() {
            let Ok(fd) = program.fd() else {
                continue; // not loaded (Options::syscalls(false))
            };
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let text =
                fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            out.push(ProgramStats {
                name: name.to_string(),
                runs: field("run_cnt:"),
                run_time: Duration::from_nanos(field("run_time_ns:")),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &Options {
        &self.options
    }
}

/// Runs and run time of one program.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    /// The program's name in the object.
    pub name: String,
    /// Times it ran.
    pub runs: u64,
    /// Time spent in it.
    pub run_time: Duration,
}

/// Turns on the kernel's run-time statistics of every BPF program
/// (`BPF_ENABLE_STATS`, Linux 5.8+) for as long as the returned fd is open;
/// they cost two clock reads per program run.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::io("enabling BPF run-time statistics", e))
}

fn memlock_of(fd: i32) -> Result<u64, Error> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            Error::io(
                format!("reading {path}"),
                io::Error::new(io::ErrorKind::InvalidData, "no memlock line"),
            )
        })
}

/// Names of cgroups by id: a walk of the cgroup v2 hierarchy (a cgroup's id
/// is its directory's inode number), refreshed when an unknown id shows up,
/// at most once a second (an id of a removed cgroup stays unknown).
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, PathBuf>,
    refreshed: Option<std::time::Instant>,
}

impl CgroupNames {
    /// Reads the hierarchy from the cgroup2 mount (empty when there is none).
    pub fn new() -> CgroupNames {
        let root = probe::cgroup2_mount().ok().flatten();
        let mut names = CgroupNames {
            root,
            by_id: HashMap::new(),
            refreshed: None,
        };
        names.refresh();
        names
    }

    fn refresh(&mut self) {
        self.refreshed = Some(std::time::Instant::now());
        self.by_id.clear();
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(meta) = fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(&dir);
                self.by_id.insert(meta.ino(), Path::new("/").join(rel));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
    }

    /// The cgroup path (relative to the hierarchy, starting with `/`) of
    /// `id`, re-reading the hierarchy when it is not known yet (at most once
    /// a second). `None` when the cgroup is gone.
    pub fn path(&mut self, id: u64) -> Option<&Path> {
        let stale = self
            .refreshed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !self.by_id.contains_key(&id) && stale {
            self.refresh();
        }
        self.by_id.get(&id).map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AF_INET: u16 = 2;

    #[test]
    fn raw_structs_mirror_the_c_layout() {
        assert_eq!(std::mem::size_of::<RawKey>(), 48);
        assert_eq!(std::mem::size_of::<RawCounts>(), 24);
        assert_eq!(std::mem::size_of::<RawEvent>(), 88);
        assert_eq!(std::mem::size_of::<RawConfig>(), 16);
        assert_eq!(std::mem::size_of::<RawOwner>(), 40);
    }

    fn event_bytes(
        family: u16,
        stage: u16,
        saddr: &[u8],
        sport: u16,
        daddr: &[u8],
        dport: u16,
    ) -> Vec<u8> {
        let mut raw = RawEvent {
            ts_ns: 2_000_000_000,
            cgroup: 7,
            tgid: 42,
            tid: 43,
            comm: [0; 16],
            saddr: [0; 16],
            daddr: [0; 16],
            sport,
            dport,
            family,
            stage,
            err: 99,
            netns: 4026531840,
        };
        raw.comm[..4].copy_from_slice(b"curl");
        raw.saddr[..saddr.len()].copy_from_slice(saddr);
        raw.daddr[..daddr.len()].copy_from_slice(daddr);
        // SAFETY: RawEvent is plain data; viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                (&raw as *const RawEvent).cast::<u8>(),
                std::mem::size_of::<RawEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn keys_hold_ipv4_destinations_v4_mapped() {
        let key = |daddr: &str, dport: u16| RawKey {
            cgroup: 9,
            daddr: daddr.parse::<Ipv6Addr>().unwrap().octets(),
            netns: 4026531840,
            dport,
            ..RawKey::default()
        };
        let v4 = key("::ffff:127.0.0.1", 8080).flow();
        assert_eq!(v4.destination, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((v4.cgroup, v4.netns), (9, 4026531840));
        let v6 = key("::1", 443).flow();
        assert_eq!(v6.destination, "[::1]:443".parse().unwrap());
        // A bind failure has no destination, in its own family.
        assert_eq!(
            key("::ffff:0.0.0.0", 0).flow().destination,
            "0.0.0.0:0".parse().unwrap()
        );
        assert_eq!(key("::", 0).flow().destination, "[::]:0".parse().unwrap());
    }

    #[test]
    fn parses_failure_events() {
        let wall = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
        let e = RawEvent::parse(
            &event_bytes(AF_INET, 1, &[], 0, &[127, 0, 0, 1], 8080),
            wall,
        )
        .unwrap();
        assert_eq!(e.comm, "curl");
        assert_eq!((e.pid, e.tid, e.cgroup, e.errno), (42, 43, 7, 99));
        assert_eq!(e.stage, Stage::Connect);
        assert_eq!(e.source, None);
        assert_eq!(e.destination, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(e.time, SystemTime::UNIX_EPOCH + Duration::from_secs(2));
        let v6: Vec<u8> = "::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        let e = RawEvent::parse(&event_bytes(AF_INET6, 2, &v6, 5000, &[], 0), wall).unwrap();
        assert_eq!(e.stage, Stage::Bind);
        assert_eq!(e.source, Some("[::1]:5000".parse().unwrap()));
        assert_eq!(e.destination, None);
        assert!(RawEvent::parse(&[0u8; 10], wall).is_none());
        assert!(RawEvent::parse(&event_bytes(AF_INET, 9, &[], 0, &[], 0), wall).is_none());
    }
}

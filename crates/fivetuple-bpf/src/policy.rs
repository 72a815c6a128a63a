//! The library's port policies applied in the kernel by a cgroup
//! `connect4`/`connect6` program (`src/bpf/policy.bpf.c`), for every process
//! of a cgroup whatever its language. A spec means what
//! [`fivetuple::parse_policy`] says it means: the library validates it, and
//! [`KernelPolicy`] translates it with the library's own parsers into the
//! tables the program reads.
//!
//! Limits (see also the module docs of the C program):
//! - The hook cannot retry. A connect whose bound 4-tuple still clashes
//!   fails with `EADDRNOTAVAIL` in the application. Rotation with
//!   `SO_REUSEADDR` takes over a TIME_WAIT tuple at once when the old
//!   connection used TCP timestamps, so clashes need a range smaller than
//!   the connections *open at once* to one destination; size the range above
//!   that peak.
//! - `window` needs `bpf_setsockopt(IP_LOCAL_PORT_RANGE)` from the hook;
//!   [`window_allowed`] tries it and [`load`] refuses when the kernel says no.
//! - Sockets the application bound itself, UDP, and destinations outside the
//!   [`Only`] filter are left alone (and counted).

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::CgroupSockAddr;
use aya::{Ebpf, EbpfLoader, Pod};
use fivetuple::{parse_addresses, Choice, PortRange, ReservedPorts, Rotation};

use crate::probe::{self, Missing, MissingList};

/// Errors of loading, attaching, pinning and reading the policy programs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host or process lacks something (privileges, cgroup v2, a helper).
    #[error("cannot apply a policy in the kernel here: {0}")]
    Missing(MissingList),
    /// The policy specification is invalid (the library's own error).
    #[error(transparent)]
    Spec(#[from] fivetuple::ConfigError),
    /// The `--only` filter is invalid.
    #[error("invalid destination filter {value:?}: {reason}; expected DEST[/PREFIX][:PORT], e.g. 127.0.0.1:8080, 10.0.0.0/8 or [::1]:443")]
    BadOnly {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call or BPF operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request that conflicts with the state (already attached, not attached).
    #[error("{0}")]
    State(String),
}

impl From<fivetuple::PortRangeError> for Error {
    /// A bad port range is a bad specification, as the library reports it
    /// (`PortRange` moved to `fivetuple-kernel`; the text is unchanged).
    fn from(e: fivetuple::PortRangeError) -> Error {
        Error::Spec(e.into())
    }
}

impl Error {
    /// True when the error names something missing on the host (exit 3 in the CLI).
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::Missing(_))
    }

    pub(crate) fn io(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Io {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// What the program does on a connect, translated from a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `kernel`: count connects, bind nothing.
    Kernel,
    /// `rotate[:LO-HI]`: `SO_REUSEADDR` and bind the wildcard address with the
    /// next port of `ports` (the range minus reserved ports).
    Rotate {
        /// The usable ports, lowest first.
        ports: Vec<u16>,
    },
    /// `spread:ADDRESSES`: bind the next source of the destination's family
    /// with port 0 (`IP_BIND_ADDRESS_NO_PORT` behaviour).
    Spread {
        /// Source addresses.
        sources: Vec<IpAddr>,
    },
    /// `spread-rotate:ADDRESSES@LO-HI`: every (source, port) pair once per cycle.
    SpreadRotate {
        /// Source addresses.
        sources: Vec<IpAddr>,
        /// The usable ports, lowest first.
        ports: Vec<u16>,
    },
    /// `window:LO-HI`: `IP_LOCAL_PORT_RANGE` on the socket.
    Window {
        /// The window.
        ports: PortRange,
    },
}

/// A policy spec translated for the kernel program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPolicy {
    spec: String,
    rule: Rule,
}

impl KernelPolicy {
    /// Translates `spec` for the calling thread's network namespace: bare
    /// `rotate` uses its `ip_local_port_range`, and rotation skips its
    /// `ip_local_reserved_ports` (unreadable: a warning, none skipped, as in
    /// the library). Run it inside the target namespace (see
    /// [`crate::cgroup::in_netns`]) when attaching to another one.
    pub fn parse(spec: &str) -> Result<KernelPolicy, Error> {
        let reserved = ReservedPorts::read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read net.ipv4.ip_local_reserved_ports; rotating over every port of the range");
            ReservedPorts::none()
        });
        KernelPolicy::parse_with(spec, &reserved, Rotation::default_range())
    }

    /// Translates `spec` with the given reserved ports and default range.
    pub fn parse_with(
        spec: &str,
        reserved: &ReservedPorts,
        default_range: PortRange,
    ) -> Result<KernelPolicy, Error> {
        // The library decides what is valid and what each spec means; the
        // pieces below are parsed with its own parsers.
        let library = fivetuple::parse_policy(spec)?;
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (spec.trim(), None),
        };
        let arg = arg.unwrap_or("");
        let rule = match kind {
            "kernel" => Rule::Kernel,
            "rotate" if arg.is_empty() => Rule::Rotate {
                ports: usable(default_range, reserved)?,
            },
            "rotate" => Rule::Rotate {
                ports: usable(arg.parse()?, reserved)?,
            },
            "spread" => Rule::Spread {
                sources: parse_addresses(arg)?,
            },
            "spread-rotate" => {
                let (addrs, ports) = arg.split_once('@').unwrap_or((arg, ""));
                Rule::SpreadRotate {
                    sources: parse_addresses(addrs)?,
                    ports: usable(ports.parse()?, reserved)?,
                }
            }
            "window" => Rule::Window {
                ports: arg.parse()?,
            },
            other => {
                return Err(Error::State(format!(
                    "policy kind {other:?} is valid in the library but has no kernel translation"
                )))
            }
        };
        let policy = KernelPolicy {
            spec: spec.trim().to_string(),
            rule,
        };
        let range = match kind {
            "rotate" if !arg.is_empty() => Some(arg.parse::<PortRange>()?),
            "spread-rotate" => arg
                .split_once('@')
                .map(|(_, p)| p.parse::<PortRange>())
                .transpose()?,
            _ => None,
        };
        policy.agrees_with(&*library, range)?;
        Ok(policy)
    }

    /// The spec as given.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// What the program does.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Checks that the library's policy makes the same kind of choice for an
    /// IPv4 and an IPv6 destination, so the two cannot drift apart silently.
    /// `range` is the explicit port range of the spec, if any (bare `rotate`
    /// reads the namespace's, which the library reads in its own thread).
    fn agrees_with(
        &self,
        library: &dyn fivetuple::LocalPolicy,
        range: Option<PortRange>,
    ) -> Result<(), Error> {
        for remote in ["127.0.0.1:9", "[::1]:9"] {
            let remote: SocketAddr = remote.parse().expect("literal address");
            let choice = library.choose(remote, 1);
            let family_has = |s: &[IpAddr]| s.iter().any(|a| a.is_ipv6() == remote.is_ipv6());
            let ok = match (&self.rule, &choice) {
                (Rule::Kernel, Choice::Kernel) => true,
                (Rule::Rotate { .. }, Choice::Endpoint(a)) => {
                    a.ip().is_unspecified() && range.is_none_or(|r| r.contains(a.port()))
                }
                (Rule::Spread { sources }, Choice::Address(a)) => sources.contains(a),
                (Rule::SpreadRotate { sources, .. }, Choice::Endpoint(a)) => {
                    sources.contains(&a.ip()) && range.is_none_or(|r| r.contains(a.port()))
                }
                (
                    Rule::Spread { sources } | Rule::SpreadRotate { sources, .. },
                    Choice::GiveUp(_),
                ) => !family_has(sources),
                // The library falls back to rotation where the option is missing.
                (Rule::Window { .. }, _) => true,
                _ => false,
            };
            if !ok {
                return Err(Error::State(format!(
                    "internal: the kernel translation of {:?} ({:?}) disagrees with the library's choice {choice:?}",
                    self.spec, self.rule
                )));
            }
        }
        Ok(())
    }

    fn config(&self, only: Option<&Only>) -> Config {
        let mut c = Config::default();
        match &self.rule {
            Rule::Kernel => c.kind = KIND_KERNEL,
            Rule::Rotate { ports } => {
                c.kind = KIND_ROTATE;
                c.nports = ports.len() as u32;
            }
            Rule::Spread { sources } => {
                c.kind = KIND_SPREAD;
                (c.nsrc4, c.nsrc6) = family_counts(sources);
            }
            Rule::SpreadRotate { sources, ports } => {
                c.kind = KIND_SPREAD_ROTATE;
                c.nports = ports.len() as u32;
                (c.nsrc4, c.nsrc6) = family_counts(sources);
            }
            Rule::Window { ports } => {
                c.kind = KIND_WINDOW;
                c.window_lo = ports.lo();
                c.window_hi = ports.hi();
            }
        }
        if let Some(only) = only {
            c.only_family = if only.net.is_ipv4() { 4 } else { 6 };
            c.only_addr = words(only.net);
            c.only_prefix = u32::from(only.prefix);
            c.only_port = only.port.unwrap_or(0);
        }
        c
    }

    fn ports(&self) -> &[u16] {
        match &self.rule {
            Rule::Rotate { ports } | Rule::SpreadRotate { ports, .. } => ports,
            _ => &[],
        }
    }

    fn sources(&self, v6: bool) -> Vec<IpAddr> {
        match &self.rule {
            Rule::Spread { sources } | Rule::SpreadRotate { sources, .. } => sources
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .copied()
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for KernelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// The range's ports minus the reserved ones, the same set the library's
/// [`Rotation`] uses (its error when none is left).
fn usable(range: PortRange, reserved: &ReservedPorts) -> Result<Vec<u16>, Error> {
    let library = Rotation::with_reserved(range, reserved)?;
    let ports: Vec<u16> = range.iter().filter(|p| !reserved.contains(*p)).collect();
    debug_assert_eq!(ports.len(), library.usable_ports());
    Ok(ports)
}

fn family_counts(sources: &[IpAddr]) -> (u32, u32) {
    let v4 = sources.iter().filter(|a| a.is_ipv4()).count() as u32;
    (v4, sources.len() as u32 - v4)
}

/// A destination filter, `DEST[/PREFIX][:PORT]`: the policy applies only to
/// connects to that network (and port). IPv6 takes brackets when a port
/// follows: `[::1]:443`, `[fd00::]/8:443`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Only {
    /// The network address (host bits are ignored).
    pub net: IpAddr,
    /// Prefix length; 32 or 128 for one address.
    pub prefix: u8,
    /// Destination port, or any.
    pub port: Option<u16>,
}

impl FromStr for Only {
    type Err = Error;

    fn from_str(s: &str) -> Result<Only, Error> {
        let bad = |reason: String| Error::BadOnly {
            value: s.to_string(),
            reason,
        };
        let t = s.trim();
        let (addr_part, port_part) = if let Some(rest) = t.strip_prefix('[') {
            // [ADDR]/P:PORT, [ADDR]:PORT, [ADDR/P]:PORT
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("no closing ']'".into()))?;
            let (prefix, port) = match after.split_once(':') {
                Some((p, port)) => (p, Some(port)),
                None => (after, None),
            };
            (format!("{inside}{prefix}"), port)
        } else if t.matches(':').count() > 1 {
            (t.to_string(), None) // bare IPv6, no port
        } else {
            match t.split_once(':') {
                Some((a, p)) => (a.to_string(), Some(p)),
                None => (t.to_string(), None),
            }
        };
        let (addr, prefix) = match addr_part.split_once('/') {
            Some((a, p)) => (a.to_string(), Some(p.to_string())),
            None => (addr_part.clone(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(format!("prefix {p:?} is not a number from 0 to {max}")))?,
        };
        let port = match port_part {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("port {p:?} is not a number from 1 to 65535")))?,
            ),
        };
        Ok(Only { net, prefix, port })
    }
}

impl fmt::Display for Only {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.net.is_ipv4() { 32 } else { 128 };
        let addr = if self.prefix == full {
            self.net.to_string()
        } else {
            format!("{}/{}", self.net, self.prefix)
        };
        match (self.port, self.net) {
            (Some(p), IpAddr::V6(_)) => write!(f, "[{addr}]:{p}"),
            (Some(p), _) => write!(f, "{addr}:{p}"),
            (None, _) => f.write_str(&addr),
        }
    }
}

const KIND_KERNEL: u32 = 0;
const KIND_ROTATE: u32 = 1;
const KIND_SPREAD: u32 = 2;
const KIND_SPREAD_ROTATE: u32 = 3;
const KIND_WINDOW: u32 = 4;

/// Mirrors `struct ft_config` in `src/bpf/policy.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Config {
    kind: u32,
    nports: u32,
    nsrc4: u32,
    nsrc6: u32,
    window_lo: u16,
    window_hi: u16,
    only_family: u32,
    only_addr: [u32; 4],
    only_prefix: u32,
    only_port: u16,
    pad: u16,
    last_error: i32,
}

// SAFETY: repr(C), only integer fields, no padding holes the kernel could
// leak (the layout is 13 packed 4-byte slots).
unsafe impl Pod for Config {}

/// Mirrors `struct ft_in6`: an IPv6 address in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct In6([u32; 4]);

// SAFETY: repr(C) array of u32.
unsafe impl Pod for In6 {}

const META_LEN: usize = 1024;

/// Counters of one attached policy (`enum ft_stat` in `src/bpf/policy.h`),
/// summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// TCP connects the policy applied to.
    pub connects: u64,
    /// Binds done (or windows set).
    pub binds: u64,
    /// `bpf_bind` failures: the kernel chose the port instead.
    pub bind_errors: u64,
    /// `bpf_setsockopt` failures (`SO_REUSEADDR`, `IP_LOCAL_PORT_RANGE`).
    pub setsockopt_errors: u64,
    /// Connects of sockets the application had bound itself (left alone).
    pub already_bound: u64,
    /// Connects to destinations outside the filter (left alone).
    pub filtered: u64,
    /// Connects with no source address of the destination's family.
    pub no_source: u64,
}

impl Stats {
    fn from_slots(v: [u64; 7]) -> Stats {
        Stats {
            connects: v[0],
            binds: v[1],
            bind_errors: v[2],
            setsockopt_errors: v[3],
            already_bound: v[4],
            filtered: v[5],
            no_source: v[6],
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connects {} binds {} bind_errors {} setsockopt_errors {} already_bound {} filtered {} no_source {}",
            self.connects,
            self.binds,
            self.bind_errors,
            self.setsockopt_errors,
            self.already_bound,
            self.filtered,
            self.no_source
        )
    }
}

/// The policy programs, loaded and configured, not yet attached (or attached
/// for as long as this value lives).
#[derive(Debug)]
pub struct Loaded {
    ebpf: Ebpf,
    policy: KernelPolicy,
    only: Option<Only>,
    cgroup: Option<PathBuf>,
    links: Vec<(usize, CgroupSockAddrLinkId)>,
}

const PROGRAMS: [&str; 2] = ["fivetuple_connect4", "fivetuple_connect6"];

/// Checks what is missing, then loads the programs with `policy` and `only`
/// written into their maps. A `window` policy is refused unless
/// [`window_allowed`] says the kernel accepts it.
pub fn load(policy: &KernelPolicy, only: Option<&Only>) -> Result<Loaded, Error> {
    let missing = probe::cgroup_attach_requirements();
    if !missing.is_empty() {
        return Err(Error::Missing(MissingList(missing)));
    }
    load_unchecked(policy, only)
}

fn load_unchecked(policy: &KernelPolicy, only: Option<&Only>) -> Result<Loaded, Error> {
    let ports = policy.ports();
    let (src4, src6) = (policy.sources(false), policy.sources(true));
    let entries = |n: usize| n.max(1) as u32;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("ft_ports", entries(ports.len()))
        .map_max_entries("ft_src4", entries(src4.len()))
        .map_max_entries("ft_src6", entries(src6.len()))
        .load(crate::objects::POLICY)
        .map_err(classify_load_error)?;
    fill(&mut ebpf, "ft_config", [policy.config(only)])?;
    fill(&mut ebpf, "ft_ports", ports.iter().copied())?;
    fill(&mut ebpf, "ft_src4", src4.iter().map(|a| words(*a)[0]))?;
    fill(&mut ebpf, "ft_src6", src6.iter().map(|a| In6(words(*a))))?;
    // Start the shared counters at random offsets, as the library's Rotation
    // does, so a restart does not walk into its own TIME_WAITs.
    fill(
        &mut ebpf,
        "ft_next",
        [0; 2].map(|_: u8| rand::random::<u64>() >> 1),
    )?;
    for name in PROGRAMS {
        program(&mut ebpf, name)?
            .load()
            .map_err(|e| classify_program_error(name, e))?;
    }
    Ok(Loaded {
        ebpf,
        policy: policy.clone(),
        only: only.copied(),
        cgroup: None,
        links: Vec::new(),
    })
}

/// Writes `values` at indexes 0, 1, ... of the array map `name`.
fn fill<V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    values: impl IntoIterator<Item = V>,
) -> Result<(), Error> {
    let map = ebpf.map_mut(name).expect("map in the object");
    let mut array: Array<_, V> =
        Array::try_from(map).map_err(|e| Error::io(format!("opening {name}"), e))?;
    for (i, v) in values.into_iter().enumerate() {
        array
            .set(i as u32, v, 0)
            .map_err(|e| Error::io(format!("writing {name}[{i}]"), e))?;
    }
    Ok(())
}

/// An address as the program stores it: 32-bit words in network order
/// (IPv4 in the first word).
fn words(addr: IpAddr) -> [u32; 4] {
    let mut w = [0u32; 4];
    match addr {
        IpAddr::V4(a) => w[0] = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            for (w, chunk) in w.iter_mut().zip(a.octets().chunks(4)) {
                *w = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
            }
        }
    }
    w
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr, Error> {
    ebpf.program_mut(name)
        .expect("program in the object")
        .try_into()
        .map_err(|e| Error::io(format!("{name} is not a cgroup sock_addr program"), e))
}

fn classify_load_error(e: aya::EbpfError) -> Error {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &e {
        if io_error.raw_os_error() == Some(libc::EPERM) {
            return Error::Missing(MissingList(vec![Missing::CapBpf]));
        }
    }
    Error::io("loading the BPF policy object", e)
}

fn classify_program_error(name: &str, e: aya::programs::ProgramError) -> Error {
    if let Some(missing) = probe::load_refusal(&e, &[Missing::CapBpf]) {
        return Error::Missing(missing);
    }
    Error::io(format!("loading the BPF program {name}"), e)
}

impl Loaded {
    /// Attaches both programs to the cgroup at `cgroup` (a directory of the
    /// cgroup v2 hierarchy). They stay attached while this value lives, or
    /// until [`pin`](Loaded::pin) hands them to the bpf filesystem.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), Error> {
        let dir = fs::File::open(cgroup)
            .map_err(|e| Error::io(format!("opening cgroup {}", cgroup.display()), e))?;
        for (index, name) in PROGRAMS.into_iter().enumerate() {
            let program = program(&mut self.ebpf, name)?;
            // A bpf_link (Linux 5.7+) is always multi-attach; Single maps to
            // flags 0, which link_create requires.
            let id = program.attach(&dir, CgroupAttachMode::Single).map_err(|e| {
                if matches!(&e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EPERM)) {
                    Error::Missing(MissingList(vec![Missing::CapNetAdmin]))
                } else {
                    Error::io(format!("attaching {name} to cgroup {}", cgroup.display()), e)
                }
            })?;
            self.links.push((index, id));
        }
        self.cgroup = Some(cgroup.to_path_buf());
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Result<Stats, Error> {
        read_stats(self.ebpf.map("ft_stats").expect("ft_stats in the object"))
    }

    /// The policy.
    pub fn policy(&self) -> &KernelPolicy {
        &self.policy
    }

    /// Reads back the error of the last `bpf_setsockopt(IP_LOCAL_PORT_RANGE)`
    /// (0: none), for [`window_allowed`].
    fn last_error(&self) -> Result<i32, Error> {
        let config: Array<_, Config> =
            Array::try_from(self.ebpf.map("ft_config").expect("ft_config"))
                .map_err(|e| Error::io("opening ft_config", e))?;
        Ok(config
            .get(&0, 0)
            .map_err(|e| Error::io("reading ft_config", e))?
            .last_error)
    }

    /// Hands the attachment to the bpf filesystem under `dir` (created, must
    /// not exist): the links `link4`/`link6` and the maps `ft_config`,
    /// `ft_stats`, `ft_meta`, so the policy outlives this process and
    /// [`list`] can read it. Call after [`attach`](Loaded::attach).
    pub fn pin(mut self, dir: &Path) -> Result<(), Error> {
        let cgroup = self
            .cgroup
            .clone()
            .ok_or_else(|| Error::State("pin before attach".into()))?;
        fs::create_dir(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let result = self.pin_into(dir, &cgroup);
        if result.is_err() {
            let _ = remove_pins(dir);
        }
        result
    }

    fn pin_into(&mut self, dir: &Path, cgroup: &Path) -> Result<(), Error> {
        let only = self.only.map(|o| o.to_string()).unwrap_or_default();
        let text = format!("{}\n{}\n{}\n", self.policy.spec, cgroup.display(), only);
        let mut meta = [0u8; META_LEN];
        let n = text.len().min(META_LEN - 1);
        meta[..n].copy_from_slice(&text.as_bytes()[..n]);
        fill(&mut self.ebpf, "ft_meta", [meta])?;
        for name in ["ft_config", "ft_stats", "ft_meta"] {
            self.ebpf
                .map(name)
                .expect("map in the object")
                .pin(dir.join(name))
                .map_err(|e| Error::io(format!("pinning {name} under {}", dir.display()), e))?;
        }
        for (index, id) in std::mem::take(&mut self.links) {
            let name = PROGRAMS[index];
            let file = ["link4", "link6"][index];
            let link = program(&mut self.ebpf, name)?
                .take_link(id)
                .map_err(|e| Error::io(format!("taking the link of {name}"), e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| {
                Error::io(
                    format!("the link of {name} is not a bpf_link (pinning needs Linux 5.7+)"),
                    e,
                )
            })?;
            let pinned: PinnedLink = fd_link.pin(dir.join(file)).map_err(|e| {
                Error::io(
                    format!("pinning the link of {name} under {}", dir.display()),
                    e,
                )
            })?;
            drop(pinned);
        }
        Ok(())
    }
}

fn read_stats(map: &Map) -> Result<Stats, Error> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|e| Error::io("opening the policy counters", e))?;
    let mut slots = [0u64; 7];
    for (i, slot) in slots.iter_mut().enumerate() {
        let values = array
            .get(&(i as u32), 0)
            .map_err(|e| Error::io("reading the policy counters", e))?;
        *slot = values.iter().sum();
    }
    Ok(Stats::from_slots(slots))
}

/// One policy attached through the bpf filesystem, as [`list`] finds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pinned {
    /// The pin directory.
    pub dir: PathBuf,
    /// The policy spec.
    pub spec: String,
    /// The cgroup it is attached to.
    pub cgroup: PathBuf,
    /// The destination filter, if any.
    pub only: Option<String>,
    /// Its counters.
    pub stats: Stats,
}

/// The pin directory of `cgroup` under `root`: named after the cgroup
/// directory's inode number (the cgroup id), unique while the cgroup exists.
pub fn pin_dir(root: &Path, cgroup: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        fs::metadata(cgroup).map_err(|e| Error::io(format!("cgroup {}", cgroup.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::State(format!(
            "{} is not a cgroup directory",
            cgroup.display()
        )));
    }
    Ok(root.join(format!("cgroup-{}", meta.ino())))
}

/// Loads `policy`, attaches it to `cgroup` and pins it under `root`
/// (see [`pin_dir`]), so it stays after this process exits. Refuses when a
/// policy is already pinned there.
pub fn attach_pinned(
    root: &Path,
    cgroup: &Path,
    policy: &KernelPolicy,
    only: Option<&Only>,
) -> Result<PathBuf, Error> {
    let dir = pin_dir(root, cgroup)?;
    if dir.exists() {
        return Err(Error::State(format!(
            "a fivetuple policy is already attached to {} (pinned at {}); detach it first",
            cgroup.display(),
            dir.display()
        )));
    }
    crate::cgroup::ensure_bpffs(root)?;
    let mut loaded = load(policy, only)?;
    loaded.attach(cgroup)?;
    loaded.pin(&dir)?;
    Ok(dir)
}

/// Detaches the policy pinned for `cgroup` under `root` and removes its pins.
/// The kernel detaches a link when its last reference (the pin) goes.
///
/// When the cgroup no longer exists, the pins whose recorded cgroup path is
/// `cgroup` are removed instead, so a policy never outlives its cgroup in
/// the listing.
pub fn detach_pinned(root: &Path, cgroup: &Path) -> Result<PathBuf, Error> {
    let dir = match pin_dir(root, cgroup) {
        Ok(dir) => dir,
        Err(_) => list(root)?
            .into_iter()
            .find(|p| p.cgroup == cgroup)
            .map(|p| p.dir)
            .ok_or_else(|| {
                Error::State(format!(
                    "no fivetuple policy is attached to {} (it is not a cgroup now, and no pin under {} records it)",
                    cgroup.display(),
                    root.display()
                ))
            })?,
    };
    if !dir.exists() {
        return Err(Error::State(format!(
            "no fivetuple policy is attached to {} (nothing at {})",
            cgroup.display(),
            dir.display()
        )));
    }
    remove_pins(&dir)?;
    Ok(dir)
}

fn remove_pins(dir: &Path) -> Result<(), Error> {
    for entry in
        fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        let path = entry
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    fs::remove_dir(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

/// The policies pinned under `root` with their counters (none when `root`
/// does not exist).
pub fn list(root: &Path) -> Result<Vec<Pinned>, Error> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", root.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let dir = entry
            .map_err(|e| Error::io(format!("reading {}", root.display()), e))?
            .path();
        if !dir.is_dir() {
            continue;
        }
        let open = |name: &str| {
            MapData::from_pin(dir.join(name))
                .map_err(|e| Error::io(format!("opening {}", dir.join(name).display()), e))
        };
        let meta_map = Map::Array(open("ft_meta")?);
        let meta: Array<_, [u8; META_LEN]> =
            Array::try_from(&meta_map).map_err(|e| Error::io("opening ft_meta", e))?;
        let raw = meta
            .get(&0, 0)
            .map_err(|e| Error::io("reading ft_meta", e))?;
        let text =
            String::from_utf8_lossy(&raw[..raw.iter().position(|b| *b == 0).unwrap_or(META_LEN)])
                .into_owned();
        let mut lines = text.lines();
        let spec = lines.next().unwrap_or("").to_string();
        let cgroup = PathBuf::from(lines.next().unwrap_or(""));
        let only = lines.next().filter(|s| !s.is_empty()).map(str::to_string);
        let stats = read_stats(&Map::PerCpuArray(open("ft_stats")?))?;
        out.push(Pinned {
            dir,
            spec,
            cgroup,
            only,
            stats,
        });
    }
    out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    Ok(out)
}

/// Tries `bpf_setsockopt(SOL_IP, IP_LOCAL_PORT_RANGE)` from the hook: loads
/// a `window` policy, attaches it to a temporary cgroup under `parent`, has a
/// forked child in that cgroup connect to 127.0.0.1:9, and reads back what
/// the helper returned. `Ok(Err(errno))` when the kernel refuses.
pub fn window_allowed(parent: &Path) -> Result<Result<(), i32>, Error> {
    let policy = KernelPolicy {
        spec: "window:40000-40099".into(),
        rule: Rule::Window {
            ports: PortRange::new(40000, 40099)?,
        },
    };
    let mut loaded = load_unchecked(&policy, None)?;
    let cgroup = crate::cgroup::Transient::create(parent, "probe")?;
    loaded.attach(cgroup.path())?;
    cgroup.run_connect_probe()?;
    let stats = loaded.stats()?;
    let err = loaded.last_error()?;
    drop(loaded);
    cgroup.remove()?;
    if stats.binds > 0 {
        Ok(Ok(()))
    } else if err != 0 {
        Ok(Err(-err))
    } else {
        Err(Error::State(
            "the window probe's connect did not reach the hook".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<KernelPolicy, Error> {
        KernelPolicy::parse_with(
            spec,
            &ReservedPorts::parse("20001,20003-20004").unwrap(),
            PortRange::new(40000, 40009).unwrap(),
        )
    }

    #[test]
    fn translates_each_kind_with_the_library() {
        assert_eq!(parse("kernel").unwrap().rule, Rule::Kernel);
        assert_eq!(
            parse("rotate:20000-20005").unwrap().rule,
            Rule::Rotate {
                ports: vec![20000, 20002, 20005]
            }
        );
        assert_eq!(
            parse("rotate").unwrap().rule,
            Rule::Rotate {
                ports: (40000..=40009).collect()
            }
        );
        let ips = |s: &[&str]| {
            s.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            parse("spread:127.0.0.2-127.0.0.4").unwrap().rule,
            Rule::Spread {
                sources: ips(&["127.0.0.2", "127.0.0.3", "127.0.0.4"])
            }
        );
        assert_eq!(
            parse("spread-rotate:127.0.0.2,::1@20000-20002")
                .unwrap()
                .rule,
            Rule::SpreadRotate {
                sources: ips(&["127.0.0.2", "::1"]),
                ports: vec![20000, 20002]
            }
        );
        assert_eq!(
            parse("window:40000-40999").unwrap().rule,
            Rule::Window {
                ports: PortRange::new(40000, 40999).unwrap()
            }
        );
    }

    #[test]
    fn the_library_rejects_bad_specs_with_its_own_words() {
        for (spec, needle) in [
            ("bogus", "unknown kind"),
            ("rotate:300-200", "300-200"),
            ("spread:127.0.0.x", "\"127.0.0.x\""),
            ("spread-rotate:127.0.0.2", "ADDRESSES@PORTS"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(matches!(e, Error::Spec(_)), "{spec}: {e:?}");
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
        let e = parse("rotate:20001-20001").unwrap_err();
        assert!(e.to_string().contains("20001-20001"), "{e}");
    }

    #[test]
    fn only_filters_parse_and_name_bad_values() {
        let o: Only = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            (o.net, o.prefix, o.port),
            ("127.0.0.1".parse().unwrap(), 32, Some(8080))
        );
        let o: Only = "10.0.0.0/8".parse().unwrap();
        assert_eq!((o.prefix, o.port), (8, None));
        let o: Only = "[::1]:443".parse().unwrap();
        assert_eq!(
            (o.net, o.prefix, o.port),
            ("::1".parse().unwrap(), 128, Some(443))
        );
        let o: Only = "[fd00::]/8:443".parse().unwrap();
        assert_eq!((o.prefix, o.port), (8, Some(443)));
        let o: Only = "fd00::/16".parse().unwrap();
        assert_eq!((o.prefix, o.port), (16, None));
        assert_eq!(o.to_string(), "fd00::/16");
        assert_eq!(
            "[::1]:443".parse::<Only>().unwrap().to_string(),
            "[::1]:443"
        );
        for (bad, needle) in [
            ("127.0.0.x", "\"127.0.0.x\""),
            ("10.0.0.0/33", "\"33\""),
            ("127.0.0.1:0", "\"0\""),
            ("[::1:443", "']'"),
        ] {
            let e = bad.parse::<Only>().unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("DEST[/PREFIX][:PORT]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn config_mirrors_the_c_struct() {
        assert_eq!(std::mem::size_of::<Config>(), 52);
        let c = parse("spread-rotate:127.0.0.2,127.0.0.3,::1@20000-20002")
            .unwrap()
            .config(Some(&"127.0.0.0/8:80".parse().unwrap()));
        assert_eq!(
            (c.kind, c.nports, c.nsrc4, c.nsrc6),
            (KIND_SPREAD_ROTATE, 2, 2, 1)
        );
        assert_eq!((c.only_family, c.only_prefix, c.only_port), (4, 8, 80));
        assert_eq!(c.only_addr[0].to_ne_bytes(), [127, 0, 0, 0]);
    }
}

//! The model's types: what an analysis says, serialized as doctor's JSON
//! (docs/doctor.md), and the thresholds that grade it.

use std::net::{IpAddr, SocketAddr};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::settings::{Counters, Settings};
use crate::socket::{Socket, Source, TcpState};

/// How bad something is; orders as ok < warning < critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Nothing to do.
    Ok,
    /// Good to know; does not change the exit code.
    Info,
    /// Past the warning threshold.
    Warning,
    /// Past the critical threshold.
    Critical,
}

/// When a destination is a warning or critical: by utilization, in percent,
/// or by time to exhaustion, in seconds, whichever is worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Default 50: the connect() latency cliff (odd ports are scanned after even ones).
    pub warn_pct: f64,
    /// Default 90.
    pub crit_pct: f64,
    /// Warning when the ports run out in less than this many seconds at the current rate. Default 600.
    pub warn_seconds: f64,
    /// Critical when the ports run out in less than this many seconds at the current rate. Default 60.
    pub crit_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warn_pct: 50.0,
            crit_pct: 90.0,
            warn_seconds: 600.0,
            crit_seconds: 60.0,
        }
    }
}

impl Thresholds {
    /// The severity of a destination: the worse of what its utilization
    /// (0.0 to 1.0) and its time to exhaustion say. An exhausted destination
    /// is critical whatever the thresholds.
    pub fn severity(
        &self,
        utilization: f64,
        seconds_to_exhaustion: Option<f64>,
        exhausted: bool,
    ) -> Severity {
        if exhausted {
            return Severity::Critical;
        }
        let pct = utilization * 100.0;
        let by_use = if pct >= self.crit_pct {
            Severity::Critical
        } else if pct >= self.warn_pct {
            Severity::Warning
        } else {
            Severity::Ok
        };
        let by_time = match seconds_to_exhaustion {
            Some(t) if t < self.crit_seconds => Severity::Critical,
            Some(t) if t < self.warn_seconds => Severity::Warning,
            _ => Severity::Ok,
        };
        by_use.max(by_time)
    }
}

/// One scan of a namespace.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The sockets.
    pub sockets: Vec<Socket>,
    /// Where they came from.
    pub source: Source,
    /// The settings at the time.
    pub settings: Settings,
    /// The counters at the time.
    pub counters: Counters,
    /// Why netlink was not used, when [`crate::Reader::Auto`] fell back to /proc.
    pub fallback_reason: Option<String>,
}

/// A group of outbound sockets that share one port budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    /// Local address.
    pub local_ip: IpAddr,
    /// Remote address.
    pub remote_ip: IpAddr,
    /// Remote port.
    pub remote_port: u16,
}

/// TIME_WAIT sockets that the kernel frees soon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Freeing {
    /// Within 10 s.
    pub within_10s: u32,
    /// Within 30 s.
    pub within_30s: u32,
    /// Within 60 s.
    pub within_60s: u32,
}

/// A process that owns sockets of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessRef {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// How many of the destination's sockets it holds.
    pub sockets: u32,
}

/// Headroom of one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    /// Local address.
    pub local_ip: IpAddr,
    /// Remote address.
    pub remote_ip: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Sockets per state (only states with sockets).
    pub states: StateCounts,
    /// Sockets holding a port of the usable range.
    pub in_use: u32,
    /// Usable ports: range minus reserved ports minus ports held by listeners and binds.
    pub capacity: u32,
    /// `in_use / capacity`, 0.0 to 1.0; 1.0 when capacity is 0 (no port left at all).
    pub utilization: f64,
    /// No free port is left for a new connection: `in_use >= capacity`, capacity 0 included.
    pub exhausted: bool,
    /// TIME_WAIT sockets freeing within 10/30/60 s.
    pub time_wait_freeing: Freeing,
    /// New connections per second between the two scans; `None` with a single scan.
    pub rate_per_s: Option<f64>,
    /// Connections per second this destination can sustain.
    pub sustainable_rate_per_s: f64,
    /// Whether `tcp_tw_reuse` applies to this destination (and so to the sustainable rate).
    pub tw_reuse_applies: bool,
    /// Seconds until no port is left at the current rate; `None` when not heading there.
    pub seconds_to_exhaustion: Option<f64>,
    /// Sockets whose local port is outside the usable range: they must have been bound explicitly.
    pub explicit_binds: u32,
    /// Owning processes, most sockets first.
    pub processes: Vec<ProcessRef>,
    /// Severity from the thresholds.
    pub severity: Severity,
}

impl Destination {
    /// The group key.
    pub fn key(&self) -> DestKey {
        DestKey {
            local_ip: self.local_ip,
            remote_ip: self.remote_ip,
            remote_port: self.remote_port,
        }
    }

    /// `local -> remote:port`, for messages.
    pub fn label(&self) -> String {
        format!(
            "{} -> {}",
            self.local_ip,
            SocketAddr::new(self.remote_ip, self.remote_port)
        )
    }

    /// Sockets of this destination in `state`.
    pub fn count(&self, state: TcpState) -> u32 {
        self.states.get(state)
    }
}

/// A finding with its advice.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable machine-readable code, serialized as its snake_case name
    /// (`port_utilization`).
    pub code: FindingCode,
    /// The destination it is about (`local -> remote:port`), if any.
    pub destination: Option<String>,
    /// What was seen.
    pub message: String,
    /// Concrete changes that help, most effective first.
    pub advice: Vec<String>,
}

/// Namespace-wide totals.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    /// All sockets.
    pub sockets: u32,
    /// Listeners.
    pub listening: u32,
    /// Server-side sockets: accepted ones (local port is a listening port) and
    /// those the fan-out rule finds (see [`Directions`](super::Directions)); never destinations.
    pub inbound: u32,
    /// Of `inbound`, those with no listener on their local port: a stopped
    /// server's TIME_WAITs, or connections it left behind.
    pub inbound_without_listener: u32,
    /// Outbound sockets, grouped into destinations.
    pub outbound: u32,
    /// TIME_WAIT sockets (any direction).
    pub time_wait: u32,
    /// Sockets bound but neither listening nor connected (bind() before connect()).
    pub bound_unconnected: u32,
    /// Ports of the range held by listeners, bound sockets and the server side
    /// of connections: lost to every destination.
    pub ports_held_by_binds: u32,
    /// Usable ports per destination.
    pub usable_ports: u32,
}

/// The whole analysis of a namespace.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// Which reader produced the table.
    pub source: Source,
    /// Totals.
    pub totals: Totals,
    /// Every destination, highest utilization first.
    pub destinations: Vec<Destination>,
    /// Findings, worst first.
    pub findings: Vec<Finding>,
    /// Caveats about the data (e.g. partial process attribution).
    pub notes: Vec<String>,
    /// `Tcp ActiveOpens` per second between the two scans.
    pub active_opens_per_s: Option<f64>,
    /// Worst severity of the destinations (ok, warning or critical).
    pub status: Severity,
}

/// Sockets per TCP state of one destination. Iterates and serializes only
/// the states with sockets, by state name (`CLOSE_WAIT`, `ESTABLISHED`,
/// ..., `TIME_WAIT`), as a JSON object from name to count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([u32; TcpState::ALL.len()]);

/// [`TcpState::ALL`] sorted by name: the order of the JSON object and the
/// exporter's series.
const BY_NAME: [TcpState; TcpState::ALL.len()] = [
    TcpState::Close,
    TcpState::CloseWait,
    TcpState::Closing,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::SynRecv,
    TcpState::SynSent,
    TcpState::TimeWait,
];

impl StateCounts {
    /// Counts indexed by [`TcpState::index`].
    pub fn from_counts(counts: [u32; TcpState::ALL.len()]) -> StateCounts {
        StateCounts(counts)
    }

    /// Sockets in `state`.
    pub fn get(&self, state: TcpState) -> u32 {
        self.0[state.index()]
    }

    /// Adds `n` sockets in `state`.
    pub fn add(&mut self, state: TcpState, n: u32) {
        self.0[state.index()] += n;
    }

    /// All sockets.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// The states with sockets and their counts, by state name.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u32)> + '_ {
        BY_NAME
            .iter()
            .map(|&s| (s, self.get(s)))
            .filter(|&(_, n)| n > 0)
    }
}

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (state, n) in self.iter() {
            m.serialize_entry(state.name(), &n)?;
        }
        m.end()
    }
}

/// What a [`Finding`] is about: a stable code, serialized as its snake_case
/// name, which monitoring and docs/doctor.md rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingCode {
    /// `no_usable_ports`: `connect()` has no port to pick at all.
    NoUsablePorts,
    /// `port_utilization`: a destination past a threshold, or taking ports faster than it can sustain.
    PortUtilization,
    /// `explicit_bind`: sockets on ports `connect()` would not pick now.
    ExplicitBind,
    /// `bind_before_connect`: bound, unconnected sockets hold ports of the range.
    BindBeforeConnect,
    /// `tw_reuse_without_timestamps`: `tcp_tw_reuse` set but timestamps off.
    TwReuseWithoutTimestamps,
    /// `time_wait_overflow`: `tcp_max_tw_buckets` was reached.
    TimeWaitOverflow,
    /// `nat_port_utilization`: a source-NAT destination past a threshold (the NAT view).
    NatPortUtilization,
    /// `conntrack_drops`: conntrack's `insert_failed`/`drop` counters rose.
    ConntrackDrops,
    /// `conntrack_table_full`: the conntrack table is near `nf_conntrack_max`.
    ConntrackTableFull,
    /// `shared_tcp_ehash`: many namespaces of a node share the host's TCP
    /// established hash while the node holds many sockets (`--all-netns`).
    SharedTcpEhash,
}

impl FindingCode {
    /// The code as it appears in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingCode::NoUsablePorts => "no_usable_ports",
            FindingCode::PortUtilization => "port_utilization",
            FindingCode::ExplicitBind => "explicit_bind",
            FindingCode::BindBeforeConnect => "bind_before_connect",
            FindingCode::TwReuseWithoutTimestamps => "tw_reuse_without_timestamps",
            FindingCode::TimeWaitOverflow => "time_wait_overflow",
            FindingCode::NatPortUtilization => "nat_port_utilization",
            FindingCode::ConntrackDrops => "conntrack_drops",
            FindingCode::ConntrackTableFull => "conntrack_table_full",
            FindingCode::SharedTcpEhash => "shared_tcp_ehash",
        }
    }
}

impl std::fmt::Display for FindingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FindingCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

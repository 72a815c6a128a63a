//! The occupancy model: from a socket table and the settings to
//! per-destination headroom, rate, time to exhaustion and findings.
//!
//! Capacity is counted per (local IP, remote IP, remote port), because a
//! plain `connect()` shares ports across destinations and only the 4-tuple
//! must be unique (`__inet_hash_connect()`, DESIGN §2). Everything here is
//! pure: it takes tables that were read elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::procs::Owners;
use crate::settings::{Counters, Settings};
use crate::socket::{Socket, Source, TcpState};

/// Linux TIME_WAIT length, `TCP_TIMEWAIT_LEN` (include/net/tcp.h): fixed at compile time.
pub const TIME_WAIT_SECS: f64 = 60.0;

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
    pub states: BTreeMap<&'static str, u32>,
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

    fn count(&self, state: TcpState) -> u32 {
        self.states.get(state.name()).copied().unwrap_or(0)
    }
}

/// A finding with its advice.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable machine-readable code, e.g. `port_utilization`.
    pub code: &'static str,
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
    /// those the fan-out rule finds (see [`Directions`]); never destinations.
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

// The per-socket maps of one analysis hash 4-tuples from the local socket
// table, not attacker-chosen request data, so rustc's FxHash is safe here;
// at 100k sockets SipHash was a large share of an exporter scrape.
use rustc_hash::{FxHashMap as FxMap, FxHashSet as FxSet};

#[derive(Default)]
struct Acc {
    states: [u32; 11],
    in_use: u32,
    explicit: u32,
    freeing: Freeing,
    new: u32,
}

/// Ports of LISTEN sockets: a socket whose local port is one of them is inbound.
pub fn listening_ports(sockets: &[Socket]) -> HashSet<u16> {
    sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local.port())
        .collect()
}

/// Whether a socket may be the client side of a connection: not a listener,
/// connected, and its local port is not a listening port. [`Directions`]
/// then tells the client side from the server side of a stopped server.
pub fn may_be_outbound(s: &Socket, listening: &HashSet<u16>) -> bool {
    s.state != TcpState::Listen && s.remote.port() != 0 && !listening.contains(&s.local.port())
}

/// The IPv4 form of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`); other
/// addresses unchanged. A dual-stack socket connecting to `::ffff:a.b.c.d`
/// is an IPv4 connection to the kernel (`tcp_v6_connect()` hands it to
/// `tcp_v4_connect()`): it takes its port from the same pool as an IPv4
/// socket to `a.b.c.d`, so both count toward one destination.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn loopback(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback(),
    }
}

/// The destination a socket would count toward, in canonical (IPv4) form.
pub fn dest_key(s: &Socket) -> DestKey {
    DestKey {
        local_ip: canonical_ip(s.local.ip()),
        remote_ip: canonical_ip(s.remote.ip()),
        remote_port: s.remote.port(),
    }
}

/// Which side of its connection a socket is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A `LISTEN` socket.
    Listener,
    /// Not connected (no remote port): bound, or closed.
    Unconnected,
    /// The server side: its local port is a listening port.
    Inbound,
    /// The server side of a server that no longer listens, found by fan-out.
    InboundWithoutListener,
    /// The client side: it holds a port of its destination's budget.
    Outbound,
}

/// Sockets a local address and port inside the usable range must carry
/// before the fan-out rule calls it a server's: `connect()` itself shares
/// such ports across destinations, so a few sockets on one prove nothing.
pub const FANOUT_MIN_IN_RANGE: u32 = 16;

/// Tells the client side of each connection from the server side, with or
/// without a live listener.
///
/// A socket whose local port is a listening port is the server side. When
/// the server has stopped (its TIME_WAITs outlive it by 60 s), the rule is
/// fan-out: a server's local address and port is shared by one socket per
/// client, each to a different remote port (the clients' ephemeral ports),
/// and each such client port talks to it through one socket; a client's
/// destination holds many sockets, each on a different local port, and a
/// local port is shared only across destinations (4-tuple sharing). So a
/// local address and port is a server's when it carries at least twice as
/// many sockets as the busiest destination among them has, and, if
/// `connect()` could have picked the port (it is in the usable range), at
/// least [`FANOUT_MIN_IN_RANGE`] sockets. docs/doctor.md states the limits.
#[derive(Debug, Clone)]
pub struct Directions {
    listening: HashSet<u16>,
    /// Per local address and port: sockets, and the most sockets any one of
    /// their destinations has.
    local: FxMap<(IpAddr, u16), (u32, u32)>,
    range: (u16, u16),
    reserved: Vec<(u16, u16)>,
}

impl Directions {
    /// Counts the fan-out of every connected socket of `sockets`, a table
    /// read with `settings`.
    pub fn new(sockets: &[Socket], settings: &Settings) -> Directions {
        let listening = listening_ports(sockets);
        let mut local: FxMap<(IpAddr, u16), (u32, u32)> = FxMap::default();
        let mut dest: FxMap<DestKey, u32> = FxMap::default();
        let candidates = || sockets.iter().filter(|s| may_be_outbound(s, &listening));
        for s in candidates() {
            local.entry(local_key(s)).or_default().0 += 1;
            *dest.entry(dest_key(s)).or_default() += 1;
        }
        for s in candidates() {
            let d = dest.get(&dest_key(s)).copied().unwrap_or(1);
            let e = local.entry(local_key(s)).or_default();
            e.1 = e.1.max(d);
        }
        Directions {
            listening,
            local,
            range: settings.ip_local_port_range,
            reserved: settings.ip_local_reserved_ports.clone(),
        }
    }

    /// The side `s` (a socket of the table this was built from) is on.
    pub fn direction(&self, s: &Socket) -> Direction {
        if s.state == TcpState::Listen {
            return Direction::Listener;
        }
        if s.remote.port() == 0 {
            return Direction::Unconnected;
        }
        let port = s.local.port();
        if self.listening.contains(&port) {
            return Direction::Inbound;
        }
        let (sockets, busiest) = self.local.get(&local_key(s)).copied().unwrap_or((1, 1));
        let pickable = self.range.0 <= port
            && port <= self.range.1
            && !self.reserved.iter().any(|&(a, b)| a <= port && port <= b);
        if sockets >= 2 * busiest && (!pickable || sockets >= FANOUT_MIN_IN_RANGE) {
            Direction::InboundWithoutListener
        } else {
            Direction::Outbound
        }
    }

    /// Whether `s` is the client side and counts toward a destination.
    pub fn is_outbound(&self, s: &Socket) -> bool {
        self.direction(s) == Direction::Outbound
    }

    /// The listening ports.
    pub fn listening(&self) -> &HashSet<u16> {
        &self.listening
    }
}

fn local_key(s: &Socket) -> (IpAddr, u16) {
    (canonical_ip(s.local.ip()), s.local.port())
}

/// Groups outbound sockets by destination, counting states, and returns, per
/// group, the number of sockets not in `before` (new connections).
fn group(
    sockets: &[Socket],
    settings: &Settings,
    directions: &Directions,
    before: Option<&FxSet<u64>>,
) -> FxMap<DestKey, Acc> {
    let (lo, hi) = settings.ip_local_port_range;
    let mut groups: FxMap<DestKey, Acc> = FxMap::default();
    for s in sockets {
        if !directions.is_outbound(s) {
            continue;
        }
        let acc = groups.entry(dest_key(s)).or_default();
        acc.states[s.state.index()] += 1;
        let p = s.local.port();
        if p >= lo && p <= hi && !settings.is_reserved(p) {
            acc.in_use += 1;
        } else {
            acc.explicit += 1;
        }
        if let Some(ms) = s.tw_remaining_ms {
            if ms <= 10_000 {
                acc.freeing.within_10s += 1;
            }
            if ms <= 30_000 {
                acc.freeing.within_30s += 1;
            }
            if ms <= 60_000 {
                acc.freeing.within_60s += 1;
            }
        }
        if let Some(before) = before {
            if !before.contains(&tuple_key(s)) {
                acc.new += 1;
            }
        }
    }
    groups
}

/// A 64-bit fingerprint of a socket's 4-tuple, for telling new connections
/// from ones the previous scan saw. A set of these is an eighth the size of
/// a set of `(SocketAddr, SocketAddr)` and cheaper to hash; two of 100k
/// tuples share a fingerprint with probability about 3e-10, which would
/// under-count the rate by one.
fn tuple_key(s: &Socket) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    s.local.hash(&mut h);
    s.remote.hash(&mut h);
    h.finish()
}

/// Analyses `now`, with `before` taken `interval` earlier for rates.
/// `owners` maps socket inodes to processes when attribution ran.
pub fn analyze(
    before: Option<(&Snapshot, Duration)>,
    now: &Snapshot,
    owners: Option<&Owners>,
    thresholds: Thresholds,
) -> Analysis {
    let settings = &now.settings;
    let directions = Directions::new(&now.sockets, settings);
    let (lo, hi) = settings.ip_local_port_range;

    let mut totals = Totals {
        sockets: now.sockets.len() as u32,
        ..Totals::default()
    };
    let mut held: HashSet<u16> = HashSet::new();
    for s in &now.sockets {
        match s.state {
            TcpState::Listen => totals.listening += 1,
            TcpState::TimeWait => totals.time_wait += 1,
            _ => {}
        }
        let port = s.local.port();
        let bound_only = s.state == TcpState::Close && s.remote.port() == 0 && port != 0;
        if bound_only {
            totals.bound_unconnected += 1;
        }
        // The server side of a stopped server keeps its port's bind bucket,
        // made by bind(), so connect() still skips that port
        // (`__inet_hash_connect()` skips buckets with fastreuse >= 0).
        let direction = directions.direction(s);
        let server_side = match direction {
            Direction::Inbound => {
                totals.inbound += 1;
                false
            }
            Direction::InboundWithoutListener => {
                totals.inbound += 1;
                totals.inbound_without_listener += 1;
                true
            }
            _ => false,
        };
        if (s.state == TcpState::Listen || bound_only || server_side)
            && port >= lo
            && port <= hi
            && !settings.is_reserved(port)
        {
            held.insert(port);
        }
    }
    totals.ports_held_by_binds = held.len() as u32;
    let capacity = settings
        .range_len()
        .saturating_sub(settings.reserved_in_range())
        .saturating_sub(totals.ports_held_by_binds);
    totals.usable_ports = capacity;

    // Every connected 4-tuple of the baseline: only the membership of this
    // scan's outbound sockets is asked, so no direction is needed here.
    let before_set: Option<FxSet<u64>> = before.map(|(b, _)| {
        let l = listening_ports(&b.sockets);
        b.sockets
            .iter()
            .filter(|s| may_be_outbound(s, &l))
            .map(tuple_key)
            .collect()
    });
    let interval_s = before.map(|(_, d)| d.as_secs_f64()).filter(|s| *s > 0.0);
    let groups = group(&now.sockets, settings, &directions, before_set.as_ref());

    // Owners per group, from the inodes of its sockets.
    let mut group_owners: HashMap<DestKey, HashMap<u32, u32>> = HashMap::new();
    if let Some(owners) = owners {
        for s in &now.sockets {
            if s.inode == 0 || !directions.is_outbound(s) {
                continue;
            }
            if let Some(pids) = owners.by_inode.get(&s.inode) {
                let m = group_owners.entry(dest_key(s)).or_default();
                for pid in pids {
                    *m.entry(*pid).or_default() += 1;
                }
            }
        }
    }

    let reuse_delay_s = f64::from(settings.effective_tw_reuse_delay_ms().max(1)) / 1000.0;
    let mut destinations: Vec<Destination> = groups
        .into_iter()
        .map(|(key, acc)| {
            totals.outbound += acc.states.iter().sum::<u32>();
            // No usable port at all is exhaustion, not 0%: every connect()
            // without an explicit bind fails with EADDRNOTAVAIL.
            let exhausted = acc.in_use >= capacity;
            let utilization = if exhausted {
                1.0
            } else {
                f64::from(acc.in_use) / f64::from(capacity)
            };
            let tw_reuse_applies = settings.tcp_timestamps != 0
                && (settings.tcp_tw_reuse == 1
                    || (settings.tcp_tw_reuse == 2
                        && loopback(key.local_ip)
                        && loopback(key.remote_ip)));
            let sustainable = if tw_reuse_applies {
                f64::from(capacity) / reuse_delay_s
            } else {
                f64::from(capacity) / TIME_WAIT_SECS
            };
            let rate = interval_s.map(|s| f64::from(acc.new) / s);
            let seconds_to_exhaustion =
                exhaustion(acc.in_use, capacity, rate, sustainable, acc.freeing);
            let severity = thresholds.severity(utilization, seconds_to_exhaustion, exhausted);
            let mut processes: Vec<ProcessRef> = group_owners
                .remove(&key)
                .unwrap_or_default()
                .into_iter()
                .map(|(pid, sockets)| ProcessRef {
                    pid,
                    comm: owners
                        .and_then(|o| o.comm.get(&pid).cloned())
                        .unwrap_or_default(),
                    sockets,
                })
                .collect();
            processes.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
            let states = TcpState::ALL
                .iter()
                .filter(|s| acc.states[s.index()] > 0)
                .map(|s| (s.name(), acc.states[s.index()]))
                .collect();
            Destination {
                local_ip: key.local_ip,
                remote_ip: key.remote_ip,
                remote_port: key.remote_port,
                states,
                in_use: acc.in_use,
                capacity,
                utilization,
                exhausted,
                time_wait_freeing: acc.freeing,
                rate_per_s: rate,
                sustainable_rate_per_s: sustainable,
                tw_reuse_applies,
                seconds_to_exhaustion,
                explicit_binds: acc.explicit,
                processes,
                severity,
            }
        })
        .collect();
    destinations.sort_by(|a, b| {
        b.utilization
            .total_cmp(&a.utilization)
            .then(b.in_use.cmp(&a.in_use))
            .then(a.key().cmp(&b.key()))
    });

    let active_opens_per_s = match (before, interval_s) {
        (Some((b, _)), Some(s)) => match (b.counters.active_opens, now.counters.active_opens) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / s),
            _ => None,
        },
        _ => None,
    };

    let mut notes = Vec::new();
    if let Some(r) = &now.fallback_reason {
        notes.push(format!(
            "socket table read from /proc because netlink failed: {r}"
        ));
    }
    if let Some(o) = owners {
        if o.denied > 0 {
            notes.push(format!(
                "process attribution is partial: the fd tables of {} processes could not be read; run as root to see every owner",
                o.denied
            ));
        }
    }
    if totals.time_wait > 0 {
        notes.push(
            "TIME_WAIT sockets have no owning process: the kernel keeps them after close()".into(),
        );
    }

    let findings = findings(&destinations, settings, &now.counters, &totals, thresholds);
    let no_ports = if totals.usable_ports == 0 {
        Severity::Critical
    } else {
        Severity::Ok
    };
    let status = destinations
        .iter()
        .map(|d| d.severity)
        .max()
        .unwrap_or(Severity::Ok)
        .max(no_ports);
    Analysis {
        source: now.source,
        totals,
        destinations,
        findings,
        notes,
        active_opens_per_s,
        status,
    }
}

/// Seconds until the free ports of a destination are gone at `rate`, net of
/// the TIME_WAIT sockets freeing in the next 10 s. `None` when the rate is
/// unknown or sustainable.
fn exhaustion(
    in_use: u32,
    capacity: u32,
    rate: Option<f64>,
    sustainable: f64,
    freeing: Freeing,
) -> Option<f64> {
    // Already gone (capacity 0 included), whatever the rate.
    if in_use >= capacity {
        return Some(0.0);
    }
    let rate = rate?;
    if rate <= sustainable || rate <= 0.0 {
        return None;
    }
    let free = f64::from(capacity.saturating_sub(in_use));
    let released = f64::from(freeing.within_10s) / 10.0;
    let net = if rate > released {
        rate - released
    } else {
        rate - sustainable
    };
    (net > 0.0).then(|| free / net)
}

fn findings(
    destinations: &[Destination],
    settings: &Settings,
    counters: &Counters,
    totals: &Totals,
    thresholds: Thresholds,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // First: the cause of every destination's exhaustion at once.
    if totals.usable_ports == 0 {
        out.push(no_usable_ports(settings, totals));
    }
    let (lo, hi) = settings.ip_local_port_range;
    for d in destinations {
        let rate_exceeds = d.rate_per_s.is_some_and(|r| r > d.sustainable_rate_per_s);
        if d.severity < Severity::Warning && !rate_exceeds {
            continue;
        }
        let tw = d.count(TcpState::TimeWait);
        let mut message = if d.capacity == 0 {
            format!(
                "{} has no usable port (capacity 0, see no_usable_ports): every connect() to it without an explicit bind fails with EADDRNOTAVAIL",
                d.label()
            )
        } else if d.exhausted {
            format!(
                "{} holds {} of {} usable ports: exhausted, new connections to it fail with EADDRNOTAVAIL",
                d.label(),
                d.in_use,
                d.capacity
            )
        } else {
            format!(
                "{} holds {} of {} usable ports ({:.0}%; warning at {}%, critical at {}%)",
                d.label(),
                d.in_use,
                d.capacity,
                d.utilization * 100.0,
                thresholds.warn_pct,
                thresholds.crit_pct
            )
        };
        if tw > 0 {
            message.push_str(&format!("; {tw} in TIME_WAIT"));
        }
        if let Some(r) = d.rate_per_s {
            message.push_str(&format!(
                "; {r:.1} new connections/s against a sustainable {:.1}/s",
                d.sustainable_rate_per_s
            ));
        }
        if let Some(t) = d.seconds_to_exhaustion.filter(|_| !d.exhausted) {
            message.push_str(&format!(
                "; exhausted in about {t:.0} s at this rate (warning below {} s, critical below {} s)",
                thresholds.warn_seconds, thresholds.crit_seconds
            ));
        }
        let mut advice = Vec::new();
        if tw * 2 >= d.in_use.max(1) {
            advice.push(
                "keep connections alive and pool them (HTTP keep-alive, a connection pool): each call that opens and closes a connection leaves a TIME_WAIT for 60 s".to_string(),
            );
        }
        if u32::from(hi) - u32::from(lo) + 1 < 64_511 {
            advice.push(format!(
                "widen the range: sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (now {lo}-{hi}; list ports of local services in net.ipv4.ip_local_reserved_ports first)"
            ));
        }
        if !d.tw_reuse_applies && tw > 0 {
            if settings.tcp_timestamps == 0 {
                advice.push("sysctl -w net.ipv4.tcp_timestamps=1: tcp_tw_reuse and TIME_WAIT takeover need TCP timestamps".into());
            }
            advice.push(format!(
                "sysctl -w net.ipv4.tcp_tw_reuse=1 (now {}): connect() may then reuse a TIME_WAIT 4-tuple older than {} ms",
                settings.tcp_tw_reuse,
                settings.effective_tw_reuse_delay_ms()
            ));
        }
        advice.push(
            "spread over more source addresses or rotate ports in the client: the fivetuple library's address-spreading and port-rotation policies multiply the budget".into(),
        );
        out.push(Finding {
            severity: d.severity.max(if rate_exceeds {
                Severity::Warning
            } else {
                Severity::Ok
            }),
            code: "port_utilization",
            destination: Some(d.label()),
            message,
            advice,
        });
        if d.explicit_binds > 0 {
            out.push(Finding {
                severity: Severity::Warning,
                code: "explicit_bind",
                destination: Some(d.label()),
                message: format!(
                    "{} sockets to {} use local ports connect() would not pick now (outside {lo}-{hi}, or reserved): they were bound explicitly, or took their port before the range or the reservations changed",
                    d.explicit_binds,
                    d.label()
                ),
                advice: vec!["check that the client binds with SO_REUSEADDR and retries on EADDRNOTAVAIL, or let the kernel pick the port".into()],
            });
        }
    }
    if totals.bound_unconnected > 0 {
        out.push(Finding {
            severity: Severity::Warning,
            code: "bind_before_connect",
            destination: None,
            message: format!(
                "{} sockets are bound but not connected; {} ports of the range are held by bind() and lost to every destination (exhaustion then shows as EADDRINUSE)",
                totals.bound_unconnected, totals.ports_held_by_binds
            ),
            advice: vec!["when a client binds only an address, set IP_BIND_ADDRESS_NO_PORT (Linux 4.2+) so the port is picked at connect() and shared across destinations; the fivetuple library does this".into()],
        });
    }
    if settings.tcp_tw_reuse != 0 && settings.tcp_timestamps == 0 {
        out.push(Finding {
            severity: Severity::Info,
            code: "tw_reuse_without_timestamps",
            destination: None,
            message: format!("net.ipv4.tcp_tw_reuse is {} but net.ipv4.tcp_timestamps is 0, so TIME_WAIT is never reused", settings.tcp_tw_reuse),
            advice: vec!["sysctl -w net.ipv4.tcp_timestamps=1".into()],
        });
    }
    if let Some(n) = counters.tcp_time_wait_overflow.filter(|n| *n > 0) {
        out.push(Finding {
            severity: Severity::Info,
            code: "time_wait_overflow",
            destination: None,
            message: format!(
                "TCPTimeWaitOverflow is {n}: TIME_WAIT sockets were dropped because tcp_max_tw_buckets ({}) was reached",
                settings.tcp_max_tw_buckets
            ),
            advice: vec!["this removes TIME_WAIT's protection against stray segments; do not lower tcp_max_tw_buckets as a fix, reduce the connection churn instead".into()],
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The finding for a namespace where `connect()` has no port to pick at all,
/// naming what took the range.
fn no_usable_ports(settings: &Settings, totals: &Totals) -> Finding {
    let (lo, hi) = settings.ip_local_port_range;
    let range = settings.range_len();
    let reserved = settings.reserved_in_range();
    let held = totals.ports_held_by_binds;
    let mut causes = Vec::new();
    if range == 0 {
        causes.push(format!("net.ipv4.ip_local_port_range {lo} {hi} is empty"));
    }
    if reserved > 0 {
        causes.push(format!(
            "net.ipv4.ip_local_reserved_ports covers {reserved} of them"
        ));
    }
    if held > 0 {
        causes.push(format!("listeners and bound sockets hold {held} of them"));
    }
    let mut advice = Vec::new();
    if reserved > 0 {
        advice.push(format!(
            "shrink net.ipv4.ip_local_reserved_ports (now {}) to the ports local services really listen on",
            settings
                .ip_local_reserved_ports
                .iter()
                .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if held > 0 {
        advice.push(format!("move listening services and explicit bind()s out of {lo}-{hi}, or reserve their ports and widen the range"));
    }
    advice.push(format!(
        "widen the range: sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (now {lo}-{hi})"
    ));
    Finding {
        severity: Severity::Critical,
        code: "no_usable_ports",
        destination: None,
        message: format!(
            "no usable source port: the range {lo}-{hi} has {range} ports and {}; every connect() without an explicit bind fails with EADDRNOTAVAIL",
            if causes.is_empty() {
                "none is left".to_string()
            } else {
                causes.join(" and ")
            }
        ),
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::Owners;

    fn settings(lo: u16, hi: u16) -> Settings {
        Settings {
            ip_local_port_range: (lo, hi),
            ..Settings::default()
        }
    }

    fn sock(state: TcpState, local: &str, remote: &str, inode: u64, tw: Option<u32>) -> Socket {
        Socket {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode,
            uid: 0,
            tw_remaining_ms: tw,
        }
    }

    fn snap(sockets: Vec<Socket>, s: Settings) -> Snapshot {
        Snapshot {
            sockets,
            source: Source::Netlink,
            settings: s,
            counters: Counters::default(),
            fallback_reason: None,
        }
    }

    /// 95 TIME_WAIT to 10.0.0.9:443 from a 100-port range, a listener on 8080
    /// with one accepted connection, and 3 ESTABLISHED to 10.0.0.9:80.
    fn table() -> Vec<Socket> {
        let mut v = vec![
            sock(TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0", 1, None),
            sock(
                TcpState::Established,
                "10.0.0.1:8080",
                "10.0.0.7:40001",
                2,
                None,
            ),
        ];
        for i in 0..95u32 {
            v.push(sock(
                TcpState::TimeWait,
                &format!("10.0.0.1:{}", 40000 + i),
                "10.0.0.9:443",
                0,
                Some(i * 600),
            ));
        }
        for i in 0..3 {
            v.push(sock(
                TcpState::Established,
                &format!("10.0.0.1:{}", 40000 + i),
                "10.0.0.9:80",
                100 + i as u64,
                None,
            ));
        }
        v
    }

    #[test]
    fn groups_outbound_only_and_counts_capacity() {
        let a = analyze(
            None,
            &snap(table(), settings(40000, 40099)),
            None,
            Thresholds::default(),
        );
        assert_eq!(
            a.totals.inbound, 1,
            "the accepted socket on 8080 is inbound"
        );
        assert_eq!(a.destinations.len(), 2);
        let d = &a.destinations[0];
        assert_eq!((d.remote_port, d.in_use, d.capacity), (443, 95, 100));
        assert_eq!(d.states.get("TIME_WAIT"), Some(&95));
        assert!((d.utilization - 0.95).abs() < 1e-9);
        assert_eq!(d.severity, Severity::Critical);
        // remaining = i*600 ms: <=10 s for i<=16, <=30 s for i<=50, all <= 60 s
        assert_eq!(
            d.time_wait_freeing,
            Freeing {
                within_10s: 17,
                within_30s: 51,
                within_60s: 95
            }
        );
        assert_eq!(a.destinations[1].severity, Severity::Ok);
        assert_eq!(a.status, Severity::Critical);
        assert!(a.destinations.iter().all(|d| d.remote_port != 40001));
    }

    #[test]
    fn not_loopback_without_reuse_sustains_capacity_over_60s() {
        let mut s = settings(40000, 40099);
        s.ip_local_reserved_ports = vec![(40090, 40099)];
        let a = analyze(None, &snap(table(), s), None, Thresholds::default());
        let d = &a.destinations[0];
        assert_eq!(d.capacity, 90);
        assert_eq!(d.in_use, 90, "five sockets sit on reserved ports");
        assert_eq!(d.explicit_binds, 5);
        assert!(!d.tw_reuse_applies, "tcp_tw_reuse=2 is loopback only");
        assert!((d.sustainable_rate_per_s - 1.5).abs() < 1e-9);
        let codes: Vec<_> = a.findings.iter().map(|f| f.code).collect();
        assert!(
            codes.contains(&"port_utilization") && codes.contains(&"explicit_bind"),
            "{codes:?}"
        );
    }

    #[test]
    fn listeners_and_bound_sockets_in_range_reduce_capacity() {
        let mut t = table();
        t.push(sock(
            TcpState::Listen,
            "0.0.0.0:40097",
            "0.0.0.0:0",
            7,
            None,
        ));
        t.push(sock(
            TcpState::Close,
            "10.0.0.1:40098",
            "0.0.0.0:0",
            8,
            None,
        ));
        let a = analyze(
            None,
            &snap(t, settings(40000, 40099)),
            None,
            Thresholds::default(),
        );
        assert_eq!(a.totals.ports_held_by_binds, 2);
        assert_eq!(a.totals.bound_unconnected, 1);
        assert_eq!(a.destinations[0].capacity, 98);
        assert!(a.findings.iter().any(|f| f.code == "bind_before_connect"));
    }

    #[test]
    fn rate_from_two_scans_and_time_to_exhaustion() {
        let s = settings(40000, 40999);
        let mut before = Vec::new();
        let mut now = Vec::new();
        for i in 0..100u16 {
            let so = sock(
                TcpState::TimeWait,
                &format!("192.0.2.1:{}", 40000 + i),
                "192.0.2.2:443",
                0,
                Some(59_000),
            );
            if i < 40 {
                before.push(so.clone());
            }
            now.push(so);
        }
        let b = snap(before, s.clone());
        let n = snap(now, s);
        let a = analyze(
            Some((&b, Duration::from_secs(2))),
            &n,
            None,
            Thresholds::default(),
        );
        let d = &a.destinations[0];
        assert_eq!(d.rate_per_s, Some(30.0));
        // sustainable 1000/60 = 16.7/s < 30/s: 900 free ports at 30/s net (nothing frees within 10 s)
        let t = d.seconds_to_exhaustion.expect("heading to exhaustion");
        assert!((t - 30.0).abs() < 1e-9, "{t}");
        assert!(a
            .findings
            .iter()
            .any(|f| f.code == "port_utilization" && f.message.contains("30.0 new connections/s")));
    }

    #[test]
    fn sustainable_rate_is_not_exhaustion() {
        let s = settings(40000, 40999);
        let n = snap(
            vec![sock(
                TcpState::Established,
                "192.0.2.1:40000",
                "192.0.2.2:443",
                5,
                None,
            )],
            s,
        );
        let b = snap(vec![], n.settings.clone());
        let a = analyze(
            Some((&b, Duration::from_secs(1))),
            &n,
            None,
            Thresholds::default(),
        );
        assert_eq!(a.destinations[0].rate_per_s, Some(1.0));
        assert_eq!(a.destinations[0].seconds_to_exhaustion, None);
        assert!(a.findings.is_empty());
    }

    #[test]
    fn loopback_reuse_raises_the_sustainable_rate() {
        let n = snap(
            vec![sock(
                TcpState::TimeWait,
                "127.0.0.1:40000",
                "127.0.0.1:8080",
                0,
                Some(1),
            )],
            settings(40000, 40099),
        );
        let a = analyze(None, &n, None, Thresholds::default());
        assert!(a.destinations[0].tw_reuse_applies);
        assert!((a.destinations[0].sustainable_rate_per_s - 100.0).abs() < 1e-9);
    }

    #[test]
    fn owners_are_attributed_and_denied_is_noted() {
        let mut owners = Owners::default();
        owners.by_inode.insert(100, vec![4242]);
        owners.by_inode.insert(101, vec![4242]);
        owners.comm.insert(4242, "client".into());
        owners.denied = 3;
        let a = analyze(
            None,
            &snap(table(), settings(40000, 40099)),
            Some(&owners),
            Thresholds::default(),
        );
        let d = a.destinations.iter().find(|d| d.remote_port == 80).unwrap();
        assert_eq!(
            d.processes,
            vec![ProcessRef {
                pid: 4242,
                comm: "client".into(),
                sockets: 2
            }]
        );
        assert!(a
            .notes
            .iter()
            .any(|n| n.contains("3 processes") && n.contains("root")));
    }

    #[test]
    fn advice_never_suggests_fin_timeout_or_tw_recycle() {
        let mut s = settings(40000, 40099);
        s.tcp_tw_reuse = 0;
        s.tcp_timestamps = 0;
        let c = Counters {
            tcp_time_wait_overflow: Some(5),
            ..Counters::default()
        };
        let mut n = snap(table(), s);
        n.counters = c;
        let a = analyze(None, &n, None, Thresholds::default());
        let text = serde_json_free_text(&a);
        assert!(text.contains("tcp_tw_reuse=1"), "{text}");
        assert!(
            !text.contains("tcp_fin_timeout") && !text.contains("tw_recycle"),
            "{text}"
        );
    }

    /// Issue 9, reading 1: a dual-stack client's `::ffff:127.0.0.1` sockets
    /// and its `127.0.0.1` sockets share one pool of ports.
    #[test]
    fn ipv4_mapped_ipv6_shares_the_ipv4_destination() {
        let mut t = Vec::new();
        for i in 0..50u16 {
            t.push(sock(
                TcpState::Established,
                &format!("127.0.0.1:{}", 40000 + i),
                "127.0.0.1:9000",
                10 + u64::from(i),
                None,
            ));
            t.push(sock(
                TcpState::Established,
                &format!("[::ffff:127.0.0.1]:{}", 40050 + i),
                "[::ffff:127.0.0.1]:9000",
                100 + u64::from(i),
                None,
            ));
        }
        let mut owners = Owners::default();
        owners.by_inode.insert(10, vec![7]);
        owners.by_inode.insert(100, vec![7]);
        let a = analyze(
            None,
            &snap(t, settings(40000, 40099)),
            Some(&owners),
            Thresholds::default(),
        );
        assert_eq!(a.destinations.len(), 1, "{:#?}", a.destinations);
        let d = &a.destinations[0];
        assert_eq!(d.remote_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(d.local_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((d.in_use, d.capacity), (100, 100));
        assert!(d.exhausted);
        assert_eq!(d.utilization, 1.0);
        assert_eq!(d.severity, Severity::Critical);
        assert_eq!(d.processes[0].sockets, 2, "owners follow the merged group");
        assert_eq!(a.status, Severity::Critical);
        assert_eq!(
            canonical_ip("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical_ip("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap(),
            "only mapped addresses change"
        );
    }

    /// Issue 9, reading 2: a stopped server's TIME_WAITs (local :8080 to
    /// 300 client ports, no listener) are no destinations; a real client
    /// destination next to them still is.
    #[test]
    fn a_stopped_servers_time_waits_are_not_destinations() {
        let mut t = Vec::new();
        for i in 0..300u16 {
            t.push(sock(
                TcpState::TimeWait,
                "10.0.0.1:8080",
                &format!("10.0.0.7:{}", 50000 + i),
                0,
                Some(30_000),
            ));
        }
        // The client side of this host: 40 TIME_WAIT to 10.0.0.9:443.
        for i in 0..40u16 {
            t.push(sock(
                TcpState::TimeWait,
                &format!("10.0.0.1:{}", 40000 + i),
                "10.0.0.9:443",
                0,
                Some(30_000),
            ));
        }
        let a = analyze(
            None,
            &snap(t.clone(), settings(40000, 40099)),
            None,
            Thresholds::default(),
        );
        assert_eq!(a.destinations.len(), 1, "{:#?}", a.destinations);
        assert_eq!(a.destinations[0].remote_port, 443);
        assert_eq!(a.destinations[0].in_use, 40);
        assert_eq!(a.totals.inbound, 300);
        assert_eq!(a.totals.inbound_without_listener, 300);
        assert_eq!(a.totals.outbound, 40);
        assert_eq!(a.totals.ports_held_by_binds, 0, "8080 is outside the range");
        assert_eq!(a.status, Severity::Ok);

        // The same server on a port inside the range: its TIME_WAITs keep
        // the port's bind bucket, so connect() cannot use it.
        for s in t.iter_mut().take(300) {
            s.local = "10.0.0.1:40099".parse().unwrap();
        }
        let a = analyze(
            None,
            &snap(t, settings(40000, 40099)),
            None,
            Thresholds::default(),
        );
        assert_eq!(a.destinations.len(), 1);
        assert_eq!(a.totals.ports_held_by_binds, 1);
        assert_eq!(a.destinations[0].capacity, 99);
    }

    /// The fan-out rule keeps a busy client whose local ports are shared
    /// across many destinations (4-tuple sharing in a full range).
    #[test]
    fn ports_shared_across_destinations_stay_outbound() {
        let mut t = Vec::new();
        // 100 destinations (one host, 100 ports), 100 sockets each, on the
        // same 100 local ports: every local port carries 100 sockets.
        for d in 0..100u16 {
            for p in 0..100u16 {
                t.push(sock(
                    TcpState::Established,
                    &format!("10.0.0.1:{}", 40000 + p),
                    &format!("10.0.0.9:{}", 1000 + d),
                    0,
                    None,
                ));
            }
        }
        // And one-socket destinations on those ports too.
        for d in 0..30u16 {
            t.push(sock(
                TcpState::Established,
                "10.0.0.1:40000",
                &format!("10.0.0.8:{}", 2000 + d),
                0,
                None,
            ));
        }
        let dirs = Directions::new(&t, &settings(40000, 40099));
        assert!(t[..10_000].iter().all(|s| dirs.is_outbound(s)));
        let a = analyze(
            None,
            &snap(t, settings(40000, 40099)),
            None,
            Thresholds::default(),
        );
        let busy = a
            .destinations
            .iter()
            .filter(|d| d.remote_ip == "10.0.0.9".parse::<IpAddr>().unwrap())
            .count();
        assert_eq!(busy, 100);
        assert_eq!(a.destinations.len(), 130, "the one-socket ones too");
        assert_eq!(a.totals.inbound, 0);
        assert_eq!(a.totals.ports_held_by_binds, 0);
        assert!(a
            .destinations
            .iter()
            .take(100)
            .all(|d| d.in_use == 100 && d.exhausted));
        assert_eq!(a.status, Severity::Critical);
    }

    /// A port `connect()` could have picked needs 16 sockets before the
    /// fan-out rule calls it a server's; a port outside the range needs 2.
    #[test]
    fn a_few_sockets_on_a_pickable_port_prove_nothing() {
        let fan = |local: &str, n: u16| -> Vec<Socket> {
            (0..n)
                .map(|i| {
                    sock(
                        TcpState::TimeWait,
                        local,
                        &format!("10.0.0.7:{}", 50000 + i),
                        0,
                        Some(30_000),
                    )
                })
                .collect()
        };
        let s = settings(40000, 40099);
        let a = analyze(
            None,
            &snap(fan("10.0.0.1:40050", 10), s.clone()),
            None,
            Thresholds::default(),
        );
        assert_eq!((a.destinations.len(), a.totals.inbound), (10, 0));
        let a = analyze(
            None,
            &snap(fan("10.0.0.1:40050", 16), s.clone()),
            None,
            Thresholds::default(),
        );
        assert_eq!((a.destinations.len(), a.totals.inbound), (0, 16));
        let a = analyze(
            None,
            &snap(fan("10.0.0.1:8080", 2), s.clone()),
            None,
            Thresholds::default(),
        );
        assert_eq!((a.destinations.len(), a.totals.inbound), (0, 2));
        // Reserved is not pickable either.
        let mut r = s;
        r.ip_local_reserved_ports = vec![(40050, 40050)];
        let a = analyze(
            None,
            &snap(fan("10.0.0.1:40050", 3), r),
            None,
            Thresholds::default(),
        );
        assert_eq!((a.destinations.len(), a.totals.inbound), (0, 3));
    }

    /// Issue 9, reading 3: a range covered by reserved ports is exhaustion,
    /// with a finding naming the cause, with and without sockets.
    #[test]
    fn zero_usable_ports_is_exhaustion_not_zero_percent() {
        let mut s = settings(40000, 40099);
        s.ip_local_reserved_ports = vec![(40000, 40099)];
        let a = analyze(None, &snap(table(), s.clone()), None, Thresholds::default());
        assert_eq!(a.totals.usable_ports, 0);
        let d = &a.destinations[0];
        assert_eq!(d.capacity, 0);
        assert_eq!(d.utilization, 1.0);
        assert!(d.exhausted);
        assert_eq!(d.severity, Severity::Critical);
        assert_eq!(d.seconds_to_exhaustion, Some(0.0));
        assert!(a.destinations.iter().all(|d| d.utilization == 1.0));
        let f = a
            .findings
            .iter()
            .find(|f| f.code == "no_usable_ports")
            .expect("no_usable_ports finding");
        assert_eq!(f.severity, Severity::Critical);
        assert!(
            f.message.contains("ip_local_reserved_ports covers 100"),
            "{}",
            f.message
        );
        assert_eq!(a.status, Severity::Critical);

        // No socket at all: still critical, nothing can connect.
        let a = analyze(None, &snap(vec![], s), None, Thresholds::default());
        assert!(a.destinations.is_empty());
        assert_eq!(a.status, Severity::Critical);
        assert_eq!(a.findings[0].code, "no_usable_ports");

        // Listeners covering a 4-port range: the finding names them.
        let t: Vec<Socket> = (0..4)
            .map(|i| {
                sock(
                    TcpState::Listen,
                    &format!("0.0.0.0:{}", 40000 + i),
                    "0.0.0.0:0",
                    1,
                    None,
                )
            })
            .collect();
        let a = analyze(
            None,
            &snap(t, settings(40000, 40003)),
            None,
            Thresholds::default(),
        );
        assert_eq!(a.status, Severity::Critical);
        assert!(
            a.findings[0]
                .message
                .contains("listeners and bound sockets hold 4"),
            "{}",
            a.findings[0].message
        );
    }

    /// Issue 9, reading 4: 40% in use but exhausted in about 6 s is
    /// critical; in about 300 s a warning; the thresholds move it.
    #[test]
    fn time_to_exhaustion_drives_the_severity() {
        // 1000 ports, 400 in use, 100 new in 1 s (sustainable 16.7/s):
        // 600 free at 100/s = 6 s.
        let run = |new: u16, th: Thresholds| {
            let s = settings(40000, 40999);
            let mut before = Vec::new();
            let mut now = Vec::new();
            for i in 0..400u16 {
                let so = sock(
                    TcpState::TimeWait,
                    &format!("192.0.2.1:{}", 40000 + i),
                    "192.0.2.2:443",
                    0,
                    Some(59_000),
                );
                if i >= new {
                    before.push(so.clone());
                }
                now.push(so);
            }
            analyze(
                Some((&snap(before, s.clone()), Duration::from_secs(1))),
                &snap(now, s),
                None,
                th,
            )
        };
        let a = run(100, Thresholds::default());
        let d = &a.destinations[0];
        assert!((d.utilization - 0.4).abs() < 1e-9);
        assert!((d.seconds_to_exhaustion.unwrap() - 6.0).abs() < 1e-9);
        assert_eq!(d.severity, Severity::Critical);
        assert_eq!(a.status, Severity::Critical);
        assert_eq!(a.findings[0].severity, Severity::Critical);
        assert!(
            a.findings[0].message.contains("critical below 60 s"),
            "{}",
            a.findings[0].message
        );
        // 2 new per second is below the sustainable 16.7/s: not heading there.
        assert_eq!(run(2, Thresholds::default()).status, Severity::Ok);
        // Thresholds in seconds move the verdict: 6 s is only a warning below 5 s critical.
        let th = Thresholds {
            crit_seconds: 5.0,
            ..Thresholds::default()
        };
        assert_eq!(run(100, th).status, Severity::Warning);
        let th = Thresholds {
            warn_seconds: 5.0,
            crit_seconds: 1.0,
            ..Thresholds::default()
        };
        assert_eq!(run(100, th).status, Severity::Ok);
    }

    fn serde_json_free_text(a: &Analysis) -> String {
        a.findings
            .iter()
            .map(|f| format!("{} {}", f.message, f.advice.join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

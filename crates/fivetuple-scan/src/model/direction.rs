//! Grouping and direction: which side of its connection each socket is
//! on, and which destination (local IP, remote IP, remote port) an outbound
//! socket counts toward.

use std::collections::HashSet;
use std::net::IpAddr;

use fivetuple_kernel::{PortRange, ReservedPorts};

use super::types::{DestKey, Freeing, StateCounts};
use crate::settings::Settings;
use crate::socket::{Socket, TcpState};
use fivetuple_kernel::budget::canonical_ip;

// The per-socket maps of one analysis hash 4-tuples from the local socket
// table, not attacker-chosen request data, so rustc's FxHash is safe here;
// at 100k sockets SipHash was a large share of an exporter scrape.
pub(super) use rustc_hash::{FxHashMap as FxMap, FxHashSet as FxSet};

/// What one destination's sockets add up to, from [`group`].
#[derive(Default)]
pub(super) struct Acc {
    pub(super) states: StateCounts,
    pub(super) in_use: u32,
    pub(super) explicit: u32,
    pub(super) freeing: Freeing,
    pub(super) new: u32,
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
    range: PortRange,
    reserved: ReservedPorts,
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
        let pickable = self.range.contains(port) && !self.reserved.contains(port);
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
pub(super) fn group(
    sockets: &[Socket],
    settings: &Settings,
    directions: &Directions,
    before: Option<&FxSet<u64>>,
) -> FxMap<DestKey, Acc> {
    let mut groups: FxMap<DestKey, Acc> = FxMap::default();
    for s in sockets {
        if !directions.is_outbound(s) {
            continue;
        }
        let acc = groups.entry(dest_key(s)).or_default();
        acc.states.add(s.state, 1);
        let p = s.local.port();
        if settings.is_pickable(p) {
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
pub(super) fn tuple_key(s: &Socket) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    s.local.hash(&mut h);
    s.remote.hash(&mut h);
    h.finish()
}

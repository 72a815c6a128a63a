//! Port rotation (remedy 3 of the design): each attempt binds the next port of
//! a range explicitly, with `SO_REUSEADDR`, optionally spread over several
//! source addresses.
//!
//! The well-known .NET sample rotated with `Interlocked.Increment` followed by
//! `CompareExchange(ref last, 5001, 65534)`; when two threads pass 65534 at
//! once both exchanges fail and the counter grows forever, handing out 65535,
//! 65536, ... Here the counter is never compared or reset: the port is
//! `ports[counter % len]`, so every value of the counter maps into the range.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ConfigError;
use crate::policy::{unspecified_for, Choice, LocalPolicy, PortRange};
use crate::reserved::ReservedPorts;
use crate::spread::Sources;

/// Rotates explicit binds over a port range, lock-free.
///
/// - Never yields a port outside the range, under any concurrency.
/// - Starts at a random offset, so that a restarted process does not walk
///   into the ports its previous incarnation left in TIME_WAIT.
/// - Skips ports listed in `net.ipv4.ip_local_reserved_ports`.
/// - With [`with_sources`](Rotation::with_sources), spreads over local
///   addresses and rotates ports within each: every (address, port) pair is
///   used once per cycle.
///
/// Each bind sets `SO_REUSEADDR` (Windows: `SO_REUSE_UNICASTPORT`), so a port
/// is shared with outbound sockets to other destinations; a clash of the full
/// 4-tuple makes `connect()` fail with `EADDRNOTAVAIL` and the connect loop
/// moves on to the next port.
///
/// **TIME_WAIT and timestamps.** On Linux an explicitly bound socket takes
/// over a TIME_WAIT 4-tuple at once, whatever `net.ipv4.tcp_tw_reuse` says,
/// provided the old connection used TCP timestamps (`tcp_twsk_unique` is
/// called without a `twp`). That is why rotation survives even a small range.
/// With `net.ipv4.tcp_timestamps=0` a port in TIME_WAIT stays unusable toward
/// that destination for 60 s, and rotation's budget falls back to
/// `ports / 60 s` like the kernel's.
#[derive(Debug)]
pub struct Rotation {
    range: PortRange,
    ports: Box<[u16]>,
    sources: Option<Sources>,
    /// One counter per family (IPv4, IPv6), so mixed traffic keeps each even.
    next: [AtomicU64; 2],
}

impl Rotation {
    /// Rotates over `range` with the wildcard source address, skipping the
    /// reserved ports of the calling thread's network namespace (if they
    /// cannot be read, a warning is logged and none are skipped).
    pub fn new(range: PortRange) -> Result<Rotation, ConfigError> {
        let reserved = ReservedPorts::read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read net.ipv4.ip_local_reserved_ports; rotating over every port of the range");
            ReservedPorts::none()
        });
        Rotation::with_reserved(range, &reserved)
    }

    /// Rotates over the namespace's own `net.ipv4.ip_local_port_range` (the
    /// default range; see [`default_range`](Rotation::default_range)).
    pub fn over_local_port_range() -> Result<Rotation, ConfigError> {
        Rotation::new(Rotation::default_range())
    }

    /// The default range: the calling thread's `net.ipv4.ip_local_port_range`
    /// (macOS: `net.inet.ip.portrange.first`-`.last`; Windows and unreadable:
    /// IANA's dynamic range 49152-65535).
    ///
    /// Why: those ports are, by convention, ones no service listens on, so an
    /// explicit bind never blocks a server that starts later; the admin's
    /// carve-outs (`ip_local_reserved_ports`) are honoured; and a widened
    /// range widens rotation with it.
    ///
    /// The price: sockets whose port the *kernel* chose in that range (other
    /// processes, or this one without fivetuple) do not set `SO_REUSEADDR`,
    /// so while they are open or in TIME_WAIT an explicit bind to their port
    /// fails with `EADDRINUSE` (`inet_csk_bind_conflict`), and the connect
    /// loop moves on to the next port. On a host that also makes many
    /// kernel-chosen connections, give rotation a range of its own outside
    /// `ip_local_port_range` where no service listens.
    pub fn default_range() -> PortRange {
        crate::sys::read_local_port_range()
            .ok()
            .and_then(|(lo, hi)| PortRange::new(lo, hi).ok())
            .unwrap_or(PortRange::DYNAMIC)
    }

    /// Rotates over `range`, skipping `reserved`. Fails when every port of the
    /// range is reserved.
    pub fn with_reserved(
        range: PortRange,
        reserved: &ReservedPorts,
    ) -> Result<Rotation, ConfigError> {
        let ports: Box<[u16]> = range.iter().filter(|p| !reserved.contains(*p)).collect();
        if ports.is_empty() {
            return Err(ConfigError::AllReserved {
                lo: range.lo(),
                hi: range.hi(),
            });
        }
        let mut rotation = Rotation {
            range,
            ports,
            sources: None,
            next: [AtomicU64::new(0), AtomicU64::new(0)],
        };
        rotation.randomize_start();
        Ok(rotation)
    }

    /// Spreads over `addresses` and rotates ports within each (composition of
    /// [`Spread`](crate::Spread) and rotation). Addresses are matched to the
    /// destination's family; a destination with no source of its family makes
    /// the connect fail with a [`Choice::GiveUp`] naming the family.
    pub fn with_sources<I>(mut self, addresses: I) -> Result<Rotation, ConfigError>
    where
        I: IntoIterator<Item = IpAddr>,
    {
        self.sources = Some(Sources::new(addresses)?);
        self.randomize_start();
        Ok(self)
    }

    /// Sets where the rotation starts (`offset` is reduced modulo the cycle
    /// length). Useful for tests and to coordinate several processes; the
    /// default is random.
    pub fn with_start(self, offset: u64) -> Rotation {
        let cycle = self.cycle_len(0).max(self.cycle_len(1));
        for c in &self.next {
            c.store(offset % cycle, Ordering::Relaxed);
        }
        self
    }

    fn randomize_start(&mut self) {
        for family in 0..2 {
            let start = rand::random::<u64>() % self.cycle_len(family);
            self.next[family] = AtomicU64::new(start);
        }
    }

    fn cycle_len(&self, family: usize) -> u64 {
        let n = self
            .sources
            .as_ref()
            .map_or(1, |s| s.family(family).len().max(1));
        (self.ports.len() * n) as u64
    }

    /// The configured range (reserved ports inside it are skipped).
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// How many ports of the range are used (the range minus reserved ports).
    pub fn usable_ports(&self) -> usize {
        self.ports.len()
    }

    /// The next (address, port) for `remote`: the pure allocation step.
    fn next_endpoint(&self, remote: &SocketAddr) -> Result<SocketAddr, Choice> {
        let family = usize::from(remote.is_ipv6());
        // Relaxed is enough: the counter only has to hand out distinct values.
        let n = self.next[family].fetch_add(1, Ordering::Relaxed);
        let (addr, index) = match &self.sources {
            None => (unspecified_for(remote), n),
            Some(sources) => {
                let list = sources.family(family);
                if list.is_empty() {
                    return Err(sources.no_source_for(remote));
                }
                let k = list.len() as u64;
                (list[(n % k) as usize], n / k)
            }
        };
        let port = self.ports[(index % self.ports.len() as u64) as usize];
        Ok(SocketAddr::new(addr, port))
    }
}

impl LocalPolicy for Rotation {
    fn choose(&self, remote: SocketAddr, _attempt: u32) -> Choice {
        match self.next_endpoint(&remote) {
            Ok(endpoint) => Choice::Endpoint(endpoint),
            Err(give_up) => give_up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn v4() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    fn port_of(c: Choice) -> u16 {
        match c {
            Choice::Endpoint(a) => a.port(),
            other => panic!("expected an endpoint, got {other:?}"),
        }
    }

    /// The regression test for the .NET sample's wrap-around race: many
    /// threads allocate across the wrap point of a range that ends at 65535;
    /// every port stays inside the range and all ports are used evenly.
    #[test]
    fn wrap_around_race_stays_in_range_and_even() {
        let range = PortRange::new(65000, 65535).unwrap();
        let len = range.len() as u64;
        // Start just before the wrap so every thread crosses it many times.
        let rot = Arc::new(
            Rotation::with_reserved(range, &ReservedPorts::none())
                .unwrap()
                .with_start(len - 3),
        );
        let threads = 8;
        let per_thread = len as usize * 50;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let rot = Arc::clone(&rot);
                std::thread::spawn(move || {
                    let mut seen = HashMap::<u16, u64>::new();
                    for _ in 0..per_thread {
                        *seen.entry(port_of(rot.choose(v4(), 1))).or_default() += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut total = HashMap::<u16, u64>::new();
        for h in handles {
            for (p, n) in h.join().unwrap() {
                *total.entry(p).or_default() += n;
            }
        }
        assert!(
            total.keys().all(|p| range.contains(*p)),
            "a port outside {range}"
        );
        assert_eq!(total.len() as u64, len, "every port used");
        let expected = (threads * per_thread) as u64 / len;
        for (p, n) in &total {
            assert_eq!(*n, expected, "port {p} used {n} times, expected {expected}");
        }
    }

    #[test]
    fn skips_reserved_ports() {
        let reserved = ReservedPorts::parse("20001,20003-20004").unwrap();
        let rot = Rotation::with_reserved(PortRange::new(20000, 20005).unwrap(), &reserved)
            .unwrap()
            .with_start(0);
        let got: Vec<u16> = (0..6).map(|_| port_of(rot.choose(v4(), 1))).collect();
        assert_eq!(got, vec![20000, 20002, 20005, 20000, 20002, 20005]);
        assert_eq!(rot.usable_ports(), 3);
    }

    #[test]
    fn all_reserved_is_an_error_naming_the_range() {
        let reserved = ReservedPorts::parse("20000-20010").unwrap();
        let e =
            Rotation::with_reserved(PortRange::new(20000, 20005).unwrap(), &reserved).unwrap_err();
        assert!(e.to_string().contains("20000-20005"), "{e}");
    }

    #[test]
    fn random_start_differs_between_instances() {
        let range = PortRange::new(1024, 65535).unwrap();
        let firsts: std::collections::HashSet<u16> = (0..8)
            .map(|_| {
                port_of(
                    Rotation::with_reserved(range, &ReservedPorts::none())
                        .unwrap()
                        .choose(v4(), 1),
                )
            })
            .collect();
        // 8 draws from 64k values: all equal has probability ~2^-112.
        assert!(
            firsts.len() > 1,
            "eight rotations all started at {firsts:?}"
        );
    }

    #[test]
    fn composed_with_sources_covers_every_pair_once_per_cycle() {
        let sources: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let rot = Rotation::with_reserved(
            PortRange::new(30000, 30002).unwrap(),
            &ReservedPorts::none(),
        )
        .unwrap()
        .with_sources(sources)
        .unwrap()
        .with_start(0);
        let mut pairs = std::collections::HashSet::new();
        for _ in 0..6 {
            match rot.choose(v4(), 1) {
                Choice::Endpoint(a) => {
                    assert!(pairs.insert(a), "{a} handed out twice in one cycle")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|a| a.is_ipv4()));
        match rot.choose("[::1]:80".parse().unwrap(), 1) {
            Choice::Endpoint(a) => assert_eq!(a.ip(), "::1".parse::<IpAddr>().unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn composed_without_a_source_of_the_family_gives_up_clearly() {
        let rot = Rotation::with_reserved(
            PortRange::new(30000, 30002).unwrap(),
            &ReservedPorts::none(),
        )
        .unwrap()
        .with_sources(["127.0.0.2".parse().unwrap()])
        .unwrap();
        match rot.choose("[::1]:80".parse().unwrap(), 1) {
            Choice::GiveUp(reason) => assert!(
                reason.contains("IPv6") && reason.contains("[::1]:80"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

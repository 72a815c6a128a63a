//! The NAT layer: source-NAT ports per destination, from conntrack.
//!
//! With masquerade or SNAT the scarce ports are the NAT's: each
//! (post-NAT source IP, destination IP, destination port) can hold as many
//! connections as the rule's port range allows, and every conntrack entry
//! holds its NAT port until it expires (`TIME_WAIT` for
//! `nf_conntrack_tcp_timeout_time_wait`, 120 s by default). When no port is
//! free the SYN is dropped (`insert_failed`, `drop`): callers see timeouts,
//! not EADDRNOTAVAIL.
//!
//! [`scan`] reads the calling thread's namespace (use [`scan_in`] for
//! another): the conntrack statistics, then (only when a source-NAT hook
//! exists, so a namespace without NAT costs two netlink round trips) the
//! source-NATed TCP entries grouped by [`NatKey`], and the NAT rules that
//! give each group its capacity.
//!
//! **Capacity.** A rule's `--to-ports` / `to :LO-HI` range when set.
//! Otherwise the kernel's default, from `nf_nat_l4proto_unique_tuple()` in
//! net/netfilter/nf_nat_core.c: with no range given, a source port of 1024
//! or more is mapped into 1024–65535 ([`DEFAULT_NAT_PORTS`] = 64,512 ports),
//! 512–1023 into 600–1023 and below 512 into 1–511. `get_unique_tuple()`
//! keeps the original port when it is free, so masqueraded connections
//! often keep the client's port; the bound is the range all the same.
//! The search is bounded (`NF_NAT_MAX_ATTEMPTS` = 128 tries, then halving
//! rounds), so a nearly full large range can fail before 100%. Since Linux
//! 6.4 (`nf_nat_used_tuple_harder()`) the last 32 tries of a new SYN may
//! evict a clashing source-NAT entry in `TIME_WAIT`/`CLOSE` whose sequence
//! number it has passed, so `TIME_WAIT` entries are reclaimable on recent
//! kernels while every other state holds its port; the per-state counts
//! keep the two apart.

pub mod advice;
pub mod analysis;
pub mod conntrack;
pub mod rules;

use std::io;
use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::netns::{self, Target};
use crate::ScanError;
pub use conntrack::{CtTcpState, Entry, Stats};
pub use rules::{NatRule, Rules};

/// First port of the kernel's default source-NAT range for client ports ≥ 1024.
pub const DEFAULT_NAT_PORT_LO: u16 = 1024;
/// Last port of the kernel's default source-NAT range.
pub const DEFAULT_NAT_PORT_HI: u16 = 65535;
/// Ports in the kernel's default range (1024–65535): 64,512.
pub const DEFAULT_NAT_PORTS: u32 = 65535 - 1024 + 1;

/// Everything that can go wrong while reading the NAT layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatError {
    /// A netlink system call failed, or the kernel answered with `NLMSG_ERROR`.
    #[error("netlink netfilter {step} failed")]
    Netlink {
        /// Which step: "socket", "bind", "send", "recv" or "request".
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink message did not have the layout the uapi headers describe.
    #[error("malformed netfilter message at byte {offset}: {reason}")]
    Decode {
        /// Offset of the message in the datagram.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// One NAT budget: the post-NAT source address and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NatKey {
    /// The source address after NAT (the reply tuple's destination).
    pub nat_source: IpAddr,
    /// The real destination (the reply tuple's source, after any DNAT).
    pub destination: SocketAddr,
}

/// How a group's capacity was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Basis {
    /// The port range of a NAT rule.
    Rule {
        /// The rule, e.g. `nat POSTROUTING` (iptables-nft).
        location: String,
        /// Where it was read.
        origin: rules::Origin,
    },
    /// The kernel's default range ([`DEFAULT_NAT_PORTS`]), and why.
    KernelDefault {
        /// Why no rule range applies, or why it cannot be known.
        reason: String,
    },
}

/// What the NAT can hand out for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Number of ports.
    pub ports: u32,
    /// `(first, last)` port.
    pub range: (u16, u16),
    /// Where the number comes from.
    pub basis: Basis,
    /// The rule sets `random-fully`.
    pub random_fully: bool,
}

/// Connections per conntrack TCP state, indexed by [`CtTcpState::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts(pub [u32; 10]);

impl StateCounts {
    /// The count in `state`.
    pub fn get(&self, state: CtTcpState) -> u32 {
        self.0[state.index()]
    }

    /// Every state with a non-zero count, in kernel order.
    pub fn nonzero(&self) -> impl Iterator<Item = (CtTcpState, u32)> + '_ {
        CtTcpState::ALL
            .into_iter()
            .map(|s| (s, self.get(s)))
            .filter(|(_, n)| *n > 0)
    }
}

impl Serialize for StateCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (state, n) in self.nonzero() {
            m.serialize_entry(state.name(), &n)?;
        }
        m.end()
    }
}

/// The source-NATed TCP connections of one [`NatKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatGroup {
    /// Post-NAT source and destination.
    #[serde(flatten)]
    pub key: NatKey,
    /// Entries per conntrack TCP state (`NONE` for an entry without a state).
    pub states: StateCounts,
    /// All entries: NAT ports held toward this destination.
    pub total: u32,
    /// Lowest and highest NAT port seen.
    pub ports_seen: (u16, u16),
    /// What the NAT can hand out.
    pub capacity: Capacity,
}

impl NatGroup {
    /// `total / capacity.ports`.
    pub fn utilization(&self) -> f64 {
        f64::from(self.total) / f64::from(self.capacity.ports.max(1))
    }
}

/// The NAT view of one namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatSnapshot {
    /// The namespace has a source-NAT hook (an nftables `nat` chain on
    /// postrouting, which iptables-nft also makes, or a legacy `nat` table).
    /// When false nothing else was read but the statistics.
    pub source_nat: bool,
    /// Conntrack counters and fill; `None` when conntrack is not available
    /// (see `notes`).
    pub stats: Option<Stats>,
    /// Groups, most entries first.
    pub groups: Vec<NatGroup>,
    /// Source-NATed TCP entries seen.
    pub snat_entries: u64,
    /// The NAT rules.
    pub rules: Rules,
    /// What could not be read, in words.
    pub notes: Vec<String>,
}

/// Accumulates source-NATed TCP entries into groups, with no allocation per entry.
#[derive(Debug, Default)]
pub struct Grouper {
    groups: FxHashMap<NatKey, Acc>,
    /// Entries given to [`Grouper::add`] that were source-NATed TCP.
    pub snat_entries: u64,
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    states: StateCounts,
    total: u32,
    lo: u16,
    hi: u16,
}

impl Grouper {
    /// Adds one entry; entries that are not source-NATed are ignored.
    pub fn add(&mut self, e: &Entry) {
        if !e.is_snat() {
            return;
        }
        self.snat_entries += 1;
        let key = NatKey {
            nat_source: e.reply_dst.ip(),
            destination: e.reply_src,
        };
        let port = e.reply_dst.port();
        let acc = self.groups.entry(key).or_insert(Acc {
            states: StateCounts::default(),
            total: 0,
            lo: port,
            hi: port,
        });
        acc.states.0[e.state.map_or(0, CtTcpState::index)] += 1;
        acc.total += 1;
        acc.lo = acc.lo.min(port);
        acc.hi = acc.hi.max(port);
    }

    /// The groups with their capacity from `rules`, most entries first.
    pub fn finish(self, rules: &[NatRule], rules_known: bool) -> Vec<NatGroup> {
        let mut out: Vec<NatGroup> = self
            .groups
            .into_iter()
            .map(|(key, a)| NatGroup {
                key,
                states: a.states,
                total: a.total,
                ports_seen: (a.lo, a.hi),
                capacity: capacity_for(key.nat_source, (a.lo, a.hi), rules, rules_known),
            })
            .collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then(a.key.cmp(&b.key)));
        out
    }
}

fn kernel_default(reason: String) -> Capacity {
    Capacity {
        ports: DEFAULT_NAT_PORTS,
        range: (DEFAULT_NAT_PORT_LO, DEFAULT_NAT_PORT_HI),
        basis: Basis::KernelDefault { reason },
        random_fully: false,
    }
}

/// The capacity of a group whose NAT address is `nat_source` and whose NAT
/// ports seen span `seen`: the range of the rule that can have produced it.
///
/// A rule fits when it may hand out `nat_source` (SNAT address range;
/// masquerade takes any) and its port range, if any, holds every port seen.
/// Among fitting rules with a range, the smallest is taken (the tightest
/// bound that explains the ports); a fitting rule without a range means the
/// kernel default. `rules_known` false (a rule source could not be read)
/// makes an unmatched group say so.
pub fn capacity_for(
    nat_source: IpAddr,
    seen: (u16, u16),
    rules: &[NatRule],
    rules_known: bool,
) -> Capacity {
    let fitting: Vec<&NatRule> = rules
        .iter()
        .filter(|r| r.may_use_address(nat_source))
        .filter(|r| match r.ports {
            Some((lo, hi)) => lo.min(hi) <= seen.0 && seen.1 <= hi.max(lo),
            None => true,
        })
        .collect();
    if let Some(r) = fitting
        .iter()
        .filter(|r| r.ports.is_some())
        .min_by_key(|r| r.port_count())
    {
        let (lo, hi) = r
            .ports
            .unwrap_or((DEFAULT_NAT_PORT_LO, DEFAULT_NAT_PORT_HI));
        return Capacity {
            ports: r.port_count().unwrap_or(DEFAULT_NAT_PORTS),
            range: (lo.min(hi), hi.max(lo)),
            basis: Basis::Rule {
                location: r.location.clone(),
                origin: r.origin,
            },
            random_fully: r.random_fully,
        };
    }
    if let Some(r) = fitting.first() {
        let mut c = kernel_default(format!("the rule in {} sets no port range", r.location));
        c.random_fully = r.random_fully;
        return c;
    }
    kernel_default(if rules_known {
        format!(
            "no NAT rule found that hands out {nat_source} with ports {}-{}",
            seen.0, seen.1
        )
    } else {
        "the NAT rules could not be read (see notes)".to_string()
    })
}

/// True when the calling thread's namespace has an nftables chain of type
/// `nat` on the postrouting hook (native nft or iptables-nft), read over
/// `NETLINK_NETFILTER` (one chain dump); `Err` carries why it is unknown.
fn nft_snat_hook() -> Result<bool, NatError> {
    nftchains::has_postrouting_nat()
}

/// True when a legacy x_tables `nat` table exists (IPv4 or IPv6).
fn legacy_nat() -> bool {
    ["ip_tables_names", "ip6_tables_names"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "nat"))
    })
}

mod nftchains;

/// Reads the NAT view of the calling thread's namespace.
pub fn scan() -> NatSnapshot {
    let mut notes = Vec::new();
    let stats = match conntrack::read_stats() {
        Ok(s) => Some(s),
        Err(e) => {
            notes.push(format!("conntrack statistics unavailable: {}", chain(&e)));
            None
        }
    };
    let hook = match nft_snat_hook() {
        Ok(b) => b,
        Err(e) => {
            notes.push(format!("nftables chains unreadable: {}", chain(&e)));
            false
        }
    } || legacy_nat();
    if !hook {
        return NatSnapshot {
            source_nat: false,
            stats,
            groups: Vec::new(),
            snat_entries: 0,
            rules: Rules::default(),
            notes,
        };
    }
    let mut g = Grouper::default();
    if let Err(e) = conntrack::dump(true, |e| g.add(&e)) {
        notes.push(format!("conntrack table unreadable: {}", chain(&e)));
    }
    let rules = rules::read();
    let snat_entries = g.snat_entries;
    let groups = g.finish(&rules.rules, rules.notes.is_empty());
    NatSnapshot {
        source_nat: true,
        stats,
        groups,
        snat_entries,
        rules,
        notes,
    }
}

/// Reads the NAT view of `target` (see [`netns::run_in`]).
pub fn scan_in(target: &Target) -> Result<NatSnapshot, NatError> {
    Ok(netns::run_in(target, scan)?)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::rules::{Action, Origin};
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(orig_src: &str, nat: &str, dst: &str, state: CtTcpState, status: u32) -> Entry {
        Entry {
            orig_src: sa(orig_src),
            orig_dst: sa(dst),
            reply_src: sa(dst),
            reply_dst: sa(nat),
            status,
            state: Some(state),
        }
    }

    fn rule(addresses: Option<(&str, &str)>, ports: Option<(u16, u16)>) -> NatRule {
        NatRule {
            origin: Origin::Nftables,
            action: if addresses.is_some() {
                Action::Snat
            } else {
                Action::Masquerade
            },
            addresses: addresses.map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())),
            ports,
            random_fully: false,
            random: false,
            persistent: false,
            location: format!("{addresses:?} {ports:?}"),
        }
    }

    #[test]
    fn groups_by_post_nat_source_and_destination_with_state_counts() {
        let snat = conntrack::IPS_SRC_NAT | 0b1110;
        let mut g = Grouper::default();
        for (i, st) in [
            CtTcpState::Established,
            CtTcpState::TimeWait,
            CtTcpState::TimeWait,
        ]
        .into_iter()
        .enumerate()
        {
            g.add(&entry(
                &format!("10.0.0.{}:4000{i}", i + 1),
                &format!("198.18.0.1:2000{i}"),
                "198.18.0.2:80",
                st,
                snat,
            ));
        }
        // Another destination port, another NAT address, and a non-NAT entry.
        g.add(&entry(
            "10.0.0.1:1",
            "198.18.0.1:20050",
            "198.18.0.2:443",
            CtTcpState::SynSent,
            snat,
        ));
        g.add(&entry(
            "10.0.0.1:2",
            "198.18.0.9:20051",
            "198.18.0.2:80",
            CtTcpState::Established,
            snat,
        ));
        g.add(&entry(
            "10.0.0.1:3",
            "10.0.0.1:3",
            "198.18.0.2:80",
            CtTcpState::Established,
            0b1110,
        ));
        assert_eq!(g.snat_entries, 5);
        let groups = g.finish(&[rule(None, Some((20000, 20099)))], true);
        assert_eq!(groups.len(), 3);
        let top = &groups[0];
        assert_eq!(top.key.nat_source, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(top.key.destination, sa("198.18.0.2:80"));
        assert_eq!(top.total, 3);
        assert_eq!(top.states.get(CtTcpState::TimeWait), 2);
        assert_eq!(top.states.get(CtTcpState::Established), 1);
        assert_eq!(top.ports_seen, (20000, 20002));
        assert_eq!(top.capacity.ports, 100);
        assert!((top.utilization() - 0.03).abs() < 1e-9);
        let json = serde_json::to_value(top).unwrap();
        assert_eq!(json["states"]["TIME_WAIT"], 2);
        assert_eq!(json["destination"], "198.18.0.2:80");
        assert!(
            json["states"].get("CLOSE").is_none(),
            "zero states are left out"
        );
    }

    #[test]
    fn capacity_from_the_rule_that_explains_the_ports_else_the_kernel_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let rules = [
            rule(None, Some((20000, 20099))),
            rule(Some(("203.0.113.1", "203.0.113.4")), Some((1024, 2047))),
            rule(Some(("203.0.113.9", "203.0.113.9")), None),
        ];
        let c = capacity_for(ip("198.18.0.1"), (20010, 20090), &rules, true);
        assert_eq!((c.ports, c.range), (100, (20000, 20099)));
        let c = capacity_for(ip("203.0.113.2"), (1500, 1600), &rules, true);
        assert_eq!((c.ports, c.range), (1024, (1024, 2047)));
        // Ports outside every range: only a range-less rule fits.
        let c = capacity_for(ip("203.0.113.9"), (40000, 50000), &rules, true);
        assert_eq!(c.ports, DEFAULT_NAT_PORTS);
        assert_eq!(c.range, (1024, 65535));
        match &c.basis {
            Basis::KernelDefault { reason } => {
                assert!(reason.contains("sets no port range"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Nothing fits: the default, saying why.
        let c = capacity_for(ip("203.0.113.2"), (40000, 40001), &rules, true);
        match &c.basis {
            Basis::KernelDefault { reason } => {
                assert!(
                    reason.contains("no NAT rule") && reason.contains("203.0.113.2"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        let c = capacity_for(ip("203.0.113.2"), (40000, 40001), &[], false);
        match &c.basis {
            Basis::KernelDefault { reason } => {
                assert!(reason.contains("could not be read"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(DEFAULT_NAT_PORTS, 64_512);
    }
}

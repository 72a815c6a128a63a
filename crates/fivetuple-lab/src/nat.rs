//! `--topology nat`: "pods" (namespaces) behind a "node" namespace that
//! source-NATs them to one address on the way to upstream B, in its own
//! namespace. The NAT's port range has `--ports` ports, so the scarce ports
//! are the NAT's, as on a Kubernetes node, a Docker host or a cloud NAT.
//!
//! This module holds the addresses, the nft ruleset of each remedy (a pure
//! function, tested without root) and the readings of the node's conntrack
//! table (over netlink, through `fivetuple_scan::nat`). The namespaces are
//! box threads like the other topologies' ([`crate::netns`]), so they and
//! every veth between them disappear when the threads end, on every path.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::config::{Remedy, SNAT_ADDRESSES, UPSTREAM_PORT};
use crate::error::LabError;

/// The node's address toward B: every pod is masqueraded to it.
pub const NODE_OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Upstream B's address.
pub const SERVICE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// First address of `snat-pool` (then .12, .13, ...), on the node's outside link.
pub const SNAT_POOL_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// The node's end of the outside link.
pub const OUTSIDE_LINK: &str = "ft-out";
/// B's end of the outside link.
pub const SERVICE_LINK: &str = "ft-svc";
/// `conntrack` keeps a closed TCP entry this long by default
/// (`nf_conntrack_tcp_timeout_time_wait`); the run reads the real value.
pub const DEFAULT_CT_TIME_WAIT_SECS: f64 = 120.0;

/// Pod `k`'s address (198.18.(2+k).2) and the node's address on its link (.1).
pub fn pod_addresses(k: u8) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(198, 18, 2 + k, 2),
        Ipv4Addr::new(198, 18, 2 + k, 1),
    )
}

/// The node's link toward pod `k` (the pod's end has the same name in its
/// own namespace).
pub fn pod_link(k: u8) -> String {
    format!("ft-pod{k}")
}

/// The source addresses the NAT hands out for `remedy`.
pub fn nat_addresses(remedy: Remedy) -> Vec<Ipv4Addr> {
    if remedy == Remedy::SnatPool {
        let first = u32::from(SNAT_POOL_FIRST);
        (0..u32::from(SNAT_ADDRESSES))
            .map(|i| Ipv4Addr::from(first + i))
            .collect()
    } else {
        vec![NODE_OUTSIDE]
    }
}

/// The node's NAT rule for `remedy`: TCP from the pods' links leaving on
/// the outside link is source-NATed into ports `lo-hi` (`masquerade to
/// :lo-hi`, `fully-random` for `random-fully`, `snat to A-B:lo-hi` for
/// `snat-pool`). The node's own connections are not NATed.
pub fn rule(remedy: Remedy, lo: u16, hi: u16) -> String {
    let action = match remedy {
        Remedy::SnatPool => {
            let a = nat_addresses(remedy);
            format!("snat to {}-{}:{lo}-{hi}", a[0], a[a.len() - 1])
        }
        Remedy::RandomFully => format!("masquerade to :{lo}-{hi} fully-random"),
        _ => format!("masquerade to :{lo}-{hi}"),
    };
    format!("iifname \"ft-pod*\" oifname \"{OUTSIDE_LINK}\" meta l4proto tcp {action}")
}

/// The node's nft ruleset for `remedy`: one table holding [`rule`].
pub fn ruleset(remedy: Remedy, lo: u16, hi: u16) -> String {
    format!(
        "table ip fivetuple_repro {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\t{}\n\
         \t}}\n\
         }}\n",
        rule(remedy, lo, hi)
    )
}

/// Loads `ruleset` with `nft -f -` from the calling thread, so into its
/// namespace (a child inherits the namespaces of the thread that forks it).
pub fn load_ruleset(ruleset: &str) -> Result<(), LabError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LabError::namespace_msg(
                    "`nft` not found: --topology nat needs nftables (apt-get install nftables; scripts/setup installs it)",
                )
            } else {
                LabError::namespace("running nft", e)
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| LabError::namespace("writing the ruleset to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::namespace("running nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::namespace_msg(format!(
            "nft -f rejected the NAT ruleset: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The conntrack counters of the node for one remedy: how much each rose
/// during the run (`conntrack -S`, summed over CPUs), and the table's fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackCounts {
    /// `insert_failed`: a new entry clashed when it was confirmed (no free
    /// NAT tuple); its packet was dropped.
    pub insert_failed: u64,
    /// `drop`: packets conntrack dropped.
    pub drop: u64,
    /// `early_drop`: entries evicted because the table was full.
    pub early_drop: u64,
    /// Most source-NATed entries toward B at a sample: NAT ports in use.
    pub peak_entries: u64,
    /// Source-NATed entries toward B when the run ended.
    pub entries_at_end: u64,
    /// Distinct NAT addresses those entries use: `snat-pool` offers 4, but
    /// nf_nat picks the address by a hash of (client address, destination
    /// address) (`find_best_ips_proto()`), so one pod always gets the same one.
    pub addresses_used: u64,
    /// Calls answered 200 beyond `entries_at_end`, when every call opened
    /// its own connection: each such call took over the NAT entry of a
    /// closed connection before conntrack's TIME_WAIT expired (Linux 6.4+
    /// evicts a TIME_WAIT entry whose sequence number a new SYN has passed,
    /// `nf_nat_used_tuple_harder()`; a SYN reusing the same original tuple
    /// reopens its entry). `None` for `pooled`.
    pub reused: Option<u64>,
}

/// Reads the calling thread's namespace's conntrack statistics over netlink.
pub fn read_stats() -> Result<fivetuple_scan::nat::Stats, LabError> {
    fivetuple_scan::nat::conntrack::read_stats()
        .map_err(|e| LabError::run("reading the node's conntrack statistics", e))
}

/// Source-NATed TCP entries toward B in the calling thread's conntrack
/// table: the NAT ports in use (the driver's sampler). The driver's own
/// connections to the pods and the pods' path probes are not counted.
pub fn entries() -> io::Result<u64> {
    nat_table().map(|(n, _)| n)
}

/// The source-NATed entries toward B and the distinct addresses they were
/// NATed to.
pub fn nat_table() -> io::Result<(u64, u64)> {
    let service = SocketAddr::from((SERVICE, UPSTREAM_PORT));
    let mut n = 0;
    let mut addresses = BTreeSet::new();
    fivetuple_scan::nat::conntrack::dump(true, |e| {
        if e.is_snat() && e.reply_src == service {
            n += 1;
            addresses.insert(e.reply_dst.ip());
        }
    })
    .map_err(io::Error::other)?;
    Ok((n, addresses.len() as u64))
}

/// What rose between `before` and `after`; `peak` is the highest sampled
/// NAT entry count, `at_end` the count (and the addresses) after the run, `ok` the calls
/// answered 200 and `per_call` whether each opened its own connection.
pub fn counts(
    before: &fivetuple_scan::nat::Stats,
    after: &fivetuple_scan::nat::Stats,
    peak: u64,
    (at_end, addresses_used): (u64, u64),
    ok: u64,
    per_call: bool,
) -> ConntrackCounts {
    ConntrackCounts {
        insert_failed: after.insert_failed.saturating_sub(before.insert_failed),
        drop: after.drop.saturating_sub(before.drop),
        early_drop: after.early_drop.saturating_sub(before.early_drop),
        peak_entries: peak.max(at_end),
        entries_at_end: at_end,
        addresses_used,
        reused: per_call.then(|| ok.saturating_sub(at_end)),
    }
}

/// `net.netfilter.nf_conntrack_tcp_timeout_time_wait` of the calling
/// thread's namespace, or the default when it cannot be read.
pub fn ct_time_wait_secs() -> f64 {
    crate::netns::read_sysctl("netfilter.nf_conntrack_tcp_timeout_time_wait")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_CT_TIME_WAIT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_name_the_range_and_the_remedy() {
        let naive = ruleset(Remedy::Naive, 32768, 32867);
        assert!(
            naive.contains("oifname \"ft-out\" meta l4proto tcp masquerade to :32768-32867\n"),
            "{naive}"
        );
        let random = ruleset(Remedy::RandomFully, 32768, 32867);
        assert!(random.contains("masquerade to :32768-32867 fully-random"));
        let pool = ruleset(Remedy::SnatPool, 20000, 20099);
        assert!(
            pool.contains("snat to 198.18.0.11-198.18.0.14:20000-20099"),
            "{pool}"
        );
        assert_eq!(nat_addresses(Remedy::SnatPool).len(), 4);
        assert_eq!(nat_addresses(Remedy::Rotate), vec![NODE_OUTSIDE]);
    }

    #[test]
    fn counters_are_deltas() {
        let before = fivetuple_scan::nat::Stats {
            insert_failed: 5,
            drop: 7,
            count: 3,
            ..Default::default()
        };
        let after = fivetuple_scan::nat::Stats {
            insert_failed: 9,
            drop: 7,
            count: 100,
            ..Default::default()
        };
        let c = counts(&before, &after, 120, (100, 1), 250, true);
        assert_eq!((c.insert_failed, c.drop, c.peak_entries), (4, 0, 120));
        assert_eq!((c.entries_at_end, c.reused), (100, Some(150)));
        assert_eq!(counts(&before, &after, 5, (5, 1), 250, false).reused, None);
    }
}

//! The occupancy model: from a socket table and the settings to
//! per-destination headroom, rate, time to exhaustion and findings.
//!
//! Capacity is counted per (local IP, remote IP, remote port), because a
//! plain `connect()` shares ports across destinations and only the 4-tuple
//! must be unique (`__inet_hash_connect()`, DESIGN §2). Everything here is
//! pure: it takes tables that were read elsewhere.
//!
//! The files follow the seams: `types` (what an analysis says),
//! `direction` (which side each socket is on, grouping by destination),
//! `budget` (usable ports, rates, time to exhaustion, applying
//! `fivetuple_kernel::budget`), and `findings` (the advice prose, which
//! people other than kernel specialists edit). `analyze` ties them.

mod budget;
mod direction;
mod findings;
mod types;

use std::collections::HashMap;
use std::time::Duration;

use crate::procs::Owners;

pub use direction::{
    dest_key, listening_ports, may_be_outbound, Direction, Directions, FANOUT_MIN_IN_RANGE,
};
pub use findings::TIME_WAIT_NO_OWNER;
pub use fivetuple_kernel::budget::{canonical_ip, TIME_WAIT_SECS};
pub use types::{
    Analysis, DestKey, Destination, Finding, FindingCode, Freeing, ProcessRef, Severity, Snapshot,
    StateCounts, Thresholds, Totals,
};

use direction::{group, tuple_key, FxSet};

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
    let mut totals = budget::totals(&now.sockets, settings, &directions);
    let capacity = totals.usable_ports;

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

    let mut destinations: Vec<Destination> = groups
        .into_iter()
        .map(|(key, acc)| {
            totals.outbound += acc.states.total();
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
            budget::destination(
                key, acc, capacity, settings, interval_s, thresholds, processes,
            )
        })
        .collect();
    destinations.sort_by(|a, b| {
        b.utilization
            .total_cmp(&a.utilization)
            .then(b.in_use.cmp(&a.in_use))
            .then(a.key().cmp(&b.key()))
    });

    let active_opens_per_s = budget::active_opens_per_s(
        before.and_then(|(b, _)| b.counters.active_opens),
        now.counters.active_opens,
        interval_s,
    );
    let notes = findings::notes(now.fallback_reason.as_deref(), owners, &totals);
    let findings = findings::findings(&destinations, settings, &now.counters, &totals, thresholds);
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

#[cfg(test)]
mod tests;

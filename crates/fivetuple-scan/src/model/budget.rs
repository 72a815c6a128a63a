//! The budget of a namespace and of each destination: ports held by
//! listeners and binds, usable ports, utilization, sustainable rate, time
//! to exhaustion and severity. The kernel's rules come from
//! `fivetuple_kernel::budget`; this file applies them to one scan.

use std::collections::HashSet;

use fivetuple_kernel::budget;

use super::direction::{Acc, Direction, Directions};
use super::types::{DestKey, Destination, ProcessRef, Thresholds, Totals};
use crate::settings::Settings;
use crate::socket::{Socket, TcpState};

/// Namespace-wide totals, and the usable ports per destination: the range
/// minus reserved ports minus the ports held by listeners, binds and the
/// server side of connections.
pub(super) fn totals(sockets: &[Socket], settings: &Settings, directions: &Directions) -> Totals {
    let mut totals = Totals {
        sockets: sockets.len() as u32,
        ..Totals::default()
    };
    let mut held: HashSet<u16> = HashSet::new();
    for s in sockets {
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
        let server_side = match directions.direction(s) {
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
        if (s.state == TcpState::Listen || bound_only || server_side) && settings.is_pickable(port)
        {
            held.insert(port);
        }
    }
    totals.ports_held_by_binds = held.len() as u32;
    totals.usable_ports = settings.usable_ports(totals.ports_held_by_binds);
    totals
}

/// One destination's headroom, from its group, the namespace's usable
/// ports (`capacity`) and the interval to the previous scan.
pub(super) fn destination(
    key: DestKey,
    acc: Acc,
    capacity: u32,
    settings: &Settings,
    interval_s: Option<f64>,
    thresholds: Thresholds,
    processes: Vec<ProcessRef>,
) -> Destination {
    // No usable port at all is exhaustion, not 0%: every connect()
    // without an explicit bind fails with EADDRNOTAVAIL.
    let exhausted = acc.in_use >= capacity;
    let utilization = if exhausted {
        1.0
    } else {
        f64::from(acc.in_use) / f64::from(capacity)
    };
    let tw_reuse_applies = settings.tw_reuse_applies(key.local_ip, key.remote_ip);
    let sustainable = budget::sustainable_rate(
        f64::from(capacity),
        budget::port_hold_secs(tw_reuse_applies, settings.effective_tw_reuse_delay_ms()),
    );
    let rate = interval_s.map(|s| f64::from(acc.new) / s);
    let seconds_to_exhaustion = budget::seconds_to_exhaustion(
        acc.in_use,
        capacity,
        rate,
        sustainable,
        acc.freeing.within_10s,
    );
    let severity = thresholds.severity(utilization, seconds_to_exhaustion, exhausted);
    Destination {
        local_ip: key.local_ip,
        remote_ip: key.remote_ip,
        remote_port: key.remote_port,
        states: acc.states,
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
}

/// `Tcp ActiveOpens` per second between two readings `interval_s` apart.
pub(super) fn active_opens_per_s(
    before: Option<u64>,
    now: Option<u64>,
    interval_s: Option<f64>,
) -> Option<f64> {
    match (before, now, interval_s) {
        (Some(x), Some(y), Some(s)) => Some(y.saturating_sub(x) as f64 / s),
        _ => None,
    }
}

//! Findings and advice: the prose doctor prints, written from the numbers
//! the budget computed. People who are not kernel specialists edit this
//! file; the arithmetic lives in `fivetuple_kernel::budget` and
//! `super::budget`.

use super::types::{Destination, Finding, FindingCode, Severity, Thresholds, Totals};
use crate::procs::Owners;
use crate::settings::{Counters, Settings};
use crate::socket::TcpState;

pub(super) fn findings(
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
    let (lo, hi) = settings.ip_local_port_range.bounds();
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
            code: FindingCode::PortUtilization,
            destination: Some(d.label()),
            message,
            advice,
        });
        if d.explicit_binds > 0 {
            out.push(Finding {
                severity: Severity::Warning,
                code: FindingCode::ExplicitBind,
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
            code: FindingCode::BindBeforeConnect,
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
            code: FindingCode::TwReuseWithoutTimestamps,
            destination: None,
            message: format!("net.ipv4.tcp_tw_reuse is {} but net.ipv4.tcp_timestamps is 0, so TIME_WAIT is never reused", settings.tcp_tw_reuse),
            advice: vec!["sysctl -w net.ipv4.tcp_timestamps=1".into()],
        });
    }
    if let Some(n) = counters.tcp_time_wait_overflow.filter(|n| *n > 0) {
        out.push(Finding {
            severity: Severity::Info,
            code: FindingCode::TimeWaitOverflow,
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
    let (lo, hi) = settings.ip_local_port_range.bounds();
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
            settings.ip_local_reserved_ports
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
        code: FindingCode::NoUsablePorts,
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

/// Caveats about the data: a /proc fallback, partial process attribution,
/// TIME_WAIT sockets without owners.
pub(super) fn notes(
    fallback_reason: Option<&str>,
    owners: Option<&Owners>,
    totals: &Totals,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(r) = fallback_reason {
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
        notes.push(TIME_WAIT_NO_OWNER.into());
    }
    notes
}

/// The note that TIME_WAIT sockets have no owner in the socket table; a
/// caller with another source of owners (BPF) replaces it with its own.
pub const TIME_WAIT_NO_OWNER: &str =
    "TIME_WAIT sockets have no owning process: the kernel keeps them after close()";

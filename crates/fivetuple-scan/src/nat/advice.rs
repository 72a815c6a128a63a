//! The words of the NAT view: what a NAT analysis means and what to change.
//! The numbers come from [`super::analysis`]; edit the prose here.

use super::analysis::NatAnalysis;
use super::Basis;
use crate::model::{Finding, FindingCode, Severity, Thresholds};

/// Findings for an analysed namespace, worst first.
pub fn findings(a: &NatAnalysis, t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in a
        .destinations
        .iter()
        .filter(|d| d.severity >= Severity::Warning)
    {
        let dest = format!("{} -> {}", d.key.nat_source, d.key.destination);
        let eta = match d.seconds_to_exhaustion {
            Some(0.0) => "; no NAT port is free".to_string(),
            Some(s) => format!(
                "; full in {s:.0} s at +{:.1}/s",
                d.growth_per_s.unwrap_or(0.0)
            ),
            None => String::new(),
        };
        let basis = match &d.capacity.basis {
            Basis::Rule { location, .. } => format!("the range of the rule in {location}"),
            Basis::KernelDefault { reason } => format!("the kernel default range ({reason})"),
        };
        let mut advice = vec![
            "Keep connections alive and pool them in the clients: every new connection holds a NAT port while it lives and for nf_conntrack_tcp_timeout_time_wait (120 s by default) after it closes.".to_string(),
            "Give the NAT more source addresses (nft `snat to A-B`, iptables `--to-source A-B`): each address adds a full port range per destination. Cloud NAT: AWS NAT Gateway allows 55,000 connections per destination per address (add secondary IPv4 addresses); Azure NAT gateway / load balancer outbound rules and App Service (128 SNAT ports per instance by default) need more outbound IPs or a NAT gateway; GCP Cloud NAT: raise min-ports-per-vm or enable dynamic port allocation; Cilium egress gateway has 32,768 ports per remote endpoint.".to_string(),
        ];
        if let (Basis::Rule { .. }, true) = (
            &d.capacity.basis,
            d.capacity.ports < super::DEFAULT_NAT_PORTS,
        ) {
            advice.push(format!(
                "Widen the rule's port range ({}-{}, {} ports) or drop it to use the kernel's 1024-65535.",
                d.capacity.range.0, d.capacity.range.1, d.capacity.ports
            ));
        }
        if !d.capacity.random_fully {
            advice.push("Add `--random-fully` (nft `masquerade fully-random` / `snat ... fully-random`): ports are then picked at random instead of from the client's own port first, which avoids clashes between clients and nodes and spreads reuse.".to_string());
        }
        if d.closing > 0 {
            advice.push(format!(
                "{} of the entries are closing (TIME_WAIT/CLOSE): Linux 6.4+ reuses those for a new SYN that has a higher sequence number; lowering net.netfilter.nf_conntrack_tcp_timeout_time_wait frees them sooner, at the cost of conntrack forgetting late packets.",
                d.closing
            ));
        }
        out.push(Finding {
            severity: d.severity,
            code: FindingCode::NatPortUtilization,
            destination: Some(dest),
            message: format!(
                "{} of {} NAT ports in use ({:.0}%; capacity from {basis}){eta}",
                d.in_use,
                d.capacity.ports,
                d.utilization * 100.0
            ),
            advice,
        });
    }
    if let Some(c) = &a.conntrack {
        let rise = c.insert_failed_delta.unwrap_or(0) + c.drop_delta.unwrap_or(0);
        if rise > 0 {
            let exhausted = a
                .destinations
                .iter()
                .any(|d| d.utilization >= t.crit_pct / 100.0);
            out.push(Finding {
                severity: if exhausted { Severity::Critical } else { Severity::Warning },
                code: FindingCode::ConntrackDrops,
                destination: None,
                message: format!(
                    "conntrack dropped packets during the interval: insert_failed +{}, drop +{} (now {} and {}); dropped SYNs make callers wait for retransmits (1 s, 3 s, ...) and time out, with no EADDRNOTAVAIL",
                    c.insert_failed_delta.unwrap_or(0),
                    c.drop_delta.unwrap_or(0),
                    c.stats.insert_failed,
                    c.stats.drop
                ),
                advice: vec![if exhausted {
                    "A NAT destination is out of ports: the drops are SYNs that found no free NAT port (see the NAT findings).".to_string()
                } else {
                    "No NAT destination is full: check clashes between clients (`--random-fully`) and the table fill.".to_string()
                }],
            });
        } else if c.insert_failed_delta.is_none() && (c.stats.insert_failed > 0 || c.stats.drop > 0)
        {
            out.push(Finding {
                severity: Severity::Info,
                code: FindingCode::ConntrackDrops,
                destination: None,
                message: format!(
                    "conntrack has counted insert_failed {} and drop {} since the namespace started (one scan: no rate)",
                    c.stats.insert_failed, c.stats.drop
                ),
                advice: vec!["Run with --interval to see whether they are rising now.".to_string()],
            });
        }
        if c.table_fill >= t.warn_pct / 100.0 && c.stats.max > 0 {
            out.push(Finding {
                severity: if c.table_fill >= t.crit_pct / 100.0 { Severity::Critical } else { Severity::Warning },
                code: FindingCode::ConntrackTableFull,
                destination: None,
                message: format!(
                    "the conntrack table holds {} of {} entries ({:.0}%; early_drop {})",
                    c.stats.count,
                    c.stats.max,
                    c.table_fill * 100.0,
                    c.stats.early_drop
                ),
                advice: vec!["Raise net.netfilter.nf_conntrack_max (host-wide) or cut connection churn: a full table drops new connections whatever the NAT ports.".to_string()],
            });
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

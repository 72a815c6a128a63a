//! `doctor --all-netns`: every network namespace of the host, each entered
//! on its own thread (`fivetuple_scan::node`), one section per namespace,
//! worst utilization first. The exit code is the worst across namespaces.
//! A namespace that source-NATs gets its NAT section too, read before and
//! after the socket scans (so its rate spans them, with no extra wait).

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use fivetuple_scan::identity::Identity;
use fivetuple_scan::model::{Finding, Severity};
use fivetuple_scan::nat::{self, analysis::NatAnalysis, NatSnapshot};
use fivetuple_scan::node::{self, NamespaceReport, Netns, NodeOptions};
use fivetuple_scan::ScanError;
use serde::Serialize;

use super::{
    exit_code, nat_shown, rate_note, severity_name, write_findings, write_namespace, Config,
    JsonBody, JsonNat, JsonThresholds, SCHEMA_VERSION,
};

/// The NAT view of each namespace (by inode) and when it was read; `Err`
/// when it could not be entered. Gone namespaces are left out.
type NatReadings = HashMap<u64, Result<(NatSnapshot, Instant), ScanError>>;

fn read_nat(namespaces: &[Netns]) -> NatReadings {
    namespaces
        .iter()
        .filter_map(|ns| {
            let r = node::run_in(ns, || Ok(nat::scan()));
            let at = Instant::now();
            match r {
                Ok(Some(snap)) => Some((ns.inode, Ok((snap, at)))),
                Ok(None) => None,
                Err(e) => Some((ns.inode, Err(e))),
            }
        })
        .collect()
}

/// Analyses each scanned namespace's NAT view (rates against `before`),
/// raises its status by the NAT's (NAT exhaustion counts like socket
/// exhaustion) and notes a NAT view that could not be read.
fn analyze_nat(
    cfg: &Config,
    scanned: &mut [(Netns, NamespaceReport)],
    before: &NatReadings,
) -> HashMap<u64, NatAnalysis> {
    let netns: Vec<Netns> = scanned.iter().map(|(_, r)| r.netns.clone()).collect();
    let mut after = read_nat(&netns);
    let mut out = HashMap::new();
    for (_, r) in scanned.iter_mut() {
        let inode = r.netns.inode;
        match after.remove(&inode) {
            Some(Ok((now, t1))) => {
                let base = before
                    .get(&inode)
                    .and_then(|b| b.as_ref().ok())
                    .map(|(b, t0)| (b, t1.saturating_duration_since(*t0)));
                match nat::analysis::analyze(base, &now, &cfg.thresholds) {
                    Some(n) => {
                        r.analysis.status = r.analysis.status.max(n.status);
                        out.insert(inode, n);
                    }
                    // No source-NAT hook seen; say so if that may be for lack of a reading.
                    None => r.analysis.notes.extend(
                        now.notes
                            .iter()
                            .map(|note| format!("NAT view incomplete: {note}")),
                    ),
                }
            }
            Some(Err(e)) => r
                .analysis
                .notes
                .push(format!("NAT view unreadable: {}", crate::error_chain(&e))),
            None => {}
        }
    }
    out
}

/// Exit code when a namespace could not be scanned and none is critical.
const EXIT_UNKNOWN: u8 = crate::EXIT_UNKNOWN;

/// Scans every namespace and writes the report; returns the exit code.
pub(super) fn run(cfg: &Config, out: &mut dyn Write) -> Result<u8> {
    let discovery = node::discover().context("cannot list the network namespaces")?;
    let opts = NodeOptions {
        reader: cfg.reader,
        workers: node::default_workers(),
        bound_inactive: cfg.bound_inactive,
        interval: cfg.interval,
        thresholds: cfg.thresholds,
        processes: cfg.processes,
    };
    let nat_before = if cfg.interval.is_zero() {
        NatReadings::new()
    } else {
        read_nat(&discovery.namespaces)
    };
    let mut scan = node::analyze_node(discovery.namespaces, &opts);
    let nats = analyze_nat(cfg, &mut scan.scanned, &nat_before);
    // Worst utilization first; then worst status; then by inode, for a stable order.
    scan.scanned.sort_by(|(_, a), (_, b)| {
        b.worst_utilization()
            .total_cmp(&a.worst_utilization())
            .then(b.analysis.status.cmp(&a.analysis.status))
            .then(a.netns.inode.cmp(&b.netns.inode))
    });
    let worst = scan
        .scanned
        .iter()
        .map(|(_, r)| r.analysis.status)
        .max()
        .unwrap_or(Severity::Ok);
    let code = node_exit_code(worst, !scan.failed.is_empty());
    // Node-wide findings (severity info: they leave the exit code alone).
    let node_findings: Vec<Finding> =
        node::shared_ehash_finding(scan.scanned.iter().map(|(_, r)| {
            (
                r.netns.host,
                r.settings.tcp_ehash_entries,
                u64::from(r.analysis.totals.sockets),
            )
        }))
        .into_iter()
        .collect();
    let node = NodeReport {
        scan: &scan,
        findings: &node_findings,
        nats: &nats,
        worst,
        code,
        denied: discovery.denied,
    };
    if cfg.json {
        write_json(out, cfg, &node)?;
    } else {
        write_report(out, cfg, &node)?;
    }
    Ok(code)
}

/// The worst namespace's code; a namespace that could not be scanned makes
/// the answer unknown (3) unless another one is already critical.
fn node_exit_code(worst: Severity, any_failed: bool) -> u8 {
    let code = exit_code(worst);
    if any_failed && code < 2 {
        EXIT_UNKNOWN
    } else {
        code
    }
}

/// `pod UID (QoS), container ID (runtime)`, or what of it is known.
fn identity_label(id: &Identity) -> String {
    let mut parts = Vec::new();
    if let Some(uid) = &id.pod_uid {
        parts.push(match id.qos_class {
            Some(q) => format!("pod {uid} ({q})"),
            None => format!("pod {uid}"),
        });
    }
    if let Some(cid) = &id.container_id {
        let short = &cid[..cid.len().min(12)];
        parts.push(match id.runtime {
            Some(r) => format!("container {short} ({r})"),
            None => format!("container {short}"),
        });
    }
    parts.join(", ")
}

/// `netns INODE [host] [names] [pod ..., container ...]`.
fn netns_label(ns: &Netns) -> String {
    let mut s = format!("netns {}", ns.inode);
    if ns.host {
        s.push_str(" (host)");
    }
    if !ns.names.is_empty() {
        s.push_str(&format!(" [{}]", ns.names.join(", ")));
    }
    let id = identity_label(&ns.identity);
    if !id.is_empty() {
        s.push_str(": ");
        s.push_str(&id);
    }
    s
}

fn processes_label(ns: &Netns) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = ns
        .processes
        .iter()
        .take(SHOWN)
        .map(|p| format!("{}[{}]", p.comm, p.pid))
        .collect();
    if ns.processes.len() > SHOWN {
        s.push(format!("and {} more", ns.processes.len() - SHOWN));
    }
    if s.is_empty() {
        "none (a named namespace)".into()
    } else {
        s.join(" ")
    }
}

/// What the report of the whole node is made of.
struct NodeReport<'a> {
    scan: &'a node::NodeScan<NamespaceReport>,
    /// Node-wide findings, such as `shared_tcp_ehash`.
    findings: &'a [Finding],
    /// The NAT analysis of each namespace that source-NATs, by inode.
    nats: &'a HashMap<u64, NatAnalysis>,
    worst: Severity,
    code: u8,
    /// Processes whose namespace link could not be read.
    denied: usize,
}

fn write_report(out: &mut dyn Write, cfg: &Config, node: &NodeReport) -> Result<()> {
    let NodeReport {
        scan,
        findings,
        nats,
        worst,
        code,
        denied,
    } = *node;
    writeln!(
        out,
        "fivetuple doctor --all-netns: {} network namespaces scanned, {} vanished during the scan, {} failed; {}",
        scan.scanned.len(),
        scan.vanished.len(),
        scan.failed.len(),
        rate_note(cfg)
    )?;
    if !cfg.bound_inactive {
        writeln!(
            out,
            "--skip-bound-inactive: sockets that called bind() but neither connect() nor listen() were not read, so capacities read high by the ports they hold"
        )?;
    }
    if !scan.scanned.is_empty() {
        writeln!(out, "\nNamespaces, worst utilization first")?;
        writeln!(
            out,
            "  {:<12} {:>8} {:<9} {:>7} {:>6}  IDENTITY",
            "NETNS", "WORST", "STATUS", "SOCKETS", "DESTS"
        )?;
        for (_, r) in &scan.scanned {
            writeln!(
                out,
                "  {:<12} {:>7.1}% {:<9} {:>7} {:>6}  {}",
                r.netns.inode,
                r.worst_utilization() * 100.0,
                severity_name(r.analysis.status),
                r.analysis.totals.sockets,
                r.analysis.destinations.len(),
                if r.netns.host {
                    "host".to_string()
                } else {
                    identity_label(&r.netns.identity)
                }
            )?;
        }
    }
    for (_, r) in &scan.scanned {
        writeln!(
            out,
            "\n== {}: worst {:.1}%, {}",
            netns_label(&r.netns),
            r.worst_utilization() * 100.0,
            severity_name(r.analysis.status)
        )?;
        writeln!(
            out,
            "Processes: {}; socket table from {} ({} sockets)",
            processes_label(&r.netns),
            r.analysis.source,
            r.analysis.totals.sockets
        )?;
        write_namespace(out, cfg, &r.settings, &r.counters, &r.analysis)?;
        if let Some(n) = nats.get(&r.netns.inode) {
            crate::nat_report::write_text(out, n, cfg.top, severity_name)?;
        }
    }
    if !scan.vanished.is_empty() || !scan.failed.is_empty() || denied > 0 {
        writeln!(out, "\nSkipped")?;
        for ns in &scan.vanished {
            writeln!(
                out,
                "  {}: gone before its turn (its processes exited, its name was deleted)",
                netns_label(ns)
            )?;
        }
        for (ns, e) in &scan.failed {
            writeln!(out, "  {}: {}", netns_label(ns), crate::error_chain(e))?;
        }
        if denied > 0 {
            writeln!(
                out,
                "  {denied} processes whose /proc/PID/ns/net could not be read: their namespaces may be missing"
            )?;
        }
    }
    if !findings.is_empty() {
        writeln!(out, "\nNode")?;
        write_findings(out, findings)?;
    }
    let named: Vec<String> = scan
        .scanned
        .iter()
        .filter(|(_, r)| r.analysis.status == worst && worst >= Severity::Warning)
        .map(|(_, r)| netns_label(&r.netns))
        .collect();
    write!(out, "\nStatus: {} (exit {code})", severity_name(worst))?;
    if !named.is_empty() {
        write!(out, ": {}", named.join("; "))?;
    } else if code == EXIT_UNKNOWN {
        write!(
            out,
            ": {} namespace(s) could not be scanned",
            scan.failed.len()
        )?;
    }
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize)]
struct JsonNode<'a> {
    schema_version: u32,
    status: Severity,
    exit_code: u8,
    interval_s: f64,
    thresholds: JsonThresholds,
    namespaces: Vec<JsonNamespace<'a>>,
    vanished: Vec<JsonNetns<'a>>,
    failed: Vec<JsonFailed<'a>>,
    processes_denied: usize,
    /// Whether bound-inactive sockets were read (false with `--skip-bound-inactive`).
    bound_inactive: bool,
    node_findings: &'a [Finding],
}

#[derive(Serialize)]
struct JsonNetns<'a> {
    inode: u64,
    host: bool,
    names: &'a [String],
    #[serde(flatten)]
    identity: &'a Identity,
    processes: Vec<JsonProcess<'a>>,
}

#[derive(Serialize)]
struct JsonProcess<'a> {
    pid: u32,
    comm: &'a str,
}

impl<'a> JsonNetns<'a> {
    fn new(ns: &'a Netns) -> JsonNetns<'a> {
        JsonNetns {
            inode: ns.inode,
            host: ns.host,
            names: &ns.names,
            identity: &ns.identity,
            processes: ns
                .processes
                .iter()
                .map(|p| JsonProcess {
                    pid: p.pid,
                    comm: &p.comm,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct JsonNamespace<'a> {
    netns: JsonNetns<'a>,
    worst_utilization: f64,
    #[serde(flatten)]
    body: JsonBody<'a>,
    /// The NAT section; absent when the namespace has no source-NAT hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    nat: Option<JsonNat<'a>>,
}

#[derive(Serialize)]
struct JsonFailed<'a> {
    netns: JsonNetns<'a>,
    error: String,
}

fn write_json(out: &mut dyn Write, cfg: &Config, node: &NodeReport) -> Result<()> {
    let scan = node.scan;
    let nats: HashMap<u64, (NatAnalysis, usize)> = node
        .nats
        .iter()
        .map(|(k, n)| (*k, nat_shown(cfg, n)))
        .collect();
    let doc = JsonNode {
        schema_version: SCHEMA_VERSION,
        status: node.worst,
        exit_code: node.code,
        interval_s: cfg.interval.as_secs_f64(),
        thresholds: JsonThresholds::new(&cfg.thresholds),
        namespaces: scan
            .scanned
            .iter()
            .map(|(_, r)| JsonNamespace {
                netns: JsonNetns::new(&r.netns),
                worst_utilization: r.worst_utilization(),
                body: JsonBody::new(cfg, &r.settings, &r.counters, &r.analysis),
                nat: nats.get(&r.netns.inode).map(|(analysis, total)| JsonNat {
                    analysis,
                    destinations_total: *total,
                }),
            })
            .collect(),
        vanished: scan.vanished.iter().map(JsonNetns::new).collect(),
        failed: scan
            .failed
            .iter()
            .map(|(ns, e)| JsonFailed {
                netns: JsonNetns::new(ns),
                error: crate::error_chain(e),
            })
            .collect(),
        processes_denied: node.denied,
        bound_inactive: cfg.bound_inactive,
        node_findings: node.findings,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fivetuple_scan::identity::{QosClass, Runtime};

    #[test]
    fn exit_code_is_the_worst_and_a_failure_is_unknown_unless_critical() {
        assert_eq!(node_exit_code(Severity::Ok, false), 0);
        assert_eq!(node_exit_code(Severity::Warning, false), 1);
        assert_eq!(node_exit_code(Severity::Critical, false), 2);
        assert_eq!(node_exit_code(Severity::Ok, true), 3);
        assert_eq!(node_exit_code(Severity::Warning, true), 3);
        assert_eq!(node_exit_code(Severity::Critical, true), 2);
    }

    #[test]
    fn labels_name_the_pod() {
        let id = Identity {
            container_id: Some("ab".repeat(32)),
            runtime: Some(Runtime::Containerd),
            pod_uid: Some("1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b".into()),
            qos_class: Some(QosClass::Burstable),
        };
        assert_eq!(
            identity_label(&id),
            "pod 1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b (Burstable), container abababababab (containerd)"
        );
        let ns = Netns {
            inode: 4026532300,
            names: vec!["cni-1".into()],
            processes: vec![],
            host: false,
            identity: id,
        };
        assert!(netns_label(&ns).starts_with("netns 4026532300 [cni-1]: pod 1b2c3d4e"));
        assert_eq!(processes_label(&ns), "none (a named namespace)");
    }
}

//! The `netns` collector of `exporter --all-netns`: every network namespace
//! of the node on every scrape. Discovery, then each namespace entered on
//! its own thread (`fivetuple_scan::node::scan_all`), then one analysis per
//! namespace against that namespace's own history (for rates).
//!
//! Every destination series gains `netns` (the namespace inode),
//! `container_id` and `pod_uid` (empty when unknown); `--top-k` applies
//! across the node. Per-namespace series: the totals of the single-namespace
//! exporter, `fivetuple_netns_sockets{state}`, the port range, the TCP
//! established hash size (`tcp_ehash_entries`, negative when shared), and
//! `fivetuple_netns_info` with the rest of the identity. Their number is
//! bounded by the namespaces on the node, which the kubelet caps through
//! its pod limit (110 by default): at most 25 series per namespace
//! (docs/exporter.md states the whole bound).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fivetuple_scan::model::{Analysis, Thresholds};
use fivetuple_scan::nat::analysis::NatHistory;
use fivetuple_scan::node::{self, Netns};
use fivetuple_scan::{History, Reader, Settings};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::destinations::{node_families, Family, MIN_RATE_WINDOW};
use super::nat::NatView;
use super::{counters_by, gauge, gauges, Labels, RunLog};

/// The labels that name a namespace on every per-namespace and destination series.
pub fn netns_labels(ns: &Netns) -> Labels {
    vec![
        ("netns", ns.inode.to_string()),
        (
            "container_id",
            ns.identity.container_id.clone().unwrap_or_default(),
        ),
        ("pod_uid", ns.identity.pod_uid.clone().unwrap_or_default()),
    ]
}

/// Exports every namespace of the node.
pub struct NodeCollector {
    reader: Reader,
    bound_inactive: bool,
    workers: usize,
    top_k: usize,
    histories: Mutex<HashMap<u64, History>>,
    /// NAT histories per namespace; `None` when the NAT view is off.
    nat: Option<Mutex<HashMap<u64, NatHistory>>>,
    vanished: AtomicU64,
    failed: AtomicU64,
    log: Arc<RunLog>,
}

impl NodeCollector {
    /// A collector scanning `workers` namespaces at a time and keeping
    /// `top_k` destinations; with `nat`, also the NAT view of each namespace;
    /// with `bound_inactive`, bound-inactive sockets too
    /// ([`node::scan_all`]).
    pub fn new(
        reader: Reader,
        bound_inactive: bool,
        workers: usize,
        top_k: usize,
        nat: bool,
        log: Arc<RunLog>,
    ) -> Self {
        NodeCollector {
            reader,
            bound_inactive,
            workers,
            top_k,
            histories: Mutex::new(HashMap::new()),
            nat: nat.then(|| Mutex::new(HashMap::new())),
            vanished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            log,
        }
    }
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("workers", &self.workers)
            .field("top_k", &self.top_k)
            .finish()
    }
}

/// What one scrape learnt about one namespace.
struct Scanned {
    labels: Labels,
    netns: Netns,
    settings: Settings,
    states: BTreeMap<&'static str, u32>,
    analysis: Analysis,
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let discovery = match node::discover() {
            Ok(d) => d,
            Err(e) => {
                self.log.failed("netns", started, &e);
                return Ok(());
            }
        };
        let with_nat = self.nat.is_some();
        // The NAT view is read on the worker, still inside the namespace
        // whose table it just read (no second entry).
        let scan = node::scan_all(
            discovery.namespaces,
            self.reader,
            self.bound_inactive,
            self.workers,
            |_, s| {
                let nat = with_nat
                    .then(|| Ok::<_, fivetuple_scan::ScanError>(Some(fivetuple_scan::nat::scan())));
                (s, nat)
            },
        );
        self.vanished
            .fetch_add(scan.vanished.len() as u64, Ordering::Relaxed);
        self.failed
            .fetch_add(scan.failed.len() as u64, Ordering::Relaxed);
        if let Some((ns, e)) = scan.failed.first() {
            eprintln!(
                "fivetuple exporter: {} namespace(s) could not be scanned, e.g. netns {}: {}",
                scan.failed.len(),
                ns.inode,
                crate::error_chain(e)
            );
        }
        let at = Instant::now();
        let mut scanned = Vec::with_capacity(scan.scanned.len());
        let (mut nat_views, mut nat_problems) = (Vec::new(), Vec::new());
        {
            // A panic while holding the lock leaves at worst one rate measured over a longer window.
            let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
            let live: HashSet<u64> = scan.scanned.iter().map(|(ns, _)| ns.inode).collect();
            histories.retain(|inode, _| live.contains(inode));
            let mut nat_histories = self
                .nat
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
            if let Some(h) = nat_histories.as_mut() {
                h.retain(|inode, _| live.contains(inode));
            }
            for (netns, (snap, nat)) in scan.scanned {
                let labels = netns_labels(&netns);
                match (nat, nat_histories.as_mut()) {
                    (Some(Ok(Some(nat))), Some(h)) => {
                        let history = h
                            .entry(netns.inode)
                            .or_insert_with(|| NatHistory::new(MIN_RATE_WINDOW));
                        let (view, problems) = NatView::analyze(labels.clone(), nat, at, history);
                        nat_views.push(view);
                        nat_problems.extend(
                            problems
                                .into_iter()
                                .map(|p| format!("netns {}: {p}", netns.inode)),
                        );
                    }
                    (Some(Err(e)), _) => nat_problems.push(format!(
                        "netns {}: {}",
                        netns.inode,
                        crate::error_chain(&e)
                    )),
                    // Off, or the namespace went away between the two readings.
                    _ => {}
                }
                let mut states = BTreeMap::new();
                for s in &snap.sockets {
                    *states.entry(s.state.name()).or_default() += 1;
                }
                let settings = snap.settings.clone();
                let analysis = histories
                    .entry(netns.inode)
                    .or_insert_with(|| History::new(MIN_RATE_WINDOW))
                    .analyze(snap, at, Thresholds::default());
                scanned.push(Scanned {
                    labels,
                    netns,
                    settings,
                    states,
                    analysis,
                });
            }
        }

        let labelled: Vec<(Labels, &Analysis)> = scanned
            .iter()
            .map(|s| (s.labels.clone(), &s.analysis))
            .collect();
        for fam in node_families(&labelled, self.top_k)
            .into_iter()
            .chain(netns_families(&scanned))
        {
            if !fam.series.is_empty() {
                gauges(&mut enc, fam.name, fam.help, &fam.series)?;
            }
        }
        gauge(
            &mut enc,
            "fivetuple_netns_namespaces",
            "Network namespaces scanned in this scrape (found in /proc/*/ns/net and /run/netns, by inode).",
            scanned.len() as f64,
        )?;
        counters_by(
            &mut enc,
            "fivetuple_netns_skipped",
            "Namespaces found but not scanned: vanished (gone before their turn, e.g. a deleted pod) or failed (an error, logged on stderr).",
            "reason",
            &[
                ("vanished", self.vanished.load(Ordering::Relaxed)),
                ("failed", self.failed.load(Ordering::Relaxed)),
            ],
        )?;
        self.log.ok("netns", started);
        if with_nat {
            let nat_started = Instant::now();
            super::nat::encode(&mut enc, &nat_views, self.top_k)?;
            if nat_problems.is_empty() {
                self.log.ok("nat", nat_started);
            } else {
                self.log
                    .failed("nat", nat_started, &nat_problems.join("; "));
            }
        }
        Ok(())
    }
}

fn with(mut l: Labels, extra: impl IntoIterator<Item = (&'static str, String)>) -> Labels {
    l.extend(extra);
    l
}

/// The per-namespace families that only the node view has.
fn netns_families(scanned: &[Scanned]) -> Vec<Family> {
    let mut sockets = Vec::new();
    let mut range = Vec::new();
    let mut info = Vec::new();
    let mut ehash = Vec::new();
    for s in scanned {
        if let Some(n) = s.settings.tcp_ehash_entries {
            ehash.push((s.labels.clone(), n as f64));
        }
        for (state, n) in &s.states {
            sockets.push((
                with(s.labels.clone(), [("state", state.to_string())]),
                f64::from(*n),
            ));
        }
        range.push((s.labels.clone(), f64::from(s.settings.range_len())));
        let id = &s.netns.identity;
        info.push((
            with(
                s.labels.clone(),
                [
                    ("host", s.netns.host.to_string()),
                    ("names", s.netns.names.join(",")),
                    (
                        "runtime",
                        id.runtime.map(|r| r.name().to_string()).unwrap_or_default(),
                    ),
                    (
                        "qos_class",
                        id.qos_class
                            .map(|q| q.name().to_string())
                            .unwrap_or_default(),
                    ),
                ],
            ),
            1.0,
        ));
    }
    vec![
        Family {
            name: "fivetuple_netns_sockets",
            help: "TCP sockets of a network namespace by state, every direction.",
            series: sockets,
        },
        Family {
            name: "fivetuple_netns_ip_local_port_range_ports",
            help: "Ports in the namespace's own net.ipv4.ip_local_port_range.",
            series: range,
        },
        Family {
            name: "fivetuple_netns_tcp_ehash_entries",
            help: "The namespace's net.ipv4.tcp_ehash_entries (Linux 6.1+): buckets of its TCP established hash; negative when it shares the host's (set net.ipv4.tcp_child_ehash_entries on the node to give new namespaces their own).",
            series: ehash,
        },
        Family {
            name: "fivetuple_netns_info",
            help: "A network namespace and its identity (host, names under /run/netns, container runtime, pod QoS class); always 1.",
            series: info,
        },
    ]
}

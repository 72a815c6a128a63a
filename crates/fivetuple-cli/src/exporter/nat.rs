//! The `nat` collector: the source-NAT port budget per post-NAT destination
//! (post-NAT source IP, destination IP, destination port) from conntrack,
//! and conntrack's own fill and failure counters, read on every scrape
//! (`fivetuple_scan::nat::scan`).
//!
//! A namespace without a source-NAT hook costs the statistics and one
//! nftables chain dump (three netlink round trips) and exports no
//! destination series, only the conntrack series. Destinations follow the
//! socket destinations' cardinality rule ([`split_top_k`]): the `top_k`
//! with the highest utilization keep their series, the rest are folded
//! into `other` (sums of ports and capacity, the highest utilization, the
//! shortest time to exhaustion). Rates come from the scan kept from an
//! earlier scrape ([`NatHistory`], the baseline choice of the socket
//! destinations).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fivetuple_scan::model::Thresholds;
use fivetuple_scan::nat::analysis::{NatAnalysis, NatDestination, NatHistory};
use fivetuple_scan::nat::{conntrack, NatError, NatSnapshot, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::destinations::{other_labels, split_top_k, with, Family, MIN_RATE_WINDOW};
use super::{counters, gauges, Labels, RunLog};

/// Reads the NAT view of the calling thread's namespace.
pub type ReadNat = Box<dyn Fn() -> NatSnapshot + Send + Sync>;

/// The labels that name a post-NAT destination.
const NAT_LABELS: [&str; 3] = ["nat_ip", "remote_ip", "remote_port"];

/// What one scrape learnt about the NAT of one namespace.
pub struct NatView {
    /// The labels that name the namespace (none for a single one).
    pub labels: Labels,
    /// Whether the namespace has a source-NAT hook.
    pub source_nat: bool,
    /// Conntrack's counters, when they could be read.
    pub stats: Option<Stats>,
    /// The destinations, when the namespace source-NATs.
    pub analysis: Option<NatAnalysis>,
}

impl NatView {
    /// Analyses `snap` (taken at `at`) against `history`; also returns what
    /// could not be read (empty when everything was).
    pub fn analyze(
        labels: Labels,
        snap: NatSnapshot,
        at: Instant,
        history: &mut NatHistory,
    ) -> (NatView, Vec<String>) {
        let (source_nat, stats, notes) = (snap.source_nat, snap.stats, snap.notes.clone());
        let analysis = history.analyze(snap, at, &Thresholds::default());
        (
            NatView {
                labels,
                source_nat,
                stats,
                analysis,
            },
            notes,
        )
    }
}

/// Exports the NAT view of the calling thread's namespace.
pub struct NatCollector {
    read: ReadNat,
    history: Mutex<NatHistory>,
    top_k: usize,
    log: Arc<RunLog>,
}

impl NatCollector {
    /// A collector that calls `read` on each scrape and keeps `top_k` destinations.
    pub fn new(read: ReadNat, top_k: usize, log: Arc<RunLog>) -> Self {
        NatCollector {
            read,
            history: Mutex::new(NatHistory::new(MIN_RATE_WINDOW)),
            top_k,
            log,
        }
    }
}

/// Whether `e` says the calling process may not talk to conntrack.
fn not_permitted(e: &NatError) -> bool {
    matches!(e, NatError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EPERM))
}

/// Whether conntrack answers the calling thread. Netlink netfilter needs
/// CAP_NET_ADMIN, so an exporter run as a plain user (or in a DaemonSet
/// without NET_ADMIN) gets EPERM: then one stderr line says so, and the
/// caller exports no NAT metric rather than a collector that fails on every
/// scrape. Any other error is left to the scrapes to report.
pub fn permitted() -> bool {
    match conntrack::read_stats() {
        Err(e) if not_permitted(&e) => {
            eprintln!(
                "fivetuple exporter: NAT and conntrack metrics are off: reading conntrack needs CAP_NET_ADMIN ({})",
                crate::error_chain(&e)
            );
            false
        }
        _ => true,
    }
}

impl NatCollector {
    /// The collector for the calling thread's namespace, if [`permitted`].
    pub fn if_permitted(top_k: usize, log: Arc<RunLog>) -> Option<Self> {
        permitted().then(|| NatCollector::new(Box::new(fivetuple_scan::nat::scan), top_k, log))
    }
}

impl std::fmt::Debug for NatCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatCollector")
            .field("top_k", &self.top_k)
            .finish()
    }
}

impl Collector for NatCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let snap = (self.read)();
        let (view, problems) = {
            // A panic while holding the lock leaves at worst one rate measured over a longer window.
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            NatView::analyze(Labels::new(), snap, Instant::now(), &mut h)
        };
        encode(&mut enc, &[view], self.top_k)?;
        if problems.is_empty() {
            self.log.ok("nat", started);
        } else {
            self.log.failed("nat", started, &problems.join("; "));
        }
        Ok(())
    }
}

/// A counter family: name, help, and its value in the statistics.
type CounterOf = (&'static str, &'static str, fn(&Stats) -> u64);

/// Encodes the NAT families of `views`, `top_k` applying across all of them.
pub fn encode(enc: &mut DescriptorEncoder, views: &[NatView], top_k: usize) -> std::fmt::Result {
    for fam in families(views, top_k) {
        if !fam.series.is_empty() {
            gauges(enc, fam.name, fam.help, &fam.series)?;
        }
    }
    let counter_families: [CounterOf; 3] = [
        (
            "fivetuple_conntrack_insert_failed",
            "Conntrack entries that could not be inserted (CTA_STATS_INSERT_FAILED, conntrack -S insert_failed): e.g. source NAT found no free port; the packet was dropped.",
            |s| s.insert_failed,
        ),
        (
            "fivetuple_conntrack_drop",
            "Packets conntrack dropped (CTA_STATS_DROP, conntrack -S drop): a clash it could not resolve, or a full table.",
            |s| s.drop,
        ),
        (
            "fivetuple_conntrack_early_drop",
            "Conntrack entries evicted to make room in a full table (CTA_STATS_EARLY_DROP, conntrack -S early_drop).",
            |s| s.early_drop,
        ),
    ];
    for (name, help, get) in counter_families {
        let series: Vec<(Labels, u64)> = views
            .iter()
            .filter_map(|v| v.stats.as_ref().map(|s| (v.labels.clone(), get(s))))
            .collect();
        if !series.is_empty() {
            counters(enc, name, help, &series)?;
        }
    }
    Ok(())
}

fn dest_labels(ns: &Labels, d: &NatDestination) -> Labels {
    let mut l = ns.clone();
    l.extend([
        ("nat_ip", d.key.nat_source.to_string()),
        ("remote_ip", d.key.destination.ip().to_string()),
        ("remote_port", d.key.destination.port().to_string()),
    ]);
    l
}

/// Turns the NAT views of one or more namespaces into gauge families.
pub fn families(views: &[NatView], top_k: usize) -> Vec<Family> {
    let all: Vec<(&Labels, &NatDestination)> = views
        .iter()
        .filter_map(|v| v.analysis.as_ref().map(|a| (&v.labels, a)))
        .flat_map(|(l, a)| a.destinations.iter().map(move |d| (l, d)))
        .collect();
    let (top, rest) = split_top_k(all, top_k, |d| d.utilization);

    let (mut ports, mut capacity, mut util, mut exhaustion) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (ns, d) in &top {
        let l = dest_labels(ns, d);
        for (state, n) in d.states.nonzero() {
            ports.push((with(l.clone(), "state", state.name()), f64::from(n)));
        }
        capacity.push((l.clone(), f64::from(d.capacity.ports)));
        util.push((l.clone(), d.utilization));
        if let Some(s) = d.seconds_to_exhaustion {
            exhaustion.push((l, s));
        }
    }
    if let Some((ns, _)) = rest.first() {
        let l = other_labels(ns, &NAT_LABELS);
        let mut states: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, d) in &rest {
            for (s, n) in d.states.nonzero() {
                *states.entry(s.name()).or_default() += n;
            }
        }
        for (state, n) in states {
            ports.push((with(l.clone(), "state", state), f64::from(n)));
        }
        capacity.push((
            l.clone(),
            rest.iter().map(|(_, d)| f64::from(d.capacity.ports)).sum(),
        ));
        util.push((
            l.clone(),
            rest.iter().map(|(_, d)| d.utilization).fold(0.0, f64::max),
        ));
        if let Some(s) = rest
            .iter()
            .filter_map(|(_, d)| d.seconds_to_exhaustion)
            .min_by(f64::total_cmp)
        {
            exhaustion.push((l, s));
        }
    }

    let per_ns = |f: &dyn Fn(&NatView) -> Option<f64>| -> Vec<(Labels, f64)> {
        views
            .iter()
            .filter_map(|v| f(v).map(|x| (v.labels.clone(), x)))
            .collect()
    };
    let any_nat = views.iter().any(|v| v.analysis.is_some());
    vec![
        Family {
            name: "fivetuple_nat_source_nat_hook",
            help: "1 when the namespace has a source-NAT hook (an nftables nat chain on postrouting, which iptables-nft makes too, or a legacy iptables nat table), else 0; without one no NAT destination series are exported.",
            series: per_ns(&|v| v.stats.map(|_| f64::from(u8::from(v.source_nat)))),
        },
        Family {
            name: "fivetuple_nat_destinations",
            help: "Post-NAT destinations (NAT IP, remote IP, remote port) with source-NATed TCP entries, including those folded into the other series.",
            series: per_ns(&|v| v.analysis.as_ref().map(|a| a.destinations.len() as f64)),
        },
        Family {
            name: "fivetuple_nat_destinations_folded",
            help: "Post-NAT destinations beyond --top-k, summed into the series labelled other.",
            series: if any_nat {
                vec![(Labels::new(), rest.len() as f64)]
            } else {
                Vec::new()
            },
        },
        Family {
            name: "fivetuple_nat_ports",
            help: "NAT ports held toward a post-NAT destination, by conntrack TCP state (conntrack -L); TIME_WAIT and CLOSE entries are reclaimable on Linux 6.4+.",
            series: ports,
        },
        Family {
            name: "fivetuple_nat_capacity_ports",
            help: "Ports the NAT can hand out toward a destination: the rule's --to-ports range, else the kernel default 1024-65535 (other: the sum over the folded destinations).",
            series: capacity,
        },
        Family {
            name: "fivetuple_nat_utilization_ratio",
            help: "NAT ports held over the capacity for a destination, 0 to 1 (other: the highest of the folded destinations).",
            series: util,
        },
        Family {
            name: "fivetuple_nat_seconds_to_exhaustion",
            help: "Seconds until a post-NAT destination has no free NAT port at the growth since the previous scrape; 0 when full; absent when it is not heading there.",
            series: exhaustion,
        },
        Family {
            name: "fivetuple_conntrack_entries",
            help: "Conntrack entries in the namespace (nf_conntrack_count).",
            series: per_ns(&|v| v.stats.map(|s| s.count as f64)),
        },
        Family {
            name: "fivetuple_conntrack_max",
            help: "The conntrack table limit (nf_conntrack_max, host-wide).",
            series: per_ns(&|v| v.stats.map(|s| s.max as f64)),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use fivetuple_scan::nat::rules::{parse_iptables_save, Origin};
    use fivetuple_scan::nat::{CtTcpState, Entry, Grouper, Rules};
    use std::time::Duration;

    /// Destination port 1000+i holding 10*(i+1) entries (half ESTABLISHED,
    /// half TIME_WAIT), grouped as a scan groups them, behind the
    /// `--to-ports 20000-20099` rule of the root tests' topology.
    fn snap(dests: u16, stats: Stats) -> NatSnapshot {
        let rules = parse_iptables_save(
            "*nat\n-A POSTROUTING -p tcp -o veth0 -j MASQUERADE --to-ports 20000-20099\nCOMMIT\n",
            Origin::IptablesNft,
        )
        .unwrap();
        let mut g = Grouper::default();
        for i in 0..dests {
            let total = 10 * (i + 1);
            for j in 0..total {
                g.add(&Entry {
                    orig_src: format!("198.18.1.2:{}", 40000 + j).parse().unwrap(),
                    orig_dst: format!("198.18.0.2:{}", 1000 + i).parse().unwrap(),
                    reply_src: format!("198.18.0.2:{}", 1000 + i).parse().unwrap(),
                    reply_dst: format!("198.18.0.1:{}", 20000 + j).parse().unwrap(),
                    status: conntrack::IPS_SRC_NAT,
                    state: Some(if j < total / 2 {
                        CtTcpState::Established
                    } else {
                        CtTcpState::TimeWait
                    }),
                });
            }
        }
        let snat_entries = g.snat_entries;
        NatSnapshot {
            source_nat: true,
            stats: Some(stats),
            groups: g.finish(&rules, true),
            snat_entries,
            rules: Rules::default(),
            notes: Vec::new(),
        }
    }

    fn view(snap: NatSnapshot) -> NatView {
        let mut h = NatHistory::new(MIN_RATE_WINDOW);
        NatView::analyze(Labels::new(), snap, Instant::now(), &mut h).0
    }

    fn fam<'a>(f: &'a [Family], name: &str) -> &'a Family {
        f.iter().find(|f| f.name == name).unwrap()
    }

    fn value(f: &Family, port: &str, state: Option<&str>) -> Option<f64> {
        f.series
            .iter()
            .find(|(l, _)| {
                l.iter().any(|(k, v)| *k == "remote_port" && v == port)
                    && state.is_none_or(|s| l.iter().any(|(k, v)| *k == "state" && v == s))
            })
            .map(|(_, v)| *v)
    }

    #[test]
    fn top_k_keeps_the_fullest_and_folds_the_rest_into_other() {
        let f = families(&[view(snap(4, Stats::default()))], 2);
        let util = fam(&f, "fivetuple_nat_utilization_ratio");
        assert_eq!(util.series.len(), 3, "two destinations plus other");
        assert_eq!(value(util, "1003", None), Some(0.4));
        assert_eq!(value(util, "1002", None), Some(0.3));
        assert_eq!(value(util, "other", None), Some(0.2), "the highest folded");
        let ports = fam(&f, "fivetuple_nat_ports");
        assert_eq!(value(ports, "1003", Some("ESTABLISHED")), Some(20.0));
        assert_eq!(value(ports, "1003", Some("TIME_WAIT")), Some(20.0));
        // Folded: 20 + 10 entries, half of each ESTABLISHED (10/2=5, 20/2=10).
        assert_eq!(value(ports, "other", Some("ESTABLISHED")), Some(15.0));
        assert_eq!(value(ports, "other", Some("TIME_WAIT")), Some(15.0));
        assert!(ports
            .series
            .iter()
            .all(|(l, _)| l.iter().any(|(k, v)| *k == "state" && v != "NONE")));
        let other = &util.series[2].0;
        assert_eq!(
            other,
            &vec![
                ("nat_ip", "other".to_string()),
                ("remote_ip", "other".to_string()),
                ("remote_port", "other".to_string())
            ]
        );
        let cap = fam(&f, "fivetuple_nat_capacity_ports");
        assert_eq!(value(cap, "1003", None), Some(100.0));
        assert_eq!(value(cap, "other", None), Some(200.0));
        assert_eq!(fam(&f, "fivetuple_nat_destinations").series[0].1, 4.0);
        assert_eq!(
            fam(&f, "fivetuple_nat_destinations_folded").series[0].1,
            2.0
        );
        assert_eq!(fam(&f, "fivetuple_nat_source_nat_hook").series[0].1, 1.0);
        // One scan: no rate, so no time to exhaustion (nothing is full).
        assert!(fam(&f, "fivetuple_nat_seconds_to_exhaustion")
            .series
            .is_empty());
    }

    #[test]
    fn time_to_exhaustion_comes_from_the_growth_between_scrapes() {
        let mut h = NatHistory::new(MIN_RATE_WINDOW);
        let t0 = Instant::now();
        NatView::analyze(Labels::new(), snap(1, Stats::default()), t0, &mut h);
        // 10 -> 20 entries toward :1000 in 2 s: 5/s, 80 free ports, 16 s.
        let mut later = snap(2, Stats::default());
        later.groups.retain(|g| g.key.destination.port() == 1001);
        later.groups[0].key.destination = "198.18.0.2:1000".parse().unwrap();
        let (v, problems) =
            NatView::analyze(Labels::new(), later, t0 + Duration::from_secs(2), &mut h);
        assert!(problems.is_empty());
        let f = families(&[v], 50);
        assert_eq!(
            value(fam(&f, "fivetuple_nat_seconds_to_exhaustion"), "1000", None),
            Some(16.0)
        );
    }

    #[test]
    fn without_nat_only_the_conntrack_series_are_exported() {
        let stats = Stats {
            insert_failed: 3,
            drop: 4,
            early_drop: 5,
            count: 6,
            max: 262_144,
            ..Stats::default()
        };
        let mut s = snap(0, stats);
        s.source_nat = false;
        let mut r = prometheus_client::registry::Registry::default();
        let log = Arc::new(RunLog::default());
        r.register_collector(Box::new(NatCollector::new(
            Box::new(move || s.clone()),
            50,
            log.clone(),
        )));
        let text = super::super::encode(&r, super::super::Format::Text).unwrap();
        for line in [
            "fivetuple_nat_source_nat_hook 0",
            "fivetuple_conntrack_entries 6",
            "fivetuple_conntrack_max 262144",
            "fivetuple_conntrack_insert_failed_total 3",
            "fivetuple_conntrack_drop_total 4",
            "fivetuple_conntrack_early_drop_total 5",
        ] {
            assert!(
                text.lines().any(|l| l == line || l == format!("{line}.0")),
                "missing {line:?} in:\n{text}"
            );
        }
        for absent in [
            "fivetuple_nat_ports",
            "fivetuple_nat_utilization_ratio",
            "fivetuple_nat_destinations",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
        let runs = log.take();
        assert_eq!((runs[0].name, runs[0].ok), ("nat", true));
    }

    #[test]
    fn an_unreadable_conntrack_reports_failure_and_the_scrape_goes_on() {
        let log = Arc::new(RunLog::default());
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(NatCollector::new(
            Box::new(|| NatSnapshot {
                source_nat: false,
                stats: None,
                groups: Vec::new(),
                snat_entries: 0,
                rules: Rules::default(),
                notes: vec!["conntrack statistics unavailable: synthetic".into()],
            }),
            50,
            log.clone(),
        )));
        let text = super::super::encode(&r, super::super::Format::Text).unwrap();
        assert!(!text.contains("fivetuple_conntrack_"), "{text}");
        let runs = log.take();
        assert_eq!((runs[0].name, runs[0].ok), ("nat", false));
    }
}

//! The `destinations` collector: reads the socket table and the settings on
//! every scrape, analyses them against the scan kept from an earlier scrape
//! (for rates), and exports per-destination headroom.
//!
//! Label cardinality is bounded: the `top_k` destinations with the highest
//! utilization get their own series; the rest are folded into one series
//! whose labels all read `other` (sums for counts and rates, the maximum
//! utilization, the shortest time to exhaustion).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fivetuple_scan::model::{Analysis, Destination, Thresholds};
use fivetuple_scan::{History, ScanError, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{gauges, Labels, RunLog};

/// Reads one scan of the calling thread's namespace.
pub type ReadSnapshot = Box<dyn Fn() -> Result<Snapshot, ScanError> + Send + Sync>;

/// The shortest window a rate is measured over when scrapes come in bursts.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// One metric family, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Full metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Label sets and values.
    pub series: Vec<(Labels, f64)>,
}

/// Exports the per-destination model of `fivetuple_scan::model`.
pub struct DestinationsCollector {
    read: ReadSnapshot,
    history: Mutex<History>,
    top_k: usize,
    log: Arc<RunLog>,
}

impl DestinationsCollector {
    /// A collector that calls `read` on each scrape and keeps `top_k` destinations.
    pub fn new(read: ReadSnapshot, top_k: usize, log: Arc<RunLog>) -> Self {
        DestinationsCollector {
            read,
            history: Mutex::new(History::new(MIN_RATE_WINDOW)),
            top_k,
            log,
        }
    }
}

impl std::fmt::Debug for DestinationsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationsCollector")
            .field("top_k", &self.top_k)
            .finish()
    }
}

impl Collector for DestinationsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let snap = match (self.read)() {
            Ok(s) => s,
            Err(e) => {
                self.log.failed("destinations", started, &e);
                return Ok(());
            }
        };
        let at = Instant::now();
        let analysis = {
            // A panic while holding the lock cannot leave the history half-updated in a
            // way that matters: at worst one rate is measured over a longer window.
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.analyze(snap, at, Thresholds::default())
        };
        for fam in families(&analysis, self.top_k) {
            if !fam.series.is_empty() {
                gauges(&mut enc, fam.name, fam.help, &fam.series)?;
            }
        }
        self.log.ok("destinations", started);
        Ok(())
    }
}

/// The labels that name a socket destination.
const DEST_LABELS: [&str; 3] = ["local_ip", "remote_ip", "remote_port"];

fn dest_labels(ns: &Labels, d: &Destination) -> Labels {
    let mut l = ns.clone();
    l.extend([
        ("local_ip", d.local_ip.to_string()),
        ("remote_ip", d.remote_ip.to_string()),
        ("remote_port", d.remote_port.to_string()),
    ]);
    l
}

/// The labels of the folded series: the namespace labels and the
/// destination labels `keys` of a kept series, each valued `other`.
pub fn other_labels(ns: &Labels, keys: &[&'static str]) -> Labels {
    ns.iter()
        .map(|(k, _)| *k)
        .chain(keys.iter().copied())
        .map(|k| (k, "other".to_string()))
        .collect()
}

/// Destinations, each with the labels of its namespace.
pub type Labelled<'a, T> = Vec<(&'a Labels, &'a T)>;

/// The cardinality rule of every per-destination family: of `all` (each
/// item with the labels of its namespace), the `top_k` with the highest
/// `utilization` keep their own series, the rest are returned to be folded
/// into one `other` series. Stable, so ties keep their order.
pub fn split_top_k<'a, T>(
    mut all: Labelled<'a, T>,
    top_k: usize,
    utilization: impl Fn(&T) -> f64,
) -> (Labelled<'a, T>, Labelled<'a, T>) {
    all.sort_by(|x, y| utilization(y.1).total_cmp(&utilization(x.1)));
    let rest = all.split_off(all.len().min(top_k));
    (all, rest)
}

/// `l` plus the label `k`=`v`.
pub fn with(mut l: Labels, k: &'static str, v: &str) -> Labels {
    l.push((k, v.to_string()));
    l
}

/// Turns an analysis into metric families, keeping `top_k` destinations
/// (the analysis lists them highest utilization first) and folding the rest
/// into `other`.
pub fn families(a: &Analysis, top_k: usize) -> Vec<Family> {
    node_families(&[(Labels::new(), a)], top_k)
}

/// Metric families of several namespaces, each analysis with the labels
/// that name its namespace (the same label names for every namespace; none
/// for a single one). `top_k` applies across all of them: the destinations
/// with the highest utilization anywhere keep their series, the rest are
/// folded into one `other` series. Per-namespace totals carry the
/// namespace labels.
pub fn node_families(namespaces: &[(Labels, &Analysis)], top_k: usize) -> Vec<Family> {
    let all: Vec<(&Labels, &Destination)> = namespaces
        .iter()
        .flat_map(|(l, a)| a.destinations.iter().map(move |d| (l, d)))
        .collect();
    // Stable: one namespace's destinations keep the analysis' order.
    let (top, rest) = split_top_k(all, top_k, |d| d.utilization);

    let mut sockets = Vec::new();
    let mut in_use = Vec::new();
    let mut util = Vec::new();
    let mut sustainable = Vec::new();
    let mut rate = Vec::new();
    let mut exhaustion = Vec::new();
    for (ns, d) in &top {
        let l = dest_labels(ns, d);
        for (state, n) in d.states.iter() {
            sockets.push((with(l.clone(), "state", state.name()), f64::from(n)));
        }
        in_use.push((l.clone(), f64::from(d.in_use)));
        util.push((l.clone(), d.utilization));
        sustainable.push((l.clone(), d.sustainable_rate_per_s));
        if let Some(r) = d.rate_per_s {
            rate.push((l.clone(), r));
        }
        if let Some(s) = d.seconds_to_exhaustion {
            exhaustion.push((l, s));
        }
    }
    if let Some((ns, _)) = rest.first() {
        let l = other_labels(ns, &DEST_LABELS);
        let rest: Vec<&Destination> = rest.iter().map(|(_, d)| *d).collect();
        let mut states: std::collections::BTreeMap<&str, u32> = Default::default();
        for d in &rest {
            for (s, n) in d.states.iter() {
                *states.entry(s.name()).or_default() += n;
            }
        }
        for (state, n) in states {
            sockets.push((with(l.clone(), "state", state), f64::from(n)));
        }
        in_use.push((l.clone(), rest.iter().map(|d| f64::from(d.in_use)).sum()));
        util.push((
            l.clone(),
            rest.iter().map(|d| d.utilization).fold(0.0, f64::max),
        ));
        let rates: Vec<f64> = rest.iter().filter_map(|d| d.rate_per_s).collect();
        if !rates.is_empty() {
            rate.push((l.clone(), rates.iter().sum()));
        }
        if let Some(s) = rest
            .iter()
            .filter_map(|d| d.seconds_to_exhaustion)
            .min_by(f64::total_cmp)
        {
            exhaustion.push((l, s));
        }
    }

    let per_ns = |f: &dyn Fn(&Analysis) -> Vec<(Labels, f64)>| -> Vec<(Labels, f64)> {
        namespaces
            .iter()
            .flat_map(|(ns, a)| {
                f(a).into_iter().map(move |(l, v)| {
                    let mut all = ns.clone();
                    all.extend(l);
                    (all, v)
                })
            })
            .collect()
    };
    let one = |v: f64| vec![(Labels::new(), v)];
    vec![
        Family {
            name: "fivetuple_usable_ports",
            help: "Source ports one destination can use: the local port range minus reserved ports minus ports held by listeners and bound sockets.",
            series: per_ns(&|a| one(f64::from(a.totals.usable_ports))),
        },
        Family {
            name: "fivetuple_sockets",
            help: "TCP sockets by kind: listening, inbound (accepted), outbound (grouped into destinations).",
            series: per_ns(&|a| {
                let t = &a.totals;
                vec![
                    (vec![("kind", "listening".into())], f64::from(t.listening)),
                    (vec![("kind", "inbound".into())], f64::from(t.inbound)),
                    (vec![("kind", "outbound".into())], f64::from(t.outbound)),
                ]
            }),
        },
        Family {
            name: "fivetuple_inbound_without_listener_sockets",
            help: "Server-side sockets whose local port no longer listens (a stopped server's TIME_WAITs), told apart by fan-out; counted in kind=\"inbound\", never as destinations.",
            series: per_ns(&|a| one(f64::from(a.totals.inbound_without_listener))),
        },
        Family {
            name: "fivetuple_time_wait_sockets",
            help: "TIME_WAIT sockets in the table, any direction.",
            series: per_ns(&|a| one(f64::from(a.totals.time_wait))),
        },
        Family {
            name: "fivetuple_time_wait_freeing_sockets",
            help: "Outbound TIME_WAIT sockets the kernel frees within the given number of seconds.",
            series: per_ns(&|a| {
                let freeing = a.destinations.iter().fold([0u32; 3], |mut acc, d| {
                    acc[0] += d.time_wait_freeing.within_10s;
                    acc[1] += d.time_wait_freeing.within_30s;
                    acc[2] += d.time_wait_freeing.within_60s;
                    acc
                });
                ["10", "30", "60"]
                    .iter()
                    .zip(freeing)
                    .map(|(w, n)| (vec![("within_seconds", w.to_string())], f64::from(n)))
                    .collect()
            }),
        },
        Family {
            name: "fivetuple_destinations",
            help: "Destinations (local IP, remote IP, remote port) with outbound sockets, including those folded into the other series.",
            series: per_ns(&|a| one(a.destinations.len() as f64)),
        },
        Family {
            name: "fivetuple_destinations_folded",
            help: "Destinations beyond --top-k, summed into the series labelled other.",
            series: one(rest.len() as f64),
        },
        Family {
            name: "fivetuple_destination_sockets",
            help: "Outbound sockets of a destination by TCP state.",
            series: sockets,
        },
        Family {
            name: "fivetuple_destination_ports_in_use",
            help: "Ports of the usable range held by a destination's sockets (any state, TIME_WAIT included).",
            series: in_use,
        },
        Family {
            name: "fivetuple_destination_utilization_ratio",
            help: "Ports in use over usable ports for a destination, 0 to 1 (other: the highest of the folded destinations).",
            series: util,
        },
        Family {
            name: "fivetuple_destination_sustainable_connections_per_second",
            help: "New connections per second a destination can sustain: usable ports over the TIME_WAIT length (or over tcp_tw_reuse_delay when reuse applies).",
            series: sustainable,
        },
        Family {
            name: "fivetuple_destination_new_connections_per_second",
            help: "New connections per second to a destination since the previous scrape (absent on the first scrape).",
            series: rate,
        },
        Family {
            name: "fivetuple_destination_seconds_to_exhaustion",
            help: "Seconds until a destination has no free port at the current rate; absent when it is not heading there.",
            series: exhaustion,
        },
        Family {
            name: "fivetuple_socket_table_source",
            help: "Which reader produced the socket table (netlink, or proc after a netlink failure).",
            series: per_ns(&|a| vec![(vec![("source", a.source.to_string())], 1.0)]),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use fivetuple_scan::model::{self, Snapshot};
    use fivetuple_scan::{Counters, Settings, Socket, Source, TcpState};

    fn analysis(dests: u16) -> Analysis {
        let mut sockets = Vec::new();
        // Destination i holds 10*(i+1) TIME_WAIT sockets to 192.0.2.2:(1000+i).
        for i in 0..dests {
            for j in 0..10 * (i + 1) {
                sockets.push(Socket {
                    state: TcpState::TimeWait,
                    local: format!("192.0.2.1:{}", 40000 + j).parse().unwrap(),
                    remote: format!("192.0.2.2:{}", 1000 + i).parse().unwrap(),
                    inode: 0,
                    uid: 0,
                    tw_remaining_ms: Some(5_000),
                    cookie: 0,
                });
            }
        }
        let snap = Snapshot {
            sockets,
            source: Source::Netlink,
            settings: Settings {
                ip_local_port_range: fivetuple_scan::PortRange::new(40000, 40999).unwrap(),
                tcp_tw_reuse: 0,
                ..Settings::default()
            },
            counters: Counters::default(),
            fallback_reason: None,
        };
        model::analyze(None, &snap, None, Thresholds::default())
    }

    fn fam<'a>(f: &'a [Family], name: &str) -> &'a Family {
        f.iter().find(|f| f.name == name).unwrap()
    }

    fn value(f: &Family, port: &str) -> Option<f64> {
        f.series
            .iter()
            .find(|(l, _)| l.iter().any(|(k, v)| *k == "remote_port" && v == port))
            .map(|(_, v)| *v)
    }

    #[test]
    fn top_k_keeps_the_busiest_and_folds_the_rest_into_other() {
        let a = analysis(5);
        let f = families(&a, 2);
        let util = fam(&f, "fivetuple_destination_utilization_ratio");
        assert_eq!(util.series.len(), 3, "two destinations plus other");
        assert_eq!(value(util, "1004"), Some(0.05));
        assert_eq!(value(util, "1003"), Some(0.04));
        assert_eq!(value(util, "other"), Some(0.03), "the highest folded");
        let used = fam(&f, "fivetuple_destination_ports_in_use");
        assert_eq!(value(used, "other"), Some(60.0), "30+20+10");
        let socks = fam(&f, "fivetuple_destination_sockets");
        assert!(socks.series.iter().any(|(l, v)| *v == 60.0
            && l.contains(&("state", "TIME_WAIT".into()))
            && l.contains(&("remote_port", "other".into()))));
        assert_eq!(fam(&f, "fivetuple_destinations").series[0].1, 5.0);
        assert_eq!(fam(&f, "fivetuple_destinations_folded").series[0].1, 3.0);
        assert_eq!(
            fam(&f, "fivetuple_time_wait_freeing_sockets").series[0],
            (vec![("within_seconds", "10".into())], 150.0)
        );
        assert_eq!(fam(&f, "fivetuple_usable_ports").series[0].1, 1000.0);
        // The first scrape has no rate: no rate or exhaustion series at all.
        assert!(fam(&f, "fivetuple_destination_new_connections_per_second")
            .series
            .is_empty());
    }

    #[test]
    fn zero_usable_ports_exports_exhaustion_and_orphans_are_counted() {
        let mut sockets = Vec::new();
        for i in 0..3u16 {
            sockets.push(Socket {
                state: TcpState::Established,
                local: format!("[::ffff:10.0.0.1]:{}", 40000 + i).parse().unwrap(),
                remote: "[::ffff:10.0.0.9]:443".parse().unwrap(),
                inode: 0,
                uid: 0,
                tw_remaining_ms: None,
                cookie: 0,
            });
        }
        // A stopped server's TIME_WAITs on :8080.
        for i in 0..20u16 {
            sockets.push(Socket {
                state: TcpState::TimeWait,
                local: "10.0.0.1:8080".parse().unwrap(),
                remote: format!("10.0.0.7:{}", 50000 + i).parse().unwrap(),
                inode: 0,
                uid: 0,
                tw_remaining_ms: Some(5_000),
                cookie: 0,
            });
        }
        let snap = Snapshot {
            sockets,
            source: Source::Netlink,
            settings: Settings {
                ip_local_port_range: fivetuple_scan::PortRange::new(40000, 40999).unwrap(),
                ip_local_reserved_ports: fivetuple_scan::ReservedPorts::from_ranges([(
                    40000, 40999,
                )])
                .unwrap(),
                ..Settings::default()
            },
            counters: Counters::default(),
            fallback_reason: None,
        };
        let a = model::analyze(None, &snap, None, Thresholds::default());
        let f = families(&a, 10);
        assert_eq!(fam(&f, "fivetuple_usable_ports").series[0].1, 0.0);
        let util = fam(&f, "fivetuple_destination_utilization_ratio");
        assert_eq!(util.series.len(), 1, "{:?}", util.series);
        assert_eq!(
            util.series[0],
            (
                vec![
                    ("local_ip", "10.0.0.1".to_string()),
                    ("remote_ip", "10.0.0.9".to_string()),
                    ("remote_port", "443".to_string())
                ],
                1.0
            )
        );
        assert_eq!(
            value(
                fam(&f, "fivetuple_destination_seconds_to_exhaustion"),
                "443"
            ),
            Some(0.0)
        );
        assert_eq!(
            fam(&f, "fivetuple_inbound_without_listener_sockets").series[0].1,
            20.0
        );
    }

    #[test]
    fn no_other_series_when_everything_fits() {
        let f = families(&analysis(3), 50);
        let util = fam(&f, "fivetuple_destination_utilization_ratio");
        assert_eq!(util.series.len(), 3);
        assert_eq!(value(util, "other"), None);
        assert_eq!(fam(&f, "fivetuple_destinations_folded").series[0].1, 0.0);
    }

    #[test]
    fn node_top_k_spans_namespaces_and_labels_them() {
        // Namespace a: utilizations 0.01..0.05; namespace b: 0.01..0.03.
        let (a, b) = (analysis(5), analysis(3));
        let ns = |n: &str, pod: &str| {
            vec![
                ("netns", n.to_string()),
                ("container_id", String::new()),
                ("pod_uid", pod.to_string()),
            ]
        };
        let f = node_families(&[(ns("1", "pod-a"), &a), (ns("2", "pod-b"), &b)], 3);
        let util = fam(&f, "fivetuple_destination_utilization_ratio");
        let kept: Vec<(String, String, f64)> = util
            .series
            .iter()
            .map(|(l, v)| {
                let get = |k: &str| l.iter().find(|(n, _)| *n == k).unwrap().1.clone();
                (get("netns"), get("remote_port"), *v)
            })
            .collect();
        // The three highest across both namespaces (0.05, 0.04, then the first 0.03), then other.
        assert_eq!(
            kept,
            [
                ("1".into(), "1004".into(), 0.05),
                ("1".into(), "1003".into(), 0.04),
                ("1".into(), "1002".into(), 0.03),
                ("other".into(), "other".into(), 0.03),
            ]
        );
        let other = &util.series[3].0;
        assert!(other.contains(&("pod_uid", "other".into())), "{other:?}");
        assert_eq!(fam(&f, "fivetuple_destinations_folded").series[0].1, 5.0);
        // Per-namespace totals carry the namespace labels, one series each.
        let usable = fam(&f, "fivetuple_usable_ports");
        assert_eq!(usable.series.len(), 2);
        assert!(usable.series[1].0.contains(&("pod_uid", "pod-b".into())));
        let dests = fam(&f, "fivetuple_destinations");
        assert_eq!(
            dests.series.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [5.0, 3.0]
        );
    }
}

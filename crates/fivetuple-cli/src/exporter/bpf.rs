//! The `bpf` collector (`exporter --bpf`): the kernel's own counts of
//! connect attempts, exhaustion failures and TIME_WAIT entries per
//! destination, comm and container/pod, from `fivetuple_bpf::observe`. A
//! failed connect never becomes a socket, so only this collector sees it.
//!
//! Label cardinality is bounded: the first `top_k` label sets (largest
//! first when several appear in one scrape) keep their own series for the
//! life of the process, so every counter stays monotonic; the rest are
//! summed into one series whose labels read `other`.
//!
//! With `--all-netns` the observer counts every namespace of the node and
//! each series carries the `netns` label (the namespace's inode number, as
//! the `netns` collector's series), so the same comm and destination in two
//! namespaces are two series.
//!
//! Without BPF the collector exports `fivetuple_bpf_observer_loaded 0`, and
//! the exporter said once, at start, what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fivetuple_bpf::observe::{CgroupNames, Flow, Observer};
use prometheus_client::encoding::DescriptorEncoder;

use super::{counters, counters_by, gauge, Labels, RunLog};

/// The labels of one flow: netns (empty, so left out, unless
/// `--all-netns`), destination, comm, container, pod UID.
type FlowLabels = [String; 5];
const FLOW_LABELS: [&str; 5] = ["netns", "destination", "comm", "container", "pod_uid"];

/// The `other` series' labels (its netns label too, with `all_netns`).
fn other(all_netns: bool) -> FlowLabels {
    std::array::from_fn(|i| {
        if i == 0 && !all_netns {
            String::new()
        } else {
            "other".to_string()
        }
    })
}

/// Keeps the label sets that own a series; folds the rest into `other`.
#[derive(Debug, Default)]
struct Fold<K: Ord + Clone> {
    admitted: BTreeSet<K>,
}

impl<K: Ord + Clone> Fold<K> {
    /// Sums `values` per key, admits new keys (largest first) while fewer
    /// than `k` are admitted, and returns the admitted series plus the sum
    /// of the rest under `other` (keyed by `other_of`).
    fn fold(
        &mut self,
        values: impl IntoIterator<Item = (K, u64)>,
        k: usize,
        other_of: impl Fn(&K) -> K,
    ) -> BTreeMap<K, u64> {
        let mut sums: BTreeMap<K, u64> = BTreeMap::new();
        for (key, v) in values {
            *sums.entry(key).or_default() += v;
        }
        let mut new: Vec<(&K, u64)> = sums
            .iter()
            .filter(|(key, _)| !self.admitted.contains(*key))
            .map(|(key, v)| (key, *v))
            .collect();
        new.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
        for (key, _) in new {
            if self.admitted.len() >= k {
                break;
            }
            self.admitted.insert(key.clone());
        }
        let mut out = BTreeMap::new();
        for (key, v) in sums {
            let slot = if self.admitted.contains(&key) {
                key
            } else {
                other_of(&key)
            };
            *out.entry(slot).or_default() += v;
        }
        out
    }
}

struct State {
    observer: Option<Observer>,
    names: CgroupNames,
    attempts: Fold<FlowLabels>,
    time_wait: Fold<FlowLabels>,
    failures: Fold<(FlowLabels, String, String)>,
}

/// Exports the observer's counts. It outlives the registries the exporter
/// rebuilds (a re-entered namespace), so the observer and the admitted label
/// sets stay; [`BpfCollector::entry`] registers it in one.
pub struct BpfCollector {
    state: Mutex<State>,
    top_k: usize,
    all_netns: bool,
}

/// [`BpfCollector`] as registered in one registry, with that registry's log.
pub struct Entry(Arc<BpfCollector>, Arc<RunLog>);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl prometheus_client::collector::Collector for Entry {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode_with(enc, &self.1)
    }
}

impl BpfCollector {
    /// The collector registered with `log`.
    pub fn entry(self: &Arc<Self>, log: Arc<RunLog>) -> Entry {
        Entry(self.clone(), log)
    }

    /// A collector over `observer` (`None`: BPF is not available here)
    /// keeping `top_k` label sets per family; `all_netns` adds the `netns`
    /// label (the observer then counts every namespace).
    pub fn new(observer: Option<Observer>, top_k: usize, all_netns: bool) -> Self {
        BpfCollector {
            state: Mutex::new(State {
                observer,
                names: CgroupNames::new(),
                attempts: Fold::default(),
                time_wait: Fold::default(),
                failures: Fold::default(),
            }),
            top_k,
            all_netns,
        }
    }
}

impl std::fmt::Debug for BpfCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfCollector")
            .field("top_k", &self.top_k)
            .field("all_netns", &self.all_netns)
            .finish_non_exhaustive()
    }
}

fn flow_labels(names: &mut CgroupNames, flow: &Flow, all_netns: bool) -> FlowLabels {
    let ident = names
        .path(flow.cgroup)
        .and_then(|p| p.to_str())
        .map(fivetuple_scan::identity::parse_cgroup_path)
        .unwrap_or_default();
    let destination = if flow.destination.port() == 0 {
        String::new() // a bind failure: no destination yet
    } else {
        flow.destination.to_string()
    };
    [
        if all_netns {
            flow.netns.to_string()
        } else {
            String::new()
        },
        destination,
        flow.comm.clone(),
        ident.container_id.unwrap_or_default(),
        ident.pod_uid.unwrap_or_default(),
    ]
}

fn labels(flow: &FlowLabels) -> Labels {
    FLOW_LABELS
        .iter()
        .zip(flow.iter())
        .filter(|(k, v)| **k != "netns" || !v.is_empty())
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

impl BpfCollector {
    fn encode_with(&self, mut enc: DescriptorEncoder, log: &RunLog) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        let Some(observer) = state.observer.as_ref() else {
            return gauge(
                &mut enc,
                "fivetuple_bpf_observer_loaded",
                "1 when the BPF observer is loaded; 0 when this host or process cannot load it (the exporter said why at start).",
                0.0,
            );
        };
        let read = observer
            .counts()
            .and_then(|c| Ok((c, observer.failures()?, observer.drops()?)));
        let (counts, failures, drops) = match read {
            Ok(r) => r,
            Err(e) => {
                log.failed("bpf", started, &e);
                return Ok(());
            }
        };
        gauge(
            &mut enc,
            "fivetuple_bpf_observer_loaded",
            "1 when the BPF observer is loaded; 0 when this host or process cannot load it (the exporter said why at start).",
            1.0,
        )?;
        let flows: Vec<(FlowLabels, &fivetuple_bpf::observe::Counts)> = counts
            .iter()
            .map(|(f, c)| (flow_labels(&mut state.names, f, self.all_netns), c))
            .collect();
        let (k, all_netns) = (self.top_k, self.all_netns);
        let attempts = state.attempts.fold(
            flows.iter().map(|(l, c)| (l.clone(), c.attempts)),
            k,
            |_| other(all_netns),
        );
        let series: Vec<(Labels, u64)> = attempts.iter().map(|(l, v)| (labels(l), *v)).collect();
        counters(
            &mut enc,
            "fivetuple_connect_attempts",
            "TCP connects that reached port selection, per destination, comm and container/pod (BPF; top-k, the rest in \"other\").",
            &series,
        )?;
        let tw = state.time_wait.fold(
            flows.iter().map(|(l, c)| (l.clone(), c.time_wait)),
            k,
            |_| other(all_netns),
        );
        let series: Vec<(Labels, u64)> = tw.iter().map(|(l, v)| (labels(l), *v)).collect();
        counters(
            &mut enc,
            "fivetuple_time_wait_entries",
            "Connections that entered TIME_WAIT, attributed to the process that connected them (BPF; top-k, the rest in \"other\").",
            &series,
        )?;
        let fails: Vec<((FlowLabels, String, String), u64)> = failures
            .iter()
            .map(|f| {
                (
                    (
                        flow_labels(&mut state.names, &f.flow, all_netns),
                        fivetuple_bpf::observe::errno_name(f.errno).to_string(),
                        f.stage.to_string(),
                    ),
                    f.count,
                )
            })
            .collect();
        let fails = state.failures.fold(fails, k, |(_, errno, stage)| {
            (other(all_netns), errno.clone(), stage.clone())
        });
        let series: Vec<(Labels, u64)> = fails
            .iter()
            .map(|((l, errno, stage), v)| {
                let mut labels = labels(l);
                labels.push(("errno", errno.clone()));
                labels.push(("stage", stage.clone()));
                (labels, *v)
            })
            .collect();
        counters(
            &mut enc,
            "fivetuple_connect_exhaustion_failures",
            "connect() EADDRNOTAVAIL/EADDRINUSE and bind() EADDRINUSE: calls that found no source port and never became sockets (BPF; top-k, the rest in \"other\").",
            &series,
        )?;
        counters_by(
            &mut enc,
            "fivetuple_bpf_dropped",
            "Events the BPF observer could not count, by reason (a bounded map or the ring buffer was full).",
            "reason",
            &[
                ("counts_map_full", drops.counts_full),
                ("failures_map_full", drops.failures_full),
                ("ringbuf_full", drops.ringbuf_full),
                ("owner_map_full", drops.owner_full),
            ],
        )?;
        counters_by(
            &mut enc,
            "fivetuple_bpf_unattributed",
            "TIME_WAIT entries and successful connects the BPF observer saw but could not name a process for: accepted connections this host closed first, connections older than the observer, or that outlived their owner slot.",
            "event",
            &[
                ("time_wait", drops.time_wait_unowned),
                ("connect", drops.established_unowned),
            ],
        )?;
        log.ok("bpf", started);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_admitted_series_and_a_monotonic_other() {
        let mut fold: Fold<&str> = Fold::default();
        let first = fold.fold([("a", 5), ("b", 9), ("c", 1)], 2, |_| "other");
        assert_eq!(first, BTreeMap::from([("a", 5), ("b", 9), ("other", 1)]));
        // "c" grows past "a": series already admitted keep their own line,
        // so every counter, "other" included, only goes up.
        let second = fold.fold([("a", 6), ("b", 9), ("c", 50), ("d", 2)], 2, |_| "other");
        assert_eq!(second, BTreeMap::from([("a", 6), ("b", 9), ("other", 52)]));
    }

    #[test]
    fn bind_failures_have_no_destination_label() {
        let mut names = CgroupNames::default();
        let flow = Flow {
            cgroup: u64::MAX,
            comm: "curl".into(),
            destination: "0.0.0.0:0".parse().unwrap(),
            netns: 4026531840,
        };
        let one = flow_labels(&mut names, &flow, false);
        assert_eq!(
            one,
            [
                String::new(),
                String::new(),
                "curl".into(),
                String::new(),
                String::new()
            ]
        );
        let names_of = |l: &Labels| l.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(
            names_of(&labels(&one)),
            ["destination", "comm", "container", "pod_uid"]
        );
        let all = flow_labels(&mut names, &flow, true);
        assert_eq!(all[0], "4026531840");
        assert_eq!(
            names_of(&labels(&all)),
            ["netns", "destination", "comm", "container", "pod_uid"]
        );
        assert_eq!(names_of(&labels(&other(false)))[0], "destination");
        assert_eq!(labels(&other(true))[0], ("netns", "other".to_string()));
    }
}

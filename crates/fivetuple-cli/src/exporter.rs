//! `fivetuple exporter`: serves Prometheus metrics about a namespace's port
//! budget on `/metrics`. Collectors read the socket table, settings and
//! counters at scrape time (one collector per file under `exporter/`).
//!
//! All reading happens on one scrape thread that lives in the watched
//! namespace (namespace membership is per thread, DESIGN §5) and follows it
//! when it is re-created or gone ([`fivetuple_scan::netns::Follower`]).
//! Concurrent scrapes share one scan ([`flight`]); the HTTP side
//! ([`server`]) bounds connections so idle or slow clients cannot starve a
//! scraper, and adds TLS and basic auth from `--web.config.file`
//! ([`web_config`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::table_args::TableArgs;
use anyhow::{Context, Result};
use fivetuple_scan::netns;
use fivetuple_scan::settings::{read_counters, read_settings};
use fivetuple_scan::Reader;
use hyper::body::Bytes;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod bpf;
mod counters;
mod destinations;
mod flight;
mod nat;
mod node;
mod scrape;
mod server;
mod settings;
mod web_config;

/// Default listen address: loopback, port 19299. The Prometheus exporter
/// port block 9100-9999 is fully allocated; 19299 is outside it, below every
/// OS ephemeral range (Linux 32768-60999, Windows/macOS 49152-65535), so the
/// exporter never takes a source port from the destinations it watches.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:19299";

/// `Content-Type` of OpenMetrics text 1.0.0, what `prometheus_client::encoding::text` emits.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Raw `exporter` arguments, as typed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address and port to serve /metrics on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    listen: SocketAddr,
    /// Destinations with their own series, highest utilization first; the rest are summed into "other".
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = parse_top_k)]
    top_k: usize,
    /// TLS and basic auth, in the Prometheus exporter-toolkit format (docs/exporter.md).
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    #[command(flatten)]
    table: TableArgs,
    /// Also export the kernel's own counts of connect attempts, exhaustion failures and TIME_WAIT entries per destination, comm and container/pod (BPF; root or CAP_BPF+CAP_PERFMON; docs/trace.md).
    #[arg(long)]
    bpf: bool,
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP address and port (examples: 127.0.0.1:19299, [::1]:19299, 0.0.0.0:19299)")
    })
}

fn parse_top_k(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n == 0 {
        return Err("0 is too small: at least 1 destination must keep its own series".into());
    }
    if n > 10_000 {
        return Err(format!(
            "{n} is too large: at most 10000 (each destination adds about 10 series)"
        ));
    }
    Ok(n)
}

/// What a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Picks OpenMetrics when the `Accept` header ranks `application/openmetrics-text`
/// at least as high as the text format (or any wildcard), else the text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text) = (0.0f64, 0.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Collector outcomes of the scrape in progress, read by the `self` collector.
#[derive(Debug, Default)]
pub struct RunLog(Mutex<Vec<Run>>);

/// One collector's outcome.
#[derive(Debug, Clone)]
pub struct Run {
    name: &'static str,
    ok: bool,
    seconds: f64,
}

impl RunLog {
    fn push(&self, name: &'static str, ok: bool, started: Instant) {
        let run = Run {
            name,
            ok,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(run);
    }

    /// Records a success.
    pub fn ok(&self, name: &'static str, started: Instant) {
        self.push(name, true, started);
    }

    /// Records a failure and logs it to stderr; the scrape goes on.
    pub fn failed(&self, name: &'static str, started: Instant, err: &dyn std::fmt::Display) {
        eprintln!("fivetuple exporter: collector {name} failed: {err:#}");
        self.push(name, false, started);
    }

    fn take(&self) -> Vec<Run> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Label set of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Encodes one gauge family.
pub fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// Encodes one unlabelled counter; the encoders add the `_total` suffix.
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// Encodes one labelled counter family.
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes a counter family with one label, `label`, whose value names
/// each series: `[("vanished", 3), ("failed", 0)]` under `reason`.
pub fn counters_by(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let series: Vec<(Labels, u64)> = values
        .iter()
        .map(|(value, v)| (vec![(label, value.to_string())], *v))
        .collect();
    counters(enc, name, help, &series)
}

/// Builds the registry: settings, destinations, counters, nat, then self.
/// Everything registered reads the namespace of the thread that encodes it.
/// With `all_netns`, one `netns` collector reads every namespace of the
/// node instead (the scrape thread then stays in the host namespace).
pub fn registry(
    reader: Reader,
    top_k: usize,
    all_netns: bool,
    bound_inactive: bool,
    stats: Arc<server::Stats>,
    bpf: Option<&Arc<bpf::BpfCollector>>,
) -> Registry {
    let log = Arc::new(RunLog::default());
    let mut r = Registry::default();
    if all_netns {
        r.register_collector(Box::new(node::NodeCollector::new(
            reader,
            bound_inactive,
            fivetuple_scan::node::default_workers(),
            top_k,
            nat::permitted(),
            log.clone(),
        )));
        if let Some(bpf) = bpf {
            r.register_collector(Box::new(bpf.entry(log.clone())));
        }
        r.register_collector(Box::new(scrape::SelfCollector::new(log, stats)));
        return r;
    }
    r.register_collector(Box::new(settings::SettingsCollector::new(
        read_settings,
        log.clone(),
    )));
    r.register_collector(Box::new(destinations::DestinationsCollector::new(
        Box::new(move || fivetuple_scan::snapshot(reader)),
        top_k,
        log.clone(),
    )));
    r.register_collector(Box::new(counters::CountersCollector::new(
        read_counters,
        log.clone(),
    )));
    if let Some(nat) = nat::NatCollector::if_permitted(top_k, log.clone()) {
        r.register_collector(Box::new(nat));
    }
    if let Some(bpf) = bpf {
        r.register_collector(Box::new(bpf.entry(log.clone())));
    }
    r.register_collector(Box::new(scrape::SelfCollector::new(log, stats)));
    r
}

/// Encodes the registry in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut body = String::with_capacity(16 * 1024);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?,
    }
    Ok(body)
}

/// The scrape thread: enters the watched namespace, then answers flights
/// one at a time until the server goes away. Before each scan it checks that
/// the target still names the namespace it is in: a re-created `--netns`
/// name is re-entered (with a fresh registry, so no rate spans two
/// namespaces); a deleted name or an exited `--pid` makes every collector
/// report failure until the target is back.
fn scrape_loop(
    mut follower: netns::Follower,
    runway: flight::Runway,
    reader: Reader,
    top_k: usize,
    (all_netns, bound_inactive): (bool, bool),
    stats: Arc<server::Stats>,
    bpf: Option<Arc<bpf::BpfCollector>>,
) {
    let mut registry = registry(
        reader,
        top_k,
        all_netns,
        bound_inactive,
        stats.clone(),
        bpf.as_ref(),
    );
    let mut gone = false;
    while let Some(job) = runway.next() {
        let body = match follower.check() {
            Ok(followed) => {
                if let netns::Followed::Reentered { from, to } = followed {
                    eprintln!(
                        "fivetuple exporter: the {} network namespace is now {to} (was {from}); watching the new one, rates start over",
                        follower.target()
                    );
                    registry = self::registry(
                        reader,
                        top_k,
                        all_netns,
                        bound_inactive,
                        stats.clone(),
                        bpf.as_ref(),
                    );
                } else if gone {
                    eprintln!(
                        "fivetuple exporter: the {} network namespace is back ({}); collectors read it again",
                        follower.target(),
                        follower.id().map(|i| i.to_string()).unwrap_or_default()
                    );
                }
                gone = false;
                encode(&registry, job.format())
            }
            Err(e) => {
                if !gone {
                    eprintln!(
                        "fivetuple exporter: {:#}; every collector reports fivetuple_scrape_collector_success 0 until it is back",
                        anyhow::Error::new(e)
                    );
                }
                gone = true;
                encode(&target_gone(stats.clone()), job.format())
            }
        };
        job.finish(body.map(Bytes::from).map_err(|e| e.to_string()));
    }
}

/// The registry served while the target is gone: only the `self` collector,
/// with every reading collector marked failed.
fn target_gone(stats: Arc<server::Stats>) -> Registry {
    let log = Arc::new(RunLog::default());
    let now = Instant::now();
    for name in COLLECTORS {
        log.push(name, false, now);
    }
    let mut r = Registry::default();
    r.register_collector(Box::new(scrape::SelfCollector::new(log, stats)));
    r
}

/// The collectors that read the namespace, in registry order.
const COLLECTORS: [&str; 4] = ["settings", "destinations", "counters", "nat"];

/// Accept queue length. std's 128 fills within a tick when hundreds of
/// hostile connects arrive at once; connects beyond it wait for a SYN
/// retransmit (1 s and more), which would make a scraper late even though
/// the server would give it a slot at once.
const BACKLOG: i32 = 1024;

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does: a restarted exporter can bind while old connections linger in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// `--bpf`: the observer for the target's namespace (by its inode at
/// start), or `None` after saying once, on stderr, what is missing.
fn load_bpf(target: &netns::Target, all_netns: bool) -> Option<fivetuple_bpf::observe::Observer> {
    // Counts only: no failure stream.
    let options = fivetuple_bpf::observe::Options::default().events(false);
    // With --all-netns the observer counts every namespace of the node.
    let inode = if all_netns {
        Ok(None)
    } else {
        crate::trace::netns_inode(target)
            .map(Some)
            .map_err(|e| format!("{e:#}"))
    };
    let loaded = inode.and_then(|inode| {
        fivetuple_bpf::observe::load(options.netns(inode)).map_err(|e| crate::trace::chain(&e))
    });
    match loaded {
        Ok(o) => Some(o),
        Err(why) => {
            eprintln!("fivetuple exporter: --bpf: {why}; serving the other metrics without it (fivetuple_bpf_observer_loaded 0)");
            None
        }
    }
}

/// Runs the exporter until SIGINT or SIGTERM; returns the exit code (0).
pub fn run(args: Args, out: &mut dyn Write) -> Result<u8> {
    let target = args.table.target();
    let reader = args.table.reader();
    let all_netns = args.table.all_netns;
    let bound_inactive = args.table.bound_inactive();
    if all_netns {
        args.table.check_all_netns()?;
    }
    let web = match &args.web_config_file {
        Some(f) => web_config::WebConfig::load(f)?,
        None => web_config::WebConfig {
            tls: None,
            auth: None,
            client_auth: web_config::ClientAuth::None,
        },
    };
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth_note = match (&web.auth, web.client_auth) {
        (Some(_), web_config::ClientAuth::RequireAndVerify) => ", basic auth, client certificates",
        (Some(_), _) => ", basic auth",
        (None, web_config::ClientAuth::RequireAndVerify) => ", client certificates",
        (None, _) => "",
    };

    let listener =
        listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;

    // The scrape thread enters the namespace first, so a bad --netns/--pid
    // or a missing privilege fails here, before we say we are listening.
    let bpf = args.bpf.then(|| {
        Arc::new(bpf::BpfCollector::new(
            load_bpf(&target, all_netns),
            args.top_k,
            all_netns,
        ))
    });
    let stats = Arc::new(server::Stats::default());
    let (flights, runway) = flight::flights();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (top_k, thread_stats, thread_target) = (args.top_k, stats.clone(), target.clone());
    std::thread::Builder::new()
        .name("fivetuple-scrape".into())
        .spawn(move || {
            let follower = match netns::Follower::enter(&thread_target) {
                Ok(f) => f,
                Err(e) => {
                    let _ = entered_tx.send(Err(e));
                    return;
                }
            };
            // Read once now, so an unreadable namespace fails at start too.
            if let Err(e) = read_settings() {
                let _ = entered_tx.send(Err(e));
                return;
            }
            let _ = entered_tx.send(Ok(()));
            scrape_loop(
                follower,
                runway,
                reader,
                top_k,
                (all_netns, bound_inactive),
                thread_stats,
                bpf,
            );
        })
        .context("cannot start the scrape thread")?;
    entered_rx
        .recv()
        .context("the scrape thread stopped before it started")?
        .with_context(|| format!("cannot read the {target} network namespace"))?;

    let scope = if all_netns {
        "every network namespace".to_string()
    } else {
        format!("{target} network namespace")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let server = Arc::new(server::Server::new(
        flights,
        stats,
        web,
        server::Limits::default(),
    ));
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // stdout closed or full: say so and exit 3, rather than serve with
        // nobody told where, or exit 0 as a quiet broken pipe would.
        writeln!(
            out,
            "fivetuple exporter: listening on {scheme}://{bound}/metrics ({scope}{auth_note})"
        )
        .and_then(|()| out.flush())
        .map_err(|e| {
            anyhow::anyhow!("the startup line was not written to stdout ({e}); not serving")
        })?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        server.serve(listener, stop).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(
            negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0; q=0")),
            Format::Text
        );
    }

    #[test]
    fn bad_arguments_name_the_value() {
        assert!(parse_listen("localhost:80")
            .unwrap_err()
            .contains("\"localhost:80\""));
        assert!(parse_listen("127.0.0.1").unwrap_err().contains("127.0.0.1"));
        assert_eq!(parse_listen("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_top_k("0").unwrap_err().contains("at least 1"));
        assert!(parse_top_k("x").unwrap_err().contains("\"x\""));
        assert_eq!(parse_top_k("50").unwrap(), 50);
    }

    fn failing_snapshot() -> Result<fivetuple_scan::Snapshot, fivetuple_scan::ScanError> {
        Err(fivetuple_scan::ScanError::Thread(
            "synthetic failure".into(),
        ))
    }

    #[test]
    fn a_failing_collector_reports_zero_and_the_scrape_goes_on() {
        let log = Arc::new(RunLog::default());
        let mut r = Registry::default();
        r.register_collector(Box::new(settings::SettingsCollector::new(
            || {
                Ok(fivetuple_scan::Settings {
                    ip_local_port_range: fivetuple_scan::PortRange::new(40000, 40099).unwrap(),
                    tcp_max_tw_buckets: 1024,
                    ..fivetuple_scan::Settings::default()
                })
            },
            log.clone(),
        )));
        r.register_collector(Box::new(destinations::DestinationsCollector::new(
            Box::new(failing_snapshot),
            50,
            log.clone(),
        )));
        r.register_collector(Box::new(counters::CountersCollector::new(
            || fivetuple_scan::Counters {
                active_opens: Some(7),
                tw: Some(3),
                ..Default::default()
            },
            log.clone(),
        )));
        r.register_collector(Box::new(scrape::SelfCollector::new(
            log,
            Arc::new(server::Stats::default()),
        )));
        let text = encode(&r, Format::Text).unwrap();
        for line in [
            "fivetuple_scrape_collector_success{collector=\"settings\"} 1",
            "fivetuple_scrape_collector_success{collector=\"destinations\"} 0",
            "fivetuple_scrape_collector_success{collector=\"counters\"} 1",
            "fivetuple_ip_local_port_range_ports 100",
            "# TYPE fivetuple_tcp_active_opens_total counter",
            "fivetuple_tcp_active_opens_total 7",
            "fivetuple_exporter_connections_refused_total{reason=\"slots_full\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line || l == format!("{line}.0")),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("fivetuple_destination_"), "{text}");
        let om = encode(&r, Format::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# TYPE fivetuple_tcp_active_opens counter"),
            "{om}"
        );
    }
}

#[cfg(test)]
mod golden;

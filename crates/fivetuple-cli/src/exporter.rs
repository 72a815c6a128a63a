//! `fivetuple exporter`: serves Prometheus metrics about a namespace's port
//! budget on `/metrics`. Collectors read the socket table, settings and
//! counters at scrape time (one collector per file under `exporter/`).
//!
//! All reading happens on one scrape thread that lives in the watched
//! namespace (namespace membership is per thread, DESIGN §5). The HTTP side
//! hands it scrape jobs over a bounded queue: scrapes run one at a time,
//! [`QUEUE`] more may wait, and further ones get 503 at once, so slow
//! scrapes cannot pile up work. A job whose client has gone away is skipped.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::table_args::TableArgs;
use anyhow::{Context, Result};
use fivetuple_scan::netns;
use fivetuple_scan::settings::{read_counters, read_settings};
use fivetuple_scan::Reader;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, Semaphore};

mod counters;
mod destinations;
mod scrape;
mod settings;

/// Default listen address: loopback, port 19299. The Prometheus exporter
/// port block 9100-9999 is fully allocated; 19299 is outside it, below every
/// OS ephemeral range (Linux 32768-60999, Windows/macOS 49152-65535), so the
/// exporter never takes a source port from the destinations it watches.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:19299";
/// Scrapes that may wait while one runs; more get 503.
pub const QUEUE: usize = 4;
/// Concurrent HTTP connections; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

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
    #[command(flatten)]
    table: TableArgs,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Builds the registry: settings, destinations, counters, then self.
/// Everything registered reads the namespace of the thread that encodes it.
pub fn registry(reader: Reader, top_k: usize, rejected: Arc<AtomicU64>) -> Registry {
    let log = Arc::new(RunLog::default());
    let mut r = Registry::default();
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
    r.register_collector(Box::new(scrape::SelfCollector::new(log, rejected)));
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

struct Job {
    format: Format,
    reply: oneshot::Sender<Result<String, std::fmt::Error>>,
}

/// The scrape thread's loop: one job at a time until the server goes away.
fn serve_jobs(mut jobs: mpsc::Receiver<Job>, registry: Registry) {
    while let Some(job) = jobs.blocking_recv() {
        if job.reply.is_closed() {
            continue;
        }
        let _ = job.reply.send(encode(&registry, job.format));
    }
}

struct Server {
    jobs: mpsc::Sender<Job>,
    rejected: Arc<AtomicU64>,
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_allowed() -> Resp {
    let mut r = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET\n",
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

const INDEX: &str = "<html><head><title>fivetuple exporter</title></head><body><h1>fivetuple exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

async fn handle(req: Request<Incoming>, server: Arc<Server>) -> Result<Resp, Infallible> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    Ok(match req.uri().path() {
        "/metrics" if !get => not_allowed(),
        "/metrics" => {
            let format = negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
            let (tx, rx) = oneshot::channel();
            match server.jobs.try_send(Job { format, reply: tx }) {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    server.rejected.fetch_add(1, Ordering::Relaxed);
                    let mut r = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many scrapes in progress; retry later\n",
                    );
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
                Err(mpsc::error::TrySendError::Closed(_)) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the scrape thread has stopped\n",
                ),
                Ok(()) => match rx.await {
                    Ok(Ok(body)) => {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static(format.content_type()),
                        );
                        r
                    }
                    _ => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding the metrics failed\n",
                    ),
                },
            }
        }
        "/" if !get => not_allowed(),
        "/" => {
            let mut r = plain(StatusCode::OK, INDEX);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ),
    })
}

/// Runs the exporter until SIGINT or SIGTERM; returns the exit code (0).
pub fn run(args: Args, out: &mut dyn Write) -> Result<u8> {
    let target = args.table.target();
    let reader = args.table.reader();
    // Enter the namespace once now so a bad --netns/--pid or missing privilege fails at start.
    netns::run_in(&target, read_settings)
        .and_then(|r| r)
        .with_context(|| format!("cannot read the {} network namespace", target))?;

    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;

    let rejected = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Job>(QUEUE);
    let (top_k, rej) = (args.top_k, rejected.clone());
    let scrape_target = target.clone();
    std::thread::Builder::new()
        .name("fivetuple-scrape".into())
        .spawn(move || {
            let r = netns::run_in(&scrape_target, move || {
                serve_jobs(rx, registry(reader, top_k, rej));
            });
            if let Err(e) = r {
                eprintln!("fivetuple exporter: the scrape thread stopped: {e:#}");
            }
        })
        .context("cannot start the scrape thread")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let server = Arc::new(Server { jobs: tx, rejected });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        writeln!(
            out,
            "fivetuple exporter: listening on http://{bound}/metrics ({} network namespace)",
            target
        )?;
        out.flush()?;
        let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        eprintln!("fivetuple exporter: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, server.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                drop(permit);
            });
        }
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
            Arc::new(AtomicU64::new(2)),
        )));
        let text = encode(&r, Format::Text).unwrap();
        for line in [
            "fivetuple_scrape_collector_success{collector=\"settings\"} 1",
            "fivetuple_scrape_collector_success{collector=\"destinations\"} 0",
            "fivetuple_scrape_collector_success{collector=\"counters\"} 1",
            "fivetuple_ip_local_port_range_ports 100",
            "# TYPE fivetuple_tcp_active_opens_total counter",
            "fivetuple_tcp_active_opens_total 7",
            "fivetuple_exporter_scrapes_rejected_total 2",
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

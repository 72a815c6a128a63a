//! Runs the experiment: one fresh box per remedy (so TIME_WAIT left by one
//! run never affects the next), the two services inside, the driver against
//! A, and the numbers collected into a [`Report`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Remedy, Topology, FRONTEND_PORT, UPSTREAM_PORT};
use crate::driver::{self, DriveOutcome, Live, Load};
use crate::error::LabError;
use crate::netns::{self, Privilege};
use crate::report::{verdict, BoxInfo, Budget, Interruption, RemedyResult, RemedySettings, Report};
use crate::services::{serve_frontend, serve_upstream, Outbound, UpstreamMode};

/// Receives progress while the experiment runs. Every method has an empty
/// default; calls come from the box threads.
pub trait Observer: Send + Sync {
    /// A remedy's box is built and the driver is about to start.
    fn started(&self, _remedy: Remedy, _calls: u64) {}
    /// About five times a second while a remedy runs.
    fn progress(&self, _remedy: Remedy, _ok: u64, _failed: u64, _time_wait: u64) {}
    /// A remedy finished.
    fn finished(&self, _result: &RemedyResult) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// Veth addresses for `--topology two-hosts` (RFC 2544 benchmarking range).
const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Runs every remedy of `config` in its own box, in order.
pub fn run(
    config: &Config,
    privilege: Privilege,
    observer: Arc<dyn Observer>,
) -> Result<Report, LabError> {
    run_until(
        config,
        privilege,
        observer,
        Arc::new(AtomicBool::new(false)),
    )
}

/// Like [`run`], but stops soon after `stop` turns true (a Ctrl-C
/// handler sets it): the remedy running then is abandoned, its box torn
/// down, and the report holds the remedies that finished, with
/// [`Report::interrupted`] saying where it stopped.
pub fn run_until(
    config: &Config,
    privilege: Privilege,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<Report, LabError> {
    config.check()?;
    let mut remedies = Vec::new();
    let mut reuse_delay_ms = None;
    let mut interrupted = None;
    for (n, &remedy) in config.remedies.iter().enumerate() {
        let outcome = if stop.load(Ordering::Relaxed) {
            Err(LabError::Interrupted)
        } else {
            run_remedy(config, remedy, observer.clone(), stop.clone())
        };
        match outcome {
            Ok((result, delay)) => {
                reuse_delay_ms = reuse_delay_ms.or(delay);
                observer.finished(&result);
                remedies.push(result);
            }
            // A remedy that failed while stopping counts as interrupted too.
            Err(e) if !matches!(e, LabError::Interrupted) && !stop.load(Ordering::Relaxed) => {
                return Err(e)
            }
            Err(_) => {
                interrupted = Some(Interruption {
                    during: remedy,
                    not_run: config.remedies[n + 1..].to_vec(),
                });
                break;
            }
        }
    }
    Ok(Report {
        box_info: BoxInfo {
            topology: config.topology,
            namespace: privilege.describe().to_string(),
            kernel: netns::kernel_release(),
            ports: config.ports(),
            port_range: [config.port_lo, config.port_hi],
            tcp_tw_reuse: config.tw_reuse,
            tcp_tw_reuse_delay_ms: reuse_delay_ms,
            tcp_timestamps: config.timestamps,
            time_wait_s: crate::config::TIME_WAIT_SECS,
            rate_per_s: config.rate,
            duration_s: config.duration.as_secs_f64(),
            spread_sources: config.spread_sources,
        },
        remedies,
        interrupted,
    })
}

/// What the client side measured, plus the box facts it read.
struct ClientRun {
    outcome: DriveOutcome,
    settings: RemedySettings,
    reuse_delay_ms: Option<u64>,
}

fn run_remedy(
    config: &Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<(RemedyResult, Option<u64>), LabError> {
    let run = match config.topology {
        Topology::Loopback => run_loopback(config.clone(), remedy, observer, stop)?,
        Topology::TwoHosts => run_two_hosts(config.clone(), remedy, observer, stop)?,
    };
    let s = &run.settings;
    let ports = u32::from(s.port_range[1]) - u32::from(s.port_range[0]) + 1;
    let budget = Budget::of(
        remedy,
        ports,
        s.sources,
        s.tcp_tw_reuse,
        config.timestamps,
        run.reuse_delay_ms,
        config.topology,
    );
    let o = run.outcome;
    let (verdict, verdict_text) = verdict(o.failed, o.first_failure_s, budget, config.rate);
    // Completed calls over the time they took to complete, up to the first
    // failure: never the schedule, which an overloaded box does not keep.
    let achieved_per_s = o.ok_error_free as f64 / o.error_free_s;
    Ok((
        RemedyResult {
            name: remedy,
            calls: o.calls,
            ok: o.ok,
            failed: o.failed,
            shed: o.shed,
            first_failure_s: o.first_failure_s,
            error: o.error,
            peak_time_wait: o.peak_time_wait,
            budget_per_s: budget.per_s(),
            achieved_per_s,
            error_free_s: o.error_free_s,
            latency_ms_p50: o.latency_ms_p50,
            latency_ms_p99: o.latency_ms_p99,
            verdict,
            verdict_text,
            settings: run.settings,
            timeline: o.timeline,
        },
        run.reuse_delay_ms,
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime, LabError> {
    // Built inside the box thread, after unshare: its threads inherit the namespace.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fivetuple-box")
        .enable_all()
        .build()
        .map_err(|e| LabError::Run(format!("starting the runtime: {e}")))
}

/// Sets the client namespace's sysctls for `remedy`; returns the range and
/// `tcp_tw_reuse` in force and `tcp_tw_reuse_delay` if the kernel has it.
fn configure_client(
    config: &Config,
    remedy: Remedy,
) -> Result<([u16; 2], u8, Option<u64>), LabError> {
    let range = config.range_of(remedy);
    let reuse = if remedy == Remedy::TwReuse {
        1
    } else {
        config.tw_reuse
    };
    netns::write_sysctl(
        "ipv4.ip_local_port_range",
        &format!("{} {}", range[0], range[1]),
    )?;
    netns::write_sysctl("ipv4.tcp_tw_reuse", &reuse.to_string())?;
    netns::write_sysctl(
        "ipv4.tcp_timestamps",
        if config.timestamps { "1" } else { "0" },
    )?;
    let delay = netns::read_sysctl("ipv4.tcp_tw_reuse_delay")
        .ok()
        .and_then(|v| v.parse().ok());
    Ok((range, reuse, delay))
}

fn spread_sources(config: &Config) -> Vec<IpAddr> {
    (0..config.spread_sources)
        .map(|i| match config.topology {
            Topology::Loopback => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)),
            Topology::TwoHosts => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1 + i)),
        })
        .collect()
}

/// Builds A's outbound client for `remedy` (inside the client namespace:
/// `Rotation::new` reads that namespace's reserved ports).
fn outbound(
    config: &Config,
    remedy: Remedy,
    range: [u16; 2],
    upstream: SocketAddr,
) -> Result<(Outbound, u32, String), LabError> {
    let per_call = |policy: Arc<dyn fivetuple::LocalPolicy>, auth: bool| Outbound::PerCall {
        connector: Arc::new(fivetuple::Connector::from_arc(policy)),
        upstream,
        auth,
    };
    let cfg_err =
        |e: fivetuple::ConfigError| LabError::Run(format!("building the {remedy} policy: {e}"));
    Ok(match remedy {
        Remedy::Naive | Remedy::WideRange | Remedy::TwReuse => (
            per_call(Arc::new(fivetuple::KernelDefault), false),
            1,
            "kernel picks the port, closed per call".into(),
        ),
        Remedy::Auth => (
            per_call(Arc::new(fivetuple::KernelDefault), true),
            1,
            "kernel picks the port, 401 + 200 per connection, closed per call".into(),
        ),
        Remedy::Rotate => {
            let range = fivetuple::PortRange::new(range[0], range[1]).map_err(cfg_err)?;
            (
                per_call(
                    Arc::new(fivetuple::Rotation::new(range).map_err(cfg_err)?),
                    false,
                ),
                1,
                format!(
                    "fivetuple::Rotation over {}-{}, closed per call",
                    range.lo(),
                    range.hi()
                ),
            )
        }
        Remedy::Spread => {
            let sources = spread_sources(config);
            let n = sources.len() as u32;
            let text = format!(
                "fivetuple::Spread over {} .. {}, closed per call",
                sources[0],
                sources[sources.len() - 1]
            );
            (
                per_call(
                    Arc::new(fivetuple::Spread::new(sources).map_err(cfg_err)?),
                    false,
                ),
                n,
                text,
            )
        }
        Remedy::Attach => (
            per_call(Arc::new(fivetuple::KernelDefault), false),
            1,
            format!(
                "kernel picks the port, closed per call; the cgroup connect hook binds rotate:{}-{}",
                range[0], range[1]
            ),
        ),
        Remedy::Pooled => (
            Outbound::pooled(upstream),
            1,
            "hyper-util pooled client over fivetuple::hyper::HttpConnector, keep-alive".into(),
        ),
    })
}

/// The client side: frontend A, the driver and the progress ticker, in the
/// current (client) namespace's runtime.
async fn client_side(
    config: Config,
    remedy: Remedy,
    out: Outbound,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<DriveOutcome, LabError> {
    let frontend_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, FRONTEND_PORT));
    let listener = TcpListener::bind(frontend_addr)
        .await
        .map_err(|e| LabError::Run(format!("frontend binding {frontend_addr}: {e}")))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(serve_frontend(listener, out, stop_rx));

    let live = Arc::new(Live::default());
    let load = Load {
        rate: config.rate,
        duration: config.duration,
        connections: config.driver_connections,
        max_in_flight: config.max_in_flight,
    };
    observer.started(remedy, load.total());
    let ticker = {
        let (live, observer) = (live.clone(), observer.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                observer.progress(
                    remedy,
                    live.ok.load(Ordering::Relaxed),
                    live.failed.load(Ordering::Relaxed),
                    live.time_wait.load(Ordering::Relaxed),
                );
            }
        })
    };
    let outcome = driver::drive(
        frontend_addr,
        load,
        live.clone(),
        netns::time_wait_count,
        stop,
    )
    .await;
    ticker.abort();
    if let Ok(o) = &outcome {
        observer.progress(
            remedy,
            o.ok,
            o.failed,
            live.time_wait.load(Ordering::Relaxed),
        );
    }
    let _ = stop_tx.send(true);
    outcome
}

fn run_loopback(
    config: Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<ClientRun, LabError> {
    let handle = netns::spawn_box(&format!("box-{remedy}"), move || {
        let (range, reuse, reuse_delay_ms) = configure_client(&config, remedy)?;
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, UPSTREAM_PORT));
        let (out, sources, client) = outbound(&config, remedy, range, upstream)?;
        let _hook = crate::hook::KernelHook::for_remedy(remedy, range, upstream)?;
        let rt = runtime()?;
        let mode = if remedy == Remedy::Auth {
            UpstreamMode::Auth
        } else {
            UpstreamMode::Plain
        };
        let outcome = rt.block_on(async {
            let listener = TcpListener::bind(upstream)
                .await
                .map_err(|e| LabError::Run(format!("upstream binding {upstream}: {e}")))?;
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(serve_upstream(listener, mode, stop_rx));
            let outcome = client_side(config, remedy, out, observer, stop).await;
            let _ = stop_tx.send(true);
            outcome
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(ClientRun {
            outcome: outcome?,
            settings: RemedySettings {
                port_range: range,
                tcp_tw_reuse: reuse,
                sources,
                client,
            },
            reuse_delay_ms,
        })
    })?;
    netns::join_box(handle)
}

/// Waits (bounded) until B accepts connections: the veth link comes up
/// asynchronously. The probe must not spend a port of the box, or the run
/// would show one call fewer than the budget: it closes with RST
/// (`SO_LINGER {on, 0}`), which leaves no TIME_WAIT on either side.
async fn wait_until_answers(upstream: SocketAddr, stop: &AtomicBool) -> Result<(), LabError> {
    let mut probe = fivetuple::Connector::new(fivetuple::KernelDefault);
    probe
        .set_linger_zero(true)
        .set_connect_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(LabError::Interrupted);
        }
        match probe.connect(upstream).await {
            // Dropping it sends the RST.
            Ok(stream) => {
                drop(stream);
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(LabError::Run(format!(
                    "upstream {upstream} did not answer over the veth within 5 s: {}",
                    e.io_error()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn run_two_hosts(
    config: Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<ClientRun, LabError> {
    let (tid_tx, tid_rx) = mpsc::channel::<i32>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let timestamps = config.timestamps;
    let mode = if remedy == Remedy::Auth {
        UpstreamMode::Auth
    } else {
        UpstreamMode::Plain
    };

    // Host B: the upstream. It waits for A to move the veth peer in, then
    // serves until A says stop (or A's end of the channel goes away).
    let host_b = netns::spawn_box(&format!("box-{remedy}-b"), move || {
        let setup = || -> Result<(tokio::runtime::Runtime, watch::Sender<bool>), LabError> {
            netns::write_sysctl("ipv4.tcp_timestamps", if timestamps { "1" } else { "0" })?;
            tid_tx
                .send(netns::current_tid())
                .map_err(|_| LabError::Namespace("host A went away".into()))?;
            go_rx.recv().map_err(|_| {
                LabError::Namespace("host A went away before the veth was made".into())
            })?;
            netns::ip(&["addr", "add", &format!("{HOST_B}/15"), "dev", "ft-b"])?;
            netns::ip(&["link", "set", "ft-b", "up"])?;
            let rt = runtime()?;
            let addr = SocketAddr::from((HOST_B, UPSTREAM_PORT));
            let listener = rt
                .block_on(TcpListener::bind(addr))
                .map_err(|e| LabError::Run(format!("upstream binding {addr}: {e}")))?;
            let (stop, stop_rx) = watch::channel(false);
            rt.spawn(serve_upstream(listener, mode, stop_rx));
            Ok((rt, stop))
        };
        match setup() {
            Ok((rt, stop)) => {
                let _ = ready_tx.send(Ok(()));
                // The server runs on the runtime's workers meanwhile.
                let _ = stop_rx.recv();
                let _ = stop.send(true);
                rt.shutdown_timeout(Duration::from_secs(1));
                Ok(())
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                Err(e)
            }
        }
    })?;

    let host_a = netns::spawn_box(&format!("box-{remedy}-a"), move || {
        let (range, reuse, reuse_delay_ms) = configure_client(&config, remedy)?;
        let tid = tid_rx
            .recv()
            .map_err(|_| LabError::Namespace("host B failed before it was ready".into()))?;
        netns::ip(&[
            "link",
            "add",
            "ft-a",
            "type",
            "veth",
            "peer",
            "name",
            "ft-b",
            "netns",
            &tid.to_string(),
        ])?;
        netns::ip(&["addr", "add", &format!("{HOST_A}/15"), "dev", "ft-a"])?;
        if remedy == Remedy::Spread {
            for source in spread_sources(&config) {
                netns::ip(&["addr", "add", &format!("{source}/32"), "dev", "ft-a"])?;
            }
        }
        netns::ip(&["link", "set", "ft-a", "up"])?;
        let _ = go_tx.send(());
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Namespace(format!("host B: {e}"))),
            Err(_) => return Err(LabError::Namespace("host B went away".into())),
        }
        let upstream = SocketAddr::from((HOST_B, UPSTREAM_PORT));
        let (out, sources, client) = outbound(&config, remedy, range, upstream)?;
        let _hook = crate::hook::KernelHook::for_remedy(remedy, range, upstream)?;
        let rt = runtime()?;
        let outcome = rt.block_on(async {
            wait_until_answers(upstream, &stop).await?;
            client_side(config, remedy, out, observer, stop).await
        });
        let _ = stop_tx.send(());
        rt.shutdown_timeout(Duration::from_secs(1));
        Ok(ClientRun {
            outcome: outcome?,
            settings: RemedySettings {
                port_range: range,
                tcp_tw_reuse: reuse,
                sources,
                client,
            },
            reuse_delay_ms,
        })
    });
    let a = match host_a {
        Ok(h) => netns::join_box(h),
        Err(e) => Err(e),
    };
    let b = netns::join_box(host_b);
    match (a, b) {
        (Ok(run), _) => Ok(run),
        (Err(_), Err(b)) => Err(b),
        (Err(a), Ok(())) => Err(a),
    }
}

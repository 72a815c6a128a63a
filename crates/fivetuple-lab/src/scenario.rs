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
use crate::nat::{self, ConntrackCounts};
use crate::netns::{self, Privilege};
use crate::report::{
    verdict, verdict_behind_nat, BoxInfo, Budget, Interruption, NatBox, RemedyResult,
    RemedySettings, Report,
};
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
    let mut ct_time_wait_s = None;
    let mut interrupted = None;
    for (n, &remedy) in config.remedies.iter().enumerate() {
        let outcome = if stop.load(Ordering::Relaxed) {
            Err(LabError::Interrupted)
        } else {
            run_remedy(config, remedy, observer.clone(), stop.clone())
        };
        match outcome {
            Ok((result, delay, ct_tw)) => {
                reuse_delay_ms = reuse_delay_ms.or(delay);
                ct_time_wait_s = ct_time_wait_s.or(ct_tw);
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
            nat: (config.topology == Topology::Nat).then(|| NatBox {
                pods: config.pods,
                nat_port_range: [config.port_lo, config.port_hi],
                conntrack_time_wait_s: ct_time_wait_s.unwrap_or(nat::DEFAULT_CT_TIME_WAIT_SECS),
                connect_timeout_ms: NAT_CONNECT_TIMEOUT.as_millis() as u64,
            }),
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
    /// `--topology nat`: the node's conntrack counters and
    /// `nf_conntrack_tcp_timeout_time_wait`.
    nat: Option<(ConntrackCounts, f64)>,
}

fn run_remedy(
    config: &Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<(RemedyResult, Option<u64>, Option<f64>), LabError> {
    let run = match config.topology {
        Topology::Loopback => run_loopback(config.clone(), remedy, observer, stop)?,
        Topology::TwoHosts => run_two_hosts(config.clone(), remedy, observer, stop)?,
        Topology::Nat => run_nat(config.clone(), remedy, observer, stop)?,
    };
    let s = &run.settings;
    let ports = u32::from(s.port_range[1]) - u32::from(s.port_range[0]) + 1;
    let budget = match run.nat {
        Some((_, ct_time_wait_s)) => Budget::nat(
            remedy,
            ports,
            s.sources,
            ct_time_wait_s,
            u32::from(config.pods) * config.ports(),
        ),
        None => Budget::of(
            remedy,
            ports,
            s.sources,
            s.tcp_tw_reuse,
            config.timestamps,
            run.reuse_delay_ms,
            config.topology,
        ),
    };
    let o = run.outcome;
    let (verdict, verdict_text) = match &run.nat {
        Some((counts, _)) => {
            verdict_behind_nat(o.failed, o.first_failure_s, budget, config.rate, counts)
        }
        None => verdict(o.failed, o.first_failure_s, budget, config.rate),
    };
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
            conntrack: run.nat.map(|(c, _)| c),
            timeline: o.timeline,
        },
        run.reuse_delay_ms,
        run.nat.map(|(_, t)| t),
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime, LabError> {
    // Built inside the box thread, after unshare: its threads inherit the namespace.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fivetuple-box")
        .enable_all()
        .build()
        .map_err(|e| LabError::run("starting the runtime", e))
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
            // `spread` does not run behind the NAT (Config::check).
            Topology::TwoHosts | Topology::Nat => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1 + i)),
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
    // Behind a NAT a call that finds no NAT port is a SYN nobody answers:
    // bound it, or the run would wait out the kernel's SYN retries.
    let connect_timeout = (config.topology == Topology::Nat).then_some(NAT_CONNECT_TIMEOUT);
    let per_call = |policy: Arc<dyn fivetuple::LocalPolicy>, auth: bool| {
        let mut connector = fivetuple::Connector::from_arc(policy);
        connector.set_connect_timeout(connect_timeout);
        Outbound::PerCall {
            connector: Arc::new(connector),
            upstream,
            auth,
        }
    };
    let cfg_err =
        |e: fivetuple::ConfigError| LabError::run(format!("building the {remedy} policy"), e);
    let (out, sources, mut text) = match remedy {
        Remedy::Naive | Remedy::WideRange | Remedy::TwReuse => (
            per_call(Arc::new(fivetuple::KernelDefault), false),
            1,
            "kernel picks the port, closed per call".into(),
        ),
        Remedy::SnatPool | Remedy::RandomFully => (
            per_call(Arc::new(fivetuple::KernelDefault), false),
            nat::nat_addresses(remedy).len() as u32,
            "kernel picks the port, closed per call".into(),
        ),
        Remedy::Auth => (
            per_call(Arc::new(fivetuple::KernelDefault), true),
            1,
            "kernel picks the port, 401 + 200 per connection, closed per call".into(),
        ),
        Remedy::Rotate => {
            let range =
                fivetuple::PortRange::new(range[0], range[1]).map_err(|e| cfg_err(e.into()))?;
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
            Outbound::pooled(upstream, connect_timeout),
            1,
            "hyper-util pooled client over fivetuple::http::HttpConnector, keep-alive".into(),
        ),
    };
    if config.topology == Topology::Nat {
        text.push_str(&format!(
            "; node: {}",
            nat::rule(remedy, range[0], range[1])
        ));
    }
    Ok((out, sources, text))
}

/// The client side: frontend A and the driver, in the current (client)
/// namespace's runtime.
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
        .map_err(|e| LabError::run(format!("frontend binding {frontend_addr}"), e))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(serve_frontend(listener, out, stop_rx));
    let outcome = drive_with_progress(
        &config,
        remedy,
        &[frontend_addr],
        netns::time_wait_count,
        observer,
        stop,
    )
    .await;
    let _ = stop_tx.send(true);
    outcome
}

/// The driver against `frontends` and the progress ticker; `sample` is
/// what the progress shows next to ok/failed (TIME_WAIT sockets, or the
/// node's conntrack entries behind a NAT).
async fn drive_with_progress(
    config: &Config,
    remedy: Remedy,
    frontends: &[SocketAddr],
    sample: fn() -> std::io::Result<u64>,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<DriveOutcome, LabError> {
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
    let outcome = driver::drive(frontends, load, live.clone(), sample, stop).await;
    ticker.abort();
    if let Ok(o) = &outcome {
        observer.progress(
            remedy,
            o.ok,
            o.failed,
            live.time_wait.load(Ordering::Relaxed),
        );
    }
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
                .map_err(|e| LabError::run(format!("upstream binding {upstream}"), e))?;
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
            nat: None,
        })
    })?;
    netns::join_box(handle)
}

/// Waits (bounded) until B accepts connections: the veth link comes up
/// asynchronously. The probe must not spend a port of the box, or the run
/// would show one call fewer than the budget: it closes with RST
/// (`SO_LINGER {on, 0}`), which leaves no TIME_WAIT on either side.
async fn wait_until_answers(upstream: SocketAddr, stop: &AtomicBool) -> Result<(), LabError> {
    wait_reachable(upstream, false, stop).await
}

/// Connects to `target` every 20 ms for up to 5 s until it answers (or,
/// with `refused_proves_path`, refuses); the connection is closed with RST.
async fn wait_reachable(
    target: SocketAddr,
    refused_proves_path: bool,
    stop: &AtomicBool,
) -> Result<(), LabError> {
    let mut probe = fivetuple::Connector::new(fivetuple::KernelDefault);
    probe
        .set_linger_zero(true)
        .set_connect_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(LabError::Interrupted);
        }
        let err = match probe.connect(target).await {
            // Dropping it sends the RST.
            Ok(_) => return Ok(()),
            Err(e)
                if refused_proves_path
                    && e.io_error().kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Ok(())
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(LabError::run_msg(format!(
                "{target} did not answer within 5 s: {}",
                err.io_error()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A namespace the current box links to: its thread sends its id (for
/// `ip link ... netns TID`), waits until its links are made, runs `setup`
/// (which starts its service on a runtime), says whether that worked, then
/// serves until the `Peer` is finished or dropped. Dropping it (on every
/// error path) stops the thread and waits for it, so the namespace and its
/// veths are gone when the caller returns.
struct Peer {
    tid: i32,
    go: Option<mpsc::Sender<()>>,
    ready: mpsc::Receiver<Result<(), String>>,
    stop: mpsc::Sender<()>,
    handle: Option<std::thread::JoinHandle<Result<(), LabError>>>,
}

/// A runtime serving something, and the sender that stops it.
type Serving = (tokio::runtime::Runtime, watch::Sender<bool>);

impl Peer {
    fn spawn<S>(name: &str, setup: S) -> Result<Peer, LabError>
    where
        S: FnOnce() -> Result<Serving, LabError> + Send + 'static,
    {
        let (tid_tx, tid_rx) = mpsc::channel::<i32>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let handle = netns::spawn_box(name, move || {
            tid_tx
                .send(netns::current_tid())
                .map_err(|_| LabError::namespace_msg("the builder went away"))?;
            go_rx.recv().map_err(|_| {
                LabError::namespace_msg("the builder went away before the links were made")
            })?;
            match setup() {
                Ok((rt, serving)) => {
                    let _ = ready_tx.send(Ok(()));
                    // The service runs on the runtime's workers meanwhile.
                    let _ = stop_rx.recv();
                    let _ = serving.send(true);
                    rt.shutdown_timeout(Duration::from_secs(1));
                    Ok(())
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.chain()));
                    Err(e)
                }
            }
        })?;
        match tid_rx.recv() {
            Ok(tid) => Ok(Peer {
                tid,
                go: Some(go),
                ready,
                stop,
                handle: Some(handle),
            }),
            Err(_) => Err(netns::join_box(handle)
                .err()
                .unwrap_or_else(|| LabError::namespace_msg(format!("{name} ended early")))),
        }
    }

    /// Tells the peer its links exist and waits until it serves.
    fn start(&self, what: &str) -> Result<(), LabError> {
        if let Some(go) = &self.go {
            let _ = go.send(());
        }
        match self.ready.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LabError::namespace(what.to_string(), e)),
            Err(_) => Err(LabError::namespace_msg(format!("{what} went away"))),
        }
    }

    /// Stops the peer and waits for its thread (and namespace) to end.
    fn finish(mut self) -> Result<(), LabError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), LabError> {
        let _ = self.stop.send(());
        // A peer still waiting for its links sees the builder go away.
        self.go = None;
        self.handle.take().map_or(Ok(()), netns::join_box)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Upstream B serving at `addr` on a new runtime (in the calling thread's
/// namespace).
fn upstream_at(addr: SocketAddr, mode: UpstreamMode) -> Result<Serving, LabError> {
    let rt = runtime()?;
    let listener = rt
        .block_on(TcpListener::bind(addr))
        .map_err(|e| LabError::run(format!("upstream binding {addr}"), e))?;
    let (stop, stop_rx) = watch::channel(false);
    rt.spawn(serve_upstream(listener, mode, stop_rx));
    Ok((rt, stop))
}

fn upstream_mode(remedy: Remedy) -> UpstreamMode {
    if remedy == Remedy::Auth {
        UpstreamMode::Auth
    } else {
        UpstreamMode::Plain
    }
}

fn run_two_hosts(
    config: Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<ClientRun, LabError> {
    let timestamps = config.timestamps;
    // Host B: the upstream. It serves until host A is done with it.
    let host_b = Peer::spawn(&format!("box-{remedy}-b"), move || {
        netns::write_sysctl("ipv4.tcp_timestamps", if timestamps { "1" } else { "0" })?;
        netns::ip(&["addr", "add", &format!("{HOST_B}/15"), "dev", "ft-b"])?;
        netns::ip(&["link", "set", "ft-b", "up"])?;
        upstream_at(
            SocketAddr::from((HOST_B, UPSTREAM_PORT)),
            upstream_mode(remedy),
        )
    })?;
    let host_a = netns::spawn_box(&format!("box-{remedy}-a"), move || {
        let (range, reuse, reuse_delay_ms) = configure_client(&config, remedy)?;
        netns::veth("ft-a", "ft-b", host_b.tid)?;
        netns::ip(&["addr", "add", &format!("{HOST_A}/15"), "dev", "ft-a"])?;
        if remedy == Remedy::Spread {
            for source in spread_sources(&config) {
                netns::ip(&["addr", "add", &format!("{source}/32"), "dev", "ft-a"])?;
            }
        }
        netns::ip(&["link", "set", "ft-a", "up"])?;
        host_b.start("host B")?;
        let upstream = SocketAddr::from((HOST_B, UPSTREAM_PORT));
        let (out, sources, client) = outbound(&config, remedy, range, upstream)?;
        let _hook = crate::hook::KernelHook::for_remedy(remedy, range, upstream)?;
        let rt = runtime()?;
        let outcome = rt.block_on(async {
            wait_until_answers(upstream, &stop).await?;
            client_side(config, remedy, out, observer, stop).await
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        let b = host_b.finish();
        let outcome = outcome?;
        b?;
        Ok(ClientRun {
            outcome,
            settings: RemedySettings {
                port_range: range,
                tcp_tw_reuse: reuse,
                sources,
                client,
            },
            reuse_delay_ms,
            nat: None,
        })
    })?;
    netns::join_box(host_a)
}

/// How long a pod waits for a `connect()` under `--topology nat`: a SYN
/// the NAT dropped is never answered, and the kernel would retry it for
/// about two minutes.
pub const NAT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits (bounded) until the path through the node to B works, without
/// spending a NAT port toward B: it connects to a port B does not listen
/// on (a NAT tuple of its own), and a refusal proves the path.
async fn wait_until_routed(stop: &AtomicBool) -> Result<(), LabError> {
    wait_reachable(SocketAddr::from((nat::SERVICE, FRONTEND_PORT)), true, stop).await
}

/// `--topology nat`: B in its namespace, `config.pods` pods each running
/// frontend A, and the node between them, which source-NATs the pods
/// (nft, `--ports` NAT ports) and runs the driver against the pods'
/// frontends (its calls to them are routed, not NATed).
fn run_nat(
    config: Config,
    remedy: Remedy,
    observer: Arc<dyn Observer>,
    stop: Arc<AtomicBool>,
) -> Result<ClientRun, LabError> {
    let range = config.range_of(remedy);
    let pod_tw_reuse = config.tw_reuse;
    let service = Peer::spawn(&format!("box-{remedy}-svc"), move || {
        netns::ip(&[
            "addr",
            "add",
            &format!("{}/24", nat::SERVICE),
            "dev",
            nat::SERVICE_LINK,
        ])?;
        netns::ip(&["link", "set", nat::SERVICE_LINK, "up"])?;
        upstream_at(
            SocketAddr::from((nat::SERVICE, UPSTREAM_PORT)),
            UpstreamMode::Plain,
        )
    })?;
    let mut pods = Vec::with_capacity(usize::from(config.pods));
    let (client_tx, client_rx) = mpsc::channel::<(u32, String, u8)>();
    for k in 0..config.pods {
        let (config, stop, client_tx) = (config.clone(), stop.clone(), client_tx.clone());
        pods.push(Peer::spawn(&format!("box-{remedy}-pod{k}"), move || {
            let (me, gateway) = nat::pod_addresses(k);
            let link = nat::pod_link(k);
            netns::write_sysctl(
                "ipv4.tcp_timestamps",
                if config.timestamps { "1" } else { "0" },
            )?;
            netns::write_sysctl("ipv4.tcp_tw_reuse", &config.tw_reuse.to_string())?;
            netns::ip(&["addr", "add", &format!("{me}/24"), "dev", &link])?;
            netns::ip(&["link", "set", &link, "up"])?;
            netns::ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            let upstream = SocketAddr::from((nat::SERVICE, UPSTREAM_PORT));
            let (out, sources, client) = outbound(&config, remedy, range, upstream)?;
            let _ = client_tx.send((sources, client, k));
            let rt = runtime()?;
            let frontend = SocketAddr::from((me, FRONTEND_PORT));
            let listener = rt.block_on(async {
                wait_until_routed(&stop).await?;
                TcpListener::bind(frontend)
                    .await
                    .map_err(|e| LabError::run(format!("frontend binding {frontend}"), e))
            })?;
            let (serving, stop_rx) = watch::channel(false);
            rt.spawn(serve_frontend(listener, out, stop_rx));
            Ok((rt, serving))
        })?);
    }
    drop(client_tx);
    let node = netns::spawn_box(&format!("box-{remedy}-node"), move || {
        netns::veth(nat::OUTSIDE_LINK, nat::SERVICE_LINK, service.tid)?;
        netns::ip(&[
            "addr",
            "add",
            &format!("{}/24", nat::NODE_OUTSIDE),
            "dev",
            nat::OUTSIDE_LINK,
        ])?;
        if remedy == Remedy::SnatPool {
            for a in nat::nat_addresses(remedy) {
                netns::ip(&["addr", "add", &format!("{a}/32"), "dev", nat::OUTSIDE_LINK])?;
            }
        }
        netns::ip(&["link", "set", nat::OUTSIDE_LINK, "up"])?;
        let mut frontends = Vec::new();
        for (k, pod) in (0u8..).zip(&pods) {
            let link = nat::pod_link(k);
            let (pod_ip, me) = nat::pod_addresses(k);
            netns::veth(&link, &link, pod.tid)?;
            netns::ip(&["addr", "add", &format!("{me}/24"), "dev", &link])?;
            netns::ip(&["link", "set", &link, "up"])?;
            frontends.push(SocketAddr::from((pod_ip, FRONTEND_PORT)));
        }
        netns::write_sysctl("ipv4.ip_forward", "1")?;
        nat::load_ruleset(&nat::ruleset(remedy, range[0], range[1]))?;
        let ct_time_wait_s = nat::ct_time_wait_secs();
        service.start("service B")?;
        for (k, pod) in pods.iter().enumerate() {
            pod.start(&format!("pod {k}"))?;
        }
        let before = nat::read_stats()?;
        let rt = runtime()?;
        let outcome = rt.block_on(drive_with_progress(
            &config,
            remedy,
            &frontends,
            nat::entries,
            observer,
            stop,
        ));
        rt.shutdown_timeout(Duration::from_secs(1));
        let after = nat::read_stats()?;
        let at_end =
            nat::nat_table().map_err(|e| LabError::run("dumping the node's conntrack table", e))?;
        let mut finished = Vec::new();
        for pod in pods {
            finished.push(pod.finish());
        }
        finished.push(service.finish());
        let outcome = outcome?;
        finished.into_iter().collect::<Result<Vec<()>, _>>()?;
        let counts = nat::counts(
            &before,
            &after,
            outcome.peak_time_wait,
            at_end,
            outcome.ok,
            remedy.closes_per_call(),
        );
        Ok((outcome, counts, ct_time_wait_s))
    })?;
    let (outcome, counts, ct_time_wait_s) = netns::join_box(node)?;
    let (sources, client, _) = client_rx
        .recv()
        .map_err(|_| LabError::namespace_msg("no pod built its client"))?;
    Ok(ClientRun {
        outcome,
        settings: RemedySettings {
            port_range: range,
            tcp_tw_reuse: pod_tw_reuse,
            sources,
            client,
        },
        reuse_delay_ms: None,
        nat: Some((counts, ct_time_wait_s)),
    })
}

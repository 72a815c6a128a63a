//! Opens N close-per-call connections with a chosen local-endpoint policy and
//! counts what failed, by errno. The client closes first, so its side keeps
//! each 4-tuple in TIME_WAIT, as in the classic failure.
//!
//! ```text
//! cargo run --example churn -- --policy rotate:20000-29999 --calls 20000 --json
//! ```
//!
//! Without `--target` it starts its own sink server on loopback. It runs in
//! the current network namespace, so `unshare -n` plus a shrunk
//! `ip_local_port_range` reproduces exhaustion without touching the host:
//!
//! ```text
//! unshare -n sh -c 'ip link set lo up;
//!   echo "40000 40099" > /proc/sys/net/ipv4/ip_local_port_range;
//!   echo 0 > /proc/sys/net/ipv4/tcp_tw_reuse;
//!   ./target/release/examples/churn --policy kernel --calls 1000'
//! ```
//!
//! Running out of file descriptors (EMFILE, e.g. under `ulimit -n 12`) is
//! not port exhaustion and makes further calls meaningless: the first one,
//! in the client or in the sink's accept, stops the run, which prints what
//! it counted and exits 1 naming the limit. The sink backs off on accept
//! errors rather than spinning, and every read and write of the client has
//! the `--timeout-ms` deadline, so nothing waits forever.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fivetuple::Connector;

#[derive(Parser, Debug)]
#[command(about = "Open N close-per-call connections with a local-endpoint policy")]
struct Args {
    /// Local-endpoint policy: kernel, rotate[:LO-HI], spread:A-B|A,B,..,
    /// window:LO-HI, spread-rotate:ADDRESSES@LO-HI.
    #[arg(long, default_value = "kernel")]
    policy: String,
    /// Number of calls (connections) to make.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    calls: u64,
    /// Server to call (IP:PORT). Default: a sink started on 127.0.0.1.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Client threads making calls at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Attempts per connect before giving up (fivetuple's bound).
    #[arg(long, default_value_t = fivetuple::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// Per-connect timeout in milliseconds; also bounds each read and write
    /// of a call (the wait for the server's answer).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: u64,
    /// Close with SO_LINGER {on, 0}: RST, no TIME_WAIT. Loses unsent data;
    /// see `Connector::set_linger_zero`.
    #[arg(long)]
    linger_zero: bool,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("churn: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let policy = fivetuple::parse_policy(&args.policy)
        .with_context(|| format!("--policy {}", args.policy))?;
    let mut connector = Connector::from_arc(policy);
    connector
        .set_max_attempts(args.max_attempts)
        .context("--max-attempts")?
        .set_connect_timeout(Some(timeout))
        .set_linger_zero(args.linger_zero);

    // Set on the first EMFILE/ENFILE, in the client or in the sink.
    let out_of_fds = Arc::new(OutOfFds::default());
    let (target, sink) = match args.target {
        Some(t) => (t, None),
        None => {
            let (addr, sink) =
                start_sink(out_of_fds.clone()).context("starting the loopback sink server")?;
            (addr, Some(sink))
        }
    };

    let bar = indicatif::ProgressBar::new(args.calls);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} calls {per_sec} {msg} [{elapsed_precise}]",
        )
        .expect("static template"),
    );
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency {
            let (next, ok, errors, first_error, bar, connector, out_of_fds) = (
                &next,
                &ok,
                &errors,
                &first_error,
                &bar,
                &connector,
                &out_of_fds,
            );
            scope.spawn(move || {
                while !out_of_fds.seen() && next.fetch_add(1, Ordering::Relaxed) < args.calls {
                    match connector
                        .connect_std(target)
                        .map_err(Failure::Connect)
                        .and_then(|s| call(s, args.linger_zero, timeout).map_err(Failure::Io))
                    {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(f) => {
                            let (name, text) = f.describe(timeout);
                            out_of_fds.note(f.io_error(), "the client");
                            *errors.lock().unwrap().entry(name).or_default() += 1;
                            first_error.lock().unwrap().get_or_insert_with(|| {
                                bar.set_message(format!("first failure: {text}"));
                                text
                            });
                        }
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    let failed: u64 = errors.values().sum();
    let made = ok + failed;
    let sink_errors = sink.map(|s| s.errors.lock().unwrap().clone());
    if args.json {
        let out = serde_json::json!({
            "policy": args.policy,
            "calls": made,
            "ok": ok,
            "failed": failed,
            "errors": errors,
            "sink_accept_errors": sink_errors,
            "stopped": out_of_fds.text(),
            "seconds": (seconds * 1000.0).round() / 1000.0,
        });
        println!("{out}");
    } else {
        println!(
            "policy {}: {made} calls, {ok} ok, {failed} failed in {seconds:.2} s ({:.0} calls/s)",
            args.policy,
            made as f64 / seconds
        );
        for (name, n) in &errors {
            println!("  {name}: {n}");
        }
        if let Some(e) = first_error.lock().unwrap().as_ref() {
            println!("  first failure: {e}");
        }
        for (name, n) in sink_errors.iter().flatten() {
            println!("  sink accept {name}: {n}");
        }
    }
    if let Some(text) = out_of_fds.text() {
        bail!(
            "stopped after {made} of {} calls: {text}. The process ran out of file descriptors \
             (limit {}): this is not port exhaustion; raise the limit (ulimit -n) or lower --concurrency",
            args.calls,
            fd_limit().map_or("unknown".into(), |n| n.to_string())
        );
    }
    Ok(())
}

/// The first EMFILE/ENFILE seen: file descriptors ran out, so the run stops.
#[derive(Default)]
struct OutOfFds {
    seen: AtomicBool,
    first: Mutex<Option<String>>,
}

impl OutOfFds {
    fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// Records `err` if it is EMFILE or ENFILE, met by `who`.
    fn note(&self, err: &io::Error, who: &str) {
        if let Some(name) = fd_errno(err) {
            self.first
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("{who} got {name}: {err}"));
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    fn text(&self) -> Option<String> {
        self.first.lock().unwrap().clone()
    }
}

/// "EMFILE" (this process's limit) or "ENFILE" (the system's).
fn fd_errno(err: &io::Error) -> Option<&'static str> {
    #[cfg(unix)]
    match err.raw_os_error() {
        Some(libc::EMFILE) => return Some("EMFILE"),
        Some(libc::ENFILE) => return Some("ENFILE"),
        _ => {}
    }
    #[cfg(not(unix))]
    let _ = err;
    None
}

/// The soft RLIMIT_NOFILE (`ulimit -n`).
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: rlimit is plain old data and outlives the call.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a valid resource and a valid pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            return Some(lim.rlim_cur as u64);
        }
    }
    None
}

enum Failure {
    Connect(fivetuple::ConnectError),
    Io(std::io::Error),
}

impl Failure {
    fn io_error(&self) -> &io::Error {
        match self {
            Failure::Connect(e) => e.io_error(),
            Failure::Io(e) => e,
        }
    }

    /// (errno name or error kind, full text).
    fn describe(&self, timeout: Duration) -> (String, String) {
        match self {
            Failure::Connect(e) => (
                e.os_error_name()
                    .or_else(|| fd_errno(e.io_error()))
                    .map_or_else(|| format!("{:?}", e.io_error().kind()), str::to_string),
                format!("{e}: {}", e.io_error()),
            ),
            // SO_RCVTIMEO/SO_SNDTIMEO expiring shows as EAGAIN (WouldBlock).
            Failure::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                (
                    "Timeout".into(),
                    format!("after connect: the server did not answer within {timeout:?} ({e})"),
                )
            }
            Failure::Io(e) => (format!("{:?}", e.kind()), format!("after connect: {e}")),
        }
    }
}

/// One call, client closing first: request byte, FIN, wait for the server's
/// FIN, close; the client's side ends in TIME_WAIT. With linger-zero, close
/// right after the request so close() sends RST. Each read and write gives
/// up after `timeout`.
fn call(mut s: TcpStream, linger_zero: bool, timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"x")?;
    if linger_zero {
        return Ok(());
    }
    s.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 64];
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

/// What the sink server met.
struct Sink {
    /// Failed accepts, by errno name (or error kind).
    errors: Mutex<BTreeMap<String, u64>>,
}

/// First and longest pause after a failed accept. A failed accept leaves the
/// connection queued, so the listener stays readable: retrying at once
/// would spin at 100% CPU for as long as the cause (EMFILE) lasts.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// A sink on 127.0.0.1: reads each connection to EOF, then closes it.
fn start_sink(out_of_fds: Arc<OutOfFds>) -> Result<(SocketAddr, Arc<Sink>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    if addr.port() == 0 {
        bail!("the sink got port 0");
    }
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .enable_time()
        .build()?;
    let sink = Arc::new(Sink {
        errors: Mutex::new(BTreeMap::new()),
    });
    let stats = sink.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the sink listener");
            let mut backoff = ACCEPT_BACKOFF.0;
            loop {
                let mut s = match listener.accept().await {
                    Ok((s, _)) => {
                        backoff = ACCEPT_BACKOFF.0;
                        s
                    }
                    Err(e) => {
                        let name =
                            fd_errno(&e).map_or_else(|| format!("{:?}", e.kind()), str::to_string);
                        *stats.errors.lock().unwrap().entry(name).or_default() += 1;
                        out_of_fds.note(&e, "the sink's accept");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                        continue;
                    }
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        })
    });
    Ok((addr, sink))
}

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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Per-connect timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
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
    let policy = fivetuple::parse_policy(&args.policy)
        .with_context(|| format!("--policy {}", args.policy))?;
    let mut connector = Connector::from_arc(policy);
    connector
        .set_max_attempts(args.max_attempts)
        .context("--max-attempts")?
        .set_connect_timeout(Some(Duration::from_millis(args.timeout_ms)))
        .set_linger_zero(args.linger_zero);

    let target = match args.target {
        Some(t) => t,
        None => start_sink().context("starting the loopback sink server")?,
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
            let (next, ok, errors, first_error, bar, connector) =
                (&next, &ok, &errors, &first_error, &bar, &connector);
            scope.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < args.calls {
                    match connector
                        .connect_std(target)
                        .map_err(Failure::Connect)
                        .and_then(|s| call(s, args.linger_zero).map_err(Failure::Io))
                    {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(f) => {
                            let (name, text) = f.describe();
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
    if args.json {
        let out = serde_json::json!({
            "policy": args.policy,
            "calls": args.calls,
            "ok": ok,
            "failed": failed,
            "errors": errors,
            "seconds": (seconds * 1000.0).round() / 1000.0,
        });
        println!("{out}");
    } else {
        println!(
            "policy {}: {} calls, {ok} ok, {failed} failed in {seconds:.2} s ({:.0} calls/s)",
            args.policy,
            args.calls,
            args.calls as f64 / seconds
        );
        for (name, n) in &errors {
            println!("  {name}: {n}");
        }
        if let Some(e) = first_error.lock().unwrap().as_ref() {
            println!("  first failure: {e}");
        }
    }
    Ok(())
}

enum Failure {
    Connect(fivetuple::ConnectError),
    Io(std::io::Error),
}

impl Failure {
    /// (errno name or error kind, full text).
    fn describe(&self) -> (String, String) {
        match self {
            Failure::Connect(e) => (
                e.os_error_name()
                    .map_or_else(|| format!("{:?}", e.io_error().kind()), str::to_string),
                format!("{e}: {}", e.io_error()),
            ),
            Failure::Io(e) => (format!("{:?}", e.kind()), format!("after connect: {e}")),
        }
    }
}

/// One call, client closing first: request byte, FIN, wait for the server's
/// FIN, close; the client's side ends in TIME_WAIT. With linger-zero, close
/// right after the request so close() sends RST.
fn call(mut s: TcpStream, linger_zero: bool) -> std::io::Result<()> {
    s.write_all(b"x")?;
    if linger_zero {
        return Ok(());
    }
    s.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 64];
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

/// A sink on 127.0.0.1: reads each connection to EOF, then closes it.
fn start_sink() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    if addr.port() == 0 {
        bail!("the sink got port 0");
    }
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the sink listener");
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        })
    });
    Ok(addr)
}

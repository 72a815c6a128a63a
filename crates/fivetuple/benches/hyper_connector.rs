//! fivetuple's `HttpConnector` against hyper-util's `HttpConnector`, side by
//! side in one run against the same local hyper server: pooled GETs/s and
//! close-per-call GETs/s.
//!
//! ```text
//! cargo bench -p fivetuple --features hyper --bench hyper_connector
//! ```
//!
//! As root it first moves into a throwaway network namespace (lo up,
//! default sysctls), so the close-per-call rounds leave no TIME_WAIT on the
//! host; otherwise it runs on the host's loopback. Rounds alternate the order
//! of the contenders; the figure per contender is the median round.
//! Environment: `ROUNDS` (default 7), `POOLED` GETs per round (default
//! 20000), `CLOSED` GETs per round (default 4000), `CONCURRENCY` (default 4).

use fivetuple_testkit::bench::median;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use fivetuple::http::HttpConnector;
use fivetuple::{Connector, KernelDefault, PortRange, Rotation};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Moves the process (its only thread, so far) into a new network namespace.
fn isolate() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return "host loopback (not root)";
    }
    // SAFETY: unshare changes only this thread's namespace; no other thread exists yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return "host loopback (unshare failed)";
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    assert!(
        matches!(up, Ok(s) if s.success()),
        "ip link set lo up: {up:?}"
    );
    "a fresh network namespace"
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// GETs/s for `total` GETs spread over `concurrency` sequential tasks.
async fn run<C>(
    client: &Client<C, Empty<Bytes>>,
    uri: &hyper::Uri,
    total: usize,
    concurrency: usize,
) -> f64
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let uri = uri.clone();
        let n = total / concurrency;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let response = client.get(uri.clone()).await.expect("GET");
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (total / concurrency * concurrency) as f64 / start.elapsed().as_secs_f64()
}

fn client<C: Connect + Clone>(connector: C, pooled: bool) -> Client<C, Empty<Bytes>> {
    let mut b = Client::builder(TokioExecutor::new());
    if !pooled {
        b.pool_max_idle_per_host(0);
    }
    b.build(connector)
}

#[derive(Clone, Copy)]
enum Contender {
    HyperUtil,
    Fivetuple,
    Rotation,
}

fn main() {
    let place = isolate();
    let rounds = env("ROUNDS", 7).max(1);
    let pooled_n = env("POOLED", 20_000);
    let closed_n = env("CLOSED", 4_000);
    let concurrency = env("CONCURRENCY", 4).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = serve().await;
        let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
        let make = |c: Contender, pooled: bool| -> Box<dyn Fn() -> Bench + Send> {
            Box::new(move || match c {
                Contender::HyperUtil => {
                    let mut h = hyper_util::client::legacy::connect::HttpConnector::new();
                    h.set_nodelay(true);
                    Bench::H(client(h, pooled))
                }
                Contender::Fivetuple => Bench::F(client(
                    HttpConnector::new(Connector::new(KernelDefault)),
                    pooled,
                )),
                Contender::Rotation => Bench::F(client(
                    HttpConnector::new(Connector::new(
                        Rotation::new(PortRange::new(20000, 29999).unwrap()).unwrap(),
                    )),
                    pooled,
                )),
            })
        };
        println!(
            "fivetuple hyper connector benchmark: {place}, {rounds} rounds, concurrency {concurrency}"
        );
        for (label, pooled, n) in [
            ("pooled", true, pooled_n),
            ("close-per-call", false, closed_n),
        ] {
            let contenders = [
                ("hyper-util HttpConnector", Contender::HyperUtil),
                ("fivetuple HttpConnector (kernel)", Contender::Fivetuple),
                ("fivetuple HttpConnector (rotate:20000-29999)", Contender::Rotation),
            ];
            let mut results: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
            for round in 0..rounds {
                // Alternate the order so that drift (TIME_WAIT build-up, other
                // load) does not favour one side.
                let mut order: Vec<usize> = (0..contenders.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for i in order {
                    let bench = make(contenders[i].1, pooled)();
                    // One warm-up call (pool, allocator) outside the timing.
                    let r = match bench {
                        Bench::H(c) => {
                            run(&c, &uri, concurrency, concurrency).await;
                            run(&c, &uri, n, concurrency).await
                        }
                        Bench::F(c) => {
                            run(&c, &uri, concurrency, concurrency).await;
                            run(&c, &uri, n, concurrency).await
                        }
                    };
                    results[i].push(r);
                }
            }
            let base = median(results[0].clone());
            println!(
                "\n{label}: {n} GETs per round; median GETs/s (min-max); ratio of medians; median of per-round ratios"
            );
            for (i, (name, _)) in contenders.iter().enumerate() {
                let m = median(results[i].clone());
                let lo = results[i].iter().copied().fold(f64::INFINITY, f64::min);
                let hi = results[i].iter().copied().fold(0.0, f64::max);
                // Pairing each round with hyper-util's run in the same round
                // cancels most of the drift from other load on the machine.
                let paired = median(
                    results[i]
                        .iter()
                        .zip(&results[0])
                        .map(|(x, h)| x / h)
                        .collect(),
                );
                println!(
                    "  {name:<46} {m:>9.0}  ({lo:.0}-{hi:.0})  {:.3}  {paired:.3}",
                    m / base
                );
            }
        }
    });
}

enum Bench {
    H(Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>),
    F(Client<HttpConnector, Empty<Bytes>>),
}

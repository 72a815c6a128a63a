//! Service A calls service B over HTTP, one new connection per call (the
//! pattern that runs a client out of source ports), with fivetuple's
//! connector choosing each source port.
//!
//! ```text
//! cargo run -p fivetuple --features hyper,metrics --example service_to_service -- [POLICY] [CALLS]
//! ```
//!
//! POLICY is a policy spec (default `rotate:20000-20999`; try `kernel`),
//! CALLS how many calls A makes (default 200). Everything runs on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;

use fivetuple::http::{ConnectionInfo, HttpConnector};
use fivetuple::Connector;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "rotate:20000-20999".into());
    let calls: usize = args.next().map_or(Ok(200), |s| s.parse())?;

    // Service B: answers every request with the source port it saw.
    let b = serve_b().await?;

    // Service A's HTTP client. Step 1: a policy, from a spec string or a
    // type such as `Rotation::new(PortRange::new(20000, 20999)?)?`.
    let policy = fivetuple::parse_policy(&spec)?;
    // Step 2: wrap it in a connector, and that in the HTTP connector.
    let connector = HttpConnector::new(Connector::from_arc(policy));
    // Keep a handle on the counters before the client takes the connector.
    let stats = connector.stats().clone();
    // Step 3: hyper-util's client, as usual. `pool_max_idle_per_host(0)`
    // turns keep-alive off to show the per-call pattern; leave the pool on in
    // real services when the peer allows it.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);

    #[cfg(feature = "metrics")]
    let mut registry = prometheus_client::registry::Registry::default();
    #[cfg(feature = "metrics")]
    fivetuple::metrics::register(&mut registry, stats.clone());

    let uri: hyper::Uri = format!("http://{b}/").parse()?;
    let mut failures = 0;
    for i in 0..calls {
        match client.get(uri.clone()).await {
            Ok(response) => {
                // Which source port this call used, as the client saw it...
                let info = response.extensions().get::<ConnectionInfo>().copied();
                // ...and as service B saw it.
                let seen_by_b = response.into_body().collect().await?.to_bytes();
                if i < 3 || i + 1 == calls {
                    println!(
                        "call {i:>5}: from {:?}, B saw port {}",
                        info.map(|i| i.local_addr()),
                        String::from_utf8_lossy(&seen_by_b)
                    );
                }
            }
            Err(e) => {
                failures += 1;
                // The library's error is in the chain; `{:#}` would print it all.
                let exhausted = fivetuple_error(&e).is_some_and(|c| c.is_exhaustion());
                eprintln!("call {i}: {e} (port exhaustion: {exhausted})");
            }
        }
    }

    println!("\n{calls} calls, {failures} failed; {:?}", stats.snapshot());
    #[cfg(feature = "metrics")]
    {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        println!("\n{text}");
    }
    Ok(())
}

/// Walks the `source()` chain to the library's [`fivetuple::ConnectError`].
fn fivetuple_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a fivetuple::ConnectError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// Service B on 127.0.0.1, a random port.
async fn serve_b() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                let body = Full::new(Bytes::from(peer.port().to_string()));
                Ok::<_, Infallible>(Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

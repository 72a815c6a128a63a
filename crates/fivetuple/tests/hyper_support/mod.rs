//! Shared by the `hyper_*` tests: a throwaway network namespace per test, a
//! local hyper server that reports the peer's port, and client helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fivetuple::http::{ConnectionInfo, HttpConnector};
use fivetuple::ConnectError;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[path = "../common/mod.rs"]
mod common;

#[allow(unused_imports)] // hyper_tls needs no root
pub use common::root_or_skip;

/// Runs `f` on a current-thread tokio runtime in a new network namespace
/// with `lo` up and `sysctls` (names under /proc/sys/net/ipv4/) written: see
/// [`common::in_netns`]. Callers check [`root_or_skip`] first.
pub fn in_netns<F, Fut, T>(name: &str, sysctls: &[(&str, &str)], f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    common::in_netns(name, sysctls, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(f())
    })
    .expect("root was checked with root_or_skip")
}

/// A local hyper HTTP/1 server that answers every request with the peer's
/// port, and counts the connections it accepted.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    accepts: Arc<AtomicU64>,
}

impl Server {
    /// Binds `addr` and serves on the current runtime until it ends.
    pub async fn start(addr: &str) -> Server {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicU64::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => panic!("accept: {e}"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                                Bytes::from(peer.port().to_string()),
                            )))
                        });
                    // Errors here are the client going away; not this test's concern.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { addr, accepts }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }

    /// `http://addr/`.
    pub fn uri(&self) -> hyper::Uri {
        format!("http://{}/", self.addr).parse().unwrap()
    }
}

/// The client type of these tests.
pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// A hyper-util client with keep-alive off: no idle connection is kept, so
/// the client closes each connection after its response and the client side
/// holds the TIME_WAIT, as in the failure this crate is about.
pub fn close_per_call(connector: HttpConnector) -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// A hyper-util client with its default pool.
pub fn pooled(connector: HttpConnector) -> TestClient {
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `uri`; returns the status, the body and the connection info.
pub async fn get(
    client: &TestClient,
    uri: hyper::Uri,
) -> Result<(hyper::StatusCode, String, ConnectionInfo), hyper_util::client::legacy::Error> {
    let response = client.get(uri).await?;
    let info = *response
        .extensions()
        .get::<ConnectionInfo>()
        .expect("ConnectionInfo in the response extensions");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("reading the body")
        .to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap(), info))
}

/// The library's error, found by walking `err`'s `source()` chain and
/// downcasting, as a user would.
pub fn connect_error_in_chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

//! The two services of the reproduction and A's outbound client.
//!
//! Upstream B answers 200, or in auth mode runs a connection-bound
//! challenge/response like NTLM/Negotiate: the first request on a connection
//! gets 401 with a challenge that is valid on that connection only. Frontend
//! A makes one call to B per request through the remedy's [`Outbound`]
//! client and answers 200, or 502 with the OS error text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long A waits for one call to B before answering 502.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How upstream B answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    /// 200 with a small body.
    Plain,
    /// Connection-bound challenge/response (401 then 200 on one connection).
    Auth,
}

/// The answer to a challenge: what a client proves it holds a secret with.
/// Both sides use it; it stands in for an NTLM/Kerberos computation.
pub fn auth_answer(challenge: u64) -> u64 {
    splitmix64(challenge ^ 0x5EC2_E7F1_7E7F_0001)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D1_049B_1331_11EB);
    x ^ (x >> 31)
}

static CHALLENGES: AtomicU64 = AtomicU64::new(1);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves upstream B on `listener` until `stop` turns true.
pub async fn serve_upstream(
    listener: TcpListener,
    mode: UpstreamMode,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // One challenge per connection: an answer is only valid on the
        // connection that received the challenge.
        let challenge = splitmix64(CHALLENGES.fetch_add(1, Ordering::Relaxed));
        let service = service_fn(move |req: Request<Incoming>| async move {
            Ok::<_, Infallible>(upstream_answer(mode, challenge, &req))
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn upstream_answer(
    mode: UpstreamMode,
    challenge: u64,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if mode == UpstreamMode::Plain {
        return text(StatusCode::OK, "ok\n");
    }
    let expected = format!("Negotiate {:016x}", auth_answer(challenge));
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given == Some(expected.as_str()) {
        return text(StatusCode::OK, "ok, authenticated\n");
    }
    let mut r = text(StatusCode::UNAUTHORIZED, "challenge\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        format!("Negotiate {challenge:016x}")
            .parse()
            .expect("hex is a valid header value"),
    );
    r
}

/// A's outbound client: how each call reaches B.
#[derive(Clone)]
pub enum Outbound {
    /// A new connection per call, through a `fivetuple::Connector`, closed by
    /// the client after the response (so the client holds the TIME_WAIT).
    PerCall {
        /// Chooses the local endpoint (the remedy's policy).
        connector: Arc<fivetuple::Connector>,
        /// B's address.
        upstream: SocketAddr,
        /// Do the challenge/response before the real request.
        auth: bool,
    },
    /// hyper-util's pooled client with keep-alive, connecting through
    /// `fivetuple::http::HttpConnector` (kernel-chosen ports).
    Pooled {
        /// The pool.
        client: Box<Client<fivetuple::http::HttpConnector, Empty<Bytes>>>,
        /// B's address.
        upstream: SocketAddr,
    },
}

impl Outbound {
    /// A keep-alive pool toward `upstream`; `connect_timeout` bounds each
    /// new connection's `connect()` (`None`: as long as the OS waits).
    pub fn pooled(upstream: SocketAddr, connect_timeout: Option<Duration>) -> Outbound {
        let mut connector = fivetuple::Connector::new(fivetuple::KernelDefault);
        connector.set_connect_timeout(connect_timeout);
        let http = fivetuple::http::HttpConnector::new(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(http);
        Outbound::Pooled {
            client: Box::new(client),
            upstream,
        }
    }

    /// One call to B. The error is the text A puts in its 502 body: the OS
    /// error when there is one ("Cannot assign requested address (os error 99)").
    pub async fn call(&self) -> Result<(), String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("call to upstream timed out after {CALL_TIMEOUT:?}")),
        }
    }

    async fn call_inner(&self) -> Result<(), String> {
        match self {
            Outbound::PerCall {
                connector,
                upstream,
                auth,
            } => {
                let stream = connector
                    .connect(*upstream)
                    .await
                    .map_err(|e| e.io_error().to_string())?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| chain(&e))?;
                let conn = tokio::spawn(conn);
                let result = async {
                    let mut resp = sender
                        .send_request(request(*upstream, None))
                        .await
                        .map_err(|e| chain(&e))?;
                    if *auth && resp.status() == StatusCode::UNAUTHORIZED {
                        let challenge = resp
                            .headers()
                            .get(header::WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Negotiate "))
                            .and_then(|v| u64::from_str_radix(v, 16).ok())
                            .ok_or("401 without a Negotiate challenge")?;
                        resp.into_body().collect().await.map_err(|e| chain(&e))?;
                        let answer = format!("Negotiate {:016x}", auth_answer(challenge));
                        resp = sender
                            .send_request(request(*upstream, Some(answer)))
                            .await
                            .map_err(|e| chain(&e))?;
                    }
                    finish(resp).await
                }
                .await;
                // Dropping the sender ends the connection task, which closes
                // the socket: the client closes first and holds the TIME_WAIT.
                drop(sender);
                let _ = conn.await;
                result
            }
            Outbound::Pooled { client, upstream } => {
                let resp = client
                    .request(request(*upstream, None))
                    .await
                    .map_err(|e| chain(&e))?;
                finish(resp).await
            }
        }
    }
}

fn request(upstream: SocketAddr, authorization: Option<String>) -> Request<Empty<Bytes>> {
    let mut b =
        Request::get(format!("http://{upstream}/")).header(header::HOST, upstream.to_string());
    if let Some(a) = authorization {
        b = b.header(header::AUTHORIZATION, a);
    }
    b.body(Empty::new())
        .expect("static request parts are valid")
}

async fn finish(resp: Response<Incoming>) -> Result<(), String> {
    let status = resp.status();
    resp.into_body().collect().await.map_err(|e| chain(&e))?;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("upstream answered {status}"))
    }
}

/// The innermost OS error's text if there is one, else the whole chain.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut parts = Vec::new();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.raw_os_error().is_some() {
                return io.to_string();
            }
        }
        if let Some(c) = e.downcast_ref::<fivetuple::ConnectError>() {
            return c.io_error().to_string();
        }
        parts.push(e.to_string());
        cur = e.source();
    }
    parts.join(": ")
}

/// Serves frontend A on `listener` until `stop` turns true: each request
/// makes one call to B through `outbound`.
pub async fn serve_frontend(
    listener: TcpListener,
    outbound: Outbound,
    mut stop: watch::Receiver<bool>,
) {
    let outbound = Arc::new(outbound);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "frontend accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let outbound = outbound.clone();
        let service = service_fn(move |_req: Request<Incoming>| {
            let outbound = outbound.clone();
            async move {
                Ok::<_, Infallible>(match outbound.call().await {
                    Ok(()) => text(StatusCode::OK, "ok\n"),
                    Err(e) => text(StatusCode::BAD_GATEWAY, e),
                })
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_depend_on_the_challenge() {
        assert_ne!(auth_answer(1), auth_answer(2));
        assert_eq!(auth_answer(7), auth_answer(7));
    }
}

//! A connector for hyper-util's legacy [`Client`], so that an HTTP client
//! chooses each connection's local endpoint with a [`LocalPolicy`] and
//! retries on port exhaustion, while keeping its pool, TLS and timeouts.
//!
//! [`HttpConnector`] wraps a [`Connector`]: it resolves the URI's host,
//! tries the addresses in order with the connect timeout split across them,
//! and returns an [`HttpStream`] whose [`Connected`] carries a
//! [`ConnectionInfo`] (local and remote socket address). hyper-util copies
//! that into every response's extensions, so a caller can log which source
//! port a request used.
//!
//! ```no_run
//! use fivetuple::http::{ConnectionInfo, HttpConnector};
//! use fivetuple::{Connector, PortRange, Rotation};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Rotation::new(PortRange::new(20000, 29999)?)?;
//! let connector = HttpConnector::new(Connector::new(policy));
//! let stats = connector.stats().clone();
//! let client: Client<_, String> = Client::builder(TokioExecutor::new()).build(connector);
//! let response = client.get("http://127.0.0.1:8080/".parse()?).await?;
//! let info = response.extensions().get::<ConnectionInfo>();
//! println!("from {:?}; {:?}", info.map(|i| i.local_addr()), stats.snapshot());
//! # Ok(()) }
//! ```
//!
//! [`Client`]: https://docs.rs/hyper-util/latest/hyper_util/client/legacy/struct.Client.html
//! [`LocalPolicy`]: crate::LocalPolicy

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::uri::{Scheme, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{ConnectError, ConnectStats, Connector};

/// A [`tower_service::Service<Uri>`] for hyper-util's legacy `Client` that
/// opens connections through a [`Connector`].
///
/// Cloning is cheap; clones share the policy and the [`ConnectStats`], while
/// each clone's settings are its own.
///
/// Defaults: `TCP_NODELAY` on, no connect timeout beyond the wrapped
/// connector's, only `http://` URIs accepted (see
/// [`set_enforce_http`](HttpConnector::set_enforce_http); turn it off when a
/// TLS connector such as hyper-rustls wraps this one).
#[derive(Clone)]
pub struct HttpConnector {
    connector: Connector,
    config: Arc<Config>,
}

/// Every setting and its default, in one place.
#[derive(Debug, Clone)]
struct Config {
    connect_timeout: Option<Duration>,
    enforce_http: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: None,
            enforce_http: true,
        }
    }
}

impl fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnector")
            .field("connector", &self.connector)
            .field("config", &self.config)
            .finish()
    }
}

impl HttpConnector {
    /// An HTTP connector opening its connections through `connector`.
    ///
    /// Turns `TCP_NODELAY` on in its copy of `connector` (HTTP requests are
    /// small writes that Nagle's algorithm would delay); use
    /// [`set_nodelay`](HttpConnector::set_nodelay) to turn it off. Every
    /// other setting of `connector` is kept, and the stats stay shared with
    /// it.
    pub fn new(mut connector: Connector) -> HttpConnector {
        connector.set_nodelay(true);
        HttpConnector {
            connector,
            config: Arc::new(Config::default()),
        }
    }

    /// The wrapped connector.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The counters, shared with the wrapped connector and every clone.
    pub fn stats(&self) -> &Arc<ConnectStats> {
        self.connector.stats()
    }

    /// Sets `TCP_NODELAY` on every connection. Default on.
    pub fn set_nodelay(&mut self, nodelay: bool) -> &mut HttpConnector {
        self.connector.set_nodelay(nodelay);
        self
    }

    /// Bounds the connect of one URI. The budget is split evenly across the
    /// resolved addresses, as hyper-util's `HttpConnector` does, so that an
    /// unreachable first address leaves time for the next; the shorter of the
    /// share and the wrapped connector's own per-`connect()` timeout applies. (An
    /// exhaustion retry fails at once, without waiting, so the share bounds
    /// the time spent on an address in practice.)
    ///
    /// `None` (the default) keeps the wrapped connector's timeout, which
    /// itself defaults to waiting as long as the OS does.
    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) -> &mut HttpConnector {
        Arc::make_mut(&mut self.config).connect_timeout = timeout;
        self
    }

    /// When on (the default), only `http://` URIs are accepted, so that an
    /// `https://` URI never goes out in clear text by mistake. Turn it off
    /// when a TLS connector (hyper-rustls, hyper-tls) wraps this one; the
    /// default port is then 443 for `https` and 80 otherwise.
    pub fn set_enforce_http(&mut self, enforce: bool) -> &mut HttpConnector {
        Arc::make_mut(&mut self.config).enforce_http = enforce;
        self
    }

    /// Resolves `dst` and connects to its addresses in order, returning the
    /// first connection that opens.
    pub async fn connect_uri(&self, dst: &Uri) -> Result<HttpStream, HttpConnectError> {
        let (host, port) = host_port(&self.config, dst)?;
        let addrs = resolve(host, port).await?;
        self.connect_addrs(host, &addrs).await
    }

    async fn connect_addrs(
        &self,
        host: &str,
        addrs: &[SocketAddr],
    ) -> Result<HttpStream, HttpConnectError> {
        let connector = match split_timeout(self.config.connect_timeout, addrs.len()) {
            Some(share) => {
                let mut c = self.connector.clone();
                let own = c.connect_timeout();
                c.set_connect_timeout(Some(own.map_or(share, |t| t.min(share))));
                c
            }
            None => self.connector.clone(),
        };
        let mut last = None;
        for (i, &addr) in addrs.iter().enumerate() {
            match connector.connect(addr).await {
                Ok(stream) => return HttpStream::new(stream),
                Err(e) => {
                    tracing::debug!(host, %addr, address = i + 1, of = addrs.len(), error = %e, "connect failed; trying the next address");
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) => Err(HttpConnectError::connect(host, addrs.len(), e)),
            None => Err(HttpConnectError::new(
                Kind::Resolve,
                format!("{host} resolved to no address"),
                None,
            )),
        }
    }
}

/// The share of `total` each of `n` addresses gets.
fn split_timeout(total: Option<Duration>, n: usize) -> Option<Duration> {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    total.map(|t| t / n)
}

fn host_port<'u>(config: &Config, dst: &'u Uri) -> Result<(&'u str, u16), HttpConnectError> {
    let scheme = dst.scheme();
    if config.enforce_http && scheme != Some(&Scheme::HTTP) {
        return Err(HttpConnectError::invalid(format!(
            "{dst}: expected an http:// URI (turn enforce_http off under a TLS connector)"
        )));
    }
    if scheme.is_none() {
        return Err(HttpConnectError::invalid(format!(
            "{dst}: expected a scheme"
        )));
    }
    let host = dst
        .host()
        .ok_or_else(|| HttpConnectError::invalid(format!("{dst}: expected a host")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = dst.port_u16().unwrap_or(if scheme == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    });
    Ok((host, port))
}

/// IP literals are used as they are; names go through tokio's resolver
/// (`getaddrinfo` on the blocking pool), in the order it returns them.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpConnectError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(e) => Err(HttpConnectError::new(
            Kind::Resolve,
            format!("resolving {host} failed"),
            Some(Source::Io(e)),
        )),
    }
}

impl tower_service::Service<Uri> for HttpConnector {
    type Response = HttpStream;
    type Error = HttpConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let this = self.clone();
        Connecting(Box::pin(async move { this.connect_uri(&dst).await }))
    }
}

/// The future of [`HttpConnector`]'s `call`.
#[must_use = "futures do nothing unless polled"]
pub struct Connecting(Pin<Box<dyn Future<Output = Result<HttpStream, HttpConnectError>> + Send>>);

impl Future for Connecting {
    type Output = Result<HttpStream, HttpConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connecting")
    }
}

/// The local and remote socket address of a connection, set as an extra of
/// its [`Connected`], the way hyper-util's `HttpInfo` is. hyper-util's
/// client copies it into each response's extensions:
/// `response.extensions().get::<ConnectionInfo>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionInfo {
    local: SocketAddr,
    remote: SocketAddr,
}

impl ConnectionInfo {
    /// The connection's local (source) address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connection's remote (destination) address and port.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }
}

/// A connection opened by [`HttpConnector`]: a tokio `TcpStream` adapted to
/// hyper's I/O traits, with its [`ConnectionInfo`].
#[derive(Debug)]
pub struct HttpStream {
    io: TokioIo<TcpStream>,
    info: ConnectionInfo,
}

impl HttpStream {
    fn new(stream: TcpStream) -> Result<HttpStream, HttpConnectError> {
        let addrs = stream
            .local_addr()
            .and_then(|l| Ok((l, stream.peer_addr()?)));
        match addrs {
            Ok((local, remote)) => Ok(HttpStream {
                io: TokioIo::new(stream),
                info: ConnectionInfo { local, remote },
            }),
            // The peer reset the connection between connect() and here.
            Err(e) => Err(HttpConnectError::new(
                Kind::Connect,
                "reading the addresses of a new connection failed".into(),
                Some(Source::Io(e)),
            )),
        }
    }

    /// The local and remote address.
    pub fn info(&self) -> ConnectionInfo {
        self.info
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &TcpStream {
        self.io.inner()
    }

    /// Consumes the wrapper and returns the underlying stream.
    pub fn into_inner(self) -> TcpStream {
        self.io.into_inner()
    }
}

impl Connection for HttpStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.info)
    }
}

impl ::hyper::rt::Read for HttpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ::hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl ::hyper::rt::Write for HttpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        ::hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Why [`HttpConnector`] could not open a connection.
///
/// When the TCP connect itself failed, the library's [`ConnectError`] (with
/// [`is_exhaustion()`](ConnectError::is_exhaustion)) is this error's
/// [`source()`](std::error::Error::source), so it stays reachable by walking
/// the chain of hyper-util's client error and downcasting:
///
/// ```
/// fn exhausted(err: &(dyn std::error::Error + 'static)) -> bool {
///     let mut cur = Some(err);
///     while let Some(e) = cur {
///         if let Some(c) = e.downcast_ref::<fivetuple::ConnectError>() {
///             return c.is_exhaustion();
///         }
///         cur = e.source();
///     }
///     false
/// }
/// ```
pub struct HttpConnectError {
    kind: Kind,
    msg: String,
    source: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidUri,
    Resolve,
    Connect,
}

#[derive(Debug)]
enum Source {
    Connect(ConnectError),
    Io(io::Error),
}

impl HttpConnectError {
    fn new(kind: Kind, msg: String, source: Option<Source>) -> HttpConnectError {
        HttpConnectError { kind, msg, source }
    }

    fn invalid(msg: String) -> HttpConnectError {
        HttpConnectError::new(Kind::InvalidUri, msg, None)
    }

    fn connect(host: &str, tried: usize, e: ConnectError) -> HttpConnectError {
        let msg = if tried == 1 {
            format!("connecting to {host} failed")
        } else {
            format!("connecting to {host} failed on all {tried} addresses; the last error")
        };
        HttpConnectError::new(Kind::Connect, msg, Some(Source::Connect(e)))
    }

    /// The library error of the last address tried, when the TCP connect
    /// failed (rather than the URI or name resolution).
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match &self.source {
            Some(Source::Connect(e)) => Some(e),
            _ => None,
        }
    }

    /// True when the last address tried failed for lack of a local port.
    pub fn is_exhaustion(&self) -> bool {
        self.connect_error()
            .is_some_and(ConnectError::is_exhaustion)
    }

    /// True when the URI could not be connected to as given (no scheme, no
    /// host, or not `http://` while http is enforced).
    pub fn is_invalid_uri(&self) -> bool {
        self.kind == Kind::InvalidUri
    }

    /// True when resolving the host failed or gave no address.
    pub fn is_resolve(&self) -> bool {
        self.kind == Kind::Resolve
    }
}

impl fmt::Debug for HttpConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpConnectError");
        d.field("kind", &self.kind).field("msg", &self.msg);
        match &self.source {
            Some(Source::Connect(e)) => d.field("source", e),
            Some(Source::Io(e)) => d.field("source", e),
            None => &mut d,
        };
        d.finish()
    }
}

impl fmt::Display for HttpConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for HttpConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(Source::Connect(e)) => Some(e),
            Some(Source::Io(e)) => Some(e),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelDefault;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn timeout_is_split_across_addresses() {
        let t = Some(Duration::from_millis(900));
        assert_eq!(split_timeout(t, 3), Some(Duration::from_millis(300)));
        assert_eq!(split_timeout(t, 1), t);
        assert_eq!(split_timeout(t, 0), t);
        assert_eq!(split_timeout(None, 3), None);
    }

    #[test]
    fn host_and_default_ports() {
        let mut config = Config::default();
        assert_eq!(
            host_port(&config, &uri("http://example.test/x")).unwrap(),
            ("example.test", 80)
        );
        assert_eq!(
            host_port(&config, &uri("http://[::1]:8080/")).unwrap(),
            ("::1", 8080)
        );
        let err = host_port(&config, &uri("https://example.test/")).unwrap_err();
        assert!(err.is_invalid_uri(), "{err}");
        assert!(host_port(&config, &uri("/relative"))
            .unwrap_err()
            .is_invalid_uri());
        config.enforce_http = false;
        assert_eq!(
            host_port(&config, &uri("https://example.test/")).unwrap(),
            ("example.test", 443)
        );
        assert!(host_port(&config, &uri("/relative"))
            .unwrap_err()
            .is_invalid_uri());
    }

    #[test]
    fn nodelay_is_on_by_default() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut http = HttpConnector::new(Connector::new(KernelDefault));
            let on = http
                .connect_uri(&uri(&format!("http://{addr}/")))
                .await
                .unwrap();
            assert!(on.get_ref().nodelay().unwrap());
            assert_eq!(on.info().remote_addr(), addr);
            assert_eq!(on.info().local_addr(), on.get_ref().local_addr().unwrap());
            http.set_nodelay(false);
            let off = http
                .connect_uri(&uri(&format!("http://{addr}/")))
                .await
                .unwrap();
            assert!(!off.get_ref().nodelay().unwrap());
        });
    }

    /// A listener whose accept queue is full drops SYNs
    /// (`tcp_conn_request`), so connecting to it hangs: the timeout is split
    /// across the two addresses and each share is spent in turn.
    #[test]
    fn connect_timeout_is_split_across_addresses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpSocket::new_v4().unwrap();
            listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = listener.listen(0).unwrap();
            let full = listener.local_addr().unwrap();
            let mut queued = Vec::new();
            for _ in 0..8 {
                let c = tokio::net::TcpStream::connect(full);
                match tokio::time::timeout(Duration::from_millis(200), c).await {
                    Ok(Ok(s)) => queued.push(s),
                    _ => break,
                }
            }
            let mut http = HttpConnector::new(Connector::new(KernelDefault));
            http.set_connect_timeout(Some(Duration::from_millis(400)));
            let start = std::time::Instant::now();
            let err = http.connect_addrs("test", &[full, full]).await.unwrap_err();
            let elapsed = start.elapsed();
            let inner = err.connect_error().expect("a connect error");
            assert_eq!(inner.io_error().kind(), io::ErrorKind::TimedOut, "{err:?}");
            assert!(
                elapsed >= Duration::from_millis(390) && elapsed < Duration::from_secs(2),
                "{elapsed:?}"
            );
            let s = http.stats().snapshot();
            assert_eq!((s.attempts, s.other_failures), (2, 2), "{s:?}");
            drop(queued);
        });
    }

    /// Addresses are tried in order: a refused first address falls through
    /// to the second, and the refusal is counted as an other failure.
    #[test]
    fn addresses_are_tried_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let open = listener.local_addr().unwrap();
            // A bound socket that does not listen: connecting to it is refused.
            let closed_sock = tokio::net::TcpSocket::new_v4().unwrap();
            closed_sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let closed = closed_sock.local_addr().unwrap();

            let http = HttpConnector::new(Connector::new(KernelDefault));
            let stream = http.connect_addrs("test", &[closed, open]).await.unwrap();
            assert_eq!(stream.info().remote_addr(), open);
            let s = http.stats().snapshot();
            assert_eq!((s.other_failures, s.opened_kernel), (1, 1));

            let err = http.connect_addrs("test", &[closed]).await.unwrap_err();
            let inner = err.connect_error().expect("a connect error");
            assert_eq!(inner.remote_addr(), closed);
            assert_eq!(inner.io_error().kind(), io::ErrorKind::ConnectionRefused);
            assert!(!err.is_exhaustion());
        });
    }
}

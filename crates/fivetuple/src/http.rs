//! A connector for hyper-util's legacy [`Client`], so that an HTTP client
//! chooses each connection's local endpoint with a [`LocalPolicy`] and
//! retries on port exhaustion, while keeping its pool, TLS and timeouts.
//!
//! [`HttpConnector`] wraps a [`Connector`]: it resolves the URI's host with
//! a resolver (any `tower_service::Service<Name>`, the same trait hyper-util's
//! resolvers implement; [`TokioResolver`] by default), tries the addresses in
//! order with one connect-timeout budget shared across them, racing IPv6 and
//! IPv4 with Happy Eyeballs on a dual-stack answer (as
//! [`Connector::connect_host`] does), and returns an [`HttpStream`] whose [`Connected`] carries a
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
//! # tonic
//!
//! [`HttpConnector`] is a connector for
//! `tonic::transport::Endpoint::connect_with_connector`, in clear text and
//! under tonic's TLS (`Endpoint::tls_config`). tonic's TLS layer hands the
//! connector the `https://` URI, so turn
//! [`set_enforce_http`](HttpConnector::set_enforce_http) off there. See the
//! `tonic_channel` example; `tests/tonic.rs` re-creates a channel per call
//! in a 100-port namespace, where rotation keeps going and the kernel
//! default runs out.
//!
//! # Coming from reqwest
//!
//! reqwest cannot take another connector, and its
//! `ClientBuilder::local_address(ip)` binds `ip:0` *without*
//! `IP_BIND_ADDRESS_NO_PORT`: each connection then reserves its port for
//! every destination on the host, which exhausts the range faster, not
//! slower. There are two honest paths:
//!
//! 1. In code you own, use hyper-util's client (reqwest's own engine) with
//!    this connector, with hyper-rustls for `https://`. It pools and
//!    reuses connections as reqwest does; only the connect changes:
//!
//! ```no_run
//! use fivetuple::http::{ConnectionInfo, HttpConnector};
//! use fivetuple::{Connector, PortRange, Rotation};
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut http = HttpConnector::new(Connector::new(Rotation::new(PortRange::new(20000, 29999)?)?));
//! http.set_enforce_http(false); // https:// goes through hyper-rustls below
//! let tls = hyper_rustls::HttpsConnectorBuilder::new()
//!     .with_tls_config(
//!         rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
//!             .with_safe_default_protocol_versions()?
//!             .with_root_certificates(rustls::RootCertStore::empty()) // add your roots
//!             .with_no_client_auth(),
//!     )
//!     .https_or_http()
//!     .enable_http1()
//!     .wrap_connector(http);
//! let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(tls);
//! // reqwest: client.get(url).send().await?.text().await?
//! let response = client.get("http://127.0.0.1:8080/".parse()?).await?;
//! let from = response.extensions().get::<ConnectionInfo>().map(|i| i.local_addr());
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{} bytes from {from:?}", body.len());
//! # Ok(()) }
//! # use tokio_rustls::rustls;
//! ```
//!
//! 2. For a program you cannot change (reqwest inside, or any language),
//!    `fivetuple run -- PROGRAM` applies the same policies to the process
//!    in the kernel, through a cgroup connect hook.
//!
//! [`Client`]: https://docs.rs/hyper-util/latest/hyper_util/client/legacy/struct.Client.html
//! [`LocalPolicy`]: crate::LocalPolicy

use std::fmt;
use std::future::{poll_fn, Future};
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
use tower_service::Service;

/// A host name to resolve: hyper-util's type, so that a resolver written for
/// hyper-util's `HttpConnector` (a `Service<Name>`) works here unchanged.
pub use hyper_util::client::legacy::connect::dns::Name;

use crate::{ConnectError, ConnectStats, Connector, HostConnectError};

/// The default resolver: tokio's `lookup_host` (`getaddrinfo` on the
/// blocking pool). Answers with port 0; the connector sets the URI's port,
/// as with hyper-util's resolvers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioResolver {
    _private: (),
}

impl TokioResolver {
    /// The resolver.
    pub fn new() -> TokioResolver {
        TokioResolver::default()
    }
}

impl Service<Name> for TokioResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
    }
}

/// A [`tower_service::Service<Uri>`] for hyper-util's legacy `Client` that
/// opens connections through a [`Connector`].
///
/// Cloning is cheap; clones share the policy and the [`ConnectStats`], while
/// each clone's settings are its own.
///
/// Defaults: `TCP_NODELAY` on, no connect timeout beyond the wrapped
/// connector's, only `http://` URIs accepted (see
/// [`set_enforce_http`](HttpConnector::set_enforce_http); turn it off when a
/// TLS connector such as hyper-rustls wraps this one), names resolved by
/// [`TokioResolver`] (see [`new_with_resolver`](HttpConnector::new_with_resolver)).
#[derive(Clone)]
pub struct HttpConnector<R = TokioResolver> {
    connector: Connector,
    resolver: R,
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

impl<R> fmt::Debug for HttpConnector<R> {
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
    pub fn new(connector: Connector) -> HttpConnector {
        HttpConnector::new_with_resolver(connector, TokioResolver::new())
    }
}

impl<R> HttpConnector<R> {
    /// An HTTP connector opening its connections through `connector` and
    /// resolving names with `resolver`: any `tower_service::Service<Name>`
    /// answering socket addresses, such as hyper-util's `GaiResolver` or a
    /// resolver written for hyper-util's `HttpConnector`. IP literals are
    /// not resolved. `TCP_NODELAY` is turned on as in
    /// [`new`](HttpConnector::new).
    pub fn new_with_resolver(mut connector: Connector, resolver: R) -> HttpConnector<R> {
        connector.set_nodelay(true);
        HttpConnector {
            connector,
            resolver,
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
    pub fn set_nodelay(&mut self, nodelay: bool) -> &mut HttpConnector<R> {
        self.connector.set_nodelay(nodelay);
        self
    }

    /// Bounds the connect of one URI: one budget shared across the resolved
    /// addresses, each getting what is left divided by the addresses left,
    /// so that an unreachable first address leaves time for the next (as
    /// hyper-util's `HttpConnector` splits its own). The share bounds each
    /// `connect()` call in place of the wrapped connector's timeout. (An
    /// exhaustion retry fails at once, without waiting, so the share bounds
    /// the time spent on an address in practice.)
    ///
    /// `None` (the default) uses the wrapped connector's timeout as that
    /// budget; it itself defaults to waiting as long as the OS does.
    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) -> &mut HttpConnector<R> {
        Arc::make_mut(&mut self.config).connect_timeout = timeout;
        self
    }

    /// When on (the default), only `http://` URIs are accepted, so that an
    /// `https://` URI never goes out in clear text by mistake. Turn it off
    /// when a TLS connector (hyper-rustls, hyper-tls) wraps this one; the
    /// default port is then 443 for `https` and 80 otherwise.
    pub fn set_enforce_http(&mut self, enforce: bool) -> &mut HttpConnector<R> {
        Arc::make_mut(&mut self.config).enforce_http = enforce;
        self
    }

    async fn connect_addrs(
        &self,
        host: &str,
        addrs: &[SocketAddr],
    ) -> Result<HttpStream, HttpConnectError> {
        let total = self
            .config
            .connect_timeout
            .or(self.connector.connect_timeout());
        match self.connector.connect_addrs(host, addrs, total).await {
            Ok(stream) => HttpStream::new(stream),
            Err(e) => Err(HttpConnectError::from_host(e)),
        }
    }
}

impl<R> HttpConnector<R>
where
    R: Service<Name> + Clone,
    R::Response: Iterator<Item = SocketAddr>,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Resolves `dst` and connects to its addresses in order (both families
    /// raced with Happy Eyeballs, see
    /// [`Connector::set_happy_eyeballs_delay`]), returning the first
    /// connection that opens.
    pub async fn connect_uri(&self, dst: &Uri) -> Result<HttpStream, HttpConnectError> {
        let (host, port) = host_port(&self.config, dst)?;
        let addrs = self.resolve(host, port).await?;
        self.connect_addrs(host, &addrs).await
    }

    /// IP literals are used as they are; names go through the resolver, in
    /// the order it returns them, with the URI's port.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpConnectError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name: Name = host
            .parse()
            .map_err(|e| HttpConnectError::invalid(format!("{host:?} is not a host name: {e}")))?;
        let failed = |e: R::Error| {
            HttpConnectError::new(
                Kind::Resolve,
                format!("resolving {host} failed"),
                Some(Source::Other(e.into())),
            )
        };
        let mut resolver = self.resolver.clone();
        poll_fn(|cx| resolver.poll_ready(cx))
            .await
            .map_err(failed)?;
        let addrs = resolver.call(name).await.map_err(failed)?;
        Ok(addrs
            .map(|mut a| {
                a.set_port(port);
                a
            })
            .collect())
    }
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

impl<R> Service<Uri> for HttpConnector<R>
where
    R: Service<Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = SocketAddr> + Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
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
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl HttpConnectError {
    fn new(kind: Kind, msg: String, source: Option<Source>) -> HttpConnectError {
        HttpConnectError { kind, msg, source }
    }

    fn invalid(msg: String) -> HttpConnectError {
        HttpConnectError::new(Kind::InvalidUri, msg, None)
    }

    fn from_host(e: HostConnectError) -> HttpConnectError {
        let (host, tried) = (e.host().to_owned(), e.addresses_tried());
        match e.into_connect_error() {
            Some(c) => HttpConnectError::connect(&host, tried, c),
            None => HttpConnectError::new(
                Kind::Resolve,
                format!("{host} resolved to no address"),
                None,
            ),
        }
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
            Some(Source::Other(e)) => d.field("source", e),
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
            Some(Source::Other(e)) => Some(&**e),
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

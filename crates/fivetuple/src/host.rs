//! Connects to a `host:port`: resolve the name, then try its addresses in
//! the resolver's order, the connector's timeout being one budget shared by
//! all of them (as hyper-util's `HttpConnector` shares its own), so that an
//! unreachable first address leaves time for the next. On a dual-stack name
//! the async path races the two families (Happy Eyeballs, RFC 8305).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::{ConnectError, Connector, Stage};

impl Connector {
    /// Resolves `host` (`"svc.internal:8080"`, `"10.0.0.7:80"`,
    /// `"[::1]:8080"`) with tokio's resolver (`getaddrinfo` on the blocking
    /// pool) and connects to its addresses in order, returning the first
    /// connection that opens. Each address goes through the policy and its
    /// exhaustion retries as [`connect`](Connector::connect) does.
    ///
    /// When the name has both IPv4 and IPv6 addresses, Happy Eyeballs (RFC
    /// 8305) is on by default: the first answer's family is tried, the other
    /// family starts after 250 ms without a connection (or at once when the
    /// first family has failed), and the first connection wins; see
    /// [`set_happy_eyeballs_delay`](Connector::set_happy_eyeballs_delay).
    ///
    /// The [connect timeout](Connector::set_connect_timeout), when set, is
    /// the budget of the whole call: within a family, each address gets what
    /// is left divided by the addresses left, so a fast failure (refused)
    /// passes its unused share on. `None` waits as long as the OS does, per
    /// address.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut connector = fivetuple::Connector::default();
    /// connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    /// let stream = connector.connect_host("svc.internal:8080").await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn connect_host(
        &self,
        host: &str,
    ) -> Result<tokio::net::TcpStream, HostConnectError> {
        let (name, port) = split_host_port(host)?;
        let addrs = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| HostConnectError::resolve(host, e))?
                .collect(),
        };
        self.connect_addrs(host, &addrs, self.connect_timeout())
            .await
    }

    /// The blocking twin of [`connect_host`](Connector::connect_host): the
    /// name is resolved with `getaddrinfo` on the calling thread (std's
    /// `ToSocketAddrs`), and the timeout is shared the same way. The
    /// addresses are tried one at a time, in order, whatever the families:
    /// no Happy Eyeballs here, which would need a thread per family.
    pub fn connect_host_std(&self, host: &str) -> Result<std::net::TcpStream, HostConnectError> {
        use std::net::ToSocketAddrs;
        let (name, port) = split_host_port(host)?;
        let addrs: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (name, port)
                .to_socket_addrs()
                .map_err(|e| HostConnectError::resolve(host, e))?
                .collect(),
        };
        let budget = Budget::new(self.connect_timeout());
        let mut last = None;
        for (i, &addr) in addrs.iter().enumerate() {
            let Some(share) = budget.share(i, addrs.len()) else {
                last = Some(budget.spent(addr));
                break;
            };
            match self.connect_std_within(addr, share) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(note_failure(host, i, addrs.len(), e)),
            }
        }
        Err(HostConnectError::failed(host, addrs.len(), last))
    }

    /// Connects to `addrs` within the budget `total`: Happy Eyeballs when
    /// they hold both families and the delay is on
    /// ([`set_happy_eyeballs_delay`](Connector::set_happy_eyeballs_delay)),
    /// otherwise in order.
    #[cfg(feature = "tokio")]
    pub(crate) async fn connect_addrs(
        &self,
        host: &str,
        addrs: &[SocketAddr],
        total: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, HostConnectError> {
        let Some(first) = addrs.first() else {
            return Err(HostConnectError::failed(host, 0, None));
        };
        let (primary, fallback): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.iter().partition(|a| a.is_ipv4() == first.is_ipv4());
        match self.happy_eyeballs_delay() {
            Some(delay) if !fallback.is_empty() => {
                self.happy_eyeballs(host, &primary, &fallback, delay, total)
                    .await
            }
            _ => self.connect_in_order(host, addrs, total).await,
        }
    }

    /// RFC 8305's race, as Go's `dialParallel` runs it: the primary family
    /// in order; the fallback family in order from `delay` on (or from the
    /// primary's failure, if sooner), each lane with what is left of
    /// `total`. The first connection wins; the losing lane's future, and
    /// with it its socket, is dropped.
    #[cfg(feature = "tokio")]
    async fn happy_eyeballs(
        &self,
        host: &str,
        primary: &[SocketAddr],
        fallback: &[SocketAddr],
        delay: Duration,
        total: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, HostConnectError> {
        use std::future::Future;
        use std::task::Poll;

        let start = Instant::now();
        let mut first = std::pin::pin!(self.connect_in_order(host, primary, total));
        // Lazy: nothing happens until it is first polled.
        let mut second = std::pin::pin!(async {
            let left = total.map(|t| t.saturating_sub(start.elapsed()));
            self.connect_in_order(host, fallback, left).await
        });
        let mut timer = std::pin::pin!(tokio::time::sleep(delay));
        let (mut first_err, mut second_err) = (None, None);
        let mut second_started = false;
        std::future::poll_fn(|cx| {
            if first_err.is_none() {
                if let Poll::Ready(r) = first.as_mut().poll(cx) {
                    match r {
                        Ok(stream) => return Poll::Ready(Ok(stream)),
                        Err(e) => {
                            first_err = Some(e);
                            second_started = true;
                        }
                    }
                }
            }
            if !second_started && timer.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    host,
                    ?delay,
                    "no connection yet; starting the other address family"
                );
                second_started = true;
            }
            if second_started && second_err.is_none() {
                if let Poll::Ready(r) = second.as_mut().poll(cx) {
                    match r {
                        Ok(stream) => return Poll::Ready(Ok(stream)),
                        Err(e) => second_err = Some(e),
                    }
                }
            }
            match (first_err.take(), second_err.take()) {
                (Some(a), Some(b)) => Poll::Ready(Err(HostConnectError::failed(
                    host,
                    a.addresses_tried() + b.addresses_tried(),
                    b.into_connect_error().or(a.into_connect_error()),
                ))),
                (a, b) => {
                    (first_err, second_err) = (a, b);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Connects to `addrs` in order within the shared budget `total`.
    #[cfg(feature = "tokio")]
    async fn connect_in_order(
        &self,
        host: &str,
        addrs: &[SocketAddr],
        total: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, HostConnectError> {
        let budget = Budget::new(total);
        let mut last = None;
        for (i, &addr) in addrs.iter().enumerate() {
            let Some(share) = budget.share(i, addrs.len()) else {
                last = Some(budget.spent(addr));
                break;
            };
            match self.connect_within(addr, share).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(note_failure(host, i, addrs.len(), e)),
            }
        }
        Err(HostConnectError::failed(host, addrs.len(), last))
    }
}

fn note_failure(host: &str, i: usize, n: usize, e: ConnectError) -> ConnectError {
    tracing::debug!(host, remote = %e.remote_addr(), address = i + 1, of = n, error = %e, "connect failed; trying the next address");
    e
}

/// One connect-timeout budget shared by the addresses of a host.
struct Budget {
    total: Option<Duration>,
    start: Instant,
}

impl Budget {
    fn new(total: Option<Duration>) -> Budget {
        Budget {
            total,
            start: Instant::now(),
        }
    }

    /// The bound for address `i` (0-based) of `n`: what is left, split
    /// evenly among the addresses left. `Some(None)` is no bound; `None`
    /// means the budget is spent.
    fn share(&self, i: usize, n: usize) -> Option<Option<Duration>> {
        let Some(total) = self.total else {
            return Some(None);
        };
        share_of(total.saturating_sub(self.start.elapsed()), n - i).map(Some)
    }

    fn spent(&self, addr: SocketAddr) -> ConnectError {
        let total = self.total.unwrap_or_default();
        ConnectError::new(
            Stage::Connect,
            None,
            addr,
            0,
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the {total:?} connect budget was spent before this address"),
            ),
        )
    }
}

/// `left` split among `addrs_left` addresses; `None` once nothing is left.
fn share_of(left: Duration, addrs_left: usize) -> Option<Duration> {
    let n = u32::try_from(addrs_left.max(1)).unwrap_or(u32::MAX);
    let share = left / n;
    (!share.is_zero()).then_some(share)
}

/// Splits `"host:port"`; brackets around an IPv6 literal are removed.
fn split_host_port(host: &str) -> Result<(&str, u16), HostConnectError> {
    let invalid = |why: &str| {
        HostConnectError::invalid(
            host,
            format!("{host:?} {why}: expected host:port, e.g. svc.internal:8080 or [::1]:8080"),
        )
    };
    let (name, port) = host
        .rsplit_once(':')
        .ok_or_else(|| invalid("has no port"))?;
    let port: u16 = port.parse().map_err(|_| invalid("has no valid port"))?;
    let name = match name.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| invalid("has an unclosed '['"))?,
        None if name.contains(':') => return Err(invalid("has an IPv6 address without brackets")),
        None => name,
    };
    if name.is_empty() {
        return Err(invalid("has no host"));
    }
    Ok((name, port))
}

/// Why [`Connector::connect_host`] (or its blocking twin) opened no
/// connection: the host string was not `host:port`, resolving it failed or
/// gave no address, or every address failed (the last one's
/// [`ConnectError`] is then the [`source()`](std::error::Error::source)).
#[derive(Debug)]
pub struct HostConnectError {
    host: String,
    kind: HostErrorKind,
    tried: usize,
    source: Option<HostSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostErrorKind {
    Invalid,
    Resolve,
    Connect,
}

#[derive(Debug)]
enum HostSource {
    Connect(ConnectError),
    Io(io::Error),
    Message(String),
}

impl HostConnectError {
    pub(crate) fn invalid(host: &str, msg: String) -> HostConnectError {
        HostConnectError {
            host: host.to_owned(),
            kind: HostErrorKind::Invalid,
            tried: 0,
            source: Some(HostSource::Message(msg)),
        }
    }

    fn resolve(host: &str, e: io::Error) -> HostConnectError {
        HostConnectError {
            host: host.to_owned(),
            kind: HostErrorKind::Resolve,
            tried: 0,
            source: Some(HostSource::Io(e)),
        }
    }

    fn failed(host: &str, tried: usize, last: Option<ConnectError>) -> HostConnectError {
        HostConnectError {
            host: host.to_owned(),
            kind: if last.is_some() {
                HostErrorKind::Connect
            } else {
                HostErrorKind::Resolve
            },
            tried,
            source: last.map(HostSource::Connect),
        }
    }

    /// The host as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How many addresses were tried (0 when none was).
    pub fn addresses_tried(&self) -> usize {
        self.tried
    }

    /// The library error of the last address tried, when a connect failed.
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match &self.source {
            Some(HostSource::Connect(e)) => Some(e),
            _ => None,
        }
    }

    /// Consumes the error, returning the last address's error if any.
    pub fn into_connect_error(self) -> Option<ConnectError> {
        match self.source {
            Some(HostSource::Connect(e)) => Some(e),
            _ => None,
        }
    }

    /// True when the last address tried failed for lack of a local port.
    pub fn is_exhaustion(&self) -> bool {
        self.connect_error()
            .is_some_and(ConnectError::is_exhaustion)
    }

    /// True when the host string was not `host:port`.
    pub fn is_invalid_host(&self) -> bool {
        self.kind == HostErrorKind::Invalid
    }

    /// True when resolving the host failed or gave no address.
    pub fn is_resolve(&self) -> bool {
        self.kind == HostErrorKind::Resolve
    }
}

impl fmt::Display for HostConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.host;
        match (self.kind, &self.source) {
            (HostErrorKind::Invalid, Some(HostSource::Message(m))) => f.write_str(m),
            (HostErrorKind::Invalid, _) => write!(f, "invalid host {host:?}"),
            (HostErrorKind::Resolve, Some(_)) => write!(f, "resolving {host} failed"),
            (HostErrorKind::Resolve, None) => write!(f, "{host} resolved to no address"),
            (HostErrorKind::Connect, _) if self.tried == 1 => {
                write!(f, "connecting to {host} failed")
            }
            (HostErrorKind::Connect, _) => write!(
                f,
                "connecting to {host} failed on all {} addresses; the last error",
                self.tried
            ),
        }
    }
}

impl std::error::Error for HostConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(HostSource::Connect(e)) => Some(e),
            Some(HostSource::Io(e)) => Some(e),
            Some(HostSource::Message(_)) | None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("svc.internal:8080").unwrap(),
            ("svc.internal", 8080)
        );
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1", 80));
        assert_eq!(split_host_port("10.0.0.7:1").unwrap(), ("10.0.0.7", 1));
        for bad in [
            "svc.internal",
            "svc:http",
            "svc:70000",
            ":80",
            "::1:80",
            "[::1:80",
        ] {
            let e = split_host_port(bad).unwrap_err();
            assert!(e.is_invalid_host(), "{bad}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{bad:?}")) && msg.contains("expected host:port"),
                "{msg}"
            );
        }
    }

    #[test]
    fn budget_is_shared_by_the_addresses_left() {
        let s = Duration::from_secs(1);
        assert_eq!(share_of(s * 3, 3), Some(s));
        assert_eq!(share_of(s, 1), Some(s));
        assert_eq!(share_of(s, 0), Some(s));
        assert_eq!(share_of(Duration::ZERO, 2), None);
        let unbounded = Budget::new(None);
        assert_eq!(unbounded.share(0, 2), Some(None));
        let b = Budget::new(Some(s * 4));
        let first = b.share(0, 2).unwrap().unwrap();
        assert!(first <= s * 2 && first > s, "{first:?}");
    }
}

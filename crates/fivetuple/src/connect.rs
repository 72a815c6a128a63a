//! The exhaustion-aware connect. One retry loop, shared by the blocking
//! ([`Connector::connect_std`]) and async ([`Connector::connect`]) entry
//! points: the policy is asked again with `attempt + 1` after an exhaustion
//! error from `bind()` or `connect()`; any other error returns at once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{ConfigError, ConnectError, Stage};
use crate::policy::{Choice, KernelDefault, LocalPolicy};

/// Default bound on attempts per connect. Each retry costs one socket and one
/// `bind()`/`connect()` system call pair, so 16 stays cheap; with rotation in
/// a range whose ports are in use at random with probability `p`, the chance
/// that 16 consecutive attempts all clash is `p^16` (under 2% at p = 0.78).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 16;

/// Default Happy Eyeballs "connection attempt delay" (RFC 8305 §5): how long
/// [`Connector::connect_host`] waits on the first address family before it
/// also starts the other. 250 ms, the RFC's recommended value.
pub const DEFAULT_HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Opens TCP connections whose local endpoint a [`LocalPolicy`] chooses,
/// retrying on port exhaustion.
///
/// Cloning is cheap; clones share the policy and the [`ConnectStats`], while
/// each clone's settings are its own.
///
/// ```no_run
/// use fivetuple::{Connector, PortRange, Rotation};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let connector = Connector::new(Rotation::new(PortRange::new(20000, 29999)?)?);
/// let stream = connector.connect_std("127.0.0.1:8080".parse()?)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector {
    policy: Arc<dyn LocalPolicy>,
    /// The policy is [`KernelDefault`], known from its type at construction.
    kernel_only: bool,
    /// `kernel_only` and no per-socket option to set: the blocking connect
    /// without a timeout takes the plain path ([`Connector::connect_plain`]).
    /// Kept up to date by every setter it depends on.
    plain: bool,
    stats: Arc<ConnectStats>,
    config: Config,
}

/// Every setting and its default, in one place.
#[derive(Debug, Clone)]
struct Config {
    max_attempts: u32,
    connect_timeout: Option<Duration>,
    nodelay: bool,
    linger_zero: bool,
    socket_hook: Option<SocketHook>,
    happy_eyeballs_delay: Option<Duration>,
}

impl Config {
    /// No per-socket option to set before `connect()`.
    fn is_plain(&self) -> bool {
        !self.nodelay && !self.linger_zero && self.socket_hook.is_none()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            connect_timeout: None,
            nodelay: false,
            linger_zero: false,
            socket_hook: None,
            happy_eyeballs_delay: Some(DEFAULT_HAPPY_EYEBALLS_DELAY),
        }
    }
}

/// The user's hook on each attempt's socket (see [`Connector::set_socket_hook`]).
type HookFn = dyn Fn(&Socket, SocketAddr) -> io::Result<()> + Send + Sync;

#[derive(Clone)]
struct SocketHook(Arc<HookFn>);

impl std::fmt::Debug for SocketHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketHook(..)")
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Connector {
    fn default() -> Connector {
        Connector::new(KernelDefault)
    }
}

impl Connector {
    /// A connector using `policy`, with default settings.
    pub fn new<P: LocalPolicy + 'static>(policy: P) -> Connector {
        let mut connector = Connector::from_arc(Arc::new(policy));
        connector.kernel_only =
            std::any::TypeId::of::<P>() == std::any::TypeId::of::<KernelDefault>();
        connector.refresh_plain();
        connector
    }

    /// A connector using a shared policy.
    pub fn from_arc(policy: Arc<dyn LocalPolicy>) -> Connector {
        Connector {
            policy,
            kernel_only: false,
            plain: false,
            stats: Arc::new(ConnectStats::default()),
            config: Config::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<dyn LocalPolicy> {
        &self.policy
    }

    /// The counters, shared with every clone of this connector.
    pub fn stats(&self) -> &Arc<ConnectStats> {
        &self.stats
    }

    /// Bounds the attempts per connect (first try included). Default
    /// [`DEFAULT_MAX_ATTEMPTS`]; must be at least 1.
    pub fn set_max_attempts(&mut self, attempts: u32) -> Result<&mut Connector, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::BadSetting {
                name: "max_attempts",
                value: attempts.to_string(),
                expected: "at least 1",
            });
        }
        self.config.max_attempts = attempts;
        Ok(self)
    }

    /// The bound on attempts per connect.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// Bounds each `connect()` call. `None` (the default) waits as long as
    /// the OS does. A timeout is not retried: it is not a port problem. The
    /// async entry point needs a tokio runtime with the time driver enabled
    /// when a timeout is set.
    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) -> &mut Connector {
        self.config.connect_timeout = timeout;
        self
    }

    /// The bound on each `connect()` call, if any.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.config.connect_timeout
    }

    /// Happy Eyeballs (RFC 8305) for [`connect_host`](Connector::connect_host)
    /// and the hyper connector on a name with both IPv4 and IPv6 addresses:
    /// the addresses of the first answer's family are tried in order, and
    /// after `delay` without a connection (or as soon as that family has
    /// failed) the other family's are tried alongside; the first connection
    /// wins and the other attempt is dropped (its socket closed). The
    /// [connect timeout](Connector::set_connect_timeout) bounds the whole.
    /// Default [`DEFAULT_HAPPY_EYEBALLS_DELAY`] (250 ms); `None` tries every
    /// address in order, one at a time. Each attempt goes through the policy
    /// as [`connect`](Connector::connect) does. The blocking
    /// [`connect_host_std`](Connector::connect_host_std) always tries in
    /// order.
    pub fn set_happy_eyeballs_delay(&mut self, delay: Option<Duration>) -> &mut Connector {
        self.config.happy_eyeballs_delay = delay;
        self
    }

    /// The Happy Eyeballs delay, if on.
    pub fn happy_eyeballs_delay(&self) -> Option<Duration> {
        self.config.happy_eyeballs_delay
    }

    /// Sets `TCP_NODELAY` on every connection. Default off.
    pub fn set_nodelay(&mut self, nodelay: bool) -> &mut Connector {
        self.config.nodelay = nodelay;
        self.refresh_plain();
        self
    }

    /// Sets `SO_LINGER {on, 0}` on every connection, so that closing it sends
    /// RST and leaves **no TIME_WAIT**. Default off.
    ///
    /// **Danger:** unsent or unacknowledged data is discarded at close, the
    /// peer sees "connection reset", and TIME_WAIT's protection against a
    /// delayed segment of the old connection landing in a new one with the
    /// same 4-tuple is gone. Use it only for request/response protocols where
    /// the client has read the whole response before closing, and prefer
    /// keep-alive or rotation.
    pub fn set_linger_zero(&mut self, linger_zero: bool) -> &mut Connector {
        self.config.linger_zero = linger_zero;
        self.refresh_plain();
        self
    }

    /// Runs `hook` on every attempt's socket, after the connector's own
    /// options (`TCP_NODELAY`, `SO_LINGER`, `IP_LOCAL_PORT_RANGE`,
    /// `SO_REUSEADDR`/`IP_BIND_ADDRESS_NO_PORT`) and before `bind()` and
    /// `connect()`, with the destination as second argument. It is the raw
    /// way out, as socket2's `Socket` gives it: keepalive, `SO_MARK`,
    /// `SO_BINDTODEVICE`, buffer sizes, DSCP, anything socket2 can set.
    /// Default none.
    ///
    /// An error from the hook ends the connect at once with
    /// [`Stage::Hook`], whatever its kind (even `EADDRINUSE`): the hook is
    /// the caller's code, not a port problem the policy could route around.
    /// The socket is in non-blocking mode under the async entry points;
    /// leave that mode as it is.
    ///
    /// ```no_run
    /// use fivetuple::Connector;
    /// use socket2::TcpKeepalive;
    /// use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut connector = Connector::default();
    /// connector.set_socket_hook(|socket, _remote| {
    ///     socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(30)))?;
    ///     socket.set_recv_buffer_size(1 << 20)
    /// });
    /// let stream = connector.connect_std("127.0.0.1:8080".parse()?)?;
    /// # Ok(()) }
    /// ```
    pub fn set_socket_hook<F>(&mut self, hook: F) -> &mut Connector
    where
        F: Fn(&Socket, SocketAddr) -> io::Result<()> + Send + Sync + 'static,
    {
        self.config.socket_hook = Some(SocketHook(Arc::new(hook)));
        self.refresh_plain();
        self
    }

    /// Removes the socket hook, if one was set.
    pub fn clear_socket_hook(&mut self) -> &mut Connector {
        self.config.socket_hook = None;
        self.refresh_plain();
        self
    }

    fn refresh_plain(&mut self) {
        // Only where std's errors can be told apart by stage (`plain_failed`).
        self.plain = cfg!(unix) && self.kernel_only && self.config.is_plain();
    }

    /// Connects to `remote`, blocking, with the configured timeout.
    #[inline]
    pub fn connect_std(&self, remote: SocketAddr) -> Result<std::net::TcpStream, ConnectError> {
        match self.config.connect_timeout {
            None if self.plain => self.connect_plain(remote),
            timeout => self.connect_std_within(remote, timeout),
        }
    }

    /// The kernel default with no option to set and no timeout:
    /// `std::net::TcpStream::connect` itself (`socket()`, `connect()`), plus
    /// the two counters. The general attempt (policy call, option checks,
    /// socket2 address conversion) cost about 1.9x std's user-space
    /// instructions per connect (callgrind, bench `connect_instructions`).
    /// Failures leave through [`plain_failed`](Connector::plain_failed).
    #[inline]
    fn connect_plain(&self, remote: SocketAddr) -> Result<std::net::TcpStream, ConnectError> {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        match std::net::TcpStream::connect(remote) {
            Ok(stream) => {
                self.stats.opened_kernel.fetch_add(1, Ordering::Relaxed);
                Ok(stream)
            }
            Err(e) => self.plain_failed(remote, e),
        }
    }

    /// The plain path's first attempt failed: classify it as the general
    /// loop would, and on exhaustion go on with that loop from attempt 2.
    #[cold]
    fn plain_failed(
        &self,
        remote: SocketAddr,
        e: io::Error,
    ) -> Result<std::net::TcpStream, ConnectError> {
        let mut attempts = Attempts::new(self, remote);
        attempts.attempt = 1;
        let stage = if crate::sys::is_socket_errno(&e) {
            Stage::Socket
        } else {
            Stage::Connect
        };
        let err = attempts.error(stage, None, e);
        attempts.retry_or_fail(err)?;
        self.connect_std_loop(attempts, None)
    }

    /// [`connect_std`](Connector::connect_std) with `timeout` bounding each
    /// `connect()` call instead of the configured one.
    pub(crate) fn connect_std_within(
        &self,
        remote: SocketAddr,
        timeout: Option<Duration>,
    ) -> Result<std::net::TcpStream, ConnectError> {
        self.connect_std_loop(Attempts::new(self, remote), timeout)
    }

    fn connect_std_loop(
        &self,
        mut attempts: Attempts<'_>,
        timeout: Option<Duration>,
    ) -> Result<std::net::TcpStream, ConnectError> {
        let remote = attempts.remote;
        loop {
            let Prepared {
                socket,
                local,
                kind,
            } = attempts.next_socket(false)?;
            let addr = SockAddr::from(remote);
            let result = match timeout {
                Some(t) => socket.connect_timeout(&addr, t),
                None => socket.connect(&addr),
            };
            match result {
                Ok(()) => {
                    attempts.opened(kind);
                    return Ok(socket.into());
                }
                // `socket` is closed at the end of this iteration, before the next one is made.
                Err(e) => attempts.connect_failed(e, local)?,
            }
        }
    }

    /// Connects to `remote` on the current tokio runtime, with the configured
    /// timeout.
    #[cfg(feature = "tokio")]
    pub async fn connect(&self, remote: SocketAddr) -> Result<tokio::net::TcpStream, ConnectError> {
        self.connect_within(remote, self.config.connect_timeout)
            .await
    }

    /// [`connect`](Connector::connect) with `timeout` bounding each
    /// `connect()` call instead of the configured one.
    #[cfg(feature = "tokio")]
    pub(crate) async fn connect_within(
        &self,
        remote: SocketAddr,
        timeout: Option<Duration>,
    ) -> Result<tokio::net::TcpStream, ConnectError> {
        let mut attempts = Attempts::new(self, remote);
        loop {
            let Prepared {
                socket,
                local,
                kind,
            } = attempts.next_socket(true)?;
            let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
            let connecting = socket.connect(remote);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, connecting).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect timed out after {t:?}"),
                    )),
                },
                None => connecting.await,
            };
            match result {
                Ok(stream) => {
                    attempts.opened(kind);
                    return Ok(stream);
                }
                Err(e) => attempts.connect_failed(e, local)?,
            }
        }
    }
}

/// A socket made and bound for one attempt.
struct Prepared {
    socket: Socket,
    local: Option<SocketAddr>,
    kind: ChoiceKind,
}

#[derive(Clone, Copy)]
enum ChoiceKind {
    Kernel,
    Address,
    Endpoint,
    Window,
}

/// The retry loop's state for one connect.
struct Attempts<'a> {
    connector: &'a Connector,
    remote: SocketAddr,
    attempt: u32,
    last_was_exhaustion: bool,
}

impl<'a> Attempts<'a> {
    fn new(connector: &'a Connector, remote: SocketAddr) -> Attempts<'a> {
        Attempts {
            connector,
            remote,
            attempt: 0,
            last_was_exhaustion: false,
        }
    }

    fn error(&self, stage: Stage, local: Option<SocketAddr>, source: io::Error) -> ConnectError {
        ConnectError::new(stage, local, self.remote, self.attempt, source)
    }

    /// Asks the policy, makes the socket and binds it; retries by itself
    /// while `bind()` reports exhaustion.
    fn next_socket(&mut self, nonblocking: bool) -> Result<Prepared, ConnectError> {
        loop {
            self.attempt += 1;
            self.connector
                .stats
                .attempts
                .fetch_add(1, Ordering::Relaxed);
            let choice = self.connector.policy.choose(self.remote, self.attempt);
            match self.prepare(choice, nonblocking) {
                Ok(p) => return Ok(p),
                Err(e) => self.retry_or_fail(e)?,
            }
        }
    }

    /// `Ok(())` to go round again, `Err` to return.
    #[cold]
    fn retry_or_fail(&mut self, e: ConnectError) -> Result<(), ConnectError> {
        let stats = &self.connector.stats;
        let exhaustion = e.is_exhaustion();
        let retryable = matches!(e.stage, Stage::Bind | Stage::Connect);
        self.last_was_exhaustion = exhaustion;
        if exhaustion && retryable && self.attempt < self.connector.config.max_attempts {
            stats.exhaustion_retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %self.remote, local = ?e.local, attempt = self.attempt, error = %e.source, "local port exhausted; asking the policy again");
            return Ok(());
        }
        if exhaustion {
            stats.exhaustion_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.other_failures.fetch_add(1, Ordering::Relaxed);
        }
        Err(e)
    }

    #[cold]
    fn connect_failed(
        &mut self,
        e: io::Error,
        local: Option<SocketAddr>,
    ) -> Result<(), ConnectError> {
        let err = self.error(Stage::Connect, local, e);
        self.retry_or_fail(err)
    }

    fn opened(&self, kind: ChoiceKind) {
        let s = &self.connector.stats;
        let counter = match kind {
            ChoiceKind::Kernel => &s.opened_kernel,
            ChoiceKind::Address => &s.opened_address,
            ChoiceKind::Endpoint => &s.opened_endpoint,
            ChoiceKind::Window => &s.opened_window,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn prepare(&self, choice: Choice, nonblocking: bool) -> Result<Prepared, ConnectError> {
        let (bind_to, kind, no_port, window) = match choice {
            Choice::Kernel => (None, ChoiceKind::Kernel, false, None),
            Choice::Address(ip) => (
                Some(SocketAddr::new(ip, 0)),
                ChoiceKind::Address,
                true,
                None,
            ),
            Choice::Endpoint(ep) => (Some(ep), ChoiceKind::Endpoint, ep.port() == 0, None),
            Choice::Window { address, ports } => (
                address.map(|ip| SocketAddr::new(ip, 0)),
                ChoiceKind::Window,
                true,
                Some(ports),
            ),
            Choice::GiveUp(reason) => {
                let kind = if self.last_was_exhaustion {
                    io::ErrorKind::AddrNotAvailable
                } else {
                    io::ErrorKind::Other
                };
                return Err(self.error(
                    Stage::Policy,
                    None,
                    io::Error::new(kind, reason.into_owned()),
                ));
            }
        };
        if let Some(local) = bind_to {
            check_family(local.ip(), &self.remote)
                .map_err(|e| self.error(Stage::Policy, Some(local), e))?;
        }
        let socket_err = |e| self.error(Stage::Socket, bind_to, e);
        // Protocol 0, as std's `TcpStream::connect` passes (strace of the
        // connect bench): the kernel-default path then makes exactly std's
        // system calls, socket() and connect().
        let socket = Socket::new(Domain::for_address(self.remote), Type::STREAM, None)
            .map_err(socket_err)?;
        if nonblocking {
            socket.set_nonblocking(true).map_err(socket_err)?;
        }
        let config = &self.connector.config;
        if config.nodelay {
            socket.set_tcp_nodelay(true).map_err(socket_err)?;
        }
        if config.linger_zero {
            socket
                .set_linger(Some(Duration::ZERO))
                .map_err(socket_err)?;
        }
        if let Some(ports) = window {
            crate::sys::set_local_port_range(&socket, ports.lo(), ports.hi())
                .map_err(socket_err)?;
        }
        if let Some(SocketHook(hook)) = &config.socket_hook {
            hook(&socket, self.remote).map_err(|e| self.error(Stage::Hook, bind_to, e))?;
        }
        if let Some(local) = bind_to {
            if no_port {
                set_no_port_or_warn(&socket);
            } else {
                crate::sys::set_reuse_for_explicit_bind(&socket).map_err(socket_err)?;
            }
            socket
                .bind(&SockAddr::from(local))
                .map_err(|e| self.error(Stage::Bind, Some(local), e))?;
        }
        Ok(Prepared {
            socket,
            local: bind_to,
            kind,
        })
    }
}

fn check_family(local: IpAddr, remote: &SocketAddr) -> io::Result<()> {
    if local.is_ipv4() == remote.is_ipv4() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "source address {local} is {} but destination {remote} is {}",
            if local.is_ipv4() { "IPv4" } else { "IPv6" },
            if remote.is_ipv4() { "IPv4" } else { "IPv6" },
        ),
    ))
}

/// `IP_BIND_ADDRESS_NO_PORT` is best-effort: without it the bind still works
/// but reserves the port for every destination, so warn once and go on.
fn set_no_port_or_warn(socket: &Socket) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = crate::sys::set_bind_address_no_port(socket) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "IP_BIND_ADDRESS_NO_PORT unavailable; address-only binds reserve a port for all destinations");
        }
    }
}

/// Counters of one [`Connector`] and its clones.
#[derive(Debug, Default)]
pub struct ConnectStats {
    attempts: AtomicU64,
    exhaustion_retries: AtomicU64,
    exhaustion_failures: AtomicU64,
    other_failures: AtomicU64,
    opened_kernel: AtomicU64,
    opened_address: AtomicU64,
    opened_endpoint: AtomicU64,
    opened_window: AtomicU64,
}

/// A consistent-enough copy of [`ConnectStats`] (each counter is read once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Policy consultations: every attempt, first tries and retries.
    pub attempts: u64,
    /// Attempts that failed for lack of a port and were retried.
    pub exhaustion_retries: u64,
    /// Connects that failed for lack of a port (attempts used up, or the
    /// policy gave up after an exhaustion error).
    pub exhaustion_failures: u64,
    /// Connects that failed for any other reason.
    pub other_failures: u64,
    /// Connections opened with [`Choice::Kernel`].
    pub opened_kernel: u64,
    /// Connections opened with [`Choice::Address`].
    pub opened_address: u64,
    /// Connections opened with [`Choice::Endpoint`].
    pub opened_endpoint: u64,
    /// Connections opened with [`Choice::Window`].
    pub opened_window: u64,
}

impl StatsSnapshot {
    /// Connections opened, whatever the choice.
    pub fn opened(&self) -> u64 {
        self.opened_kernel + self.opened_address + self.opened_endpoint + self.opened_window
    }
}

impl ConnectStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            attempts: r(&self.attempts),
            exhaustion_retries: r(&self.exhaustion_retries),
            exhaustion_failures: r(&self.exhaustion_failures),
            other_failures: r(&self.other_failures),
            opened_kernel: r(&self.opened_kernel),
            opened_address: r(&self.opened_address),
            opened_endpoint: r(&self.opened_endpoint),
            opened_window: r(&self.opened_window),
        }
    }
}

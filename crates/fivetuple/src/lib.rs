//! fivetuple keeps clients from running out of TCP source ports.
//!
//! A service that opens and closes a connection per call leaves each closed
//! 4-tuple in TIME_WAIT (60 s on Linux). Toward one destination only the
//! local port varies, so the budget is `usable ports / 60 s` new connections
//! per second; past it, `connect()` fails with `EADDRNOTAVAIL` ("Cannot
//! assign requested address").
//!
//! This crate lets the client choose each connection's local endpoint with a
//! [`LocalPolicy`], the equivalent of .NET's `BindIPEndPointDelegate`: one
//! call, `(remote, attempt) -> Choice`. A [`Connector`] asks it again after an
//! exhaustion error from `bind()` *or* `connect()`, never after any other
//! error, a bounded number of times.
//!
//! Built-in policies: [`KernelDefault`], [`Rotation`] (lock-free, correct at
//! the wrap, skips reserved ports), [`Spread`] over source addresses,
//! [`PortWindow`] (`IP_LOCAL_PORT_RANGE`), and the composition
//! [`Rotation::with_sources`]. A closure is a policy too.
//!
//! ```no_run
//! use fivetuple::{Connector, PortRange, Rotation};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let connector = Connector::new(Rotation::new(PortRange::new(20000, 29999)?)?);
//! let stream = connector.connect_std("127.0.0.1:8080".parse()?)?;
//! # Ok(()) }
//! ```
//!
//! [`Connector::connect_host`] (tokio) and [`Connector::connect_host_std`]
//! take a `"host:port"`, resolve it and try each address in turn within one
//! shared connect-timeout budget. [`Connector::set_socket_hook`] hands each
//! attempt's `socket2::Socket` to your code before `bind()` and `connect()`
//! (keepalive, `SO_MARK`, buffer sizes, ...).
//!
//! # HTTP (feature `hyper`, module `fivetuple::http`)
//!
//! The module is named `http`, not `hyper`, so that `use fivetuple::http`
//! never shadows the `hyper` crate in the caller's scope. hyper-util's
//! client keeps its pool, TLS and timeouts; only the connector
//! changes. The five-line setup:
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fivetuple::{http::HttpConnector, Connector, PortRange, Rotation};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! let policy = Rotation::new(PortRange::new(20000, 29999)?)?;
//! let connector = HttpConnector::new(Connector::new(policy));
//! let client: Client<_, String> = Client::builder(TokioExecutor::new()).build(connector);
//! # let _ = client; Ok(()) }
//! ```
//!
//! `fivetuple::http::ConnectionInfo` in each response's extensions names the source
//! port used; `HttpConnector::stats` counts attempts, exhaustion retries and
//! failures, and the `metrics` feature registers them into a
//! `prometheus-client` registry (see `fivetuple::metrics`).
//!
//! Platforms: Linux is first-class. macOS and Windows build; options they
//! lack return [`std::io::ErrorKind::Unsupported`] or fall back with a
//! logged warning, as each item documents.
//!
//! # What this crate owns
//!
//! The client side: policies, the connect loop, the raw socket options per
//! OS (`sys/`), the hyper connector and client stats. The kernel facts it
//! relies on ([`PortRange`], [`ReservedPorts`], reading the namespace's
//! sysctls) live in `fivetuple-kernel` and are re-exported here; this crate
//! does not parse `/proc` or inspect the host's socket table (that is
//! `fivetuple-scan`).
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
mod error;
mod host;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod http;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod policy;
mod reserved;
mod rotation;
mod spec;
mod spread;
mod sys;
mod window;

pub use connect::{
    ConnectStats, Connector, StatsSnapshot, DEFAULT_HAPPY_EYEBALLS_DELAY, DEFAULT_MAX_ATTEMPTS,
};
pub use error::{is_exhaustion, ConfigError, ConnectError, Stage};
pub use fivetuple_kernel::PortRangeError;
pub use host::HostConnectError;
pub use policy::{Choice, KernelDefault, LocalPolicy, PortRange};
pub use reserved::{ReservedPorts, ReservedPortsError};
pub use rotation::Rotation;
pub use spec::{parse_addresses, parse_policy};
pub use spread::{address_range, Spread, MAX_ADDRESS_RANGE};
pub use window::PortWindow;

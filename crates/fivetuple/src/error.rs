//! Error types: [`ConnectError`] for a connect that failed, [`ConfigError`] for
//! a policy or connector that was built from bad input.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Which step of a connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The policy returned [`Choice::GiveUp`](crate::Choice::GiveUp), or
    /// chose a source address of the other family than the destination's.
    Policy,
    /// Creating the socket or setting a socket option failed.
    Socket,
    /// `bind()` failed.
    Bind,
    /// `connect()` failed (or timed out).
    Connect,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Policy => "policy",
            Stage::Socket => "socket",
            Stage::Bind => "bind",
            Stage::Connect => "connect",
        })
    }
}

/// A connect that failed, with the evidence: the step that failed, the local
/// and remote address, how many attempts were made, and the OS error as
/// [`source()`](std::error::Error::source).
///
/// `Display` describes the connect; the OS error text ("Cannot assign
/// requested address (os error 99)") is the source, so print the chain
/// (`{:#}` with anyhow) to see both.
#[derive(Debug)]
pub struct ConnectError {
    pub(crate) stage: Stage,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) remote: SocketAddr,
    pub(crate) attempts: u32,
    pub(crate) source: io::Error,
}

impl ConnectError {
    pub(crate) fn new(
        stage: Stage,
        local: Option<SocketAddr>,
        remote: SocketAddr,
        attempts: u32,
        source: io::Error,
    ) -> Self {
        ConnectError {
            stage,
            local,
            remote,
            attempts,
            source,
        }
    }

    /// The step that failed.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The local address of the last attempt, when one was chosen or bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The destination.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// How many attempts were made, counting the one that failed (1 or more).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The OS error of the last attempt.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    /// Consumes the error and returns the OS error of the last attempt.
    pub fn into_io_error(self) -> io::Error {
        self.source
    }

    /// True when the last attempt failed for lack of a local port: `bind()`
    /// returned `EADDRINUSE`, or `connect()` returned `EADDRNOTAVAIL` or
    /// `EADDRINUSE` (Windows: `WSAEADDRINUSE` 10048, `WSAEADDRNOTAVAIL` 10049).
    pub fn is_exhaustion(&self) -> bool {
        is_exhaustion(&self.source)
    }

    /// The symbolic name of the OS error (`"EADDRNOTAVAIL"`, `"ECONNREFUSED"`,
    /// ...), or `None` when it is not an OS error or not one this crate names.
    pub fn os_error_name(&self) -> Option<&'static str> {
        crate::sys::errno_name(&self.source)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed for {}", self.stage, self.remote)?;
        if let Some(local) = self.local {
            write!(f, " from {local}")?;
        }
        write!(
            f,
            " after {} attempt{}",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<ConnectError> for io::Error {
    /// Keeps the [`ConnectError`] reachable: the result has the same
    /// [`io::ErrorKind`] as the OS error and wraps the `ConnectError` as its
    /// inner error.
    fn from(e: ConnectError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// True when `err` means "no local port was available": `AddrInUse`
/// (`EADDRINUSE`) or `AddrNotAvailable` (`EADDRNOTAVAIL`).
pub fn is_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

/// A policy or connector built from bad input. Each variant names the value
/// and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A port range whose low end is above its high end.
    #[error("port range {lo}-{hi} is inverted: expected low <= high")]
    InvertedRange {
        /// Low end as given.
        lo: u16,
        /// High end as given.
        hi: u16,
    },
    /// A port range that includes port 0.
    #[error("port range {lo}-{hi} includes port 0: expected ports in 1-65535")]
    PortZero {
        /// Low end as given.
        lo: u16,
        /// High end as given.
        hi: u16,
    },
    /// Every port of the range is listed in `net.ipv4.ip_local_reserved_ports`.
    #[error("every port in {lo}-{hi} is reserved by net.ipv4.ip_local_reserved_ports: expected at least one usable port")]
    AllReserved {
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
    },
    /// An address list with no address in it.
    #[error("empty source address list: expected at least one local address")]
    NoAddresses,
    /// An address that cannot be a connection's source (unspecified,
    /// multicast or broadcast).
    #[error("{addr} cannot be a source address: expected a unicast address (use the kernel default for the wildcard)")]
    NotUnicast {
        /// The address as given.
        addr: std::net::IpAddr,
    },
    /// An address range whose ends are of different families.
    #[error("address range {from}-{to} mixes IPv4 and IPv6: expected both ends of one family")]
    MixedFamilies {
        /// First address.
        from: std::net::IpAddr,
        /// Last address.
        to: std::net::IpAddr,
    },
    /// An address range whose first address is above its last, or that is too long.
    #[error("address range {from}-{to} is invalid: {reason}")]
    BadAddressRange {
        /// First address.
        from: std::net::IpAddr,
        /// Last address.
        to: std::net::IpAddr,
        /// What was expected.
        reason: &'static str,
    },
    /// A connector setting out of range.
    #[error("{name} = {value} is invalid: expected {expected}")]
    BadSetting {
        /// The setting's name.
        name: &'static str,
        /// The value as given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A policy specification string that could not be parsed.
    #[error("invalid policy {spec:?}: {reason}")]
    BadSpec {
        /// The specification as given.
        spec: String,
        /// What was wrong and what was expected.
        reason: String,
    },
}

impl From<fivetuple_kernel::PortRangeError> for ConfigError {
    /// A bad [`PortRange`](crate::PortRange) is a bad configuration: the
    /// same variants, texts and values as before the type moved to
    /// `fivetuple-kernel`.
    fn from(e: fivetuple_kernel::PortRangeError) -> ConfigError {
        use fivetuple_kernel::PortRangeError as E;
        match e {
            E::Inverted { lo, hi } => ConfigError::InvertedRange { lo, hi },
            E::PortZero { lo, hi } => ConfigError::PortZero { lo, hi },
            E::BadSpec { spec, reason } => ConfigError::BadSpec { spec, reason },
            other => ConfigError::BadSpec {
                spec: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

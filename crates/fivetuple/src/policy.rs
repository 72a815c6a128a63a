//! The policy API: one call, `(remote, attempt) -> Choice`, decides the local
//! endpoint of each connection attempt. It is fivetuple's answer to .NET's
//! `BindIPEndPointDelegate`, asked again after an exhaustion error from either
//! `bind()` or `connect()`.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::error::ConfigError;

/// What a [`LocalPolicy`] decided for one connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// No `bind()`: `connect()` lets the kernel pick the address and port.
    Kernel,
    /// Bind this address only. fivetuple sets `IP_BIND_ADDRESS_NO_PORT`
    /// (Linux 4.2+) so the port is chosen at `connect()` and shared across
    /// destinations. Elsewhere `bind(ip, 0)` reserves a port for every
    /// destination, which is logged once as a warning.
    Address(IpAddr),
    /// Bind this exact address and port, with `SO_REUSEADDR` (Unix) or
    /// `SO_REUSE_UNICASTPORT` (Windows) so the port is shared with other
    /// outbound sockets. `connect()` still enforces 4-tuple uniqueness and
    /// fails with `EADDRNOTAVAIL` on a clash, which makes the loop ask again.
    Endpoint(SocketAddr),
    /// Let `connect()` pick a port inside `ports` only, by setting
    /// `IP_LOCAL_PORT_RANGE` (Linux 6.3+) on the socket; `address`, when set,
    /// is bound as with [`Choice::Address`]. On a kernel without the option
    /// the connect fails with [`std::io::ErrorKind::Unsupported`];
    /// [`PortWindow`](crate::PortWindow) checks first and falls back.
    Window {
        /// Source address to bind, or `None` for the kernel's choice.
        address: Option<IpAddr>,
        /// The ports `connect()` may choose from.
        ports: PortRange,
    },
    /// Stop trying. The connect fails with the given reason.
    GiveUp(Cow<'static, str>),
}

impl Choice {
    /// [`Choice::GiveUp`] with a generic reason.
    pub fn give_up() -> Choice {
        Choice::GiveUp(Cow::Borrowed("the local-endpoint policy gave up"))
    }
}

/// Decides the local endpoint of a connection attempt.
///
/// `attempt` starts at 1 and grows by one after each exhaustion error, so a
/// policy can move on to another port or address, or give up. A plain closure
/// `Fn(SocketAddr, u32) -> Choice + Send + Sync` is a policy:
///
/// ```
/// use fivetuple::{Choice, Connector};
/// use std::net::{IpAddr, Ipv4Addr, SocketAddr};
///
/// let connector = Connector::new(|_remote: SocketAddr, attempt: u32| {
///     if attempt > 3 { return Choice::give_up(); }
///     Choice::Address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + attempt as u8)))
/// });
/// ```
pub trait LocalPolicy: Send + Sync {
    /// Chooses the local endpoint for `attempt` (1-based) of a connect to `remote`.
    fn choose(&self, remote: SocketAddr, attempt: u32) -> Choice;
}

impl<F> LocalPolicy for F
where
    F: Fn(SocketAddr, u32) -> Choice + Send + Sync,
{
    fn choose(&self, remote: SocketAddr, attempt: u32) -> Choice {
        self(remote, attempt)
    }
}

impl<P: LocalPolicy + ?Sized> LocalPolicy for std::sync::Arc<P> {
    fn choose(&self, remote: SocketAddr, attempt: u32) -> Choice {
        (**self).choose(remote, attempt)
    }
}

/// The kernel default: no `bind()`, a plain `connect()`. The kernel picks the
/// port by RFC 6056 double hash (`__inet_hash_connect`), sharing ports across
/// destinations.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelDefault;

impl LocalPolicy for KernelDefault {
    fn choose(&self, _remote: SocketAddr, _attempt: u32) -> Choice {
        Choice::Kernel
    }
}

/// An inclusive range of TCP ports, never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// IANA's dynamic/private port range, 49152-65535 (RFC 6335).
    pub const DYNAMIC: PortRange = PortRange {
        lo: 49152,
        hi: 65535,
    };

    /// The range `lo..=hi`. Fails when `lo > hi` or `lo == 0`.
    pub fn new(lo: u16, hi: u16) -> Result<PortRange, ConfigError> {
        if lo > hi {
            return Err(ConfigError::InvertedRange { lo, hi });
        }
        if lo == 0 {
            return Err(ConfigError::PortZero { lo, hi });
        }
        Ok(PortRange { lo, hi })
    }

    /// Lowest port.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// Highest port.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// Number of ports in the range (at least 1).
    pub fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    /// Always false: a `PortRange` holds at least one port. Present for
    /// symmetry with [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// The ports, lowest first.
    pub fn iter(&self) -> std::ops::RangeInclusive<u16> {
        self.lo..=self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl FromStr for PortRange {
    type Err = ConfigError;

    /// Parses `"LO-HI"` or a single port `"P"`.
    fn from_str(s: &str) -> Result<PortRange, ConfigError> {
        let bad = |reason: &str| ConfigError::BadSpec {
            spec: s.to_string(),
            reason: format!("{reason}; expected a port range like 20000-29999"),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (s.trim(), s.trim()),
        };
        let lo: u16 = lo
            .parse()
            .map_err(|_| bad(&format!("{lo:?} is not a port number (0-65535)")))?;
        let hi: u16 = hi
            .parse()
            .map_err(|_| bad(&format!("{hi:?} is not a port number (0-65535)")))?;
        PortRange::new(lo, hi)
    }
}

/// The wildcard address of `remote`'s family (`0.0.0.0` or `::`).
pub(crate) fn unspecified_for(remote: &SocketAddr) -> IpAddr {
    match remote {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_rejects_bad_input_naming_the_value() {
        let e = PortRange::new(300, 200).unwrap_err();
        assert_eq!(e, ConfigError::InvertedRange { lo: 300, hi: 200 });
        assert!(e.to_string().contains("300-200"), "{e}");
        let e = PortRange::new(0, 10).unwrap_err();
        assert!(e.to_string().contains("port 0"), "{e}");
        let e = "20000-x".parse::<PortRange>().unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        let e = "70000-70001".parse::<PortRange>().unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
    }

    #[test]
    fn port_range_parses_and_counts() {
        let r: PortRange = "20000-20999".parse().unwrap();
        assert_eq!((r.lo(), r.hi(), r.len()), (20000, 20999, 1000));
        assert!(r.contains(20000) && r.contains(20999) && !r.contains(21000));
        let one: PortRange = "8080".parse().unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(PortRange::new(1, 65535).unwrap().len(), 65535);
    }

    #[test]
    fn closures_are_policies() {
        let p = |_r: SocketAddr, a: u32| {
            if a > 2 {
                Choice::give_up()
            } else {
                Choice::Kernel
            }
        };
        let remote: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(p.choose(remote, 1), Choice::Kernel);
        assert!(matches!(p.choose(remote, 3), Choice::GiveUp(_)));
    }
}

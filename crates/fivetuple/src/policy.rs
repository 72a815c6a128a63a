//! The policy API: one call, `(remote, attempt) -> Choice`, decides the local
//! endpoint of each connection attempt. It is fivetuple's answer to .NET's
//! `BindIPEndPointDelegate`, asked again after an exhaustion error from either
//! `bind()` or `connect()`.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

pub use fivetuple_kernel::PortRange;

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

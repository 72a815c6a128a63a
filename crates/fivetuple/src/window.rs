//! Port window: a per-socket port range with `IP_LOCAL_PORT_RANGE` (Linux
//! 6.3+). `connect()` still picks the port, with 4-tuple sharing across
//! destinations, but only inside the window; from Linux 6.8 such a socket
//! scans without the even/odd split, so it avoids the latency cliff of a
//! half-full range.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ConfigError;
use crate::policy::{Choice, LocalPolicy, PortRange};
use crate::rotation::Rotation;

/// Lets `connect()` choose a port inside a window, via `IP_LOCAL_PORT_RANGE`.
///
/// **Fallback.** On a kernel without `IP_LOCAL_PORT_RANGE` (before 6.3, or
/// not Linux) the window falls back to [`Rotation`] over the same ports
/// (explicit binds with `SO_REUSEADDR`); the first use logs a warning saying
/// so. Support is probed once per process.
///
/// **Clamping.** The kernel narrows the namespace's
/// `net.ipv4.ip_local_port_range` with the window
/// (`inet_sk_get_local_port_range`): a window end outside that range is
/// ignored. Construction logs a warning when the window is not inside it.
#[derive(Debug)]
pub struct PortWindow {
    ports: PortRange,
    address: Option<IpAddr>,
    fallback: Rotation,
    /// Whether `IP_LOCAL_PORT_RANGE` works here; a field so tests can take
    /// the fallback path on a kernel that has the option.
    native: fn() -> bool,
}

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

impl PortWindow {
    /// A window over `ports`, with the kernel's choice of source address.
    pub fn new(ports: PortRange) -> Result<PortWindow, ConfigError> {
        if let Ok((lo, hi)) = crate::sys::read_local_port_range() {
            if ports.lo() < lo || ports.hi() > hi {
                tracing::warn!(
                    window = %ports,
                    ip_local_port_range = %format_args!("{lo}-{hi}"),
                    "the port window is not inside net.ipv4.ip_local_port_range; the kernel ignores the ends outside it"
                );
            }
        }
        Ok(PortWindow {
            ports,
            address: None,
            fallback: Rotation::new(ports)?,
            native: crate::sys::local_port_range_supported,
        })
    }

    /// Binds `address` (address only, `IP_BIND_ADDRESS_NO_PORT`) as well.
    pub fn with_address(mut self, address: IpAddr) -> Result<PortWindow, ConfigError> {
        self.fallback = self.fallback.with_sources([address])?;
        self.address = Some(address);
        Ok(self)
    }

    /// The window.
    pub fn ports(&self) -> PortRange {
        self.ports
    }

    /// True when this kernel supports `IP_LOCAL_PORT_RANGE`, so the window
    /// is used as such rather than through the rotation fallback.
    pub fn is_native() -> bool {
        crate::sys::local_port_range_supported()
    }
}

impl LocalPolicy for PortWindow {
    fn choose(&self, remote: SocketAddr, attempt: u32) -> Choice {
        if (self.native)() {
            return Choice::Window {
                address: self.address,
                ports: self.ports,
            };
        }
        if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                window = %self.ports,
                "IP_LOCAL_PORT_RANGE is not supported here (Linux 6.3+ only); falling back to port rotation over the window"
            );
        }
        self.fallback.choose(remote, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_window_is_a_window_choice() {
        let mut w = PortWindow::new(PortRange::new(40000, 40009).unwrap()).unwrap();
        w.native = || true;
        let remote: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            w.choose(remote, 1),
            Choice::Window {
                address: None,
                ports: PortRange::new(40000, 40009).unwrap()
            }
        );
    }

    #[test]
    fn without_the_option_it_rotates_inside_the_window() {
        let mut w = PortWindow::new(PortRange::new(40000, 40009).unwrap())
            .unwrap()
            .with_address("127.0.0.2".parse().unwrap())
            .unwrap();
        w.native = || false;
        let remote: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let mut ports = std::collections::HashSet::new();
        for _ in 0..10 {
            match w.choose(remote, 1) {
                Choice::Endpoint(a) => {
                    assert_eq!(a.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
                    assert!((40000..=40009).contains(&a.port()), "{a}");
                    ports.insert(a.port());
                }
                other => panic!("expected the rotation fallback, got {other:?}"),
            }
        }
        assert_eq!(ports.len(), 10, "one cycle covers the window");
        assert!(
            FALLBACK_LOGGED.load(Ordering::Relaxed),
            "the fallback was logged"
        );
    }
}

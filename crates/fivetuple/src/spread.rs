//! Source spread: round-robin over local addresses. Capacity is counted per
//! (source IP, destination IP, destination port), so each extra source address
//! adds a whole port range toward a destination. On loopback any 127.x.y.z
//! works without configuration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ConfigError;
use crate::policy::{Choice, LocalPolicy};

/// Local addresses split by family: index 0 is IPv4, 1 is IPv6.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    by_family: [Box<[IpAddr]>; 2],
}

impl Sources {
    pub(crate) fn new<I: IntoIterator<Item = IpAddr>>(
        addresses: I,
    ) -> Result<Sources, ConfigError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in addresses {
            let unicast = match addr {
                IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
                IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
            };
            if !unicast {
                return Err(ConfigError::NotUnicast { addr });
            }
            if addr.is_ipv4() {
                v4.push(addr)
            } else {
                v6.push(addr)
            }
        }
        if v4.is_empty() && v6.is_empty() {
            return Err(ConfigError::NoAddresses);
        }
        Ok(Sources {
            by_family: [v4.into(), v6.into()],
        })
    }

    pub(crate) fn family(&self, family: usize) -> &[IpAddr] {
        &self.by_family[family]
    }

    pub(crate) fn no_source_for(&self, remote: &SocketAddr) -> Choice {
        let (want, have) = if remote.is_ipv6() {
            ("IPv6", "IPv4")
        } else {
            ("IPv4", "IPv6")
        };
        Choice::GiveUp(
            format!("no {want} source address for destination {remote}: the configured sources are all {have}").into(),
        )
    }
}

/// Round-robin over local source addresses, binding the address only with
/// `IP_BIND_ADDRESS_NO_PORT`, so `connect()` picks the port and shares it
/// across destinations.
///
/// Sources are matched to the destination's family; a destination with no
/// source of its family makes the connect fail with a message naming the
/// family. To also choose the ports, use
/// [`Rotation::with_sources`](crate::Rotation::with_sources).
#[derive(Debug)]
pub struct Spread {
    sources: Sources,
    next: [AtomicU64; 2],
}

impl Spread {
    /// Spreads over `addresses`. Fails on an empty list or on an address that
    /// cannot be a source (unspecified, multicast, broadcast).
    pub fn new<I: IntoIterator<Item = IpAddr>>(addresses: I) -> Result<Spread, ConfigError> {
        Ok(Spread {
            sources: Sources::new(addresses)?,
            next: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The IPv4 and then IPv6 source addresses.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.sources
            .family(0)
            .iter()
            .chain(self.sources.family(1))
            .copied()
    }
}

impl LocalPolicy for Spread {
    fn choose(&self, remote: SocketAddr, _attempt: u32) -> Choice {
        let family = usize::from(remote.is_ipv6());
        let list = self.sources.family(family);
        if list.is_empty() {
            return self.sources.no_source_for(&remote);
        }
        let n = self.next[family].fetch_add(1, Ordering::Relaxed);
        Choice::Address(list[(n % list.len() as u64) as usize])
    }
}

/// Longest address range [`address_range`] expands, to keep a typo such as
/// `10.0.0.1-10.9.0.1` from allocating millions of entries.
pub const MAX_ADDRESS_RANGE: u128 = 65_536;

/// Expands an inclusive address range such as `127.0.0.2`-`127.0.0.17`.
/// Both ends must be of one family, `from <= to`, and the range at most
/// [`MAX_ADDRESS_RANGE`] long.
pub fn address_range(from: IpAddr, to: IpAddr) -> Result<Vec<IpAddr>, ConfigError> {
    let bad = |reason| ConfigError::BadAddressRange { from, to, reason };
    let (a, b, v6) = match (from, to) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), false)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), true),
        _ => return Err(ConfigError::MixedFamilies { from, to }),
    };
    if a > b {
        return Err(bad(
            "expected the first address to be no greater than the last",
        ));
    }
    if b - a >= MAX_ADDRESS_RANGE {
        return Err(bad("expected at most 65536 addresses"));
    }
    Ok((a..=b)
        .map(|n| {
            if v6 {
                IpAddr::V6(Ipv6Addr::from(n))
            } else {
                // n <= u32::MAX: both ends came from u32.
                IpAddr::V4(Ipv4Addr::from(n as u32))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_matched_to_family() {
        let s = Spread::new([ip("127.0.0.2"), ip("::1"), ip("127.0.0.3")]).unwrap();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let picks: Vec<Choice> = (0..4).map(|_| s.choose(v4, 1)).collect();
        assert_eq!(
            picks,
            vec![
                Choice::Address(ip("127.0.0.2")),
                Choice::Address(ip("127.0.0.3")),
                Choice::Address(ip("127.0.0.2")),
                Choice::Address(ip("127.0.0.3"))
            ]
        );
        assert_eq!(s.choose(v6, 1), Choice::Address(ip("::1")));
    }

    #[test]
    fn no_source_of_the_family_is_a_clear_error() {
        let s = Spread::new([ip("127.0.0.2")]).unwrap();
        match s.choose("[::1]:443".parse().unwrap(), 1) {
            Choice::GiveUp(r) => assert!(
                r.contains("no IPv6 source") && r.contains("[::1]:443"),
                "{r}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_fails_at_construction() {
        assert_eq!(Spread::new([]).unwrap_err(), ConfigError::NoAddresses);
        let e = Spread::new([ip("0.0.0.0")]).unwrap_err();
        assert!(e.to_string().contains("0.0.0.0"), "{e}");
        let e = address_range(ip("127.0.0.2"), ip("::1")).unwrap_err();
        assert!(e.to_string().contains("mixes IPv4 and IPv6"), "{e}");
        let e = address_range(ip("127.0.0.9"), ip("127.0.0.2")).unwrap_err();
        assert!(e.to_string().contains("127.0.0.9-127.0.0.2"), "{e}");
        assert!(address_range(ip("10.0.0.0"), ip("10.9.0.0")).is_err());
    }

    #[test]
    fn address_range_expands_inclusively() {
        let r = address_range(ip("127.0.0.2"), ip("127.0.0.17")).unwrap();
        assert_eq!(r.len(), 16);
        assert_eq!((r[0], r[15]), (ip("127.0.0.2"), ip("127.0.0.17")));
        assert_eq!(
            address_range(ip("::1"), ip("::2")).unwrap(),
            vec![ip("::1"), ip("::2")]
        );
    }
}

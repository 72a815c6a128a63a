//! `net.ipv4.ip_local_reserved_ports`: ports the kernel never picks on its own
//! and that rotation must skip too. The sysctl is per network namespace and
//! also applies to IPv6.

use std::io;

/// A set of reserved ports, as listed in `net.ipv4.ip_local_reserved_ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservedPorts {
    ranges: Vec<(u16, u16)>,
}

impl ReservedPorts {
    /// No port reserved.
    pub fn none() -> ReservedPorts {
        ReservedPorts::default()
    }

    /// Parses the sysctl's format: a comma-separated list of ports and
    /// `LO-HI` ranges, e.g. `"8080,9000-9010"`; empty means none.
    pub fn parse(text: &str) -> Result<ReservedPorts, String> {
        let mut ranges = Vec::new();
        for part in text
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let parse = |s: &str| {
                s.trim().parse::<u16>().map_err(|_| {
                    format!("reserved port entry {part:?}: {s:?} is not a port number")
                })
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!(
                    "reserved port entry {part:?}: low end above high end"
                ));
            }
            ranges.push((lo, hi));
        }
        Ok(ReservedPorts { ranges })
    }

    /// Reads the set of the calling thread's network namespace. On systems
    /// without the sysctl (not Linux) the set is empty.
    pub fn read() -> io::Result<ReservedPorts> {
        crate::sys::read_reserved_ports().and_then(|t| {
            ReservedPorts::parse(&t).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        })
    }

    /// True when `port` is reserved.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sysctl_format() {
        let r = ReservedPorts::parse("8080,9000-9010\n").unwrap();
        assert!(r.contains(8080) && r.contains(9000) && r.contains(9010));
        assert!(!r.contains(8081) && !r.contains(9011));
        assert_eq!(ReservedPorts::parse("\n").unwrap(), ReservedPorts::none());
        let e = ReservedPorts::parse("80,x").unwrap_err();
        assert!(e.contains("\"x\""), "{e}");
        assert!(ReservedPorts::parse("20-10").is_err());
    }
}

//! Port ranges and reserved ports: `net.ipv4.ip_local_port_range` and
//! `net.ipv4.ip_local_reserved_ports` (both per network namespace; the
//! reserved set applies to IPv6 too).

use std::fmt;
use std::str::FromStr;

/// A port range built from bad input; each variant names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortRangeError {
    /// The low end is above the high end.
    #[error("port range {lo}-{hi} is inverted: expected low <= high")]
    Inverted {
        /// Low end as given.
        lo: u16,
        /// High end as given.
        hi: u16,
    },
    /// The range includes port 0, which is never a source port.
    #[error("port range {lo}-{hi} includes port 0: expected ports in 1-65535")]
    PortZero {
        /// Low end as given.
        lo: u16,
        /// High end as given.
        hi: u16,
    },
    /// A `"LO-HI"` or `"P"` string that is not a range.
    #[error("invalid port range {spec:?}: {reason}")]
    BadSpec {
        /// The text as given.
        spec: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// The text of `net.ipv4.ip_local_port_range` is not two port numbers.
    #[error("net.ipv4.ip_local_port_range is {text:?}: expected two port numbers, \"LO HI\"")]
    Sysctl {
        /// The text, trimmed.
        text: String,
    },
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

    /// Linux's default `ip_local_port_range`, 32768-60999.
    pub const LINUX_DEFAULT: PortRange = PortRange {
        lo: 32768,
        hi: 60999,
    };

    /// The range `lo..=hi`. Fails when `lo > hi` or `lo == 0`.
    pub fn new(lo: u16, hi: u16) -> Result<PortRange, PortRangeError> {
        if lo > hi {
            return Err(PortRangeError::Inverted { lo, hi });
        }
        if lo == 0 {
            return Err(PortRangeError::PortZero { lo, hi });
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

    /// `(lo, hi)`.
    pub fn bounds(&self) -> (u16, u16) {
        (self.lo, self.hi)
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
    type Err = PortRangeError;

    /// Parses `"LO-HI"` or a single port `"P"`.
    fn from_str(s: &str) -> Result<PortRange, PortRangeError> {
        let bad = |reason: &str| PortRangeError::BadSpec {
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

/// `[lo, hi]`, the shape doctor's JSON has always had.
#[cfg(feature = "serde")]
impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&(self.lo, self.hi), s)
    }
}

/// Parses `net.ipv4.ip_local_port_range` as the kernel writes it
/// (`"32768\t60999\n"`).
///
/// Odd input: exactly two whitespace-separated port numbers are accepted;
/// a missing, extra or non-numeric token is an error, and so is a range
/// [`PortRange::new`] rejects (inverted, or starting at port 0).
/// `ipv4_local_port_range()` refuses to store an inverted range, so the
/// kernel never writes one.
pub fn parse_port_range(text: &str) -> Result<PortRange, PortRangeError> {
    let bad = || PortRangeError::Sysctl {
        text: text.trim().to_string(),
    };
    let mut it = text.split_ascii_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => PortRange::new(lo, hi),
        _ => Err(bad()),
    }
}

/// `net.ipv4.ip_local_reserved_ports` text that is not the sysctl's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReservedPortsError {
    /// One end of an entry is not a port number.
    #[error("reserved port entry {entry:?}: {value:?} is not a port number (0-65535)")]
    NotAPort {
        /// The entry (`"P"` or `"LO-HI"`).
        entry: String,
        /// The end that failed.
        value: String,
    },
    /// An entry whose low end is above its high end.
    #[error("reserved port entry {entry:?}: low end above high end")]
    Inverted {
        /// The entry.
        entry: String,
    },
    /// An empty entry between commas, or a leading or trailing comma.
    #[error("reserved ports {text:?} have an empty entry: expected a comma-separated list such as 8080,9000-9010")]
    EmptyEntry {
        /// The whole text, trimmed.
        text: String,
    },
}

/// A set of reserved ports, as listed in `net.ipv4.ip_local_reserved_ports`:
/// ports the kernel never picks on its own, and that rotation must skip too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct ReservedPorts {
    ranges: Vec<(u16, u16)>,
}

impl ReservedPorts {
    /// No port reserved.
    pub fn none() -> ReservedPorts {
        ReservedPorts::default()
    }

    /// Parses the sysctl's format: a comma-separated list of ports and
    /// `LO-HI` ranges, e.g. `"8080,9000-9010"`; empty (or only white
    /// space) means none.
    ///
    /// Odd input: white space around entries and ends is ignored; an empty
    /// entry (`"80,,90"`, `"80,"`) is an error, as it is when written to
    /// the sysctl (`proc_do_large_bitmap()` returns EINVAL), and the kernel
    /// never writes one; so is an inverted range or a value above 65535.
    /// Entries are kept in the order given.
    pub fn parse(text: &str) -> Result<ReservedPorts, ReservedPortsError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(ReservedPorts::none());
        }
        let mut ranges = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(ReservedPortsError::EmptyEntry { text: text.into() });
            }
            let (lo, hi) = entry.split_once('-').unwrap_or((entry, entry));
            let port = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .map_err(|_| ReservedPortsError::NotAPort {
                        entry: entry.into(),
                        value: s.trim().into(),
                    })
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(ReservedPortsError::Inverted {
                    entry: entry.into(),
                });
            }
            ranges.push((lo, hi));
        }
        Ok(ReservedPorts { ranges })
    }

    /// The set made of `ranges` (inclusive `(lo, hi)` pairs). Fails on an
    /// inverted pair.
    pub fn from_ranges(
        ranges: impl IntoIterator<Item = (u16, u16)>,
    ) -> Result<ReservedPorts, ReservedPortsError> {
        let ranges: Vec<_> = ranges.into_iter().collect();
        if let Some(&(lo, hi)) = ranges.iter().find(|(lo, hi)| lo > hi) {
            return Err(ReservedPortsError::Inverted {
                entry: format!("{lo}-{hi}"),
            });
        }
        Ok(ReservedPorts { ranges })
    }

    /// Reads the set of the calling thread's network namespace (see
    /// [`crate::sysctl::reserved_ports`]). On systems without the sysctl
    /// (not Linux) the set is empty.
    pub fn read() -> std::io::Result<ReservedPorts> {
        if cfg!(target_os = "linux") {
            crate::sysctl::reserved_ports()
        } else {
            Ok(ReservedPorts::none())
        }
    }

    /// True when `port` is reserved.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// True when no port is reserved.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The entries, inclusive `(lo, hi)` pairs, in the order given.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// How many ports of `range` are reserved (entries that overlap are
    /// counted once each, as the kernel writes none).
    pub fn count_in(&self, range: PortRange) -> u32 {
        let (lo, hi) = range.bounds();
        let mut n = 0u32;
        for &(a, b) in &self.ranges {
            let (a, b) = (a.max(lo), b.min(hi));
            if a <= b {
                n += u32::from(b - a) + 1;
            }
        }
        n
    }
}

impl fmt::Display for ReservedPorts {
    /// The sysctl's format: `8080,9000-9010`; empty when none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_rejects_bad_input_naming_the_value() {
        let e = PortRange::new(300, 200).unwrap_err();
        assert_eq!(e, PortRangeError::Inverted { lo: 300, hi: 200 });
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

    /// Fixtures: what the kernel writes, and the odd input each parser
    /// documents.
    #[test]
    fn ip_local_port_range_fixtures() {
        let ok = [
            ("32768\t60999\n", (32768, 60999)),
            ("40000 40099", (40000, 40099)),
            ("  1024\t65535  \n", (1024, 65535)),
            ("5000 5000\n", (5000, 5000)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_port_range(text).unwrap().bounds(), want, "{text:?}");
        }
        for text in [
            "",
            "32768",
            "32768 60999 3",
            "1 70000",
            "a b",
            "60999 32768",
            "0 10",
        ] {
            let e = parse_port_range(text).unwrap_err();
            assert!(!e.to_string().is_empty(), "{text:?}");
        }
        let e = parse_port_range("32768 60999 3\n").unwrap_err();
        assert!(e.to_string().contains("\"32768 60999 3\""), "{e}");
        assert!(matches!(
            parse_port_range("60999 32768"),
            Err(PortRangeError::Inverted {
                lo: 60999,
                hi: 32768
            })
        ));
    }

    #[test]
    fn ip_local_reserved_ports_fixtures() {
        let r = ReservedPorts::parse("8080,9000-9010\n").unwrap();
        assert!(r.contains(8080) && r.contains(9000) && r.contains(9010));
        assert!(!r.contains(8081) && !r.contains(9011));
        assert_eq!(r.ranges(), &[(8080, 8080), (9000, 9010)]);
        assert_eq!(r.to_string(), "8080,9000-9010");
        assert_eq!(ReservedPorts::parse("\n").unwrap(), ReservedPorts::none());
        assert_eq!(ReservedPorts::parse("").unwrap(), ReservedPorts::none());
        assert_eq!(
            ReservedPorts::parse(" 80 , 90 - 95 ").unwrap().ranges(),
            &[(80, 80), (90, 95)]
        );
        let e = ReservedPorts::parse("80,x").unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        assert_eq!(
            ReservedPorts::parse("20-10").unwrap_err(),
            ReservedPortsError::Inverted {
                entry: "20-10".into()
            }
        );
        for text in ["80,,90", "80,", ",80"] {
            let e = ReservedPorts::parse(text).unwrap_err();
            assert!(
                matches!(e, ReservedPortsError::EmptyEntry { .. }),
                "{text:?}: {e}"
            );
        }
        assert!(ReservedPorts::parse("70000").is_err());
    }

    #[test]
    fn reserved_ports_in_a_range() {
        let r = ReservedPorts::from_ranges([(8080, 8080), (40090, 40200)]).unwrap();
        assert_eq!(r.count_in(PortRange::new(40000, 40099).unwrap()), 10);
        assert!(r.contains(40095) && !r.contains(40000));
        assert!(ReservedPorts::from_ranges([(9, 3)]).is_err());
    }
}

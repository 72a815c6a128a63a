//! Kernel settings and counters of one network namespace.
//!
//! Every sysctl listed here is per namespace (DESIGN §2). `/proc/sys` files
//! are resolved against the namespace of the thread that opens them, and the
//! counters are read through `/proc/thread-self/net`, so call
//! [`read_settings`] and [`read_counters`] from the thread that is in the
//! target namespace. Parsing is apart from I/O.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::ScanError;

/// The sysctls that decide how many source ports a destination can use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// `net.ipv4.ip_local_port_range`: the ports `connect()` picks from, inclusive.
    pub ip_local_port_range: (u16, u16),
    /// `net.ipv4.ip_local_reserved_ports`: ports `connect()` never picks, as ranges.
    pub ip_local_reserved_ports: Vec<(u16, u16)>,
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only (default).
    pub tcp_tw_reuse: u32,
    /// `net.ipv4.tcp_tw_reuse_delay` in ms (Linux 6.14+); `None` on older kernels, where it is fixed at 1000 ms.
    pub tcp_tw_reuse_delay_ms: Option<u32>,
    /// `net.ipv4.tcp_timestamps`: `tcp_tw_reuse` works only when not 0.
    pub tcp_timestamps: u32,
    /// `net.ipv4.tcp_max_tw_buckets`: past this many TIME_WAIT sockets the kernel destroys new ones.
    pub tcp_max_tw_buckets: u64,
    /// `net.ipv4.tcp_fin_timeout`: the FIN_WAIT2 timeout, **not** the TIME_WAIT length.
    pub tcp_fin_timeout: u32,
}

impl Default for Settings {
    /// The values a new Linux network namespace starts with (kernel 6.x):
    /// range 32768-60999, no reserved ports, `tcp_tw_reuse=2` (loopback
    /// only), a 1000 ms reuse delay, timestamps on, `tcp_fin_timeout=60`.
    /// `tcp_max_tw_buckets` depends on the hash table size; 262,144 here.
    fn default() -> Settings {
        Settings {
            ip_local_port_range: (32768, 60999),
            ip_local_reserved_ports: vec![],
            tcp_tw_reuse: 2,
            tcp_tw_reuse_delay_ms: None,
            tcp_timestamps: 1,
            tcp_max_tw_buckets: 262_144,
            tcp_fin_timeout: 60,
        }
    }
}

impl Settings {
    /// Number of ports in the range.
    pub fn range_len(&self) -> u32 {
        let (lo, hi) = self.ip_local_port_range;
        u32::from(hi.saturating_sub(lo)) + u32::from(hi >= lo)
    }

    /// Whether `port` is in `ip_local_reserved_ports`.
    pub fn is_reserved(&self, port: u16) -> bool {
        self.ip_local_reserved_ports
            .iter()
            .any(|&(a, b)| a <= port && port <= b)
    }

    /// Reserved ports that fall inside the local port range.
    pub fn reserved_in_range(&self) -> u32 {
        let (lo, hi) = self.ip_local_port_range;
        let mut n = 0u32;
        for &(a, b) in &self.ip_local_reserved_ports {
            let (a, b) = (a.max(lo), b.min(hi));
            if a <= b {
                n += u32::from(b - a) + 1;
            }
        }
        n
    }

    /// The TIME_WAIT reuse delay in force: the sysctl, else the historical fixed 1 s.
    pub fn effective_tw_reuse_delay_ms(&self) -> u32 {
        self.tcp_tw_reuse_delay_ms.unwrap_or(1000)
    }
}

/// Counters of one namespace, each `None` when the kernel does not expose it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// `Tcp ActiveOpens` from /proc/net/snmp: connect() attempts that sent a SYN.
    pub active_opens: Option<u64>,
    /// `TcpExt TW` from /proc/net/netstat: sockets that finished TIME_WAIT.
    pub tw: Option<u64>,
    /// `TcpExt TWRecycled` from /proc/net/netstat: TIME_WAIT 4-tuples reused by connect().
    pub tw_recycled: Option<u64>,
    /// `TcpExt TCPTimeWaitOverflow`: TIME_WAIT sockets not created because of `tcp_max_tw_buckets`.
    pub tcp_time_wait_overflow: Option<u64>,
    /// `tw` from /proc/net/sockstat: TIME_WAIT sockets now.
    pub sockstat_tw: Option<u64>,
}

/// Parses `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let mut it = s.split_ascii_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => Ok((lo, hi)),
        _ => Err(format!("expected two ports, got {:?}", s.trim())),
    }
}

/// Parses `ip_local_reserved_ports` ("", "8080", "8080,9000-9010").
pub fn parse_reserved_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let bad = || format!("bad reserved port entry {part:?}");
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        })
        .collect()
}

/// Looks up `key` in a /proc/net/snmp or /proc/net/netstat style file:
/// pairs of lines, `Prefix: name name...` then `Prefix: value value...`.
pub fn parse_keyed_table(text: &str, prefix: &str, key: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        let (Some(n), Some(v)) = (names.strip_prefix(prefix), values.strip_prefix(prefix)) else {
            continue;
        };
        let (Some(n), Some(v)) = (n.strip_prefix(':'), v.strip_prefix(':')) else {
            continue;
        };
        for (name, value) in n.split_ascii_whitespace().zip(v.split_ascii_whitespace()) {
            if name == key {
                return value.parse().ok();
            }
        }
    }
    None
}

/// Reads `tw` from the `TCP:` line of /proc/net/sockstat.
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_ascii_whitespace().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if k == "tw" {
            return v.parse().ok();
        }
    }
    None
}

fn read_text(path: &Path) -> Result<String, ScanError> {
    fs::read_to_string(path).map_err(|source| ScanError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn sysctl(root: &Path, name: &str) -> Result<String, ScanError> {
    read_text(&root.join(name))
}

fn sysctl_num<T: std::str::FromStr>(root: &Path, name: &str) -> Result<T, ScanError> {
    let text = sysctl(root, name)?;
    text.trim().parse().map_err(|_| ScanError::Parse {
        path: root.join(name).display().to_string(),
        line: 1,
        reason: format!("not a number: {:?}", text.trim()),
    })
}

/// Reads the settings under `root` (normally `/proc/sys/net/ipv4`).
pub fn read_settings_from(root: &Path) -> Result<Settings, ScanError> {
    let parse_err = |name: &str, reason: String| ScanError::Parse {
        path: root.join(name).display().to_string(),
        line: 1,
        reason,
    };
    let range = sysctl(root, "ip_local_port_range")?;
    let reserved = sysctl(root, "ip_local_reserved_ports")?;
    let delay = match sysctl_num::<u32>(root, "tcp_tw_reuse_delay") {
        Ok(v) => Some(v),
        Err(ScanError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(Settings {
        ip_local_port_range: parse_port_range(&range)
            .map_err(|r| parse_err("ip_local_port_range", r))?,
        ip_local_reserved_ports: parse_reserved_ports(&reserved)
            .map_err(|r| parse_err("ip_local_reserved_ports", r))?,
        tcp_tw_reuse: sysctl_num(root, "tcp_tw_reuse")?,
        tcp_tw_reuse_delay_ms: delay,
        tcp_timestamps: sysctl_num(root, "tcp_timestamps")?,
        tcp_max_tw_buckets: sysctl_num(root, "tcp_max_tw_buckets")?,
        tcp_fin_timeout: sysctl_num(root, "tcp_fin_timeout")?,
    })
}

/// Reads the counters under `net_dir` (normally `/proc/thread-self/net`).
/// A counter file that cannot be read leaves its counters `None`.
pub fn read_counters_from(net_dir: &Path) -> Counters {
    let get = |name: &str| fs::read_to_string(net_dir.join(name)).ok();
    let snmp = get("snmp");
    let netstat = get("netstat");
    let sockstat = get("sockstat");
    let ext = |key: &str| {
        netstat
            .as_deref()
            .and_then(|t| parse_keyed_table(t, "TcpExt", key))
    };
    Counters {
        active_opens: snmp
            .as_deref()
            .and_then(|t| parse_keyed_table(t, "Tcp", "ActiveOpens")),
        tw: ext("TW"),
        tw_recycled: ext("TWRecycled"),
        tcp_time_wait_overflow: ext("TCPTimeWaitOverflow"),
        sockstat_tw: sockstat.as_deref().and_then(parse_sockstat_tw),
    }
}

/// Reads the settings of the calling thread's namespace.
pub fn read_settings() -> Result<Settings, ScanError> {
    read_settings_from(&PathBuf::from("/proc/sys/net/ipv4"))
}

/// Reads the counters of the calling thread's namespace.
pub fn read_counters() -> Counters {
    read_counters_from(Path::new("/proc/thread-self/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_and_reserved_ports() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert!(parse_port_range("32768").unwrap_err().contains("32768"));
        assert!(parse_port_range("1 2 3").is_err());
        assert!(parse_port_range("1 70000").is_err());
        assert_eq!(parse_reserved_ports("\n").unwrap(), vec![]);
        assert_eq!(
            parse_reserved_ports("8080,40000-40009\n").unwrap(),
            vec![(8080, 8080), (40000, 40009)]
        );
        assert!(parse_reserved_ports("9-3").unwrap_err().contains("9-3"));
        assert!(parse_reserved_ports("x").is_err());
    }

    #[test]
    fn capacity_arithmetic() {
        let s = Settings {
            ip_local_port_range: (40000, 40099),
            ip_local_reserved_ports: vec![(8080, 8080), (40090, 40200)],
            ..Settings::default()
        };
        assert_eq!(s.range_len(), 100);
        assert_eq!(s.reserved_in_range(), 10);
        assert!(s.is_reserved(40095) && !s.is_reserved(40000));
        assert_eq!(s.effective_tw_reuse_delay_ms(), 1000);
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 4711 12\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TW TWRecycled TWKilled TCPTimeWaitOverflow\nTcpExt: 0 300 7 0 2\nIpExt: InNoRoutes\nIpExt: 0\n";
    const SOCKSTAT: &str =
        "sockets: used 5\nTCP: inuse 3 orphan 0 tw 300 alloc 4 mem 1\nUDP: inuse 0 mem 0\n";

    #[test]
    fn counters_from_snmp_netstat_sockstat() {
        assert_eq!(parse_keyed_table(SNMP, "Tcp", "ActiveOpens"), Some(4711));
        assert_eq!(parse_keyed_table(NETSTAT, "TcpExt", "TW"), Some(300));
        assert_eq!(parse_keyed_table(NETSTAT, "TcpExt", "TWRecycled"), Some(7));
        assert_eq!(
            parse_keyed_table(NETSTAT, "TcpExt", "TCPTimeWaitOverflow"),
            Some(2)
        );
        assert_eq!(parse_keyed_table(NETSTAT, "TcpExt", "Nope"), None);
        assert_eq!(
            parse_keyed_table("Tcp: A\n", "Tcp", "A"),
            None,
            "odd line count"
        );
        assert_eq!(parse_sockstat_tw(SOCKSTAT), Some(300));
        assert_eq!(parse_sockstat_tw("TCP: inuse"), None);
    }
}

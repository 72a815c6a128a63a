//! Kernel settings and counters of one network namespace.
//!
//! Every sysctl listed here is per namespace (DESIGN §2). `/proc/sys` files
//! are resolved against the namespace of the thread that opens them, and the
//! counters are read through `/proc/thread-self/net`, so call
//! [`read_settings`] and [`read_counters`] from the thread that is in the
//! target namespace. Parsing is apart from I/O.

use std::fs;
use std::path::Path;

use fivetuple_kernel::SettingsError;
use serde::Serialize;

use crate::error::ScanError;

/// The sysctls that decide how many source ports a destination can use:
/// [`fivetuple_kernel::NetnsSettings`], the one definition shared with the
/// library and the lab.
pub use fivetuple_kernel::NetnsSettings as Settings;
pub use fivetuple_kernel::{parse_keyed_table, parse_port_range, parse_sockstat_tw};

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

/// Reads the settings under `root` (normally `/proc/sys/net/ipv4`), with
/// [`fivetuple_kernel::read_settings_from`].
pub fn read_settings_from(root: &Path) -> Result<Settings, ScanError> {
    fivetuple_kernel::read_settings_from(root).map_err(|e| match e {
        SettingsError::Read { path, source } => ScanError::Read { path, source },
        SettingsError::Parse { path, reason } => ScanError::Parse {
            path: path.display().to_string(),
            line: 1,
            reason,
        },
        other => ScanError::Parse {
            path: root.display().to_string(),
            line: 1,
            reason: other.to_string(),
        },
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
    read_settings_from(Path::new(fivetuple_kernel::sysctl::IPV4_DIR))
}

/// Reads the counters of the calling thread's namespace.
pub fn read_counters() -> Counters {
    read_counters_from(Path::new("/proc/thread-self/net"))
}

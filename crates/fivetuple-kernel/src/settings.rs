//! The per-namespace TCP sysctls that decide how many source ports a
//! destination can use (DESIGN §2: every one of them is per network
//! namespace), and reading them from a directory of sysctl files.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::budget;
use crate::ports::{parse_port_range, PortRange, ReservedPorts};

/// The sysctls of one network namespace that set the port budget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NetnsSettings {
    /// `net.ipv4.ip_local_port_range`: the ports `connect()` picks from, inclusive.
    pub ip_local_port_range: PortRange,
    /// `net.ipv4.ip_local_reserved_ports`: ports `connect()` never picks.
    pub ip_local_reserved_ports: ReservedPorts,
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
    /// `net.ipv4.tcp_ehash_entries` (read-only, Linux 6.1+): buckets of the
    /// TCP established hash this namespace uses. Negative when the
    /// namespace shares the initial namespace's hash (its absolute value is
    /// then that hash's size); positive when it has its own, which it gets
    /// only if `net.ipv4.tcp_child_ehash_entries` was non-zero in the
    /// namespace of the task that created it, at creation time. `None`
    /// before Linux 6.1. See [`NetnsSettings::owns_ehash`].
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub tcp_ehash_entries: Option<i64>,
}

impl Default for NetnsSettings {
    /// The values a new Linux network namespace starts with (kernel 6.x):
    /// range 32768-60999, no reserved ports, `tcp_tw_reuse=2` (loopback
    /// only), a 1000 ms reuse delay, timestamps on, `tcp_fin_timeout=60`.
    /// `tcp_max_tw_buckets` depends on the hash table size; 262,144 here.
    fn default() -> NetnsSettings {
        NetnsSettings {
            ip_local_port_range: PortRange::LINUX_DEFAULT,
            ip_local_reserved_ports: ReservedPorts::none(),
            tcp_tw_reuse: 2,
            tcp_tw_reuse_delay_ms: None,
            tcp_timestamps: 1,
            tcp_max_tw_buckets: 262_144,
            tcp_fin_timeout: 60,
            tcp_ehash_entries: None,
        }
    }
}

impl NetnsSettings {
    /// Number of ports in the range.
    pub fn range_len(&self) -> u32 {
        self.ip_local_port_range.len() as u32
    }

    /// Whether `port` is in `ip_local_reserved_ports`.
    pub fn is_reserved(&self, port: u16) -> bool {
        self.ip_local_reserved_ports.contains(port)
    }

    /// Whether `connect()` may pick `port` on its own: in the range and not reserved.
    pub fn is_pickable(&self, port: u16) -> bool {
        self.ip_local_port_range.contains(port) && !self.is_reserved(port)
    }

    /// Reserved ports that fall inside the local port range.
    pub fn reserved_in_range(&self) -> u32 {
        self.ip_local_reserved_ports
            .count_in(self.ip_local_port_range)
    }

    /// The TIME_WAIT reuse delay in force: the sysctl, else the historical fixed 1 s.
    pub fn effective_tw_reuse_delay_ms(&self) -> u32 {
        self.tcp_tw_reuse_delay_ms
            .unwrap_or(budget::DEFAULT_TW_REUSE_DELAY_MS)
    }

    /// Whether `tcp_tw_reuse` lets `connect()` from `local` to `remote`
    /// reuse a TIME_WAIT 4-tuple ([`budget::tw_reuse_applies`]).
    pub fn tw_reuse_applies(&self, local: IpAddr, remote: IpAddr) -> bool {
        budget::tw_reuse_applies(
            self.tcp_tw_reuse,
            self.tcp_timestamps,
            budget::is_loopback(local) && budget::is_loopback(remote),
        )
    }

    /// Whether the namespace has a TCP established hash of its own
    /// (`tcp_ehash_entries` > 0), rather than sharing the initial
    /// namespace's; `None` when the kernel does not say (before 6.1).
    ///
    /// With a shared hash, every socket lookup and every `inet_diag` dump
    /// of the namespace walks buckets holding the whole node's sockets
    /// (`inet_diag_dump_icsk()` skips the other namespaces' ones one by one),
    /// so dumping each namespace of a node costs namespaces × node sockets.
    /// The listening and bind hashes stay shared either way.
    pub fn owns_ehash(&self) -> Option<bool> {
        self.tcp_ehash_entries.map(|n| n > 0)
    }

    /// Ports left for `connect()` once the reserved ports and `held` ports
    /// of the range (listeners, binds) are taken out ([`budget::usable_ports`]).
    pub fn usable_ports(&self, held: u32) -> u32 {
        budget::usable_ports(self.range_len(), self.reserved_in_range(), held)
    }
}

/// Reading the settings failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A sysctl file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysctl file had content that is not the sysctl's format.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn read_text(root: &Path, name: &str) -> Result<String, SettingsError> {
    let path = root.join(name);
    std::fs::read_to_string(&path).map_err(|source| SettingsError::Read { path, source })
}

fn read_num<T: std::str::FromStr>(root: &Path, name: &str) -> Result<T, SettingsError> {
    let text = read_text(root, name)?;
    text.trim().parse().map_err(|_| SettingsError::Parse {
        path: root.join(name),
        reason: format!("not a number: {:?}", text.trim()),
    })
}

/// Reads the settings from the sysctl files under `root` (normally
/// `/proc/sys/net/ipv4`; a fixture directory in tests). `/proc/sys` is
/// resolved against the namespace of the thread that opens each file.
/// A missing `tcp_tw_reuse_delay` (before Linux 6.14) or
/// `tcp_ehash_entries` (before 6.1) reads as `None`; any other missing
/// file is an error.
pub fn read_settings_from(root: &Path) -> Result<NetnsSettings, SettingsError> {
    let parse_err = |name: &str, e: &dyn std::fmt::Display| SettingsError::Parse {
        path: root.join(name),
        reason: e.to_string(),
    };
    let range = read_text(root, "ip_local_port_range")?;
    let reserved = read_text(root, "ip_local_reserved_ports")?;
    let delay = read_optional::<u32>(root, "tcp_tw_reuse_delay")?;
    let ehash = read_optional::<i64>(root, "tcp_ehash_entries")?;
    Ok(NetnsSettings {
        ip_local_port_range: parse_port_range(&range)
            .map_err(|e| parse_err("ip_local_port_range", &e))?,
        ip_local_reserved_ports: ReservedPorts::parse(&reserved)
            .map_err(|e| parse_err("ip_local_reserved_ports", &e))?,
        tcp_tw_reuse: read_num(root, "tcp_tw_reuse")?,
        tcp_tw_reuse_delay_ms: delay,
        tcp_timestamps: read_num(root, "tcp_timestamps")?,
        tcp_max_tw_buckets: read_num(root, "tcp_max_tw_buckets")?,
        tcp_fin_timeout: read_num(root, "tcp_fin_timeout")?,
        tcp_ehash_entries: ehash,
    })
}

/// [`read_num`] of a sysctl that older kernels lack: `None` when its file does not exist.
fn read_optional<T: std::str::FromStr>(
    root: &Path,
    name: &str,
) -> Result<Option<T>, SettingsError> {
    match read_num::<T>(root, name) {
        Ok(v) => Ok(Some(v)),
        Err(SettingsError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_arithmetic() {
        let s = NetnsSettings {
            ip_local_port_range: PortRange::new(40000, 40099).unwrap(),
            ip_local_reserved_ports: ReservedPorts::from_ranges([(8080, 8080), (40090, 40200)])
                .unwrap(),
            ..NetnsSettings::default()
        };
        assert_eq!(s.range_len(), 100);
        assert_eq!(s.reserved_in_range(), 10);
        assert_eq!(s.usable_ports(5), 85);
        assert!(s.is_reserved(40095) && !s.is_reserved(40000));
        assert!(s.is_pickable(40000) && !s.is_pickable(40095) && !s.is_pickable(8080));
        assert_eq!(s.effective_tw_reuse_delay_ms(), 1000);
    }

    fn fixture(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fivetuple-kernel-settings-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const BASE: [(&str, &str); 6] = [
        ("ip_local_port_range", "40000\t40099\n"),
        ("ip_local_reserved_ports", "8080,40090-40099\n"),
        ("tcp_tw_reuse", "2\n"),
        ("tcp_timestamps", "1\n"),
        ("tcp_max_tw_buckets", "262144\n"),
        ("tcp_fin_timeout", "60\n"),
    ];

    #[test]
    fn reads_a_directory_of_sysctl_files() {
        let dir = fixture(&BASE);
        let s = read_settings_from(&dir).unwrap();
        assert_eq!(s.ip_local_port_range.bounds(), (40000, 40099));
        assert_eq!(s.ip_local_reserved_ports.to_string(), "8080,40090-40099");
        assert_eq!(s.tcp_tw_reuse_delay_ms, None, "no tcp_tw_reuse_delay file");
        assert_eq!(s.tcp_ehash_entries, None, "no tcp_ehash_entries file");
        assert_eq!(s.owns_ehash(), None);

        let mut files = BASE.to_vec();
        files.push(("tcp_tw_reuse_delay", "250\n"));
        files.push(("tcp_ehash_entries", "-262144\n"));
        let shared = fixture(&files);
        let s = read_settings_from(&shared).unwrap();
        assert_eq!(s.tcp_ehash_entries, Some(-262144));
        assert_eq!(s.owns_ehash(), Some(false), "negative: the host's hash");
        std::fs::remove_dir_all(shared).unwrap();
        files[7] = ("tcp_ehash_entries", "1024\n");
        files.push(("spare", ""));
        let own = fixture(&files);
        assert_eq!(read_settings_from(&own).unwrap().owns_ehash(), Some(true));
        std::fs::remove_dir_all(own).unwrap();
        files.pop();
        files[1] = ("ip_local_reserved_ports", "80,,90\n");
        let dir2 = fixture(&files);
        let e = read_settings_from(&dir2).unwrap_err();
        assert!(
            e.to_string().contains("ip_local_reserved_ports") && e.to_string().contains("80,,90"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }
}

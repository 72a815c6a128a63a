//! Reading and writing `net.*` sysctls of the calling thread's network
//! namespace through `/proc/sys/net`. `/proc/sys` is resolved against the
//! namespace of the thread that opens the file (DESIGN §5), which is what a
//! caller inside a namespace wants. Linux only: elsewhere every function
//! returns [`io::ErrorKind::Unsupported`].

use std::io;
use std::path::PathBuf;

use crate::ports::{parse_port_range, PortRange, ReservedPorts};
use crate::settings::{read_settings_from, NetnsSettings, SettingsError};

/// The directory of the `net.ipv4` sysctls.
pub const IPV4_DIR: &str = "/proc/sys/net/ipv4";

/// The file of `net.<key>`, e.g. `ipv4.tcp_tw_reuse` →
/// `/proc/sys/net/ipv4/tcp_tw_reuse`.
pub fn path(key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/{}", key.replace('.', "/")))
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what}: /proc/sys sysctls exist on Linux only"),
    )
}

/// The raw text of `net.<key>` (e.g. `ipv4.ip_local_port_range`). The
/// error keeps the OS error's kind and names the file.
pub fn read(key: &str) -> io::Result<String> {
    let path = path(key);
    if !cfg!(target_os = "linux") {
        return Err(unsupported(&path.display().to_string()));
    }
    std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

/// Writes `value` to `net.<key>`. The error keeps the OS error's kind and
/// names the value and the file.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    let path = path(key);
    if !cfg!(target_os = "linux") {
        return Err(unsupported(&path.display().to_string()));
    }
    std::fs::write(&path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// `net.ipv4.ip_local_port_range`, parsed by [`parse_port_range`].
pub fn local_port_range() -> io::Result<PortRange> {
    parse_port_range(&read("ipv4.ip_local_port_range")?).map_err(invalid)
}

/// `net.ipv4.ip_local_reserved_ports`, parsed by [`ReservedPorts::parse`].
pub fn reserved_ports() -> io::Result<ReservedPorts> {
    ReservedPorts::parse(&read("ipv4.ip_local_reserved_ports")?).map_err(invalid)
}

/// Every setting of [`NetnsSettings`], from [`IPV4_DIR`].
pub fn settings() -> Result<NetnsSettings, SettingsError> {
    read_settings_from(std::path::Path::new(IPV4_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path("ipv4.tcp_tw_reuse"),
            PathBuf::from("/proc/sys/net/ipv4/tcp_tw_reuse")
        );
    }

    /// Reads this namespace's own settings; any Linux has these files.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_namespaces_settings() {
        let range = local_port_range().unwrap();
        let s = settings().unwrap();
        assert_eq!(s.ip_local_port_range, range);
        assert_eq!(
            read("ipv4.ip_local_port_range")
                .unwrap()
                .split_whitespace()
                .count(),
            2
        );
        let e = read("ipv4.no_such_sysctl").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("/proc/sys/net/ipv4/no_such_sysctl"),
            "{e}"
        );
    }
}

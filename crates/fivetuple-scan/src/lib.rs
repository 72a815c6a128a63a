//! Host inspection for TCP source-port exhaustion.
//!
//! Reads a network namespace's TCP socket table (over NETLINK_SOCK_DIAG, as
//! `ss` does, with `/proc/net/tcp{,6}` as the fallback), its port-related
//! sysctls and counters, and turns them into per-destination headroom: how
//! many ports each (local IP, remote IP, remote port) holds, how fast it is
//! taking new ones, and when it runs out.
//!
//! Everything reads the namespace of the *calling thread*; use
//! [`netns::run_in`] to scan another one.
//!
//! ```no_run
//! use fivetuple_scan::{model, Reader};
//! let snap = fivetuple_scan::snapshot(Reader::Auto)?;
//! let analysis = model::analyze(None, &snap, None, model::Thresholds::default());
//! for d in &analysis.destinations {
//!     println!("{} {}/{}", d.label(), d.in_use, d.capacity);
//! }
//! # Ok::<(), fivetuple_scan::ScanError>(())
//! ```
//!
//! What this crate owns: reading the socket table, the counters and the
//! namespaces, and the occupancy model ([`model`]: grouping, direction,
//! per-destination budget, findings and advice). The kernel facts
//! (settings and their parsers, TIME_WAIT length, when `tcp_tw_reuse`
//! applies, the budget arithmetic) come from `fivetuple-kernel`; this crate
//! does not open client connections, and it formats nothing for a terminal
//! or Prometheus (the `fivetuple` binary does).
#![deny(missing_docs)]

mod error;
pub mod history;
pub mod identity;
pub mod model;
#[cfg(target_os = "linux")]
pub mod nat;
#[cfg(target_os = "linux")]
pub mod netlink;
pub mod netns;
pub mod node;
pub mod procfs;
pub mod procs;
pub mod settings;
pub mod socket;

pub use error::ScanError;
pub use fivetuple_kernel::{PortRange, ReservedPorts};
pub use history::{Baselines, History};
pub use model::{
    Analysis, Destination, Direction, Directions, Finding, FindingCode, Severity, Snapshot,
    StateCounts, Thresholds,
};
pub use settings::{Counters, Settings};
pub use socket::{Socket, Source, Table, TcpState};

/// Which reader to use for the socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reader {
    /// Netlink, falling back to /proc when netlink fails.
    #[default]
    Auto,
    /// Netlink only.
    Netlink,
    /// `/proc/thread-self/net/tcp{,6}` only.
    Proc,
}

/// Reads the TCP table of the calling thread's namespace.
pub fn read_table(reader: Reader) -> Result<Table, ScanError> {
    read_table_states(reader, true)
}

/// [`read_table`]; over netlink, bound-inactive sockets only when
/// `bound_inactive` (see [`netlink::read_without_bound_inactive`]).
fn read_table_states(reader: Reader, bound_inactive: bool) -> Result<Table, ScanError> {
    let read_netlink = || read_netlink(bound_inactive);
    match reader {
        Reader::Proc => Ok(Table {
            sockets: procfs::read()?,
            source: Source::Proc,
            fallback_reason: None,
        }),
        Reader::Netlink => Ok(Table {
            sockets: read_netlink()?,
            source: Source::Netlink,
            fallback_reason: None,
        }),
        Reader::Auto => match read_netlink() {
            Ok(sockets) => Ok(Table {
                sockets,
                source: Source::Netlink,
                fallback_reason: None,
            }),
            Err(e) => {
                let reason = error_chain(&e);
                tracing::warn!("netlink sock_diag unavailable, reading /proc instead: {reason}");
                Ok(Table {
                    sockets: procfs::read()?,
                    source: Source::Proc,
                    fallback_reason: Some(reason),
                })
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn read_netlink(bound_inactive: bool) -> Result<Vec<Socket>, ScanError> {
    if bound_inactive {
        netlink::read()
    } else {
        netlink::read_without_bound_inactive()
    }
}

#[cfg(not(target_os = "linux"))]
fn read_netlink(_bound_inactive: bool) -> Result<Vec<Socket>, ScanError> {
    Err(ScanError::Netlink {
        step: "socket",
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "netlink is Linux only"),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Reads table, settings and counters of the calling thread's namespace.
pub fn snapshot(reader: Reader) -> Result<Snapshot, ScanError> {
    snapshot_states(reader, true)
}

/// [`snapshot`]; over netlink, bound-inactive sockets only when `bound_inactive`.
pub(crate) fn snapshot_states(reader: Reader, bound_inactive: bool) -> Result<Snapshot, ScanError> {
    let settings = settings::read_settings()?;
    let table = read_table_states(reader, bound_inactive)?;
    let counters = settings::read_counters();
    Ok(Snapshot {
        sockets: table.sockets,
        source: table.source,
        settings,
        counters,
        fallback_reason: table.fallback_reason,
    })
}

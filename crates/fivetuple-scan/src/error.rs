//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while scanning a host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// A netlink system call failed (socket, send or recv), or the kernel
    /// answered the dump with an `NLMSG_ERROR`.
    #[error("netlink sock_diag {step} failed")]
    Netlink {
        /// Which step: "socket", "send", "recv" or "dump".
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink message did not have the layout the uapi headers describe.
    #[error("malformed sock_diag message at byte {offset}: {reason}")]
    Decode {
        /// Offset of the message in the datagram.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A file under /proc could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file under /proc had content this crate cannot parse.
    #[error("{path} line {line}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// `--netns NAME` named no namespace under /run/netns.
    #[error("no network namespace named {name:?} under /run/netns")]
    NoSuchNetns {
        /// The name given.
        name: String,
        /// The OS error from opening it.
        #[source]
        source: io::Error,
    },
    /// `--pid PID` named no process, or one whose namespace cannot be opened.
    #[error("cannot open the network namespace of pid {pid}")]
    NoSuchPid {
        /// The pid given.
        pid: u32,
        /// The OS error from opening `/proc/PID/ns/net`.
        #[source]
        source: io::Error,
    },
    /// `setns()` or `unshare()` failed.
    #[error("cannot enter the network namespace {target}")]
    Setns {
        /// The namespace, as the user named it.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The worker thread that scans inside a namespace died (panicked).
    #[error("the scan thread failed: {0}")]
    Thread(String),
    /// The worker thread that scans inside a namespace could not be started.
    #[error("cannot start the scan thread")]
    Spawn(#[source] io::Error),
}

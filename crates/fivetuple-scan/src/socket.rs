//! The socket table: one [`Socket`] per TCP socket of a network namespace.
//!
//! Both readers (netlink in [`crate::netlink`], `/proc/net/tcp` in
//! [`crate::procfs`]) produce this same shape, so the model never cares where
//! a table came from.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// A TCP state as numbered in `include/net/tcp_states.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1).
    Established,
    /// `TCP_SYN_SENT` (2).
    SynSent,
    /// `TCP_SYN_RECV` (3); also used for request sockets (`TCP_NEW_SYN_RECV`, 12), as `ss` does.
    SynRecv,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7); also `TCP_BOUND_INACTIVE` (13): bound, not connected.
    Close,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11).
    Closing,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// Maps a kernel state number; `None` for numbers this crate does not know.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        Some(match n {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 | 12 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 | 13 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            _ => return None,
        })
    }

    /// Index into [`TcpState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kernel's name, as used in the JSON output (`TIME_WAIT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// State.
    pub state: TcpState,
    /// Local address and port. IPv4-mapped IPv6 addresses are kept as the kernel reports them.
    pub local: SocketAddr,
    /// Remote address and port; unspecified for listeners and unconnected sockets.
    pub remote: SocketAddr,
    /// Socket inode, the key to `/proc/PID/fd`; 0 for TIME_WAIT and request sockets, which have no file.
    pub inode: u64,
    /// Owner uid.
    pub uid: u32,
    /// For TIME_WAIT only: milliseconds until the kernel frees the 4-tuple (`idiag_expires`).
    /// `None` in other states.
    pub tw_remaining_ms: Option<u32>,
    /// The kernel's socket cookie (`sk:` in `ss -e`; the BPF observer keys
    /// its owners by it). A TIME_WAIT socket keeps the cookie of the
    /// connection it replaced. 0 when read from /proc, which has none.
    pub cookie: u64,
}

/// Which reader produced a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// NETLINK_SOCK_DIAG (inet_diag), as `ss` reads it.
    Netlink,
    /// `/proc/thread-self/net/tcp` and `tcp6`.
    Proc,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Netlink => "netlink",
            Source::Proc => "proc",
        })
    }
}

/// A whole TCP table of one namespace.
#[derive(Debug, Clone)]
pub struct Table {
    /// The sockets, IPv4 first.
    pub sockets: Vec<Socket>,
    /// Where they were read from.
    pub source: Source,
    /// Why the netlink reader was not used, when it was asked for but failed.
    pub fallback_reason: Option<String>,
}

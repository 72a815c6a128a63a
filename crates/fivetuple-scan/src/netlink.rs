//! The socket table over NETLINK_SOCK_DIAG (inet_diag), as `ss` reads it.
//!
//! [`read`] does the I/O: one dump request per address family on a
//! `NETLINK_SOCK_DIAG` socket. Every datagram goes to [`parse_datagram`],
//! a pure function that is unit-tested on synthetic bytes.
//!
//! The netlink socket belongs to the namespace of the thread that creates it
//! (DESIGN §5), so call [`read`] from the thread that is in the target namespace.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage, SOCK_DIAG_BY_FAMILY,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket as NlSocket, SocketAddr as NlAddr};
use std::io;
use std::net::SocketAddr;

use crate::error::ScanError;
use crate::socket::{Socket, TcpState};

/// Size of `struct inet_diag_msg` (include/uapi/linux/inet_diag.h).
const INET_DIAG_MSG_LEN: usize = 72;
/// Offset of `idiag_expires` in `struct inet_diag_msg`: 4 bytes of
/// family/state/timer/retrans, then the 48-byte `struct inet_diag_sockid`.
const IDIAG_EXPIRES_OFFSET: usize = 52;
/// `idiag_timer` value for a TIME_WAIT socket (`inet_twsk_diag_fill()` in net/ipv4/inet_diag.c).
const IDIAG_TIMER_TIME_WAIT: u8 = 3;
/// `TCP_BOUND_INACTIVE` (include/net/tcp_states.h, Linux 6.8+): sockets that
/// called bind() but neither listen() nor connect(). Older kernels ignore the bit.
const TCPF_BOUND_INACTIVE: u32 = 1 << 13;

/// What a datagram left the dump in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` seen: the dump is complete.
    Done,
}

/// The states every dump asks for: all of them, plus bound-inactive
/// sockets when `bound_inactive`.
fn states(bound_inactive: bool) -> u32 {
    StateFlags::all().bits()
        | if bound_inactive {
            TCPF_BOUND_INACTIVE
        } else {
            0
        }
}

/// Encodes the dump request for one address family: TCP, every state
/// (bound-inactive sockets too), no extensions.
pub fn request(family: u8, seq: u32) -> Vec<u8> {
    request_states(family, seq, true)
}

/// [`request`], asking for bound-inactive sockets only when `bound_inactive`.
fn request_states(family: u8, seq: u32, bound_inactive: bool) -> Vec<u8> {
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let req = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        // from_bits_retain keeps TCPF_BOUND_INACTIVE, which the crate's flags lack.
        // TCPF_SYN_RECV also brings request sockets (TCP_NEW_SYN_RECV), see inet_diag_dump_icsk().
        states: StateFlags::from_bits_retain(states(bound_inactive)),
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(SockDiagMessage::InetRequest(req)),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// `TCPDIAG_GETSOCK` (include/uapi/linux/inet_diag.h): the original inet_diag
/// request. Its dump is for both address families at once:
/// `inet_diag_dump_compat()` sets `sdiag_family = AF_UNSPEC`.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// Size of `struct inet_diag_req`: family, src_len, dst_len, ext (4 bytes),
/// the 48-byte `struct inet_diag_sockid`, then `idiag_states` and `idiag_dbs`.
const INET_DIAG_REQ_LEN: usize = 60;

/// Encodes a `TCPDIAG_GETSOCK` dump request for every state of both families.
///
/// Why it exists: the kernel keeps one TCP hash table for every network
/// namespace and walks all of it for each dump, skipping other
/// namespaces' sockets (`inet_diag_dump_icsk()`). One dump per family, as
/// [`request`] asks, walks it twice; this request walks it once. On a node
/// with 100,000 sockets that halved the dump of a 500-socket namespace
/// (docs/BENCHMARKS.md). netlink-packet-sock-diag has no type for this
/// request, hence the bytes here.
pub fn request_all_families(seq: u32) -> Vec<u8> {
    request_all_families_states(seq, true)
}

/// [`request_all_families`], asking for bound-inactive sockets only when `bound_inactive`.
fn request_all_families_states(seq: u32, bound_inactive: bool) -> Vec<u8> {
    let states = states(bound_inactive);
    let len = 16 + INET_DIAG_REQ_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // family (ignored by the dump), src_len, dst_len, ext; then a zero sockid.
    buf.extend_from_slice(&[0u8; 4 + 48]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

/// Parses one datagram of a dump answer, appending each TCP socket to `out`.
///
/// Messages whose sequence number is not `seq` are skipped (stale answers).
/// A dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is still
/// used: the table is a snapshot of a moving system either way.
pub fn parse_datagram(buf: &[u8], seq: u32, out: &mut Vec<Socket>) -> Result<Progress, ScanError> {
    let mut offset = 0usize;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let msg = NetlinkBuffer::new_checked(rest).map_err(|e| ScanError::Decode {
            offset,
            reason: e.to_string(),
        })?;
        let len = msg.length() as usize;
        if len < 16 {
            return Err(ScanError::Decode {
                offset,
                reason: format!("nlmsg_len {len} is shorter than the 16-byte header"),
            });
        }
        let _interrupted = msg.flags() & NLM_F_DUMP_INTR != 0;
        if msg.sequence_number() == seq {
            match msg.message_type() {
                NLMSG_DONE => return Ok(Progress::Done),
                NLMSG_ERROR => {
                    let p = msg.payload();
                    let errno = nlmsg_errno(p);
                    return Err(ScanError::Netlink {
                        step: "dump",
                        source: io::Error::from_raw_os_error(errno.saturating_abs()),
                    });
                }
                // The answer has the request's type: SOCK_DIAG_BY_FAMILY, or
                // TCPDIAG_GETSOCK for [`request_all_families`]; same layout.
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    if let Some(s) = parse_inet_diag_msg(msg.payload())
                        .map_err(|reason| ScanError::Decode { offset, reason })?
                    {
                        out.push(s);
                    }
                }
                _ => {}
            }
        }
        // NLMSG_ALIGN(nlmsg_len)
        let step = (len + 3) & !3;
        offset = offset.saturating_add(step);
    }
    Ok(Progress::More)
}

/// The errno an NLMSG_ERROR payload carries (negative, as the kernel writes
/// it; 0 for an ACK or a payload too short to hold one).
pub(crate) fn nlmsg_errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Parses one `struct inet_diag_msg` (include/uapi/linux/inet_diag.h).
///
/// The header goes through the crate's `InetResponseHeader`. The crate
/// drops `idiag_expires` for TIME_WAIT sockets (it maps timer 3 to
/// `Timer::TimeWait` without a duration), so the remaining time is read from
/// the raw bytes here; the kernel fills it in `inet_twsk_diag_fill()` as
/// milliseconds, in host byte order.
fn parse_inet_diag_msg(payload: &[u8]) -> Result<Option<Socket>, String> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return Err(format!(
            "inet_diag_msg is {} bytes, expected at least {INET_DIAG_MSG_LEN}",
            payload.len()
        ));
    }
    let header =
        InetResponseHeader::parse(&payload[..INET_DIAG_MSG_LEN]).map_err(|e| e.to_string())?;
    let Some(state) = TcpState::from_kernel(header.state) else {
        // An unknown future state: skip rather than fail the whole table.
        return Ok(None);
    };
    let tw_remaining_ms = if state == TcpState::TimeWait {
        let timer = payload[2];
        let b = &payload[IDIAG_EXPIRES_OFFSET..IDIAG_EXPIRES_OFFSET + 4];
        let ms = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        Some(if timer == IDIAG_TIMER_TIME_WAIT {
            ms
        } else {
            0
        })
    } else {
        None
    };
    let id = &header.socket_id;
    Ok(Some(Socket {
        state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        inode: u64::from(header.inode),
        uid: header.uid,
        tw_remaining_ms,
        cookie: u64::from_ne_bytes(id.cookie),
    }))
}

/// Reads the whole TCP table of the calling thread's network namespace: one
/// dump for both families ([`request_all_families`]), or, if the kernel
/// refuses that request, one dump per family (IPv4 then IPv6).
pub fn read() -> Result<Vec<Socket>, ScanError> {
    read_states(true)
}

/// [`read`], without the sockets that called `bind()` but neither
/// `listen()` nor `connect()` (`TCP_BOUND_INACTIVE`, Linux 6.8+).
///
/// Why it exists: to find those, `inet_diag_dump_icsk()` walks the bind
/// hash, which every namespace shares even when it has an established hash
/// of its own (`tcp_child_ehash_entries`), and which holds a bucket per
/// port in use on the whole node. On 200 namespaces × 500 sockets that
/// walk was most of each namespace's dump (docs/BENCHMARKS.md), so a scan
/// of every namespace ([`crate::node::scan_all`]) leaves it out. Before
/// Linux 6.8 the kernel has no such walk and both reads are the same.
pub fn read_without_bound_inactive() -> Result<Vec<Socket>, ScanError> {
    read_states(false)
}

fn read_states(bound_inactive: bool) -> Result<Vec<Socket>, ScanError> {
    let mut sock = NlSocket::new(NETLINK_SOCK_DIAG).map_err(|source| ScanError::Netlink {
        step: "socket",
        source,
    })?;
    sock.bind_auto().map_err(|source| ScanError::Netlink {
        step: "bind",
        source,
    })?;
    let mut out = Vec::with_capacity(1024);
    // 32 KiB is what the kernel puts in one dump skb; twice that never truncates.
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let all = request_all_families_states(1, bound_inactive);
    match dump(&mut sock, &all, 1, &mut buf, &mut out) {
        Ok(()) => return Ok(out),
        Err(ScanError::Netlink { step: "dump", .. }) => out.clear(),
        Err(e) => return Err(e),
    }
    for (i, family) in [AF_INET, AF_INET6].into_iter().enumerate() {
        let seq = 2 + i as u32;
        let req = request_states(family, seq, bound_inactive);
        dump(&mut sock, &req, seq, &mut buf, &mut out)?;
    }
    Ok(out)
}

/// Sends one dump request and parses the answer until `NLMSG_DONE`.
fn dump(
    sock: &mut NlSocket,
    req: &[u8],
    seq: u32,
    buf: &mut Vec<u8>,
    out: &mut Vec<Socket>,
) -> Result<(), ScanError> {
    exchange(
        sock,
        req,
        buf,
        |step, source| ScanError::Netlink { step, source },
        |b| parse_datagram(b, seq, out),
    )
}

/// Sends `req` and feeds every answer datagram to `parse` until it reports
/// [`Progress::Done`] (or the socket reads 0 bytes). The one send/receive
/// loop of every netlink dump in this crate (inet_diag here, ctnetlink and
/// nftables in `nat`); `on_io` names the failed step (`send`, `recv`) in the
/// caller's error type.
pub(crate) fn exchange<E>(
    sock: &mut NlSocket,
    req: &[u8],
    buf: &mut Vec<u8>,
    on_io: impl Fn(&'static str, std::io::Error) -> E,
    mut parse: impl FnMut(&[u8]) -> Result<Progress, E>,
) -> Result<(), E> {
    sock.send_to(req, &NlAddr::new(0, 0), 0)
        .map_err(|e| on_io("send", e))?;
    loop {
        buf.clear();
        let n = sock.recv(buf, 0).map_err(|e| on_io("recv", e))?;
        if n == 0 || parse(buf)? == Progress::Done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// Builds one SOCK_DIAG_BY_FAMILY message as the kernel lays it out.
    #[allow(clippy::too_many_arguments)]
    fn diag_msg(
        seq: u32,
        family: u8,
        state: u8,
        timer: u8,
        local: SocketAddr,
        remote: SocketAddr,
        expires: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = family;
        p[1] = state;
        p[2] = timer;
        p[4..6].copy_from_slice(&local.port().to_be_bytes());
        p[6..8].copy_from_slice(&remote.port().to_be_bytes());
        let put = |p: &mut [u8], at: usize, ip: IpAddr| match ip {
            IpAddr::V4(v) => p[at..at + 4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => p[at..at + 16].copy_from_slice(&v.octets()),
        };
        put(&mut p, 8, local.ip());
        put(&mut p, 24, remote.ip());
        p[52..56].copy_from_slice(&expires.to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&inode.to_ne_bytes());
        nl(seq, SOCK_DIAG_BY_FAMILY, &p)
    }

    fn nl(seq: u32, ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
    }

    #[test]
    fn parses_time_wait_with_remaining_time_and_established_with_inode() {
        let mut dgram = diag_msg(
            7,
            AF_INET,
            6,
            3,
            v4([127, 0, 0, 1], 40000),
            v4([127, 0, 0, 1], 8080),
            41_500,
            0,
        );
        dgram.extend(diag_msg(
            7,
            AF_INET,
            1,
            2,
            v4([127, 0, 0, 2], 40001),
            v4([127, 0, 0, 1], 8081),
            7200,
            4242,
        ));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 7, &mut out).unwrap(), Progress::More);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, TcpState::TimeWait);
        assert_eq!(out[0].tw_remaining_ms, Some(41_500));
        assert_eq!(out[0].local, v4([127, 0, 0, 1], 40000));
        assert_eq!(out[0].remote, v4([127, 0, 0, 1], 8080));
        assert_eq!(out[1].state, TcpState::Established);
        assert_eq!(out[1].tw_remaining_ms, None);
        assert_eq!(out[1].inode, 4242);
        assert_eq!(out[1].uid, 1000);
    }

    #[test]
    fn parses_ipv6_and_maps_request_sockets_to_syn_recv() {
        let l = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080);
        let r = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 50000);
        let dgram = diag_msg(1, AF_INET6, 12, 1, l, r, 900, 0);
        let mut out = Vec::new();
        parse_datagram(&dgram, 1, &mut out).unwrap();
        assert_eq!(out[0].state, TcpState::SynRecv);
        assert_eq!(out[0].local, l);
        assert_eq!(out[0].remote, r);
    }

    #[test]
    fn done_ends_the_dump_and_stale_sequence_numbers_are_ignored() {
        let mut dgram = diag_msg(
            99,
            AF_INET,
            1,
            0,
            v4([1, 2, 3, 4], 1),
            v4([5, 6, 7, 8], 2),
            0,
            1,
        );
        dgram.extend(nl(3, NLMSG_DONE, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 3, &mut out).unwrap(), Progress::Done);
        assert!(
            out.is_empty(),
            "message with seq 99 must be skipped: {out:?}"
        );
    }

    #[test]
    fn nlmsg_error_becomes_an_os_error() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 16]);
        let dgram = nl(5, NLMSG_ERROR, &payload);
        let err = parse_datagram(&dgram, 5, &mut Vec::new()).unwrap_err();
        match err {
            ScanError::Netlink { step, source } => {
                assert_eq!(step, "dump");
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let good = diag_msg(
            1,
            AF_INET,
            1,
            0,
            v4([1, 2, 3, 4], 1),
            v4([5, 6, 7, 8], 2),
            0,
            1,
        );
        for cut in [3, 15, 20, good.len() - 1] {
            assert!(
                parse_datagram(&good[..cut], 1, &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
        // nlmsg_len smaller than a header
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_datagram(&bad, 1, &mut Vec::new()).is_err());
        // a short inet_diag_msg
        let short = nl(1, SOCK_DIAG_BY_FAMILY, &[2u8; 20]);
        assert!(parse_datagram(&short, 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn request_matches_the_uapi_layout() {
        let req = request(AF_INET6, 42);
        assert_eq!(req.len(), 16 + 56, "nlmsghdr + inet_diag_req_v2");
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(
            u16::from_ne_bytes([req[6], req[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 42);
        assert_eq!(req[16], AF_INET6);
        assert_eq!(req[17], IPPROTO_TCP);
        let states = u32::from_ne_bytes(req[20..24].try_into().unwrap());
        assert_eq!(states & (1 << 6), 1 << 6, "TIME_WAIT requested");
        assert_eq!(states & TCPF_BOUND_INACTIVE, TCPF_BOUND_INACTIVE);
    }

    #[test]
    fn the_one_walk_request_matches_struct_inet_diag_req() {
        let req = request_all_families(9);
        assert_eq!(req.len(), 16 + 60);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), TCPDIAG_GETSOCK);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 9);
        let states = u32::from_ne_bytes(req[16 + 52..16 + 56].try_into().unwrap());
        assert_eq!(states, StateFlags::all().bits() | TCPF_BOUND_INACTIVE);
        assert!(
            req[16..16 + 52].iter().all(|b| *b == 0),
            "any family, any address"
        );
    }

    #[test]
    fn answers_to_the_one_walk_request_are_parsed() {
        let l: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let r: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut m = diag_msg(3, AF_INET, 1, 0, l, r, 0, 7);
        m[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&m, 3, &mut out).unwrap(), Progress::More);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].local, out[0].remote), (l, r));
    }
}

//! The conntrack table and its statistics over `NETLINK_NETFILTER` (ctnetlink),
//! as `conntrack -L` and `conntrack -S` read them.
//!
//! The I/O ([`dump`], [`read_stats`]) sends one request and hands every
//! datagram to a pure parser ([`parse_dump`], [`parse_stats_cpu`],
//! [`parse_stats_global`]) that is tested on bytes captured from a real
//! dump (`tests/fixtures/`). Messages are decoded with `netlink-packet-netfilter`
//! (rust-netlink); only the statistics, which that crate leaves as raw
//! attributes, are read attribute by attribute with `netlink-packet-core`.
//!
//! The netlink socket belongs to the namespace of the thread that creates it
//! (DESIGN §5): call these from a thread inside the target namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator,
    NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as NlSocket};
use serde::Serialize;

use super::NatError;

/// `NFNL_SUBSYS_CTNETLINK` (include/uapi/linux/netfilter/nfnetlink.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: what each dumped entry arrives as (nfnetlink_conntrack.h).
const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET_STATS_CPU`: one message per possible CPU.
const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`: entries and the table limit.
const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
/// `CTA_STATUS_MASK` (enum ctattr_type): with `CTA_STATUS`, a dump filter on
/// status bits, honoured by `ctnetlink_alloc_filter()` in recent kernels;
/// older kernels ignore it, so callers check [`Entry::is_snat`] again.
const CTA_STATUS_MASK: u16 = 26;
/// `IPS_SRC_NAT` (include/uapi/linux/netfilter/nf_conntrack_common.h): set by
/// `nf_nat_setup_info()` when source NAT changed the tuple.
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u8 = 6;

pub use crate::netlink::Progress;

/// A conntrack TCP state (`enum tcp_conntrack`,
/// include/uapi/linux/netfilter/nf_conntrack_tcp.h), named as `conntrack -L` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CtTcpState {
    /// `TCP_CONNTRACK_NONE`.
    None,
    /// `TCP_CONNTRACK_SYN_SENT`: a SYN went out, no answer yet.
    SynSent,
    /// `TCP_CONNTRACK_SYN_RECV`.
    SynRecv,
    /// `TCP_CONNTRACK_ESTABLISHED`.
    Established,
    /// `TCP_CONNTRACK_FIN_WAIT`.
    FinWait,
    /// `TCP_CONNTRACK_CLOSE_WAIT`.
    CloseWait,
    /// `TCP_CONNTRACK_LAST_ACK`.
    LastAck,
    /// `TCP_CONNTRACK_TIME_WAIT`: kept `nf_conntrack_tcp_timeout_time_wait` (120 s by default).
    TimeWait,
    /// `TCP_CONNTRACK_CLOSE`: after a RST.
    Close,
    /// `TCP_CONNTRACK_SYN_SENT2` (was `LISTEN`): simultaneous open.
    SynSent2,
}

impl CtTcpState {
    /// Every state, in kernel order.
    pub const ALL: [CtTcpState; 10] = [
        CtTcpState::None,
        CtTcpState::SynSent,
        CtTcpState::SynRecv,
        CtTcpState::Established,
        CtTcpState::FinWait,
        CtTcpState::CloseWait,
        CtTcpState::LastAck,
        CtTcpState::TimeWait,
        CtTcpState::Close,
        CtTcpState::SynSent2,
    ];

    /// The state for a kernel value, `None` for a value this crate does not know.
    pub fn from_kernel(v: u8) -> Option<CtTcpState> {
        CtTcpState::ALL.get(usize::from(v)).copied()
    }

    /// The name `conntrack -L` prints (`ESTABLISHED`, `TIME_WAIT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            CtTcpState::None => "NONE",
            CtTcpState::SynSent => "SYN_SENT",
            CtTcpState::SynRecv => "SYN_RECV",
            CtTcpState::Established => "ESTABLISHED",
            CtTcpState::FinWait => "FIN_WAIT",
            CtTcpState::CloseWait => "CLOSE_WAIT",
            CtTcpState::LastAck => "LAST_ACK",
            CtTcpState::TimeWait => "TIME_WAIT",
            CtTcpState::Close => "CLOSE",
            CtTcpState::SynSent2 => "SYN_SENT2",
        }
    }

    /// Index into [`CtTcpState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One TCP conntrack entry: both tuples, the status bits and the TCP state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Original direction: the initiator's source and destination, before NAT.
    pub orig_src: SocketAddr,
    /// Original destination.
    pub orig_dst: SocketAddr,
    /// Reply direction source: the real destination (after any DNAT).
    pub reply_src: SocketAddr,
    /// Reply direction destination: the initiator as the peer sees it, after SNAT.
    pub reply_dst: SocketAddr,
    /// `CTA_STATUS` bits (`IPS_*`).
    pub status: u32,
    /// `CTA_PROTOINFO_TCP_STATE`; `None` when the kernel sent no TCP state.
    pub state: Option<CtTcpState>,
}

impl Entry {
    /// True when source NAT rewrote this connection (`IPS_SRC_NAT`).
    pub fn is_snat(&self) -> bool {
        self.status & IPS_SRC_NAT != 0
    }
}

fn nfgen(family: NetfilterProtoFamily, msg: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Encodes a dump request for every address family. With `snat_only` it asks
/// the kernel to send only entries with `IPS_SRC_NAT` set (a status filter).
pub fn dump_request(seq: u32, snat_only: bool) -> Vec<u8> {
    let attrs = if snat_only {
        vec![
            ConntrackAttribute::CtaStatus(
                netlink_packet_netfilter::conntrack::Status::from_bits_retain(IPS_SRC_NAT),
            ),
            ConntrackAttribute::Other(netlink_packet_core::DefaultNla::new(
                CTA_STATUS_MASK,
                IPS_SRC_NAT.to_be_bytes().to_vec(),
            )),
        ]
    } else {
        Vec::new()
    };
    nfgen(
        NetfilterProtoFamily::Unspec,
        ConntrackMessage::Get(attrs),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Encodes the per-CPU statistics dump request (`conntrack -S`).
pub fn stats_cpu_request(seq: u32) -> Vec<u8> {
    nfgen(
        NetfilterProtoFamily::Unspec,
        ConntrackMessage::Other {
            message_type: IPCTNL_MSG_CT_GET_STATS_CPU,
            attributes: Vec::new(),
        },
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// Encodes the global statistics request (`conntrack -C`: entries and limit).
pub fn stats_global_request(seq: u32) -> Vec<u8> {
    nfgen(
        NetfilterProtoFamily::Unspec,
        ConntrackMessage::Other {
            message_type: IPCTNL_MSG_CT_GET_STATS,
            attributes: Vec::new(),
        },
        NLM_F_REQUEST,
        seq,
    )
}

/// Walks the netlink messages of one datagram: calls `each` with the
/// message type and payload of every message carrying `seq`, stops at
/// `NLMSG_DONE`, and turns `NLMSG_ERROR` (other than an ACK) into an error.
pub(super) fn walk(
    buf: &[u8],
    seq: u32,
    mut each: impl FnMut(u16, &[u8], usize) -> Result<(), NatError>,
) -> Result<Progress, NatError> {
    let mut offset = 0usize;
    while offset < buf.len() {
        let msg = NetlinkBuffer::new_checked(&buf[offset..]).map_err(|e| NatError::Decode {
            offset,
            reason: e.to_string(),
        })?;
        let len = msg.length() as usize;
        if len < 16 {
            return Err(NatError::Decode {
                offset,
                reason: format!("nlmsg_len {len} is shorter than the 16-byte header"),
            });
        }
        if msg.sequence_number() == seq {
            match msg.message_type() {
                NLMSG_DONE => return Ok(Progress::Done),
                NLMSG_ERROR => {
                    let p = msg.payload();
                    let errno = crate::netlink::nlmsg_errno(p);
                    if errno == 0 {
                        // An ACK ends a non-dump request.
                        return Ok(Progress::Done);
                    }
                    return Err(NatError::Netlink {
                        step: "request",
                        source: io::Error::from_raw_os_error(errno.saturating_abs()),
                    });
                }
                ty => each(ty, msg.payload(), offset)?,
            }
        }
        offset = offset.saturating_add((len + 3) & !3);
    }
    Ok(Progress::More)
}

/// Parses one datagram of a conntrack dump, calling `each` for every TCP entry.
///
/// Messages with another sequence number are skipped (stale answers);
/// non-TCP entries are skipped.
///
/// The entry attributes are walked here with `netlink-packet-core`'s checked
/// `NlasIterator` rather than decoded into netlink-packet-netfilter's
/// `ConntrackMessage`: that decode allocates a `Vec` per nesting level and
/// copies every attribute it does not model (counters, timestamps, ids), and
/// at 100k entries (benches/nat.rs) it cost about 4 µs per entry on top of
/// the kernel's 3.2 µs, more than the dump itself; this walk allocates
/// nothing. The tests check it against the crate's decode on a captured dump.
pub fn parse_dump(
    buf: &[u8],
    seq: u32,
    each: &mut impl FnMut(Entry),
) -> Result<Progress, NatError> {
    walk(buf, seq, |ty, payload, offset| {
        if ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
            return Ok(());
        }
        let body = payload.get(4..).ok_or_else(|| NatError::Decode {
            offset,
            reason: "message shorter than struct nfgenmsg".into(),
        })?;
        if let Some(e) = entry(body).map_err(|reason| NatError::Decode { offset, reason })? {
            each(e);
        }
        Ok(())
    })
}

/// `(type without flags, value)` of each attribute in `buf`.
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    NlasIterator::new(buf).map(|nla| {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|e| e.to_string())?;
        let (kind, len) = (nla.kind() & NLA_TYPE_MASK, usize::from(nla.length()));
        let raw: &[u8] = nla.into_inner();
        // NlasIterator checked 4 <= nla_len <= the remaining bytes.
        Ok((kind, &raw[4..len]))
    })
}

fn ip_of(v: &[u8], what: &str) -> Result<IpAddr, String> {
    match v.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(v).expect("length checked"),
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(v).expect("length checked"),
        )),
        n => Err(format!("{what} is {n} bytes, expected 4 or 16")),
    }
}

fn port_of(v: &[u8], what: &str) -> Result<u16, String> {
    v.get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("{what} is {} bytes, expected 2", v.len()))
}

/// One `CTA_TUPLE_*` (`ctnetlink_dump_tuples()`): source, destination and
/// the protocol number; `None` source/destination when absent.
fn tuple(buf: &[u8], which: &str) -> Result<(SocketAddr, SocketAddr, u8), String> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, 0, 0, 0);
    for a in attrs(buf) {
        match a? {
            // CTA_TUPLE_IP: CTA_IP_V4_SRC/DST (1/2), CTA_IP_V6_SRC/DST (3/4).
            (1, ip) => {
                for a in attrs(ip) {
                    match a? {
                        (1 | 3, v) => src = Some(ip_of(v, "CTA_IP_*_SRC")?),
                        (2 | 4, v) => dst = Some(ip_of(v, "CTA_IP_*_DST")?),
                        _ => {}
                    }
                }
            }
            // CTA_TUPLE_PROTO: CTA_PROTO_NUM (1), CTA_PROTO_SRC_PORT/DST_PORT (2/3).
            (2, p) => {
                for a in attrs(p) {
                    match a? {
                        (1, v) => {
                            proto = *v.first().ok_or("CTA_PROTO_NUM is empty")?;
                        }
                        (2, v) => sport = port_of(v, "CTA_PROTO_SRC_PORT")?,
                        (3, v) => dport = port_of(v, "CTA_PROTO_DST_PORT")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst) {
        (Some(s), Some(d)) => Ok((SocketAddr::new(s, sport), SocketAddr::new(d, dport), proto)),
        _ => Err(format!("{which} lacks an address")),
    }
}

/// One entry's attributes (`ctnetlink_fill_info()`); `None` for non-TCP.
fn entry(body: &[u8]) -> Result<Option<Entry>, String> {
    let (mut orig, mut reply, mut status, mut state) = (None, None, 0, None);
    for a in attrs(body) {
        match a? {
            (1, t) => {
                let (s, d, proto) = tuple(t, "CTA_TUPLE_ORIG")?;
                if proto != IPPROTO_TCP {
                    return Ok(None);
                }
                orig = Some((s, d));
            }
            (2, t) => reply = Some(tuple(t, "CTA_TUPLE_REPLY")?),
            (3, v) => {
                status = u32::from_be_bytes(
                    v.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| format!("CTA_STATUS is {} bytes, expected 4", v.len()))?,
                )
            }
            // CTA_PROTOINFO { CTA_PROTOINFO_TCP { CTA_PROTOINFO_TCP_STATE } }
            (4, info) => {
                for a in attrs(info) {
                    if let (1, tcp) = a? {
                        for a in attrs(tcp) {
                            if let (1, v) = a? {
                                state = v.first().and_then(|s| CtTcpState::from_kernel(*s));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    match (orig, reply) {
        (Some((orig_src, orig_dst)), Some((reply_src, reply_dst, _))) => Ok(Some(Entry {
            orig_src,
            orig_dst,
            reply_src,
            reply_dst,
            status,
            state,
        })),
        (None, _) => Ok(None),
        (Some(_), None) => {
            Err("a TCP entry without both CTA_TUPLE_ORIG and CTA_TUPLE_REPLY".into())
        }
    }
}

/// Conntrack statistics of one namespace: the per-CPU counters summed
/// (`conntrack -S`, `/proc/net/stat/nf_conntrack`) and the table fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `CTA_STATS_FOUND`.
    pub found: u64,
    /// `CTA_STATS_INVALID`: packets conntrack could not track.
    pub invalid: u64,
    /// `CTA_STATS_INSERT`.
    pub insert: u64,
    /// `CTA_STATS_INSERT_FAILED`: a new entry clashed at confirmation, e.g.
    /// source NAT found no free tuple; the packet was dropped.
    pub insert_failed: u64,
    /// `CTA_STATS_DROP`: packets dropped by conntrack (a clash it could not
    /// resolve, or a full table).
    pub drop: u64,
    /// `CTA_STATS_EARLY_DROP`: entries evicted to make room in a full table.
    pub early_drop: u64,
    /// `CTA_STATS_ERROR`.
    pub error: u64,
    /// `CTA_STATS_SEARCH_RESTART`.
    pub search_restart: u64,
    /// `CTA_STATS_CLASH_RESOLVE` (Linux 5.10+).
    pub clash_resolve: u64,
    /// `CTA_STATS_CHAIN_TOOLONG` (Linux 6.2+).
    pub chain_toolong: u64,
    /// `CTA_STATS_GLOBAL_ENTRIES`: entries in this namespace (`nf_conntrack_count`).
    pub count: u64,
    /// `CTA_STATS_GLOBAL_MAX_ENTRIES`: the table limit (`nf_conntrack_max`, host-wide).
    pub max: u64,
    /// How many CPU records were summed.
    pub cpus: u32,
}

fn be_u32(v: &[u8], what: &str) -> Result<u64, String> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{what} is {} bytes, expected 4", v.len()))?;
    Ok(u64::from(u32::from_be_bytes(b)))
}

/// The attributes after the 4-byte `struct nfgenmsg`.
fn nlas(payload: &[u8], offset: usize) -> Result<Vec<(u16, &[u8])>, NatError> {
    let body = payload.get(4..).ok_or_else(|| NatError::Decode {
        offset,
        reason: "message shorter than struct nfgenmsg".into(),
    })?;
    let mut out = Vec::new();
    for nla in NlasIterator::new(body) {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|e| NatError::Decode {
            offset,
            reason: e.to_string(),
        })?;
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        let raw: &[u8] = nla.into_inner();
        // NlasIterator checked 4 <= nla_len <= the remaining bytes.
        out.push((kind, &raw[4..len]));
    }
    Ok(out)
}

/// Parses one datagram of the per-CPU statistics dump, adding each CPU's
/// counters into `into` (`ctnetlink_ct_stat_cpu_fill_info()`).
pub fn parse_stats_cpu(buf: &[u8], seq: u32, into: &mut Stats) -> Result<Progress, NatError> {
    let want = (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(IPCTNL_MSG_CT_GET_STATS_CPU);
    walk(buf, seq, |ty, payload, offset| {
        if ty != want {
            return Ok(());
        }
        into.cpus += 1;
        for (kind, v) in nlas(payload, offset)? {
            let field = match kind {
                2 => &mut into.found,
                4 => &mut into.invalid,
                8 => &mut into.insert,
                9 => &mut into.insert_failed,
                10 => &mut into.drop,
                11 => &mut into.early_drop,
                12 => &mut into.error,
                13 => &mut into.search_restart,
                14 => &mut into.clash_resolve,
                15 => &mut into.chain_toolong,
                _ => continue,
            };
            *field += be_u32(v, "a CTA_STATS_* counter")
                .map_err(|reason| NatError::Decode { offset, reason })?;
        }
        Ok(())
    })
}

/// Parses the answer to [`stats_global_request`] (`ctnetlink_stat_ct_fill_info()`).
pub fn parse_stats_global(buf: &[u8], seq: u32, into: &mut Stats) -> Result<Progress, NatError> {
    let want = (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(IPCTNL_MSG_CT_GET_STATS);
    let mut seen = false;
    let p = walk(buf, seq, |ty, payload, offset| {
        if ty != want {
            return Ok(());
        }
        seen = true;
        for (kind, v) in nlas(payload, offset)? {
            let field = match kind {
                1 => &mut into.count,
                2 => &mut into.max,
                _ => continue,
            };
            *field = be_u32(v, "a CTA_STATS_GLOBAL_* value")
                .map_err(|reason| NatError::Decode { offset, reason })?;
        }
        Ok(())
    })?;
    // The answer is a single message without NLMSG_DONE.
    Ok(if seen { Progress::Done } else { p })
}

/// A `NETLINK_NETFILTER` socket of the calling thread's namespace.
pub(super) fn socket() -> Result<NlSocket, NatError> {
    let mut sock = NlSocket::new(NETLINK_NETFILTER).map_err(|source| NatError::Netlink {
        step: "socket",
        source,
    })?;
    sock.bind_auto().map_err(|source| NatError::Netlink {
        step: "bind",
        source,
    })?;
    Ok(sock)
}

/// Sends `req` and feeds every answer datagram to `parse` until it reports
/// [`Progress::Done`] (the crate's one netlink loop, with this module's error).
pub(super) fn exchange(
    sock: &mut NlSocket,
    req: &[u8],
    buf: &mut Vec<u8>,
    parse: impl FnMut(&[u8]) -> Result<Progress, NatError>,
) -> Result<(), NatError> {
    crate::netlink::exchange(
        sock,
        req,
        buf,
        |step, source| NatError::Netlink { step, source },
        parse,
    )
}

/// Dumps the TCP conntrack entries of the calling thread's namespace,
/// calling `each` for every one. With `snat_only` the kernel is asked for
/// source-NATed entries only (older kernels send all; filter on [`Entry::is_snat`]).
pub fn dump(snat_only: bool, mut each: impl FnMut(Entry)) -> Result<(), NatError> {
    let mut sock = socket()?;
    // ctnetlink fills up to 32 KiB per dump skb (netlink_dump); 64 KiB never truncates.
    let mut buf = Vec::with_capacity(64 * 1024);
    exchange(&mut sock, &dump_request(1, snat_only), &mut buf, |b| {
        parse_dump(b, 1, &mut each)
    })
}

/// Reads the conntrack statistics of the calling thread's namespace.
pub fn read_stats() -> Result<Stats, NatError> {
    let mut sock = socket()?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut stats = Stats::default();
    exchange(&mut sock, &stats_cpu_request(1), &mut buf, |b| {
        parse_stats_cpu(b, 1, &mut stats)
    })?;
    exchange(&mut sock, &stats_global_request(2), &mut buf, |b| {
        parse_stats_global(b, 2, &mut stats)
    })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured in a namespace that masquerades 198.18.1.0/24 with
    // `--to-ports 20000-20099` (tests/fixtures/nat/README.md): the raw
    // answers, and `conntrack -L` / `-S` / `-C` taken right after.
    const DUMP: &[u8] = include_bytes!("../../tests/fixtures/nat/masq-dump.bin");
    const STATS_CPU: &[u8] = include_bytes!("../../tests/fixtures/nat/masq-stats-cpu.bin");
    const STATS_GLOBAL: &[u8] = include_bytes!("../../tests/fixtures/nat/masq-stats-global.bin");
    const LIST: &str = include_str!("../../tests/fixtures/nat/masq-conntrack-L.txt");
    const STATS_TEXT: &str = include_str!("../../tests/fixtures/nat/masq-conntrack-S.txt");

    /// `(state, orig src, orig dst, reply src, reply dst)` of each `conntrack -L` line.
    fn listed() -> Vec<(String, SocketAddr, SocketAddr, SocketAddr, SocketAddr)> {
        LIST.lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let vals = |key: &str| -> Vec<&str> {
                    w.iter().filter_map(|x| x.strip_prefix(key)).collect()
                };
                let (src, dst, sp, dp) =
                    (vals("src="), vals("dst="), vals("sport="), vals("dport="));
                let a = |i: usize, ip: &Vec<&str>, p: &Vec<&str>| {
                    SocketAddr::new(ip[i].parse().unwrap(), p[i].parse().unwrap())
                };
                (
                    w[3].to_string(),
                    a(0, &src, &sp),
                    a(0, &dst, &dp),
                    a(1, &src, &sp),
                    a(1, &dst, &dp),
                )
            })
            .collect()
    }

    #[test]
    fn captured_dump_matches_conntrack_list() {
        let mut got = Vec::new();
        assert_eq!(
            parse_dump(DUMP, 1, &mut |e| got.push(e)).unwrap(),
            Progress::Done
        );
        let mut got: Vec<_> = got
            .iter()
            .map(|e| {
                assert!(e.is_snat(), "{e:?}");
                (
                    e.state.unwrap().name().to_string(),
                    e.orig_src,
                    e.orig_dst,
                    e.reply_src,
                    e.reply_dst,
                )
            })
            .collect();
        let mut want = listed();
        got.sort();
        want.sort();
        assert_eq!(want.len(), 5);
        assert_eq!(got, want);
    }

    /// The same entries through netlink-packet-netfilter's full decode.
    fn decoded_by_the_crate(buf: &[u8]) -> Vec<Entry> {
        use netlink_packet_core::ParseableParametrized;
        use netlink_packet_netfilter::conntrack::{
            IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
        };
        use netlink_packet_netfilter::NetfilterMessageInner;
        let tuple = |t: &[Tuple]| {
            let (mut s, mut d, mut sp, mut dp) = (None, None, 0, 0);
            for part in t {
                match part {
                    Tuple::Ip(ips) => ips.iter().for_each(|ip| match ip {
                        IPTuple::SourceAddress(a) => s = Some(*a),
                        IPTuple::DestinationAddress(a) => d = Some(*a),
                        _ => {}
                    }),
                    Tuple::Proto(ps) => ps.iter().for_each(|p| match p {
                        ProtoTuple::SourcePort(v) => sp = *v,
                        ProtoTuple::DestinationPort(v) => dp = *v,
                        _ => {}
                    }),
                    _ => {}
                }
            }
            (
                SocketAddr::new(s.unwrap(), sp),
                SocketAddr::new(d.unwrap(), dp),
            )
        };
        let mut out = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let m = NetlinkBuffer::new_checked(&buf[off..]).unwrap();
            let len = m.length() as usize;
            if m.message_type() == (1 << 8) {
                let msg =
                    NetfilterMessage::parse_with_param(m.payload(), m.message_type()).unwrap();
                let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = msg.inner
                else {
                    panic!("not a conntrack entry")
                };
                let mut e = Entry {
                    orig_src: "0.0.0.0:0".parse().unwrap(),
                    orig_dst: "0.0.0.0:0".parse().unwrap(),
                    reply_src: "0.0.0.0:0".parse().unwrap(),
                    reply_dst: "0.0.0.0:0".parse().unwrap(),
                    status: 0,
                    state: None,
                };
                for a in &attrs {
                    match a {
                        ConntrackAttribute::CtaTupleOrig(t) => (e.orig_src, e.orig_dst) = tuple(t),
                        ConntrackAttribute::CtaTupleReply(t) => {
                            (e.reply_src, e.reply_dst) = tuple(t)
                        }
                        ConntrackAttribute::CtaStatus(st) => e.status = st.bits(),
                        ConntrackAttribute::CtaProtoInfo(i) => {
                            for info in i {
                                if let ProtoInfo::TCP(parts) = info {
                                    for p in parts {
                                        if let ProtoInfoTCP::State(v) = p {
                                            e.state = CtTcpState::from_kernel(*v);
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                out.push(e);
            }
            off += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn hand_walk_equals_the_crate_decode_on_the_captured_dump() {
        let mut ours = Vec::new();
        parse_dump(DUMP, 1, &mut |e| ours.push(e)).unwrap();
        let theirs = decoded_by_the_crate(DUMP);
        assert_eq!(ours.len(), 5);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn captured_stats_match_conntrack_s_and_c() {
        let mut s = Stats::default();
        assert_eq!(
            parse_stats_cpu(STATS_CPU, 1, &mut s).unwrap(),
            Progress::Done
        );
        assert_eq!(
            parse_stats_global(STATS_GLOBAL, 2, &mut s).unwrap(),
            Progress::Done
        );
        let cpu_lines = STATS_TEXT.lines().filter(|l| l.starts_with("cpu=")).count();
        assert_eq!(s.cpus as usize, cpu_lines);
        let sum = |key: &str| -> u64 {
            STATS_TEXT
                .split_whitespace()
                .filter_map(|w| w.strip_prefix(key))
                .map(|v| v.parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(s.insert_failed, sum("insert_failed="));
        assert_eq!(s.drop, sum("drop="));
        assert_eq!(s.early_drop, sum("early_drop="));
        assert_eq!(s.found, sum("found="));
        let count: u64 = STATS_TEXT.lines().last().unwrap().trim().parse().unwrap();
        assert_eq!(s.count, count, "conntrack -C");
        assert_eq!(s.max, 262_144);
    }

    /// Builds one nfnetlink message with the given type and attributes.
    fn nfmsg(ty: u16, seq: u32, flags: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0u8, 0, 0, 0];
        for (k, v) in attrs {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&k.to_ne_bytes());
            body.extend_from_slice(v);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn stats_sum_over_cpus() {
        let cpu = (1 << 8) | 4;
        let mut d = nfmsg(
            cpu,
            3,
            2,
            &[
                (9, 7u32.to_be_bytes().to_vec()),
                (10, 5u32.to_be_bytes().to_vec()),
            ],
        );
        d.extend(nfmsg(
            cpu,
            3,
            2,
            &[
                (9, 1u32.to_be_bytes().to_vec()),
                (11, 2u32.to_be_bytes().to_vec()),
            ],
        ));
        d.extend(nfmsg(3, 3, 2, &[]));
        let mut s = Stats::default();
        assert_eq!(parse_stats_cpu(&d, 3, &mut s).unwrap(), Progress::Done);
        assert_eq!(
            (s.cpus, s.insert_failed, s.drop, s.early_drop),
            (2, 8, 5, 2)
        );
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        for cut in [3, 15, 40, DUMP.len() / 2 + 1] {
            let r = parse_dump(&DUMP[..cut], 1, &mut |_| {});
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
        // A counter attribute of 2 bytes instead of 4.
        let d = nfmsg((1 << 8) | 4, 1, 2, &[(9, vec![0, 1])]);
        let e = parse_stats_cpu(&d, 1, &mut Stats::default()).unwrap_err();
        assert!(e.to_string().contains("2 bytes, expected 4"), "{e}");
        // A TCP entry without a reply tuple.
        let nla = |k: u16, v: &[u8]| {
            let mut b = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            b.extend_from_slice(&k.to_ne_bytes());
            b.extend_from_slice(v);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
            b
        };
        let ip = [nla(1, &[198, 18, 1, 2]), nla(2, &[198, 18, 0, 2])].concat();
        let proto = [
            nla(1, &[6]),
            nla(2, &40000u16.to_be_bytes()),
            nla(3, &80u16.to_be_bytes()),
        ]
        .concat();
        let orig = [nla(1 | 0x8000, &ip), nla(2 | 0x8000, &proto)].concat();
        let d = nfmsg(1 << 8, 1, 2, &[(1 | 0x8000, orig)]);
        let e = parse_dump(&d, 1, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("CTA_TUPLE_REPLY"), "{e}");
    }

    #[test]
    fn nlmsg_error_becomes_an_os_error() {
        let mut m = Vec::new();
        let payload = [(-libc::EPERM).to_ne_bytes().as_slice(), &[0u8; 16]].concat();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&9u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&payload);
        match parse_dump(&m, 9, &mut |_| {}) {
            Err(NatError::Netlink { step, source }) => {
                assert_eq!(step, "request");
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn requests_match_the_uapi_layout() {
        let r = dump_request(7, true);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(
            u16::from_ne_bytes([r[4], r[5]]),
            (1 << 8) | 1,
            "CTNETLINK GET"
        );
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(r[16], 0, "AF_UNSPEC: every family");
        // CTA_STATUS then CTA_STATUS_MASK, both IPS_SRC_NAT in network order.
        assert_eq!(&r[20..28], &[8, 0, 3, 0, 0, 0, 0, 16]);
        assert_eq!(&r[28..36], &[8, 0, 26, 0, 0, 0, 0, 16]);
        assert_eq!(dump_request(7, false).len(), 20);
        let s = stats_global_request(2);
        assert_eq!(u16::from_ne_bytes([s[4], s[5]]), (1 << 8) | 5);
        assert_eq!(u16::from_ne_bytes([s[6], s[7]]), NLM_F_REQUEST);
    }
}

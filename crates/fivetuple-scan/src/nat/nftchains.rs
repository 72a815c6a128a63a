//! Whether a namespace has a source-NAT hook: an nftables base chain of type
//! `nat` on postrouting (native nft, and iptables-nft's `nat POSTROUTING`),
//! read with one `NFT_MSG_GETCHAIN` dump over `NETLINK_NETFILTER`.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Hook, HookNumber, InetHookNumber, NfTablesMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::conntrack::{exchange, socket, walk, Progress};
use super::NatError;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN` (include/uapi/linux/netfilter/nf_tables.h).
const NEWCHAIN: u16 = (10 << 8) | 3;

/// Encodes the chain dump request for every family.
pub fn request(seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }),
        )),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Parses one datagram of the chain dump; sets `found` when a `nat` chain
/// hooks postrouting.
pub fn parse(buf: &[u8], seq: u32, found: &mut bool) -> Result<Progress, NatError> {
    walk(buf, seq, |ty, payload, offset| {
        if ty != NEWCHAIN {
            return Ok(());
        }
        let msg =
            NetfilterMessage::parse_with_param(payload, ty).map_err(|e| NatError::Decode {
                offset,
                reason: format!("{e:#}"),
            })?;
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(chain)) = msg.inner else {
            return Ok(());
        };
        let (mut nat, mut post) = (false, false);
        for a in &chain.attributes {
            match a {
                ChainAttribute::Type(t) => nat = t == "nat",
                ChainAttribute::Hook(hooks) => {
                    post = hooks.iter().any(|h| {
                        matches!(
                            h,
                            Hook::Number(HookNumber::Inet(InetHookNumber::PostRouting))
                        )
                    })
                }
                _ => {}
            }
        }
        *found |= nat && post;
        Ok(())
    })
}

/// True when the calling thread's namespace has a postrouting `nat` chain.
/// A kernel without nf_tables answers the dump with an error, returned as is.
pub fn has_postrouting_nat() -> Result<bool, NatError> {
    let mut sock = socket()?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut found = false;
    exchange(&mut sock, &request(1), &mut buf, |b| {
        parse(b, 1, &mut found)
    })?;
    Ok(found)
}

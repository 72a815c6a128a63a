//! Pure parsers of the `/proc/net` counter files: `sockstat`, and the
//! paired-line tables of `snmp` and `netstat`.

/// Reads `tw` (TIME_WAIT sockets now) from the `TCP:` line of
/// `/proc/net/sockstat` (`TCP: inuse 3 orphan 0 tw 300 alloc 4 mem 1`).
///
/// Odd input: `None` when there is no `TCP:` line, no `tw` key, or its
/// value is not a number.
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

/// Looks up `key` in a `/proc/net/snmp` or `/proc/net/netstat` style file:
/// pairs of lines, `Prefix: name name...` then `Prefix: value value...`.
///
/// Odd input: `None` when the key is absent, the value is not a number,
/// or the file ends on a names line without its values line.
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_sockstat_tw("UDP: inuse 0\n"), None);
        assert_eq!(parse_sockstat_tw("TCP: inuse 1 tw x\n"), None);
        assert_eq!(
            parse_sockstat_tw("sockets: used 9\nTCP: inuse 2 orphan 0 tw 1234 alloc 3 mem 0\n"),
            Some(1234)
        );
    }
}

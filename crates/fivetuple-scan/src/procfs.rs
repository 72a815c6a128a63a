//! The socket table from `/proc/thread-self/net/tcp` and `tcp6`: the fallback
//! when netlink is unavailable, and on request.
//!
//! The path goes through `thread-self` because `/proc/net` follows the main
//! thread's namespace, not the calling thread's (DESIGN §5). Lines are parsed
//! by [`parse_line`], a pure function, as laid out by `tcp4_seq_show()` and
//! `tcp6_seq_show()` (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::error::ScanError;
use crate::socket::{Socket, TcpState};

/// `tr` (timer) value the kernel prints for a TIME_WAIT socket (`get_timewait4_sock()`).
const TIMER_TIME_WAIT: u8 = 3;

/// Parses one data line of `/proc/net/tcp` or `tcp6` (not the header).
///
/// `clk_tck` is USER_HZ: the kernel prints the TIME_WAIT remaining time with
/// `jiffies_delta_to_clock_t()`, in clock ticks. Returns `Ok(None)` for a
/// state this crate does not know.
pub fn parse_line(line: &str, clk_tck: u64) -> Result<Option<Socket>, String> {
    let mut f = line.split_ascii_whitespace();
    let mut next = |what: &str| f.next().ok_or_else(|| format!("missing field {what}"));
    let _sl = next("sl")?;
    let local = parse_endpoint(next("local_address")?)?;
    let remote = parse_endpoint(next("rem_address")?)?;
    let st = next("st")?;
    let st = u8::from_str_radix(st, 16).map_err(|_| format!("bad state {st:?}"))?;
    let _queues = next("tx_queue:rx_queue")?;
    let timer = next("tr:tm->when")?;
    let _retr = next("retrnsmt")?;
    let uid = next("uid")?;
    let _timeout = next("timeout")?;
    let inode = next("inode")?;
    let Some(state) = TcpState::from_kernel(st) else {
        return Ok(None);
    };
    let (tr, when) = timer
        .split_once(':')
        .ok_or_else(|| format!("bad timer field {timer:?}"))?;
    let tr = u8::from_str_radix(tr, 16).map_err(|_| format!("bad timer kind {tr:?}"))?;
    let when = u64::from_str_radix(when, 16).map_err(|_| format!("bad timer value {when:?}"))?;
    let tw_remaining_ms = (state == TcpState::TimeWait).then(|| {
        if tr == TIMER_TIME_WAIT && clk_tck > 0 {
            u32::try_from(when.saturating_mul(1000) / clk_tck).unwrap_or(u32::MAX)
        } else {
            0
        }
    });
    Ok(Some(Socket {
        state,
        local,
        remote,
        uid: uid.parse().map_err(|_| format!("bad uid {uid:?}"))?,
        inode: inode.parse().map_err(|_| format!("bad inode {inode:?}"))?,
        tw_remaining_ms,
        cookie: 0,
    }))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6). The address is
/// printed as host-order words of the network-order bytes (`%08X` of each
/// `__be32`), so each word goes back through `to_ne_bytes`.
fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    let (addr, port) = s
        .split_once(':')
        .ok_or_else(|| format!("bad endpoint {s:?}"))?;
    let port = u16::from_str_radix(port, 16).map_err(|_| format!("bad port in {s:?}"))?;
    let word = |h: &str| u32::from_str_radix(h, 16).map_err(|_| format!("bad address in {s:?}"));
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?.to_ne_bytes())),
        32 if addr.is_ascii() => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err(format!("bad address length in {s:?}")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses a whole file's worth of lines, skipping the header line.
pub fn parse_reader<R: BufRead>(
    mut r: R,
    path: &str,
    clk_tck: u64,
    out: &mut Vec<Socket>,
) -> Result<(), ScanError> {
    let mut line = String::with_capacity(200);
    let mut n = 0usize;
    loop {
        line.clear();
        let got = r.read_line(&mut line).map_err(|source| ScanError::Read {
            path: path.into(),
            source,
        })?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if n == 1 || line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, clk_tck) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(reason) => {
                return Err(ScanError::Parse {
                    path: path.to_string(),
                    line: n,
                    reason,
                })
            }
        }
    }
}

/// USER_HZ, the unit of the timer column.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Reads `tcp` and `tcp6` under `dir` (normally `/proc/thread-self/net`).
/// A missing `tcp6` (IPv6 disabled) is not an error.
pub fn read_from(dir: &Path) -> Result<Vec<Socket>, ScanError> {
    let hz = clk_tck();
    let mut out = Vec::with_capacity(1024);
    for (name, required) in [("tcp", true), ("tcp6", false)] {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ScanError::Read { path, source }),
        };
        let shown = path.display().to_string();
        parse_reader(
            BufReader::with_capacity(128 * 1024, file),
            &shown,
            hz,
            &mut out,
        )?;
    }
    Ok(out)
}

/// Reads the calling thread's namespace through `/proc/thread-self/net`.
pub fn read() -> Result<Vec<Socket>, ScanError> {
    read_from(Path::new("/proc/thread-self/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00000FA0 00000000     0        0 0 3 0000000000000000
   2: 0200007F:9C41 0100007F:1F91 01 00000000:00000000 02:000AFC7E 00000000  1000        0 4242 2 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_ipv4_listener_time_wait_and_established() {
        let mut out = Vec::new();
        parse_reader(TCP.as_bytes(), "tcp", 100, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].state, TcpState::Listen);
        assert_eq!(out[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(out[0].inode, 31337);
        assert_eq!(out[1].state, TcpState::TimeWait);
        assert_eq!(out[1].local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(out[1].remote, "127.0.0.1:8080".parse().unwrap());
        // 0xFA0 = 4000 ticks at USER_HZ 100 = 40 s
        assert_eq!(out[1].tw_remaining_ms, Some(40_000));
        assert_eq!(out[2].state, TcpState::Established);
        assert_eq!(out[2].local, "127.0.0.2:40001".parse().unwrap());
        assert_eq!(out[2].uid, 1000);
        assert_eq!(out[2].tw_remaining_ms, None);
    }

    #[test]
    fn parses_ipv6_words() {
        // ::1 port 8080 -> ::ffff:127.0.0.1 port 50000, as tcp6_seq_show prints them
        let line = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0";
        let s = parse_line(line, 100).unwrap().unwrap();
        assert_eq!(s.local, "[::1]:8080".parse().unwrap());
        assert_eq!(s.remote, "[::ffff:127.0.0.1]:50000".parse().unwrap());
    }

    #[test]
    fn bad_lines_name_the_line_and_field() {
        let text = "header\n   0: 0100007F:ZZZZ 00000000:0000 0A 0:0 00:0 0 0 0 1\n";
        let err = parse_reader(text.as_bytes(), "/x/tcp", 100, &mut Vec::new()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/x/tcp line 2") && msg.contains("ZZZZ"),
            "{msg}"
        );
        for bad in [
            "",
            "0:",
            "0: 0100007F:1F90",
            "0: 01007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "0: 0100007F:1F90 00000000:0000 0A 0:0 0000 0 0 0 1",
            "0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 x 0 1",
        ] {
            assert!(parse_line(bad, 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_state_is_skipped() {
        let line = "   0: 0100007F:1F90 00000000:0000 3F 00000000:00000000 00:00000000 00000000     0        0 1 1";
        assert_eq!(parse_line(line, 100).unwrap(), None);
    }
}

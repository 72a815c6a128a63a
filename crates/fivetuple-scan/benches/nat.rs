//! NAT-layer benchmark (docs/BENCHMARKS.md, "fivetuple-scan: the NAT layer").
//!
//! In a fresh network namespace with an nftables masquerade chain, inserts
//! source-NATed TCP conntrack entries over ctnetlink (`IPCTNL_MSG_CT_NEW`
//! with `CTA_NAT_SRC`, the same path as `conntrack -I --src-nat`: real NAT
//! bindings, 10 destination ports × up to 10,000 NAT ports each) and times,
//! side by side: our dump with grouping, the whole `nat::scan()` (plus rule
//! reading), `conntrack -L | wc -l`, and `conntrack -L -o extended` parsed
//! and grouped. Peak memory is the `VmHWM` of a child doing one dump with
//! grouping. A second fresh namespace without NAT measures what
//! `nat::scan()` adds there, next to the socket snapshot. Needs root and
//! nftables + conntrack (scripts/setup): `cargo bench -p fivetuple-scan --bench nat`.

use fivetuple_testkit::bench::{median, time_median, vm_hwm_kib};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_scan::nat::{self, conntrack, Grouper};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};

const RUNS: usize = 7;
const DEST_PORTS: u32 = 10;

fn dump_and_group() -> usize {
    let mut g = Grouper::default();
    conntrack::dump(true, |e| g.add(&e)).expect("conntrack dump");
    let n = g.snat_entries as usize;
    let groups = g.finish(&[], true);
    assert!(!groups.is_empty());
    n
}

/// The same dump, received but not parsed: the kernel's share.
fn dump_raw() -> usize {
    let mut sock = Socket::new(NETLINK_NETFILTER).unwrap();
    sock.bind_auto().unwrap();
    sock.send_to(&conntrack::dump_request(1, true), &NlAddr::new(0, 0), 0)
        .unwrap();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut bytes = 0;
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, 0).unwrap();
        bytes += n;
        // NLMSG_DONE is alone in the last datagram.
        if n >= 16 && u16::from_ne_bytes([buf[4], buf[5]]) == 3 {
            return bytes;
        }
    }
}

/// One netlink attribute (`struct nlattr`), padded to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut b = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

const NESTED: u16 = 0x8000;

fn tuple(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let ip = [nla(1, &src.octets()), nla(2, &dst.octets())].concat();
    let proto = [
        nla(1, &[6]),
        nla(2, &sport.to_be_bytes()),
        nla(3, &dport.to_be_bytes()),
    ]
    .concat();
    [nla(1 | NESTED, &ip), nla(2 | NESTED, &proto)].concat()
}

/// `IPCTNL_MSG_CT_NEW` for one ESTABLISHED TCP entry, source-NATed to
/// `nat:nat_port` (`ctnetlink_create_conntrack()` + `ctnetlink_setup_nat()`).
/// Hand-built: the bench needs `CTA_NAT_SRC`, which netlink-packet-netfilter
/// does not model.
fn ct_new(
    seq: u32,
    client: Ipv4Addr,
    svc: Ipv4Addr,
    dport: u16,
    nat: Ipv4Addr,
    nat_port: u16,
) -> Vec<u8> {
    let orig = tuple(client, svc, 40000, dport);
    let reply = tuple(svc, client, dport, 40000);
    let protonat = [
        nla(1, &nat_port.to_be_bytes()),
        nla(2, &nat_port.to_be_bytes()),
    ]
    .concat();
    let natsrc = [
        nla(1, &nat.octets()),
        nla(2, &nat.octets()),
        nla(3 | NESTED, &protonat),
    ]
    .concat();
    let tcp = nla(1 | NESTED, &nla(1, &[3])); // CTA_PROTOINFO_TCP { STATE = ESTABLISHED }
    let mut body = vec![2u8, 0, 0, 0]; // nfgenmsg: AF_INET
    body.extend(nla(1 | NESTED, &orig));
    body.extend(nla(2 | NESTED, &reply));
    body.extend(nla(4 | NESTED, &tcp));
    body.extend(nla(7, &3600u32.to_be_bytes())); // CTA_TIMEOUT
    body.extend(nla(6 | NESTED, &natsrc)); // CTA_NAT_SRC
    let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
    m.extend_from_slice(&(1u16 << 8).to_ne_bytes()); // CTNETLINK NEW (IPCTNL_MSG_CT_NEW = 0)
    m.extend_from_slice(&(1u16 | 0x400).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_CREATE
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend(body);
    m
}

/// Inserts `n` source-NATed entries: destination ports 80..80+DEST_PORTS on
/// 198.18.0.2, NAT address 198.18.0.1, NAT ports from 20000 up.
fn insert(n: u32) {
    let mut sock = Socket::new(NETLINK_NETFILTER).unwrap();
    sock.bind_auto().unwrap();
    sock.set_non_blocking(true).unwrap();
    let svc = Ipv4Addr::new(198, 18, 0, 2);
    let nat = Ipv4Addr::new(198, 18, 0, 1);
    let kernel = NlAddr::new(0, 0);
    let mut batch = Vec::new();
    let mut errors = 0;
    let mut rx = Vec::with_capacity(64 * 1024);
    for i in 0..n {
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
        let dport = 80 + (i % DEST_PORTS) as u16;
        let nat_port = 20000 + (i / DEST_PORTS) as u16;
        batch.extend(ct_new(i, client, svc, dport, nat, nat_port));
        if batch.len() > 16 * 1024 || i + 1 == n {
            sock.send_to(&batch, &kernel, 0).expect("send CT_NEW batch");
            batch.clear();
            // Errors (only failures answer: no NLM_F_ACK).
            loop {
                rx.clear();
                match sock.recv(&mut rx, 0) {
                    Ok(_) => {
                        errors += 1;
                        if errors < 3 {
                            let e = i32::from_ne_bytes(rx[16..20].try_into().unwrap());
                            eprintln!("CT_NEW error: {}", std::io::Error::from_raw_os_error(-e));
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
    assert_eq!(errors, 0, "{errors} CT_NEW requests failed");
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// `conntrack -L -o extended` captured, parsed and grouped by the reply
/// tuple (what a tool-based reader would do).
fn conntrack_extended_grouped() -> usize {
    let out = Command::new("conntrack")
        .args(["-L", "-p", "tcp", "-o", "extended"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut groups: HashMap<(&str, &str, &str), [u32; 10]> = HashMap::new();
    let mut n = 0;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // ipv4 2 tcp 6 TIMEOUT STATE src= dst= sport= dport= src= dst= sport= dport= ...
        let mut src = w.iter().filter_map(|x| x.strip_prefix("src="));
        let mut dst = w.iter().filter_map(|x| x.strip_prefix("dst="));
        let mut sp = w.iter().filter_map(|x| x.strip_prefix("sport="));
        let (Some(_), Some(rsrc)) = (src.next(), src.next()) else {
            continue;
        };
        let (Some(_), Some(rdst)) = (dst.next(), dst.next()) else {
            continue;
        };
        let (Some(_), Some(rsport)) = (sp.next(), sp.next()) else {
            continue;
        };
        let state = match w.get(5).copied() {
            Some("ESTABLISHED") => 3,
            Some("TIME_WAIT") => 7,
            _ => 0,
        };
        groups.entry((rdst, rsrc, rsport)).or_default()[state] += 1;
        n += 1;
    }
    assert!(!groups.is_empty());
    n
}

fn main() {
    if std::env::args().any(|a| a == "--child-dump") {
        dump_and_group();
        println!("{}", vm_hwm_kib());
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("nat benchmark skipped: needs root (unshare CLONE_NEWNET)");
        return;
    }
    let sizes: Vec<u32> = std::env::var("FT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000]);
    let me = std::env::current_exe().unwrap();

    // A namespace without NAT: what nat::scan() adds to a socket snapshot.
    fivetuple_testkit::in_fresh_netns(&[], || {
        let snap = time_median(RUNS, || {
            fivetuple_scan::snapshot(fivetuple_scan::Reader::Netlink).unwrap();
        });
        let nat_scan = time_median(RUNS, || {
            assert!(!nat::scan().source_nat);
        });
        println!(
            "no NAT: socket snapshot {:.0} µs, nat::scan() {:.0} µs",
            snap.as_secs_f64() * 1e6,
            nat_scan.as_secs_f64() * 1e6
        );
    });

    for &n in &sizes {
        fivetuple_testkit::in_fresh_netns(&[], || {
            sh("nft add table ip ftbench && nft add chain ip ftbench post '{ type nat hook postrouting priority 100; }' && nft add rule ip ftbench post meta l4proto tcp masquerade");
            let t = Instant::now();
            insert(n);
            let stats = conntrack::read_stats().unwrap();
            assert!(
                stats.count >= u64::from(n),
                "{n} inserted, conntrack counts {}",
                stats.count
            );
            eprintln!("inserted {n} entries in {:.1?}", t.elapsed());
            assert_eq!(dump_and_group(), n as usize);

            // The methods take turns, round after round, so a change of load
            // on the shared machine hits all of them alike; medians reported.
            let mut v: [Vec<Duration>; 5] = Default::default();
            for _ in 0..RUNS {
                let mut lap = |i: usize, f: &mut dyn FnMut()| {
                    let t = Instant::now();
                    f();
                    v[i].push(t.elapsed());
                };
                lap(0, &mut || assert!(dump_raw() > n as usize * 100));
                lap(1, &mut || assert_eq!(dump_and_group(), n as usize));
                lap(2, &mut || {
                    assert_eq!(nat::scan().snat_entries, u64::from(n))
                });
                lap(3, &mut || {
                    let out = Command::new("sh")
                        .args(["-c", "conntrack -L 2>/dev/null | wc -l"])
                        .output()
                        .unwrap();
                    let lines: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
                    assert_eq!(lines, n);
                });
                lap(4, &mut || {
                    assert_eq!(conntrack_extended_grouped(), n as usize)
                });
            }
            let [raw, ours, full, wc, ext] = v.map(median);
            let child = Command::new(&me).arg("--child-dump").output().unwrap();
            let rss: f64 = String::from_utf8_lossy(&child.stdout)
                .trim()
                .parse()
                .unwrap();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
            println!("| entries | kernel dump alone (recv, no parse) | dump + grouping | per entry | nat::scan() | `conntrack -L \\| wc -l` | per entry | `-o extended` parsed + grouped | per entry | wc ÷ ours | extended ÷ ours | peak RSS (dump + grouping, child) |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {n} | {:.1} ms | {:.1} ms | {:.2} µs | {:.1} ms | {:.1} ms | {:.2} µs | {:.1} ms | {:.2} µs | {:.1}× | {:.1}× | {:.1} MiB |",
                ms(raw),
                ms(ours),
                per(ours),
                ms(full),
                ms(wc),
                per(wc),
                ms(ext),
                per(ext),
                wc.as_secs_f64() / ours.as_secs_f64(),
                ext.as_secs_f64() / ours.as_secs_f64(),
                rss / 1024.0
            );
        });
    }
}

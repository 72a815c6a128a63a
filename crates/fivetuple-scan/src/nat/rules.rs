//! The source-NAT rules of a namespace: which masquerade/SNAT rules exist
//! and what port range each may hand out.
//!
//! Native nftables rules come from `nft -j list ruleset`. Rules made by
//! iptables-nft show up there only as an opaque `xt` target (the JSON does
//! not carry `--to-ports`), so they are read from `iptables-nft-save -t nat`;
//! legacy iptables from `iptables-legacy-save -t nat`, run only when the
//! legacy `nat` table exists (`/proc/thread-self/net/ip_tables_names`), so
//! reading never loads a module. The parsers are pure and tested on captured
//! output; [`read`] runs the tools from the calling thread, whose children
//! inherit its network namespace.

use std::net::IpAddr;
use std::process::Command;

use serde::Serialize;

/// Which tool a rule was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A native nftables rule (`nft -j list ruleset`).
    Nftables,
    /// An iptables-nft rule (`iptables-nft-save`, `ip6tables-nft-save`).
    IptablesNft,
    /// A legacy iptables rule (`iptables-legacy-save`, `ip6tables-legacy-save`).
    IptablesLegacy,
}

/// What a rule does to the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `masquerade` / `-j MASQUERADE`: the outgoing interface's address.
    Masquerade,
    /// `snat to` / `-j SNAT --to-source`: a fixed address or address range.
    Snat,
}

/// One source-NAT rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatRule {
    /// Where it was read.
    pub origin: Origin,
    /// Masquerade or SNAT.
    pub action: Action,
    /// `(first, last)` NAT address for SNAT; `None` for masquerade.
    pub addresses: Option<(IpAddr, IpAddr)>,
    /// `(first, last)` port the NAT may hand out; `None` when the rule sets
    /// none and the kernel's default range applies.
    pub ports: Option<(u16, u16)>,
    /// `random-fully` / `--random-fully` (`NF_NAT_RANGE_PROTO_RANDOM_FULLY`).
    pub random_fully: bool,
    /// `random` / `--random` (`NF_NAT_RANGE_PROTO_RANDOM`).
    pub random: bool,
    /// `persistent` / `--persistent`.
    pub persistent: bool,
    /// Where the rule lives (`ip nat POSTROUTING`), to name it in output.
    pub location: String,
}

impl NatRule {
    /// Number of ports the rule may hand out, `None` when it sets no range.
    pub fn port_count(&self) -> Option<u32> {
        self.ports
            .map(|(lo, hi)| u32::from(hi.max(lo)) - u32::from(lo.min(hi)) + 1)
    }

    /// True when `ip` can be this rule's NAT address (always for masquerade).
    pub fn may_use_address(&self, ip: IpAddr) -> bool {
        match self.addresses {
            None => true,
            Some((lo, hi)) => match (lo, hi, ip) {
                (IpAddr::V4(l), IpAddr::V4(h), IpAddr::V4(x)) => l <= x && x <= h,
                (IpAddr::V6(l), IpAddr::V6(h), IpAddr::V6(x)) => l <= x && x <= h,
                _ => false,
            },
        }
    }
}

/// The NAT rules found, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    /// Every masquerade/SNAT rule found.
    pub rules: Vec<NatRule>,
    /// Why a source could not be read (tool missing, failed, unparsable);
    /// empty when every present source was read.
    pub notes: Vec<String>,
}

fn port_of(v: &serde_json::Value) -> Option<(u16, u16)> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(|p| (p, p)),
        serde_json::Value::Object(o) => {
            let r = o.get("range")?.as_array()?;
            let lo = u16::try_from(r.first()?.as_u64()?).ok()?;
            let hi = u16::try_from(r.get(1)?.as_u64()?).ok()?;
            Some((lo, hi))
        }
        _ => None,
    }
}

fn addr_of(v: &serde_json::Value) -> Option<(IpAddr, IpAddr)> {
    match v {
        serde_json::Value::String(s) => s.parse().ok().map(|a| (a, a)),
        serde_json::Value::Object(o) => {
            let r = o.get("range")?.as_array()?;
            Some((
                r.first()?.as_str()?.parse().ok()?,
                r.get(1)?.as_str()?.parse().ok()?,
            ))
        }
        _ => None,
    }
}

fn has_flag(stmt: &serde_json::Map<String, serde_json::Value>, flag: &str) -> bool {
    match stmt.get("flags") {
        Some(serde_json::Value::String(s)) => s == flag,
        Some(serde_json::Value::Array(a)) => a.iter().any(|f| f.as_str() == Some(flag)),
        _ => false,
    }
}

/// Parses `nft -j list ruleset` output into its native masquerade/SNAT rules.
///
/// Returns the rules and the number of iptables-nft (`xt`) MASQUERADE/SNAT
/// targets seen, whose ranges must be read with `iptables-nft-save`.
pub fn parse_nft_json(text: &str) -> Result<(Vec<NatRule>, usize), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("nft -j output is not JSON: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or("nft -j output has no \"nftables\" array")?;
    let mut out = Vec::new();
    let mut xt = 0;
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let location = format!(
            "{} {} {}",
            rule.get("family").and_then(|v| v.as_str()).unwrap_or("?"),
            rule.get("table").and_then(|v| v.as_str()).unwrap_or("?"),
            rule.get("chain").and_then(|v| v.as_str()).unwrap_or("?"),
        );
        let Some(exprs) = rule.get("expr").and_then(|v| v.as_array()) else {
            continue;
        };
        for e in exprs {
            let Some(obj) = e.as_object() else { continue };
            let (action, stmt) = if let Some(s) = obj.get("masquerade") {
                (Action::Masquerade, s)
            } else if let Some(s) = obj.get("snat") {
                (Action::Snat, s)
            } else if let Some(x) = obj.get("xt") {
                let name = x.get("name").and_then(|v| v.as_str()).unwrap_or("");
                if name == "MASQUERADE" || name == "SNAT" {
                    xt += 1;
                }
                continue;
            } else {
                continue;
            };
            // `masquerade` without arguments is JSON null.
            let empty = serde_json::Map::new();
            let stmt = stmt.as_object().unwrap_or(&empty);
            out.push(NatRule {
                origin: Origin::Nftables,
                action,
                addresses: stmt.get("addr").and_then(addr_of),
                ports: stmt.get("port").and_then(port_of),
                random_fully: has_flag(stmt, "fully-random"),
                random: has_flag(stmt, "random"),
                persistent: has_flag(stmt, "persistent"),
                location: location.clone(),
            });
        }
    }
    Ok((out, xt))
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let p = |v: &str| {
        v.parse::<u16>()
            .map_err(|_| format!("port {v:?} is not a number from 0 to 65535"))
    };
    Ok((p(lo)?, p(hi)?))
}

/// First and last address of a range.
type AddrRange = (IpAddr, IpAddr);

/// `1.2.3.4`, `1.2.3.4-1.2.3.9`, optionally `:PORT[-PORT]`; IPv6 in brackets.
fn parse_to_source(s: &str) -> Result<(AddrRange, Option<(u16, u16)>), String> {
    let (addrs, ports) = if let Some(rest) = s.strip_prefix('[') {
        // [v6]-[v6]:ports or [v6]:ports
        match rest.rsplit_once("]:") {
            Some((a, p)) => (a.replace(['[', ']'], ""), Some(p)),
            None => (rest.replace(['[', ']'], ""), None),
        }
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let (lo, hi) = addrs.split_once('-').unwrap_or((&addrs, &addrs));
    let ip = |v: &str| {
        v.parse::<IpAddr>()
            .map_err(|_| format!("--to-source address {v:?} is not an IP address"))
    };
    let ports = ports.map(parse_ports).transpose()?;
    Ok(((ip(lo)?, ip(hi)?), ports))
}

/// Parses the `*nat` table of `iptables-save` / `ip6tables-save` output into
/// its MASQUERADE and SNAT rules.
pub fn parse_iptables_save(text: &str, origin: Origin) -> Result<Vec<NatRule>, String> {
    let mut out = Vec::new();
    let mut in_nat = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            in_nat = t == "nat";
            continue;
        }
        if !in_nat || !line.starts_with("-A ") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let chain = words.get(1).copied().unwrap_or("?");
        let Some(j) = words.iter().position(|w| *w == "-j") else {
            continue;
        };
        let action = match words.get(j + 1).copied() {
            Some("MASQUERADE") => Action::Masquerade,
            Some("SNAT") => Action::Snat,
            _ => continue,
        };
        let mut rule = NatRule {
            origin,
            action,
            addresses: None,
            ports: None,
            random_fully: false,
            random: false,
            persistent: false,
            location: format!("nat {chain}"),
        };
        let mut i = j + 2;
        while i < words.len() {
            let arg = words.get(i + 1).copied();
            match words[i] {
                "--to-ports" => {
                    let v =
                        arg.ok_or_else(|| format!("line {}: --to-ports without a value", n + 1))?;
                    rule.ports = Some(parse_ports(v).map_err(|e| format!("line {}: {e}", n + 1))?);
                    i += 1;
                }
                "--to-source" => {
                    let v =
                        arg.ok_or_else(|| format!("line {}: --to-source without a value", n + 1))?;
                    let (a, p) = parse_to_source(v).map_err(|e| format!("line {}: {e}", n + 1))?;
                    rule.addresses = Some(a);
                    rule.ports = p;
                    i += 1;
                }
                "--random-fully" => rule.random_fully = true,
                "--random" => rule.random = true,
                "--persistent" => rule.persistent = true,
                _ => {}
            }
            i += 1;
        }
        out.push(rule);
    }
    Ok(out)
}

/// Runs `tool args` and returns its stdout; `Ok(None)` when the tool is not installed.
fn run(tool: &str, args: &[&str]) -> Result<Option<String>, String> {
    match Command::new(tool).args(args).output() {
        Ok(o) if o.status.success() => Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned())),
        Ok(o) => Err(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot run {tool}: {e}")),
    }
}

/// True when the legacy (x_tables) `nat` table exists in the calling thread's namespace.
fn legacy_nat_loaded(file: &str) -> bool {
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "nat"))
}

/// Reads every source-NAT rule of the calling thread's namespace. A source
/// that cannot be read leaves a note and does not fail the others.
pub fn read() -> Rules {
    let mut r = Rules::default();
    // iptables-nft rules appear in the nft ruleset as `xt` targets; without
    // any (and with nft readable) there is nothing for iptables-nft-save to add.
    let mut xt = None;
    match run("nft", &["-j", "list", "ruleset"]) {
        Ok(Some(text)) => match parse_nft_json(&text) {
            Ok((rules, n)) => {
                r.rules.extend(rules);
                xt = Some(n);
            }
            Err(e) => r.notes.push(e),
        },
        Ok(None) => r
            .notes
            .push("nft is not installed (apt-get install nftables): nftables rules unknown".into()),
        Err(e) => r.notes.push(e),
    }
    if xt != Some(0) {
        for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
            match run(tool, &["-t", "nat"]) {
                Ok(Some(text)) => match parse_iptables_save(&text, Origin::IptablesNft) {
                    Ok(rules) => r.rules.extend(rules),
                    Err(e) => r.notes.push(format!("{tool}: {e}")),
                },
                Ok(None) => r.notes.push(format!(
                    "{tool} is not installed (apt-get install iptables): iptables-nft NAT port ranges unknown"
                )),
                Err(e) => r.notes.push(e),
            }
        }
    }
    for (names, tool) in [
        ("ip_tables_names", "iptables-legacy-save"),
        ("ip6_tables_names", "ip6tables-legacy-save"),
    ] {
        if !legacy_nat_loaded(names) {
            continue;
        }
        match run(tool, &["-t", "nat"]) {
            Ok(Some(text)) => match parse_iptables_save(&text, Origin::IptablesLegacy) {
                Ok(rules) => r.rules.extend(rules),
                Err(e) => r.notes.push(format!("{tool}: {e}")),
            },
            Ok(None) => r.notes.push(format!(
                "a legacy iptables nat table exists but {tool} is not installed (apt-get install iptables): its rules are unknown"
            )),
            Err(e) => r.notes.push(e),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = include_str!("../../tests/fixtures/nat/nft-ruleset.json");
    const IPT: &str = include_str!("../../tests/fixtures/nat/iptables-nft-save.txt");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nft_json_native_rules_and_xt_count() {
        let (rules, xt) = parse_nft_json(NFT).unwrap();
        assert_eq!(xt, 1, "the iptables-nft MASQUERADE shows as one xt target");
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert_eq!(rules[0].action, Action::Masquerade);
        assert_eq!(rules[0].ports, Some((30000, 30099)));
        assert!(rules[0].random && rules[0].persistent && !rules[0].random_fully);
        assert_eq!(rules[0].location, "ip mynat post");
        assert_eq!(rules[1].action, Action::Snat);
        assert_eq!(
            rules[1].addresses,
            Some((ip("198.18.0.1"), ip("198.18.0.3")))
        );
        assert_eq!(rules[1].ports, Some((40000, 40099)));
        assert_eq!(rules[1].port_count(), Some(100));
        assert!(rules[1].random_fully);
        assert_eq!(
            rules[2].addresses,
            Some((ip("198.18.0.1"), ip("198.18.0.1")))
        );
        assert_eq!(rules[2].ports, None);
        assert_eq!(rules[2].port_count(), None);
        assert!(rules[1].may_use_address(ip("198.18.0.2")));
        assert!(!rules[1].may_use_address(ip("198.18.0.4")));
        assert!(
            rules[0].may_use_address(ip("10.0.0.1")),
            "masquerade: any address"
        );
    }

    #[test]
    fn iptables_save_masquerade_with_to_ports() {
        let rules = parse_iptables_save(IPT, Origin::IptablesNft).unwrap();
        assert_eq!(rules.len(), 1, "{rules:#?}");
        assert_eq!(rules[0].action, Action::Masquerade);
        assert_eq!(rules[0].ports, Some((20000, 20099)));
        assert_eq!(rules[0].location, "nat POSTROUTING");
    }

    #[test]
    fn iptables_save_snat_forms_and_other_tables_ignored() {
        let text = "*filter\n-A FORWARD -j MASQUERADE\nCOMMIT\n*nat\n\
            -A POSTROUTING -o eth0 -j SNAT --to-source 203.0.113.5-203.0.113.7:1024-2047 --random-fully --persistent\n\
            -A POSTROUTING -o eth1 -j SNAT --to-source 203.0.113.9\n\
            -A POSTROUTING -j SNAT --to-source [2001:db8::1]-[2001:db8::3]:5000-5999\n\
            -A PREROUTING -j DNAT --to-destination 10.0.0.1\n\
            -A KUBE-POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n";
        let rules = parse_iptables_save(text, Origin::IptablesLegacy).unwrap();
        assert_eq!(rules.len(), 4, "{rules:#?}");
        assert_eq!(
            rules[0].addresses,
            Some((ip("203.0.113.5"), ip("203.0.113.7")))
        );
        assert_eq!(rules[0].ports, Some((1024, 2047)));
        assert!(rules[0].random_fully && rules[0].persistent);
        assert_eq!(rules[1].ports, None);
        assert_eq!(
            rules[2].addresses,
            Some((ip("2001:db8::1"), ip("2001:db8::3")))
        );
        assert_eq!(rules[2].ports, Some((5000, 5999)));
        assert!(rules[3].random_fully);
        assert_eq!(rules[3].location, "nat KUBE-POSTROUTING");
    }

    #[test]
    fn bad_input_names_the_value() {
        let e = parse_iptables_save(
            "*nat\n-A P -j MASQUERADE --to-ports 70000\n",
            Origin::IptablesNft,
        )
        .unwrap_err();
        assert!(e.contains("\"70000\"") && e.contains("line 2"), "{e}");
        let e = parse_iptables_save(
            "*nat\n-A P -j SNAT --to-source nowhere\n",
            Origin::IptablesNft,
        )
        .unwrap_err();
        assert!(e.contains("\"nowhere\""), "{e}");
        assert!(parse_nft_json("not json").unwrap_err().contains("not JSON"));
        assert!(parse_nft_json("{}").unwrap_err().contains("nftables"));
    }
}

//! The experiment's settings: which remedies, the box (port range, sysctls,
//! topology) and the load. Parsing lives here so every bad value is reported
//! the same way, naming the flag and the value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::LabError;

/// Linux's TIME_WAIT length (`TCP_TIMEWAIT_LEN`, fixed at compile time).
pub use fivetuple_kernel::budget::TIME_WAIT_SECS;

/// The range `wide-range` widens to (remedy 1 of the design).
pub const WIDE_RANGE: (u16, u16) = (5001, 65534);

/// Lowest port a box's range may start at (below are the well-known ports).
pub const MIN_PORT: u32 = 1024;

/// Most kept-alive connections the driver may open to A.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most calls the driver may keep outstanding (each costs a few KiB).
pub const MAX_IN_FLIGHT: usize = 65536;

/// `--topology nat`: how many pods the node masquerades.
pub const NAT_PODS: u8 = 2;

/// `--topology nat`: source addresses `snat-pool` gives the node.
pub const SNAT_ADDRESSES: u8 = 4;

/// Ports the services listen on inside the box (outside every range used).
pub const UPSTREAM_PORT: u16 = 1080;
/// Port of frontend A.
pub const FRONTEND_PORT: u16 = 1081;

/// One remedy (or the failure itself), each run in its own box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remedy {
    /// Keep-alive off, kernel-chosen ports: the failure.
    Naive,
    /// Connection-bound challenge/response (NTLM/Negotiate style), closed per call.
    Auth,
    /// Remedy 1: `ip_local_port_range` widened to 5001-65534.
    WideRange,
    /// Remedy 2 on Linux: `tcp_tw_reuse=1`.
    TwReuse,
    /// Remedy 3: explicit binds rotating over the range (`fivetuple::Rotation`).
    Rotate,
    /// Spreading over 16 source addresses (`fivetuple::Spread`).
    Spread,
    /// A keep-alive pool: the real fix.
    Pooled,
    /// The naive client, unmodified, with `fivetuple run`'s cgroup connect
    /// hook rotating over the range in the kernel. Needs root and BPF, so it
    /// runs only when named (`--only naive,attach`).
    Attach,
    /// `--topology nat` only: the node source-NATs to [`SNAT_ADDRESSES`]
    /// addresses (nft `snat to` an address range), each with the NAT's
    /// ports. nf_nat picks the address by a hash of (client address,
    /// destination address), so each pod keeps one of them.
    SnatPool,
    /// `--topology nat` only: the masquerade rule with `fully-random`
    /// (iptables `--random-fully`): random NAT ports, the same number of them.
    RandomFully,
}

impl Remedy {
    /// Every remedy, in the order they run by default.
    pub const ALL: [Remedy; 7] = [
        Remedy::Naive,
        Remedy::Auth,
        Remedy::WideRange,
        Remedy::TwReuse,
        Remedy::Rotate,
        Remedy::Spread,
        Remedy::Pooled,
    ];

    /// Remedies that run only when named with `--only` (`attach` needs root
    /// and BPF, which the default run does not).
    pub const OPT_IN: [Remedy; 1] = [Remedy::Attach];

    /// The remedies of `--topology nat`, in the order they run by default.
    pub const NAT: [Remedy; 5] = [
        Remedy::Naive,
        Remedy::SnatPool,
        Remedy::RandomFully,
        Remedy::Rotate,
        Remedy::Pooled,
    ];

    /// The remedies a run on `topology` makes when `--only` is not given.
    pub fn defaults(topology: Topology) -> Vec<Remedy> {
        match topology {
            Topology::Nat => Remedy::NAT.to_vec(),
            Topology::Loopback | Topology::TwoHosts => Remedy::ALL.to_vec(),
        }
    }

    /// True when the remedy means something on `topology`: the NAT remedies
    /// change the node's rule, which only `nat` has; the socket-box remedies
    /// (`auth`, `wide-range`, `tw-reuse`, `spread`, `attach`) change the
    /// client's own ports, which are not what runs out behind a NAT.
    pub fn fits(self, topology: Topology) -> bool {
        match topology {
            Topology::Nat => Remedy::NAT.contains(&self),
            Topology::Loopback | Topology::TwoHosts => {
                !matches!(self, Remedy::SnatPool | Remedy::RandomFully)
            }
        }
    }

    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Remedy::Naive => "naive",
            Remedy::Auth => "auth",
            Remedy::WideRange => "wide-range",
            Remedy::TwReuse => "tw-reuse",
            Remedy::Rotate => "rotate",
            Remedy::Spread => "spread",
            Remedy::Pooled => "pooled",
            Remedy::Attach => "attach",
            Remedy::SnatPool => "snat-pool",
            Remedy::RandomFully => "random-fully",
        }
    }

    /// One line on what the remedy does and what it costs.
    pub fn describe(self) -> &'static str {
        match self {
            Remedy::Naive => "new connection per call, closed by the client, kernel picks the port",
            Remedy::Auth => "NTLM/Negotiate-style auth bound to the connection: 401 + 200 on one connection, then closed",
            Remedy::WideRange => "remedy 1: ip_local_port_range widened to 5001-65534; buys time, keeps the limit",
            Remedy::TwReuse => "remedy 2: tcp_tw_reuse=1 (needs timestamps); Linux cannot shorten TIME_WAIT and tcp_fin_timeout is FIN_WAIT_2, not TIME_WAIT",
            Remedy::Rotate => "remedy 3: explicit bind rotating over the range with SO_REUSEADDR (takes over TIME_WAIT when timestamps are on)",
            Remedy::Spread => "16 source addresses (IP_BIND_ADDRESS_NO_PORT): 16 times the ports",
            Remedy::Pooled => "keep-alive pool: no new connection per call, the real fix",
            Remedy::Attach => "the naive client unmodified, fixed in the kernel: fivetuple run's cgroup connect hook rotating over the range",
            Remedy::SnatPool => "nat: the node SNATs to a range of 4 addresses (nft snat to A-B): up to 4 times the NAT ports; nf_nat keeps one address per (client, destination)",
            Remedy::RandomFully => "nat: masquerade fully-random (iptables --random-fully): random NAT ports, no more of them",
        }
    }

    /// True when every call opens (and closes) its own connection.
    pub fn closes_per_call(self) -> bool {
        self != Remedy::Pooled
    }
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Remedy {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Remedy, LabError> {
        Remedy::ALL
            .into_iter()
            .chain(Remedy::OPT_IN)
            .chain(Remedy::NAT)
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| LabError::BadArgument {
                flag: "--only",
                value: s.to_string(),
                reason: format!("unknown remedy; expected one of {}", names()),
            })
    }
}

fn names() -> String {
    let mut all: Vec<&str> = Vec::new();
    for r in Remedy::ALL
        .into_iter()
        .chain(Remedy::OPT_IN)
        .chain(Remedy::NAT)
    {
        if !all.contains(&r.name()) {
            all.push(r.name());
        }
    }
    all.join(", ")
}

fn names_for(topology: Topology) -> String {
    Remedy::ALL
        .into_iter()
        .chain(Remedy::OPT_IN)
        .chain(Remedy::NAT)
        .filter(|r| r.fits(topology))
        .fold(Vec::<&str>::new(), |mut v, r| {
            if !v.contains(&r.name()) {
                v.push(r.name());
            }
            v
        })
        .join(", ")
}

/// Parses `--only naive,rotate`: a comma-separated list, duplicates removed,
/// order kept.
pub fn parse_remedies(text: &str) -> Result<Vec<Remedy>, LabError> {
    let mut out = Vec::new();
    for part in text.split(',') {
        if part.trim().is_empty() {
            return Err(LabError::BadArgument {
                flag: "--only",
                value: text.to_string(),
                reason: format!(
                    "empty remedy name; expected a comma-separated list of {}",
                    names()
                ),
            });
        }
        let r: Remedy = part.parse()?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Where the two services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Both services on 127.0.0.1 in one namespace: the "same box" of the
    /// original report (`tcp_tw_reuse=2`, the default, applies here).
    Loopback,
    /// Two namespaces joined by a veth pair on 198.18.0.0/15, where
    /// loopback-only kernel behaviour does not apply.
    TwoHosts,
    /// "Pods" (namespaces) behind a "node" namespace that source-NATs them
    /// (nft masquerade with `--ports` NAT ports) to one address on the way
    /// to B in its own namespace: the scarce ports are the NAT's.
    Nat,
}

impl Topology {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Loopback => "loopback",
            Topology::TwoHosts => "two-hosts",
            Topology::Nat => "nat",
        }
    }
}

impl FromStr for Topology {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Topology, LabError> {
        match s.trim() {
            "loopback" => Ok(Topology::Loopback),
            "two-hosts" => Ok(Topology::TwoHosts),
            "nat" => Ok(Topology::Nat),
            _ => Err(LabError::BadArgument {
                flag: "--topology",
                value: s.to_string(),
                reason: "expected loopback, two-hosts or nat".into(),
            }),
        }
    }
}

/// Everything one `repro` run needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Remedies to run, in order.
    pub remedies: Vec<Remedy>,
    /// Where the services run.
    pub topology: Topology,
    /// First port of the box's `ip_local_port_range`.
    pub port_lo: u16,
    /// Last port of the box's `ip_local_port_range` (inclusive).
    pub port_hi: u16,
    /// `net.ipv4.tcp_tw_reuse` in the box (0, 1 or 2); `tw-reuse` forces 1.
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_timestamps` in the box.
    pub timestamps: bool,
    /// Calls per second the driver sends to A (open loop).
    pub rate: u32,
    /// How long each remedy is driven.
    pub duration: Duration,
    /// Kept-alive connections from the driver to A. They take their ports
    /// from the box's range, so it must hold at least this many.
    pub driver_connections: usize,
    /// Calls outstanding at once; a call due beyond this is shed (counted
    /// as failed, never queued), which bounds the driver's memory.
    pub max_in_flight: usize,
    /// Source addresses `spread` uses.
    pub spread_sources: u8,
    /// `--topology nat`: client namespaces ("pods") behind the node.
    pub pods: u8,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            remedies: Remedy::ALL.to_vec(),
            topology: Topology::Loopback,
            port_lo: 32768,
            port_hi: 32768 + 999,
            tw_reuse: 0,
            timestamps: true,
            rate: 200,
            duration: Duration::from_secs(10),
            driver_connections: 64,
            max_in_flight: 4096,
            spread_sources: 16,
            pods: NAT_PODS,
        }
    }
}

impl Config {
    /// Ports in the box's range.
    pub fn ports(&self) -> u32 {
        u32::from(self.port_hi) - u32::from(self.port_lo) + 1
    }

    /// Sets the range to `ports` ports starting at `lo`, checking that it
    /// fits 1024-65535.
    pub fn set_ports(&mut self, ports: u32, lo: u32) -> Result<(), LabError> {
        if ports == 0 {
            return Err(bad("--ports", ports, "must be at least 1"));
        }
        if !(MIN_PORT..=65535).contains(&lo) {
            return Err(bad("--port-base", lo, "must be within 1024-65535"));
        }
        let hi = lo + ports - 1;
        if hi > 65535 {
            return Err(LabError::BadArgument {
                flag: "--ports",
                value: ports.to_string(),
                reason: format!("the range {lo}-{hi} does not fit 1024-65535"),
            });
        }
        // The services listen on UPSTREAM_PORT and FRONTEND_PORT; keep them out.
        if lo <= u32::from(FRONTEND_PORT) && hi >= u32::from(UPSTREAM_PORT) {
            return Err(LabError::BadArgument {
                flag: "--port-base",
                value: lo.to_string(),
                reason: format!("the range {lo}-{hi} overlaps the services' ports {UPSTREAM_PORT}-{FRONTEND_PORT}"),
            });
        }
        self.port_lo = lo as u16;
        self.port_hi = hi as u16;
        Ok(())
    }

    /// Sets the call rate, rejecting 0.
    pub fn set_rate(&mut self, rate: u32) -> Result<(), LabError> {
        if rate == 0 {
            return Err(bad("--rate", rate, "must be at least 1 call/s"));
        }
        if rate > 1_000_000 {
            return Err(bad("--rate", rate, "must be at most 1000000 calls/s"));
        }
        self.rate = rate;
        Ok(())
    }

    /// Sets `tcp_tw_reuse`, which must be 0, 1 or 2.
    pub fn set_tw_reuse(&mut self, v: u32) -> Result<(), LabError> {
        if v > 2 {
            return Err(bad(
                "--tw-reuse",
                v,
                "must be 0 (off), 1 (on) or 2 (loopback only)",
            ));
        }
        self.tw_reuse = v as u8;
        Ok(())
    }

    /// Sets the driver's kept-alive connections to A (1 to 1024).
    pub fn set_connections(&mut self, n: usize) -> Result<(), LabError> {
        if !(1..=MAX_CONNECTIONS).contains(&n) {
            return Err(bad(
                "--connections",
                n,
                &format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        self.driver_connections = n;
        Ok(())
    }

    /// Sets how many calls may be outstanding at once (1 to 65536).
    pub fn set_max_in_flight(&mut self, n: usize) -> Result<(), LabError> {
        if !(1..=MAX_IN_FLIGHT).contains(&n) {
            return Err(bad(
                "--max-in-flight",
                n,
                &format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        self.max_in_flight = n;
        Ok(())
    }

    /// The `ip_local_port_range` a remedy's box gets.
    pub fn range_of(&self, remedy: Remedy) -> [u16; 2] {
        if remedy == Remedy::WideRange {
            [WIDE_RANGE.0, WIDE_RANGE.1]
        } else {
            [self.port_lo, self.port_hi]
        }
    }

    /// Checks the settings against each other (each setter checks its own
    /// value): every remedy must fit the topology ([`Remedy::fits`]), and
    /// outside the NAT the driver's kept-alive connections take their ports
    /// from the box's range, so a range smaller than them cannot even start.
    pub fn check(&self) -> Result<(), LabError> {
        if let Some(r) = self.remedies.iter().find(|r| !r.fits(self.topology)) {
            return Err(LabError::BadArgument {
                flag: "--only",
                value: r.name().to_string(),
                reason: format!(
                    "makes no sense with --topology {}; expected one of {}",
                    self.topology.name(),
                    names_for(self.topology)
                ),
            });
        }
        let connections = self.driver_connections;
        // Behind a NAT the driver runs in the node and calls the pods'
        // frontends directly: its connections take none of the NAT's ports.
        let driver_in_box = self.topology != Topology::Nat;
        if let Some(r) = self.remedies.iter().filter(|_| driver_in_box).find(|&&r| {
            let [lo, hi] = self.range_of(r);
            (usize::from(hi) - usize::from(lo) + 1) < connections
        }) {
            let ports = self.ports();
            return Err(LabError::BadArgument {
                flag: "--ports",
                value: ports.to_string(),
                reason: format!(
                    "smaller than --connections {connections}: each of the driver's kept-alive \
                     connections to A holds a port of the box's range ({r} uses {}-{}); use \
                     --ports {connections} or more, or --connections {ports} or fewer",
                    self.port_lo, self.port_hi
                ),
            });
        }
        Ok(())
    }

    /// Sets the per-remedy duration (0.1 s to 1 hour).
    pub fn set_duration(&mut self, d: Duration) -> Result<(), LabError> {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(LabError::BadArgument {
                flag: "--duration",
                value: format!("{d:?}"),
                reason: "must be between 0.1s and 1h".into(),
            });
        }
        self.duration = d;
        Ok(())
    }
}

fn bad(flag: &'static str, value: impl fmt::Display, reason: &str) -> LabError {
    LabError::BadArgument {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m` or a plain number of
/// seconds (`7.5`).
pub fn parse_duration(text: &str) -> Result<Duration, LabError> {
    let t = text.trim();
    let err = || LabError::BadArgument {
        flag: "--duration",
        value: text.to_string(),
        reason: "expected a duration such as 10s, 500ms or 2m".into(),
    };
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    let d = Duration::from_secs_f64(v * scale);
    let mut probe = Config::default();
    probe.set_duration(d).map_err(|_| LabError::BadArgument {
        flag: "--duration",
        value: text.to_string(),
        reason: "must be between 0.1s and 1h".into(),
    })?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remedies_parse_and_unknown_is_named() {
        assert_eq!(
            parse_remedies("naive, rotate,naive").unwrap(),
            vec![Remedy::Naive, Remedy::Rotate]
        );
        let e = parse_remedies("naive,bogus").unwrap_err().to_string();
        assert!(e.contains("\"bogus\"") && e.contains("--only"), "{e}");
        assert!(parse_remedies("naive,,rotate").is_err());
    }

    #[test]
    fn ranges_must_fit() {
        let mut c = Config::default();
        assert!(c.set_ports(1000, 32768).is_ok());
        assert_eq!((c.port_lo, c.port_hi, c.ports()), (32768, 33767, 1000));
        assert!(c
            .set_ports(0, 32768)
            .unwrap_err()
            .to_string()
            .contains("\"0\""));
        let e = c.set_ports(70000, 32768).unwrap_err().to_string();
        assert!(e.contains("70000") && e.contains("1024-65535"), "{e}");
        assert!(c
            .set_ports(10, 80)
            .unwrap_err()
            .to_string()
            .contains("\"80\""));
        assert!(c.set_ports(100, 1050).is_err(), "overlaps the services");
        assert!(c.set_ports(1, 65535).is_ok());
    }

    #[test]
    fn rate_and_reuse_are_checked() {
        let mut c = Config::default();
        assert!(c
            .set_rate(0)
            .unwrap_err()
            .to_string()
            .contains("--rate \"0\""));
        assert!(c.set_tw_reuse(3).is_err());
        assert!(c.set_tw_reuse(2).is_ok());
    }

    #[test]
    fn ports_must_hold_the_driver_connections() {
        let mut c = Config::default();
        c.set_ports(10, 40000).unwrap();
        c.set_connections(64).unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("--ports \"10\"") && e.contains("--connections 64"),
            "{e}"
        );
        c.set_connections(10).unwrap();
        assert!(c.check().is_ok());
        // wide-range does not use the base range.
        c.remedies = vec![Remedy::WideRange];
        c.set_connections(64).unwrap();
        assert!(c.check().is_ok());
        assert!(c.set_connections(0).is_err());
        assert!(c.set_max_in_flight(0).is_err());
        assert!(c.set_max_in_flight(100_000).is_err());
    }

    #[test]
    fn remedies_must_fit_the_topology() {
        let mut c = Config {
            topology: Topology::Nat,
            remedies: Remedy::defaults(Topology::Nat),
            ..Config::default()
        };
        assert!(c.check().is_ok());
        c.remedies.push(Remedy::Spread);
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("--only \"spread\"") && e.contains("--topology nat"),
            "{e}"
        );
        c.topology = Topology::Loopback;
        c.remedies = vec![Remedy::SnatPool];
        assert!(c.check().unwrap_err().to_string().contains("\"snat-pool\""));
        assert_eq!("nat".parse::<Topology>().unwrap(), Topology::Nat);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon")
            .unwrap_err()
            .to_string()
            .contains("soon"));
        assert!(parse_duration("0s").is_err());
    }
}

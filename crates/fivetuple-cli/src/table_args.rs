//! The arguments `doctor`, `exporter` and `top` share: which network
//! namespace's socket table to read, and with which reader; and the
//! thresholds `doctor` and `top` judge a destination by.

use anyhow::{bail, Result};
use fivetuple_scan::model::Thresholds;
use fivetuple_scan::netns::Target;
use fivetuple_scan::node::Capability;
use fivetuple_scan::Reader;

/// Raw namespace and reader arguments, as typed; flattened into each
/// subcommand that reads a socket table.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// Read the named network namespace under /run/netns.
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub netns: Option<String>,
    /// Read every network namespace of the host (/proc/*/ns/net and /run/netns), labelled by container and pod; needs CAP_SYS_ADMIN and CAP_SYS_PTRACE.
    #[arg(long, conflicts_with_all = ["netns", "pid"])]
    pub all_netns: bool,
    /// With --all-netns: skip the sockets that called bind() but neither connect() nor listen() (Linux 6.8+). They hold ports of the range, so capacities then read high by what they hold; reading them makes each namespace's dump walk the bind hash all namespaces share, about 11 ms a namespace on a node of 100,000 sockets (docs/BENCHMARKS.md).
    #[arg(long, requires = "all_netns")]
    pub skip_bound_inactive: bool,
    /// Read the network namespace of this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Where to read the socket table: netlink with /proc fallback (auto), netlink or proc.
    #[arg(long, value_name = "SOURCE", default_value = "auto", value_parser = ["auto", "netlink", "proc"])]
    pub source: String,
}

impl TableArgs {
    /// Whether bound-inactive sockets are read: always for one namespace;
    /// with `--all-netns` unless `--skip-bound-inactive`.
    pub fn bound_inactive(&self) -> bool {
        !self.skip_bound_inactive
    }

    /// The namespace to read: `--netns`, else `--pid`, else the current one.
    pub fn target(&self) -> Target {
        match (&self.netns, self.pid) {
            (Some(name), _) => Target::Named(name.clone()),
            (None, Some(pid)) => Target::Pid(pid),
            (None, None) => Target::Current,
        }
    }

    /// With `--all-netns`: fails, naming them, when this process lacks a
    /// capability that reading every namespace needs, so a partial node is
    /// never reported as the whole one.
    pub fn check_all_netns(&self) -> Result<()> {
        let missing = fivetuple_scan::node::missing_capabilities_now()?;
        if missing.is_empty() {
            return Ok(());
        }
        let why: Vec<String> = missing
            .iter()
            .map(|c| match c {
                Capability::SysAdmin => {
                    format!("{} (setns() into another network namespace)", c.name())
                }
                Capability::SysPtrace => {
                    format!("{} (opening other users' /proc/PID/ns/net)", c.name())
                }
            })
            .collect();
        bail!(
            "--all-netns needs {}, which this process lacks; run it as root or grant the capabilities (deploy/kubernetes/daemonset.yaml, deploy/systemd/fivetuple-exporter.service); without --all-netns the current namespace needs neither",
            why.join(" and ")
        )
    }

    /// The reader `--source` names (clap has already rejected other values).
    pub fn reader(&self) -> Reader {
        match self.source.as_str() {
            "netlink" => Reader::Netlink,
            "proc" => Reader::Proc,
            _ => Reader::Auto,
        }
    }
}

/// Raw threshold arguments, as typed; flattened into `doctor` and `top`.
/// A destination is as bad as the worse of its utilization and its time to
/// exhaustion (`fivetuple_scan::model::Thresholds`).
#[derive(Debug, Clone, clap::Args)]
pub struct ThresholdArgs {
    /// Warning threshold, percent of usable ports toward one destination.
    #[arg(long, value_name = "PCT", default_value = "50", value_parser = parse_percent)]
    pub warn: f64,
    /// Critical threshold, percent of usable ports toward one destination.
    #[arg(long, value_name = "PCT", default_value = "90", value_parser = parse_percent)]
    pub crit: f64,
    /// Warning when a destination runs out of ports in less than this at the current rate ("600", "90s", "10m").
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = parse_seconds)]
    pub warn_seconds: f64,
    /// Critical when a destination runs out of ports in less than this at the current rate.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub crit_seconds: f64,
}

impl ThresholdArgs {
    /// The thresholds, once the pairs are in order.
    pub fn thresholds(&self) -> Result<Thresholds> {
        if self.warn >= self.crit {
            bail!("--warn {} must be below --crit {}", self.warn, self.crit);
        }
        if self.crit_seconds >= self.warn_seconds {
            bail!(
                "--crit-seconds {} must be below --warn-seconds {}: less time left is worse",
                self.crit_seconds,
                self.warn_seconds
            );
        }
        Ok(Thresholds {
            warn_pct: self.warn,
            crit_pct: self.crit,
            warn_seconds: self.warn_seconds,
            crit_seconds: self.crit_seconds,
        })
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!(
            "{s} is out of range: a percentage must be above 0 and at most 100"
        ));
    }
    Ok(v)
}

/// A time to exhaustion threshold: seconds ("600", "90s") or minutes ("10m"), above 0.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a number of seconds (examples: 600, 90s, 10m)");
    let (num, scale) = if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() {
        return Err(bad());
    }
    if v <= 0.0 {
        return Err(format!("{s} is out of range: must be above 0 seconds"));
    }
    Ok(v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_bounds() {
        assert_eq!(parse_percent("50").unwrap(), 50.0);
        assert_eq!(parse_percent("90%").unwrap(), 90.0);
        assert!(parse_percent("0").unwrap_err().contains('0'));
        assert!(parse_percent("101").unwrap_err().contains("101"));
        assert!(parse_percent("NaN").is_err());
        assert!(parse_percent("abc").unwrap_err().contains("abc"));
    }

    #[test]
    fn seconds_thresholds() {
        assert_eq!(parse_seconds("600").unwrap(), 600.0);
        assert_eq!(parse_seconds("90s").unwrap(), 90.0);
        assert_eq!(parse_seconds("10m").unwrap(), 600.0);
        assert!(parse_seconds("0").unwrap_err().contains('0'));
        assert!(parse_seconds("-5").unwrap_err().contains("-5"));
        assert!(parse_seconds("soon").unwrap_err().contains("soon"));
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn pairs_must_be_in_order() {
        let t = |warn, crit, ws, cs| ThresholdArgs {
            warn,
            crit,
            warn_seconds: ws,
            crit_seconds: cs,
        };
        assert_eq!(
            t(50.0, 90.0, 600.0, 60.0).thresholds().unwrap(),
            Thresholds::default()
        );
        let e = t(90.0, 80.0, 600.0, 60.0)
            .thresholds()
            .unwrap_err()
            .to_string();
        assert!(e.contains("90") && e.contains("80"), "{e}");
        let e = t(50.0, 90.0, 30.0, 60.0)
            .thresholds()
            .unwrap_err()
            .to_string();
        assert!(e.contains("30") && e.contains("60"), "{e}");
    }
}

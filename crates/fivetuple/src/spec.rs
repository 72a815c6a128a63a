//! Policies from text, for command lines and configuration files:
//!
//! | spec | policy |
//! |---|---|
//! | `kernel` | [`KernelDefault`] |
//! | `rotate` | [`Rotation`] over the namespace's `ip_local_port_range` |
//! | `rotate:20000-29999` | [`Rotation`] over that range |
//! | `spread:127.0.0.2-127.0.0.17` | [`Spread`] over a range of addresses |
//! | `spread:127.0.0.2,127.0.0.3,::1` | [`Spread`] over a list |
//! | `window:40000-40999` | [`PortWindow`] |
//! | `spread-rotate:127.0.0.2-127.0.0.5@20000-29999` | [`Rotation::with_sources`] |

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::policy::{KernelDefault, LocalPolicy, PortRange};
use crate::rotation::Rotation;
use crate::spread::{address_range, Spread};
use crate::window::PortWindow;

/// Builds a policy from a specification such as `rotate:20000-29999` (see the
/// module table). Errors name the specification and what was expected.
pub fn parse_policy(spec: &str) -> Result<Arc<dyn LocalPolicy>, ConfigError> {
    let bad = |reason: String| ConfigError::BadSpec {
        spec: spec.to_string(),
        reason,
    };
    let (kind, arg) = match spec.split_once(':') {
        Some((k, a)) => (k.trim(), Some(a.trim())),
        None => (spec.trim(), None),
    };
    let need = |what: &str| {
        arg.filter(|a| !a.is_empty()).ok_or_else(|| {
            bad(format!(
                "{kind} needs {what}, e.g. {kind}:{}",
                example(kind)
            ))
        })
    };
    Ok(match kind {
        "kernel" if arg.is_none() => Arc::new(KernelDefault),
        "kernel" => return Err(bad("kernel takes no argument".into())),
        "rotate" => match arg {
            None => Arc::new(Rotation::over_local_port_range()?),
            Some(r) => Arc::new(Rotation::new(r.parse::<PortRange>()?)?),
        },
        "spread" => Arc::new(Spread::new(parse_addresses(need("source addresses")?)?)?),
        "window" => Arc::new(PortWindow::new(need("a port range")?.parse::<PortRange>()?)?),
        "spread-rotate" => {
            let a = need("addresses@ports")?;
            let (addrs, ports) = a
                .split_once('@')
                .ok_or_else(|| bad("expected ADDRESSES@PORTS, e.g. spread-rotate:127.0.0.2-127.0.0.5@20000-29999".into()))?;
            Arc::new(Rotation::new(ports.parse::<PortRange>()?)?.with_sources(parse_addresses(addrs)?)?)
        }
        other => {
            return Err(bad(format!(
                "unknown kind {other:?}: expected kernel, rotate[:LO-HI], spread:ADDRESSES, window:LO-HI or spread-rotate:ADDRESSES@LO-HI"
            )))
        }
    })
}

fn example(kind: &str) -> &'static str {
    match kind {
        "spread" => "127.0.0.2-127.0.0.17",
        "spread-rotate" => "127.0.0.2-127.0.0.5@20000-29999",
        _ => "40000-40999",
    }
}

/// Parses `A-B` (an inclusive range) or `A,B,C` (a list) of IP addresses.
pub fn parse_addresses(text: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let ip = |s: &str| {
        s.trim()
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::BadSpec {
                spec: text.to_string(),
                reason: format!("{:?} is not an IP address", s.trim()),
            })
    };
    if text.contains(',') || !text.contains('-') {
        let list = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(ip)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(ConfigError::NoAddresses);
        }
        return Ok(list);
    }
    let (from, to) = text.split_once('-').unwrap_or((text, text));
    address_range(ip(from)?, ip(to)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Choice;
    use std::net::SocketAddr;

    fn remote() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            parse_policy("kernel").unwrap().choose(remote(), 1),
            Choice::Kernel
        );
        match parse_policy("rotate:20000-20009")
            .unwrap()
            .choose(remote(), 1)
        {
            Choice::Endpoint(a) => assert!((20000..=20009).contains(&a.port())),
            other => panic!("{other:?}"),
        }
        match parse_policy("spread:127.0.0.2-127.0.0.17")
            .unwrap()
            .choose(remote(), 1)
        {
            Choice::Address(a) => assert_eq!(a, "127.0.0.2".parse::<IpAddr>().unwrap()),
            other => panic!("{other:?}"),
        }
        match parse_policy("spread-rotate:127.0.0.2,127.0.0.3@30000-30001")
            .unwrap()
            .choose(remote(), 1)
        {
            Choice::Endpoint(a) => {
                assert!(a.ip().is_loopback() && (30000..=30001).contains(&a.port()))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_policy("window:40000-40999").is_ok());
    }

    #[test]
    fn bad_specs_name_the_value() {
        for (spec, needle) in [
            ("bogus", "invalid policy \"bogus\": unknown kind"),
            ("rotate:300-200", "300-200"),
            ("rotate:0-10", "port 0"),
            ("spread:", "spread needs source addresses"),
            ("spread:127.0.0.2-::1", "mixes IPv4 and IPv6"),
            ("spread:127.0.0.x", "\"127.0.0.x\""),
            ("window", "window needs a port range"),
            ("spread-rotate:127.0.0.2", "ADDRESSES@PORTS"),
            ("kernel:1", "no argument"),
        ] {
            let e = parse_policy(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec} parsed"));
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
    }
}

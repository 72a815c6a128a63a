//! A real web server: nginx on loopback inside a throwaway network namespace
//! whose ephemeral range is 100 ports with `tcp_tw_reuse=0`, called 5,000
//! times with keep-alive off through fivetuple's connector. nginx's access
//! log (`$remote_port`) shows which source ports it accepted.
//!
//! Needs root and nginx (`apt-get install nginx`; found at /usr/sbin/nginx or
//! on PATH). Skipped without root unless CI is set.
#![cfg(feature = "hyper")]

mod hyper_support;

use fivetuple::http::HttpConnector;
use fivetuple::{Connector, PortRange, Rotation};
use fivetuple_testkit::nginx::Nginx;
use hyper_support::{close_per_call, get, in_netns, root_or_skip};

const LO: u16 = 40000;
const HI: u16 = 40099;
const CALLS: usize = 5000;
const LISTEN: &str = "127.0.0.1:8080";

/// Rotation over the namespace's whole 100-port range, as in the hyper
/// server test: only rotation opens connections here, so the range is the
/// kernel's own and the budget is the same as the kernel default's, which
/// runs out after at most 100 calls (see `hyper_netns.rs`).
#[test]
fn netns_root_nginx_5000_close_per_call_gets_from_rotation_range() {
    if !root_or_skip("netns_root_nginx_5000_close_per_call_gets_from_rotation_range") {
        return;
    }
    let sysctls = [
        ("ip_local_port_range", "40000 40099"),
        ("tcp_tw_reuse", "0"),
        ("tcp_timestamps", "1"),
    ];
    in_netns("nginx-100", &sysctls, || async {
        let nginx = Nginx::start("hyper", &[LISTEN]);
        let rotation = Rotation::new(PortRange::new(LO, HI).unwrap()).unwrap();
        let connector = HttpConnector::new(Connector::new(rotation));
        let stats = connector.stats().clone();
        let client = close_per_call(connector);
        let uri: hyper::Uri = format!("http://{LISTEN}/").parse().unwrap();

        let mut client_ports = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let (status, body, info) = get(&client, uri.clone())
                .await
                .unwrap_or_else(|e| panic!("call {i} failed: {e:?}\n{}", nginx.error_log()));
            assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"), "call {i}");
            client_ports.push(info.local_addr().port());
        }
        drop(client);

        let lines = nginx.access_log(CALLS);
        assert_eq!(lines.len(), CALLS, "access log lines");
        let mut server_ports: Vec<u16> = lines
            .iter()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 3, "log line {line:?}");
                assert_eq!((f[0], f[2]), ("127.0.0.1", "200"), "log line {line:?}");
                let port: u16 = f[1].parse().unwrap();
                assert!((LO..=HI).contains(&port), "nginx saw source port {port}");
                port
            })
            .collect();
        // What nginx saw is what the client used, call for call.
        server_ports.sort_unstable();
        client_ports.sort_unstable();
        assert_eq!(server_ports, client_ports);
        let distinct: std::collections::HashSet<u16> = server_ports.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            usize::from(HI - LO + 1),
            "every port of the range used"
        );

        let s = stats.snapshot();
        assert_eq!(s.opened_endpoint, CALLS as u64, "{s:?}");
        assert_eq!(s.attempts, CALLS as u64 + s.exhaustion_retries, "{s:?}");
        assert_eq!((s.exhaustion_failures, s.other_failures), (0, 0), "{s:?}");
    });
}

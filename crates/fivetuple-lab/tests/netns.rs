//! Behaviour of the boxes and the remedies, in real network namespaces.
//! These need root (or CAP_SYS_ADMIN): without it they print a skip line and
//! return, except under CI=true, where they must run.

use std::sync::Arc;
use std::time::Duration;

use fivetuple_lab::{Config, Privilege, Remedy, Topology, Verdict};

/// Returns the privilege, or `None` (test skipped) when namespaces are not
/// available outside CI. Under CI a missing privilege fails the test.
fn privilege(test: &str) -> Option<Privilege> {
    // The test harness is multithreaded, so only the root path can work here.
    match fivetuple_lab::prepare() {
        Ok(p) => Some(p),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping {test}: needs root or CAP_SYS_ADMIN ({e})");
            None
        }
        Err(e) => panic!("{test} must run in CI: {e}"),
    }
}

fn small(remedies: &[Remedy], ports: u32, rate: u32, secs: f64) -> Config {
    let mut c = Config {
        remedies: remedies.to_vec(),
        driver_connections: 8,
        ..Config::default()
    };
    c.set_ports(ports, 40000).unwrap();
    c.set_rate(rate).unwrap();
    c.set_duration(Duration::from_secs_f64(secs)).unwrap();
    c
}

#[test]
fn netns_root_naive_exhausts_a_small_range_and_rotation_survives_it() {
    let Some(p) = privilege("netns_root_naive_exhausts_a_small_range_and_rotation_survives_it")
    else {
        return;
    };
    // 100 ports at 100 calls/s: the kernel runs out after about 1 s.
    let report = fivetuple_lab::run(
        &small(&[Remedy::Naive, Remedy::Rotate], 100, 100, 2.0),
        p,
        Arc::new(fivetuple_lab::Quiet),
    )
    .unwrap();
    let naive = &report.remedies[0];
    assert_eq!(naive.verdict, Verdict::Fails, "{naive:?}");
    let err = naive.error.as_deref().unwrap();
    assert!(err.contains("os error 99"), "{err}");
    assert!(
        (80..=120).contains(&naive.ok),
        "naive ok {} should be about the 100 ports",
        naive.ok
    );
    assert!(naive.peak_time_wait >= 80, "{naive:?}");
    let rotate = &report.remedies[1];
    assert_eq!(rotate.failed, 0, "{rotate:?}");
    assert_eq!(rotate.ok, 200);
    // Twice as many connections as ports, yet TIME_WAIT never exceeds the
    // range: each explicit bind took over a TIME_WAIT 4-tuple.
    assert!((50..=100).contains(&rotate.peak_time_wait), "{rotate:?}");
}

#[test]
fn netns_root_auth_does_two_requests_per_connection_and_exhausts() {
    let Some(p) = privilege("netns_root_auth_does_two_requests_per_connection_and_exhausts") else {
        return;
    };
    let report = fivetuple_lab::run(
        &small(&[Remedy::Auth], 50, 100, 1.0),
        p,
        Arc::new(fivetuple_lab::Quiet),
    )
    .unwrap();
    let auth = &report.remedies[0];
    assert!((40..=60).contains(&auth.ok), "{auth:?}");
    assert!(
        auth.error
            .as_deref()
            .unwrap()
            .contains("Cannot assign requested address"),
        "{auth:?}"
    );
}

#[test]
fn netns_root_two_hosts_over_veth() {
    let Some(p) = privilege("netns_root_two_hosts_over_veth") else {
        return;
    };
    let mut c = small(&[Remedy::Naive, Remedy::Spread], 50, 100, 1.0);
    c.topology = Topology::TwoHosts;
    c.spread_sources = 4;
    let report = fivetuple_lab::run(&c, p, Arc::new(fivetuple_lab::Quiet)).unwrap();
    let naive = &report.remedies[0];
    assert_eq!(naive.verdict, Verdict::Fails, "{naive:?}");
    assert!((40..=60).contains(&naive.ok), "{naive:?}");
    let spread = &report.remedies[1];
    assert_eq!(spread.failed, 0, "{spread:?}");
    assert_eq!(spread.settings.sources, 4);
}

/// Over the veth, the kernel-default client gets exactly one call per port
/// of the range before EADDRNOTAVAIL: setting the box up (the readiness
/// probe toward B) spends none of them.
#[test]
fn netns_root_two_hosts_naive_gets_every_port_of_the_range() {
    let Some(p) = privilege("netns_root_two_hosts_naive_gets_every_port_of_the_range") else {
        return;
    };
    let mut c = small(&[Remedy::Naive], 1000, 400, 3.0);
    c.topology = Topology::TwoHosts;
    let report = fivetuple_lab::run(&c, p, Arc::new(fivetuple_lab::Quiet)).unwrap();
    let naive = &report.remedies[0];
    assert_eq!(naive.calls, 1200, "{naive:?}");
    assert_eq!(naive.ok, 1000, "one call per port: {naive:?}");
    assert_eq!(naive.failed, 200, "{naive:?}");
    assert!(
        naive.error.as_deref().unwrap().contains("os error 99"),
        "{naive:?}"
    );
    // Every TIME_WAIT in the box is one of the calls': the probe left none.
    assert_eq!(naive.peak_time_wait, 1000, "{naive:?}");
}

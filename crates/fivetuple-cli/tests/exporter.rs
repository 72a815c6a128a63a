//! `fivetuple exporter` as a fleet runs it: the real binary serving /metrics,
//! scraped by plain HTTP and by a real Prometheus server (Debian's
//! `prometheus` package) inside fresh network namespaces with known traffic.
//! Tests named `netns_root_*` need root; under CI=true they fail rather than
//! skip, and so does a missing `prometheus` or `promtool`.

mod support;

use support::*;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `n` client-first closes from `src` to `listener`: the client side ends in TIME_WAIT.
fn make_time_wait(src: [u8; 4], listener: &TcpListener, n: usize) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let c = connect_from(src, addr);
        let (mut s, _) = listener.accept().unwrap();
        drop(c);
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 0);
    }
}

#[test]
fn netns_root_prometheus_scrapes_known_traffic() {
    let test = "netns_root_prometheus_scrapes_known_traffic";
    if !have_root(test) || !have_tool(test, "prometheus", "prometheus") {
        return;
    }
    let dir = TempDir::new("exporter-prom");
    in_fresh_netns(|| {
        // A 100-port range, no TIME_WAIT reuse: 60 ESTABLISHED clients to :8080 are 60% of it.
        sysctl("ip_local_port_range", "40000 40099");
        sysctl("tcp_tw_reuse", "0");
        let l80 = TcpListener::bind("127.0.0.1:8080").unwrap();
        let l81 = TcpListener::bind("127.0.0.1:8081").unwrap();
        let mut keep = Vec::new();
        for _ in 0..60 {
            keep.push(connect_from(
                [127, 0, 0, 1],
                "127.0.0.1:8080".parse().unwrap(),
            ));
            keep.push(l80.accept().unwrap().0);
        }
        make_time_wait([127, 0, 0, 2], &l81, 30);

        let (_exporter, exp) = start_exporter(&["--listen", "127.0.0.1:19299"], |_| {});
        assert_eq!(exp.port(), 19299);
        let prom = Prometheus::start(
            &dir.0,
            &format!("  - job_name: fivetuple\n    static_configs:\n      - targets: ['{exp}']\n"),
        );
        let prom_addr = prom.addr;
        let (mut r, log) = prom.wait_for(&[
            "fivetuple_destination_utilization_ratio{job=\"fivetuple\",remote_port=\"8080\"}",
        ]);
        let util = r.remove(0);
        assert_eq!(
            util.len(),
            1,
            "no utilization series within 40 s; prometheus log:\n{log}"
        );
        let m = &util[0]["metric"];
        assert_eq!(m["local_ip"], "127.0.0.1");
        assert_eq!(m["remote_ip"], "127.0.0.1");
        assert_eq!(m["instance"], "127.0.0.1:19299");
        assert_eq!(value_of(&util[0]), 0.6, "60 of 100 ports");

        let up = query(prom_addr, "up{job=\"fivetuple\"}");
        assert_eq!(value_of(&up[0]), 1.0);
        let est = query(
            prom_addr,
            "fivetuple_destination_sockets{remote_port=\"8080\",state=\"ESTABLISHED\"}",
        );
        assert_eq!(value_of(&est[0]), 60.0);
        let tw = query(
            prom_addr,
            "fivetuple_destination_sockets{local_ip=\"127.0.0.2\",remote_port=\"8081\",state=\"TIME_WAIT\"}",
        );
        assert_eq!(value_of(&tw[0]), 30.0);
        let usable = query(prom_addr, "fivetuple_usable_ports");
        assert_eq!(value_of(&usable[0]), 100.0);
        let ok = query(prom_addr, "fivetuple_scrape_collector_success");
        // settings, destinations, counters and nat (root may read conntrack).
        assert_eq!(ok.len(), 4, "{ok:?}");
        assert!(ok.iter().all(|s| value_of(s) == 1.0), "{ok:?}");
        // Inbound (accepted) sockets of :8080 are not a destination.
        let by_port = query(
            prom_addr,
            "fivetuple_destination_ports_in_use{remote_port=~\"4.*\"}",
        );
        assert!(
            by_port.is_empty(),
            "accepted sockets exported as destinations: {by_port:?}"
        );
        drop(keep);
    });
}

#[test]
fn netns_root_http_codes_formats_and_concurrent_scrapes() {
    let test = "netns_root_http_codes_formats_and_concurrent_scrapes";
    if !have_root(test) || !have_tool(test, "promtool", "prometheus") {
        return;
    }
    let dir = TempDir::new("exporter-http");
    in_fresh_netns(|| {
        let l = TcpListener::bind("127.0.0.1:8080").unwrap();
        make_time_wait([127, 0, 0, 1], &l, 20);
        let (_exporter, addr) = start_exporter(&["--top-k", "1"], |_| {});

        let r = get(addr, "/nope");
        assert_eq!(r.status, 404);
        let r = request(addr, "POST", "/metrics", None);
        assert_eq!(r.status, 405);
        assert!(r.head.contains("allow: get, head"), "{}", r.head);
        assert_eq!(get(addr, "/").status, 200);

        let text = get(addr, "/metrics");
        assert_eq!(text.status, 200);
        assert!(
            text.head
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            text.head
        );
        assert!(!text.body.contains("# EOF"));
        assert_eq!(
            sample(
                &text.body,
                "fivetuple_destination_sockets{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"8080\",state=\"TIME_WAIT\"}"
            ),
            Some(20.0),
            "{}",
            text.body
        );
        promtool_check(&text.body, &dir.0);

        let om = request(
            addr,
            "GET",
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert_eq!(om.status, 200);
        assert!(
            om.head
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{}",
            om.head
        );
        assert!(om.body.ends_with("# EOF\n"));
        assert!(om
            .body
            .contains("# TYPE fivetuple_tcp_active_opens counter"));

        // 12 scrapers at once: every one gets a full scrape (shared scans, no 503).
        let replies: Vec<Reply> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..12)
                .map(|_| s.spawn(move || get(addr, "/metrics")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &replies {
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(r
                .body
                .contains("fivetuple_scrape_collector_success{collector=\"destinations\"} 1"));
        }
        let after = get(addr, "/metrics");
        assert_eq!(
            sample(
                &after.body,
                "fivetuple_exporter_connections_refused_total{reason=\"slots_full\"}"
            ),
            Some(0.0)
        );
    });
}

#[test]
fn netns_root_runs_without_root_and_watches_a_named_netns() {
    let test = "netns_root_runs_without_root_and_watches_a_named_netns";
    if !have_root(test) {
        return;
    }
    // Unprivileged: nobody can still read its own namespace's table over netlink.
    let (e, addr) = start_exporter(&[], |c| {
        c.uid(65534).gid(65534);
    });
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    for c in ["settings", "destinations", "counters"] {
        assert_eq!(
            sample(
                &r.body,
                &format!("fivetuple_scrape_collector_success{{collector=\"{c}\"}}")
            ),
            Some(1.0),
            "{c} as nobody:\n{}",
            r.body
        );
    }
    assert_eq!(
        sample(&r.body, "fivetuple_socket_table_source{source=\"netlink\"}"),
        Some(1.0)
    );
    // Conntrack is closed to nobody (CAP_NET_ADMIN): no NAT metrics and no
    // failing collector, one line saying why.
    assert!(
        !r.body.contains("collector=\"nat\"") && !r.body.contains("fivetuple_conntrack_"),
        "{}",
        r.body
    );
    let err = stderr_of(e);
    assert!(
        err.contains("NAT and conntrack metrics are off") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );

    // --netns NAME: the exporter listens in the host namespace and reads the named one.
    let name = format!("ft-exp-{}", std::process::id());
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success(), "ip netns add {name}");
    struct DelNetns(String);
    impl Drop for DelNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _del = DelNetns(name.clone());
    let keep = fivetuple_testkit::in_netns(format!("/run/netns/{name}"), || {
        assert!(Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        let l = TcpListener::bind("127.0.0.1:7070").unwrap();
        let mut keep = Vec::new();
        for _ in 0..25 {
            keep.push(connect_from(
                [127, 0, 0, 3],
                "127.0.0.1:7070".parse().unwrap(),
            ));
            keep.push(l.accept().unwrap().0);
        }
        (l, keep)
    });
    let (_e2, addr) = start_exporter(&["--netns", &name], |_| {});
    let r = get(addr, "/metrics");
    assert_eq!(
        sample(
            &r.body,
            "fivetuple_destination_sockets{local_ip=\"127.0.0.3\",remote_ip=\"127.0.0.1\",remote_port=\"7070\",state=\"ESTABLISHED\"}"
        ),
        Some(25.0),
        "{}",
        r.body
    );
    drop(keep);
}

#[test]
fn bad_arguments_exit_3_naming_the_value() {
    for (args, wanted) in [
        (&["--listen", "nowhere:80"][..], "\"nowhere:80\""),
        (&["--listen", "127.0.0.1"][..], "127.0.0.1"),
        (&["--top-k", "0"][..], "at least 1"),
        (&["--netns", "ft-no-such-netns"][..], "\"ft-no-such-netns\""),
    ] {
        let out = Command::new(BIN)
            .arg("exporter")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    // A port already taken is named too.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["exporter", "--listen", &a])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("cannot listen on {a}")), "{err}");
}

use fivetuple_testkit::hostile;

/// The value of `name{reason="..."}` in a scrape.
fn refused(body: &str, reason: &str) -> f64 {
    sample(
        body,
        &format!("fivetuple_exporter_connections_refused_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or_else(|| panic!("no refused{{reason={reason}}} in:\n{body}"))
}

#[test]
fn netns_root_hostile_clients_cannot_starve_a_scraper() {
    let test = "netns_root_hostile_clients_cannot_starve_a_scraper";
    if !have_root(test) {
        return;
    }
    fivetuple_testkit::raise_fd_limit();
    in_fresh_netns(|| {
        sysctl("tcp_tw_reuse", "0");
        // A 10k-socket table: TIME_WAITs toward :8080.
        let l = TcpListener::bind("127.0.0.1:8080").unwrap();
        fivetuple_testkit::make_time_wait(&l, 10_000);
        let (_e, addr) = start_exporter(&[], |_| {});
        let timeout = Duration::from_secs(10);

        // Phase 1: 64 idle (from 127.0.0.2) and 300 slowloris connections
        // (from 127.0.0.1, the scraper's own address) held open and reopened
        // whenever the exporter closes them.
        let attack = hostile::hold_open(
            addr,
            [127, 0, 0, 2],
            64,
            [127, 0, 0, 1],
            300,
            Duration::from_millis(500),
            Duration::from_secs(120),
        );
        std::thread::sleep(Duration::from_secs(3));
        let held = attack.open();
        let results = hostile::scrape_every(
            addr,
            [127, 0, 0, 1],
            "/metrics",
            "",
            Duration::from_secs(1),
            12,
            timeout,
        );
        let report = attack.finish();
        let times: Vec<Duration> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        // The issue asks for 95% within 1 s (the benchmark measures exactly
        // that, in release); a loaded CI machine and a debug build get margin.
        let quick = times
            .iter()
            .filter(|t| **t < Duration::from_secs(3))
            .count();
        assert!(
            quick * 100 >= 90 * results.len(),
            "{quick} of {} scrapes answered within 3 s under attack: {results:?}",
            results.len()
        );
        assert!(held >= 300, "the attack held only {held} connections open");
        assert!(
            report.closed_by_server > 0,
            "the exporter never closed an attacking connection: {report:?}"
        );
        let m = get(addr, "/metrics");
        assert!(refused(&m.body, "evicted_idle") > 0.0, "{}", m.body);
        assert!(
            sample(&m.body, "fivetuple_time_wait_sockets").unwrap() >= 10_000.0,
            "the table is not 10k sockets"
        );

        // Phase 2: 8 scrapers flooding back to back, and a ninth at 1/s.
        let until = Instant::now() + Duration::from_secs(10);
        let flooders = hostile::flood(addr, [127, 0, 0, 3], 8, "/metrics", until);
        std::thread::sleep(Duration::from_millis(500));
        let ninth = hostile::scrape_every(
            addr,
            [127, 0, 0, 4],
            "/metrics",
            "",
            Duration::from_secs(1),
            8,
            timeout,
        );
        let (mut ok, mut other) = (0, 0);
        for f in flooders {
            let (o, x) = f.join().unwrap();
            ok += o;
            other += x;
        }
        assert!(
            ninth.iter().all(Result::is_ok),
            "the ninth scraper: {ninth:?}"
        );
        assert_eq!(
            other, 0,
            "flooders got answers other than 200 ({ok} were 200)"
        );
        assert!(ok > 8, "the flooders were answered {ok} times");
        let m = get(addr, "/metrics");
        let shared = sample(&m.body, "fivetuple_exporter_scrapes_shared_total").unwrap();
        assert!(shared > 0.0, "no scan was shared:\n{}", m.body);
    });
}

/// A CA, a server certificate for 127.0.0.1 it signed, a client certificate
/// it signed, and a self-signed client certificate no CA vouches for, as PEM
/// files in `dir`; and a web config (`web.yml`) requiring a verified client
/// certificate and basic auth for user `prom`, password `s3cret`.
fn make_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fivetuple test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    let leaf = |names: Vec<String>, eku, file: &str, signed: bool| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = if signed {
            p.signed_by(&key, &ca).unwrap()
        } else {
            p.self_signed(&key).unwrap()
        };
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
        true,
    );
    leaf(
        vec!["prometheus".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
        true,
    );
    leaf(
        vec!["intruder".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "rogue",
        false,
    );
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
    .unwrap();
}

/// curl with `args` against `url`; (exit code, headers and body).
fn curl(dir: &Path, args: &[&str], url: &str) -> (i32, String) {
    let out = Command::new("curl")
        .current_dir(dir)
        .args(["-sS", "-i", "--max-time", "20", "--cacert", "ca.crt"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_mutual_auth_and_basic_auth_with_curl() {
    let test = "tls_mutual_auth_and_basic_auth_with_curl";
    if !have_tool(test, "curl", "curl") {
        return;
    }
    let dir = TempDir::new("exporter-tls");
    make_pki(&dir.0);
    let web = dir.0.join("web.yml");
    let (_e, addr) = start_exporter(&["--web.config.file", web.to_str().unwrap()], |_| {});
    let url = format!("https://{addr}/metrics");
    let me = ["--cert", "client.crt", "--key", "client.key"];
    let creds = [&me[..], &["-u", "prom:s3cret"]].concat();

    let (code, out) = curl(&dir.0, &creds, &url);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("fivetuple_scrape_collector_success{collector=\"destinations\"} 1"),
        "{out}"
    );

    // A verified certificate is not enough: basic auth is required too.
    let (code, out) = curl(&dir.0, &me, &url);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"fivetuple exporter\""),
        "{out}"
    );
    let wrong = [&me[..], &["-u", "prom:S3cret"]].concat();
    let (code, out) = curl(&dir.0, &wrong, &url);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let nobody = [&me[..], &["-u", "root:s3cret"]].concat();
    let (_, out) = curl(&dir.0, &nobody, &url);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");

    // Right password, but no client certificate, or one no CA signed: no TLS session at all.
    let (code, out) = curl(&dir.0, &["-u", "prom:s3cret"], &url);
    assert_ne!(code, 0, "served without a client certificate: {out}");
    assert!(!out.contains("HTTP/1.1"), "{out}");
    let rogue = [
        "--cert",
        "rogue.crt",
        "--key",
        "rogue.key",
        "-u",
        "prom:s3cret",
    ];
    let (code, out) = curl(&dir.0, &rogue, &url);
    assert_ne!(code, 0, "served a self-signed client certificate: {out}");
    assert!(!out.contains("HTTP/1.1"), "{out}");
    // Plain HTTP to the TLS port gets no metrics either.
    let (_, out) = curl(&dir.0, &[], &format!("http://{addr}/metrics"));
    assert!(!out.contains("fivetuple_"), "{out}");

    let (_, out) = curl(&dir.0, &creds, &url);
    assert!(
        sample(&out, "fivetuple_exporter_requests_unauthorized_total") == Some(3.0),
        "{out}"
    );
    assert!(refused(&out, "tls_failed") >= 3.0, "{out}");
}

#[test]
fn bad_web_config_exits_3_naming_the_field() {
    let dir = TempDir::new("exporter-badweb");
    let f = dir.0.join("web.yml");
    for (yaml, wanted) in [
        (
            "tls_server_config:\n  key_file: x.key\n",
            "tls_server_config.cert_file: is missing",
        ),
        (
            "basic_auth_users:\n  prom: plaintext\n",
            "basic_auth_users.prom: is not a bcrypt hash",
        ),
        ("tls_server_confg: {}\n", "unknown field `tls_server_confg`"),
    ] {
        std::fs::write(&f, yaml).unwrap();
        let out = Command::new(BIN)
            .args(["exporter", "--listen", "127.0.0.1:0", "--web.config.file"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{yaml:?}: {err}");
        assert!(err.contains(wanted), "{yaml:?}: {err}");
        assert!(out.stdout.is_empty(), "said it listens: {:?}", out.stdout);
    }
    let out = Command::new(BIN)
        .args(["exporter", "--web.config.file", "/nonexistent/web.yml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("/nonexistent/web.yml: cannot read it"),
        "{err}"
    );
}

#[test]
fn netns_root_prometheus_scrapes_over_tls_with_basic_auth() {
    let test = "netns_root_prometheus_scrapes_over_tls_with_basic_auth";
    if !have_root(test) || !have_tool(test, "prometheus", "prometheus") {
        return;
    }
    let dir = TempDir::new("exporter-prom-tls");
    make_pki(&dir.0);
    in_fresh_netns(|| {
        let web = dir.0.join("web.yml");
        let (_e, exp) = start_exporter(&["--web.config.file", web.to_str().unwrap()], |_| {});
        let d = dir.0.display();
        let tls = format!("    scheme: https\n    tls_config:\n      ca_file: {d}/ca.crt\n      cert_file: {d}/client.crt\n      key_file: {d}/client.key\n");
        let prom = Prometheus::start(
            &dir.0,
            &format!(
                "  - job_name: fivetuple\n{tls}    basic_auth:\n      username: prom\n      password: s3cret\n    static_configs:\n      - targets: ['{exp}']\n  - job_name: nopassword\n{tls}    static_configs:\n      - targets: ['{exp}']\n"
            ),
        );
        let prom_addr = prom.addr;
        let (mut r, log) = prom.wait_for(&[
            "fivetuple_scrape_collector_success{job=\"fivetuple\",collector=\"destinations\"}",
            "up{job=\"nopassword\"}",
        ]);
        let (ok, up_nopw) = (r.remove(0), r.remove(0));
        assert_eq!(
            ok.len(),
            1,
            "no scrape over TLS within 40 s; prometheus log:\n{log}"
        );
        assert_eq!(value_of(&ok[0]), 1.0);
        let up = query(prom_addr, "up{job=\"fivetuple\"}");
        assert_eq!(value_of(&up[0]), 1.0);
        // The same client certificate without the password is turned away.
        assert_eq!(up_nopw.len(), 1, "{log}");
        assert_eq!(value_of(&up_nopw[0]), 0.0, "scraped without basic auth");
    });
}

/// Runs `ip ARGS`, asserting success.
fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// In /run/netns/NAME: lo up, a listener on 127.0.0.1:`port` and `n`
/// ESTABLISHED connections to it from `src`. The sockets keep working from
/// any thread once made.
fn populate(name: &str, port: u16, src: [u8; 4], n: usize) -> (TcpListener, Vec<TcpStream>) {
    fivetuple_testkit::in_netns(format!("/run/netns/{name}"), || {
        ip(&["link", "set", "lo", "up"]);
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut keep = Vec::new();
        for _ in 0..n {
            keep.push(connect_from(src, l.local_addr().unwrap()));
            keep.push(l.accept().unwrap().0);
        }
        (l, keep)
    })
}

fn collector_success(body: &str) -> Vec<Option<f64>> {
    ["settings", "destinations", "counters"]
        .iter()
        .map(|c| {
            sample(
                body,
                &format!("fivetuple_scrape_collector_success{{collector=\"{c}\"}}"),
            )
        })
        .collect()
}

/// Stops the exporter and returns what it logged.
fn stderr_of(mut e: Reaper) -> String {
    let _ = e.0.kill();
    let _ = e.0.wait();
    let mut err = String::new();
    let _ = e.0.stderr.take().unwrap().read_to_string(&mut err);
    err
}

#[test]
fn netns_root_a_recreated_netns_is_followed_and_a_gone_one_fails() {
    let test = "netns_root_a_recreated_netns_is_followed_and_a_gone_one_fails";
    if !have_root(test) {
        return;
    }
    let name = format!("ft-follow-{}", std::process::id());
    struct DelNetns(String);
    impl Drop for DelNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _del = DelNetns(name.clone());
    ip(&["netns", "add", &name]);
    let first = populate(&name, 7070, [127, 0, 0, 3], 25);
    let (e, addr) = start_exporter(&["--netns", &name], |_| {});
    let est = |port: u16| {
        format!("fivetuple_destination_sockets{{local_ip=\"127.0.0.3\",remote_ip=\"127.0.0.1\",remote_port=\"{port}\",state=\"ESTABLISHED\"}}")
    };
    let r = get(addr, "/metrics");
    assert_eq!(sample(&r.body, &est(7070)), Some(25.0), "{}", r.body);

    // Same name, new namespace: the exporter must read the new one.
    ip(&["netns", "delete", &name]);
    ip(&["netns", "add", &name]);
    let second = populate(&name, 7071, [127, 0, 0, 3], 10);
    let r = get(addr, "/metrics");
    assert_eq!(sample(&r.body, &est(7071)), Some(10.0), "{}", r.body);
    assert_eq!(
        sample(&r.body, &est(7070)),
        None,
        "still the old namespace:\n{}",
        r.body
    );
    assert_eq!(collector_success(&r.body), vec![Some(1.0); 3]);

    // Name gone: every collector fails, no stale destination is served.
    ip(&["netns", "delete", &name]);
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(collector_success(&r.body), vec![Some(0.0); 3], "{}", r.body);
    assert!(!r.body.contains("fivetuple_destination_"), "{}", r.body);
    let err = stderr_of(e);
    assert!(err.contains("network namespace is now net:["), "{err}");
    assert!(
        err.contains(&format!("no network namespace named \"{name}\"")),
        "{err}"
    );
    drop((first, second));

    // --pid: a process in a namespace of its own, then gone.
    let mut sleeper = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("run unshare (util-linux)");
    let pid = sleeper.id();
    // Bounded wait for unshare to exec sleep inside the new namespace.
    let me = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .as_ref()
        == Some(&me)
    {
        assert!(Instant::now() < deadline, "unshare never moved");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (e, addr) = start_exporter(&["--pid", &pid.to_string()], |_| {});
    let r = get(addr, "/metrics");
    assert_eq!(collector_success(&r.body), vec![Some(1.0); 3], "{}", r.body);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let r = get(addr, "/metrics");
    assert_eq!(collector_success(&r.body), vec![Some(0.0); 3], "{}", r.body);
    assert!(!r.body.contains("fivetuple_usable_ports"), "{}", r.body);
    let err = stderr_of(e);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("the process has exited"),
        "{err}"
    );
}

#[test]
fn stdout_closed_or_full_exits_3_naming_stdout() {
    // Closed: the read end of the pipe is gone before the exporter writes.
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    let out = Command::new(BIN)
        .args(["exporter", "--listen", "127.0.0.1:0"])
        .stdout(w)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot write to stdout"), "{err}");
    assert!(err.contains("not serving"), "{err}");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [
        &["exporter", "--listen", "127.0.0.1:0"][..],
        &["doctor"][..],
        &["doctor", "--json"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdout(full())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("cannot write to stdout: No space left on device"),
            "{args:?}: {err}"
        );
    }
}

//! Readings that must be true under stress (issue 9): each test builds the
//! situation with real sockets in a fresh network namespace, then checks
//! `doctor --json`, doctor's exit code and the exporter's metrics, and what
//! the kernel told the client (the errno of a connect that found no port).
//! Tests named `netns_root_*` need root (unshare CLONE_NEWNET); under
//! CI=true they fail rather than skip.

mod support;

use support::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The exporter listens here inside each test's namespace: outside every
/// test's port range, so it works even when that range is exhausted.
const EXPORTER: &str = "127.0.0.1:19299";

/// The exporter, killed (by its own pid) when the guard goes away.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fivetuple exporter` in the calling thread's namespace and waits
/// for the line that says it listens.
fn start_exporter() -> Exporter {
    let mut child = Command::new(BIN)
        .args(["exporter", "--listen", EXPORTER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fivetuple exporter");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.contains(EXPORTER) {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let _ = child.kill();
        let _ = child.wait();
        panic!("the exporter did not start: {line:?}; stderr:\n{err}");
    }
    Exporter(child)
}

/// GET /metrics from an explicitly bound source port outside every test's
/// range (a range may be exhausted on purpose), each scrape a new port.
fn scrape() -> String {
    static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);
    let local: SocketAddr = format!("127.0.0.1:{}", NEXT_PORT.fetch_add(1, Ordering::Relaxed))
        .parse()
        .unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&local.into()).unwrap();
    let to: SocketAddr = EXPORTER.parse().unwrap();
    s.connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {local} -> {to}: {e}"));
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {EXPORTER}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `remote_port` labels of every per-destination series.
fn exported_remote_ports(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("fivetuple_destination_"))
        .filter_map(|l| l.split("remote_port=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Connects to `to` until `n` connections are held, accepting each on `l`.
fn hold(l: &TcpListener, to: &str, n: usize, keep: &mut Vec<TcpStream>) {
    for i in 0..n {
        let c = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect {i} to {to}: {e}"));
        keep.push(c);
        keep.push(l.accept().unwrap().0);
    }
}

fn assert_no_port_left(to: &str) {
    let err = TcpStream::connect(to).expect_err("the range should be exhausted");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EADDRNOTAVAIL),
        "connect to {to}: {err}"
    );
}

/// Reading 1: IPv4 and IPv4-mapped IPv6 share one port space. 50 IPv4 and
/// 50 dual-stack (`::ffff:127.0.0.1`) connections fill a 100-port range:
/// the next connect fails, and doctor and the exporter show one destination
/// at 100%, critical (before: two at 50%, warning).
#[test]
fn netns_root_ipv4_mapped_ipv6_is_one_destination() {
    if !have_root("netns_root_ipv4_mapped_ipv6_is_one_destination") {
        return;
    }
    in_fresh_netns(|| {
        sysctl("ip_local_port_range", "40000 40099");
        let l = TcpListener::bind("127.0.0.1:9000").unwrap();
        let mut keep = Vec::new();
        for _ in 0..50 {
            hold(&l, "127.0.0.1:9000", 1, &mut keep);
            hold(&l, "[::ffff:127.0.0.1]:9000", 1, &mut keep);
        }
        // What the client sees: both families are out of ports.
        assert_no_port_left("127.0.0.1:9000");
        assert_no_port_left("[::ffff:127.0.0.1]:9000");

        let out = doctor(&["--json", "--top", "0", "--interval", "0"]);
        let doc = json_of(&out);
        assert_eq!(out.status.code(), Some(2), "{doc:#}");
        assert_eq!(doc["status"], "critical");
        let dests = doc["destinations"].as_array().unwrap();
        assert_eq!(dests.len(), 1, "one destination: {dests:#?}");
        let d = &dests[0];
        assert_eq!(
            (&d["local_ip"], &d["remote_ip"], &d["remote_port"]),
            (
                &Value::from("127.0.0.1"),
                &Value::from("127.0.0.1"),
                &Value::from(9000)
            )
        );
        assert_eq!(d["states"]["ESTABLISHED"], 100);
        assert_eq!(
            (d["in_use"].as_u64(), d["capacity"].as_u64()),
            (Some(100), Some(100))
        );
        assert_eq!(d["utilization"], 1.0);
        assert_eq!(d["exhausted"], true);
        assert!(!doc.to_string().contains("::ffff:"), "{doc:#}");

        let _e = start_exporter();
        let text = scrape();
        assert_eq!(
            sample(
                &text,
                "fivetuple_destination_utilization_ratio{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"9000\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "fivetuple_destination_ports_in_use{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"9000\"}"
            ),
            Some(100.0)
        );
        assert!(!text.contains("::ffff:"), "{text}");
        drop(keep);
    });
}

/// Reading 2: a stopped server's TIME_WAITs are not destinations. A server
/// on :8080 closes 200 connections first and exits; its 200 TIME_WAITs
/// (local :8080, remote = the clients' ports) stay. Doctor and the exporter
/// count them as inbound; the live client destination :9000 stays.
#[test]
fn netns_root_stopped_server_time_waits_are_not_destinations() {
    if !have_root("netns_root_stopped_server_time_waits_are_not_destinations") {
        return;
    }
    in_fresh_netns(|| {
        let server = TcpListener::bind("127.0.0.1:8080").unwrap();
        for _ in 0..200 {
            let mut c = TcpStream::connect("127.0.0.1:8080").unwrap();
            let (s, _) = server.accept().unwrap();
            drop(s); // the server closes first: its side ends in TIME_WAIT
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap(), 0, "the client sees the FIN");
        }
        drop(server); // the server exits
        let l9 = TcpListener::bind("127.0.0.1:9000").unwrap();
        let mut keep = Vec::new();
        hold(&l9, "127.0.0.1:9000", 30, &mut keep);
        // Bounded wait for the clients' LAST_ACKs to finish: only the
        // server's TIME_WAITs are left (ss counts them: all on :8080).
        let deadline = Instant::now() + Duration::from_secs(5);
        while fivetuple_testkit::ss_count("last-ack") > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let tw = fivetuple_testkit::ss_count("time-wait");
        assert!(tw >= 190, "{tw} TIME_WAITs of the server's 200");
        assert_eq!(
            fivetuple_testkit::ss_count("listening"),
            1,
            "only :9000 listens"
        );

        let out = doctor(&["--json", "--top", "0", "--interval", "0"]);
        let doc = json_of(&out);
        assert_eq!(out.status.code(), Some(0), "{doc:#}");
        let ports: Vec<u64> = doc["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["remote_port"].as_u64().unwrap())
            .collect();
        assert_eq!(ports, vec![9000], "{doc:#}");
        assert_eq!(doc["destinations_total"], 1);
        assert_eq!(doc["destinations"][0]["in_use"], 30);
        assert_eq!(doc["totals"]["inbound_without_listener"], tw);
        assert_eq!(
            doc["totals"]["inbound"],
            tw + 30,
            "the orphans + 30 accepted"
        );
        assert_eq!(doc["totals"]["time_wait"], tw);

        let _e = start_exporter();
        let text = scrape();
        let ports = exported_remote_ports(&text);
        // :9000 and, while it is open, the scrape's own connection.
        assert!(
            ports.iter().all(|p| p == "9000" || p == "19299"),
            "client ports exported as destinations: {ports:?}"
        );
        assert!(ports.contains("9000"), "{text}");
        assert!(
            sample(&text, "fivetuple_destinations ").unwrap() <= 2.0,
            "{text}"
        );
        assert_eq!(
            sample(&text, "fivetuple_time_wait_sockets "),
            Some(tw as f64),
            "{text}"
        );
        assert_eq!(
            sample(&text, "fivetuple_inbound_without_listener_sockets "),
            Some(tw as f64),
            "{text}"
        );
        drop(keep);
    });
}

/// Reading 3: zero usable ports is exhaustion, not 0%. Ten connections
/// are held, then `ip_local_reserved_ports` takes the whole range: the next
/// connect fails, and doctor says critical with a `no_usable_ports`
/// finding naming the reserved ports (before: 0%, ok).
#[test]
fn netns_root_reserved_range_is_exhaustion_not_zero_percent() {
    if !have_root("netns_root_reserved_range_is_exhaustion_not_zero_percent") {
        return;
    }
    in_fresh_netns(|| {
        sysctl("ip_local_port_range", "40000 40099");
        let l = TcpListener::bind("127.0.0.1:9000").unwrap();
        let mut keep = Vec::new();
        hold(&l, "127.0.0.1:9000", 10, &mut keep);
        sysctl("ip_local_reserved_ports", "40000-40099");
        assert_no_port_left("127.0.0.1:9000");
        assert_no_port_left("127.0.0.1:9001");

        let out = doctor(&["--json", "--interval", "0"]);
        let doc = json_of(&out);
        assert_eq!(out.status.code(), Some(2), "{doc:#}");
        assert_eq!(doc["status"], "critical");
        assert_eq!(doc["settings"]["usable_ports"], 0);
        let d = &doc["destinations"][0];
        assert_eq!(d["remote_port"], 9000);
        assert_eq!(d["capacity"], 0);
        assert_eq!(d["utilization"], 1.0);
        assert_eq!(d["exhausted"], true);
        assert_eq!(d["severity"], "critical");
        let f = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == "no_usable_ports")
            .unwrap_or_else(|| panic!("no no_usable_ports finding: {doc:#}"));
        assert_eq!(f["severity"], "critical");
        let msg = f["message"].as_str().unwrap();
        assert!(msg.contains("ip_local_reserved_ports covers 100"), "{msg}");
        let human = doctor(&["--interval", "0"]);
        assert_eq!(human.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&human.stdout).contains("no usable source port"),
            "{}",
            String::from_utf8_lossy(&human.stdout)
        );

        let _e = start_exporter();
        let text = scrape();
        assert_eq!(
            sample(&text, "fivetuple_usable_ports "),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "fivetuple_destination_utilization_ratio{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"9000\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "fivetuple_destination_seconds_to_exhaustion{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"9000\"}"
            ),
            Some(0.0),
            "{text}"
        );
        drop(keep);
    });
}

/// Reading 4: time to exhaustion drives the status. 200 of 1000 ports are
/// held and about 60 more are opened each second, against a sustainable
/// 16.7/s (no TIME_WAIT reuse): utilization stays far from the 90% line but
/// the ports run out within a minute, so doctor is critical (before: ok or
/// warning, by utilization alone) and the exporter's time to exhaustion is
/// under 60 s.
#[test]
fn netns_root_time_to_exhaustion_drives_the_exit_code() {
    if !have_root("netns_root_time_to_exhaustion_drives_the_exit_code") {
        return;
    }
    in_fresh_netns(|| {
        sysctl("ip_local_port_range", "40000 40999");
        sysctl("tcp_tw_reuse", "0");
        let l = TcpListener::bind("127.0.0.1:9000").unwrap();
        let mut keep = Vec::new();
        hold(&l, "127.0.0.1:9000", 200, &mut keep);
        let _e = start_exporter();

        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // About 60 new connections per second, at most 700 (the range
            // never fills: 200 + 700 < 1000) and for at most 20 s.
            let pacer = s.spawn(|| {
                let started = Instant::now();
                let mut more = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && more.len() < 2 * 700
                    && started.elapsed() < Duration::from_secs(20)
                {
                    hold(&l, "127.0.0.1:9000", 1, &mut more);
                    std::thread::sleep(Duration::from_millis(15));
                }
                more
            });
            std::thread::sleep(Duration::from_millis(300));

            scrape();
            std::thread::sleep(Duration::from_secs(1));
            let text = scrape();
            let prefix = "fivetuple_destination_seconds_to_exhaustion{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"9000\"}";
            let t = sample(&text, prefix).unwrap_or_else(|| panic!("no {prefix}:\n{text}"));
            assert!(t > 0.0 && t < 60.0, "exporter: {t} s\n{text}");

            let out = doctor(&["--json", "--interval", "1s"]);
            let doc = json_of(&out);
            stop.store(true, Ordering::Relaxed);
            let more = pacer.join().unwrap();

            let d = &doc["destinations"][0];
            let util = d["utilization"].as_f64().unwrap();
            let secs = d["seconds_to_exhaustion"].as_f64();
            assert!(util < 0.9, "utilization alone is not critical: {doc:#}");
            assert!(
                secs.is_some_and(|s| s < 60.0),
                "rate {} against {}: {doc:#}",
                d["rate_per_s"],
                d["sustainable_rate_per_s"]
            );
            assert_eq!(out.status.code(), Some(2), "{doc:#}");
            assert_eq!(doc["status"], "critical");
            assert_eq!(d["severity"], "critical");
            assert_eq!(doc["thresholds"]["crit_seconds"], 60.0);
            assert_eq!(doc["thresholds"]["warn_seconds"], 600.0);
            let f = &doc["findings"][0];
            assert_eq!(f["code"], "port_utilization");
            assert_eq!(f["severity"], "critical");
            assert!(
                f["message"]
                    .as_str()
                    .unwrap()
                    .contains("critical below 60 s"),
                "{f:#}"
            );
            drop(more);
        });
        drop(keep);
    });
}

/// Reading 6: rates from tiny intervals are refused. Below 100 ms is an
/// argument error naming the value (exit 3, nothing on stdout); 0 still
/// means one scan, and the report then says so instead of "0ns".
#[test]
fn interval_below_100ms_is_an_argument_error() {
    for v in ["50ms", "99ms", "0.05", "0.001s", "1ms"] {
        let out = doctor(&["--json", "--interval", v]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "--interval {v}: {err}");
        assert!(
            err.contains(v) && err.contains("100 ms"),
            "--interval {v}: {err}"
        );
        assert!(out.stdout.is_empty(), "--interval {v}");
    }
    let out = doctor(&["--json", "--interval", "100ms", "--no-processes"]);
    assert!(matches!(out.status.code(), Some(0..=2)), "{out:?}");
    assert_eq!(json_of(&out)["interval_s"], 0.1);
    let out = doctor(&["--interval", "0", "--no-processes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("0ns") && text.contains("no rate"), "{text}");
    let out = doctor(&["--interval", "0.25", "--no-processes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rate over 0.25 s"), "{text}");
}

/// `top` takes the same thresholds as doctor (it colours destinations and
/// its status by them) and refuses them out of order, naming the values.
#[test]
fn top_thresholds_are_checked_like_doctors() {
    for (args, needles) in [
        (
            &["--warn-seconds", "30", "--crit-seconds", "60"][..],
            &["30", "60"][..],
        ),
        (&["--warn", "95"][..], &["95", "90"][..]),
        (&["--crit-seconds", "never"][..], &["never"][..]),
    ] {
        let out = Command::new(BIN).arg("top").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr does not name {n}: {err}");
        }
    }
    // Good thresholds pass on to the terminal check (stdout is a pipe here).
    let out = Command::new(BIN)
        .args(["top", "--warn-seconds", "20m", "--crit-seconds", "2m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

//! `fivetuple trace` as a user runs it: the real binary streams each
//! connect that failed for lack of a port, as curl saw it, and exits cleanly
//! on Ctrl-C; without privileges it names what is missing and doctor still
//! works. Tests named `*_root` need root (a namespace, CAP_BPF, CAP_PERFMON,
//! switching to an unprivileged user); under CI=true they fail rather than skip.

mod support;

use support::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Inside a fresh netns: narrow the ephemeral range to 20 ports (40000-40019)
/// with no TIME_WAIT reuse, so the client runs out of ports quickly, and start
/// the upstream (its port lies outside that range).
fn upstream_with_20_ports() -> (TcpListener, u16) {
    sysctl("ip_local_port_range", "40000 40019");
    sysctl("tcp_tw_reuse", "0");
    upstream()
}

/// An HTTP upstream that answers once per connection and closes only after
/// the client has, so the TIME_WAIT stays with the client.
fn upstream() -> (TcpListener, u16) {
    let listener =
        TcpListener::bind("127.0.0.1:18080").expect("bind upstream (outside the port range)");
    let port = listener.local_addr().unwrap().port();
    let accept = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for conn in accept.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (listener, port)
}

/// Calls the upstream with curl `n` times; returns (succeeded, failed with
/// "Cannot assign requested address"). Any other failure fails the test.
fn curl_calls(port: u16, n: usize) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..n {
        let out = Command::new("curl")
            .args(["-sv", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("run curl");
        if out.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Cannot assign requested address"), "{err}");
            failed += 1;
        }
    }
    (ok, failed)
}

#[test]
fn trace_streams_curl_failures_and_stops_on_ctrl_c_root() {
    let test = "trace_streams_curl_failures_and_stops_on_ctrl_c_root";
    if !have_root(test) || !have_tool(test, "curl", "curl") {
        return;
    }
    in_fresh_netns(|| {
        let (_listener, port) = upstream_with_20_ports();
        let mut trace = Command::new(BIN)
            .args(["trace", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fivetuple trace");
        let mut lines = BufReader::new(trace.stdout.take().unwrap()).lines();
        // The first summary line says the programs are attached.
        let first: Value = serde_json::from_str(&lines.next().expect("a line").unwrap()).unwrap();
        assert_eq!(first["type"], "summary", "{first}");
        let (ok, failed) = curl_calls(port, 30);
        assert_eq!((ok, failed), (20, 10), "20 ports, 30 calls");
        std::thread::sleep(Duration::from_millis(1500)); // one more summary
                                                         // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failures = Vec::new();
        let mut total = None;
        for line in lines.by_ref() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            match v["type"].as_str() {
                Some("failure") => failures.push(v),
                Some("total") => total = Some(v),
                _ => {}
            }
            assert!(Instant::now() < deadline, "trace did not stop on SIGINT");
        }
        let status = trace.wait().unwrap();
        let mut stderr = String::new();
        trace
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "{status}: {stderr}");
        assert_eq!(failures.len() as u64, failed, "{failures:?}");
        for f in &failures {
            assert_eq!(f["comm"], "curl", "{f}");
            assert_eq!(f["destination"], format!("127.0.0.1:{port}"), "{f}");
            assert_eq!(f["errno_name"], "EADDRNOTAVAIL", "{f}");
            assert_eq!(f["stage"], "connect", "{f}");
            assert!(f["pid"].as_u64().unwrap() > 0, "{f}");
        }
        let total = total.expect("a total line on exit");
        assert_eq!(total["attempts"], ok + failed, "{total}");
        assert_eq!(total["successes"], ok, "{total}");
        assert_eq!(total["failures"], failed, "{total}");
        assert_eq!(total["time_wait"], ok, "{total}");
    });
}

#[test]
fn unprivileged_trace_names_cap_bpf_and_doctor_still_works_root() {
    let test = "unprivileged_trace_names_cap_bpf_and_doctor_still_works_root";
    if !have_root(test) {
        return;
    }
    let nobody = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).uid(65534).gid(65534);
        // std drops root's supplementary groups (setgroups(0)) before setuid.
        cmd.output().expect("run fivetuple as nobody")
    };
    let out = nobody(&["trace", "--duration", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("fivetuple: trace:").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = nobody(&["doctor", "--interval", "200ms", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "doctor as nobody: {:?} {stderr}",
        out.status
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert!(
        doc["settings"].is_object() && doc["destinations"].is_array(),
        "{doc}"
    );
    // The BPF part says once, in the notes, what is missing.
    let notes = doc["notes"].to_string();
    assert_eq!(notes.matches("CAP_BPF (").count(), 1, "{notes}");
    assert_eq!(doc["bpf"]["source"], "none", "{doc}");
}

/// GET /metrics over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the exporter");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
    body
}

/// The value of the one sample whose line starts with `name{` and contains every label.
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn exporter_bpf_counts_what_curl_saw_root() {
    let test = "exporter_bpf_counts_what_curl_saw_root";
    if !have_root(test) || !have_tool(test, "curl", "curl") {
        return;
    }
    in_fresh_netns(|| {
        let (_listener, port) = upstream_with_20_ports();
        let listen = "127.0.0.1:18099"; // outside the port range
        let mut exporter = Command::new(BIN)
            .args(["exporter", "--bpf", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fivetuple exporter");
        let mut line = String::new();
        BufReader::new(exporter.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{line}");
        let (ok, failed) = curl_calls(port, 30);
        assert_eq!((ok, failed), (20, 10));
        // 5 connections that this side accepts and closes first: their
        // TIME_WAITs are on the accepted side, with no connect to own them.
        // Each client binds its own port, so no new SYN of the same 4-tuple
        // takes over an earlier TIME_WAIT before ss looks.
        let closer = TcpListener::bind("127.0.0.1:18097").unwrap();
        for i in 0..5u16 {
            let client =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let src: std::net::SocketAddr = format!("127.0.0.1:{}", 41_001 + i).parse().unwrap();
            client.bind(&src.into()).unwrap();
            let dst: std::net::SocketAddr = "127.0.0.1:18097".parse().unwrap();
            client.connect(&dst.into()).unwrap();
            let mut client = std::net::TcpStream::from(client);
            let (accepted, _) = closer.accept().unwrap();
            drop(accepted);
            let mut buf = [0u8; 8];
            assert_eq!(client.read(&mut buf).unwrap(), 0);
        }
        std::thread::sleep(Duration::from_millis(300));
        let server_side = Command::new("ss")
            .args(["-Htan", "state", "time-wait", "src", "127.0.0.1:18097"])
            .output()
            .expect("run ss");
        let server_side = String::from_utf8_lossy(&server_side.stdout).lines().count();
        assert_eq!(server_side, 5, "ss sees the accepted side's TIME_WAITs");
        let body = scrape(listen);
        let _ = exporter.kill();
        let _ = exporter.wait();
        let dest = format!("destination=\"127.0.0.1:{port}\"");
        let curl = "comm=\"curl\"";
        assert!(body.contains("fivetuple_bpf_observer_loaded 1"), "{body}");
        assert_eq!(
            sample(&body, "fivetuple_connect_attempts_total", &[&dest, curl]),
            Some((ok + failed) as f64),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                "fivetuple_connect_exhaustion_failures_total",
                &[&dest, curl, "errno=\"EADDRNOTAVAIL\"", "stage=\"connect\""]
            ),
            Some(failed as f64),
            "{body}"
        );
        assert_eq!(
            sample(&body, "fivetuple_time_wait_entries_total", &[&dest, curl]),
            Some(ok as f64),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                "fivetuple_bpf_unattributed_total",
                &["event=\"time_wait\""]
            ),
            Some(server_side as f64),
            "the accepted side's TIME_WAITs, which no connect owns: {body}"
        );
        assert_eq!(
            sample(
                &body,
                "fivetuple_bpf_unattributed_total",
                &["event=\"connect\""]
            ),
            Some(0.0),
            "{body}"
        );
        assert!(
            body.contains("fivetuple_scrape_collector_success{collector=\"bpf\"} 1"),
            "{body}"
        );
    });
}

#[test]
fn unprivileged_exporter_bpf_says_what_is_missing_and_serves_root() {
    let test = "unprivileged_exporter_bpf_says_what_is_missing_and_serves_root";
    if !have_root(test) {
        return;
    }
    let listen = "127.0.0.1:18098";
    let mut exporter = Command::new(BIN)
        .args(["exporter", "--bpf", "--listen", listen])
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fivetuple exporter as nobody");
    let mut line = String::new();
    BufReader::new(exporter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    let body = scrape(listen);
    let _ = exporter.kill();
    let _ = exporter.wait();
    let mut stderr = String::new();
    exporter
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(body.contains("fivetuple_bpf_observer_loaded 0"), "{body}");
    assert!(
        body.contains("fivetuple_scrape_collector_success{collector=\"destinations\"} 1"),
        "{body}"
    );
    assert!(
        stderr.contains("--bpf") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("CAP_BPF (").count(),
        1,
        "said once: {stderr}"
    );
}

#[test]
fn doctor_names_time_wait_owners_and_failures_from_bpf_root() {
    let test = "doctor_names_time_wait_owners_and_failures_from_bpf_root";
    if !have_root(test) || !have_tool(test, "curl", "curl") || !have_tool(test, "ss", "iproute2") {
        return;
    }
    in_fresh_netns(|| {
        let (_listener, port) = upstream_with_20_ports();
        let doctor = Command::new(BIN)
            .args(["doctor", "--json", "--interval", "10s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fivetuple doctor");
        // The observer loads before the first scan; give it ample time.
        std::thread::sleep(Duration::from_secs(3));
        let (ok, failed) = curl_calls(port, 30);
        assert_eq!((ok, failed), (20, 10));
        let out = doctor.wait_with_output().unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let bpf = &doc["bpf"];
        assert_eq!(bpf["source"], "bpf", "{doc}");
        let ss_tw = Command::new("ss")
            .args(["-Htan", "state", "time-wait"])
            .output()
            .unwrap();
        let ss_tw = String::from_utf8_lossy(&ss_tw.stdout).lines().count() as u64;
        assert_eq!(ss_tw, ok);
        assert_eq!(bpf["time_wait_total"], ok, "{bpf}");
        assert_eq!(bpf["time_wait_attributed"], ok, "{bpf}");
        let failures = bpf["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1, "{bpf}");
        assert_eq!(failures[0]["count"], failed, "{bpf}");
        assert_eq!(failures[0]["errno"], 99, "{bpf}");
        assert_eq!(failures[0]["stage"], "connect", "{bpf}");
        assert_eq!(failures[0]["flow"]["comm"], "curl", "{bpf}");
        let dest = doc["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["remote_port"] == port)
            .unwrap_or_else(|| panic!("no destination :{port} in {doc}"));
        let owned: u64 = dest["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["comm"] == "curl")
            .map(|p| p["sockets"].as_u64().unwrap())
            .sum();
        assert_eq!(owned, ok, "every TIME_WAIT has its curl owner: {dest}");
        let notes = doc["notes"].to_string();
        assert!(
            notes.contains("TIME_WAIT owners come from BPF") && notes.contains("20 of 20"),
            "{notes}"
        );
        assert!(!notes.contains(NO_OWNER), "BPF named the owners: {notes}");
    });
}

/// The socket table's note, which doctor prints only without BPF.
const NO_OWNER: &str = "TIME_WAIT sockets have no owning process";

/// Doctor's text report, after checking it exited 0, 1 or 2.
fn doctor_text(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "doctor: {:?} {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.into_owned()
}

#[test]
fn doctor_names_its_time_wait_owner_source_root() {
    let test = "doctor_names_its_time_wait_owner_source_root";
    if !have_root(test) || !have_tool(test, "curl", "curl") || !have_tool(test, "ss", "iproute2") {
        return;
    }
    in_fresh_netns(|| {
        sysctl("ip_local_port_range", "40000 40099");
        sysctl("tcp_tw_reuse", "0");
        let (_listener, port) = upstream();
        // 5 TIME_WAITs no observer saw connect.
        assert_eq!(curl_calls(port, 5), (5, 0));
        // Without BPF (nobody: no CAP_BPF), the socket table is the only
        // source: the no-owner note and why there is no BPF.
        let out = Command::new(BIN)
            .args(["doctor", "--interval", "200ms"])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run doctor as nobody");
        let text = doctor_text(&out);
        assert_eq!(text.matches(NO_OWNER).count(), 1, "{text}");
        assert!(text.contains("no BPF attribution"), "{text}");
        assert!(!text.contains("come from BPF"), "{text}");
        // With BPF: 3 more connections during the interval are attributed,
        // the 5 older ones are not, and the note says so; no no-owner line.
        let doctor = Command::new(BIN)
            .args(["doctor", "--interval", "6s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run doctor");
        std::thread::sleep(Duration::from_secs(3)); // the observer attaches
        assert_eq!(curl_calls(port, 3), (3, 0));
        let out = doctor.wait_with_output().unwrap();
        let text = doctor_text(&out);
        let ss_tw = Command::new("ss")
            .args(["-Htan", "state", "time-wait"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ss_tw.stdout).lines().count(), 8);
        assert!(
            text.contains("TIME_WAIT owners come from BPF") && text.contains("3 of 8"),
            "{text}"
        );
        assert!(text.contains("the other 5"), "{text}");
        assert!(!text.contains(NO_OWNER), "{text}");
    });
}

/// GET `path` from a local HTTP server (HTTP/1.0: the body ends at close).
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn prometheus_fires_the_exhaustion_alert_from_a_real_scrape_root() {
    let test = "prometheus_fires_the_exhaustion_alert_from_a_real_scrape_root";
    if !have_root(test)
        || !have_tool(test, "curl", "curl")
        || !have_tool(test, "prometheus", "prometheus")
    {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fivetuple-trace-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/prometheus/alerts.yml")
        .canonicalize()
        .unwrap();
    in_fresh_netns(|| {
        sysctl("ip_local_port_range", "40000 40099");
        sysctl("tcp_tw_reuse", "0");
        let (_listener, port) = upstream();
        let listen = "127.0.0.1:18097";
        let mut exporter = Command::new(BIN)
            .args(["exporter", "--bpf", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run fivetuple exporter");
        let mut line = String::new();
        BufReader::new(exporter.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: fivetuple\n    static_configs:\n      - targets: ['{listen}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let mut prometheus = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:19090")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("run prometheus");
        // Let Prometheus scrape the exporter before any failure, then fail.
        std::thread::sleep(Duration::from_secs(3));
        let (_, failed) = curl_calls(port, 110);
        assert_eq!(failed, 10, "100 ports, 110 calls");
        let deadline = Instant::now() + Duration::from_secs(40);
        let (mut firing, mut counter) = (String::new(), String::new());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            firing = http_get(
                "127.0.0.1:19090",
                "/api/v1/query?query=ALERTS%7Balertname%3D%22FivetupleConnectExhaustionFailures%22%2Calertstate%3D%22firing%22%7D",
            )
            .unwrap_or_default();
            counter = http_get(
                "127.0.0.1:19090",
                "/api/v1/query?query=fivetuple_connect_exhaustion_failures_total",
            )
            .unwrap_or_default();
            if firing.contains("\"comm\":\"curl\"") {
                break;
            }
        }
        let _ = prometheus.kill();
        let _ = prometheus.wait();
        let _ = exporter.kill();
        let _ = exporter.wait();
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        assert!(
            firing.contains("\"comm\":\"curl\"")
                && firing.contains("\"errno\":\"EADDRNOTAVAIL\"")
                && firing.contains(&format!("\"destination\":\"127.0.0.1:{port}\"")),
            "the alert did not fire within 40 s: {firing}\ncounter: {counter}\nprometheus log:\n{log}"
        );
        assert!(counter.contains(&format!("\"{failed}\"")), "{counter}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exporter_bpf_all_netns_counts_each_namespace_apart_root() {
    let test = "exporter_bpf_all_netns_counts_each_namespace_apart_root";
    if !have_root(test) || !have_tool(test, "curl", "curl") {
        return;
    }
    // From the host namespace: the exporter watches every namespace.
    let (_exporter, addr) = start_exporter(&["--bpf", "--all-netns", "--top-k", "1000"], |_| {});
    // Two namespaces, each with a 100-port range and its own upstream on the
    // same address: curl, the same comm to the same destination, runs out of
    // ports in each, a different number of times.
    let run = |calls: usize| {
        in_fresh_netns(|| {
            use std::os::unix::fs::MetadataExt;
            sysctl("ip_local_port_range", "40000 40099");
            sysctl("tcp_tw_reuse", "0");
            let (_listener, port) = upstream();
            let inode = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            (inode, port, curl_calls(port, calls))
        })
    };
    let a = run(103);
    let b = run(107);
    assert_ne!(a.0, b.0, "two namespaces");
    assert_eq!((a.2, b.2), ((100, 3), (100, 7)), "100 ports each");
    std::thread::sleep(Duration::from_millis(300));
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    let body = reply.body;
    assert!(body.contains("fivetuple_bpf_observer_loaded 1"), "{body}");
    for (inode, port, (ok, failed)) in [a, b] {
        let netns = format!("netns=\"{inode}\"");
        let dest = format!("destination=\"127.0.0.1:{port}\"");
        let who = [netns.as_str(), dest.as_str(), "comm=\"curl\""];
        assert_eq!(
            sample(&body, "fivetuple_connect_attempts_total", &who),
            Some((ok + failed) as f64),
            "{inode}: {body}"
        );
        let mut failure = who.to_vec();
        failure.extend(["errno=\"EADDRNOTAVAIL\"", "stage=\"connect\""]);
        assert_eq!(
            sample(
                &body,
                "fivetuple_connect_exhaustion_failures_total",
                &failure
            ),
            Some(failed as f64),
            "{inode}: {body}"
        );
        assert_eq!(
            sample(&body, "fivetuple_time_wait_entries_total", &who),
            Some(ok as f64),
            "{inode}: {body}"
        );
    }
}

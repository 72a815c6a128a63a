//! `fivetuple doctor` as a user runs it: the real binary, against fresh
//! network namespaces with known socket tables. Tests named `netns_root_*`
//! need root (unshare CLONE_NEWNET); under CI=true they fail rather than skip.

mod support;

use support::*;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `ss -tan` in the calling thread's namespace, as (local ip, peer ip, peer port) -> state -> count,
/// skipping listeners and sockets whose local port is in `inbound_ports`.
fn ss_groups(inbound_ports: &[u16]) -> BTreeMap<(String, String, u16), BTreeMap<String, u64>> {
    let out = Command::new("ss")
        .arg("-tan")
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut groups: BTreeMap<_, BTreeMap<String, u64>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let state = match f[0] {
            "ESTAB" => "ESTABLISHED",
            "TIME-WAIT" => "TIME_WAIT",
            "LISTEN" => continue,
            other => other,
        }
        .replace('-', "_");
        let local: SocketAddr = f[3].parse().unwrap();
        let peer: SocketAddr = f[4].parse().unwrap();
        if inbound_ports.contains(&local.port()) {
            continue;
        }
        *groups
            .entry((local.ip().to_string(), peer.ip().to_string(), peer.port()))
            .or_default()
            .entry(state)
            .or_default() += 1;
    }
    groups
}

fn doctor_groups(doc: &Value) -> BTreeMap<(String, String, u16), BTreeMap<String, u64>> {
    doc["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let key = (
                d["local_ip"].as_str().unwrap().to_string(),
                d["remote_ip"].as_str().unwrap().to_string(),
                d["remote_port"].as_u64().unwrap() as u16,
            );
            let states = d["states"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            (key, states)
        })
        .collect()
}

#[test]
fn netns_root_known_table_matches_ss_and_skips_inbound() {
    if !have_root("netns_root_known_table_matches_ss_and_skips_inbound") {
        return;
    }
    in_fresh_netns(|| {
        let l80 = TcpListener::bind("127.0.0.1:8080").unwrap();
        let l81 = TcpListener::bind("127.0.0.1:8081").unwrap();
        make_time_wait(&l80, 300);
        let mut keep = Vec::new();
        for _ in 0..120 {
            keep.push(connect_from(
                [127, 0, 0, 2],
                "127.0.0.1:8081".parse().unwrap(),
            ));
            keep.push(l81.accept().unwrap().0);
        }
        // Bounded wait for the last TIME_WAITs to form.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ss_groups(&[8080, 8081])
            .get(&("127.0.0.1".into(), "127.0.0.1".into(), 8080))
            .and_then(|m| m.get("TIME_WAIT"))
            != Some(&300)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }

        let out = doctor(&["--json", "--top", "0", "--interval", "0"]);
        let doc = json_of(&out);
        let expected = ss_groups(&[8080, 8081]);
        assert_eq!(doctor_groups(&doc), expected, "doctor vs ss -tan");

        let dests = doc["destinations"].as_array().unwrap();
        assert_eq!(
            dests.len(),
            2,
            "only the two outbound destinations: {dests:#?}"
        );
        let tw = dests.iter().find(|d| d["remote_port"] == 8080).unwrap();
        assert_eq!(tw["states"]["TIME_WAIT"], 300);
        assert_eq!(tw["local_ip"], "127.0.0.1");
        assert_eq!(tw["in_use"], 300);
        assert_eq!(tw["time_wait_freeing"]["within_60s"], 300);
        let est = dests.iter().find(|d| d["remote_port"] == 8081).unwrap();
        assert_eq!(est["local_ip"], "127.0.0.2");
        assert_eq!(est["states"]["ESTABLISHED"], 120);
        // Attribution: we (root) own the 120 client sockets.
        let me = std::process::id() as u64;
        let procs = est["processes"].as_array().unwrap();
        assert!(
            procs.iter().any(|p| p["pid"] == me && p["sockets"] == 120),
            "{procs:?}"
        );
        // Inbound: the accepted side of the 120 connections, never a destination.
        assert_eq!(doc["totals"]["inbound"], 120);
        assert!(dests.iter().all(|d| d["remote_port"] != 8080
            || d["local_ip"] != "127.0.0.1"
            || d["states"].get("ESTABLISHED").is_none()));
        assert_eq!(doc["source"], "netlink");
        assert_eq!(
            doc["settings"]["ip_local_port_range"],
            serde_json::json!([32768, 60999])
        );
        assert_eq!(doc["counters"]["sockstat_tw"], 300);
        assert_eq!(out.status.code(), Some(0), "idle-ish table is OK");

        // The /proc reader gives the same groups.
        let out = doctor(&[
            "--json",
            "--top",
            "0",
            "--interval",
            "0",
            "--source",
            "proc",
        ]);
        let doc = json_of(&out);
        assert_eq!(doc["source"], "proc");
        assert_eq!(
            doctor_groups(&doc),
            expected,
            "doctor --source proc vs ss -tan"
        );
        drop(keep);
    });
}

/// A fresh namespace with a 100-port range and `n` established connections
/// to one destination; returns doctor's exit code and JSON.
fn run_with_connections(n: usize, extra: &[&str]) -> (Option<i32>, Value, String) {
    in_fresh_netns(|| {
        // Opened from this thread, so it is this namespace's sysctl.
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40099").unwrap();
        let l = TcpListener::bind("127.0.0.1:9000").unwrap();
        let mut keep = Vec::new();
        for _ in 0..n {
            keep.push(TcpStream::connect("127.0.0.1:9000").unwrap());
            keep.push(l.accept().unwrap().0);
        }
        let mut args = vec!["--json", "--interval", "0"];
        args.extend_from_slice(extra);
        let out = doctor(&args);
        let human = doctor(&["--interval", "0"]);
        drop(keep);
        (
            out.status.code(),
            json_of(&out),
            String::from_utf8_lossy(&human.stdout).into_owned(),
        )
    })
}

#[test]
fn netns_root_exit_code_critical_above_90_percent() {
    if !have_root("netns_root_exit_code_critical_above_90_percent") {
        return;
    }
    let (code, doc, human) = run_with_connections(95, &[]);
    assert_eq!(code, Some(2), "{doc:#}");
    assert_eq!(doc["status"], "critical");
    let d = &doc["destinations"][0];
    assert_eq!(
        (d["in_use"].as_u64(), d["capacity"].as_u64()),
        (Some(95), Some(100))
    );
    assert!((d["utilization"].as_f64().unwrap() - 0.95).abs() < 1e-9);
    let f = &doc["findings"][0];
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["code"], "port_utilization");
    let advice = f["advice"].to_string();
    assert!(advice.contains("ip_local_port_range"), "{advice}");
    assert!(
        !human.contains("tcp_fin_timeout=") && !human.contains("tw_recycle"),
        "{human}"
    );
    assert!(
        human.contains("CRITICAL") && human.contains("127.0.0.1 -> 127.0.0.1:9000"),
        "{human}"
    );
}

#[test]
fn netns_root_exit_code_warning_at_60_percent() {
    if !have_root("netns_root_exit_code_warning_at_60_percent") {
        return;
    }
    let (code, doc, _) = run_with_connections(60, &[]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["status"], "warning");
    assert_eq!(doc["destinations"][0]["in_use"], 60);
    // Thresholds move the verdict.
    let (code, doc, _) = run_with_connections(60, &["--warn", "70", "--crit", "80"]);
    assert_eq!(code, Some(0), "{doc:#}");
}

#[test]
fn netns_root_exit_code_ok_when_idle() {
    if !have_root("netns_root_exit_code_ok_when_idle") {
        return;
    }
    let (code, doc, human) = run_with_connections(0, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["destinations"], serde_json::json!([]));
    assert_eq!(doc["settings"]["usable_ports"], 100);
    assert!(human.contains("Status: OK (exit 0)"), "{human}");
}

#[test]
fn netns_root_named_netns_and_rate() {
    if !have_root("netns_root_named_netns_and_rate") {
        return;
    }
    let name = format!("fivetuple-test-{}", std::process::id());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    let _cleanup = Cleanup(name.clone());
    let exec = |args: &[&str]| {
        let st = Command::new("ip")
            .args(["netns", "exec", &name])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    exec(&["ip", "link", "set", "lo", "up"]);
    // Inside the named namespace: a listener and 40 connections, the last 20
    // opened during doctor's 2 s interval, from a thread that entered it.
    let path = format!("/run/netns/{name}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        fivetuple_testkit::in_netns(&path, move || {
            let l = TcpListener::bind("127.0.0.1:7777").unwrap();
            let mut keep = Vec::new();
            for _ in 0..20 {
                keep.push(TcpStream::connect("127.0.0.1:7777").unwrap());
                keep.push(l.accept().unwrap().0);
            }
            ready_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..20 {
                keep.push(TcpStream::connect("127.0.0.1:7777").unwrap());
                keep.push(l.accept().unwrap().0);
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = stop_rx.recv_timeout(Duration::from_secs(20));
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let out = doctor(&["--json", "--netns", &name, "--interval", "2s"]);
    stop_tx.send(()).unwrap();
    worker.join().unwrap();
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["namespace"], format!("netns {name}"));
    let d = &doc["destinations"][0];
    assert_eq!(d["remote_port"], 7777);
    assert_eq!(d["states"]["ESTABLISHED"], 40);
    let rate = d["rate_per_s"].as_f64().unwrap();
    assert!(
        (rate - 10.0).abs() < 0.01,
        "20 new connections in 2 s, got {rate}"
    );
    assert!(d["seconds_to_exhaustion"].is_null());
}

#[test]
fn bad_arguments_exit_3_and_name_the_value() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--netns", "no-such-namespace-ft"],
            &["no-such-namespace-ft"],
        ),
        (&["--pid", "4000000000"], &["4000000000"]),
        (&["--pid", "abc"], &["abc"]),
        (&["--warn", "90", "--crit", "80"], &["90", "80"]),
        (&["--warn", "50", "--crit", "50"], &["50"]),
        (&["--warn", "150"], &["150"]),
        (&["--crit", "0"], &["0"]),
        (&["--warn", "-5"], &["-5"]),
        (&["--interval", "1h"], &["1h"]),
        (&["--interval", "9999s"], &["9999s"]),
        (&["--interval", "50ms"], &["50ms", "100 ms"]),
        (
            &["--warn-seconds", "30", "--crit-seconds", "60"],
            &["30", "60"],
        ),
        (&["--crit-seconds", "600"], &["600"]),
        (&["--crit-seconds", "0"], &["0"]),
        (&["--warn-seconds", "soon"], &["soon"]),
        (&["--top", "-1"], &["-1"]),
        (&["--source", "carrier-pigeon"], &["carrier-pigeon"]),
        (&["--netns", "x", "--pid", "1"], &["--pid"]),
        (&["--bogus"], &["--bogus"]),
    ];
    for (args, needles) in cases {
        let out = doctor(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        for n in *needles {
            assert!(
                err.contains(n),
                "{args:?}: stderr does not name {n:?}: {err}"
            );
        }
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    let out = doctor(&["--netns", "no-such-namespace-ft"]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("fivetuple: "));
}

#[test]
fn help_exits_0_and_broken_pipe_is_quiet() {
    let out = doctor(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--warn"));
    // Reader closes the pipe at once: no panic message, no error.
    let mut child = Command::new(BIN)
        .args(["doctor", "--json", "--interval", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{:?} {err}",
        out.status
    );
}

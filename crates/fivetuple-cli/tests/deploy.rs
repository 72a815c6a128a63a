//! The deployment files against the binary they deploy: the DaemonSet's
//! privileges and probe paths (parsed, then the probed paths requested from
//! a real `exporter --all-netns` started with the manifest's own
//! arguments), the systemd unit (`systemd-analyze verify`, then its
//! ExecStart run), and the Containerfile's build target. Starting
//! `--all-netns` needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE); under CI=true
//! a missing privilege or tool fails rather than skips.

mod support;

use support::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every document of the manifest, by kind.
fn manifest() -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read("deploy/kubernetes/daemonset.yaml"))
        .map(|d| Value::deserialize(d).expect("daemonset.yaml is YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in daemonset.yaml"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The exporter arguments with `--listen` pointed at a free loopback port.
fn local(args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--listen"))
        .cloned()
        .collect();
    assert_eq!(out.remove(0), "exporter");
    out
}

#[test]
fn daemonset_grants_what_all_netns_needs_and_probes_paths_the_exporter_serves() {
    let docs = manifest();
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "hostPID: /proc/PID/ns/net of every pod"
    );
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(
        add,
        ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
        "setns, /proc/PID/ns/net and conntrack, nothing more"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert!(c["resources"]["limits"]["memory"].is_string());

    let args = strings(&c["args"]);
    assert!(args.contains(&"--all-netns".to_string()), "{args:?}");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{port}")),
        "{args:?} listen on containerPort {port}"
    );
    let port_name = c["ports"][0]["name"].as_str().unwrap();
    let mut paths = Vec::new();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["port"].as_str(), Some(port_name), "{probe} port");
        paths.push(get["path"].as_str().unwrap().to_string());
    }
    let monitor = &kind(&docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(monitor["port"].as_str(), Some(port_name));
    paths.push(monitor["path"].as_str().unwrap().to_string());
    let svc = kind(&docs, "Service");
    assert_eq!(
        svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"],
        "the Service selects the DaemonSet's pods"
    );

    // The probed paths, on the exporter started with the manifest's arguments.
    let test = "daemonset_grants_what_all_netns_needs_and_probes_paths_the_exporter_serves";
    if !have_root(test) {
        return;
    }
    let args = local(&args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_exporter, addr) = start_exporter(&args, |_| {});
    for path in paths {
        let reply = get(addr, &path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
}

#[test]
fn systemd_unit_verifies_and_its_exec_start_runs() {
    let test = "systemd_unit_verifies_and_its_exec_start_runs";
    let unit = read("deploy/systemd/fivetuple-exporter.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/fivetuple"));
    let args: Vec<String> = words.map(str::to_string).collect();
    for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"] {
        assert!(
            unit.lines()
                .any(|l| l.starts_with("AmbientCapabilities=") && l.contains(cap)),
            "{cap}"
        );
    }
    if have_tool(test, "systemd-analyze", "systemd") {
        // Verified with ExecStart pointing at the binary under test.
        let dir = TempDir::new("deploy-unit");
        let path = dir.0.join("fivetuple-exporter.service");
        std::fs::write(&path, unit.replace("/usr/local/bin/fivetuple", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("run systemd-analyze");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !have_root(test) {
        return;
    }
    let args = local(&args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_exporter, addr) = start_exporter(&args, |_| {});
    assert_eq!(get(addr, "/metrics").status, 200);
}

#[test]
fn containerfile_builds_this_binary_with_the_daemonset_arguments() {
    let file = read("deploy/container/Containerfile");
    let cargo = read("crates/fivetuple-cli/Cargo.toml");
    assert!(cargo.contains("name = \"fivetuple-cli\"") && cargo.contains("name = \"fivetuple\""));
    assert!(file.contains("-p fivetuple-cli --bin fivetuple"), "{file}");
    let cmd = file
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec (JSON) form");
    let docs = manifest();
    let ds = kind(&docs, "DaemonSet");
    let args = strings(&ds["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(cmd, args, "the image's default command is the DaemonSet's");
    // The builder's Rust is the workspace's rust-version.
    let ws = read("Cargo.toml");
    let rv = ws
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        file.contains(&format!("rust:{rv}-")),
        "builder image is Rust {rv}"
    );
}

#[test]
fn the_documented_pod_join_is_the_one_promtool_tests() {
    let test = read("deploy/prometheus/pod-join.test.yml");
    let doc: Value = serde_yaml_ng::from_str(&test).expect("pod-join.test.yml is YAML");
    let expr = doc["tests"][0]["promql_expr_test"][0]["expr"]
        .as_str()
        .unwrap()
        .trim_end();
    let docs = read("docs/exporter.md");
    assert!(
        docs.contains(&format!("```promql\n{expr}\n```")),
        "docs/exporter.md shows the tested join:\n{expr}"
    );
    let name = "the_documented_pod_join_is_the_one_promtool_tests";
    if !have_tool(name, "promtool", "prometheus") {
        return;
    }
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo("deploy/prometheus/pod-join.test.yml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

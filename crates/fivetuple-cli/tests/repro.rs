//! `fivetuple repro`, run as the real binary: bad arguments exit 2 naming the
//! value; the default run shows what the issue promises. Tests that build
//! namespaces need root (`netns_root_...`): without it they print a skip line
//! and return, except under CI=true, where they must run.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fivetuple(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args(args)
        .output()
        .expect("run the fivetuple binary")
}

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root and must run in CI");
    }
    eprintln!("skipping {test}: needs root (network namespaces)");
    false
}

#[test]
fn bad_arguments_exit_2_naming_the_value() {
    for (args, needle) in [
        (&["--ports", "0"][..], "\"0\""),
        (&["--ports", "many"][..], "\"many\""),
        (&["--port-base", "65000"][..], "65000-65999"),
        (&["--port-base", "80"][..], "\"80\""),
        (&["--rate", "0"][..], "--rate \"0\""),
        (&["--only", "naive,bogus"][..], "\"bogus\""),
        (&["--duration", "soon"][..], "\"soon\""),
        (&["--topology", "mesh"][..], "\"mesh\""),
        (&["--tw-reuse", "7"][..], "\"7\""),
        (&["--timestamps", "maybe"][..], "\"maybe\""),
        (&["--frobnicate"][..], "--frobnicate"),
    ] {
        let mut argv = vec!["repro"];
        argv.extend_from_slice(args);
        let out = fivetuple(&argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr {stderr:?} should name {needle}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

/// Inside a child user namespace whose `user.max_user_namespaces` is 0, a
/// process without capabilities can create neither kind of namespace: the
/// command must exit 2 and name the setting. Needs util-linux (`unshare`,
/// `setpriv`) and unprivileged user namespaces on the host.
#[test]
fn without_namespaces_exits_2_naming_what_is_missing() {
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 99; \
         exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all {} repro --only naive --duration 1s",
        env!("CARGO_BIN_EXE_fivetuple")
    );
    let out = Command::new("unshare")
        .args(["-U", "-r", "sh", "-c", &script])
        .output();
    let stderr = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    if !stderr.contains("fivetuple:") {
        let why = format!("cannot set up a user namespace without namespace support: {out:?}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipping without_namespaces_exits_2_naming_what_is_missing: {why}");
        return;
    }
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_ADMIN") && stderr.contains("user.max_user_namespaces=0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn netns_root_short_run_prints_the_table() {
    if !is_root("netns_root_short_run_prints_the_table") {
        return;
    }
    let out = fivetuple(&[
        "repro",
        "--only",
        "naive,pooled",
        "--ports",
        "100",
        "--rate",
        "150",
        "--duration",
        "1500ms",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = stdout.lines().next().unwrap();
    for column in [
        "remedy", "calls", "ok", "failed", "1st fail", "error", "peak TW", "budget", "achieved",
        "verdict",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let naive = stdout.lines().find(|l| l.starts_with("naive")).unwrap();
    assert!(
        naive.contains("Cannot assign requested address (os error 99)")
            && naive.contains("fails at"),
        "{naive}"
    );
    let pooled = stdout.lines().find(|l| l.starts_with("pooled")).unwrap();
    assert!(pooled.contains("holds"), "{pooled}");
    assert!(stdout.contains("tcp_tw_reuse=0"), "{stdout}");
}

/// The acceptance run: the default command, once, with --json and --chart.
#[test]
fn netns_root_default_run_meets_the_issue() {
    if !is_root("netns_root_default_run_meets_the_issue") {
        return;
    }
    let chart = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("repro-default.svg");
    let _ = std::fs::remove_file(&chart);
    let started = Instant::now();
    let out = fivetuple(&["repro", "--json", "--chart", chart.to_str().unwrap()]);
    let elapsed = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elapsed <= Duration::from_secs(120),
        "default run took {elapsed:?}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON document");

    let b = &doc["box"];
    assert_eq!(b["ports"], 1000);
    assert_eq!(b["rate_per_s"], 200);
    assert_eq!(b["tcp_tw_reuse"], 0);
    assert_eq!(b["topology"], "loopback");
    let remedies = doc["remedies"].as_array().unwrap();
    let names: Vec<&str> = remedies
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "naive",
            "auth",
            "wide-range",
            "tw-reuse",
            "rotate",
            "spread",
            "pooled"
        ]
    );
    let get = |name: &str| remedies.iter().find(|r| r["name"] == name).unwrap();
    let naive_budget = get("naive")["budget_per_s"].as_f64().unwrap();
    assert!(
        (naive_budget - 1000.0 / 60.0).abs() < 0.01,
        "{naive_budget}"
    );

    for name in ["naive", "auth"] {
        let r = get(name);
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("Cannot assign requested address (os error 99)"),
            "{name}: {r}"
        );
        assert_eq!(r["verdict"], "fails", "{name}: {r}");
        // Roughly `ports` calls succeed before the first failure (first at about 5 s).
        let ok = r["ok"].as_u64().unwrap();
        assert!(
            (800..=1200).contains(&ok),
            "{name}: ok {ok} should be about 1000"
        );
        let first = r["first_failure_s"].as_f64().unwrap();
        assert!(
            (4.0..=6.0).contains(&first),
            "{name}: first failure at {first} s"
        );
        assert!(r["peak_time_wait"].as_u64().unwrap() >= 900, "{name}: {r}");
    }
    for name in ["rotate", "spread", "pooled"] {
        let r = get(name);
        assert_eq!(r["failed"], 0, "{name}: {r}");
        assert_eq!(r["calls"], 2000, "{name}: {r}");
        assert!(r["error"].is_null(), "{name}: {r}");
        let achieved = r["achieved_per_s"].as_f64().unwrap();
        assert!(
            achieved > 10.0 * naive_budget,
            "{name}: {achieved}/s is not 10x the naive budget"
        );
    }
    let wide = get("wide-range");
    assert_eq!(wide["failed"], 0, "{wide}");
    assert_eq!(wide["verdict"], "postpones", "{wide}");
    let text = wide["verdict_text"].as_str().unwrap();
    assert!(
        text.contains("postpones exhaustion") && text.contains(" s)"),
        "{text}"
    );

    let svg = std::fs::read_to_string(&chart).expect("--chart wrote the file");
    assert!(svg.starts_with("<svg"));
    for name in names {
        assert!(
            svg.contains(&format!("{name}: ")),
            "chart has a panel for {name}"
        );
    }
}

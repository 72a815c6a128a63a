//! `fivetuple repro`, run as the real binary: bad arguments exit 2 naming the
//! value; the default run shows what the issue promises. Tests that build
//! namespaces need root (`netns_root_...`): without it they print a skip line
//! and return, except under CI=true, where they must run.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn fivetuple(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args(args)
        .output()
        .expect("run the fivetuple binary")
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
        // The driver's 64 kept-alive connections need 64 ports of the range.
        (
            &["--ports", "10"][..],
            "--ports \"10\": smaller than --connections 64",
        ),
        (&["--max-in-flight", "0"][..], "--max-in-flight \"0\""),
        (
            &["--chart", "/nonexistent-dir/x.svg"][..],
            "/nonexistent-dir",
        ),
        (&["--chart", "/"][..], "is a directory"),
        // NAT: a remedy that changes the client's own ports makes no sense
        // behind the NAT, and the NAT remedies none on the other topologies.
        (
            &["--topology", "nat", "--only", "naive,wide-range"][..],
            "--only \"wide-range\": makes no sense with --topology nat; expected one of naive, rotate, pooled, snat-pool, random-fully",
        ),
        (
            &["--topology", "two-hosts", "--only", "random-fully"][..],
            "--only \"random-fully\": makes no sense with --topology two-hosts",
        ),
        (
            &["--topology", "nat", "--ports", "70000"][..],
            "--ports \"70000\": the range 32768-102767 does not fit 1024-65535",
        ),
        (&["--topology", "nat", "--ports", "0"][..], "--ports \"0\""),
        (&["--topology", "NAT"][..], "--topology \"NAT\": expected loopback, two-hosts or nat"),
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

/// Runs `fivetuple repro ARGS` inside a child user namespace whose
/// `user.max_user_namespaces` is 0, without capabilities: there it can
/// create neither kind of namespace. `None` (skipped, except in CI) when
/// that cannot be set up. Needs util-linux (`unshare`, `setpriv`) and
/// unprivileged user namespaces on the host.
fn repro_without_namespaces(test: &str, args: &str) -> Option<(Output, String)> {
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 99; \
         exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all {} repro {args}",
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
        eprintln!("skipping {test}: {why}");
        return None;
    }
    Some((out.unwrap(), stderr))
}

#[test]
fn without_namespaces_exits_2_naming_what_is_missing() {
    let Some((out, stderr)) = repro_without_namespaces(
        "without_namespaces_exits_2_naming_what_is_missing",
        "--only naive --duration 1s",
    ) else {
        return;
    };
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_ADMIN") && stderr.contains("user.max_user_namespaces=0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A `--chart` that cannot be written is an argument error found before any
/// namespace is attempted: where namespaces are unavailable, the message is
/// about the chart, not about namespaces.
#[test]
fn bad_chart_is_reported_before_any_namespace_work() {
    let Some((out, stderr)) = repro_without_namespaces(
        "bad_chart_is_reported_before_any_namespace_work",
        "--only naive --duration 1s --chart /nonexistent-dir/x.svg",
    ) else {
        return;
    };
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--chart \"/nonexistent-dir/x.svg\"") && stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(!stderr.contains("namespace"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Peak resident memory of a child, from `wait4` (Linux reports KiB).
fn wait_with_peak_rss(child: &mut Child) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unwaited child; status and usage are valid
    // pointers for the duration of the call.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64 * 1024,
    )
}

/// Resident memory of a running process, from `/proc/PID/status`.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A million calls a second for 3 s (the rate the box cannot keep): memory
/// stays bounded by the in-flight limit, every scheduled call is accounted
/// for, calls beyond the limit are reported as shed, and "achieved" is no
/// more than the calls that completed. A watchdog kills the child past
/// 1 GiB so an unbounded driver cannot take the machine down.
#[test]
fn netns_root_huge_rate_stays_bounded_and_achieved_counts_completed_calls() {
    if !fivetuple_testkit::root_or_skip(
        "netns_root_huge_rate_stays_bounded_and_achieved_counts_completed_calls",
    ) {
        return;
    }
    const LIMIT: u64 = 1 << 30;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args([
            "repro",
            "--only",
            "pooled",
            "--rate",
            "1000000",
            "--duration",
            "3s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the fivetuple binary");
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let mut killed = false;
        while done_rx.recv_timeout(Duration::from_millis(50)).is_err() {
            if rss(pid).is_some_and(|r| r > LIMIT) && !killed {
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our child, not yet waited for.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                killed = true;
            }
        }
        killed
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut json = Vec::new();
    stdout.read_to_end(&mut json).unwrap();
    let (status, peak) = wait_with_peak_rss(&mut child);
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(!killed, "resident memory passed 1 GiB");
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
    assert!(
        peak < 256 << 20,
        "peak RSS {} MiB: the driver's memory is not bounded by the calls in flight",
        peak >> 20
    );
    let doc: Value = serde_json::from_slice(&json).expect("--json prints one JSON document");
    let r = &doc["remedies"][0];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert_eq!(n("calls"), 3_000_000, "{r}");
    assert_eq!(n("ok") + n("failed"), n("calls"), "{r}");
    assert!(n("shed") > 0 && n("shed") <= n("failed"), "{r}");
    // The first failure is the system falling behind: either a call shed
    // because too many were in flight, or (on a loaded machine) one due
    // before the shedding began that got no answer in time. Both say so.
    assert!(
        r["error"].as_str().unwrap().contains("fell behind"),
        "the first failure is the system falling behind: {r}"
    );
    // achieved × its window is a count of calls that completed 200.
    let achieved = f("achieved_per_s");
    assert!(
        achieved * f("error_free_s") <= n("ok") as f64 + 1.0,
        "achieved {achieved}/s over {} s is more than the {} calls answered: {r}",
        f("error_free_s"),
        n("ok")
    );
    // Two hops of HTTP on a loaded 2-core box complete far fewer than the
    // schedule; the old figure was the schedule itself (1,000,000/s).
    assert!(achieved < 100_000.0, "achieved {achieved}/s: {r}");
}

/// Ctrl-C while the second remedy runs: the first remedy's row is printed,
/// the second's is not, the exit code is 130, and the box namespaces of the
/// run are gone afterwards.
#[test]
fn netns_root_ctrl_c_prints_the_finished_rows_and_removes_the_boxes() {
    if !fivetuple_testkit::root_or_skip(
        "netns_root_ctrl_c_prints_the_finished_rows_and_removes_the_boxes",
    ) {
        return;
    }
    ctrl_c_during_pooled(&[], |naive| naive.contains("os error 99"));
}

/// The same behind the NAT: the node, service and pod namespaces of the
/// interrupted remedy are all gone. Needs root (namespaces, nft).
#[test]
fn netns_root_nat_ctrl_c_removes_node_service_and_pods() {
    if !fivetuple_testkit::root_or_skip("netns_root_nat_ctrl_c_removes_node_service_and_pods") {
        return;
    }
    let boxes = ctrl_c_during_pooled(&["--topology", "nat"], |naive| {
        naive.contains("holds past the NAT budget") || naive.contains("timed out")
    });
    // The node (the driver's runtime), B and the two pods.
    assert!(boxes >= 4, "{boxes} namespaces seen");
}

/// Runs `repro --only naive,pooled` (100 ports, 100 calls/s, 4 s) plus
/// `extra`, sends SIGINT once pooled runs, and checks the exit, the rows
/// and that no thread is left in any namespace the run made. Returns how
/// many namespaces the interrupted remedy had.
fn ctrl_c_during_pooled(extra: &[&str], naive_row: fn(&str) -> bool) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fivetuple"))
        .args([
            "repro",
            "--only",
            "naive,pooled",
            "--ports",
            "100",
            "--rate",
            "100",
            "--duration",
            "4s",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the fivetuple binary");
    let pid = child.id();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            all.push_str(&line);
            all.push('\n');
            let _ = line_tx.send(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = line_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("stderr says when pooled starts (plain progress lines off a terminal)");
        if line.contains("pooled: started") {
            break;
        }
    }
    // The box of the running remedy: namespaces of the child's threads that
    // are not ours, identified by cookie (inode numbers are reused).
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let boxes: Vec<(PathBuf, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let path = t.ok()?.path().join("ns/net");
            let ns = std::fs::read_link(&path).ok()?;
            (ns != ours).then(|| Some((ns, netns_cookie(&path)?)))?
        })
        .collect();
    assert!(!boxes.is_empty(), "pooled runs in a namespace of its own");
    let mut distinct: Vec<u64> = boxes.iter().map(|(_, c)| *c).collect();
    distinct.sort_unstable();
    distinct.dedup();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let interrupted_at = Instant::now();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let stopped_in = interrupted_at.elapsed();
    let stderr = err_reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}: {stderr}");
    assert!(stopped_in < Duration::from_secs(15), "took {stopped_in:?}");
    let naive = stdout.lines().find(|l| l.starts_with("naive"));
    assert!(
        naive.is_some_and(naive_row),
        "the finished remedy's row: {stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("pooled")),
        "no row for the interrupted remedy: {stdout}"
    );
    assert!(stdout.contains("interrupted during pooled"), "{stdout}");
    assert!(stderr.contains("interrupted during pooled"), "{stderr}");
    // No thread anywhere is left in the run's box namespaces.
    for task in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(tasks) = std::fs::read_dir(task.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("ns/net");
            let Ok(ns) = std::fs::read_link(&path) else {
                continue;
            };
            for (box_ns, cookie) in &boxes {
                if ns == *box_ns {
                    assert_ne!(
                        netns_cookie(&path),
                        Some(*cookie),
                        "{} is still in the box {ns:?}",
                        t.path().display()
                    );
                }
            }
        }
    }
    distinct.len()
}

/// The network namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14), which
/// unlike its inode number is never reused: read from a socket made by a
/// thread that entered the namespace at `path`. `None` if it is gone.
fn netns_cookie(path: &std::path::Path) -> Option<u64> {
    use std::os::fd::{AsRawFd, FromRawFd};
    /// include/uapi/asm-generic/socket.h
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let ns = std::fs::File::open(path).ok()?;
    std::thread::spawn(move || {
        // SAFETY: ns is an open nsfs file; the thread is discarded after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        // SAFETY: plain socket(2); the fd is owned by `sock` from here on.
        let sock = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return None;
            }
            std::os::fd::OwnedFd::from_raw_fd(fd)
        };
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: cookie and len are valid for writes of their sizes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(cookie)
    })
    .join()
    .ok()?
}

#[test]
fn netns_root_short_run_prints_the_table() {
    if !fivetuple_testkit::root_or_skip("netns_root_short_run_prints_the_table") {
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
    if !fivetuple_testkit::root_or_skip("netns_root_default_run_meets_the_issue") {
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

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn json_run(args: &[&str]) -> Value {
    let mut argv = vec!["repro", "--json"];
    argv.extend_from_slice(args);
    let out = fivetuple(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON document")
}

fn remedy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["remedies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} row in {report}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// `repro --topology nat` with a 100-port NAT and 200 calls (more than the
/// NAT has ports; each closed connection keeps its NAT entry for conntrack's
/// 120 s TIME_WAIT): what the node's conntrack table (read over netlink, the
/// same table `conntrack -L` shows) held, checked against the arithmetic.
/// Needs root (namespaces, nft).
#[test]
fn netns_root_nat_topology_caps_nat_entries_at_the_range() {
    if !fivetuple_testkit::root_or_skip("netns_root_nat_topology_caps_nat_entries_at_the_range") {
        return;
    }
    const PORTS: u64 = 100;
    let report = json_run(&[
        "--topology",
        "nat",
        "--ports",
        "100",
        "--rate",
        "50",
        "--duration",
        "4s",
    ]);
    let nat = &report["box"]["nat"];
    assert_eq!(nat["pods"], 2, "{report}");
    assert_eq!(nat["nat_port_range"], serde_json::json!([32768, 32867]));
    let ct_tw = nat["conntrack_time_wait_s"].as_f64().unwrap();
    let names: Vec<&str> = report["remedies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["naive", "snat-pool", "random-fully", "rotate", "pooled"]
    );
    let budget = |r: &Value| r["budget_per_s"].as_f64();
    let one_address = budget(remedy(&report, "naive")).unwrap();
    assert!((one_address - PORTS as f64 / ct_tw).abs() < 1e-9);
    // Pods rotate over 100 ports each: 2 x 100 original tuples > 100 NAT
    // ports, so conntrack's reopening of a tuple cannot keep them within the
    // NAT's range: the same budget as naive. fully-random changes which NAT
    // port, not how many.
    assert_eq!(budget(remedy(&report, "rotate")), Some(one_address));
    assert_eq!(budget(remedy(&report, "random-fully")), Some(one_address));
    assert_eq!(
        budget(remedy(&report, "snat-pool")),
        Some(4.0 * one_address)
    );
    assert_eq!(budget(remedy(&report, "pooled")), None);

    let reuses_time_wait = kernel_version() >= (6, 4);
    for name in ["naive", "random-fully", "rotate"] {
        let r = remedy(&report, name);
        let ct = &r["conntrack"];
        let (calls, ok, failed) = (u(&r["calls"]), u(&r["ok"]), u(&r["failed"]));
        assert_eq!((calls, ok + failed), (200, 200), "{name}: {r}");
        // One NAT address: never more entries toward B than the NAT has ports.
        assert_eq!(u(&ct["addresses_used"]), 1, "{name}: {ct}");
        assert!(u(&ct["entries_at_end"]) <= PORTS, "{name}: {ct}");
        if reuses_time_wait {
            // Linux 6.4+ (nf_nat_used_tuple_harder) hands a new SYN the NAT
            // port of a TIME_WAIT entry: calls beyond the NAT's ports succeed
            // while the table stays full at exactly the range.
            assert!(ok > PORTS, "{name}: {ok} ok of {calls}: {r}");
            assert_eq!(u(&ct["entries_at_end"]), PORTS, "{name}: {ct}");
            assert_eq!(u(&ct["reused"]), ok - PORTS, "{name}: {ct}");
        } else {
            // Older kernels: every NAT port stays held 120 s; the SYNs past
            // the range are dropped and the pods time out.
            assert!(ok <= PORTS && failed >= calls - PORTS, "{name}: {r}");
            assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
            assert!(u(&ct["insert_failed"]) + u(&ct["drop"]) > 0, "{ct}");
        }
    }
    let pool = remedy(&report, "snat-pool");
    let ct = &pool["conntrack"];
    // nf_nat picks the address by a hash of (pod, destination): each pod
    // keeps one of the 4, so 2 pods use 1 or 2 of them.
    let used = u(&ct["addresses_used"]);
    assert!((1..=2).contains(&used), "{ct}");
    assert!(u(&ct["entries_at_end"]) <= used * PORTS, "{ct}");
    if used * PORTS >= u(&pool["calls"]) || reuses_time_wait {
        assert_eq!(u(&pool["failed"]), 0, "{pool}");
    }
    let pooled = remedy(&report, "pooled");
    assert_eq!(u(&pooled["failed"]), 0, "{pooled}");
    assert!(pooled["conntrack"]["reused"].is_null(), "{pooled}");
    // Keep-alive: far fewer connections (NAT entries) than calls.
    assert!(
        u(&pooled["conntrack"]["entries_at_end"]) < PORTS,
        "{pooled}"
    );
}

/// A NAT far smaller than the concurrency (2 ports, 500 calls/s from two
/// pods): SYNs that find no free NAT tuple are dropped at conntrack's
/// confirmation (`insert_failed`, `drop` rise), the pods see connect
/// timeouts (not EADDRNOTAVAIL), and the run still ends in bounded time.
/// The keep-alive pool needs a NAT port per open connection only.
/// Needs root (namespaces, nft).
#[test]
fn netns_root_nat_saturated_drops_syns_and_pods_time_out() {
    if !fivetuple_testkit::root_or_skip("netns_root_nat_saturated_drops_syns_and_pods_time_out") {
        return;
    }
    let started = Instant::now();
    let chart = std::env::temp_dir().join(format!("fivetuple-nat-{}.svg", std::process::id()));
    let report = json_run(&[
        "--topology",
        "nat",
        "--only",
        "naive,pooled",
        "--ports",
        "2",
        "--rate",
        "500",
        "--duration",
        "2s",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&chart).expect("--chart wrote the SVG");
    let _ = std::fs::remove_file(&chart);
    assert!(
        svg.contains("NAT entries toward B"),
        "the right axis names what it counts"
    );
    // Two remedies of 2 s, each call bounded by the 1 s connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    let naive = remedy(&report, "naive");
    let ct = &naive["conntrack"];
    assert!(u(&naive["failed"]) > 0, "{naive}");
    let error = naive["error"].as_str().unwrap();
    assert!(error.contains("connect timed out after 1s"), "{error}");
    assert!(!error.contains("os error 99"), "{error}");
    assert!(u(&ct["insert_failed"]) + u(&ct["drop"]) > 0, "{ct}");
    assert!(u(&ct["entries_at_end"]) <= 2, "{ct}");
    // Keep-alive needs a NAT port per open connection, not per call; its
    // calls can fail only when its own open connections hold every NAT
    // port (the pools of both pods open as many as the concurrency asks,
    // and one pod may get none).
    let pooled = remedy(&report, "pooled");
    let pooled_ct = &pooled["conntrack"];
    assert!(pooled_ct["reused"].is_null(), "{pooled}");
    assert!(u(&pooled_ct["entries_at_end"]) <= 2, "{pooled_ct}");
    if u(&pooled["failed"]) > 0 {
        assert_eq!(u(&pooled_ct["peak_entries"]), 2, "{pooled}");
    }
}

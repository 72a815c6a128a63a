//! `fivetuple run` / `attach` / `detach` / `attached`: unmodified clients
//! (curl, Python's http.client, a static Go binary, Node.js) in a fresh
//! network namespace with a 100-port range and `tcp_tw_reuse=0` run out of
//! ports without a policy and make every call under `run --policy
//! rotate:20000-20999`; nginx's access log (`$remote_addr $remote_port`) is
//! what the peer saw. Every test needs root (CAP_BPF, CAP_NET_ADMIN, cgroup
//! v2); they run in CI. Tests that load the programs are serialized, so the
//! cleanup test can check that no fivetuple program is left in the kernel.
//!
//! Call counts: the 3,000 (curl) and 5,000 (Python, Go, Node.js)
//! under the policy, 30 to 50 times the namespace's 100 ports, so each
//! rotation port is reused 3 to 5 times within TIME_WAIT's 60 s. The baseline
//! without a policy makes 300 calls: past 100 calls a 100-port range must
//! fail, so 300 show the failure at a tenth of the cost.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fivetuple_bpf::cgroup::{own_cgroup, Transient};
use fivetuple_testkit::nginx::Nginx;
use support::{have_root, have_tool, BIN};

static SERIAL: Mutex<()> = Mutex::new(());

const LISTEN_PORT: u16 = 8080;
const ROTATE: &str = "rotate:20000-20999";
const ROT: std::ops::RangeInclusive<u16> = 20000..=20999;
const KERNEL_RANGE: std::ops::RangeInclusive<u16> = 40000..=40099;
const SYSCTLS: [(&str, &str); 2] = [
    ("ip_local_port_range", "40000 40099"),
    ("tcp_tw_reuse", "0"),
];

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A client's per-call output: local ports of the calls that worked, and the
/// number that failed.
#[derive(Debug)]
struct Calls {
    ports: Vec<u16>,
    failures: usize,
    first_error: Option<String>,
}

fn calls(stdout: &[u8]) -> Calls {
    let mut c = Calls {
        ports: Vec::new(),
        failures: 0,
        first_error: None,
    };
    for line in String::from_utf8_lossy(stdout).lines() {
        // curl's -w prints "PORT CODE"; the others print "PORT" or "ERR ...".
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        match (first.parse::<u16>(), words.next()) {
            (Ok(p), None | Some("200")) if p != 0 => c.ports.push(p),
            _ => {
                c.failures += 1;
                c.first_error.get_or_insert_with(|| line.to_string());
            }
        }
    }
    c
}

fn fivetuple(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run fivetuple")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
            .chars()
            .take(2000)
            .collect::<String>(),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Root and each (tool, package) of `tools`; see `have_root` and `have_tool`.
fn ready(test: &str, tools: &[(&str, &str)]) -> bool {
    have_root(test)
        && tools
            .iter()
            .all(|(tool, package)| have_tool(test, tool, package))
}

/// `fivetuple run POLICY_ARGS --stats --cgroup-parent PARENT -- CMD`.
fn run_in(parent: &str, policy_args: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(policy_args);
    args.extend_from_slice(&["--stats", "--cgroup-parent", parent, "--"]);
    args.extend_from_slice(cmd);
    fivetuple(&args)
}

/// A cgroup for this test under the test process's own cgroup; removed (its
/// processes killed) on drop.
fn test_cgroup(tag: &str) -> Transient {
    Transient::create(&own_cgroup().expect("cgroup v2 mounted"), tag).expect("create a test cgroup")
}

/// Runs `f` serialized with the other tests that load programs, in a fresh
/// network namespace with the 100-port range, `tcp_tw_reuse=0` and `extra`
/// sysctls, with nginx listening on 127.0.0.1:8080.
fn in_box<T: Send>(tag: &str, extra: &[(&str, &str)], f: impl FnOnce(&Nginx) -> T + Send) -> T {
    let _serial = serial();
    let sysctls: Vec<(&str, &str)> = SYSCTLS.iter().chain(extra).copied().collect();
    fivetuple_testkit::in_fresh_netns(&sysctls, || {
        let (v4, v6) = (
            format!("127.0.0.1:{LISTEN_PORT}"),
            format!("[::1]:{LISTEN_PORT}"),
        );
        let nginx = Nginx::start(tag, &[&v4, &v6]);
        f(&nginx)
    })
}

/// The client without a policy fails past the namespace's 100 ports; under
/// `run --policy rotate:20000-20999` it makes `n` calls with no failure,
/// from ports of that range only, which is what nginx saw, call for call.
fn unmodified_client_gets_rotation(
    tag: &str,
    client: impl Fn(usize) -> Vec<String> + Sync,
    n: usize,
) {
    in_box(tag, &[], |nginx| {
        let base = client(300);
        let out = Command::new(&base[0])
            .args(&base[1..])
            .output()
            .expect("run the client");
        let without = calls(&out.stdout);
        assert!(
            without.failures > 0 && without.ports.len() <= 100,
            "{tag} without a policy: expected failures past 100 calls, got {} ok, {} failed",
            without.ports.len(),
            without.failures
        );
        assert!(without.ports.iter().all(|p| KERNEL_RANGE.contains(p)));
        let before = nginx.seen(without.ports.len()).len();

        let parent = test_cgroup(&format!("{tag}-parent"));
        let mut args = vec!["run", "--policy", ROTATE, "--stats", "--cgroup-parent"];
        let parent_path = parent.path().to_str().unwrap().to_string();
        args.push(&parent_path);
        args.push("--");
        let cmd = client(n);
        args.extend(cmd.iter().map(String::as_str));
        let started = Instant::now();
        let out = fivetuple(&args);
        let elapsed = started.elapsed();
        assert!(out.status.success(), "{tag} under run: {}", text(&out));
        let with = calls(&out.stdout);
        assert_eq!(
            (with.ports.len(), with.failures),
            (n, 0),
            "{tag} under {ROTATE}: first error {:?}",
            with.first_error
        );
        assert!(
            with.ports.iter().all(|p| ROT.contains(p)),
            "{tag}: a port outside {ROTATE}"
        );
        let seen = nginx.seen(before + n);
        let mut seen_ports: Vec<u16> = seen[before..].iter().map(|(_, p)| *p).collect();
        let mut used = with.ports.clone();
        seen_ports.sort_unstable();
        used.sort_unstable();
        assert_eq!(
            seen_ports.len(),
            n,
            "{tag}: nginx logged {} of {n} calls",
            seen_ports.len()
        );
        assert_eq!(
            seen_ports, used,
            "{tag}: nginx saw other ports than the client reported"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("connects {n} binds {n} bind_errors 0")),
            "{tag}: --stats: {stderr}"
        );
        eprintln!(
            "{tag}: without a policy {} ok / {} failed of 300; under {ROTATE} {n} ok / 0 failed in {:.1} s",
            without.ports.len(),
            without.failures,
            elapsed.as_secs_f64()
        );
        drop(parent);
    });
}

#[test]
fn netns_root_curl_loop_3000_calls_zero_failures_under_rotate() {
    let test = "netns_root_curl_loop_3000_calls_zero_failures_under_rotate";
    if !ready(test, &[("curl", "curl"), ("nginx", "nginx")]) {
        return;
    }
    unmodified_client_gets_rotation(
        "curl",
        |n| {
            let script = format!(
                "for i in $(seq {n}); do curl -s -o /dev/null -w '%{{local_port}} %{{http_code}}\\n' http://127.0.0.1:{LISTEN_PORT}/; done"
            );
            vec!["sh".into(), "-c".into(), script]
        },
        3000,
    );
}

#[test]
fn netns_root_python_http_client_5000_calls_zero_failures_under_rotate() {
    let test = "netns_root_python_http_client_5000_calls_zero_failures_under_rotate";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    let script = clients_dir().join("churn.py");
    unmodified_client_gets_rotation(
        "python",
        |n| {
            vec![
                "python3".into(),
                script.display().to_string(),
                "127.0.0.1".into(),
                LISTEN_PORT.to_string(),
                n.to_string(),
            ]
        },
        5000,
    );
}

/// Builds tests/clients/churn.go as a static binary (CGO_ENABLED=0) with
/// the Go toolchain from apt, with its cache under the target directory.
fn build_static_go_client() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = tmp.join("fivetuple-go-churn");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(clients_dir().join("churn.go"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("run go build (apt-get install golang-go)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = Command::new("file").arg(&bin).output().expect("file(1)");
    let kind = String::from_utf8_lossy(&file.stdout);
    assert!(
        kind.contains("statically linked"),
        "not a static binary: {kind}"
    );
    bin
}

#[test]
fn netns_root_static_go_binary_5000_calls_zero_failures_under_rotate() {
    let test = "netns_root_static_go_binary_5000_calls_zero_failures_under_rotate";
    if !ready(
        test,
        &[("go", "golang-go"), ("nginx", "nginx"), ("file", "file")],
    ) {
        return;
    }
    let bin = build_static_go_client();
    unmodified_client_gets_rotation(
        "go",
        |n| {
            vec![
                bin.display().to_string(),
                format!("127.0.0.1:{LISTEN_PORT}"),
                n.to_string(),
            ]
        },
        5000,
    );
}

#[test]
fn netns_root_nodejs_5000_calls_zero_failures_under_rotate() {
    let test = "netns_root_nodejs_5000_calls_zero_failures_under_rotate";
    if !ready(test, &[("node", "nodejs"), ("nginx", "nginx")]) {
        return;
    }
    let script = clients_dir().join("churn.js");
    unmodified_client_gets_rotation(
        "node",
        |n| {
            vec![
                "node".into(),
                script.display().to_string(),
                "127.0.0.1".into(),
                LISTEN_PORT.to_string(),
                n.to_string(),
            ]
        },
        5000,
    );
}

/// spread:127.0.0.2-127.0.0.9 gives each of 8 sources the namespace's 100
/// ports toward nginx, so the same unmodified client makes 8 times the calls
/// before the first failure, and nginx sees the 8 sources.
#[test]
fn netns_root_spread_over_8_sources_multiplies_the_budget_by_8() {
    let test = "netns_root_spread_over_8_sources_multiplies_the_budget_by_8";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    in_box("spread", &[], |nginx| {
        let parent = test_cgroup("spread-parent");
        let script = clients_dir().join("churn.py").display().to_string();
        let n = "1000";
        let run = |spec: &str| {
            let out = run_in(
                parent.path().to_str().unwrap(),
                &["--policy", spec],
                &["python3", &script, "127.0.0.1", "8080", n],
            );
            assert!(out.status.success(), "{spec}: {}", text(&out));
            calls(&out.stdout)
        };
        let kernel = run("kernel");
        let before = nginx.seen(kernel.ports.len()).len();
        let spread = run("spread:127.0.0.2-127.0.0.9");
        let (k, s) = (kernel.ports.len(), spread.ports.len());
        eprintln!(
            "{test}: of 1000 calls, kernel {k} ok, spread over 8 sources {s} ok ({:.2}x)",
            s as f64 / k as f64
        );
        assert!(
            (90..=100).contains(&k),
            "kernel default made {k} calls in a 100-port range"
        );
        assert!(
            kernel.failures > 0 && spread.failures > 0,
            "both run out within 1000 calls"
        );
        assert!(
            s >= 8 * k * 95 / 100 && s <= 8 * 100,
            "spread made {s} calls, kernel {k}: expected about 8x"
        );
        let seen = nginx.seen(before + s);
        let sources: std::collections::BTreeSet<&str> =
            seen[before..].iter().map(|(a, _)| a.as_str()).collect();
        let expected: std::collections::BTreeSet<String> =
            (2..=9).map(|i| format!("127.0.0.{i}")).collect();
        assert_eq!(
            sources
                .into_iter()
                .map(str::to_string)
                .collect::<std::collections::BTreeSet<_>>(),
            expected,
            "nginx saw these sources"
        );
    });
}

/// A bpf filesystem mounted for one test (pins cannot collide with the
/// host's /sys/fs/bpf); unmounted on drop.
struct BpfFs(PathBuf);

impl BpfFs {
    fn mount(tag: &str) -> BpfFs {
        let dir =
            std::env::temp_dir().join(format!("fivetuple-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t bpf bpf {}", dir.display());
        BpfFs(dir)
    }

    fn root(&self) -> PathBuf {
        self.0.join("fivetuple")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn bpftool_cgroup_show(cgroup: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (apt-get install bpftool)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running "service" in a cgroup: a Python process that makes one HTTP
/// call to nginx per line it reads and prints the local port used.
struct Service {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Service {
    fn start(cgroup: &Transient) -> Service {
        let mut child = Command::new("python3")
            .args(["-c", "import http.client,sys\nfor _ in sys.stdin:\n c=http.client.HTTPConnection('127.0.0.1',8080,timeout=5); c.request('GET','/'); c.getresponse().read(); print(c.sock.getsockname()[1], flush=True); c.close()"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        std::fs::write(cgroup.path().join("cgroup.procs"), child.id().to_string())
            .expect("move the service into its cgroup");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Service {
            child,
            stdin,
            stdout,
        }
    }

    /// The local ports of `n` calls.
    fn calls(&mut self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                writeln!(self.stdin, "go").unwrap();
                let mut line = String::new();
                self.stdout.read_line(&mut line).unwrap();
                line.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("the service said {line:?}"))
            })
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `attach` on the cgroup of a process that is already running changes the
/// ports of its next connects; `detach` gives them back to the kernel.
#[test]
fn netns_root_attach_changes_a_running_process_ports_and_detach_restores() {
    let test = "netns_root_attach_changes_a_running_process_ports_and_detach_restores";
    if !ready(
        test,
        &[
            ("python3", "python3"),
            ("nginx", "nginx"),
            ("bpftool", "bpftool"),
        ],
    ) {
        return;
    }
    in_box("attach", &[], |nginx| {
        let bpffs = BpfFs::mount("attach");
        let root = bpffs.root();
        let root_s = root.to_str().unwrap();
        let svc = test_cgroup("attach-svc");
        let svc_s = svc.path().to_str().unwrap();
        let mut service = Service::start(&svc);
        let mut five = || service.calls(5);
        let first = five();
        assert!(
            first.iter().all(|p| KERNEL_RANGE.contains(p)),
            "before attach: {first:?}"
        );

        let out = fivetuple(&[
            "attach",
            "--cgroup",
            svc_s,
            "--policy",
            ROTATE,
            "--pin-root",
            root_s,
        ]);
        assert!(out.status.success(), "attach: {}", text(&out));
        assert!(bpftool_cgroup_show(svc.path()).contains("fivetuple_connect4"));
        let again = fivetuple(&[
            "attach",
            "--cgroup",
            svc_s,
            "--policy",
            "kernel",
            "--pin-root",
            root_s,
        ]);
        assert_eq!(
            again.status.code(),
            Some(3),
            "a second attach: {}",
            text(&again)
        );
        assert!(String::from_utf8_lossy(&again.stderr).contains("already attached"));

        let during = five();
        assert!(
            during.iter().all(|p| ROT.contains(p)),
            "after attach: {during:?}"
        );
        let seen = nginx.seen(10);
        assert_eq!(
            seen[5..].iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            during,
            "nginx saw"
        );

        let listed = fivetuple(&["attached", "--json", "--pin-root", root_s]);
        assert!(listed.status.success(), "attached: {}", text(&listed));
        let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v[0]["spec"], ROTATE);
        assert_eq!(v[0]["cgroup"], svc_s);
        assert_eq!(
            (
                v[0]["stats"]["connects"].as_u64(),
                v[0]["stats"]["binds"].as_u64()
            ),
            (Some(5), Some(5)),
            "{v}"
        );
        let table = fivetuple(&["attached", "--pin-root", root_s]);
        assert!(
            String::from_utf8_lossy(&table.stdout).contains(ROTATE),
            "{}",
            text(&table)
        );

        let out = fivetuple(&["detach", "--cgroup", svc_s, "--pin-root", root_s]);
        assert!(out.status.success(), "detach: {}", text(&out));
        assert!(
            !bpftool_cgroup_show(svc.path()).contains("fivetuple"),
            "still attached after detach"
        );
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "pins left under {root_s}"
        );
        let after = five();
        assert!(
            after.iter().all(|p| KERNEL_RANGE.contains(p)),
            "after detach: {after:?}"
        );
        let out = fivetuple(&["detach", "--cgroup", svc_s, "--pin-root", root_s]);
        assert_eq!(out.status.code(), Some(3), "detach twice: {}", text(&out));
        drop(service);
    });
}

/// The ids of the BPF programs attached to `cgroup` (`bpftool cgroup show`).
fn attached_program_ids(cgroup: &Path) -> Vec<u32> {
    bpftool_cgroup_show(cgroup)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The programs of `ids` still in the kernel after up to 10 s: it frees a
/// program whose last reference went asynchronously (RCU, a workqueue).
fn programs_left(ids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.iter().any(|id| program_exists(*id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ids.iter()
        .copied()
        .filter(|id| program_exists(*id))
        .collect()
}

/// True while the kernel still has the program with this id.
fn program_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool")
        .status
        .success()
}

/// After `run` ends by each path (CMD exits 0, 1 or 7, fivetuple gets
/// SIGTERM or SIGINT and forwards it, the child is SIGKILLed), no cgroup,
/// attachment or program remains, and the exit code is CMD's. The programs
/// are identified by the ids attached to the transient cgroup while CMD ran,
/// so other BPF users on the machine do not matter.
#[test]
fn root_run_leaves_nothing_behind_on_every_exit_path() {
    let test = "root_run_leaves_nothing_behind_on_every_exit_path";
    if !ready(test, &[("bpftool", "bpftool")]) {
        return;
    }
    let _serial = serial();
    let parent = test_cgroup("cleanup-parent");
    let subdirs = || -> Vec<PathBuf> {
        std::fs::read_dir(parent.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    let spawn = |cmd: &str| -> Child {
        Command::new(BIN)
            .args([
                "run",
                "--policy",
                ROTATE,
                "--cgroup-parent",
                parent.path().to_str().unwrap(),
                "--",
                "sh",
                "-c",
                cmd,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // CMD is running in the transient cgroup with the programs attached:
    // returns their ids.
    let wait_running = |child: &mut Child| -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for d in subdirs() {
                let busy = std::fs::read_to_string(d.join("cgroup.procs"))
                    .is_ok_and(|s| !s.trim().is_empty());
                let ids = attached_program_ids(&d);
                if busy && ids.len() == 2 {
                    return ids;
                }
            }
            assert!(child.try_wait().unwrap().is_none(), "run ended early");
            assert!(Instant::now() < deadline, "run's child never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Each CMD sleeps first, so its programs can be seen while it runs.
    for (name, cmd, signal, expected) in [
        ("exit 0", "sleep 1; true", None, 0),
        ("exit 1", "sleep 1; false", None, 1),
        ("exit 7", "sleep 1; exit 7", None, 7),
        (
            "SIGTERM to run",
            "sleep 30",
            Some(libc::SIGTERM),
            128 + libc::SIGTERM,
        ),
        (
            "SIGINT to run",
            "sleep 30",
            Some(libc::SIGINT),
            128 + libc::SIGINT,
        ),
        (
            "SIGKILL of the child",
            "sleep 1; kill -9 $$",
            None,
            128 + libc::SIGKILL,
        ),
    ] {
        let mut child = spawn(cmd);
        let ids = wait_running(&mut child);
        if let Some(sig) = signal {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name}: run did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr);
        assert_eq!(status.code(), Some(expected), "{name}: {stderr}");
        assert_eq!(
            subdirs(),
            Vec::<PathBuf>::new(),
            "{name}: a cgroup was left"
        );
        assert_eq!(
            programs_left(&ids),
            Vec::<u32>::new(),
            "{name}: programs {ids:?} were left"
        );
        assert!(
            attached_program_ids(parent.path()).is_empty(),
            "{name}: an attachment was left"
        );
    }
}

/// Without privileges `run` refuses with exit 3 and names what is missing.
#[test]
fn root_run_unprivileged_is_refused_with_exit_3_naming_the_capabilities() {
    let test = "root_run_unprivileged_is_refused_with_exit_3_naming_the_capabilities";
    if !ready(test, &[("setpriv", "util-linux")]) {
        return;
    }
    // A copy nobody can execute whatever the permissions on the target dir.
    let dir = std::env::temp_dir().join(format!("fivetuple-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("fivetuple");
    std::fs::copy(BIN, &bin).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args(["run", "--policy", ROTATE, "--", "true"])
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
}

/// `window` needs bpf_setsockopt(IP_LOCAL_PORT_RANGE) from the hook, which
/// fivetuple tries: refused with exit 3 and a message naming it (this
/// machine's 6.18 kernel answers EINVAL), or, on a kernel that allows it,
/// applied: curl's ports are then inside the window.
#[test]
fn netns_root_window_is_tried_and_refused_clearly_or_applied() {
    let test = "netns_root_window_is_tried_and_refused_clearly_or_applied";
    if !ready(test, &[("curl", "curl"), ("nginx", "nginx")]) {
        return;
    }
    in_box("window", &[], |_nginx| {
        let out = fivetuple(&[
            "run", "--policy", "window:40010-40019", "--", "sh", "-c",
            "for i in 1 2 3; do curl -s -o /dev/null -w '%{local_port} %{http_code}\\n' http://127.0.0.1:8080/; done",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            assert!(
                stderr.contains("IP_LOCAL_PORT_RANGE")
                    && stderr.contains("window:40010-40019")
                    && stderr.contains("rotate"),
                "{stderr}"
            );
        } else {
            assert!(out.status.success(), "{}", text(&out));
            let c = calls(&out.stdout);
            assert_eq!(c.ports.len(), 3);
            assert!(
                c.ports.iter().all(|p| (40010..=40019).contains(p)),
                "{:?}",
                c.ports
            );
        }
    });
}

/// Bad arguments exit 3 with the value and what was expected.
#[test]
fn bad_policy_and_filter_exit_3_naming_the_value() {
    for (args, needle) in [
        (
            vec!["run", "--policy", "rotate:300-200", "--", "true"],
            "300-200",
        ),
        (
            vec!["run", "--policy", "bogus", "--", "true"],
            "unknown kind",
        ),
        (
            vec![
                "run",
                "--policy",
                "kernel",
                "--only",
                "10.0.0.0/40",
                "--",
                "true",
            ],
            "\"40\"",
        ),
        (
            vec![
                "attach",
                "--cgroup",
                "/nonexistent-fivetuple",
                "--policy",
                "kernel",
            ],
            "nonexistent-fivetuple",
        ),
    ] {
        let out = fivetuple(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out)
        );
    }
}

fn stats_of(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| l.contains("connects "))
        .unwrap_or_default()
        .to_string()
}

/// Left alone, and counted: destinations outside `--only`, sockets the
/// application bound itself, UDP (not even counted as a connect).
#[test]
fn netns_root_only_filter_bound_sockets_and_udp_are_left_alone() {
    let test = "netns_root_only_filter_bound_sockets_and_udp_are_left_alone";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    in_box("left-alone", &[], |_nginx| {
        let parent = test_cgroup("left-alone-parent");
        let p = parent.path().to_str().unwrap().to_string();
        let script = clients_dir().join("churn.py").display().to_string();
        // The filter names another port: nginx's calls keep the kernel's ports.
        let out = run_in(
            &p,
            &["--policy", ROTATE, "--only", "127.0.0.1:9999"],
            &["python3", &script, "127.0.0.1", "8080", "20"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let c = calls(&out.stdout);
        assert_eq!(c.ports.len(), 20);
        assert!(
            c.ports.iter().all(|p| KERNEL_RANGE.contains(p)),
            "outside the filter: {:?}",
            c.ports
        );
        assert!(
            stats_of(&out.stderr).contains("connects 0 binds 0")
                && stats_of(&out.stderr).contains("filtered 20"),
            "{}",
            text(&out)
        );
        // Inside the filter (network and port), the policy applies.
        let out = run_in(
            &p,
            &["--policy", ROTATE, "--only", "127.0.0.0/8:8080"],
            &["python3", &script, "127.0.0.1", "8080", "20"],
        );
        let c = calls(&out.stdout);
        assert!(
            c.ports.len() == 20 && c.ports.iter().all(|p| ROT.contains(p)),
            "inside the filter: {}",
            text(&out)
        );
        // A socket the application bound (port 0 bind picks a port at once) and a UDP connect.
        let client = "import http.client, socket\n\
            c = http.client.HTTPConnection('127.0.0.1', 8080, source_address=('127.0.0.1', 0)); c.request('GET', '/'); c.getresponse().read(); print(c.sock.getsockname()[1]); c.close()\n\
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.1', 8080)); print(u.getsockname()[1])";
        let out = run_in(&p, &["--policy", ROTATE], &["python3", "-c", client]);
        assert!(out.status.success(), "{}", text(&out));
        let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 2);
        assert!(
            ports.iter().all(|p| !ROT.contains(p)),
            "bound TCP and UDP kept their own ports: {ports:?}"
        );
        let stats = stats_of(&out.stderr);
        assert!(
            stats.contains("connects 0 binds 0")
                && stats.contains("already_bound 1")
                && stats.contains("filtered 0"),
            "{stats}"
        );
    });
}

/// With `tcp_timestamps=0` nothing takes over a TIME_WAIT tuple, and the
/// hook cannot retry: rotation over 100 ports makes about 100 calls and then
/// the client sees EADDRNOTAVAIL, as the guide says.
#[test]
fn netns_root_without_timestamps_rotation_runs_out_like_the_kernel() {
    let test = "netns_root_without_timestamps_rotation_runs_out_like_the_kernel";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    in_box("no-timestamps", &[("tcp_timestamps", "0")], |_nginx| {
        let parent = test_cgroup("no-timestamps-parent");
        let script = clients_dir().join("churn.py").display().to_string();
        let out = run_in(
            parent.path().to_str().unwrap(),
            &["--policy", "rotate:20000-20099"],
            &["python3", &script, "127.0.0.1", "8080", "300"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let c = calls(&out.stdout);
        assert!(
            (95..=100).contains(&c.ports.len()),
            "{} calls worked: {:?}",
            c.ports.len(),
            c.first_error
        );
        assert_eq!(c.first_error.as_deref(), Some("ERR EADDRNOTAVAIL"));
        assert!(c.ports.iter().all(|p| (20000..=20099).contains(p)));
    });
}

/// A policy whose cgroup was removed is still listed and detached by path,
/// so no pin outlives its cgroup unseen.
#[test]
fn root_detach_after_the_cgroup_is_gone_removes_the_pins() {
    let test = "root_detach_after_the_cgroup_is_gone_removes_the_pins";
    if !have_root(test) {
        return;
    }
    let _serial = serial();
    let bpffs = BpfFs::mount("gone");
    let root = bpffs.root();
    let root_s = root.to_str().unwrap();
    let group = test_cgroup("gone");
    let path = group.path().to_str().unwrap().to_string();
    let out = fivetuple(&[
        "attach",
        "--cgroup",
        &path,
        "--policy",
        "spread:127.0.0.2-127.0.0.3",
        "--pin-root",
        root_s,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ids = attached_program_ids(group.path());
    assert_eq!(ids.len(), 2, "{ids:?}");
    group.remove().unwrap();
    let listed = fivetuple(&["attached", "--pin-root", root_s]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&path),
        "{}",
        text(&listed)
    );
    let out = fivetuple(&["detach", "--cgroup", &path, "--pin-root", root_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "pins left");
    assert_eq!(
        programs_left(&ids),
        Vec::<u32>::new(),
        "programs {ids:?} were left"
    );
}

/// `repro --only naive,attach`: the same naive client fails, and holds with
/// the kernel hook around it; afterwards no cgroup or program is left.
#[test]
fn netns_root_repro_attach_remedy_holds_where_naive_fails() {
    let test = "netns_root_repro_attach_remedy_holds_where_naive_fails";
    if !ready(test, &[("bpftool", "bpftool")]) {
        return;
    }
    let _serial = serial();
    let child = Command::new(BIN)
        .args([
            "repro",
            "--only",
            "naive,attach",
            "--ports",
            "100",
            "--rate",
            "100",
            "--duration",
            "3s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fivetuple repro");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        v["remedies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} row: {v}"))
            .clone()
    };
    let (naive, attach) = (row("naive"), row("attach"));
    assert!(naive["failed"].as_u64().unwrap() > 0, "naive: {naive}");
    assert_eq!(attach["failed"].as_u64(), Some(0), "attach: {attach}");
    assert_eq!(attach["ok"], attach["calls"], "attach: {attach}");
    // The hook's cgroup (named after repro's pid) is gone, and with it the
    // attachment: repro's process, which held the programs, has exited.
    let home = own_cgroup().unwrap();
    let prefix = format!("fivetuple-repro-{}-", pid);
    let left: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "repro left cgroups: {left:?}");
}

/// The connect6 program: rotation applies to an IPv6 destination, and a
/// spread with IPv4 sources only leaves it to the kernel (counted as
/// no_source), as the library's policy gives up on it; a v4-mapped
/// destination on a dual-stack socket gets an IPv4 source.
#[test]
fn netns_root_ipv6_destinations_rotate_and_spread_without_a_v6_source_is_left_alone() {
    let test = "netns_root_ipv6_destinations_rotate_and_spread_without_a_v6_source_is_left_alone";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    in_box("ipv6", &[], |nginx| {
        let parent = test_cgroup("ipv6-parent");
        let p = parent.path().to_str().unwrap().to_string();
        let script = clients_dir().join("churn.py").display().to_string();
        let out = run_in(
            &p,
            &["--policy", ROTATE],
            &["python3", &script, "::1", "8080", "300"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let c = calls(&out.stdout);
        assert_eq!((c.ports.len(), c.failures), (300, 0), "{:?}", c.first_error);
        assert!(c.ports.iter().all(|p| ROT.contains(p)), "{:?}", c.ports);
        let seen = nginx.seen(300);
        assert!(
            seen.len() >= 300 && seen.iter().all(|(a, p)| a == "::1" && ROT.contains(p)),
            "nginx saw {:?}",
            &seen[..seen.len().min(5)]
        );
        let out = run_in(
            &p,
            &["--policy", "spread:127.0.0.2-127.0.0.3"],
            &["python3", &script, "::1", "8080", "5"],
        );
        let c = calls(&out.stdout);
        assert!(
            c.ports.len() == 5 && c.ports.iter().all(|p| KERNEL_RANGE.contains(p)),
            "{}",
            text(&out)
        );
        assert!(
            stats_of(&out.stderr).contains("no_source 5"),
            "{}",
            text(&out)
        );
        // A dual-stack IPv6 socket to ::ffff:127.0.0.1 is an IPv4 connect:
        // it gets an IPv4 source of the spread, as the peer sees.
        let mapped = "import socket\n\
            for _ in range(4):\n\
            \x20s = socket.socket(socket.AF_INET6); s.connect(('::ffff:127.0.0.1', 8080))\n\
            \x20s.sendall(b'GET / HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n'); s.recv(4096); print(s.getsockname()[0], s.getsockname()[1]); s.close()";
        let out = run_in(
            &p,
            &["--policy", "spread:127.0.0.2-127.0.0.3"],
            &["python3", "-c", mapped],
        );
        assert!(out.status.success(), "{}", text(&out));
        let sources: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        assert_eq!(
            sources,
            ["::ffff:127.0.0.2", "::ffff:127.0.0.3"]
                .map(String::from)
                .into(),
            "{}",
            text(&out)
        );
        let seen = nginx.seen(309);
        let last: std::collections::BTreeSet<&str> = seen[seen.len() - 4..]
            .iter()
            .map(|(a, _)| a.as_str())
            .collect();
        assert_eq!(last, ["127.0.0.2", "127.0.0.3"].into(), "nginx saw");
    });
}

/// `attach` run from another network namespace (the test process's own)
/// rotates over the ports the *target* namespace does not reserve: its
/// `ip_local_reserved_ports` is read in the namespace of a process of the
/// cgroup.
#[test]
fn netns_root_attach_from_another_namespace_skips_the_targets_reserved_ports() {
    let test = "netns_root_attach_from_another_namespace_skips_the_targets_reserved_ports";
    if !ready(
        test,
        &[
            ("python3", "python3"),
            ("nginx", "nginx"),
            ("nsenter", "util-linux"),
        ],
    ) {
        return;
    }
    let host_netns = format!("/proc/{}/ns/net", std::process::id());
    in_box(
        "reserved",
        &[("ip_local_reserved_ports", "20000-20989")],
        |_nginx| {
            let bpffs = BpfFs::mount("reserved");
            let root = bpffs.root();
            let svc = test_cgroup("reserved-svc");
            let mut service = Service::start(&svc);
            let out = Command::new("nsenter")
                .arg(format!("--net={host_netns}"))
                .arg(BIN)
                .args([
                    "attach",
                    "--cgroup",
                    svc.path().to_str().unwrap(),
                    "--policy",
                    ROTATE,
                    "--pin-root",
                    root.to_str().unwrap(),
                ])
                .output()
                .expect("nsenter (util-linux)");
            assert!(
                out.status.success(),
                "attach from the host namespace: {}",
                text(&out)
            );
            let ports = service.calls(30);
            let out = fivetuple(&[
                "detach",
                "--cgroup",
                svc.path().to_str().unwrap(),
                "--pin-root",
                root.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "detach: {}", text(&out));
            let used: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
            let free: std::collections::BTreeSet<u16> = (20990..=20999).collect();
            assert_eq!(
                used, free,
                "30 calls over the 10 ports the target namespace does not reserve: {ports:?}"
            );
        },
    );
}

/// One shared counter for every process of the cgroup: 8 clients at once
/// over a 100-port range that wraps 20 times. Every port stays in the range
/// and none is handed out more than its share (a lost or repeated increment
/// of the counter would give some port a 21st use).
#[test]
fn netns_root_rotation_is_shared_and_even_across_concurrent_processes() {
    let test = "netns_root_rotation_is_shared_and_even_across_concurrent_processes";
    if !ready(test, &[("python3", "python3"), ("nginx", "nginx")]) {
        return;
    }
    in_box("concurrent", &[], |nginx| {
        let parent = test_cgroup("concurrent-parent");
        let script = clients_dir().join("churn.py").display().to_string();
        // One output file per client: concurrent writes to one pipe interleave.
        let dir = std::env::temp_dir().join(format!("fivetuple-concurrent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let all = format!("for i in 1 2 3 4 5 6 7 8; do python3 {script} 127.0.0.1 8080 250 > {d}/$i.out & done; wait; cat {d}/*.out");
        let out = run_in(
            parent.path().to_str().unwrap(),
            &["--policy", "rotate:20000-20099"],
            &["sh", "-c", &all],
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", text(&out));
        let c = calls(&out.stdout);
        assert_eq!(c.ports.len() + c.failures, 2000);
        assert!(
            c.failures <= 10,
            "{} failed: {:?}",
            c.failures,
            c.first_error
        );
        assert!(
            stats_of(&out.stderr).contains("connects 2000 binds 2000"),
            "{}",
            text(&out)
        );
        let mut per_port = std::collections::BTreeMap::<u16, usize>::new();
        for p in &c.ports {
            *per_port.entry(*p).or_default() += 1;
        }
        assert!(
            per_port.keys().all(|p| (20000..=20099).contains(p)),
            "{per_port:?}"
        );
        assert!(
            per_port.values().all(|n| *n <= 20),
            "a port used more than 20 times: {per_port:?}"
        );
        assert_eq!(per_port.len(), 100, "every port used");
        assert!(nginx
            .seen(c.ports.len())
            .iter()
            .all(|(_, p)| (20000..=20099).contains(p)));
    });
}

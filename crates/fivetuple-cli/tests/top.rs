//! `fivetuple top` as an engineer runs it: the real binary in a real
//! terminal (tmux), watching a named network namespace with known traffic.
//! Tests named `netns_root_*` need root; under CI=true they fail rather than
//! skip, and so does a missing `tmux`.

mod support;

use support::*;

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A named namespace (`ip netns add`), deleted when dropped.
struct NamedNetns(String);

impl NamedNetns {
    fn new(tag: &str) -> NamedNetns {
        let name = format!("ft-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        NamedNetns(name)
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        fivetuple_testkit::in_netns(format!("/run/netns/{}", self.0), f)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// tmux on a private socket, its server killed when dropped.
struct Tmux(String);

impl Tmux {
    /// Starts the detached session "top" of `cols` x `rows` running `shell`,
    /// and asserts tmux accepted it.
    fn start(&self, cols: &str, rows: &str, shell: &str) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            cols,
            "-y",
            rows,
            shell,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("run tmux")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn netns_root_top_shows_the_busy_destination_and_quits_on_q() {
    let test = "netns_root_top_shows_the_busy_destination_and_quits_on_q";
    if !have_root(test) || !have_tool(test, "tmux", "tmux") {
        return;
    }
    let ns = NamedNetns::new("top");
    // 60 ESTABLISHED clients to :8080 out of a 100-port range: 60%, a warning.
    let (_listener, _keep) = ns.run(|| {
        assert!(Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40099").unwrap();
        let l = TcpListener::bind("127.0.0.1:8080").unwrap();
        let mut keep = Vec::new();
        for _ in 0..60 {
            keep.push(connect_from(
                [127, 0, 0, 1],
                "127.0.0.1:8080".parse().unwrap(),
            ));
            keep.push(l.accept().unwrap().0);
        }
        (l, keep)
    });

    let dir = std::env::temp_dir().join(format!("fivetuple-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rc_file = dir.join("rc");
    let tmux = Tmux(format!("fivetuple-test-{}", std::process::id()));
    let shell = format!(
        "{BIN} top --netns {} 2>{}; echo $? > {}",
        ns.0,
        dir.join("stderr").display(),
        rc_file.display()
    );
    tmux.start("160", "30", &shell);

    // Bounded wait for a refresh that shows the destination.
    let want = "127.0.0.1 -> 127.0.0.1:8080";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let out = tmux.cmd(&["capture-pane", "-p", "-t", "top"]);
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains(want) && screen.contains("60/100") {
            break;
        }
    }
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(
        screen.contains(want),
        "screen:\n{screen}\nstderr:\n{stderr}"
    );
    let line = screen.lines().find(|l| l.contains(want)).unwrap();
    assert!(line.contains("60/100") && line.contains("60%"), "{line}");
    assert!(screen.contains("range 40000-40099"), "{screen}");
    assert!(
        screen.contains("WARNING"),
        "60% is past the 50% warning line:\n{screen}"
    );
    // The 60 accepted sockets are inbound, never a destination.
    assert!(!screen.contains("127.0.0.1 -> 127.0.0.1:4"), "{screen}");

    // Change the sort, then quit.
    tmux.cmd(&["send-keys", "-t", "top", "s"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let out = tmux.cmd(&["capture-pane", "-p", "-t", "top"]);
        if String::from_utf8_lossy(&out.stdout).contains("sort: new connections/s") {
            break;
        }
    }
    let out = tmux.cmd(&["capture-pane", "-p", "-t", "top"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sort: new connections/s"));
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !rc_file.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let rc = std::fs::read_to_string(&rc_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(rc.trim(), "0", "top did not exit 0 on q; stderr: {stderr}");
}

#[test]
fn top_refuses_when_stdout_is_not_a_terminal() {
    let out = Command::new(BIN).arg("top").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("fivetuple: top needs a terminal"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn top_names_an_unknown_netns() {
    let out = Command::new(BIN)
        .args(["top", "--netns", "ft-no-such-netns"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("\"ft-no-such-netns\""), "{err}");
}

/// Captures the pane until `done` holds (bounded), returning the last screen.
fn wait_screen(tmux: &Tmux, secs: u64, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = tmux.cmd(&["capture-pane", "-p", "-t", "top"]);
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&screen) || Instant::now() > deadline {
            return screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn netns_root_top_all_netns_has_a_namespace_column_and_filter() {
    let test = "netns_root_top_all_netns_has_a_namespace_column_and_filter";
    if !have_root(test)
        || !have_tool(test, "tmux", "tmux")
        || !have_tool(test, "nsenter", "util-linux")
    {
        return;
    }
    use fivetuple_testkit::pods::{Node, PodSpec};
    let mut node = Node::new("top");
    // Pod 0: 95 of 100 ports in TIME_WAIT (critical); pod 1: 6 of 200.
    for (range_len, time_wait) in [(100, 95), (200, 6)] {
        node.add_pod(PodSpec {
            range_len,
            time_wait,
            established: 1,
        });
    }
    node.settle();
    let (p0, p1) = (&node.pods[0], &node.pods[1]);
    let tag = |uid: &str| format!("pod {}", &uid[..8]);

    let dir = std::env::temp_dir().join(format!("fivetuple-top-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rc_file = dir.join("rc");
    let tmux = Tmux(format!("fivetuple-test-all-{}", std::process::id()));
    let shell = format!(
        "{BIN} top --all-netns 2>{}; echo $? > {}",
        dir.join("stderr").display(),
        rc_file.display()
    );
    tmux.start("200", "60", &shell);

    let want = "127.0.0.1 -> 127.0.0.10:8080";
    let screen = wait_screen(&tmux, 20, |s| {
        s.contains(&tag(&p0.uid)) && s.contains(&tag(&p1.uid))
    });
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let row = |screen: &str, uid: &str| {
        screen
            .lines()
            .find(|l| l.contains(&tag(uid)) && l.contains(want))
            .map(str::to_string)
    };
    let r0 =
        row(&screen, &p0.uid).unwrap_or_else(|| panic!("screen:\n{screen}\nstderr:\n{stderr}"));
    assert!(r0.contains("95/100") && r0.contains("95%"), "{r0}");
    let r1 = row(&screen, &p1.uid).unwrap_or_else(|| panic!("screen:\n{screen}"));
    assert!(r1.contains("6/200"), "{r1}");
    assert!(screen.contains("every network namespace"), "{screen}");

    // n steps the filter through the namespaces (worst first) until pod 0's alone.
    let header = format!("netns {} (", p0.inode);
    let mut alone = String::new();
    for _ in 0..60 {
        tmux.cmd(&["send-keys", "-t", "top", "n"]);
        alone = wait_screen(&tmux, 2, |s| {
            s.contains("netns ") && s.contains(" usable ports")
        });
        if alone.contains(&header) {
            break;
        }
    }
    assert!(alone.contains(&header), "{alone}");
    assert!(alone.contains("range 40000-40099"), "{alone}");
    assert!(row(&alone, &p0.uid).is_some(), "{alone}");
    assert!(
        !alone.contains(&tag(&p1.uid)),
        "only pod 0 is shown:\n{alone}"
    );

    // a shows every namespace again; q quits with 0.
    tmux.cmd(&["send-keys", "-t", "top", "a"]);
    let again = wait_screen(&tmux, 5, |s| s.contains(&tag(&p1.uid)));
    assert!(again.contains(&tag(&p1.uid)), "{again}");
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !rc_file.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let rc = std::fs::read_to_string(&rc_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(rc.trim(), "0", "top did not exit 0 on q");
}

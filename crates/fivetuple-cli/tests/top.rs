//! `fivetuple top` as an engineer runs it: the real binary in a real
//! terminal (tmux), watching a named network namespace with known traffic.
//! Tests named `netns_root_*` need root; under CI=true they fail rather than
//! skip, and so does a missing `tmux`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");

fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (ip netns add) and CI is set: run the tests as root");
    }
    eprintln!("skipping {test}: needs root");
    false
}

fn have_tmux(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("{test} needs tmux (apt-get install tmux) and CI is set");
    }
    if !ok {
        eprintln!("skipping {test}: tmux is not installed");
    }
    ok
}

/// Connects from `src` (port chosen at connect() thanks to IP_BIND_ADDRESS_NO_PORT).
fn connect_from(src: [u8; 4], dst: SocketAddr) -> TcpStream {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a fd we own; every return value is checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let rc = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let a = sin(src, 0);
        assert_eq!(
            libc::bind(fd, &a as *const _ as *const libc::sockaddr, len),
            0,
            "bind"
        );
        let b = sin(dst.ip().octets(), dst.port());
        let rc = libc::connect(fd, &b as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

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
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns moves only this thread; the fd is open.
                assert_eq!(
                    unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        })
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
    if !have_root(test) || !have_tmux(test) {
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
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "30",
        &shell,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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

//! Test support shared by the fivetuple crates' integration tests and
//! benchmarks, so each namespace trap (DESIGN.md §5) is handled once: a
//! fresh network namespace per test, the root and tool checks (skip with a
//! message outside CI, fail under `CI`), per-namespace sysctls, `ss` counts
//! and sockets with a chosen source address. Linux only; not published.
//!
//! What this crate owns: helpers that tests share (entering a fresh or a
//! named namespace, root and tool checks, sysctls through
//! `fivetuple-kernel`, `ss` counts, hostile clients). Nothing shipped
//! depends on it; it holds no product logic.
#![deny(missing_docs)]

pub mod nat;

pub mod bench;
pub mod host_sysctl;
pub mod hostile;
pub mod nginx;
pub mod pods;
pub use host_sysctl::HostSysctl;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// True when running as root. Outside CI a non-root run skips (the caller
/// returns, after this prints why); under `CI`, which runs as root, it
/// fails the test instead.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (CAP_NET_ADMIN for a network namespace) and CI is set: run the tests as root");
    }
    eprintln!(
        "skipping {test}: needs root (CAP_NET_ADMIN for a network namespace); CI runs it as root"
    );
    false
}

/// True when `tool` is on PATH; `package` names the Debian package that has
/// it. Outside CI a missing tool skips (with a message); under `CI` it fails.
pub fn have_tool(test: &str, tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("{test} needs {tool} (apt-get install {package}) and CI is set");
    }
    if !found {
        eprintln!("skipping {test}: {tool} is not installed (apt-get install {package})");
    }
    found
}

/// Runs `f` on a new thread inside a new network namespace with `lo` up,
/// the soft fd limit raised to the hard one, and the given `net.ipv4.*`
/// sysctls written (and read back). Callers check [`root_or_skip`] first.
///
/// A namespace is per thread: `unshare(CLONE_NEWNET)` moves only the calling
/// thread and the threads and children it starts afterwards, so the test
/// harness stays on the host. The namespace disappears when the thread and
/// its children are gone. A panic in `f` is propagated.
pub fn in_fresh_netns<T: Send>(sysctls: &[(&str, &str)], f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            // SAFETY: unshare only changes this thread's namespace membership.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            // A child forked from this thread inherits its network namespace.
            let status = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run `ip link set lo up` (package iproute2)");
            assert!(status.success(), "ip link set lo up: {status}");
            for (name, value) in sysctls {
                set_sysctl(name, value);
            }
            raise_fd_limit();
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `f` on a new thread that has entered the existing network namespace
/// at `path` (`/run/netns/NAME` or `/proc/PID/ns/net`) with `setns()`, and
/// returns its result; the calling thread stays where it is (membership is
/// per thread, DESIGN §5). Panics naming the path when the namespace cannot
/// be opened or entered; a panic in `f` is propagated.
pub fn in_netns<T: Send>(path: impl AsRef<std::path::Path>, f: impl FnOnce() -> T + Send) -> T {
    let path = path.as_ref();
    let ns = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("open the namespace {}: {e}", path.display()));
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            // SAFETY: `ns` is an open nsfs file for the whole call; setns
            // changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns({}): {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes `net.ipv4.NAME` in the calling thread's namespace (`/proc/sys` is
/// resolved against the opening thread) and reads it back, so a value the
/// kernel did not take fails here.
pub fn set_sysctl(name: &str, value: &str) {
    use fivetuple_kernel::sysctl;
    let key = format!("ipv4.{name}");
    sysctl::write(&key, value).unwrap_or_else(|e| panic!("{e}"));
    let back = sysctl::read(&key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        back.split_whitespace().collect::<Vec<_>>(),
        value.split_whitespace().collect::<Vec<_>>(),
        "{} did not take {value:?}",
        sysctl::path(&key).display()
    );
}

/// Lifts the soft fd limit to the hard one: tests hold hundreds of sockets.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Counts the TCP sockets `ss` shows in `state` (e.g. "time-wait") in the
/// calling thread's namespace.
pub fn ss_count(state: &str) -> usize {
    let out = Command::new("ss")
        .args(["-Htan", "state", state])
        .output()
        .expect("run ss (iproute2)");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Connects from `src`, binding the address only: `IP_BIND_ADDRESS_NO_PORT`
/// leaves the port to connect(), as fivetuple's spread policy does.
pub fn connect_from(src: [u8; 4], dst: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let one: libc::c_int = 1;
    // SAFETY: the fd is live for the call; the value is a c_int on the stack.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "IP_BIND_ADDRESS_NO_PORT: {}",
        std::io::Error::last_os_error()
    );
    let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(src), 0));
    socket
        .bind(&local.into())
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    socket
        .connect(&dst.into())
        .unwrap_or_else(|e| panic!("connect {local} -> {dst}: {e}"));
    socket.into()
}

/// Opens and closes `n` connections to `listener`, the client closing
/// first, so the client side of each ends in TIME_WAIT.
pub fn make_time_wait(listener: &TcpListener, n: usize) {
    let addr = listener.local_addr().expect("listener address");
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let mut b = [0u8; 1];
        assert_eq!(
            server.read(&mut b).expect("read"),
            0,
            "the server sees the client's FIN"
        );
    }
}

/// A TCP socket bound to `addr` (port 0: the kernel picks) that neither
/// listens nor connects, with the address it got: a port held by `bind()`.
pub fn bind_only(addr: SocketAddr) -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let local = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("a bound socket has an address");
    (s, local)
}

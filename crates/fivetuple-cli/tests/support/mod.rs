//! Shared by the CLI's integration tests: the binary's path, the root and
//! tool checks (skip with a message outside CI, fail under `CI=true`), a fresh
//! network namespace per test, and sockets with a chosen source address.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};

/// The `fivetuple` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");

/// True when root. Outside CI a non-root run skips (with a message); under
/// CI, which runs as root, it fails the test.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root (network namespaces) and CI is set: run the tests as root");
    }
    eprintln!("skipping {test}: needs root (network namespaces)");
    false
}

/// True when `tool` is on PATH; `package` names where it comes from. Outside
/// CI a missing tool skips (with a message); under CI it fails the test.
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

/// Runs `f` on a thread in a fresh network namespace with `lo` up. Children
/// spawned from that thread (the binary, `ss`) inherit the namespace, which
/// disappears when the thread ends.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare only moves this thread into a new namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            let st = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run ip (iproute2)");
            assert!(st.success(), "ip link set lo up failed");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Writes `net.ipv4.NAME` in the calling thread's namespace.
pub fn sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/net/ipv4/{name}");
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
}

/// Connects from `src`, binding the address only: `IP_BIND_ADDRESS_NO_PORT`
/// leaves the port to connect(), as fivetuple's spread policy does.
pub fn connect_from(src: [u8; 4], dst: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // SAFETY: the fd is live for the call; the value is a c_int on the stack.
    let rc = unsafe {
        let one: libc::c_int = 1;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
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

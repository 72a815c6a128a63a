//! Throwaway network namespaces. Each box is a thread that calls
//! `unshare(CLONE_NEWNET)` before it starts anything else, so the namespace
//! lives exactly as long as that thread and the threads it spawns: when they
//! exit, the kernel removes the namespace with every socket and veth in it.
//!
//! Namespace membership is per thread, so everything that must happen inside
//! (sysctls, `/proc/thread-self/net`, the tokio runtime, `ip` children) is
//! done from the box thread or from threads it spawned after the move.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::Command;
use std::thread;

use crate::error::LabError;

/// How this process gets its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Root (or `CAP_SYS_ADMIN`): a plain new network namespace per box.
    Root,
    /// A normal user: the process entered a new user namespace (mapped to
    /// root inside it), and each box is a network namespace owned by it.
    UserNamespace,
}

impl Privilege {
    /// A short description for the output.
    pub fn describe(self) -> &'static str {
        match self {
            Privilege::Root => "network namespace (root)",
            Privilege::UserNamespace => "user + network namespace (unprivileged)",
        }
    }
}

/// Makes sure boxes can be created, entering a user namespace when the
/// process is not privileged.
///
/// Call this before the process starts any thread: the kernel refuses
/// `unshare(CLONE_NEWUSER)` in a multithreaded process (`unshare(2)`,
/// EINVAL). When neither way is permitted the error names what is missing.
pub fn prepare() -> Result<Privilege, LabError> {
    if probe_netns().is_ok() {
        return Ok(Privilege::Root);
    }
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let threads = thread_count();
    if threads > 1 {
        return Err(LabError::NoNamespaces(format!(
            "not permitted to create a network namespace (needs CAP_SYS_ADMIN), and a user namespace \
             can only be entered by a single-threaded process (this one has {threads} threads)"
        )));
    }
    // SAFETY: unshare has no memory-safety preconditions; the process is
    // single-threaded (checked above), as CLONE_NEWUSER requires.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        let err = io::Error::last_os_error();
        return Err(LabError::NoNamespaces(format!(
            "not permitted to create a network namespace (run as root or with CAP_SYS_ADMIN), and \
             unprivileged user namespaces are unavailable: {err}{}",
            userns_blocker()
        )));
    }
    let map = |path: &str, text: String| {
        fs::write(path, text).map_err(|e| {
            LabError::NoNamespaces(format!(
                "entered a user namespace but cannot write {path}: {e}"
            ))
        })
    };
    map("/proc/self/setgroups", "deny".into())?;
    map("/proc/self/uid_map", format!("0 {uid} 1"))?;
    map("/proc/self/gid_map", format!("0 {gid} 1"))?;
    probe_netns().map_err(|e| {
        LabError::NoNamespaces(format!(
            "entered a user namespace but cannot create a network namespace in it: {e}"
        ))
    })?;
    Ok(Privilege::UserNamespace)
}

/// Names the kernel setting that forbids unprivileged user namespaces, if
/// one of the known ones does.
fn userns_blocker() -> String {
    let checks = [
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "0",
            "kernel.unprivileged_userns_clone=0",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "0",
            "user.max_user_namespaces=0",
        ),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns=1",
        ),
    ];
    let found: Vec<&str> = checks
        .iter()
        .filter(|(path, bad, _)| fs::read_to_string(path).is_ok_and(|v| v.trim() == *bad))
        .map(|(_, _, name)| *name)
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(" (forbidden by {})", found.join(", "))
    }
}

fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// Tries `unshare(CLONE_NEWNET)` in a short-lived thread.
fn probe_netns() -> io::Result<()> {
    thread::spawn(unshare_net)
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace probe thread panicked")))
}

/// Moves the calling thread into a new network namespace.
fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET
    // affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread named `name` inside a new network namespace with
/// loopback up. The namespace disappears when `f` returns and every thread
/// it spawned has exited.
pub fn spawn_box<T, F>(
    name: &str,
    f: F,
) -> Result<thread::JoinHandle<Result<T, LabError>>, LabError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LabError> + Send + 'static,
{
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            unshare_net().map_err(|e| LabError::namespace("unshare(CLONE_NEWNET)", e))?;
            loopback_up().map_err(|e| LabError::namespace("bringing lo up", e))?;
            f()
        })
        .map_err(|e| LabError::namespace("spawning the box thread", e))
}

/// Joins a box thread, turning a panic into an error.
pub fn join_box<T>(handle: thread::JoinHandle<Result<T, LabError>>) -> Result<T, LabError> {
    handle
        .join()
        .unwrap_or_else(|_| Err(LabError::namespace_msg("a box thread panicked")))
}

/// Sets `IFF_UP` on `lo` in the calling thread's namespace (`SIOCSIFFLAGS`).
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new socket nothing else owns; the OwnedFd closes it
    // once, on every path.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a valid socket and ifr a properly initialised ifreq that
    // outlives both calls; SIOC[GS]IFFLAGS read and write only ifru_flags.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    drop(sock);
    result
}

/// Writes `net.<key>` (e.g. `ipv4.tcp_tw_reuse`) in the calling thread's
/// namespace: `/proc/sys` is resolved against the task that opens the file.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), LabError> {
    fivetuple_kernel::sysctl::write(key, value)
        .map_err(|e| LabError::namespace(format!("setting net.{key}"), e))
}

/// Reads `net.<key>` in the calling thread's namespace, trimmed.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    fivetuple_kernel::sysctl::read(key).map(|s| s.trim().to_string())
}

/// The number of TIME_WAIT sockets in the calling thread's namespace, from
/// `/proc/thread-self/net/sockstat` (`/proc/net` would show the main
/// thread's namespace).
pub fn time_wait_count() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/thread-self/net/sockstat")?;
    fivetuple_kernel::parse_sockstat_tw(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no \"TCP: ... tw N\" line in sockstat",
        )
    })
}

/// The kernel thread id of the calling thread (a box's "pid" for
/// `ip link ... netns PID`).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Runs `ip ARGS` from the calling thread, so it acts on this thread's
/// namespace (a child inherits the namespaces of the thread that forks it).
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            LabError::namespace_msg(
                "`ip` not found: --topology two-hosts needs iproute2 (apt-get install iproute2)",
            )
        } else {
            LabError::namespace(format!("running ip {}", args.join(" ")), e)
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::namespace_msg(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes a veth pair from the calling thread's namespace: `local` here,
/// `peer` in the namespace of thread `tid` (see [`current_tid`]).
pub fn veth(local: &str, peer: &str, tid: i32) -> Result<(), LabError> {
    ip(&[
        "link",
        "add",
        local,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &tid.to_string(),
    ])
}

/// The running kernel's release (`uname -r`), for the record.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// True when `path` exists (used to report optional sysctls).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

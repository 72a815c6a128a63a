//! cgroup v2 and bpf filesystem plumbing shared by the BPF features: where
//! the unified hierarchy is mounted, transient cgroups that are emptied and
//! removed on every exit path, the network namespace of a cgroup's
//! processes, and a bpf filesystem under a pin root.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::policy::Error;
use crate::probe::{self, Missing, MissingList};

/// The cgroup v2 directory of the calling process: the cgroup2 mount joined
/// with the `0::` line of `/proc/self/cgroup`.
pub fn own_cgroup() -> Result<PathBuf, Error> {
    let mount = probe::cgroup2_mount()
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?
        .ok_or_else(|| Error::Missing(MissingList(vec![Missing::CgroupV2])))?;
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("reading /proc/self/cgroup", e))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Ok(mount.join(rel))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A cgroup this process created; [`remove`](Transient::remove) (or drop)
/// kills what is left in it, waits for it to empty and removes it.
#[derive(Debug)]
pub struct Transient {
    path: PathBuf,
    removed: bool,
}

impl Transient {
    /// Creates `PARENT/fivetuple-TAG-PID-N`.
    pub fn create(parent: &Path, tag: &str) -> Result<Transient, Error> {
        let name = format!(
            "fivetuple-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|e| {
            Error::io(
                format!(
                    "creating cgroup {} (is {} in a cgroup v2 hierarchy, and writable?)",
                    path.display(),
                    parent.display()
                ),
                e,
            )
        })?;
        Ok(Transient {
            path,
            removed: false,
        })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An open `cgroup.procs` to hand to a child, which writes "0" into it
    /// after fork to move itself (see [`join_in_child`]).
    pub fn procs_file(&self) -> Result<fs::File, Error> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .map_err(|e| Error::io(format!("opening {}/cgroup.procs", self.path.display()), e))
    }

    /// Forks a child that joins this cgroup, connects a TCP socket to
    /// 127.0.0.1:9 (the connect hook runs before any route or peer matters)
    /// and exits; waits for it.
    pub(crate) fn run_connect_probe(&self) -> Result<(), Error> {
        let procs = self.procs_file()?;
        // SAFETY: the child only calls async-signal-safe functions (write,
        // socket, connect, _exit) before exiting.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::io("fork", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: raw syscalls on valid buffers; the child never returns.
            unsafe {
                let ok = join_in_child(procs.as_raw_fd()) == 0;
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 9u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                    },
                    sin_zero: [0; 8],
                };
                libc::connect(
                    s,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(Error::State(format!(
                "the probe child could not join cgroup {}",
                self.path.display()
            )))
        }
    }

    /// Kills every process left in the cgroup, waits (up to 5 s) until it is
    /// empty and removes it.
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        remove_cgroup(&self.path)
    }
}

impl Drop for Transient {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_cgroup(&self.path) {
                tracing::warn!(cgroup = %self.path.display(), error = %e, "cannot remove the transient cgroup");
            }
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as
/// `procs_fd` (writing "0" names the writer). Async-signal-safe: for use
/// between fork and exec. Returns 0 or -1.
///
/// # Safety
/// `procs_fd` must be an open, writable `cgroup.procs`.
pub unsafe fn join_in_child(procs_fd: i32) -> i32 {
    // SAFETY: writes one byte from a static buffer.
    let n = unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        0
    } else {
        -1
    }
}

fn remove_cgroup(path: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree at once; older kernels:
    // SIGKILL each listed process.
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        for pid in processes(path)? {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("removing cgroup {}", path.display()), e)),
        }
    }
}

/// The process ids in `cgroup.procs` of `cgroup`.
pub fn processes(cgroup: &Path) -> Result<Vec<i32>, Error> {
    let text = fs::read_to_string(cgroup.join("cgroup.procs")).map_err(|e| {
        Error::io(
            format!(
                "reading {}/cgroup.procs (is it a cgroup v2 directory?)",
                cgroup.display()
            ),
            e,
        )
    })?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Runs `f` on a thread that has entered the network namespace at `netns`
/// (e.g. `/proc/PID/ns/net`), so per-namespace sysctls are read there.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let file =
        fs::File::open(netns).map_err(|e| Error::io(format!("opening {}", netns.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd; only this thread moves
            // (DESIGN.md §5), and it ends with the scope.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io(
                    format!("entering {}", netns.display()),
                    io::Error::last_os_error(),
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| Error::State("the namespace thread panicked".into()))?
    })
}

/// The network namespace of the first process found in `cgroup` or its
/// descendants, or `None` when it has no process.
pub fn netns_of(cgroup: &Path) -> Result<Option<PathBuf>, Error> {
    if let Some(pid) = processes(cgroup)?.first() {
        return Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net"))));
    }
    if let Ok(entries) = fs::read_dir(cgroup) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(ns) = netns_of(&e.path())? {
                    return Ok(Some(ns));
                }
            }
        }
    }
    Ok(None)
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `root` exists on a bpf filesystem. When its parent is not on
/// one and is `/sys/fs/bpf`, mounts bpffs there first (as `bpftool` does);
/// any other non-bpffs location is an error naming the fix.
pub fn ensure_bpffs(root: &Path) -> Result<(), Error> {
    if is_bpffs(root) {
        return Ok(());
    }
    let parent = root.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent == Path::new("/sys/fs/bpf") {
            let src = CString::new("bpf").expect("literal");
            let target = CString::new("/sys/fs/bpf").expect("literal");
            // SAFETY: mount(2) with valid C strings.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(Error::io(
                    "mounting the bpf filesystem at /sys/fs/bpf",
                    io::Error::last_os_error(),
                ));
            }
        } else {
            return Err(Error::Missing(MissingList(vec![Missing::Feature(
                format!(
                    "{} is not on a bpf filesystem (mount -t bpf bpf {})",
                    parent.display(),
                    parent.display()
                ),
            )])));
        }
    }
    match fs::create_dir(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", root.display()), e)),
    }
}

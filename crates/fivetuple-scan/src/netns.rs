//! Running a scan inside another network namespace.
//!
//! Namespace membership is per thread (DESIGN §5), so [`run_in`] opens the
//! namespace file in the caller (so a bad name fails early), then spawns a
//! dedicated thread that calls `setns()` and does all the reading there:
//! the netlink socket, `/proc/sys` and `/proc/thread-self/net` all follow
//! that thread's namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::ScanError;

/// Which network namespace to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The calling thread's namespace.
    Current,
    /// A named namespace under `/run/netns` (as `ip netns add` creates).
    Named(String),
    /// The namespace of a process (or thread) id, via `/proc/PID/ns/net`.
    Pid(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Current => f.write_str("current"),
            Target::Named(n) => write!(f, "netns {n}"),
            Target::Pid(p) => write!(f, "pid {p}"),
        }
    }
}

/// Opens the namespace file of `target`; `None` for [`Target::Current`].
pub fn open(target: &Target) -> Result<Option<File>, ScanError> {
    match target {
        Target::Current => Ok(None),
        Target::Named(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(ScanError::NoSuchNetns {
                    name: name.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "not a namespace name"),
                });
            }
            File::open(PathBuf::from("/run/netns").join(name))
                .map(Some)
                .map_err(|source| ScanError::NoSuchNetns {
                    name: name.clone(),
                    source,
                })
        }
        Target::Pid(pid) => File::open(format!("/proc/{pid}/ns/net"))
            .map(Some)
            .map_err(|source| ScanError::NoSuchPid { pid: *pid, source }),
    }
}

/// Runs `f` in the network namespace of `target` and returns its result.
///
/// For [`Target::Current`] `f` runs on the calling thread. Otherwise it runs
/// on a new thread that has entered the namespace; the calling thread and
/// the rest of the process stay where they are.
pub fn run_in<T, F>(target: &Target, f: F) -> Result<T, ScanError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(file) = open(target)? else {
        return Ok(f());
    };
    let shown = target.to_string();
    let handle = std::thread::Builder::new()
        .name("fivetuple-netns".into())
        .spawn(move || {
            // SAFETY: `file` is an open namespace fd for the whole call; setns
            // only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(file);
            Ok(f())
        })
        .map_err(|e| ScanError::Thread(e.to_string()))?;
    match handle.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ScanError::Setns {
            target: shown,
            source,
        }),
        Err(_) => Err(ScanError::Thread("the namespace thread panicked".into())),
    }
}

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
            enter_file(&file)?;
            drop(file);
            Ok(f())
        })
        .map_err(ScanError::Spawn)?;
    match handle.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ScanError::Setns {
            target: shown,
            source,
        }),
        Err(_) => Err(ScanError::Thread("the namespace thread panicked".into())),
    }
}

/// Moves the calling thread into the network namespace of `file` (an
/// nsfs file from [`open`]) with `setns()`. Only this thread moves
/// (DESIGN §5): call it on a thread dedicated to reading.
pub fn enter_file(file: &File) -> io::Result<()> {
    // SAFETY: `file` is an open namespace fd for the whole call; setns
    // only changes the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Identity of a network namespace: the device and inode of its nsfs file
/// (what `ls -L -i /run/netns/NAME` and `readlink /proc/PID/ns/net` show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino` of the nsfs file, the number in `net:[...]`.
    pub ino: u64,
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

fn ns_id(file: &File) -> io::Result<NsId> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok(NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Start time of a process in clock ticks since boot: field 22 of
/// `/proc/PID/stat` (proc_pid_stat(5)). With the pid it names one process,
/// even after the pid is reused.
fn start_time(pid: u32) -> io::Result<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

fn parse_start_time(stat: &str) -> io::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in /proc/PID/stat"))?;
    // `after` starts at field 3 (state); field 22 is the 20th from there.
    after
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no start time in /proc/PID/stat",
            )
        })
}

fn process_gone(pid: u32, why: &str) -> ScanError {
    ScanError::NoSuchPid {
        pid,
        source: io::Error::new(io::ErrorKind::NotFound, why.to_string()),
    }
}

/// What [`Follower::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// The target still names the namespace the thread is in.
    Same,
    /// The target names another namespace now (`ip netns del X; ip netns add
    /// X`, or the process moved); the calling thread has entered it.
    Reentered {
        /// The namespace the thread was in.
        from: NsId,
        /// The namespace it is in now.
        to: NsId,
    },
}

/// Keeps the calling thread in the namespace a [`Target`] names, for a
/// long-running watcher such as the exporter.
///
/// A name under `/run/netns` can be deleted and created again, which makes a
/// new namespace behind the same name; a pid can exit, and its number can
/// later belong to another process. A thread that entered the namespace once
/// would go on reading the old one, which lives on as long as the thread is
/// in it. [`Follower::check`] compares the target's namespace with the
/// thread's before each read, re-enters when the name points elsewhere, and
/// errs when the target is gone.
///
/// [`Follower::enter`] moves the *calling* thread (DESIGN §5): call it on a
/// thread dedicated to reading.
#[derive(Debug)]
pub struct Follower {
    target: Target,
    id: Option<NsId>,
    /// For [`Target::Pid`]: the process's start time, so a reused pid is not taken for it.
    pid_start: Option<u64>,
}

impl Follower {
    /// Moves the calling thread into the namespace of `target` (nothing for
    /// [`Target::Current`]) and remembers which one it is.
    pub fn enter(target: &Target) -> Result<Follower, ScanError> {
        let pid_start = match target {
            Target::Pid(pid) => Some(
                start_time(*pid).map_err(|source| ScanError::NoSuchPid { pid: *pid, source })?,
            ),
            _ => None,
        };
        let mut f = Follower {
            target: target.clone(),
            id: None,
            pid_start,
        };
        if let Some(file) = open(target)? {
            f.id = Some(f.setns(&file)?);
        }
        Ok(f)
    }

    /// The target this follower watches.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The namespace the calling thread is in, `None` for [`Target::Current`].
    pub fn id(&self) -> Option<NsId> {
        self.id
    }

    fn setns(&self, file: &File) -> Result<NsId, ScanError> {
        let setns_err = |source| ScanError::Setns {
            target: self.target.to_string(),
            source,
        };
        let id = ns_id(file).map_err(setns_err)?;
        enter_file(file).map_err(setns_err)?;
        Ok(id)
    }

    /// Checks that the target still names the namespace the calling thread
    /// is in; re-enters it when the name points at another one.
    ///
    /// Errors when the target is gone: [`ScanError::NoSuchNetns`] for a
    /// deleted name, [`ScanError::NoSuchPid`] for a process that exited
    /// (also when its pid now belongs to another process). The thread then
    /// stays where it was; a later call that finds the target again enters it.
    pub fn check(&mut self) -> Result<Followed, ScanError> {
        if let (Target::Pid(pid), Some(started)) = (&self.target, self.pid_start) {
            match start_time(*pid) {
                Ok(now) if now == started => {}
                Ok(_) => {
                    return Err(process_gone(
                        *pid,
                        "the process exited and its pid now belongs to another process",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(process_gone(*pid, "the process has exited"))
                }
                Err(source) => return Err(ScanError::NoSuchPid { pid: *pid, source }),
            }
        }
        let Some(file) = open(&self.target)? else {
            return Ok(Followed::Same);
        };
        let now = ns_id(&file).map_err(|source| ScanError::Setns {
            target: self.target.to_string(),
            source,
        })?;
        match self.id {
            Some(id) if id == now => Ok(Followed::Same),
            old => {
                let to = self.setns(&file)?;
                self.id = Some(to);
                Ok(match old {
                    Some(from) => Followed::Reentered { from, to },
                    None => Followed::Same,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_past_a_command_with_parentheses() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(stat).unwrap(), 987654);
        assert!(parse_start_time("42 (x S 1").is_err());
        assert!(parse_start_time("42 (x) S 1 2").is_err());
    }

    #[test]
    fn start_time_is_stable_for_one_process_and_absent_for_none() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(t > 0);
        assert_eq!(start_time(me).unwrap(), t, "stable for one process");
        assert_eq!(
            start_time(u32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn following_the_current_namespace_never_moves() {
        let mut f = Follower::enter(&Target::Current).unwrap();
        assert_eq!(f.id(), None);
        assert_eq!(f.check().unwrap(), Followed::Same);
    }

    #[test]
    fn following_a_pid_that_is_gone_names_it() {
        let e = Follower::enter(&Target::Pid(u32::MAX)).unwrap_err();
        assert!(e.to_string().contains(&u32::MAX.to_string()), "{e}");
    }
}

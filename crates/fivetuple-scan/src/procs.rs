//! Which process owns which socket: socket inode → `/proc/PID/fd`.
//!
//! The kernel reports each socket's inode; `/proc/PID/fd/N` links read
//! `socket:[INODE]`. Reading other users' fd tables needs root (or
//! CAP_SYS_PTRACE); without it the attribution is partial and says so.
//! TIME_WAIT sockets have no file and so no owner.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;

/// Owners found for a set of inodes.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// inode → pids holding it (a socket can be shared after fork).
    pub by_inode: HashMap<u64, Vec<u32>>,
    /// pid → command name (`/proc/PID/comm`).
    pub comm: HashMap<u32, String>,
    /// Processes whose fd table could not be read (permission).
    pub denied: usize,
}

/// Extracts the inode from a `/proc/PID/fd` link target (`socket:[12345]`).
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Scans `/proc/*/fd` for the inodes in `wanted`. Never fails: processes
/// that vanish are skipped and unreadable ones are counted in `denied`.
pub fn find_owners(wanted: &HashSet<u64>) -> Owners {
    let mut owners = Owners::default();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                owners.denied += 1;
                continue;
            }
            Err(_) => continue,
        };
        let mut found = false;
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = link.to_str().and_then(parse_socket_link) {
                if wanted.contains(&inode) {
                    let pids = owners.by_inode.entry(inode).or_default();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                    found = true;
                }
            }
        }
        if found {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
            owners.comm.insert(pid, comm);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn finds_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Our own listener's inode, looked up the same way the scan does.
        let me = std::process::id();
        let mut inode = None;
        for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if let Some(i) = fs::read_link(fd.path())
                .ok()
                .and_then(|l| l.to_str().and_then(parse_socket_link))
            {
                inode = Some(i);
            }
        }
        let inode = inode.expect("the listener shows up as a socket fd");
        let owners = find_owners(&HashSet::from([inode]));
        assert!(owners.by_inode[&inode].contains(&me));
        assert!(!owners.comm[&me].is_empty());
        drop(l);
    }
}

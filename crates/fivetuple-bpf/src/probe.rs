//! What a host lacks for a BPF feature, in words an operator can act on:
//! privileges (root, or `CAP_BPF` plus `CAP_NET_ADMIN`), a cgroup v2 mount, a
//! bpf filesystem for pins, a kernel helper. Every feature checks here first
//! and refuses with the whole list rather than failing on the first syscall.

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

/// `CAP_NET_ADMIN` (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: before Linux 5.8 loading BPF needed it; it still implies `CAP_BPF`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF` (Linux 5.8+).
const CAP_BPF: u32 = 39;
/// `CAP_PERFMON` (Linux 5.8+): tracing programs need it besides `CAP_BPF`.
const CAP_PERFMON: u32 = 38;

/// One thing a BPF feature needs and this host (or process) does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// Neither root nor `CAP_BPF` (or `CAP_SYS_ADMIN`) in the effective set.
    CapBpf,
    /// Neither root nor `CAP_NET_ADMIN`: needed to attach to a cgroup.
    CapNetAdmin,
    /// No cgroup2 filesystem in `/proc/self/mountinfo`.
    CgroupV2,
    /// The kernel refused a helper the program calls (e.g. `bpf_bind`, Linux 4.17+).
    Helper(String),
    /// The kernel lacks a feature the request needs; the text says which.
    Feature(String),
    /// Neither root nor `CAP_PERFMON` (or `CAP_SYS_ADMIN`): needed for tracing programs.
    CapPerfmon,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::CapBpf => write!(f, "not root and no CAP_BPF (needed to load BPF programs)"),
            Missing::CapNetAdmin => {
                write!(f, "not root and no CAP_NET_ADMIN (needed to attach to a cgroup)")
            }
            Missing::CgroupV2 => write!(
                f,
                "no cgroup v2 mounted (no cgroup2 line in /proc/self/mountinfo; mount -t cgroup2 none /sys/fs/cgroup/unified)"
            ),
            Missing::Helper(h) => write!(f, "the kernel lacks the BPF helper {h}"),
            Missing::Feature(s) => write!(f, "{s}"),
            Missing::CapPerfmon => write!(
                f,
                "not root and no CAP_PERFMON (needed, with CAP_BPF, to load tracing programs)"
            ),
        }
    }
}

/// Everything missing at once, joined with "; ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingList(pub Vec<Missing>);

impl fmt::Display for MissingList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// The effective capability set of this process (`CapEff` in
/// `/proc/self/status`), as a bit mask.
pub fn effective_capabilities() -> io::Result<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status")?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no CapEff line in /proc/self/status",
        )
    })
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// What loading a program and attaching it to a cgroup lacks here, empty when
/// nothing: `CAP_BPF` (or `CAP_SYS_ADMIN`), `CAP_NET_ADMIN`, a cgroup v2 mount.
pub fn cgroup_attach_requirements() -> Vec<Missing> {
    let caps = effective_capabilities().unwrap_or(0);
    missing_for(caps, cgroup2_mount().ok().flatten().is_some())
}

fn missing_for(caps: u64, have_cgroup2: bool) -> Vec<Missing> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        missing.push(Missing::CapBpf);
    }
    if !has(CAP_NET_ADMIN) {
        missing.push(Missing::CapNetAdmin);
    }
    if !have_cgroup2 {
        missing.push(Missing::CgroupV2);
    }
    missing
}

/// What loading tracing programs (tracepoints) lacks with the capability
/// mask `caps`: `CAP_BPF` and `CAP_PERFMON`, each implied by `CAP_SYS_ADMIN`.
pub fn tracing_missing(caps: u64) -> Vec<Missing> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        missing.push(Missing::CapBpf);
    }
    if !(has(CAP_PERFMON) || has(CAP_SYS_ADMIN)) {
        missing.push(Missing::CapPerfmon);
    }
    missing
}

/// The helper a program load was refused for, from the verifier's log: the
/// kernel lacks it (`unknown func bpf_bind#64`, `check_helper_call`) or does
/// not offer it to this program type (`program of this type cannot use
/// helper bpf_bind#64`).
pub fn missing_helper(verifier_log: &str) -> Option<Missing> {
    verifier_log.lines().find_map(|l| {
        let (rest, why) = if let Some(r) = l.split("unknown func ").nth(1) {
            (r, "")
        } else {
            (
                l.split("cannot use helper ").nth(1)?,
                " for this program type",
            )
        };
        let name = rest.split(['#', ' ']).next().filter(|n| !n.is_empty())?;
        Some(Missing::Helper(format!("{name}{why}")))
    })
}

/// What a refused program load says is missing: the helper the verifier's
/// log names (an old kernel, or one that does not offer it to this program
/// type), or, when the kernel answered EPERM, the capabilities `on_eperm`.
/// `None` for any other failure.
pub(crate) fn load_refusal(
    e: &aya::programs::ProgramError,
    on_eperm: &[Missing],
) -> Option<MissingList> {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    else {
        return None;
    };
    if let Some(missing) = missing_helper(&verifier_log.to_string()) {
        return Some(MissingList(vec![missing]));
    }
    if io_error.raw_os_error() == Some(libc::EPERM) {
        return Some(MissingList(on_eperm.to_vec()));
    }
    None
}

/// Where the cgroup v2 (unified) hierarchy is mounted, from
/// `/proc/self/mountinfo`: `/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones. `None` when not mounted.
pub fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    Ok(mount_of_type(
        &fs::read_to_string("/proc/self/mountinfo")?,
        "cgroup2",
    ))
}

/// The first mount point of filesystem type `fstype` in a mountinfo text
/// (proc(5): fields, then ` - `, then the type).
pub fn mount_of_type(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let ty = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (ty == fstype).then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_host() {
        let mi = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  50 25 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            mount_of_type(mi, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of_type(mi, "bpf"), None);
        let spaced = "60 1 0:50 / /mnt/my\\040bpf rw - bpf bpf rw\n";
        assert_eq!(
            mount_of_type(spaced, "bpf"),
            Some(PathBuf::from("/mnt/my bpf"))
        );
    }

    #[test]
    fn names_the_helper_the_verifier_refused() {
        let log = "0: R1=ctx() R10=fp0\n; return bpf_bind(ctx, ...)\n12: (85) call bpf_bind#64\nunknown func bpf_bind#64\nprocessed 12 insns";
        assert_eq!(
            missing_helper(log),
            Some(Missing::Helper("bpf_bind".into()))
        );
        let log = "program of this type cannot use helper bpf_setsockopt#49";
        let m = missing_helper(log).unwrap();
        assert!(
            m.to_string()
                .contains("bpf_setsockopt for this program type"),
            "{m}"
        );
        assert_eq!(missing_helper("R1 invalid mem access 'scalar'"), None);
    }

    #[test]
    fn names_every_missing_capability() {
        let none = missing_for(0, false);
        assert_eq!(
            none,
            vec![Missing::CapBpf, Missing::CapNetAdmin, Missing::CgroupV2]
        );
        let text = MissingList(none).to_string();
        assert!(
            text.contains("CAP_BPF")
                && text.contains("CAP_NET_ADMIN")
                && text.contains("cgroup v2"),
            "{text}"
        );
        assert!(missing_for((1 << CAP_BPF) | (1 << CAP_NET_ADMIN), true).is_empty());
        assert!(missing_for((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN), true).is_empty());
        assert_eq!(
            tracing_missing(0),
            vec![Missing::CapBpf, Missing::CapPerfmon]
        );
        assert_eq!(tracing_missing(1 << CAP_BPF), vec![Missing::CapPerfmon]);
        assert!(tracing_missing((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert!(tracing_missing(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
    }
}

//! `fivetuple attach`, `detach` and `attached`: a port policy applied in the
//! kernel to a running service's cgroup (a systemd unit's, a container's, a
//! pod's), pinned on the bpf filesystem so it outlives the command.
//!
//! Exit codes: 0 done; 3 on a bad argument, on something missing on the host
//! (the message names it: root or CAP_BPF/CAP_NET_ADMIN, cgroup v2, a kernel
//! helper), when a policy is already attached (attach) or none is (detach).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use fivetuple_bpf::policy::{self, Only};
use fivetuple_bpf::{cgroup, probe, KernelPolicy};

use crate::EXIT_UNKNOWN;

/// Where policies are pinned unless `--pin-root` or `FIVETUPLE_BPF_PIN_ROOT` says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/fivetuple";

/// Where pins live (shared by attach, detach and attached).
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// Directory on a bpf filesystem for the pins (default /sys/fs/bpf/fivetuple, or $FIVETUPLE_BPF_PIN_ROOT).
    #[arg(long, value_name = "DIR")]
    pub pin_root: Option<PathBuf>,
}

impl PinArgs {
    fn root(&self) -> PathBuf {
        self.pin_root
            .clone()
            .or_else(|| std::env::var_os("FIVETUPLE_BPF_PIN_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT))
    }
}

/// The policy and its destination filter (shared by run and attach).
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Policy spec, as the library's: kernel, rotate[:LO-HI], spread:A-B, spread-rotate:A-B@LO-HI, window:LO-HI.
    #[arg(long, value_name = "SPEC")]
    pub policy: String,
    #[arg(
        long,
        value_name = "DEST",
        help = "Apply only to connects to DEST[/PREFIX][:PORT] (e.g. 127.0.0.1:8080, 10.0.0.0/8, [::1]:443)"
    )]
    pub only: Option<String>,
}

/// Arguments of `fivetuple attach`.
#[derive(Debug, Parser)]
pub struct AttachArgs {
    /// The cgroup v2 directory: absolute, or relative to the cgroup2 mount (e.g. system.slice/nginx.service).
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// Arguments of `fivetuple detach`.
#[derive(Debug, Parser)]
pub struct DetachArgs {
    /// The cgroup v2 directory the policy was attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// Arguments of `fivetuple attached`.
#[derive(Debug, Parser)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// Resolves `--cgroup`: an existing absolute path as is, anything else
/// relative to the cgroup2 mount found in /proc/self/mountinfo.
pub fn resolve_cgroup(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() && path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mount = probe::cgroup2_mount()
        .context("reading /proc/self/mountinfo")?
        .ok_or_else(|| anyhow::anyhow!("{}", probe::Missing::CgroupV2))?;
    let joined = mount.join(path.strip_prefix("/").unwrap_or(path));
    anyhow::ensure!(
        joined.is_dir(),
        "cgroup {} not found (looked at {} under the cgroup2 mount {})",
        path.display(),
        joined.display(),
        mount.display()
    );
    Ok(joined)
}

/// Parses the spec and `--only`, and refuses `window` where the kernel does
/// not let the hook set `IP_LOCAL_PORT_RANGE`. `netns` is where bare
/// `rotate` reads its range and rotation its reserved ports.
pub fn prepare(
    args: &PolicyArgs,
    netns: Option<&Path>,
) -> Result<(KernelPolicy, Option<Only>), fivetuple_bpf::Error> {
    let spec = args.policy.as_str();
    let only = args.only.as_deref().map(str::parse::<Only>).transpose()?;
    let policy = match netns {
        Some(ns) => cgroup::in_netns(ns, || KernelPolicy::parse(spec))??,
        None => KernelPolicy::parse(spec)?,
    };
    if matches!(policy.rule(), fivetuple_bpf::Rule::Window { .. }) {
        let missing = probe::cgroup_attach_requirements();
        if !missing.is_empty() {
            return Err(fivetuple_bpf::Error::Missing(probe::MissingList(missing)));
        }
        if let Err(errno) = policy::window_allowed(&cgroup::own_cgroup()?)? {
            return Err(fivetuple_bpf::Error::Missing(probe::MissingList(vec![probe::Missing::Feature(format!(
                "this kernel refuses bpf_setsockopt(IP_LOCAL_PORT_RANGE) from a cgroup connect hook ({}), so {spec} cannot be applied in the kernel; use rotate:LO-HI over the same ports",
                std::io::Error::from_raw_os_error(errno)
            ))])));
        }
    }
    Ok((policy, only))
}

/// Prints a library error with its cause chain as `fivetuple: CMD: ...`
/// and maps it to exit 3.
pub fn refuse(cmd: &str, e: &fivetuple_bpf::Error) -> u8 {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("fivetuple: {cmd}: {text}");
    EXIT_UNKNOWN
}

/// Runs `fivetuple attach`.
pub fn attach(args: AttachArgs, out: &mut impl Write) -> Result<u8> {
    let cgroup = resolve_cgroup(&args.cgroup)?;
    let netns = cgroup::netns_of(&cgroup).ok().flatten();
    let (policy, only) = match prepare(&args.policy, netns.as_deref()) {
        Ok(p) => p,
        Err(e) => return Ok(refuse("attach", &e)),
    };
    let root = args.pins.root();
    match policy::attach_pinned(&root, &cgroup, &policy, only.as_ref()) {
        Ok(dir) => {
            writeln!(
                out,
                "attached {policy} to {} (pinned at {})",
                cgroup.display(),
                dir.display()
            )?;
            Ok(0)
        }
        Err(e) => Ok(refuse("attach", &e)),
    }
}

/// Runs `fivetuple detach`.
pub fn detach(args: DetachArgs, out: &mut impl Write) -> Result<u8> {
    // A removed cgroup is still detached by the path its pins recorded.
    let cgroup = resolve_cgroup(&args.cgroup).or_else(|e| match probe::cgroup2_mount() {
        Ok(Some(mount)) if !args.cgroup.is_absolute() => Ok(mount.join(&args.cgroup)),
        _ if args.cgroup.is_absolute() => Ok(args.cgroup.clone()),
        _ => Err(e),
    })?;
    match policy::detach_pinned(&args.pins.root(), &cgroup) {
        Ok(dir) => {
            writeln!(
                out,
                "detached from {} (removed {})",
                cgroup.display(),
                dir.display()
            )?;
            Ok(0)
        }
        Err(e) => Ok(refuse("detach", &e)),
    }
}

/// Runs `fivetuple attached`.
pub fn list(args: ListArgs, out: &mut impl Write) -> Result<u8> {
    let pinned = match policy::list(&args.pins.root()) {
        Ok(p) => p,
        Err(e) => return Ok(refuse("attached", &e)),
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &pinned)?;
        writeln!(out)?;
        return Ok(0);
    }
    if pinned.is_empty() {
        writeln!(
            out,
            "no fivetuple policy attached under {}",
            args.pins.root().display()
        )?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<40} {:<28} {:<18} {:>10} {:>10} {:>11}",
        "CGROUP", "POLICY", "ONLY", "CONNECTS", "BINDS", "BIND_ERRORS"
    )?;
    for p in &pinned {
        writeln!(
            out,
            "{:<40} {:<28} {:<18} {:>10} {:>10} {:>11}",
            p.cgroup.display(),
            p.spec,
            p.only.as_deref().unwrap_or("-"),
            p.stats.connects,
            p.stats.binds,
            p.stats.bind_errors
        )?;
    }
    Ok(0)
}

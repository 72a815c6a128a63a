//! `fivetuple run --policy SPEC [--only DEST] [--stats] -- CMD [ARGS...]`:
//! runs CMD in a transient cgroup v2 with the policy's connect hook
//! attached, so CMD and its children get the policy whatever their language.
//! Signals (INT, TERM, HUP, QUIT, USR1, USR2) sent to fivetuple are forwarded
//! to CMD; those the terminal sends (Ctrl-C) reach CMD directly, as it stays
//! in the foreground process group, and are not sent twice. On every
//! way out (CMD exits, is killed, fivetuple is interrupted or panics) the
//! programs are detached and the cgroup is emptied and removed.
//!
//! Exit codes: CMD's status (128+N when a signal N ended it); 127 when CMD
//! cannot be found, 126 when it cannot be run; 3 on a bad argument or when
//! something is missing on the host (the message names it).

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use clap::Parser;
use fivetuple_bpf::cgroup::{self, Transient};
use fivetuple_bpf::policy;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;
use std::os::fd::AsRawFd;

use crate::attach::{prepare, refuse, PolicyArgs};

/// Arguments of `fivetuple run`.
#[derive(Debug, Parser)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print the policy's counters to stderr when CMD exits.
    #[arg(long)]
    pub stats: bool,
    /// Create the transient cgroup under this cgroup v2 directory (default: fivetuple's own cgroup).
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Runs `fivetuple run`; returns CMD's exit code.
pub fn run(args: Args, _out: &mut impl Write) -> Result<u8> {
    let (policy, only) = match prepare(&args.policy, None) {
        Ok(p) => p,
        Err(e) => return Ok(refuse("run", &e)),
    };
    // Handlers first, so a signal between here and the spawn is not lost: it
    // is forwarded once the child exists, or ends the run before it starts.
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED)?;
    let mut loaded = match policy::load(&policy, only.as_ref()) {
        Ok(l) => l,
        Err(e) => return Ok(refuse("run", &e)),
    };
    let parent = match &args.cgroup_parent {
        Some(p) => crate::attach::resolve_cgroup(p)?,
        None => match cgroup::own_cgroup() {
            Ok(p) => p,
            Err(e) => return Ok(refuse("run", &e)),
        },
    };
    // Dropped in reverse order: the programs detach, then the cgroup goes.
    let group = match Transient::create(&parent, "run") {
        Ok(g) => g,
        Err(e) => return Ok(refuse("run", &e)),
    };
    if let Err(e) = loaded.attach(group.path()) {
        return Ok(refuse("run", &e));
    }
    let procs = group.procs_file().map_err(anyhow::Error::from)?;
    let procs_fd = procs.as_raw_fd();
    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // SAFETY: the closure only calls write(2) on an fd that stays open until
    // after the spawn, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if cgroup::join_in_child(procs_fd) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fivetuple: run: cannot run {:?}: {e}", args.command[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    drop(procs);
    let pid = child.id() as i32;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for origin in signals.forever() {
            // A signal the kernel sent (Ctrl-C, Ctrl-\, a hangup) went to the
            // terminal's whole foreground process group, CMD included:
            // forwarding it would deliver it twice.
            if origin.cause == Cause::Kernel {
                continue;
            }
            // SAFETY: kill(2) on our own child's pid, which stays reserved
            // (unreaped) until the main thread's wait returns.
            unsafe { libc::kill(pid, origin.signal) };
        }
    });
    let status = child.wait()?;
    handle.close();
    let _ = forwarder.join();
    if args.stats {
        match loaded.stats() {
            Ok(s) => eprintln!("fivetuple: run: policy {policy}: {s}"),
            Err(e) => eprintln!("fivetuple: run: cannot read the counters: {e}"),
        }
    }
    drop(loaded);
    if let Err(e) = group.remove() {
        eprintln!("fivetuple: run: {e}");
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    })
}

//! The `attach` remedy's kernel side: `fivetuple run`'s mechanism around the
//! naive client. The policy program (`rotate` over the box's range, only for
//! connects to upstream B) is attached to a transient cgroup and the whole
//! process moves into it for the remedy's run (cgroup v2 moves every thread;
//! the `--only` filter leaves the driver's connects alone). Dropping the hook
//! moves the process back, detaches the programs and removes the cgroup.

use std::net::SocketAddr;
use std::path::PathBuf;

use fivetuple_bpf::cgroup::{own_cgroup, Transient};
use fivetuple_bpf::policy::{self, Loaded};
use fivetuple_bpf::{KernelPolicy, Only};

use crate::config::Remedy;
use crate::error::LabError;

pub(crate) struct KernelHook {
    home: PathBuf,
    loaded: Option<Loaded>,
    group: Option<Transient>,
}

fn lab_error(e: fivetuple_bpf::Error) -> LabError {
    let mut text = format!("remedy attach: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    LabError::Run(text)
}

fn move_to(cgroup: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

impl KernelHook {
    /// For [`Remedy::Attach`], loads and attaches the hook (called in the
    /// box's client namespace, whose reserved ports rotation skips); `None`
    /// for every other remedy.
    pub(crate) fn for_remedy(
        remedy: Remedy,
        range: [u16; 2],
        upstream: SocketAddr,
    ) -> Result<Option<KernelHook>, LabError> {
        if remedy != Remedy::Attach {
            return Ok(None);
        }
        let policy =
            KernelPolicy::parse(&format!("rotate:{}-{}", range[0], range[1])).map_err(lab_error)?;
        let only = Only {
            net: upstream.ip(),
            prefix: if upstream.is_ipv4() { 32 } else { 128 },
            port: Some(upstream.port()),
        };
        let mut loaded = policy::load(&policy, Some(&only)).map_err(lab_error)?;
        let home = own_cgroup().map_err(lab_error)?;
        let group = Transient::create(&home, "repro").map_err(lab_error)?;
        loaded.attach(group.path()).map_err(lab_error)?;
        move_to(group.path()).map_err(|e| {
            LabError::Run(format!(
                "remedy attach: moving into {}: {e}",
                group.path().display()
            ))
        })?;
        Ok(Some(KernelHook {
            home,
            loaded: Some(loaded),
            group: Some(group),
        }))
    }
}

impl Drop for KernelHook {
    fn drop(&mut self) {
        if let Err(e) = move_to(&self.home) {
            // Removing the cgroup would kill this process: leave it.
            tracing::warn!(error = %e, "remedy attach: cannot move back to {}", self.home.display());
            drop(self.loaded.take());
            std::mem::forget(self.group.take());
            return;
        }
        drop(self.loaded.take());
        if let Some(group) = self.group.take() {
            if let Err(e) = group.remove() {
                tracing::warn!(error = %e, "remedy attach: cannot remove the transient cgroup");
            }
        }
    }
}

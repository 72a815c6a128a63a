//! The `fivetuple` binary: argument parsing, output and exit codes. The work
//! lives in the library crates; each subcommand is one module here.
//!
//! Exit codes: `doctor` follows the monitoring-plugin convention (0 ok,
//! 1 warning, 2 critical, 3 unknown). Bad arguments and errors exit 3.
//! `repro` exits 0 when the experiment ran, 2 on bad arguments, 3 on other
//! errors, and 130/143 after Ctrl-C/SIGTERM (finished rows printed first).
//! `exporter` and `trace` exit 0 on SIGINT/SIGTERM. `top` exits 0 on q and 2 when
//! stdout is not a terminal.
//! A broken pipe (e.g. `fivetuple doctor | head`) exits quietly.
//!
//! What this crate owns: arguments, output formats (text, `--json`,
//! metrics, the terminal view) and exit codes. It computes no kernel fact or
//! budget itself: those come from `fivetuple-kernel` through
//! `fivetuple-scan`, the lab and the BPF crate (docs/architecture.md).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attach;
mod completions;
mod doctor;
mod doctor_bpf;
mod exporter;
#[cfg(test)]
mod golden;
mod nat_report;
mod repro;
mod run;
mod table_args;
mod top;
mod trace;

/// Exit code for bad arguments and errors ("unknown" in the monitoring-plugin convention).
pub const EXIT_UNKNOWN: u8 = 3;

/// Keeps services from running out of TCP source ports.
#[derive(Debug, Parser)]
#[command(name = "fivetuple", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Diagnose this host (or a namespace): per-destination port headroom, time to exhaustion, owners, advice.
    Doctor(doctor::Args),
    /// Reproduce source-port exhaustion in a throwaway network namespace and run each remedy side by side.
    Repro(repro::Args),
    /// Serve Prometheus metrics on per-destination port headroom (docs/exporter.md).
    Exporter(exporter::Args),
    /// Live terminal view of per-destination port headroom, refreshed every second.
    Top(top::Args),
    /// Run a command with a port policy applied in the kernel to it and its children (cgroup connect hook).
    Run(run::Args),
    /// Apply a port policy in the kernel to a running service's cgroup, pinned until detach.
    Attach(attach::AttachArgs),
    /// Remove the policy attached to a cgroup.
    Detach(attach::DetachArgs),
    /// List the attached policies with their counters.
    Attached(attach::ListArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the man page (roff).
    Man,
    /// Live stream of connects that fail for lack of a source port, with who made them (BPF).
    Trace(trace::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(if repro::invoked() {
                    repro::EXIT_USAGE
                } else {
                    EXIT_UNKNOWN
                })
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let stdout = io::stdout();
    let mut out = Stdout(stdout.lock());
    let result = match cli.command {
        Command::Doctor(args) => doctor::run(args, &mut out),
        Command::Repro(args) => repro::run(args, &mut out),
        Command::Exporter(args) => exporter::run(args, &mut out),
        Command::Top(args) => top::run(args),
        Command::Run(args) => run::run(args, &mut out),
        Command::Attach(args) => attach::attach(args, &mut out),
        Command::Detach(args) => attach::detach(args, &mut out),
        Command::Attached(args) => attach::list(args, &mut out),
        Command::Completions(args) => completions::completions(args, &mut out),
        Command::Man => completions::man(&mut out),
        Command::Trace(args) => trace::run(args, &mut out),
    };
    let result = result.and_then(|code| out.flush().map(|()| code).map_err(Into::into));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fivetuple: {err:#}");
            ExitCode::from(EXIT_UNKNOWN)
        }
    }
}

/// Stdout whose write errors say they are about stdout (`> /dev/full`
/// gives "cannot write to stdout: No space left on device"). The error kind
/// is kept, so a broken pipe still exits quietly.
struct Stdout<W>(W);

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(stdout_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(stdout_error)
    }
}

fn stdout_error(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot write to stdout: {e}"))
}

/// An error and its sources, `: `-separated, as `{:#}` prints an `anyhow`
/// chain; for errors that are reported but not returned.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        let kind = c
            .downcast_ref::<io::Error>()
            .map(io::Error::kind)
            // serde_json wraps the write error in its own type.
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(|e| e.io_error_kind())
            });
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

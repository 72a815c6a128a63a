//! The `fivetuple` binary: argument parsing, output and exit codes. The work
//! lives in the library crates; each subcommand is one module here.
//!
//! Exit codes: `doctor` follows the monitoring-plugin convention (0 ok,
//! 1 warning, 2 critical, 3 unknown). Bad arguments and errors exit 3.
//! `repro` exits 0 when the experiment ran and 2 on bad arguments.
//! `exporter` exits 0 on SIGINT/SIGTERM. `top` exits 0 on q and 2 when
//! stdout is not a terminal.
//! A broken pipe (e.g. `fivetuple doctor | head`) exits quietly.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod completions;
mod doctor;
mod exporter;
mod repro;
mod table_args;
mod top;

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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the man page (roff).
    Man,
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
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Doctor(args) => doctor::run(args, &mut out),
        Command::Repro(args) => repro::run(args, &mut out),
        Command::Exporter(args) => exporter::run(args, &mut out),
        Command::Top(args) => top::run(args),
        Command::Completions(args) => completions::completions(args, &mut out),
        Command::Man => completions::man(&mut out),
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

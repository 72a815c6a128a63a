//! `fivetuple completions SHELL` and `fivetuple man`: a shell completion
//! script and the man page, generated from the same clap definition the
//! binary parses with, so they never drift from the real arguments.

use std::io::Write;

use clap::CommandFactory;

/// Arguments of `fivetuple completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to write a completion script for (to stdout), e.g.
    /// `fivetuple completions bash > /etc/bash_completion.d/fivetuple`.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell`.
pub fn completions(args: Args, out: &mut impl Write) -> anyhow::Result<u8> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "fivetuple", out);
    Ok(0)
}

/// Writes the man page (roff), e.g. `fivetuple man > fivetuple.1`.
pub fn man(out: &mut impl Write) -> anyhow::Result<u8> {
    clap_mangen::Man::new(crate::Cli::command()).render(out)?;
    Ok(0)
}

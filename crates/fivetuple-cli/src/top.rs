//! placeholder
use anyhow::Result;
/// Raw `top` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Runs top.
pub fn run(_args: Args) -> Result<u8> { Ok(0) }

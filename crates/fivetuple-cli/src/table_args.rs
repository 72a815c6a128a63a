//! The arguments `doctor`, `exporter` and `top` share: which network
//! namespace's socket table to read, and with which reader.

use fivetuple_scan::netns::Target;
use fivetuple_scan::Reader;

/// Raw namespace and reader arguments, as typed; flattened into each
/// subcommand that reads a socket table.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// Read the named network namespace under /run/netns.
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub netns: Option<String>,
    /// Read the network namespace of this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Where to read the socket table: netlink with /proc fallback (auto), netlink or proc.
    #[arg(long, value_name = "SOURCE", default_value = "auto", value_parser = ["auto", "netlink", "proc"])]
    pub source: String,
}

impl TableArgs {
    /// The namespace to read: `--netns`, else `--pid`, else the current one.
    pub fn target(&self) -> Target {
        match (&self.netns, self.pid) {
            (Some(name), _) => Target::Named(name.clone()),
            (None, Some(pid)) => Target::Pid(pid),
            (None, None) => Target::Current,
        }
    }

    /// The reader `--source` names (clap has already rejected other values).
    pub fn reader(&self) -> Reader {
        match self.source.as_str() {
            "netlink" => Reader::Netlink,
            "proc" => Reader::Proc,
            _ => Reader::Auto,
        }
    }
}

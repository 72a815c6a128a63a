//! The kernel facts fivetuple relies on, each in one place.
//!
//! The library (`fivetuple`), the host scan (`fivetuple-scan`) and the
//! reproduction (`fivetuple-lab`) all need the same few facts about Linux:
//! what `net.ipv4.ip_local_port_range` and `ip_local_reserved_ports` look
//! like, which TCP sysctls are per network namespace, how long TIME_WAIT
//! lasts, when `tcp_tw_reuse` applies, and the arithmetic that turns them
//! into a source-port budget. They used to be parsed and computed three
//! times, and the copies had drifted (one accepted `"80,,90"`, the other
//! rejected it). This crate is the one home; the others call it.
//!
//! What it owns:
//! - types: [`PortRange`], [`ReservedPorts`], [`NetnsSettings`];
//! - pure parsers over the text the kernel writes ([`parse_port_range`],
//!   [`ReservedPorts::parse`], [`parse_sockstat_tw`], [`parse_keyed_table`]),
//!   tested on fixtures, each with one documented behaviour for odd input;
//! - reading those sysctls in the calling thread's namespace
//!   ([`sysctl`], [`read_settings_from`]; Linux only, elsewhere the readers
//!   return [`std::io::ErrorKind::Unsupported`]);
//! - the budget arithmetic ([`budget`]): TIME_WAIT length, usable ports,
//!   when `tcp_tw_reuse` applies, the sustainable and reuse-aware rates,
//!   time to exhaustion.
//!
//! What it may not touch: sockets, the socket table, processes, advice
//! prose or output formats. It has no dependency on the other fivetuple
//! crates (they depend on it), builds on every OS the library builds on,
//! and needs no privilege. docs/architecture.md says why it is a crate of
//! its own rather than a module of the library.
#![deny(missing_docs)]

pub mod budget;
mod counters;
mod ports;
mod settings;
pub mod sysctl;

pub use counters::{parse_keyed_table, parse_sockstat_tw};
pub use ports::{parse_port_range, PortRange, PortRangeError, ReservedPorts, ReservedPortsError};
pub use settings::{read_settings_from, NetnsSettings, SettingsError};

//! The fivetuple reproduction: "service A calls service B on the same box",
//! built in a throwaway network namespace, driven into source-port
//! exhaustion, then run again with each remedy, side by side.
//!
//! [`netns`] builds the boxes, [`nat`] the node, pods and NAT rule of
//! `--topology nat`, [`services`] holds upstream B and frontend A,
//! [`driver`] is the open-loop load, [`scenario::run`] ties them together
//! into a [`Report`], and [`chart`] draws it. The `fivetuple repro` command
//! is a thin layer over [`scenario::run`].
//!
//! What this crate owns: its throwaway namespaces and everything inside
//! them. It changes no setting of the host's namespace, takes its budget
//! arithmetic (TIME_WAIT length, when `tcp_tw_reuse` applies, sustainable
//! rate) and sysctl access from `fivetuple-kernel`, and connects through the
//! `fivetuple` library like any client.
#![deny(missing_docs)]

pub mod chart;
pub mod config;
pub mod driver;
mod error;
mod hook;
pub mod nat;
pub mod netns;
pub mod report;
pub mod scenario;
pub mod services;

pub use config::{parse_duration, parse_remedies, Config, Remedy, Topology};
pub use error::LabError;
pub use netns::{prepare, Privilege};
pub use report::{Interruption, RemedyResult, Report, Verdict};
pub use scenario::{run, run_until, Observer, Quiet};

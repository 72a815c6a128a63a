//! Shared by the CLI's integration tests: the binary's path, and the
//! namespace, root and tool helpers of `fivetuple-testkit`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub use fivetuple_testkit::{connect_from, have_tool, make_time_wait, root_or_skip as have_root};

/// The `fivetuple` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");

/// Runs `f` on a thread in a fresh network namespace with `lo` up. Children
/// spawned from that thread (the binary, `ss`) inherit the namespace, which
/// disappears when the thread ends. Callers check [`have_root`] first.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    fivetuple_testkit::in_fresh_netns(&[], f)
}

/// Writes `net.ipv4.NAME` in the calling thread's namespace.
pub fn sysctl(name: &str, value: &str) {
    fivetuple_testkit::set_sysctl(name, value)
}

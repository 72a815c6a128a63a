//! Raw socket options socket2 does not offer, one file per OS. Each file
//! exposes the same `pub(crate) fn` names; an OS without an option returns
//! [`std::io::ErrorKind::Unsupported`] rather than panicking.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use linux::*;

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
mod unix;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

use std::io;

/// The error for an option this OS does not have.
#[allow(dead_code)] // not every OS file needs it
pub(crate) fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not supported on this operating system"),
    )
}

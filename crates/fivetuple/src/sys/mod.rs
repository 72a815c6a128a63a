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

/// The symbolic errno name of an OS error, for the errors a connect can meet.
#[cfg(unix)]
pub(crate) fn errno_name(err: &io::Error) -> Option<&'static str> {
    Some(match err.raw_os_error()? {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EAGAIN => "EAGAIN",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        _ => return None,
    })
}

/// Whether `err` can only have come from `socket()`, not from `connect()`:
/// the plain path ([`Connector::connect_std`](crate::Connector::connect_std)
/// with the kernel default) calls std's `TcpStream::connect`, which makes
/// both calls and returns either's error. `ENOBUFS`/`ENOMEM`/`EACCES`, which
/// both calls can return, count as `connect()`'s.
#[cfg(unix)]
pub(crate) fn is_socket_errno(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
    )
}

/// The plain path is unix-only (`Connector::refresh_plain`).
#[cfg(not(unix))]
pub(crate) fn is_socket_errno(_err: &io::Error) -> bool {
    false
}

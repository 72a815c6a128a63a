//! Windows: explicit binds share ports with `SO_REUSE_UNICASTPORT`; there is
//! no `IP_BIND_ADDRESS_NO_PORT` nor per-socket range.

use std::io;
use std::os::windows::io::AsRawSocket;

use socket2::Socket;
use windows_sys::Win32::Networking::WinSock;

use super::unsupported;

/// `IP_BIND_ADDRESS_NO_PORT` is Linux-only.
pub(crate) fn set_bind_address_no_port(_socket: &Socket) -> io::Result<()> {
    Err(unsupported("IP_BIND_ADDRESS_NO_PORT"))
}

/// `IP_LOCAL_PORT_RANGE` is Linux-only.
pub(crate) fn set_local_port_range(_socket: &Socket, _lo: u16, _hi: u16) -> io::Result<()> {
    Err(unsupported("IP_LOCAL_PORT_RANGE"))
}

/// Sets `SO_REUSE_UNICASTPORT` (Windows 10 / Server 2016+), the Windows way
/// for an explicitly bound outbound socket to share its port across
/// destinations. `SO_REUSEADDR` is deliberately not used: on Windows it lets
/// a socket steal a port another socket is bound to.
pub(crate) fn set_reuse_for_explicit_bind(socket: &Socket) -> io::Result<()> {
    let value: u32 = 1;
    // SAFETY: the SOCKET is live for the call (owned by `socket`) and the
    // pointer/length pair describes a u32 on our stack.
    let rc = unsafe {
        WinSock::setsockopt(
            socket.as_raw_socket() as WinSock::SOCKET,
            WinSock::SOL_SOCKET,
            WinSock::SO_REUSE_UNICASTPORT,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as i32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Never supported here.
pub(crate) fn local_port_range_supported() -> bool {
    false
}

/// Windows' default dynamic range (49152-65535); `netsh int ipv4 show
/// dynamicport tcp` shows the configured one, which is not read here.
pub(crate) fn read_local_port_range() -> io::Result<(u16, u16)> {
    Ok((49152, 65535))
}

/// The symbolic name of a Winsock error.
pub(crate) fn errno_name(err: &io::Error) -> Option<&'static str> {
    Some(match err.raw_os_error()? {
        x if x == WinSock::WSAEADDRNOTAVAIL => "WSAEADDRNOTAVAIL",
        x if x == WinSock::WSAEADDRINUSE => "WSAEADDRINUSE",
        x if x == WinSock::WSAECONNREFUSED => "WSAECONNREFUSED",
        x if x == WinSock::WSAECONNRESET => "WSAECONNRESET",
        x if x == WinSock::WSAETIMEDOUT => "WSAETIMEDOUT",
        x if x == WinSock::WSAENETUNREACH => "WSAENETUNREACH",
        x if x == WinSock::WSAEHOSTUNREACH => "WSAEHOSTUNREACH",
        x if x == WinSock::WSAENOBUFS => "WSAENOBUFS",
        x if x == WinSock::WSAEACCES => "WSAEACCES",
        _ => return None,
    })
}

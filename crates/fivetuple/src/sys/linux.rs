//! Linux: `IP_BIND_ADDRESS_NO_PORT`, `IP_LOCAL_PORT_RANGE`, the per-namespace
//! port sysctls and errno names.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use socket2::{Domain, Socket, Type};

/// `IP_LOCAL_PORT_RANGE` from `include/uapi/linux/in.h` (Linux 6.3,
/// commit 91d0b78c5177). Not yet exported by the libc crate.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

fn setsockopt_u32(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    // SAFETY: the fd is a live socket owned by `socket` for the whole call, and
    // the pointer/length pair describes a u32 on our stack.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Rewrites ENOPROTOOPT (the kernel does not know the option) as `Unsupported`.
fn enoprotoopt_is_unsupported(err: io::Error, what: &str) -> io::Error {
    if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{what} is not supported by this kernel (setsockopt returned ENOPROTOOPT)"),
        )
    } else {
        err
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+), so `bind(ip, 0)` defers the
/// port to `connect()`, which shares it across destinations. Works on IPv6
/// sockets too: `ipv6_setsockopt` hands `SOL_IP` options to `ip_setsockopt`.
pub(crate) fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    setsockopt_u32(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
        .map_err(|e| enoprotoopt_is_unsupported(e, "IP_BIND_ADDRESS_NO_PORT"))
}

/// Sets `IP_LOCAL_PORT_RANGE` (Linux 6.3+): `connect()` picks the port inside
/// `lo..=hi` only. The value is `hi << 16 | lo`; the kernel clamps it to the
/// namespace's `ip_local_port_range` (`inet_sk_get_local_port_range`).
pub(crate) fn set_local_port_range(socket: &Socket, lo: u16, hi: u16) -> io::Result<()> {
    let value = (u32::from(hi) << 16) | u32::from(lo);
    setsockopt_u32(socket, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, value)
        .map_err(|e| enoprotoopt_is_unsupported(e, "IP_LOCAL_PORT_RANGE"))
}

/// Lets an explicitly bound port be shared with other outbound sockets:
/// `SO_REUSEADDR`. `connect()` still enforces 4-tuple uniqueness.
pub(crate) fn set_reuse_for_explicit_bind(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// Whether this kernel accepts `IP_LOCAL_PORT_RANGE`, probed once on a
/// throwaway socket.
pub(crate) fn local_port_range_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| match Socket::new(Domain::IPV4, Type::STREAM, None) {
        Ok(s) => set_local_port_range(&s, 1024, 65535).is_ok(),
        Err(_) => false,
    })
}

/// `net.ipv4.ip_local_port_range` of the calling thread's namespace, read
/// and parsed by `fivetuple-kernel`.
pub(crate) fn read_local_port_range() -> io::Result<(u16, u16)> {
    fivetuple_kernel::sysctl::local_port_range().map(|r| r.bounds())
}

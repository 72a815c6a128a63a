//! Unix other than Linux (macOS, the BSDs): no `IP_BIND_ADDRESS_NO_PORT` and
//! no per-socket port range; the port range comes from
//! `net.inet.ip.portrange.first` / `.last` on macOS.

use std::io;

use socket2::Socket;

use super::unsupported;

/// `IP_BIND_ADDRESS_NO_PORT` is Linux-only.
pub(crate) fn set_bind_address_no_port(_socket: &Socket) -> io::Result<()> {
    Err(unsupported("IP_BIND_ADDRESS_NO_PORT"))
}

/// `IP_LOCAL_PORT_RANGE` is Linux-only.
pub(crate) fn set_local_port_range(_socket: &Socket, _lo: u16, _hi: u16) -> io::Result<()> {
    Err(unsupported("IP_LOCAL_PORT_RANGE"))
}

/// `SO_REUSEADDR`, as on Linux.
pub(crate) fn set_reuse_for_explicit_bind(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// Never supported here.
pub(crate) fn local_port_range_supported() -> bool {
    false
}

#[cfg(target_vendor = "apple")]
fn sysctl_int(name: &std::ffi::CStr) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>();
    // SAFETY: `name` is NUL-terminated; `value`/`len` describe a c_int on our
    // stack; no new value is written (null, 0).
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `net.inet.ip.portrange.first` / `.last` on macOS; IANA's 49152-65535 on
/// other systems.
pub(crate) fn read_local_port_range() -> io::Result<(u16, u16)> {
    #[cfg(target_vendor = "apple")]
    {
        let first = sysctl_int(c"net.inet.ip.portrange.first")?;
        let last = sysctl_int(c"net.inet.ip.portrange.last")?;
        let conv = |v: i32| {
            u16::try_from(v).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("port range end {v} out of 0-65535"),
                )
            })
        };
        Ok((conv(first)?, conv(last)?))
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        Ok((49152, 65535))
    }
}

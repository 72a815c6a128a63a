//! `net.ipv4.ip_local_reserved_ports`: ports the kernel never picks on its own
//! and that rotation must skip too. The type and its parser live in
//! `fivetuple-kernel`, the one home of the kernel's facts.

pub use fivetuple_kernel::{ReservedPorts, ReservedPortsError};

//! fivetuple's BPF programs and their loader. Today: the cgroup connect hook
//! ([`policy`]) that applies the library's port policies in the kernel, for
//! programs in any language, without changing them. The crate is laid out for
//! several programs: each BPF program is one `src/bpf/NAME.bpf.c`, compiled by
//! `build.rs` with clang into `$OUT_DIR/NAME.bpf.o` and embedded here
//! ([`objects`]); each feature is one module that loads its object; [`probe`]
//! says what a host lacks (privileges, cgroup v2, bpffs, kernel helpers) in
//! words an operator can act on; [`cgroup`] holds the cgroup v2 and bpffs
//! plumbing (the cgroup2 mount from `/proc/self/mountinfo`, transient cgroups
//! removed on every path, entering a cgroup's network namespace).
//!
//! To add a program: write `src/bpf/NAME.bpf.c` (include `"vmlinux.h"` for
//! CO-RE access to kernel structs; `build.rs` generates it), add its constant
//! to [`objects`], and a module that loads it and maps
//! [`probe::missing_helper`] and `EPERM` to [`probe::Missing`].
//!
//! # Why aya (and not libbpf-rs)
//!
//! - **A pure-Rust loader of clang-compiled C objects.** The programs stay in
//!   C with the kernel's own `<bpf/bpf_helpers.h>`, as in the kernel's
//!   selftests and most published examples, while the loader needs no C
//!   library at run time: no `libbpf.so`, `libelf` or `zlib` to install on the
//!   hosts where `fivetuple` runs, and no `libbpf-sys` C build (libbpf, and
//!   with its vendored features libelf and zlib too) on every fresh CI clone.
//! - **Everything the planned programs need is there**: cgroup `sock_addr`
//!   programs with `bpf_link` attachment and link pinning (so `attach`
//!   outlives the command), BTF-defined maps, per-CPU arrays, map pinning and
//!   re-opening from a pin (`attached` reads the counters), and, for the
//!   observation programs, tracepoints, fentry/fexit with the kernel's BTF,
//!   CO-RE relocations and ring buffers.
//! - libbpf-rs with libbpf-cargo would give generated skeletons; they save
//!   little for a handful of maps, and cost a second build-time code
//!   generator and the C build above.
//!
//! # Build
//!
//! `build.rs` needs `clang` (bpf target) and `libbpf-dev` for the headers
//! (`scripts/setup` installs both). No compiled object and no `vmlinux.h`
//! is committed: a program that includes `"vmlinux.h"` gets one generated
//! into `$OUT_DIR` from `/sys/kernel/btf/vmlinux` with `bpftool`. The policy
//! hook does not: it touches only UAPI context structs (`struct
//! bpf_sock_addr`, `struct bpf_sock`) from `<linux/bpf.h>`, whose field
//! accesses the verifier rewrites, so it needs no CO-RE.
//!
//! [`observe`] attributes connects, exhaustion failures and TIME_WAIT
//! entries to the task that made them, from tracepoints only (CO-RE, so it
//! includes `vmlinux.h`): fentry/fexit are refused under `lockdown=integrity`
//! and kprobes are often compiled out, while tracepoints load everywhere.

#![deny(missing_docs)]

pub mod cgroup;
pub mod observe;
pub mod policy;
pub mod probe;

pub use policy::{Error, KernelPolicy, Only, Rule, Stats};

/// The compiled BPF objects, embedded (8-byte aligned, as the ELF parser
/// wants). One constant per `src/bpf/*.bpf.c`.
pub mod objects {
    /// `src/bpf/policy.bpf.c`: the cgroup `connect4`/`connect6` policy hook.
    pub static POLICY: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy.bpf.o"));
    /// `src/bpf/observe.bpf.c`: connect, failure and TIME_WAIT attribution.
    pub static OBSERVE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observe.bpf.o"));
}

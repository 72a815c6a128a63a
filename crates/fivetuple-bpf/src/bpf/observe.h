// Shared between observe.bpf.c and the loader (src/observe.rs mirrors these
// structs with #[repr(C)]; keep the two in step). No implicit padding: every
// struct is laid out in explicit 8/4/2/1-byte slots.
#pragma once

enum ft_obs_stage {
	FT_STAGE_NONE = 0,    // the counts map: no failure
	FT_STAGE_CONNECT = 1, // connect() of a TCP socket that reached port selection
	FT_STAGE_BIND = 2,    // bind() of a TCP socket
};

enum ft_obs_drop {
	FT_DROP_COUNTS_FULL = 0,   // ft_flows / ft_counts had no room for a new flow
	FT_DROP_FAILURES_FULL = 1, // ft_failures had no room for a new key
	FT_DROP_RINGBUF_FULL = 2,  // a failure event found the ring buffer full
	FT_DROP_OWNER_FULL = 3,    // a failing call's task storage could not be had
	FT_NOTE_TW_UNOWNED = 4,    // a timewait of a socket not connected while attached, or
	                           // whose owner slot a newer connect took
	FT_NOTE_EST_UNOWNED = 5,   // SYN_SENT -> ESTABLISHED of such a socket, or one whose
	                           // owner slot a newer connect took (ft_owners wrapped)
	FT_DROP_COUNT = 6,
};

// What a count is kept per (48 bytes: the hash of every lookup covers it).
// For ft_counts `stage` and `err` are 0; for ft_failures they say where the
// failure was born and its (positive) errno. The destination is always in
// IPv6 form, IPv4 as v4-mapped (::ffff:a.b.c.d), so no family field is
// needed. A bind failure has no destination yet: daddr is :: (IPv6) or
// ::ffff:0.0.0.0 (IPv4) and dport 0.
struct ft_obs_key {
	__u64 cgroup;   // bpf_get_current_cgroup_id() of the connecting task
	char comm[16];  // its comm
	__u8 daddr[16]; // IPv6, IPv4 v4-mapped
	__u32 netns;    // inode number of the socket's network namespace
	__u16 dport;    // host order
	__u8 stage;
	__u8 err;
};

struct ft_obs_counts {
	__u64 attempts;  // connects that left SYN_SENT (established, failed or reset)
	__u64 successes; // SYN_SENT -> ESTABLISHED (blocking or not)
	__u64 time_wait; // timewait sockets created from these connections
};

// The owner of a connecting or connected socket, remembered at connect
// time (the destination and namespace are read from the socket itself), in
// the slot of ft_owners that the socket's cookie picks.
struct ft_obs_owner {
	__u64 cookie;  // the socket's cookie (bpf_get_socket_cookie); 0: empty
	__u64 cgroup;  // bpf_get_current_cgroup_id() of the connecting task
	char comm[16]; // its comm
	__u32 tgid;
	__u32 flow;    // its flow's index in ft_counts, plus 1; 0: none (maps full)
};

enum ft_obs_config_flags {
	FT_CFG_EVENTS = 1,    // send failure events to the ring buffer
	FT_CFG_SYSCALLS = 2,  // the syscall tracepoints are attached (track connect() calls)
};

struct ft_obs_config {
	__u32 netns;        // only this network namespace (inode number); 0: all
	__u32 flags;        // enum ft_obs_config_flags
	__u32 owners_mask;  // ft_owners' slots, minus 1 (a power of two)
	__u32 max_flows;    // entries of ft_flows and ft_counts
};

// One failing connect or bind, for the live stream.
struct ft_obs_event {
	__u64 ts_ns; // bpf_ktime_get_boot_ns()
	__u64 cgroup;
	__u32 tgid;
	__u32 tid;
	char comm[16];
	__u8 saddr[16]; // bound source (or the requested one at bind); zeros if none
	__u8 daddr[16];
	__u16 sport; // host order, 0 if none
	__u16 dport;
	__u16 family;
	__u16 stage;
	__s32 err; // positive errno
	__u32 netns;
};

// A connect() that failed to get a port (its socket went SYN_SENT -> CLOSE
// before it was hashed) on one thread, kept until the syscall's exit, which
// has the errno.
struct ft_obs_pending {
	struct ft_obs_key key;
	__u64 sk;
	__u8 saddr[16]; // bound source, captured when the connect failed
	__u16 sport;
	__u16 pad;
	__u32 active;   // set at the failure, cleared at sys_exit_connect
};

// A bind() in progress on one thread (its arguments).
struct ft_obs_bind {
	__u64 fd;
	__u64 uaddr; // user pointer
};

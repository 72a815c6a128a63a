// Shared between policy.bpf.c and the loader (src/policy.rs mirrors these
// structs with #[repr(C)]; keep the two in step).
#pragma once

enum ft_kind {
	FT_KERNEL = 0,
	FT_ROTATE = 1,
	FT_SPREAD = 2,
	FT_SPREAD_ROTATE = 3,
	FT_WINDOW = 4,
};

enum ft_stat {
	FT_STAT_CONNECTS = 0,        // TCP connects the policy applied to
	FT_STAT_BINDS = 1,           // bpf_bind (or the window option) succeeded
	FT_STAT_BIND_ERRORS = 2,     // bpf_bind failed; the kernel picked instead
	FT_STAT_SETSOCKOPT_ERRORS = 3,
	FT_STAT_ALREADY_BOUND = 4,   // the application had bound the socket
	FT_STAT_FILTERED = 5,        // destination outside `only`
	FT_STAT_NO_SOURCE = 6,       // no source address of the destination's family
	FT_STAT_COUNT = 7,
};

struct ft_in6 {
	__u32 addr[4]; // network order
};

struct ft_config {
	__u32 kind;
	__u32 nports;
	__u32 nsrc4;
	__u32 nsrc6;
	__u16 window_lo;
	__u16 window_hi;
	__u32 only_family; // 0: no filter, 4 or 6
	__u32 only_addr[4]; // network order; IPv4 in [0]
	__u32 only_prefix;
	__u16 only_port; // host order, 0: any
	__u16 pad;
	__s32 last_error; // last bpf_setsockopt error of the window path
};

struct ft_meta {
	char text[1024];
};

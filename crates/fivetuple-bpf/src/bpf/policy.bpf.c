// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// fivetuple's port policies applied in the kernel: a cgroup connect4/connect6
// program that runs in the connecting task before the kernel picks the local
// port (__inet_stream_connect -> BPF_CGROUP_RUN_PROG_INET{4,6}_CONNECT). It
// binds the socket with bpf_bind() the way the library's Choice would:
//   rotate / spread-rotate: SO_REUSEADDR + bind(addr, ports[n % len])
//   spread:                 bind(addr, 0), the kernel's IP_BIND_ADDRESS_NO_PORT
//   window:                 IP_LOCAL_PORT_RANGE via bpf_setsockopt (if allowed)
// Left alone: non-TCP sockets, sockets already bound by the application,
// destinations outside the `only` filter. The hook cannot retry: a connect
// that still clashes fails with EADDRNOTAVAIL in the application.
//
// Only UAPI context structs are used (struct bpf_sock_addr, struct bpf_sock),
// whose field accesses the verifier rewrites, so no CO-RE / vmlinux.h here.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "policy.h"

#define SOCK_STREAM 1
#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define SOL_IP 0
#define IP_LOCAL_PORT_RANGE 51
#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_config);
} ft_config SEC(".maps");

// The rotation's usable ports: the range minus the target namespace's
// ip_local_reserved_ports, filled by the loader (sized to fit).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u16);
} ft_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ft_src4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_in6);
} ft_src6 SEC(".maps");

// One shared counter per family (index 0 IPv4, 1 IPv6), as in the library.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} ft_next SEC(".maps");

// What was attached, for `fivetuple attached`: "spec\ncgroup\nonly\n".
// Written by the loader, never read by the programs.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_meta);
} ft_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FT_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ft_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&ft_stats, &which);
	if (v)
		*v += 1; // per-CPU slot: no other CPU writes it
}

static __always_inline int prefix_match32(__u32 a, __u32 b, __u32 bits)
{
	if (bits == 0)
		return 1;
	if (bits >= 32)
		return a == b;
	__u32 mask = bpf_htonl(~((1U << (32 - bits)) - 1));
	return (a & mask) == (b & mask);
}

// True when the destination passes the `only` filter (or there is none).
static __always_inline int wanted4(const struct ft_config *c, __u32 dst, __u16 port)
{
	if (c->only_family == 0)
		return 1;
	if (c->only_port && c->only_port != port)
		return 0;
	if (c->only_family != 4)
		return 0;
	return prefix_match32(dst, c->only_addr[0], c->only_prefix);
}

static __always_inline int wanted6(const struct ft_config *c, const __u32 dst[4], __u16 port)
{
	if (c->only_family == 0)
		return 1;
	if (c->only_port && c->only_port != port)
		return 0;
	if (c->only_family != 6)
		return 0;
	__u32 bits = c->only_prefix;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 b = bits > 32 ? 32 : bits;
		if (!prefix_match32(dst[i], c->only_addr[i], b))
			return 0;
		bits -= b;
	}
	return 1;
}

// The library's rotation step: n = next++; with k sources,
// source = src[n % k] and port = ports[(n / k) % len]. The counter is never
// compared or reset, so every value maps into the range, also at the wrap.
static __always_inline int pick(const struct ft_config *c, __u32 family, __u32 nsrc,
				__u32 *src_index, __u16 *port)
{
	__u32 fam = family;
	__u64 *next = bpf_map_lookup_elem(&ft_next, &fam);
	if (!next)
		return -1;
	__u64 n = __sync_fetch_and_add(next, 1);
	__u64 k = nsrc ? nsrc : 1;
	*src_index = n % k;
	if (c->kind == FT_SPREAD) {
		*port = 0;
		return 0;
	}
	if (c->nports == 0)
		return -1;
	__u32 i = (n / k) % c->nports;
	__u16 *p = bpf_map_lookup_elem(&ft_ports, &i);
	if (!p)
		return -1;
	*port = *p;
	return 0;
}

static __always_inline int reuseaddr(struct bpf_sock_addr *ctx)
{
	int one = 1;
	if (bpf_setsockopt(ctx, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) {
		count(FT_STAT_SETSOCKOPT_ERRORS);
		return -1;
	}
	return 0;
}

static __always_inline int window(struct bpf_sock_addr *ctx, const struct ft_config *c)
{
	__u32 range = ((__u32)c->window_hi << 16) | c->window_lo;
	long err = bpf_setsockopt(ctx, SOL_IP, IP_LOCAL_PORT_RANGE, &range, sizeof(range));
	if (err) {
		count(FT_STAT_SETSOCKOPT_ERRORS);
		__u32 key = 0;
		struct ft_config *w = bpf_map_lookup_elem(&ft_config, &key);
		if (w)
			w->last_error = (__s32)err;
		return 1;
	}
	count(FT_STAT_BINDS);
	return 1;
}

// The configuration when the connect is TCP, else NULL (UDP is left alone
// and not counted).
static __always_inline struct ft_config *tcp_config(struct bpf_sock_addr *ctx)
{
	__u32 key = 0;
	struct ft_config *c = bpf_map_lookup_elem(&ft_config, &key);
	if (!c || ctx->type != SOCK_STREAM || !ctx->sk)
		return 0;
	return c;
}

// Counts a connect the policy applies to and decides: 0 to bind source
// `*si` (with `nsrc` sources of the family) and `*port` (0: any), 1 to
// leave the socket to the kernel. `family` is 0 for IPv4, 1 for IPv6.
static __always_inline int decide(struct bpf_sock_addr *ctx, const struct ft_config *c,
				  __u32 family, __u32 nsrc, __u32 *si, __u16 *port)
{
	count(FT_STAT_CONNECTS);
	if (c->kind == FT_KERNEL)
		return 1;
	if (c->kind == FT_WINDOW) {
		if (family == 0)
			return window(ctx, c);
		count(FT_STAT_SETSOCKOPT_ERRORS); // IP_LOCAL_PORT_RANGE is an IPv4-level option
		return 1;
	}
	if ((c->kind == FT_SPREAD || c->kind == FT_SPREAD_ROTATE) && nsrc == 0) {
		count(FT_STAT_NO_SOURCE);
		return 1;
	}
	return pick(c, family, c->kind == FT_ROTATE ? 0 : nsrc, si, port) ? 1 : 0;
}

// SO_REUSEADDR for an explicit port, then bpf_bind, counted.
static __always_inline int bind_counted(struct bpf_sock_addr *ctx, struct sockaddr *sa, int len,
					__u16 port)
{
	if (port && reuseaddr(ctx))
		return 1;
	if (bpf_bind(ctx, sa, len))
		count(FT_STAT_BIND_ERRORS);
	else
		count(FT_STAT_BINDS);
	return 1;
}

SEC("cgroup/connect4")
int fivetuple_connect4(struct bpf_sock_addr *ctx)
{
	struct ft_config *c = tcp_config(ctx);
	if (!c)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	if (sk->src_port || sk->src_ip4) {
		count(FT_STAT_ALREADY_BOUND);
		return 1;
	}
	if (!wanted4(c, ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port))) {
		count(FT_STAT_FILTERED);
		return 1;
	}
	__u32 si = 0;
	__u16 port = 0;
	if (decide(ctx, c, 0, c->nsrc4, &si, &port))
		return 1;
	struct sockaddr_in sa = {};
	sa.sin_family = AF_INET;
	sa.sin_port = bpf_htons(port);
	if (c->kind != FT_ROTATE) {
		__u32 *a = bpf_map_lookup_elem(&ft_src4, &si);
		if (!a)
			return 1;
		sa.sin_addr.s_addr = *a;
	}
	return bind_counted(ctx, (struct sockaddr *)&sa, sizeof(sa), port);
}

SEC("cgroup/connect6")
int fivetuple_connect6(struct bpf_sock_addr *ctx)
{
	struct ft_config *c = tcp_config(ctx);
	if (!c)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	if (sk->src_port || sk->src_ip6[0] || sk->src_ip6[1] || sk->src_ip6[2] || sk->src_ip6[3]) {
		count(FT_STAT_ALREADY_BOUND);
		return 1;
	}
	__u32 dst[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 dport = bpf_ntohs((__u16)ctx->user_port);
	// A v4-mapped destination (::ffff:a.b.c.d) on a dual-stack socket is an
	// IPv4 connect: filter, count and pick sources as IPv4.
	int mapped = dst[0] == 0 && dst[1] == 0 && dst[2] == bpf_htonl(0xffff);
	if (mapped ? !wanted4(c, dst[3], dport) : !wanted6(c, dst, dport)) {
		count(FT_STAT_FILTERED);
		return 1;
	}
	__u32 si = 0;
	__u16 port = 0;
	if (decide(ctx, c, mapped ? 0 : 1, mapped ? c->nsrc4 : c->nsrc6, &si, &port))
		return 1;
	struct sockaddr_in6 sa = {};
	sa.sin6_family = AF_INET6;
	sa.sin6_port = bpf_htons(port);
	if (c->kind != FT_ROTATE) {
		if (mapped) {
			__u32 *a = bpf_map_lookup_elem(&ft_src4, &si);
			if (!a)
				return 1;
			sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
			sa.sin6_addr.in6_u.u6_addr32[3] = *a;
		} else {
			struct ft_in6 *a = bpf_map_lookup_elem(&ft_src6, &si);
			if (!a)
				return 1;
			sa.sin6_addr.in6_u.u6_addr32[0] = a->addr[0];
			sa.sin6_addr.in6_u.u6_addr32[1] = a->addr[1];
			sa.sin6_addr.in6_u.u6_addr32[2] = a->addr[2];
			sa.sin6_addr.in6_u.u6_addr32[3] = a->addr[3];
		}
	}
	return bind_counted(ctx, (struct sockaddr *)&sa, sizeof(sa), port);
}

char LICENSE[] SEC("license") = "GPL";

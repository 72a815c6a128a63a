// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// fivetuple's kernel view of who churns ports: per (cgroup, comm,
// destination, family) counts of TCP connect attempts, successes, exhaustion
// failures and timewait sockets, and a ring buffer of the failures only.
//
// Only tracepoints: fentry/fexit are refused (EPERM) on this machine's
// kernel 6.18 (lockdown=integrity), and kprobes are compiled out there
// (# CONFIG_KPROBES is not set), as on many distribution kernels, while
// tracepoints load on every kernel since 5.5 (tp_btf) / 4.7 (tracepoint).
//
//   tp_btf/inet_sock_set_state:
//     CLOSE -> SYN_SENT  (in the connecting task) tcp_v{4,6}_connect sets it
//                        right before the port is picked (inet_hash_connect):
//                        an attempt starts; the owner (cgroup, comm, pid) is
//                        kept in ft_owners, in the slot the socket's cookie
//                        picks. Nothing is counted yet.
//     SYN_SENT -> ESTABLISHED  the attempt and a success (non-blocking
//                        connects too), counted together in one lookup.
//     SYN_SENT -> CLOSE  the attempt, failed: a reset, a timeout (both set
//                        sk_err), a close while connecting, or inside
//                        connect() because inet_hash_connect found no port.
//                        Those without sk_err are kept for sys_exit_connect
//                        (in the thread's task storage), which counts the
//                        ones whose call returned EADDRNOTAVAIL/EADDRINUSE.
//     SYN_SENT -> other  (SYN_RECV, simultaneous open): the attempt.
//     So an attempt is counted when it resolves: a connect still in SYN_SENT
//     (a SYN nobody answers yet) is not in ft_counts until it does, which
//     for a blocking connect() is before the call returns.
//     FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE without sk_err: a timewait
//                        socket took its place. On 6.18 the tracepoint never
//                        shows newstate TIME_WAIT: tcp_time_wait() allocates
//                        the tw sock, whose hashdance unhashes the full
//                        socket, then tcp_done() moves it to CLOSE. A reset
//                        sets sk_err first. The tracepoint fires after the
//                        unhash on every path, so "unhashed" tells nothing.
//                        Still counted, wrongly: a tw sock the kernel could
//                        not allocate (tcp_max_tw_buckets reached, "time
//                        wait bucket table overflow"), and an orphan's
//                        FIN_WAIT2 timeout when tcp_fin_timeout > 60 s.
//   tracepoint/syscalls/sys_exit_connect: the errno of a connect that failed
//     to get a port (EADDRNOTAVAIL from __inet_hash_connect, or EADDRINUSE).
//   tracepoint/syscalls/sys_exit_bind: EADDRINUSE of bind() on a TCP socket
//     (the arguments are read from the registers saved at syscall entry, and
//     the fd is resolved to its socket, only on that error).
//
// Cost: every state change of every TCP socket runs ft_set_state (about 10
// per connection, both ends), so the states are filtered first, before any
// map access. A connection costs one keyed lookup (its flow, at connect;
// a per-CPU cache of the last flow usually spares even that), one owner
// write into a direct-mapped array (no lock, no allocation) and two indexed
// counts updates in a per-CPU array (resolution and timewait; no hashing,
// no atomics). The owners of timewait sockets cost nothing more: a timewait
// socket keeps the cookie of the connection it replaced, so a reader of the
// socket table (doctor) finds its owner by that. The syscall tracepoints
// cost most: any of them puts every syscall of every task on the kernel's
// traced path. docs/BENCHMARKS.md has the figures.
//
// A v4-mapped destination on an IPv6 socket is counted as IPv4. Maps are
// bounded; what does not fit is counted in ft_drops.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "observe.h"

#define AF_INET 2
#define AF_INET6 10
#define EEXIST 17
#define EADDRINUSE 98
#define EADDRNOTAVAIL 99
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_BINDADDR_LOCK 4
#define SOCK_BINDPORT_LOCK 8
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_CLOSING 11

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_obs_config);
} ft_obs_config SEC(".maps");

// Each flow (who, where) gets an index into ft_counts when a connect to it
// is first seen. The key is hashed once per connection, at connect; the
// owner slot keeps the index, so the resolution and the timewait count
// without hashing (two keyed lookups per connection measured 0.2 us more).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); // set by the loader (Options::max_flows)
	__type(key, struct ft_obs_key);
	__type(value, __u32);
} ft_flows SEC(".maps");

// The next free index of ft_counts.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ft_next_flow SEC(".maps");

// The last flow each CPU looked up: a churning client connects to the same
// destination again and again, and 6 word compares are cheaper than hashing
// the 48-byte key. Flows are never removed, so a cached index stays valid.
struct ft_flow_cache {
	struct ft_obs_key key;
	__u32 flow; // index + 1; 0: empty
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ft_flow_cache);
} ft_flow_cache SEC(".maps");

// Per CPU: the counts are summed by the reader anyway, and a CPU's own slot
// needs no atomic add (the program does not nest on one CPU: the kernel's
// per-program recursion guard, bpf_prog->active).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16384); // set by the loader (Options::max_flows)
	__type(key, __u32);
	__type(value, struct ft_obs_counts);
} ft_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ft_obs_key);
	__type(value, __u64);
} ft_failures SEC(".maps");

// Who connected each socket: a direct-mapped table indexed by the socket's
// cookie (owners_mask + 1 slots, Options::max_sockets). Cookies are handed
// out in increasing order, so a slot is taken over only after that many
// newer sockets got one; a connection that outlives that finds its slot
// taken, and its timewait is counted as unowned (FT_NOTE_TW_UNOWNED). No
// hashing, no lock, no allocation and no delete: a preallocated hash keyed
// by the socket measured 0.3 us more per connection (insert, delete, and a
// lookup for every accepted socket's close), socket-local storage 0.5 us
// more (docs/BENCHMARKS.md).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); // set by the loader
	__type(key, __u32);
	__type(value, struct ft_obs_owner);
} ft_owners SEC(".maps");

// A connect() that failed for lack of a port, until the syscall's exit:
// task-local storage, created only on such a failure.
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ft_obs_pending);
} ft_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FT_DROP_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ft_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} ft_events SEC(".maps");

static __always_inline void drop(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&ft_drops, &which);
	if (v)
		*v += 1; // per-CPU slot
}

static __always_inline struct ft_obs_config *obs_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ft_obs_config, &zero);
}

static __always_inline __u32 netns_of(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

// The index + 1 of the flow `key` in ft_counts, a new one if it is new; 0
// when the maps are full.
static __always_inline int same_key(const struct ft_obs_key *a, const struct ft_obs_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4] && x[5] == y[5];
}

static __always_inline __u32 flow_lookup(const struct ft_obs_config *cfg, const struct ft_obs_key *key)
{
	__u32 *id = bpf_map_lookup_elem(&ft_flows, key);
	if (id)
		return *id + 1;
	__u32 zero = 0;
	__u32 *next = bpf_map_lookup_elem(&ft_next_flow, &zero);
	if (!next)
		return 0;
	// Full already: no increment, so the counter cannot wrap around to
	// index 0 however many new flows keep arriving (the race past this
	// check overshoots by at most one per CPU).
	if (*next >= cfg->max_flows) {
		drop(FT_DROP_COUNTS_FULL);
		return 0;
	}
	__u32 n = __sync_fetch_and_add(next, 1);
	if (n >= cfg->max_flows) {
		drop(FT_DROP_COUNTS_FULL);
		return 0;
	}
	if (bpf_map_update_elem(&ft_flows, key, &n, BPF_NOEXIST)) {
		// Another CPU added the same flow first (its index wins; this one
		// stays unused), or the map is full.
		id = bpf_map_lookup_elem(&ft_flows, key);
		if (id)
			return *id + 1;
		drop(FT_DROP_COUNTS_FULL);
		return 0;
	}
	return n + 1;
}

static __always_inline __u32 flow_of(const struct ft_obs_config *cfg, const struct ft_obs_key *key)
{
	__u32 zero = 0;
	struct ft_flow_cache *cache = bpf_map_lookup_elem(&ft_flow_cache, &zero);
	if (cache && cache->flow && same_key(&cache->key, key))
		return cache->flow;
	__u32 flow = flow_lookup(cfg, key);
	if (cache && flow) {
		cache->key = *key;
		cache->flow = flow;
	}
	return flow;
}

// This CPU's counts of the flow an owner slot names, or NULL.
static __always_inline struct ft_obs_counts *counts_of(const struct ft_obs_owner *owner)
{
	if (!owner->flow)
		return 0;
	__u32 i = owner->flow - 1;
	return bpf_map_lookup_elem(&ft_counts, &i);
}

static __always_inline void count_failure(const struct ft_obs_key *key)
{
	__u64 *c = bpf_map_lookup_elem(&ft_failures, key);
	if (!c) {
		__u64 zero = 0;
		long err = bpf_map_update_elem(&ft_failures, key, &zero, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			drop(FT_DROP_FAILURES_FULL);
			return;
		}
		c = bpf_map_lookup_elem(&ft_failures, key);
		if (!c)
			return;
	}
	__sync_fetch_and_add(c, 1);
}

static __always_inline int is_mapped(const __u32 *w)
{
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline void send_event(const struct ft_obs_config *cfg, const struct ft_obs_key *key,
				       __u16 family, const __u8 *saddr, __u16 sport)
{
	if (!(cfg->flags & FT_CFG_EVENTS))
		return;
	struct ft_obs_event *e = bpf_ringbuf_reserve(&ft_events, sizeof(*e), 0);
	if (!e) {
		drop(FT_DROP_RINGBUF_FULL);
		return;
	}
	__u64 id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup = key->cgroup;
	e->tgid = id >> 32;
	e->tid = (__u32)id;
	__builtin_memcpy(e->comm, key->comm, sizeof(e->comm));
	__builtin_memcpy(e->saddr, saddr, sizeof(e->saddr));
	if (family == AF_INET) // the event keeps IPv4 in the first 4 bytes
		__builtin_memcpy(e->daddr, key->daddr + 12, 4);
	else
		__builtin_memcpy(e->daddr, key->daddr, sizeof(e->daddr));
	e->sport = sport;
	e->dport = key->dport;
	e->family = family;
	e->stage = key->stage;
	e->err = key->err;
	e->netns = key->netns;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u16 key_family(const struct ft_obs_key *key)
{
	return is_mapped((const __u32 *)key->daddr) ? AF_INET : AF_INET6;
}

// The destination of a socket in SYN_SENT (set before the port is picked),
// in IPv6 form; a v4-mapped IPv6 destination is IPv4 already.
static __always_inline void destination(const struct sock *sk, struct ft_obs_key *key)
{
	key->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (sk->__sk_common.skc_family == AF_INET6) {
		BPF_CORE_READ_INTO((struct in6_addr *)key->daddr, sk, __sk_common.skc_v6_daddr);
		return;
	}
	__u32 w[4] = {0, 0, bpf_htonl(0xffff), sk->__sk_common.skc_daddr};
	__builtin_memcpy(key->daddr, w, 16);
}

// The source the application bound (SOCK_BINDADDR_LOCK / SOCK_BINDPORT_LOCK),
// zeros otherwise: the kernel's own choice is reset on the error path.
static __always_inline void bound_source(const struct sock *sk, __u16 family, __u8 *saddr, __u16 *sport)
{
	__u8 locks = BPF_CORE_READ(sk, sk_userlocks);
	if (locks & SOCK_BINDADDR_LOCK) {
		if (family == AF_INET6) {
			BPF_CORE_READ_INTO((struct in6_addr *)saddr, sk, __sk_common.skc_v6_rcv_saddr);
		} else {
			__u32 a = sk->__sk_common.skc_rcv_saddr;
			__builtin_memcpy(saddr, &a, 4);
		}
	}
	if (locks & SOCK_BINDPORT_LOCK)
		*sport = sk->__sk_common.skc_num;
}

static __always_inline __u32 netns_direct(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum; // BTF pointer walk, no probe reads
}

// The owner slot of a socket with this cookie.
static __always_inline struct ft_obs_owner *owner_slot(const struct ft_obs_config *cfg, __u64 cookie)
{
	__u32 slot = (__u32)cookie & cfg->owners_mask;
	return bpf_map_lookup_elem(&ft_owners, &slot);
}

// The owner of `sk`, or NULL when it has none (or lost its slot).
static __always_inline struct ft_obs_owner *owner_of(const struct sock *sk)
{
	struct ft_obs_config *cfg = obs_config();
	if (!cfg)
		return 0;
	__u64 cookie = bpf_get_socket_cookie((struct sock *)sk);
	struct ft_obs_owner *o = owner_slot(cfg, cookie);
	if (!o || o->cookie != cookie)
		return 0;
	return o;
}

static __always_inline void on_syn_sent(const struct sock *sk)
{
	struct ft_obs_config *cfg = obs_config();
	if (!cfg)
		return;
	if (cfg->netns && cfg->netns != netns_direct(sk))
		return;
	__u64 cookie = bpf_get_socket_cookie((struct sock *)sk);
	struct ft_obs_owner *o = owner_slot(cfg, cookie);
	if (!o)
		return;
	struct ft_obs_key key;
	key.cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	destination(sk, &key); // set before SYN_SENT
	key.netns = netns_direct(sk);
	key.stage = 0;
	key.err = 0;
	// A reconnect of the same socket (same cookie) replaces its owner.
	o->cookie = cookie;
	o->cgroup = key.cgroup;
	__builtin_memcpy(o->comm, key.comm, sizeof(o->comm));
	o->tgid = bpf_get_current_pid_tgid() >> 32;
	o->flow = flow_of(cfg, &key);
}

// A socket reaching CLOSE with no error pending: not a reset (tcp_reset
// sets ECONNRESET, ECONNREFUSED or EPIPE), nor a connect timeout
// (ETIMEDOUT), before tcp_done(). The tracepoint fires at the very end of
// tcp_set_state(), in inet_sk_state_store(), after the socket was unhashed
// and its port put back, so neither says why it closed; sk_err does.
static __always_inline int closed_cleanly(const struct sock *sk)
{
	return sk->sk_err == 0; // a direct (BTF) load, no probe read
}

// SYN_SENT -> CLOSE without an error on the socket: inside connect(), where
// inet_hash_connect found no port (or a later step failed), or a close()
// while connecting. Kept for sys_exit_connect, which counts it only when the
// call returned EADDRNOTAVAIL or EADDRINUSE for this very socket. Runs in
// the calling task, so the key is the current task's.
static __always_inline void on_connect_failed(const struct sock *sk)
{
	struct ft_obs_config *cfg = obs_config();
	if (!cfg || !(cfg->flags & FT_CFG_SYSCALLS))
		return; // no sys_exit_connect to give the failure its errno
	__u32 netns = netns_direct(sk);
	if (cfg->netns && cfg->netns != netns)
		return;
	struct ft_obs_pending *p =
		bpf_task_storage_get(&ft_pending, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!p) {
		drop(FT_DROP_OWNER_FULL);
		return;
	}
	__builtin_memset(p, 0, sizeof(*p));
	p->key.cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(p->key.comm, sizeof(p->key.comm));
	destination(sk, &p->key);
	p->key.netns = netns;
	p->sk = (__u64)sk;
	bound_source(sk, key_family(&p->key), p->saddr, &p->sport);
	p->active = 1;
}

// SYN_SENT -> anything: the attempt resolved (ESTABLISHED: a success).
static __always_inline void on_resolved(const struct sock *sk, int newstate)
{
	struct ft_obs_owner *owner = owner_of(sk);
	if (newstate == TCP_CLOSE && closed_cleanly(sk))
		on_connect_failed(sk);
	if (!owner) {
		if (newstate == TCP_ESTABLISHED)
			drop(FT_NOTE_EST_UNOWNED);
		return;
	}
	struct ft_obs_counts *c = counts_of(owner);
	if (c) {
		c->attempts += 1; // this CPU's slot
		if (newstate == TCP_ESTABLISHED)
			c->successes += 1;
	}
}

// FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE, without an error: a timewait socket
// took its place.
static __always_inline void on_time_wait(const struct sock *sk)
{
	struct ft_obs_owner *owner = owner_of(sk);
	if (!owner) {
		drop(FT_NOTE_TW_UNOWNED);
		return;
	}
	struct ft_obs_counts *c = counts_of(owner);
	if (c)
		c->time_wait += 1;
	// The owner stays in its slot: the timewait socket keeps the cookie
	// (inet_twsk_alloc copies sk_cookie), so a reader of the socket table
	// (doctor) finds the owner of each TIME_WAIT by it.
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ft_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	// The states first: most changes (the accepting side's, ESTABLISHED ->
	// FIN_WAIT1, ...) need no work and touch no map.
	if (newstate == TCP_SYN_SENT) {
		if (oldstate == TCP_CLOSE && sk->sk_protocol == IPPROTO_TCP)
			on_syn_sent(sk);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		if (sk->sk_protocol == IPPROTO_TCP)
			on_resolved(sk, newstate);
		return 0;
	}
	if (newstate != TCP_CLOSE)
		return 0;
	if (oldstate != TCP_FIN_WAIT1 && oldstate != TCP_FIN_WAIT2 && oldstate != TCP_CLOSING)
		return 0; // LAST_ACK -> CLOSE (the side closed second), resets
	if (!closed_cleanly(sk) || sk->sk_protocol != IPPROTO_TCP)
		return 0; // a reset: no timewait socket
	on_time_wait(sk);
	return 0;
}

// The socket behind `fd` of the current task, or NULL when it is no socket.
static __always_inline struct sock *socket_of_fd(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int ft_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	// The errno first: almost every connect() returns 0 or EINPROGRESS and
	// needs no lookup. A failure kept with another errno stays until the
	// thread's next one overwrites it; the socket check below keeps it from
	// being taken for a later call's.
	long ret = ctx->ret;
	if (ret != -EADDRNOTAVAIL && ret != -EADDRINUSE)
		return 0;
	struct ft_obs_pending *p = bpf_task_storage_get(&ft_pending, bpf_get_current_task_btf(), 0, 0);
	if (!p || !p->active)
		return 0; // not a port failure this call saw (or not in the namespace)
	p->active = 0;
	// The same socket as the failure kept: its fd is the call's first
	// argument, still in the registers saved at syscall entry.
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if ((__u64)socket_of_fd(PT_REGS_PARM1_CORE_SYSCALL(regs)) != p->sk)
		return 0;
	struct ft_obs_config *cfg = obs_config();
	if (!cfg)
		return 0;
	struct ft_obs_key key = p->key;
	key.stage = FT_STAGE_CONNECT;
	key.err = -ret;
	count_failure(&key);
	send_event(cfg, &key, key_family(&key), p->saddr, p->sport);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_bind")
int ft_exit_bind(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != -EADDRINUSE)
		return 0;
	// The call's arguments are still in the registers saved at syscall
	// entry: no sys_enter_bind program, so no second probe on every
	// syscall's entry.
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct ft_obs_bind args = {
		.fd = PT_REGS_PARM1_CORE_SYSCALL(regs),
		.uaddr = PT_REGS_PARM2_CORE_SYSCALL(regs),
	};
	struct sock *sk = socket_of_fd(args.fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	struct ft_obs_config *cfg = obs_config();
	if (!cfg)
		return 0;
	__u32 netns = netns_of(sk);
	if (cfg->netns && cfg->netns != netns)
		return 0;
	struct sockaddr_in6 sa = {}; // large enough for a sockaddr_in too
	if (bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), (void *)args.uaddr))
		return 0;
	struct ft_obs_key key = {};
	__u8 saddr[16] = {};
	__u16 sport = bpf_ntohs(sa.sin6_port);
	__u16 family = AF_INET;
	if (sa.sin6_family == AF_INET6) {
		bpf_probe_read_user(&sa, sizeof(sa), (void *)args.uaddr);
		__builtin_memcpy(saddr, &sa.sin6_addr, 16);
		family = AF_INET6; // no destination: ::
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
		__builtin_memcpy(saddr, &sin->sin_addr.s_addr, 4);
		key.daddr[10] = 0xff; // no destination: ::ffff:0.0.0.0
		key.daddr[11] = 0xff;
	}
	key.cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.netns = netns;
	key.stage = FT_STAGE_BIND;
	key.err = EADDRINUSE;
	count_failure(&key);
	send_event(cfg, &key, family, saddr, sport);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

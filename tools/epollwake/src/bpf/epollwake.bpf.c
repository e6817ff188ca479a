// SPDX-License-Identifier: GPL-2.0
/* epollwake: who woke each epoll_wait of one process, through which socket,
 * and what the woken thread then got.
 *
 * A thread of the target is "waiting" from the entry of epoll_wait (or
 * epoll_pwait, epoll_pwait2) to its exit; the `waiting` map holds it. sched_waking of a waiting thread runs in the waker's context: its
 * kernel stack says how the wake-up came (ep_poll_callback, called from
 * sock_def_readable for data or a new connection, from sock_def_wakeup for
 * a state change such as the peer's FIN), and which socket is found in a
 * per-CPU slot written just before:
 *
 * - tracepoint backend (no kprobes, no fentry): sock:sk_data_ready fires at
 *   the top of sock_def_readable and sock:inet_sock_set_state just before
 *   tcp_fin calls sk_state_change. Both remember the socket per CPU and per
 *   context (task or softirq), because a softirq can run
 *   between a task-context tracepoint and its wake-up; the waker's stack
 *   must pass through the matching callback for the slot to be believed.
 * - kprobe/fentry backend: ep_poll_callback itself fills the slot from the
 *   epitem (file, fd, registered mask and data), found from its wait queue
 *   entry with a CO-RE container_of, and clears it on return.
 *
 * All wake-ups caused by one socket event share a `group`: that is how one
 * new connection waking several workers (a thundering herd) is recognised.
 * On the kprobe/fentry backend the event is one call of the socket's
 * callback (sock_def_readable, sock_def_wakeup), hooked on entry and exit:
 * every ep_poll_callback inside it belongs to that event however long the
 * wake-up loop takes (milliseconds under emulation). Files that are not
 * sockets fall back to "same file, within a few microseconds".
 * A woken thread that sleeps again inside the same epoll_wait without
 * returning (another thread took the event first) is reported as RESLEEP.
 *
 * Every tracepoint is a raw one (raw_tp, run as tp_btf where the kernel
 * types its tracepoints in BTF): attaching one opens no perf event, and
 * detaching one waits for no RCU grace period, where the last close of a
 * classic tracepoint's perf event waits for two, one tracepoint after
 * another under the kernel's event_mutex (40-50 ms each here: epollwake's
 * nineteen took most of a second to detach). So arguments are read as the
 * tracepoint passes them: task and socket pointers through CO-RE, the
 * syscall's from its pt_regs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kdiag.bpf.h"
#include "epollwake.h"

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EAGAIN 11
#define TASK_INTERRUPTIBLE 1
#define EPOLL_CTL_DEL 2
/* The x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl):
 * raw_syscalls tracepoints pass the number, not the name. */
#define NR_close 3
#define NR_accept 43
#define NR_epoll_wait 232
#define NR_epoll_ctl 233
#define NR_epoll_pwait 281
#define NR_accept4 288
#define NR_epoll_pwait2 441
/* The code segment of 64-bit user mode (__USER_CS). */
#define USER64_CS 0x33

#define LEVELS 2

const volatile __u32 targ_tgid = 0;
const volatile bool filter_tids = false;
const volatile bool epitem_backend = false;
/* kprobe backend on kernels whose unwinder cannot see through kretprobes
 * (before 5.16): ep_poll_callback has no kretprobe to close its slot, so
 * the slot counts only for a wake-up whose stack passes through it. */
const volatile bool epitem_by_stack = false;
/* Kernels before 5.11 have no epoll_pwait2: its number is then no call. */
const volatile bool has_pwait2 = true;

struct wait_state {
	__u64 events;     /* user pointer to struct epoll_event[] */
	__u64 enter_ts;
	__u64 woken_ts;
	__u64 group;
	__s32 epfd;
	__s32 maxevents;
	__u32 syscall;
	__u32 pad;
};

/* Threads of the target inside epoll_wait, by tid. Userspace seeds it with
 * threads already waiting when the run starts (from /proc/TID/syscall). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct wait_state);
} waiting SEC(".maps");

/* [start, end) of the enum ew_ksym functions, from /proc/kallsyms.
 * Written by userspace after load, before attach: kallsyms takes the
 * kernel tens of milliseconds to list, so it is read while the programs
 * load instead of before. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ew_ksym_ranges);
} ksym_ranges SEC(".maps");

/* -t: only these threads (when filter_tids). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} tids SEC(".maps");

struct pending_call {
	__u64 arg0; /* accept: listening fd; epoll_ctl: epfd */
	__u64 arg1; /* epoll_ctl: op */
	__u64 arg2; /* epoll_ctl: fd */
	__u64 arg3; /* epoll_ctl: user pointer to the event */
};

/* accept and epoll_ctl arguments from enter to exit, by tid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pending_call);
} calls SEC(".maps");

/* The socket event in progress on this CPU, per context level, slot
 * level * 2 + (0: data ready or epitem, 1: state change). */
struct src_slot {
	__u64 sk;
	__u64 file;
	__u64 seq;
	__u64 ts;
	__u64 data;
	__u64 cb_seq;  /* the socket callback call the group was opened for */
	__s32 fd;
	__u32 events;
	__u32 active;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LEVELS * 2);
	__type(key, __u32);
	__type(value, struct src_slot);
} slots SEC(".maps");

KD_STATS(ew_stats);

/* Perf-buffer path only: one slot per event kind, large enough for any. */
struct scratch_buf {
	__u8 b[sizeof(struct ew_wake)];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct scratch_buf);
} scratch SEC(".maps");

KD_CHANNEL(events, 1024 * 1024);

/* Makes the layouts part of BTF, so the skeleton exports them. */
struct ew_wake ew_wake_layout = {};
struct ew_return ew_return_layout = {};
struct ew_fd_event ew_fd_event_layout = {};
struct ew_uprobe ew_uprobe_layout = {};
struct ew_stats ew_stats_layout = {};
struct ew_ksym_ranges ew_ksym_ranges_layout = {};

static __always_inline void count_lost(void)
{
	struct ew_stats *s = kd_stats();

	if (s)
		__sync_fetch_and_add(&s->lost, 1);
}

static __always_inline bool is_target(__u64 pid_tgid)
{
	__u32 tid = (__u32)pid_tgid;

	if ((pid_tgid >> 32) != targ_tgid)
		return false;
	return !filter_tids || bpf_map_lookup_elem(&tids, &tid);
}

/* Per CPU: 1 + the softirq vector being served, 0 outside softirqs.
 * Kept from irq:softirq_entry/exit because preempt_count is out of reach
 * of BPF on kernels whose kallsyms lacks per-CPU variables (the host). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} softirq SEC(".maps");

static __always_inline __u32 softirq_now(void)
{
	__u32 zero = 0, *v = bpf_map_lookup_elem(&softirq, &zero);

	return v ? *v : 0;
}

SEC("raw_tp/softirq_entry")
int BPF_PROG(ew_softirq_entry, unsigned int vec)
{
	__u32 zero = 0, *v = bpf_map_lookup_elem(&softirq, &zero);

	if (v)
		*v = vec + 1;
	return 0;
}

SEC("raw_tp/softirq_exit")
int BPF_PROG(ew_softirq_exit)
{
	__u32 zero = 0, *v = bpf_map_lookup_elem(&softirq, &zero);

	if (v)
		*v = 0;
	return 0;
}

/* Context level of the socket slots: task 0, softirq 1. Hard interrupts
 * do not run socket callbacks. */
static __always_inline struct src_slot *slot_for(__u32 kind)
{
	__u32 key = (softirq_now() ? 1 : 0) * 2 + kind;

	return bpf_map_lookup_elem(&slots, &key);
}

static __always_inline void read_sock(struct ew_sock *s, struct sock *sk)
{
	struct socket *sock;

	s->skaddr = (__u64)sk;
	if (!sk)
		return;
	s->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	s->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	s->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* Bitfields before 5.6, plain u16 since: the probed read handles both. */
	s->protocol = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	s->type = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type);
	if (s->family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)s->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)s->raddr, sk, __sk_common.skc_daddr);
	} else if (s->family == AF_INET6) {
		BPF_CORE_READ_INTO(&s->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&s->raddr, sk, __sk_common.skc_v6_daddr);
	}
	sock = BPF_CORE_READ(sk, sk_socket);
	if (sock)
		s->ino = BPF_CORE_READ(sock, file, f_inode, i_ino);
}

/* The struct file behind fd in the current task, or NULL. */
static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	struct file **fds, *f = NULL;

	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline struct sock *file_sock(struct file *f)
{
	struct socket *sock;
	umode_t mode;

	if (!f)
		return NULL;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : NULL;
}

/* ---- epoll_wait and friends ---- */

/* The target's thread (and, with -t, one of the threads asked for) in a
 * 64-bit syscall: a 32-bit task's syscall numbers mean other calls, and
 * the classic syscall events skip such tasks too. */
static __always_inline bool wanted_call(__u64 pid_tgid, struct pt_regs *regs)
{
	return is_target(pid_tgid) && (__u16)BPF_CORE_READ(regs, cs) == USER64_CS;
}

static __always_inline int wait_enter(struct pt_regs *regs, __u64 pid_tgid, __u32 sc)
{
	__u32 tid = (__u32)pid_tgid;
	struct wait_state w = {};
	struct ew_stats *s;

	if (!wanted_call(pid_tgid, regs))
		return 0;
	w.epfd = (int)PT_REGS_PARM1_CORE_SYSCALL(regs);
	w.events = PT_REGS_PARM2_CORE_SYSCALL(regs);
	w.maxevents = (int)PT_REGS_PARM3_CORE_SYSCALL(regs);
	w.enter_ts = bpf_ktime_get_ns();
	w.syscall = sc;
	bpf_map_update_elem(&waiting, &tid, &w, BPF_ANY);
	s = kd_stats();
	if (s)
		__sync_fetch_and_add(&s->waits, 1);
	return 0;
}

static __always_inline int wait_exit(void *ctx, __u64 pid_tgid, long rc)
{
	__u32 tid = (__u32)pid_tgid;
	struct wait_state *w;
	struct ew_return *e;
	__u8 raw[12];
	int ret;

	w = bpf_map_lookup_elem(&waiting, &tid);
	if (!w)
		return 0;
	e = kd_reserve(events, &scratch, EW_RETURN, sizeof(*e));
	if (!e) {
		count_lost();
		bpf_map_delete_elem(&waiting, &tid);
		return 0;
	}
	ret = (int)rc;
	e->kind = EW_RETURN;
	e->tid = tid;
	e->ts = bpf_ktime_get_ns();
	e->enter_ts = w->enter_ts;
	e->woken_ts = w->woken_ts;
	e->group = w->group;
	e->ret = ret;
	e->epfd = w->epfd;
	e->maxevents = w->maxevents;
	e->syscall = w->syscall;
	e->nr = 0;
	/* struct epoll_event is packed on x86-64: 12 bytes, data at offset 4. */
	for (int i = 0; i < EW_MAX_EVENTS; i++) {
		if (i >= ret)
			break;
		if (bpf_probe_read_user(raw, sizeof(raw), (void *)(w->events + i * 12)))
			break;
		e->ev[i].events = *(__u32 *)&raw[0];
		e->ev[i].data = *(__u64 *)&raw[4];
		e->nr = i + 1;
	}
	bpf_map_delete_elem(&waiting, &tid);
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

/* ---- the socket event in progress, per CPU ---- */

static __always_inline void remember(__u32 kind, struct sock *sk)
{
	struct src_slot *sl = slot_for(kind);

	if (!sl)
		return;
	sl->sk = (__u64)sk;
	sl->seq++;
	sl->ts = bpf_ktime_get_ns();
}

SEC("raw_tp/sk_data_ready")
int BPF_PROG(ew_data_ready, struct sock *sk)
{
	remember(0, sk);
	return 0;
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(ew_set_state, struct sock *sk)
{
	remember(1, sk);
	return 0;
}

/* The socket callback running on this CPU, per context level (kprobe and
 * fentry backends). `seq` counts calls; `depth` is non-zero inside one. */
struct sock_cb {
	__u64 seq;
	__u32 depth;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LEVELS);
	__type(key, __u32);
	__type(value, struct sock_cb);
} sock_cbs SEC(".maps");

static __always_inline struct sock_cb *sock_cb_now(void)
{
	__u32 key = softirq_now() ? 1 : 0;

	return bpf_map_lookup_elem(&sock_cbs, &key);
}

static __always_inline void sock_cb_enter(void)
{
	struct sock_cb *c = sock_cb_now();

	if (c && c->depth++ == 0)
		c->seq++;
}

static __always_inline void sock_cb_exit(void)
{
	struct sock_cb *c = sock_cb_now();

	if (c && c->depth)
		c->depth--;
}

SEC("fentry/sock_def_readable")
int BPF_PROG(ew_fentry_readable) { sock_cb_enter(); return 0; }
SEC("fexit/sock_def_readable")
int BPF_PROG(ew_fexit_readable) { sock_cb_exit(); return 0; }
SEC("fentry/sock_def_wakeup")
int BPF_PROG(ew_fentry_wakeup) { sock_cb_enter(); return 0; }
SEC("fexit/sock_def_wakeup")
int BPF_PROG(ew_fexit_wakeup) { sock_cb_exit(); return 0; }
SEC("kprobe/sock_def_readable")
int BPF_KPROBE(ew_kprobe_readable) { sock_cb_enter(); return 0; }
SEC("kretprobe/sock_def_readable")
int BPF_KRETPROBE(ew_kretprobe_readable) { sock_cb_exit(); return 0; }
SEC("kprobe/sock_def_wakeup")
int BPF_KPROBE(ew_kprobe_wakeup) { sock_cb_enter(); return 0; }
SEC("kretprobe/sock_def_wakeup")
int BPF_KRETPROBE(ew_kretprobe_wakeup) { sock_cb_exit(); return 0; }

/* The kprobe/fentry backend: the epitem being signalled. Inside a socket
 * callback, every call belongs to that call's group. Elsewhere, consecutive
 * calls on one CPU for the same file within a few microseconds are taken
 * as one wake-up loop over that file's wait queue. */
static __always_inline void epitem_enter(wait_queue_entry_t *wait)
{
	struct eppoll_entry *pwq;
	struct epitem *epi;
	struct src_slot *sl = slot_for(0);
	struct sock_cb *cb = sock_cb_now();
	struct ew_stats *s = kd_stats();
	__u64 now = bpf_ktime_get_ns();
	struct file *file;

	if (!sl)
		return;
	if (s)
		__sync_fetch_and_add(&s->epitems, 1);
	pwq = (void *)wait - bpf_core_field_offset(struct eppoll_entry, wait);
	epi = BPF_CORE_READ(pwq, base);
	file = BPF_CORE_READ(epi, ffd.file);
	if (cb && cb->depth) {
		if (cb->seq != sl->cb_seq || (__u64)file != sl->file)
			sl->seq++;
		sl->cb_seq = cb->seq;
	} else {
		if ((__u64)file != sl->file || now - sl->ts > 20000 || sl->cb_seq)
			sl->seq++;
		sl->cb_seq = 0;
	}
	sl->file = (__u64)file;
	sl->ts = now;
	sl->fd = BPF_CORE_READ(epi, ffd.fd);
	sl->events = BPF_CORE_READ(epi, event.events);
	sl->data = BPF_CORE_READ(epi, event.data);
	sl->sk = (__u64)file_sock(file);
	sl->active = 1;
}

static __always_inline void epitem_exit(void)
{
	struct src_slot *sl = slot_for(0);

	if (sl)
		sl->active = 0;
}

SEC("fentry/ep_poll_callback")
int BPF_PROG(ew_fentry_epcb, wait_queue_entry_t *wait)
{
	epitem_enter(wait);
	return 0;
}

SEC("fexit/ep_poll_callback")
int BPF_PROG(ew_fexit_epcb, wait_queue_entry_t *wait)
{
	epitem_exit();
	return 0;
}

SEC("kprobe/ep_poll_callback")
int BPF_KPROBE(ew_kprobe_epcb, wait_queue_entry_t *wait)
{
	epitem_enter(wait);
	return 0;
}

SEC("kretprobe/ep_poll_callback")
int BPF_KRETPROBE(ew_kretprobe_epcb)
{
	epitem_exit();
	return 0;
}

/* ---- wake-ups ---- */

/* 1 if a is in [r[0], r[1]), without a branch: a branch per frame and
 * function multiplies the states the verifier walks (140,000 instructions
 * and 140 ms at load against 3,000 and 2 ms). With d = a - start, a is in
 * the range when d < len, the borrow of d - len, unless d wrapped (a below
 * start); kernel addresses are less than 2^63 apart. */
static __always_inline __u32 in_range(__u64 a, const __u64 *r)
{
	__u64 d = a - r[0], len = r[1] - r[0];

	return ((d - len) & ~d) >> 63;
}

SEC("raw_tp/sched_waking")
int BPF_PROG(ew_waking, struct task_struct *p)
{
	__u32 tid = BPF_CORE_READ(p, pid), key, level, zero = 0;
	__u32 via_ep = 0, via_readable = 0, via_wakeup = 0;
	struct ew_ksym_ranges *kr;
	__u64 pid_tgid, now;
	struct src_slot *sl = NULL;
	struct wait_state *w;
	struct ew_stats *s;
	struct ew_wake *e;
	int n;

	w = bpf_map_lookup_elem(&waiting, &tid);
	if (!w)
		return 0;
	s = kd_stats();
	e = kd_reserve(events, &scratch, EW_WAKE, sizeof(*e));
	if (!e) {
		count_lost();
		return 0;
	}
	now = bpf_ktime_get_ns();
	pid_tgid = bpf_get_current_pid_tgid();
	e->kind = EW_WAKE;
	e->tid = tid;
	e->ts = now;
	e->waker_pid = pid_tgid >> 32;
	e->waker_tid = (__u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	e->softirq = softirq_now();
	e->epfd = w->epfd;
	e->ep_fd = -1;
	e->ep_events = 0;
	e->ep_data = 0;
	e->file = 0;
	e->group = 0;
	e->source = EW_SRC_NONE;
	bpf_get_current_comm(e->waker_comm, sizeof(e->waker_comm));
	BPF_CORE_READ_INTO(&e->woken_comm, p, comm);
	__builtin_memset(&e->sock, 0, sizeof(e->sock));
	n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	e->stack_sz = n;
	if (n < 0 && s)
		__sync_fetch_and_add(&s->stack_failed, 1);

	level = e->softirq ? 1 : 0;
	if (epitem_backend) {
		key = level * 2;
		sl = bpf_map_lookup_elem(&slots, &key);
		kr = epitem_by_stack ? bpf_map_lookup_elem(&ksym_ranges, &zero) : NULL;
		if (sl && kr) {
			for (int i = 0; i < EW_MAX_STACK; i++) {
				if (i * 8 >= n)
					break;
				via_ep |= in_range(e->stack[i], kr->r[EW_KSYM_EP_POLL_CALLBACK]);
			}
		}
		if (sl && sl->active && (!epitem_by_stack || via_ep)) {
			e->source = EW_SRC_EPITEM;
			e->ep_fd = sl->fd;
			e->ep_events = sl->events;
			e->ep_data = sl->data;
			e->file = sl->file;
		} else {
			sl = NULL;
		}
	} else if ((kr = bpf_map_lookup_elem(&ksym_ranges, &zero))) {
		for (int i = 0; i < EW_MAX_STACK; i++) {
			__u64 a;

			if (i * 8 >= n)
				break;
			a = e->stack[i];
			via_ep |= in_range(a, kr->r[EW_KSYM_EP_POLL_CALLBACK]);
			via_readable |= in_range(a, kr->r[EW_KSYM_SOCK_DEF_READABLE]);
			via_wakeup |= in_range(a, kr->r[EW_KSYM_SOCK_DEF_WAKEUP]);
		}
		/* The innermost socket callback is the one that called
		 * ep_poll_callback; data-ready nests inside no state change. */
		if (via_ep && (via_readable || via_wakeup)) {
			key = level * 2 + (via_readable ? 0 : 1);
			sl = bpf_map_lookup_elem(&slots, &key);
			if (sl && sl->sk)
				e->source = via_readable ? EW_SRC_DATA_READY : EW_SRC_STATE_CHANGE;
			else
				sl = NULL;
		}
	}
	if (sl) {
		/* cpu in the top bits, slot kind and sequence below: unique. */
		e->group = ((__u64)(e->cpu + 1) << 48) | ((__u64)(key & 7) << 44) | (sl->seq & ((1ULL << 44) - 1));
		read_sock(&e->sock, (struct sock *)sl->sk);
	}
	w->woken_ts = now;
	w->group = e->group;
	if (s)
		__sync_fetch_and_add(&s->wakes, 1);
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

/* Woken, then back to sleep without leaving epoll_wait: the event it was
 * woken for was gone when it looked (taken by another thread). The sleep
 * in ep_poll is interruptible; ep->mtx sleeps are not and do not count. */
SEC("raw_tp/sched_switch")
int BPF_PROG(ew_switch, bool preempt, struct task_struct *prev)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct wait_state *w;
	struct ew_return *e;

	/* prev is current. Its state, as the classic event reported it:
	 * asleep interruptibly, not preempted on the way to sleep. */
	if ((pid_tgid >> 32) != targ_tgid)
		return 0;
	if (preempt || (kd_task_state(prev) & KD_TASK_REPORT) != TASK_INTERRUPTIBLE)
		return 0;
	w = bpf_map_lookup_elem(&waiting, &tid);
	if (!w || !w->woken_ts)
		return 0;
	e = kd_reserve(events, &scratch, EW_RESLEEP, sizeof(*e));
	if (!e) {
		count_lost();
		w->woken_ts = 0;
		return 0;
	}
	e->kind = EW_RESLEEP;
	e->tid = tid;
	e->ts = bpf_ktime_get_ns();
	e->enter_ts = w->enter_ts;
	e->woken_ts = w->woken_ts;
	e->group = w->group;
	e->ret = 0;
	e->epfd = w->epfd;
	e->maxevents = w->maxevents;
	e->syscall = w->syscall;
	e->nr = 0;
	w->woken_ts = 0;
	w->group = 0;
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

/* ---- connection life: accept, close, epoll_ctl ---- */

static __always_inline void remember_call(__u64 pid_tgid, __u64 a0, __u64 a1, __u64 a2, __u64 a3)
{
	__u32 tid = (__u32)pid_tgid;
	struct pending_call c = { a0, a1, a2, a3 };

	bpf_map_update_elem(&calls, &tid, &c, BPF_ANY);
}

static __always_inline struct ew_fd_event *fd_event(void *ctx, __u32 kind)
{
	struct ew_fd_event *e = kd_reserve(events, &scratch, kind, sizeof(*e));

	if (!e) {
		count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->ts = bpf_ktime_get_ns();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void fill_sock_of_fd(struct ew_fd_event *e, int fd)
{
	struct file *f = fd_file(fd);
	struct sock *sk = file_sock(f);

	if (sk) {
		e->is_sock = 1;
		read_sock(&e->sock, sk);
	} else if (f) {
		e->sock.ino = BPF_CORE_READ(f, f_inode, i_ino);
	}
}

static __always_inline int accept_exit(void *ctx, __u64 pid_tgid, long rc)
{
	__u32 tid = (__u32)pid_tgid;
	struct pending_call *c = bpf_map_lookup_elem(&calls, &tid);
	struct ew_fd_event *e;
	int ret = (int)rc, lfd;

	if (!c)
		return 0;
	lfd = (int)c->arg0;
	bpf_map_delete_elem(&calls, &tid);
	e = fd_event(ctx, EW_ACCEPT);
	if (!e)
		return 0;
	e->ret = ret;
	e->fd = ret;
	e->other_fd = lfd;
	if (ret >= 0)
		fill_sock_of_fd(e, ret);
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

static __always_inline int close_enter(void *ctx, int fd)
{
	struct ew_fd_event *e = fd_event(ctx, EW_CLOSE);

	if (!e)
		return 0;
	e->fd = fd;
	/* Decoded before the close, while the fd still names the socket. */
	fill_sock_of_fd(e, fd);
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

static __always_inline int ctl_exit(void *ctx, __u64 pid_tgid, long rc)
{
	__u32 tid = (__u32)pid_tgid;
	struct pending_call *c = bpf_map_lookup_elem(&calls, &tid);
	struct pending_call call;
	struct ew_fd_event *e;
	__u8 raw[12];

	if (!c)
		return 0;
	call = *c;
	bpf_map_delete_elem(&calls, &tid);
	if (rc != 0)
		return 0;
	e = fd_event(ctx, EW_CTL);
	if (!e)
		return 0;
	e->other_fd = (int)call.arg0;
	e->op = (__u32)call.arg1;
	e->fd = (int)call.arg2;
	if (e->op != EPOLL_CTL_DEL && call.arg3 && !bpf_probe_read_user(raw, sizeof(raw), (void *)call.arg3)) {
		e->events = *(__u32 *)&raw[0];
		e->data = *(__u64 *)&raw[4];
	}
	fill_sock_of_fd(e, e->fd);
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

/* ---- syscalls: one raw tracepoint each way, dispatched on the number ----
 * raw_syscalls fire for every syscall of the box, as the per-syscall
 * classic events did (those are filtered inside the same hook): the tgid
 * comes first, so another process's syscall costs one compare. */

SEC("raw_tp/sys_enter")
int BPF_PROG(ew_sys_enter, struct pt_regs *regs, long id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if ((pid_tgid >> 32) != targ_tgid)
		return 0;
	switch (id) {
	case NR_epoll_wait:
		return wait_enter(regs, pid_tgid, EW_SYS_EPOLL_WAIT);
	case NR_epoll_pwait:
		return wait_enter(regs, pid_tgid, EW_SYS_EPOLL_PWAIT);
	case NR_epoll_pwait2:
		return has_pwait2 ? wait_enter(regs, pid_tgid, EW_SYS_EPOLL_PWAIT2) : 0;
	case NR_accept:
	case NR_accept4:
		if (wanted_call(pid_tgid, regs))
			remember_call(pid_tgid, PT_REGS_PARM1_CORE_SYSCALL(regs), 0, 0, 0);
		return 0;
	case NR_close:
		return wanted_call(pid_tgid, regs) ? close_enter(ctx, (int)PT_REGS_PARM1_CORE_SYSCALL(regs)) : 0;
	case NR_epoll_ctl:
		if (wanted_call(pid_tgid, regs))
			remember_call(pid_tgid, PT_REGS_PARM1_CORE_SYSCALL(regs), PT_REGS_PARM2_CORE_SYSCALL(regs),
				      PT_REGS_PARM3_CORE_SYSCALL(regs), PT_REGS_PARM4_CORE_SYSCALL(regs));
		return 0;
	}
	return 0;
}

/* What was entered is in `waiting` or `calls`; the number at exit is the
 * one the call was entered with (orig_ax). */
SEC("raw_tp/sys_exit")
int BPF_PROG(ew_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if ((pid_tgid >> 32) != targ_tgid)
		return 0;
	switch (BPF_CORE_READ(regs, orig_ax)) {
	case NR_epoll_wait:
	case NR_epoll_pwait:
	case NR_epoll_pwait2:
		return wait_exit(ctx, pid_tgid, ret);
	case NR_accept:
	case NR_accept4:
		return accept_exit(ctx, pid_tgid, ret);
	case NR_epoll_ctl:
		return ctl_exit(ctx, pid_tgid, ret);
	}
	return 0;
}

/* ---- --uprobe: a user function's arguments in the timeline ---- */

SEC("uprobe")
int ew_uprobe(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct ew_uprobe *e;

	if (!is_target(pid_tgid))
		return 0;
	e = kd_reserve(events, &scratch, EW_UPROBE, sizeof(*e));
	if (!e) {
		count_lost();
		return 0;
	}
	e->kind = EW_UPROBE;
	e->tid = (__u32)pid_tgid;
	e->ts = bpf_ktime_get_ns();
	e->cookie = bpf_get_attach_cookie(ctx);
	e->cpu = bpf_get_smp_processor_id();
	e->args[0] = PT_REGS_PARM1(ctx);
	e->args[1] = PT_REGS_PARM2(ctx);
	e->args[2] = PT_REGS_PARM3(ctx);
	e->args[3] = PT_REGS_PARM4(ctx);
	e->args[4] = PT_REGS_PARM5(ctx);
	e->args[5] = PT_REGS_PARM6(ctx);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (kd_submit(ctx, events, e, sizeof(*e)))
		count_lost();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

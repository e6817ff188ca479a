// SPDX-License-Identifier: GPL-2.0
/* offwaketime: how long tasks were blocked, with the stacks of the sleeper
 * and of whoever woke it.
 *
 * A sleep starts when a task is switched out not runnable, is ended by a
 * wakeup, and the task runs again later:
 *
 *   switch-out ---- blocked ----> wakeup ---- run-queue delay ----> switch-in
 *
 * Each backend feeds the same three steps:
 * - switch-out: remember when, and (while the sleeper is still current,
 *   which is the only time its user stack can be read) its stacks;
 * - wakeup (sched_waking, or try_to_wake_up with kprobes): runs in the
 *   waker's context, so the waker's stacks are taken there, or the
 *   interrupt context it runs in is named instead of the interrupted task;
 * - switch-in: add blocked and run-queue time to the (sleeper, waker) key.
 *
 * Not sched_wakeup: for a wakeup queued to another CPU it fires there, in
 * an unrelated task's context. The wakeup record is not cleared at
 * switch-out, because a wakeup can run on another CPU after the sleeper
 * committed to blocking and before its sched_switch fired.
 *
 * Filters are read-only data, so the verifier drops what is unused; with
 * -p an unrelated task costs a few compares and no map operation. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kdiag.bpf.h"
#include "offwaketime.h"

const volatile __u32 n_tgids = 0;
const volatile __u32 tgids[OWT_MAX_FILTER] = {};
const volatile __u32 n_tids = 0;
const volatile __u32 tids[OWT_MAX_FILTER] = {};
const volatile __u32 thread_kind = 0; /* 0 all, 1 user threads, 2 kernel threads */
const volatile bool preempted_only = false; /* --state 0 */
const volatile __u32 state_mask = 0xffffffff;
const volatile __u64 min_ns = 1000;
const volatile __u64 max_ns = ~0ULL;
const volatile bool want_kstack = true;
const volatile bool want_ustack = true;
/* sched_switch passes prev_state since 5.18; before, read the task. */
const volatile bool prev_state_arg = true;

#define PF_KTHREAD 0x00200000
#define TASK_RUNNING 0
#define EXIT_DEAD 0x10
#define EXIT_ZOMBIE 0x20
#define TASK_DEAD 0x80
#define TASK_IDLE 0x402
#define SOFTIRQ_OFFSET 0x100
#define HARDIRQ_MASK 0xf0000
#define NMI_MASK 0xf00000
/* A wakeup this much older than the switch-out it is paired with cannot be
 * the race described above; it belongs to something earlier. */
#define RACE_WINDOW_NS 5000000ULL

struct off_rec {
	__u64 ts;
	__s32 kstack;
	__s32 ustack;
	__u32 tgid;
	__u32 runnable;
	char comm[OWT_COMM_LEN];
};

struct wake_rec {
	__u64 ts;
	__s32 kstack;
	__s32 ustack;
	__u32 pid;
	__u32 tgid;
	__u32 ctx;
	__u32 softirq;
	char comm[OWT_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
	__uint(max_entries, 16384); /* --stack-storage-size */
} stacks SEC(".maps");

/* Sleeping tracked tasks, by thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct off_rec);
} offs SEC(".maps");

/* LRU: a wakeup of a task whose sleep was not tracked is never consumed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct wake_rec);
} wakes SEC(".maps");

/* Preallocated (about 5 MB), never BPF_F_NO_PREALLOC: a new key is made
 * in sched_switch, with the run-queue lock held. Before 6.1 (BPF's own
 * allocator) a hash map without preallocation takes it from kmalloc there,
 * whose page allocator may wake kswapd, a wakeup that wants that lock
 * again; 5.10's verifier warns "trace type BPF program uses run-time
 * allocation" for exactly this. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct owt_key);
	__type(value, struct owt_val);
} counts SEC(".maps");

KD_STATS(owt_stats);

/* Per CPU: inside how many hardirq handlers, and which softirq vector is
 * being served (vector + 1, 0 for none). Kept from the irq tracepoints
 * because preempt_count is a per-CPU variable that BPF can only reach
 * through kallsyms, and kernels built without CONFIG_KALLSYMS_ALL (the
 * host is one) do not list it. */
struct irq_state {
	__u32 hardirq;
	__u32 softirq;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct irq_state);
} irq_ctx SEC(".maps");

struct owt_key owt_key_layout = {};
struct owt_val owt_val_layout = {};
struct owt_stats owt_stats_layout = {};

static __always_inline struct irq_state *irq_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&irq_ctx, &zero);
}

static __always_inline bool wanted(__u32 tgid, __u32 pid, __u32 flags)
{
	if (thread_kind == 1 && (flags & PF_KTHREAD))
		return false;
	if (thread_kind == 2 && !(flags & PF_KTHREAD))
		return false;
	if (n_tgids) {
		for (int i = 0; i < OWT_MAX_FILTER; i++) {
			if (i >= n_tgids)
				return false;
			if (tgids[i] == tgid)
				return true;
		}
		return false;
	}
	if (n_tids) {
		for (int i = 0; i < OWT_MAX_FILTER; i++) {
			if (i >= n_tids)
				return false;
			if (tids[i] == pid)
				return true;
		}
		return false;
	}
	return true;
}

/* Only the tid filter can be applied without the task's tgid. */
static __always_inline bool tid_may_be_wanted(__u32 pid)
{
	if (!n_tids)
		return true;
	for (int i = 0; i < OWT_MAX_FILTER; i++) {
		if (i >= n_tids)
			return false;
		if (tids[i] == pid)
			return true;
	}
	return false;
}

static __always_inline __s32 stack_of_current(void *ctx, __u64 flags)
{
	long id = bpf_get_stackid(ctx, &stacks, flags);

	if (id < 0)
		KD_COUNT_STACK_FAILURE(id);
	return id;
}

static __always_inline void stacks_of_current(void *ctx, __s32 *k, __s32 *u, bool user_ok)
{
	*k = want_kstack ? stack_of_current(ctx, 0) : OWT_NOT_TAKEN;
	*u = want_ustack && user_ok ? stack_of_current(ctx, BPF_F_USER_STACK) : OWT_NOT_TAKEN;
}

static __always_inline __u32 current_flags(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(t, flags);
}

/* Is a switch-out with this raw state one we track? */
static __always_inline bool state_wanted(__u32 state, bool runnable)
{
	if (runnable)
		return preempted_only;
	/* A dying task's last switch: it never runs again. */
	if (state & (TASK_DEAD | EXIT_DEAD | EXIT_ZOMBIE))
		return false;
	return !preempted_only && (state & state_mask);
}

/* `current_is_prev`: tracepoints fire before the switch, so prev is current
 * and its stacks are taken now. With kprobes, switch-out is seen after the
 * switch and the sleeper's stacks are taken when it runs again (its kernel
 * stack is unchanged until then, its user stack too). */
static __always_inline void switch_out(void *ctx, struct task_struct *prev, __u32 pid, __u32 tgid,
				       __u32 flags, __u32 state, bool runnable, bool current_is_prev)
{
	struct off_rec rec = {};

	if (!state_wanted(state, runnable) || !wanted(tgid, pid, flags))
		return;
	rec.ts = bpf_ktime_get_ns();
	rec.tgid = tgid;
	rec.runnable = runnable;
	if (current_is_prev) {
		bpf_get_current_comm(rec.comm, sizeof(rec.comm));
		stacks_of_current(ctx, &rec.kstack, &rec.ustack, !(flags & PF_KTHREAD));
	} else {
		BPF_CORE_READ_STR_INTO(&rec.comm, prev, comm);
		rec.kstack = rec.ustack = OWT_NOT_TAKEN;
	}
	if (bpf_map_update_elem(&offs, &pid, &rec, BPF_ANY))
		KD_COUNT(sleeps_dropped);
	else
		KD_COUNT(sleeps);
}

static __always_inline __u32 waker_context(__u32 *vec)
{
	struct irq_state *irq = irq_state();

	*vec = ~0U;
	if (!irq)
		return OWT_CTX_TASK;
	if (irq->hardirq)
		return OWT_CTX_HARDIRQ;
	if (irq->softirq) {
		*vec = irq->softirq - 1;
		return OWT_CTX_SOFTIRQ;
	}
	return OWT_CTX_TASK;
}

static __always_inline void waking(void *ctx, __u32 pid)
{
	struct wake_rec rec = {};
	struct off_rec *off;
	__u64 pid_tgid;

	rec.ts = bpf_ktime_get_ns();
	rec.kstack = rec.ustack = OWT_NOT_TAKEN;
	/* A blocked time outside -m/-M is not reported: skip the stacks. */
	off = bpf_map_lookup_elem(&offs, &pid);
	if (off && !off->runnable && (rec.ts - off->ts < min_ns || rec.ts - off->ts > max_ns))
		goto store;
	rec.ctx = waker_context(&rec.softirq);
	if (rec.ctx == OWT_CTX_TASK) {
		pid_tgid = bpf_get_current_pid_tgid();
		rec.pid = (__u32)pid_tgid;
		rec.tgid = pid_tgid >> 32;
		bpf_get_current_comm(rec.comm, sizeof(rec.comm));
		stacks_of_current(ctx, &rec.kstack, &rec.ustack, !(current_flags() & PF_KTHREAD));
	} else if (want_kstack) {
		/* The interrupt's kernel stack; user space belongs to whoever
		 * was interrupted. */
		rec.kstack = stack_of_current(ctx, 0);
	}
store:
	if (bpf_map_update_elem(&wakes, &pid, &rec, BPF_ANY))
		KD_COUNT(wakeups_dropped);
	else
		KD_COUNT(wakeups);
}

static __always_inline void add(struct owt_key *key, __u64 blocked, __u64 runq)
{
	struct owt_val zero = {}, *v;

	v = bpf_map_lookup_elem(&counts, key);
	if (!v) {
		bpf_map_update_elem(&counts, key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&counts, key);
		if (!v) {
			KD_COUNT(keys_dropped);
			return;
		}
	}
	__sync_fetch_and_add(&v->blocked_ns, blocked);
	__sync_fetch_and_add(&v->runq_ns, runq);
	__sync_fetch_and_add(&v->count, 1);
}

/* `current_is_next`: with kprobes the sleeper is current again here. */
static __always_inline void switch_in(void *ctx, __u32 pid, bool current_is_next)
{
	struct owt_key key = {};
	struct wake_rec *w = NULL;
	struct off_rec *off;
	__u64 now, blocked, runq, judged;

	off = bpf_map_lookup_elem(&offs, &pid);
	if (!off)
		return;
	now = bpf_ktime_get_ns();
	key.w_kstack = key.w_ustack = OWT_NOT_TAKEN;
	key.w_softirq = ~0U;
	if (off->runnable) {
		key.w_ctx = OWT_CTX_PREEMPTED;
		blocked = 0;
		runq = now - off->ts;
		judged = runq;
	} else {
		w = bpf_map_lookup_elem(&wakes, &pid);
		if (w && w->ts + RACE_WINDOW_NS < off->ts)
			w = NULL;
		if (!w) {
			KD_COUNT(unseen_wakeups);
			key.w_ctx = OWT_CTX_UNSEEN;
			blocked = now - off->ts;
			runq = 0;
		} else if (w->ts >= off->ts) {
			blocked = w->ts - off->ts;
			runq = now - w->ts;
		} else {
			/* Woken while it was still switching out. */
			blocked = 0;
			runq = now - off->ts;
		}
		judged = blocked;
	}
	if (judged < min_ns || judged > max_ns) {
		KD_COUNT(filtered_time);
		goto done;
	}
	key.t_pid = pid;
	key.t_tgid = off->tgid;
	__builtin_memcpy(key.t_comm, off->comm, sizeof(key.t_comm));
	if (current_is_next)
		stacks_of_current(ctx, &key.t_kstack, &key.t_ustack, !(current_flags() & PF_KTHREAD));
	else {
		key.t_kstack = off->kstack;
		key.t_ustack = off->ustack;
	}
	if (w) {
		key.w_pid = w->pid;
		key.w_tgid = w->tgid;
		key.w_ctx = w->ctx;
		key.w_softirq = w->softirq;
		key.w_kstack = w->kstack;
		key.w_ustack = w->ustack;
		__builtin_memcpy(key.w_comm, w->comm, sizeof(key.w_comm));
	}
	add(&key, blocked, runq);
	KD_COUNT(switch_ins);
done:
	bpf_map_delete_elem(&offs, &pid);
	if (w)
		bpf_map_delete_elem(&wakes, &pid);
}

/* ---- tp_btf: typed task pointers, the cheapest path ---- */

SEC("tp_btf/sched_switch")
int owt_switch_btf(unsigned long long *ctx)
{
	bool preempt = ctx[0];
	struct task_struct *prev = (void *)ctx[1], *next = (void *)ctx[2];
	__u32 state;

	if (prev_state_arg)
		state = ctx[3];
	else
		state = kd_task_state(prev);
	switch_out(ctx, prev, prev->pid, prev->tgid, prev->flags, state,
		   preempt || state == TASK_RUNNING, true);
	if (wanted(next->tgid, next->pid, next->flags))
		switch_in(ctx, next->pid, false);
	return 0;
}

SEC("tp_btf/sched_waking")
int owt_waking_btf(unsigned long long *ctx)
{
	struct task_struct *p = (void *)ctx[0];

	if (wanted(p->tgid, p->pid, p->flags))
		waking(ctx, p->pid);
	return 0;
}

/* ---- raw_tp: the same arguments, read with CO-RE ---- */

SEC("raw_tp/sched_switch")
int owt_switch_raw(struct bpf_raw_tracepoint_args *ctx)
{
	bool preempt = ctx->args[0];
	struct task_struct *prev = (void *)ctx->args[1], *next = (void *)ctx->args[2];
	__u32 state;

	if (prev_state_arg)
		state = ctx->args[3];
	else
		state = kd_task_state(prev);
	switch_out(ctx, prev, BPF_CORE_READ(prev, pid), BPF_CORE_READ(prev, tgid), BPF_CORE_READ(prev, flags),
		   state, preempt || state == TASK_RUNNING, true);
	if (wanted(BPF_CORE_READ(next, tgid), BPF_CORE_READ(next, pid), BPF_CORE_READ(next, flags)))
		switch_in(ctx, BPF_CORE_READ(next, pid), false);
	return 0;
}

SEC("raw_tp/sched_waking")
int owt_waking_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *p = (void *)ctx->args[0];

	if (wanted(BPF_CORE_READ(p, tgid), BPF_CORE_READ(p, pid), BPF_CORE_READ(p, flags)))
		waking(ctx, BPF_CORE_READ(p, pid));
	return 0;
}

/* ---- classic tracepoints: records with thread ids only ---- */

/* The record's prev_state is the "report" form: one bit per letter of ps
 * (S=1 D=2 T=4 t=8 X=16 Z=32 P=64 I=128), TASK_REPORT_MAX (0x100, or
 * 0x800 before 4.14) or more when preempted. The low bits equal the raw
 * state bits; I is TASK_IDLE. */
static __always_inline __u32 raw_state_of_report(long report, bool *runnable)
{
	*runnable = report == 0 || report >= 0x100;
	if (report & 0x80)
		return TASK_IDLE;
	return report & 0x7f;
}

SEC("tracepoint/sched/sched_switch")
int owt_switch_tp(struct trace_event_raw_sched_switch *ctx)
{
	struct task_struct *prev = (struct task_struct *)bpf_get_current_task();
	__u32 state, next_pid = ctx->next_pid;
	bool runnable;

	state = raw_state_of_report(ctx->prev_state, &runnable);
	switch_out(ctx, prev, ctx->prev_pid, bpf_get_current_pid_tgid() >> 32, current_flags(), state, runnable,
		   true);
	if (tid_may_be_wanted(next_pid))
		switch_in(ctx, next_pid, false);
	return 0;
}

SEC("tracepoint/sched/sched_waking")
int owt_waking_tp(struct trace_event_raw_sched_wakeup_template *ctx)
{
	__u32 pid = ctx->pid;

	/* Without the wakee's tgid, a tracked sleep is the filter. */
	if (tid_may_be_wanted(pid) && bpf_map_lookup_elem(&offs, &pid))
		waking(ctx, pid);
	return 0;
}

/* ---- interrupt context, for naming interrupt wakers ----
 * One program per edge, attached by userspace to every hardirq entry
 * (irq_handler_entry, local_timer_entry, irq_work_entry...) or exit. */

static __always_inline void hardirq_edge(bool enter)
{
	struct irq_state *irq = irq_state();

	if (!irq)
		return;
	if (enter)
		irq->hardirq++;
	else if (irq->hardirq) /* an exit whose entry came before attach */
		irq->hardirq--;
}

static __always_inline void softirq_edge(bool enter, __u32 vec)
{
	struct irq_state *irq = irq_state();

	if (irq)
		irq->softirq = enter ? vec + 1 : 0;
}

SEC("raw_tp")
int owt_hardirq_enter_raw(void *ctx)
{
	hardirq_edge(true);
	return 0;
}

SEC("raw_tp")
int owt_hardirq_exit_raw(void *ctx)
{
	hardirq_edge(false);
	return 0;
}

SEC("raw_tp/softirq_entry")
int owt_softirq_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
	softirq_edge(true, ctx->args[0]);
	return 0;
}

SEC("raw_tp/softirq_exit")
int owt_softirq_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	softirq_edge(false, 0);
	return 0;
}

SEC("tp")
int owt_hardirq_enter_tp(void *ctx)
{
	hardirq_edge(true);
	return 0;
}

SEC("tp")
int owt_hardirq_exit_tp(void *ctx)
{
	hardirq_edge(false);
	return 0;
}

SEC("tracepoint/irq/softirq_entry")
int owt_softirq_enter_tp(struct trace_event_raw_softirq *ctx)
{
	softirq_edge(true, ctx->vec);
	return 0;
}

SEC("tracepoint/irq/softirq_exit")
int owt_softirq_exit_tp(struct trace_event_raw_softirq *ctx)
{
	softirq_edge(false, 0);
	return 0;
}

/* ---- kprobes: for kernels without the above ---- */

/* finish_task_switch(prev) runs in next's context after the switch.
 * Attached by name from userspace: the symbol is often a compiler clone
 * (finish_task_switch.isra.0). */
SEC("kprobe")
int BPF_KPROBE(owt_switch_kprobe, struct task_struct *prev)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 state = kd_task_state(prev), pid = pid_tgid;

	switch_out(ctx, prev, BPF_CORE_READ(prev, pid), BPF_CORE_READ(prev, tgid), BPF_CORE_READ(prev, flags),
		   state, state == TASK_RUNNING, false);
	if (wanted(pid_tgid >> 32, pid, current_flags()))
		switch_in(ctx, pid, true);
	return 0;
}

SEC("kprobe/try_to_wake_up")
int BPF_KPROBE(owt_waking_kprobe, struct task_struct *p)
{
	/* try_to_wake_up is called for running tasks too; sched_waking is
	 * only emitted for tasks that are sleeping. */
	if (kd_task_state(p) == TASK_RUNNING)
		return 0;
	if (wanted(BPF_CORE_READ(p, tgid), BPF_CORE_READ(p, pid), BPF_CORE_READ(p, flags)))
		waking(ctx, BPF_CORE_READ(p, pid));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

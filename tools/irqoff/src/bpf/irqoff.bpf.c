// SPDX-License-Identifier: GPL-2.0
/* irqoff: find windows in which a CPU ran with interrupts disabled.
 *
 * irqoff_tick runs from a cpu-clock perf event, an hrtimer that cannot fire
 * while interrupts are off. It stamps the time of each run; a gap longer
 * than one period plus the threshold means interrupts were off for at
 * least (gap - period): the last sample before the window came up to one
 * period before it started, so subtracting the period never reports a
 * window shorter than the threshold. Its stack is the code that just
 * re-enabled interrupts.
 *
 * irqoff_nmi (hardware mode) runs from a cycles counter overflow, an NMI
 * that fires even with interrupts off. When it finds the stamp stale it
 * captures the stack of the code holding interrupts off, and, if the
 * window is still open after several thresholds, emits an "ongoing"
 * record. The window itself is reported once, by irqoff_tick, when it
 * ends, with its final length.
 *
 * irqoff_idle keeps per-CPU idle time, which is subtracted from each gap:
 * see below. Under KVM, so is the steal time: the host descheduling a vCPU
 * makes its timer late exactly as interrupts being off would, and the guest
 * cannot tell the two apart without the steal clock the host keeps per
 * vCPU. The arithmetic is in window.h. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kdiag.bpf.h"
#include "irqoff.h"
#include "window.h"

const volatile __u64 period_ns = 1000000;
const volatile __u64 threshold_ns = 10000000;
const volatile __u64 ongoing_ns = 50000000;
const volatile __u32 max_per_sec = 0; /* reports per CPU per second, 0: no limit */
const volatile bool hw_mode = false;
/* The KVM steal clock is there to read (userspace asked the CPU and found
 * where it lives). */
const volatile bool steal_on = false;
/* Per-CPU offset of steal_time minus that of runqueues, from BTF; 0 when
 * userspace filled steal_at itself. */
const volatile __s64 steal_rq_delta = 0;

struct cpu_state {
	__u64 last;      /* time of the latest cpu-clock run */
	__u64 idle_since; /* when this CPU went idle, 0 while it is not */
	__u64 idle_ns;    /* idle time of completed idle periods */
	__u64 idle_at_last; /* cumulative idle time at `last` */
	__u64 steal_at_last;      /* steal clock at `last` */
	__u64 steal_idle_since;   /* steal clock when this CPU went idle, 0: unknown */
	__u64 idle_steal_ns;      /* steal time inside completed idle periods */
	__u64 idle_steal_at_last; /* cumulative idle steal time at `last` */
	__u32 steal_valid;        /* steal_at_last is a real reading */
	__u64 win_stamp; /* `last` of the window the NMI flagged */
	__u64 rl_sec;
	__u32 rl_count;
	__u32 ongoing_sent;
	__u32 holder_pid;
	__u32 holder_tid;
	__u32 holder_user;
	__s32 holder_stack_sz;
	char holder_comm[IRQOFF_COMM_LEN];
	__u64 holder_stack[IRQOFF_MAX_STACK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct irqoff_stats);
} stats SEC(".maps");

/* Address of this CPU's struct kvm_steal_time, 0 until known. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} steal_at SEC(".maps");

/* Perf-buffer path only: slot 0 for irqoff_tick, slot 1 for the NMI. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct irqoff_event);
} scratch SEC(".maps");

/* Separate channels: a ring buffer written from NMI and from the hrtimer
 * on one CPU can stall the hrtimer's writer. */
KD_CHANNEL(events, 256 * 1024);
KD_CHANNEL(nmi_events, 64 * 1024);

/* Makes the event layout part of BTF, so the skeleton exports it. */
struct irqoff_event irqoff_event_layout = {};
struct irqoff_stats irqoff_stats_layout = {};

/* Cumulative idle time of this CPU up to `now`. */
static __always_inline __u64 idle_until(struct cpu_state *st, __u64 now)
{
	__u64 since = st->idle_since;

	return st->idle_ns + (since && now > since ? now - since : 0);
}

/* Did the sample interrupt user code? The privilege level is in the low
 * bits of the saved CS. The registers open the context in the ptrace
 * layout, CS in slot 17 on every x86-64 kernel; read by slot, 8 bytes as
 * the verifier wants, not by name: vmlinux.h's pt_regs (6.9+, FRED) has CS
 * in a union, and a CO-RE relocation to a member of it fails to load on
 * older kernels. */
#define IRQOFF_CS_SLOT 17

static __always_inline __u32 in_user(struct bpf_perf_event_data *ctx)
{
	return (((const __u64 *)ctx)[IRQOFF_CS_SLOT] & 3) == 3;
}

static __always_inline __u64 sub0(__u64 a, __u64 b)
{
	return a > b ? a - b : 0;
}

/* This CPU's steal clock: where userspace said (the typed per-CPU symbol),
 * or found from this CPU's runqueue, which the current task's fair-class
 * entity points into, and the two variables' per-CPU offsets. */
static __always_inline const struct kvm_steal_time *steal_clock(void)
{
	struct task_struct *t;
	__u32 zero = 0;
	struct rq *rq;
	__u64 *at;

	at = bpf_map_lookup_elem(&steal_at, &zero);
	if (!at)
		return NULL;
	if (!*at && steal_rq_delta && bpf_core_field_exists(struct sched_entity, cfs_rq) &&
	    bpf_core_field_exists(struct cfs_rq, rq) && bpf_core_field_exists(struct rq, cpu)) {
		t = (struct task_struct *)bpf_get_current_task();
		rq = BPF_CORE_READ(t, se.cfs_rq, rq);
		if (rq && BPF_CORE_READ(rq, cpu) == (int)bpf_get_smp_processor_id())
			*at = (__u64)rq + steal_rq_delta;
	}
	return (const struct kvm_steal_time *)*at;
}

/* The steal clock now; false when there is one and it cannot be read. */
static __always_inline bool steal_read(__u64 *v)
{
	const struct kvm_steal_time *src;

	*v = 0;
	if (!steal_on)
		return true;
	src = steal_clock();
	return src && irqoff_read_steal(src, v);
}

/* Cumulative steal time inside idle periods up to steal clock `steal`: a
 * halted vCPU the host is slow to wake is counted as idle already. */
static __always_inline __u64 idle_steal_until(struct cpu_state *st, __u64 steal)
{
	__u64 since = st->steal_idle_since;

	return st->idle_steal_ns + (st->idle_since && since ? sub0(steal, since) : 0);
}

/* Steal time since `last` that idle time does not already account for. */
static __always_inline __u64 steal_outside_idle(struct cpu_state *st, __u64 steal)
{
	return sub0(sub0(steal, st->steal_at_last), sub0(idle_steal_until(st, steal), st->idle_steal_at_last));
}

/* A halted CPU has interrupts enabled, and under a hypervisor a halted
 * vCPU is often woken late: a timer that fires late because the CPU was
 * idle is not an interrupts-off window. Track idle time per CPU so that
 * it can be taken out of each gap. */
SEC("tracepoint/power/cpu_idle")
int irqoff_idle(struct trace_event_raw_cpu *ctx)
{
	struct cpu_state *st;
	__u32 zero = 0;
	__u64 now, steal;
	bool ok;

	st = bpf_map_lookup_elem(&state, &zero);
	if (!st)
		return 0;
	now = bpf_ktime_get_ns();
	ok = steal_read(&steal);
	if (ctx->state == (__u32)-1) {
		if (st->idle_since) {
			st->idle_ns += now - st->idle_since;
			if (ok && st->steal_idle_since)
				st->idle_steal_ns += sub0(steal, st->steal_idle_since);
			st->idle_since = 0;
		}
	} else if (!st->idle_since) {
		st->idle_since = now;
		st->steal_idle_since = ok ? steal : 0;
	}
	return 0;
}

/* Fill the common part of a record; the holder saved by the NMI, if any,
 * is who the window belongs to. */
static __always_inline void fill(struct irqoff_event *e, struct cpu_state *st, __u32 kind,
				 __u64 now, __u64 start, __u64 lat, __u64 steal, bool holder)
{
	e->ts_ns = now;
	e->start_ns = start;
	e->lat_ns = lat;
	e->steal_ns = steal;
	e->cpu = bpf_get_smp_processor_id();
	e->kind = kind;
	if (!holder)
		return;
	e->stack_of = IRQOFF_HOLDER;
	e->pid = st->holder_pid;
	e->tid = st->holder_tid;
	e->user = st->holder_user;
	e->stack_sz = st->holder_stack_sz;
	__builtin_memcpy(e->comm, st->holder_comm, sizeof(e->comm));
	__builtin_memcpy(e->stack, st->holder_stack, sizeof(e->stack));
}

static __always_inline bool rate_limited(struct cpu_state *st, __u64 now)
{
	__u64 sec;

	if (!max_per_sec)
		return false;
	sec = now / 1000000000ULL;
	if (st->rl_sec != sec) {
		st->rl_sec = sec;
		st->rl_count = 0;
	}
	return ++st->rl_count > max_per_sec;
}

SEC("perf_event")
int irqoff_tick(struct bpf_perf_event_data *ctx)
{
	struct irqoff_event *e;
	struct cpu_state *st;
	struct irqoff_stats *s;
	__u64 now, prev, lat, pid_tgid, idle, idle_gap, steal, steal_gap = 0;
	__u32 zero = 0, slot, verdict;
	bool flagged;

	st = bpf_map_lookup_elem(&state, &zero);
	s = bpf_map_lookup_elem(&stats, &zero);
	if (!st || !s)
		return 0;
	now = bpf_ktime_get_ns();
	prev = st->last;
	idle = idle_until(st, now);
	idle_gap = idle - st->idle_at_last;
	st->idle_at_last = idle;
	st->last = now;
	s->samples++;
	if (steal_read(&steal)) {
		/* After a failed read the next gap has no steal to go by. */
		if (st->steal_valid) {
			steal_gap = steal_outside_idle(st, steal);
			s->steal_ns += sub0(steal, st->steal_at_last);
		}
		st->idle_steal_at_last = idle_steal_until(st, steal);
		st->steal_at_last = steal;
		st->steal_valid = 1;
	} else {
		st->steal_valid = 0;
		s->steal_failed++;
	}
	if (!prev)
		return 0;
	verdict = irqoff_judge(now - prev, period_ns, idle_gap, steal_gap, threshold_ns, &lat);
	if (verdict == IRQOFF_STEAL_ONLY)
		s->steal_explained++;
	if (verdict != IRQOFF_OVER)
		return 0;

	s->windows++;
	s->lat_sum_ns += lat;
	if (lat > s->lat_max_ns)
		s->lat_max_ns = lat;
	slot = kd_log2(lat / 1000);
	if (slot >= IRQOFF_HIST_SLOTS)
		slot = IRQOFF_HIST_SLOTS - 1;
	s->hist[slot]++;

	flagged = hw_mode && st->win_stamp == prev;
	if (rate_limited(st, now)) {
		s->rate_limited++;
		return 0;
	}
	e = kd_reserve(events, &scratch, 0, sizeof(*e));
	if (!e) {
		s->lost++;
		return 0;
	}
	fill(e, st, IRQOFF_WINDOW, now, prev, lat, steal_gap, flagged);
	if (!flagged) {
		e->stack_of = IRQOFF_REENABLER;
		pid_tgid = bpf_get_current_pid_tgid();
		e->pid = pid_tgid >> 32;
		e->tid = (__u32)pid_tgid;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		e->user = in_user(ctx);
		e->stack_sz = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
		if (e->stack_sz < 0)
			s->stack_failed++;
	}
	if (kd_submit(ctx, events, e, sizeof(*e)))
		s->lost++;
	return 0;
}

SEC("perf_event")
int irqoff_nmi(struct bpf_perf_event_data *ctx)
{
	struct irqoff_event *e;
	struct cpu_state *st;
	struct irqoff_stats *s;
	__u64 now, last, stale, pid_tgid, idle_gap, steal, steal_gap = 0;
	__u32 zero = 0;

	st = bpf_map_lookup_elem(&state, &zero);
	s = bpf_map_lookup_elem(&stats, &zero);
	if (!st || !s)
		return 0;
	s->nmi_samples++;
	last = st->last;
	now = bpf_ktime_get_ns();
	idle_gap = idle_until(st, now) - st->idle_at_last;
	if (st->steal_valid && steal_read(&steal))
		steal_gap = steal_outside_idle(st, steal);
	if (!last || irqoff_judge(now - last, period_ns, idle_gap, steal_gap, threshold_ns, &stale) != IRQOFF_OVER)
		return 0;

	/* First NMI inside this window: remember who holds interrupts off. */
	if (st->win_stamp != last) {
		st->win_stamp = last;
		st->ongoing_sent = 0;
		pid_tgid = bpf_get_current_pid_tgid();
		st->holder_pid = pid_tgid >> 32;
		st->holder_tid = (__u32)pid_tgid;
		bpf_get_current_comm(st->holder_comm, sizeof(st->holder_comm));
		st->holder_user = in_user(ctx);
		st->holder_stack_sz = bpf_get_stack(ctx, st->holder_stack, sizeof(st->holder_stack), 0);
		if (st->holder_stack_sz < 0)
			s->nmi_stack_failed++;
	}
	if (st->ongoing_sent || stale < ongoing_ns)
		return 0;
	st->ongoing_sent = 1;
	s->ongoing++;
	e = kd_reserve(nmi_events, &scratch, 1, sizeof(*e));
	if (!e) {
		s->nmi_lost++;
		return 0;
	}
	fill(e, st, IRQOFF_ONGOING, now, last, stale, steal_gap, true);
	if (kd_submit(ctx, nmi_events, e, sizeof(*e)))
		s->nmi_lost++;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

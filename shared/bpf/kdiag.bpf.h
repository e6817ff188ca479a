/* SPDX-License-Identifier: GPL-2.0 */
/* What every kdiag BPF program shares: event output that works on kernels
 * with and without BPF ring buffers, counters, a task's state across
 * kernel versions, and log2 slots.
 *
 * Output goes through a ring buffer (5.8+) or a perf event array. Userspace
 * (shared/src/transport.rs) sets kd_use_ringbuf before load and disables
 * creation of the unused map; the verifier prunes the unused branch because
 * the flag is read-only data. */
#ifndef KDIAG_BPF_H
#define KDIAG_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

const volatile bool kd_use_ringbuf = true;

/* An output channel: NAME_ring and NAME_perf; only one is ever created. */
#define KD_CHANNEL(name, ring_bytes)                                  \
	struct {                                                      \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                   \
		__uint(max_entries, ring_bytes);                      \
	} name##_ring SEC(".maps");                                   \
	struct {                                                      \
		__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);          \
		__uint(key_size, sizeof(__u32));                      \
		__uint(value_size, sizeof(__u32));                    \
	} name##_perf SEC(".maps")

/* Space for one event: ring buffer memory, or a per-CPU scratch slot that
 * is copied into the perf buffer on submit. Programs that can interrupt
 * each other on one CPU (hrtimer and NMI) must use different slots. */
#define kd_reserve(name, scratch, slot, size)                              \
	({                                                                 \
		void *__p;                                                 \
		__u32 __slot = (slot);                                     \
		if (kd_use_ringbuf)                                        \
			__p = bpf_ringbuf_reserve(&name##_ring, size, 0);  \
		else                                                       \
			__p = bpf_map_lookup_elem(scratch, &__slot);       \
		__p;                                                       \
	})

/* Returns 0, or a negative errno when a perf buffer was full. */
#define kd_submit(ctx, name, ev, size)                                         \
	({                                                                     \
		long __r = 0;                                                  \
		if (kd_use_ringbuf)                                            \
			bpf_ringbuf_submit(ev, 0);                             \
		else                                                           \
			__r = bpf_perf_event_output(ctx, &name##_perf,         \
						    BPF_F_CURRENT_CPU, ev, size);  \
		__r;                                                           \
	})

/* The tool's counters: one struct of u64s per CPU, so no two CPUs ever
 * write the same one; userspace adds them up (maps::sum_counters). */
#define KD_STATS(stats_type)                                          \
	struct {                                                      \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);              \
		__uint(max_entries, 1);                               \
		__type(key, __u32);                                   \
		__type(value, struct stats_type);                     \
	} stats SEC(".maps");                                         \
	static __always_inline struct stats_type *kd_stats(void)      \
	{                                                             \
		__u32 __zero = 0;                                     \
		return bpf_map_lookup_elem(&stats, &__zero);          \
	}

#define KD_COUNT(field)                                               \
	do {                                                          \
		__typeof__(kd_stats()) __s = kd_stats();              \
		if (__s)                                              \
			__s->field++;                                 \
	} while (0)

/* A failed bpf_get_stackid() into the counters stack_eexist, stack_enomem,
 * stack_efault and stack_other (maps::StackFailures): EEXIST is a hash
 * collision long before the map is full, and says to make it bigger. */
#define KD_COUNT_STACK_FAILURE(err)                                   \
	do {                                                          \
		long __e = (err);                                     \
		if (__e == -17)                                       \
			KD_COUNT(stack_eexist);                       \
		else if (__e == -12)                                  \
			KD_COUNT(stack_enomem);                       \
		else if (__e == -14)                                  \
			KD_COUNT(stack_efault);                       \
		else                                                  \
			KD_COUNT(stack_other);                        \
	} while (0)

/* A task's raw state: `__state` since 5.14, `state` before. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline __u32 kd_task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

/* The state bits sched_switch's classic record reports (TASK_REPORT). */
#define KD_TASK_REPORT 0x7f

/* log2 slot, the rule of shared/src/histogram.rs: 0 and 1 in slot 0. */
static __always_inline __u32 kd_log2(__u64 v)
{
	__u32 r = 0;
#pragma unroll
	for (int i = 32; i > 0; i >>= 1) {
		if (v >> i) {
			v >>= i;
			r += i;
		}
	}
	return r;
}

#endif

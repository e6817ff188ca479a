// SPDX-License-Identifier: GPL-2.0
/* Test workload: real interrupts-off windows of known length, made from
 * userspace without a kernel module. Attached to a cpu-clock perf event,
 * this program runs in hrtimer (hardirq) context with interrupts disabled
 * and spins for the next length in spins_ns, one window per firing. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define MAX_SPINS 8

const volatile __u64 spins_ns[MAX_SPINS] = {};
const volatile __u32 nr_spins = 0;

__u32 done = 0;
__u64 start_ns[MAX_SPINS];
__u64 spun_ns[MAX_SPINS];

struct spin {
	__u64 until;
};

static long spin_step(__u64 i, void *arg)
{
	struct spin *s = arg;

	return bpf_ktime_get_ns() >= s->until;
}

SEC("perf_event")
int inject_irqoff(void *ctx)
{
	__u32 i = done;
	struct spin s;
	__u64 start;

	if (i >= nr_spins || i >= MAX_SPINS)
		return 0;
	start = bpf_ktime_get_ns();
	s.until = start + spins_ns[i];
	for (int k = 0; k < 64 && bpf_ktime_get_ns() < s.until; k++)
		bpf_loop(1 << 20, spin_step, &s, 0);
	start_ns[i] = start;
	spun_ns[i] = bpf_ktime_get_ns() - start;
	done = i + 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

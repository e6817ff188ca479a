/* SPDX-License-Identifier: GPL-2.0 */
/* The arithmetic that decides whether a gap between two cpu-clock samples
 * was an interrupts-off window, and the read of the KVM steal clock it
 * needs. Separate from irqoff.bpf.c so that a test program runs exactly
 * this code on the kernel (tests/bpf/window_test.bpf.c). Needs vmlinux.h
 * and bpf_core_read.h first. */
#ifndef IRQOFF_WINDOW_H
#define IRQOFF_WINDOW_H

enum irqoff_verdict {
	IRQOFF_QUIET = 0,      /* under the threshold */
	IRQOFF_OVER = 1,       /* a window: the guest's own time is over it */
	IRQOFF_STEAL_ONLY = 2, /* over it only with the hypervisor's time counted */
};

/* What of a gap the guest itself spent with interrupts off: minus one
 * sampling period (the sample before the window came up to a period before
 * it started), the time the CPU was idle (a halted vCPU has interrupts on
 * and is often woken late), and the steal time outside idle (the host ran
 * something else while this vCPU wanted to run). Never below zero. */
static __always_inline __u64 irqoff_guest_ns(__u64 gap, __u64 period, __u64 idle, __u64 steal)
{
	__u64 taken = period + idle + steal;

	return gap > taken ? gap - taken : 0;
}

static __always_inline __u32 irqoff_judge(__u64 gap, __u64 period, __u64 idle, __u64 steal,
					  __u64 threshold, __u64 *lat)
{
	*lat = irqoff_guest_ns(gap, period, idle, steal);
	if (*lat >= threshold)
		return IRQOFF_OVER;
	if (steal && irqoff_guest_ns(gap, period, idle, 0) >= threshold)
		return IRQOFF_STEAL_ONLY;
	return IRQOFF_QUIET;
}

/* The host keeps `version` odd while it updates the struct and bumps it
 * with every update (arch/x86/kernel/kvm.c, kvm_steal_clock): a value is
 * consistent when the version was even and the same before and after. */
static __always_inline bool irqoff_read_steal(const struct kvm_steal_time *src, __u64 *steal)
{
	__u32 before, after;
	__u64 v;

	for (int i = 0; i < 4; i++) {
		if (bpf_core_read(&before, sizeof(before), &src->version))
			return false;
		if (before & 1)
			continue;
		if (bpf_core_read(&v, sizeof(v), &src->steal) ||
		    bpf_core_read(&after, sizeof(after), &src->version))
			return false;
		if (before == after) {
			*steal = v;
			return true;
		}
	}
	return false;
}

#endif

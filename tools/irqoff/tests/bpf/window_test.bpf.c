// SPDX-License-Identifier: GPL-2.0
/* Runs irqoff's window arithmetic and steal clock read (src/bpf/window.h)
 * on the kernel, for the unit tests in src/steal.rs: through
 * BPF_PROG_TEST_RUN, with the inputs as the program's arguments. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "../../src/bpf/window.h"

__u64 lat = 0;
__u32 verdict = 0;

/* Stands in for the host's struct; the test sets version and steal. */
struct kvm_steal_time fake = {};
__u64 steal = 0;
__u32 read_ok = 0;

/* ctx: gap, period, idle, steal, threshold (ns). */
SEC("raw_tp")
int judge(__u64 *ctx)
{
	verdict = irqoff_judge(ctx[0], ctx[1], ctx[2], ctx[3], ctx[4], &lat);
	return 0;
}

SEC("raw_tp")
int read_fake(void *ctx)
{
	steal = 0;
	read_ok = irqoff_read_steal(&fake, &steal);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Where a CPU's struct kvm_steal_time lives, through the typed per-CPU
 * symbol the KVM guest code defines (arch/x86/kernel/kvm.c). Run once per
 * CPU with BPF_PROG_TEST_RUN, the CPU as the first argument.
 *
 * Its own object, apart from irqoff.bpf.c: a kernel whose kallsyms lists no
 * per-CPU variables (CONFIG_KALLSYMS_ALL off) refuses to load a program
 * naming one, weak or not, because libbpf finds it in BTF and the verifier
 * then cannot find its address. irqoff must load there all the same. Weak,
 * so that a kernel without KVM guest support (no steal_time in BTF) loads
 * this and answers 0. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

extern const struct kvm_steal_time steal_time __ksym __weak;

__u64 addr = 0;

SEC("raw_tp")
int irqoff_steal_addr(__u64 *ctx)
{
	addr = 0;
	if (&steal_time)
		addr = (__u64)bpf_per_cpu_ptr(&steal_time, (__u32)ctx[0]);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

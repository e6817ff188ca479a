// SPDX-License-Identifier: GPL-2.0
/* funcstack: count the distinct stacks that lead to a kernel function or
 * tracepoint, by calling task and CPU.
 *
 * One record() for every mechanism: fentry, kprobe, kprobe.multi and
 * classic tracepoints differ only in how the program is entered. Return
 * values (fexit, kretprobe) are counted separately and need no state
 * carried from entry to exit, so nothing is ever kept per task or in a
 * shared slot: every counter belongs to its own key, and the counts map
 * is per CPU (seed 000 shows one program running on several CPUs at once
 * racing on a shared key).
 *
 * Filters are read-only data, so the verifier drops what is unused. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "kdiag.bpf.h"
#include "funcstack.h"

const volatile __u32 target_tgid = 0;
const volatile bool filter_comm = false;
const volatile char target_comm[FS_COMM_LEN] = {};
const volatile bool want_ustack = false;
/* Several functions share the programs (globs): tell them apart. */
const volatile bool want_ip = false;
/* bpf_get_func_ip exists (5.15). */
const volatile bool have_func_ip = true;
/* fexit: the return value follows the arguments in the context. */
const volatile __u32 nr_args = 0;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
	__uint(max_entries, 16384); /* --stack-storage-size */
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct fs_key);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fs_ret_key);
	__type(value, __u64);
} rets SEC(".maps");

KD_STATS(fs_stats);

struct fs_key fs_key_layout = {};
struct fs_ret_key fs_ret_key_layout = {};
struct fs_stats fs_stats_layout = {};

static __always_inline bool wanted(__u32 tgid)
{
	if (target_tgid && tgid != target_tgid)
		return false;
	if (filter_comm) {
		char comm[FS_COMM_LEN];

		bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
		for (int i = 0; i < FS_COMM_LEN; i++) {
			if (comm[i] != target_comm[i])
				return false;
			if (!comm[i])
				break;
		}
	}
	return true;
}

static __always_inline int record(void *ctx, __u64 ip)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct fs_key key = {};
	__u64 one = 1, *v;
	long sid;

	KD_COUNT(hits);
	if (!wanted(tgid)) {
		KD_COUNT(filtered);
		return 0;
	}
	key.ip = ip;
	key.pid = (__u32)id;
	key.tgid = tgid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	sid = bpf_get_stackid(ctx, &stacks, 0);
	if (sid < 0)
		KD_COUNT_STACK_FAILURE(sid);
	key.kstack = sid;
	key.ustack = FS_NOT_TAKEN;
	if (want_ustack && tgid) {
		sid = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
		if (sid < 0)
			KD_COUNT_STACK_FAILURE(sid);
		key.ustack = sid;
	}
	v = bpf_map_lookup_elem(&counts, &key);
	if (v) {
		/* Per CPU, but an interrupt on this CPU may run us nested. */
		__sync_fetch_and_add(v, 1);
		return 0;
	}
	/* New key: set this CPU's counter to one. A concurrent insert of
	 * the same key by another CPU is fine: each CPU has its own copy. */
	if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&counts, &key);
		if (v)
			__sync_fetch_and_add(v, 1);
		else
			KD_COUNT(keys_dropped);
	}
	return 0;
}

static __always_inline int record_ret(__u64 ip, __s64 val)
{
	struct fs_ret_key key = {};
	__u64 one = 1, *v;

	if (!wanted(bpf_get_current_pid_tgid() >> 32))
		return 0;
	key.ip = ip;
	if (val > FS_RET_EXACT || val < -FS_RET_EXACT) {
		__u64 u = (__u64)val;
		__u32 slot = 0;

		/* log2, the rule of shared/src/histogram.rs */
#pragma unroll
		for (int i = 32; i > 0; i >>= 1) {
			if (u >> i) {
				u >>= i;
				slot += i;
			}
		}
		key.bucket = 1;
		key.val = slot;
	} else {
		key.val = val;
	}
	v = bpf_map_lookup_elem(&rets, &key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return 0;
	}
	if (bpf_map_update_elem(&rets, &key, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&rets, &key);
		if (v)
			__sync_fetch_and_add(v, 1);
		else
			KD_COUNT(rets_dropped);
	}
	return 0;
}

SEC("tracepoint")
int fs_tp(void *ctx)
{
	return record(ctx, 0);
}

SEC("fentry")
int fs_fentry(void *ctx)
{
	return record(ctx, want_ip ? bpf_get_func_ip(ctx) : 0);
}

/* The return value sits right after the arguments; the index must be a
 * constant for the verifier, and nr_args is one once loaded. Each case
 * loads on its own: left alone, clang merges the cases into one load
 * through ctx plus a computed offset, which the verifier refuses
 * ("dereference of modified ctx ptr", EACCES at load). */
#define RET_ARG(n)              \
	case n:                 \
		ret = ctx[n];   \
		barrier_var(ret); \
		break

SEC("fexit")
int fs_fexit(__u64 *ctx)
{
	__u64 ret;

	switch (nr_args) {
	RET_ARG(0);
	RET_ARG(1);
	RET_ARG(2);
	RET_ARG(3);
	RET_ARG(4);
	RET_ARG(5);
	RET_ARG(6);
	RET_ARG(7);
	RET_ARG(8);
	RET_ARG(9);
	RET_ARG(10);
	RET_ARG(11);
	default:
		ret = ctx[12];
		barrier_var(ret);
		break;
	}
	return record_ret(want_ip ? bpf_get_func_ip(ctx) : 0, (__s64)ret);
}

/* Before 5.15 (no bpf_get_func_ip) a kprobe on a function's entry still
 * tells it apart: it sees the address after the breakpoint, also when
 * ftrace serves it. */
SEC("kprobe")
int fs_kprobe(struct pt_regs *ctx)
{
	if (!want_ip)
		return record(ctx, 0);
	return record(ctx, have_func_ip ? bpf_get_func_ip(ctx) : PT_REGS_IP(ctx) - 1);
}

SEC("kretprobe")
int fs_kretprobe(struct pt_regs *ctx)
{
	return record_ret(want_ip ? bpf_get_func_ip(ctx) : 0, (__s64)PT_REGS_RC(ctx));
}

SEC("kprobe.multi")
int fs_kmulti(struct pt_regs *ctx)
{
	return record(ctx, bpf_get_func_ip(ctx));
}

SEC("kretprobe.multi")
int fs_kretmulti(struct pt_regs *ctx)
{
	return record_ret(bpf_get_func_ip(ctx), (__s64)PT_REGS_RC(ctx));
}

char LICENSE[] SEC("license") = "GPL";

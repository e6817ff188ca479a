/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by funcstack.bpf.c and the Rust side (via the skeleton). */
#ifndef FUNCSTACK_H
#define FUNCSTACK_H

#define FS_COMM_LEN 16
/* A stack id that was not asked for (no -U, or a kernel thread's user
 * stack). Outside the errno range, so negative ids stay -errno. */
#define FS_NOT_TAKEN (-4096)
/* Return values within +-FS_RET_EXACT are counted one by one (errnos,
 * small counts); larger ones by log2 slot of their unsigned value. */
#define FS_RET_EXACT 4095

/* One line of the report: which function, which task, which stacks. The
 * counts map is per CPU, so which CPUs called is exact and no two CPUs
 * ever write the same counter. */
struct fs_key {
	__u64 ip; /* function entered (for globs); 0 when only one target */
	__u32 pid;
	__u32 tgid;
	__s32 kstack; /* stack ids, or -errno, or FS_NOT_TAKEN */
	__s32 ustack;
	char comm[FS_COMM_LEN];
};

struct fs_ret_key {
	__u64 ip;
	__s64 val;     /* the value, or its log2 slot when bucket is 1 */
	__u32 bucket;
	__u32 pad;
};

/* Per CPU, summed at exit. */
struct fs_stats {
	__u64 hits;         /* calls or events seen, before filters */
	__u64 filtered;     /* not the -p/-c task */
	__u64 stack_eexist; /* stack map bucket taken by another stack */
	__u64 stack_enomem; /* stack map full */
	__u64 stack_efault;
	__u64 stack_other;
	__u64 keys_dropped; /* counts map full */
	__u64 rets_dropped; /* return value map full */
};

#endif

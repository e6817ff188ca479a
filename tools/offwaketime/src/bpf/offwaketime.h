/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by offwaketime.bpf.c and the Rust side (via the skeleton). */
#ifndef OFFWAKETIME_H
#define OFFWAKETIME_H

#define OWT_COMM_LEN 16
#define OWT_MAX_FILTER 16
/* A stack id that was never asked for (-K/-U, a kernel thread's user
 * stack, the user stack of whatever an interrupt interrupted). Outside the
 * errno range, so negative ids stay "this capture failed with -errno". */
#define OWT_NOT_TAKEN (-4096)

/* In what context the wakeup ran. Interrupt contexts run on top of
 * whatever task they interrupted, which is not the waker. */
enum owt_ctx {
	OWT_CTX_TASK = 0,
	OWT_CTX_SOFTIRQ = 1,
	OWT_CTX_HARDIRQ = 2,
	OWT_CTX_NMI = 3,
	OWT_CTX_PREEMPTED = 4, /* switched out runnable: no wakeup at all */
	OWT_CTX_UNSEEN = 5,    /* blocked, but its wakeup was not seen */
};

/* One line of the report: who slept where, who woke it from where. */
struct owt_key {
	__u32 t_pid;  /* sleeper thread */
	__u32 t_tgid; /* sleeper process, for its user stack */
	__u32 w_pid;  /* waker thread; 0 in interrupt context */
	__u32 w_tgid;
	__s32 t_kstack; /* stack ids, or -errno, or OWT_NOT_TAKEN */
	__s32 t_ustack;
	__s32 w_kstack;
	__s32 w_ustack;
	__u32 w_ctx;     /* enum owt_ctx */
	__u32 w_softirq; /* softirq vector, with OWT_CTX_SOFTIRQ; else ~0 */
	char t_comm[OWT_COMM_LEN];
	char w_comm[OWT_COMM_LEN];
};

struct owt_val {
	__u64 blocked_ns; /* wakeup minus switch-out */
	__u64 runq_ns;    /* switch-in minus wakeup */
	__u64 count;
};

/* Per CPU, summed at exit. */
struct owt_stats {
	__u64 sleeps;          /* tracked switch-outs */
	__u64 wakeups;         /* sched_waking of a tracked task */
	__u64 switch_ins;      /* tracked switch-ins that were accounted */
	__u64 filtered_time;   /* outside -m/-M */
	__u64 unseen_wakeups;  /* switch-in with no wakeup recorded */
	__u64 stack_eexist;    /* stack map bucket taken by another stack */
	__u64 stack_enomem;    /* stack map full */
	__u64 stack_efault;    /* nothing could be read */
	__u64 stack_other;
	__u64 keys_dropped;    /* counts map full */
	__u64 sleeps_dropped;  /* switch-out map full */
	__u64 wakeups_dropped; /* wakeup map full */
};

#endif

/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by irqoff.bpf.c and the Rust side (via the skeleton). */
#ifndef IRQOFF_H
#define IRQOFF_H

#define IRQOFF_MAX_STACK 64
#define IRQOFF_HIST_SLOTS 32
#define IRQOFF_COMM_LEN 16

enum irqoff_kind {
	IRQOFF_WINDOW = 0,  /* a window that ended, with its final length */
	IRQOFF_ONGOING = 1, /* a window still open: "at least this long" */
};

enum irqoff_stack_of {
	IRQOFF_REENABLER = 0, /* cpu-clock: the code that re-enabled irqs */
	IRQOFF_HOLDER = 1,    /* NMI: the code running with irqs off */
};

struct irqoff_event {
	__u64 ts_ns;    /* monotonic: window end, or when an NMI saw it open */
	__u64 start_ns; /* monotonic: last cpu-clock sample before the window */
	__u64 lat_ns;   /* the guest's own time: period, idle and steal subtracted */
	__u64 steal_ns; /* steal time outside idle inside the window, subtracted */
	__u32 cpu;
	__u32 pid;
	__u32 tid;
	__u32 kind;     /* enum irqoff_kind */
	__u32 stack_of; /* enum irqoff_stack_of */
	__s32 stack_sz; /* bytes of stack[], or a negative errno */
	__u32 user;     /* the sampled context was user code: no kernel stack */
	char comm[IRQOFF_COMM_LEN];
	__u64 stack[IRQOFF_MAX_STACK];
};

/* Per CPU; each field has one writer (the cpu-clock or the NMI program),
 * because the NMI can interrupt the cpu-clock program mid-update. */
struct irqoff_stats {
	__u64 samples;          /* cpu-clock program runs */
	__u64 windows;          /* windows over the threshold, reported or not */
	__u64 rate_limited;     /* windows not reported: per-CPU rate limit */
	__u64 lost;             /* window events lost: output buffer full */
	__u64 stack_failed;     /* cpu-clock stack captures that failed */
	__u64 lat_sum_ns;
	__u64 lat_max_ns;
	__u64 hist[IRQOFF_HIST_SLOTS]; /* log2 of latency in us */
	__u64 nmi_samples;      /* NMI program runs */
	__u64 ongoing;          /* ongoing records emitted */
	__u64 nmi_lost;         /* ongoing records lost: output buffer full */
	__u64 nmi_stack_failed; /* NMI stack captures that failed */
	__u64 steal_ns;         /* steal time seen by the cpu-clock program */
	__u64 steal_explained;  /* gaps over the threshold only with steal counted */
	__u64 steal_failed;     /* samples whose steal clock could not be read */
};

#endif

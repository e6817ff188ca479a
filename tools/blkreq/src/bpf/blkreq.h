/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by blkreq.bpf.c and the Rust side (via the skeleton). */
#ifndef BLKREQ_H
#define BLKREQ_H

/* Attach slots. A fentry or tp_btf program is bound to one target at load
 * time, so the object carries this many identical copies; kprobes share one
 * program and tell targets apart by their attach cookie. Target ids:
 * functions 0..BRQ_FUNC_SLOTS-1, tracepoints BRQ_FUNC_SLOTS + slot. */
#define BRQ_FUNC_SLOTS 400
#define BRQ_TP_SLOTS 16
#define BRQ_MAX_TARGETS (BRQ_FUNC_SLOTS + BRQ_TP_SLOTS)
#define BRQ_MAX_ARGS 6
#define BRQ_MAX_STACK 48
#define BRQ_COMM_LEN 16

/* What a target means to the tracker (tgt_flags). */
enum brq_role {
	BRQ_ADMIT = 1,  /* a request's life starts here: admission point */
	BRQ_END = 2,    /* completion or free: end of life */
	BRQ_HIDDEN = 4, /* drives tracking, but the user excluded it */
	BRQ_BIRTH = 8,  /* only a new request passes here: seeing a live
			 * pointer again means its end was missed */
};

/* Per-request state in `tracked`. */
enum brq_state {
	BRQ_LIVE = 1,
	BRQ_DONE = 2, /* ended; later steps accepted for post_end_ns */
	BRQ_DEAD = 3, /* pointer reused by a request we do not track */
};

/* brq_event.flags */
enum brq_event_flags {
	BRQ_EV_ADMITTED = 1, /* this step admitted the request */
	BRQ_EV_ENDED = 2,    /* this step ended its life */
	BRQ_EV_AFTER_END = 4, /* a step after the end (free path) */
	BRQ_EV_REUSED = 8,   /* admission found the previous session live */
};

struct brq_event {
	__u64 ts_ns;     /* CLOCK_MONOTONIC */
	__u64 rq;        /* the request pointer */
	__u64 session;   /* admission time: pointers are reused, sessions are not */
	__u64 sector;
	__u32 target;    /* index into the resolved set */
	__u32 cpu;
	__u32 pid;       /* tgid of the current task */
	__u32 tid;
	__u32 dev;       /* kernel dev_t of the disk: major << 20 | minor */
	__u32 bytes;     /* bytes still to transfer */
	__u32 cmd_flags; /* op in the low 8 bits */
	__u8 argpos;     /* which parameter held the request */
	__u8 flags;      /* enum brq_event_flags */
	__u16 pad;
	__s32 stack_sz;  /* bytes of stack[], or a negative errno */
	char comm[BRQ_COMM_LEN];
	__u64 stack[BRQ_MAX_STACK];
};

/* Per CPU. */
struct brq_stats {
	__u64 hits;          /* program runs on a target */
	__u64 events;        /* steps emitted */
	__u64 lost;          /* steps lost: output buffer full */
	__u64 stack_failed;  /* stack captures that failed */
	__u64 admitted;      /* sessions started */
	__u64 filtered;      /* admissions refused by --dev/--pid/--comm/--op */
	__u64 full;          /* admissions refused: COUNT reached */
	__u64 raced;         /* admissions another CPU won for the same pointer */
	__u64 ended;         /* sessions ended at completion or free */
	__u64 reused;        /* sessions ended because the pointer came back */
	__u64 late;          /* steps on an ended session after post_end_ns */
};

#endif

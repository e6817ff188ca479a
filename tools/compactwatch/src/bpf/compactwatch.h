/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by compactwatch.bpf.c and the Rust side (via the skeleton). */
#ifndef COMPACTWATCH_H
#define COMPACTWATCH_H

#define CW_COMM_LEN 16
#define CW_MAX_ORDER 16
#define CW_MAX_STATUS 16 /* enum compact_result has about ten values */

enum cw_kind {
	CW_ALLOC_FAIL = 1,    /* mm_page_alloc returned no page (pfn -1) */
	CW_ALLOC_DONE = 2,    /* mm_page_alloc ended a task's stall episode */
	CW_RECLAIM_BEGIN = 3, /* a = order, gfp */
	CW_RECLAIM_END = 4,   /* a = nr_reclaimed */
	CW_TRY_COMPACT = 5,   /* a = order, gfp, b = priority */
	CW_COMPACT_BEGIN = 6, /* a = zone_start, b = migrate_pfn, c = free_pfn, d = zone_end, e = sync */
	CW_COMPACT_END = 7,   /* as begin, e = sync, f = status, g = migrated, h = failed */
	CW_SUITABLE = 8,      /* a = nid, b = zone idx, c = order, d = result */
	CW_FINISHED = 9,      /* as suitable; only results that end the run */
	CW_DEFERRED = 10,     /* a = nid, b = zone idx, c = order, d = considered, e = defer_shift, f = order_failed */
	CW_DEFER_COMPACTION = 11,
	CW_DEFER_RESET = 12,
};

struct cw_event {
	__u64 ts_ns;
	__u32 kind;
	__u32 pid;
	__u32 tid;
	__s32 order;
	__u64 gfp;
	__s64 a, b, c, d, e, f, g, h;
	__s32 stack_id;    /* kernel stack in the stacks map, or negative errno */
	__u32 cpu_node;    /* NUMA node of the CPU the event ran on */
	char comm[CW_COMM_LEN];
};

/* Successful allocations of order >= N, by kernel stack and order. */
struct cw_alloc_key {
	__s32 stack_id;
	__u32 order;
};

struct cw_alloc_val {
	__u64 count;
	__u32 last_pid;
	__u32 pad;
	char last_comm[CW_COMM_LEN];
};

/* Failed allocations of order >= N, by kernel stack, order and mask:
 * counted whether or not their records were sent. */
struct cw_fail_key {
	__s32 stack_id;
	__u32 order;
	__u64 gfp;
};

struct cw_stats {
	__u64 alloc_ok[CW_MAX_ORDER];   /* successes by order (>= N only) */
	__u64 alloc_fail[CW_MAX_ORDER];
	__u64 lost;                     /* events not delivered: buffer full */
	__u64 counts_full;              /* successes not keyed: table full */
	__u64 stack_failed;
	__u64 fails_full;               /* failures not keyed: table full */
	__u64 rate_limited;             /* allocations/runs not reported: --max-rate */
	__u64 rate_limited_events;      /* the records they would have sent */
	__u64 background_runs;          /* compaction runs outside an episode */
	__u64 stalls_ok[CW_MAX_ORDER];  /* episodes that ended in a page, by order */
	__u64 stalls_failed[CW_MAX_ORDER]; /* episodes that ended in a failure */
	__u64 runs_by_status[CW_MAX_STATUS]; /* every compaction run, by its end status */
};

#endif

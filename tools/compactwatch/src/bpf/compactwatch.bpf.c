// SPDX-License-Identifier: GPL-2.0
/* compactwatch: high-order allocations, the direct reclaim and compaction
 * they trigger, and the ones that fail.
 *
 * Everything hangs on tracepoints (no kprobes: the host kernel has none),
 * each taken raw where userspace recognises the arguments this kernel
 * passes (btf_trace_<name> in its BTF: the compaction events changed
 * theirs in 5.18, to pass struct compact_control *, and again since), as
 * its classic record through CO-RE otherwise, whose field names have been
 * stable for years. A raw tracepoint (raw_tp, run as tp_btf where BTF
 * types it) opens no perf event and detaches without the RCU grace
 * periods that closing a classic tracepoint's perf event waits for, one
 * tracepoint after another (about half a second for these twelve). Each
 * event's logic is one function below; its classic and raw programs only
 * read the arguments.
 *
 * A stall episode of a task opens at mm_vmscan_direct_reclaim_begin or
 * mm_compaction_try_to_compact_pages for an order >= min_order, and closes
 * at the mm_page_alloc that ends that __alloc_pages() call (it fires once,
 * with pfn -1 on failure). Events in between that carry no order
 * (compaction begin/end, migratepages) are kept only for tasks with an
 * open episode or a compaction run in progress, so a busy box does not
 * flood the buffer. Successful allocations without an episode are only
 * counted, by stack, in the kernel; failures are always counted there, by
 * stack, order and mask, so the summary stays exact when records are not
 * sent.
 *
 * --max-rate: a flood of failing allocations sends ~20 records each (every
 * zone's suitable, begin, finished, end, twice), enough to fill any buffer.
 * A per-CPU budget is charged once per unit (an allocation with its whole
 * episode, or a compaction run outside one) when the unit starts; the
 * decision rides in the task's state, so a unit is reported whole or not
 * at all and a half-seen episode never waits in userspace for its end. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kdiag.bpf.h"
#include "compactwatch.h"

const volatile __u32 min_order = 4;
const volatile __u32 target_tgid = 0; /* 0: every task */
const volatile __u32 max_per_sec = 0;  /* 0: no rate limit */

struct tstate {
	__u32 active;   /* in an allocation stall episode */
	__u32 running;  /* between compaction begin and end */
	__u32 quiet;    /* this episode or run is over the rate: send nothing */
	__u32 pad;
	__u64 migrated; /* mm_compaction_migratepages sums for the current run */
	__u64 failed;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tstate);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct cw_alloc_key);
	__type(value, struct cw_alloc_val);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct cw_fail_key);
	__type(value, struct cw_alloc_val);
} fails SEC(".maps");

KD_STATS(cw_stats);

/* The current second and the units reported in it, on this CPU. */
struct rate_state {
	__u64 sec;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rate_state);
} rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cw_event);
} scratch SEC(".maps");

KD_CHANNEL(events, 256 * 1024);

struct cw_event cw_event_layout = {};
struct cw_alloc_key cw_alloc_key_layout = {};
struct cw_alloc_val cw_alloc_val_layout = {};
struct cw_fail_key cw_fail_key_layout = {};
struct cw_stats cw_stats_layout = {};

/* Before 4.x-era cleanups mm_page_alloc recorded the page pointer. */
struct trace_event_raw_mm_page_alloc___page {
	struct page *page;
} __attribute__((preserve_access_index));

/* gfp fields were gfp_t (4 bytes) on older kernels, unsigned long now:
 * read as many bytes as the running kernel's field has. */
#define CW_READ_UINT(dst, ctx, field)                                                \
	do {                                                                         \
		dst = 0;                                                             \
		bpf_probe_read_kernel(&dst, bpf_core_field_size(ctx->field) & 15,   \
				      &ctx->field);                                 \
	} while (0)


static __always_inline bool tgid_wanted(__u64 pid_tgid)
{
	return !target_tgid || (pid_tgid >> 32) == target_tgid;
}

static __always_inline struct cw_event *new_event(__u32 kind, __u64 pid_tgid)
{
	struct cw_event *e = kd_reserve(events, &scratch, 0, sizeof(*e));

	if (!e) {
		struct cw_stats *s = kd_stats();
		if (s)
			s->lost++;
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->order = -1;
	e->stack_id = -1;
	e->cpu_node = bpf_get_numa_node_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void send(void *ctx, struct cw_event *e)
{
	if (kd_submit(ctx, events, e, sizeof(*e))) {
		struct cw_stats *s = kd_stats();
		if (s)
			s->lost++;
	}
}

/* Charge a new unit to this CPU's budget; true if it is over. */
static __always_inline bool over_rate(void)
{
	struct rate_state *r;
	struct cw_stats *s;
	__u32 zero = 0;
	__u64 sec;

	if (!max_per_sec)
		return false;
	r = bpf_map_lookup_elem(&rate, &zero);
	if (!r)
		return false;
	sec = bpf_ktime_get_ns() / 1000000000ULL;
	if (r->sec != sec) {
		r->sec = sec;
		r->count = 0;
	}
	if (++r->count <= max_per_sec)
		return false;
	s = kd_stats();
	if (s)
		s->rate_limited++;
	return true;
}

/* A record a rate-limited unit did not send. */
static __always_inline void withheld(void)
{
	struct cw_stats *s = kd_stats();

	if (s)
		s->rate_limited_events++;
}

static __always_inline void count_fail(__s32 stack_id, __u32 order, __u64 gfp, __u64 pid_tgid,
				       struct cw_stats *s)
{
	struct cw_fail_key k = { .stack_id = stack_id, .order = order, .gfp = gfp };
	struct cw_alloc_val *v = bpf_map_lookup_elem(&fails, &k);

	if (!v) {
		struct cw_alloc_val nv = {};
		/* Failing with -EEXIST means another CPU added it first. */
		bpf_map_update_elem(&fails, &k, &nv, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&fails, &k);
		if (!v && s)
			s->fails_full++;
	}
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		v->last_pid = pid_tgid >> 32;
		bpf_get_current_comm(v->last_comm, sizeof(v->last_comm));
	}
}

static __always_inline __s32 stack_of(void *ctx)
{
	__s32 id = bpf_get_stackid(ctx, &stacks, 0);

	if (id < 0) {
		struct cw_stats *s = kd_stats();
		if (s)
			s->stack_failed++;
	}
	return id;
}

static __always_inline int page_alloc(void *ctx, __u32 order, bool failed, __u64 gfp, __s64 migratetype)
{
	__u64 pid_tgid;
	__s32 stack_id = -1;
	struct cw_stats *s;
	struct cw_event *e;
	struct tstate *t;
	bool episode;
	__u32 tid;

	if (order < min_order)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!tgid_wanted(pid_tgid))
		return 0;
	tid = (__u32)pid_tgid;
	t = bpf_map_lookup_elem(&tasks, &tid);
	episode = t && t->active;
	s = kd_stats();
	/* Every index under one bounds check: the 6.1 verifier loses the
	 * bound of a second check on the same order. */
	if (s && order < CW_MAX_ORDER) {
		if (failed)
			s->alloc_fail[order]++;
		else
			s->alloc_ok[order]++;
		if (episode && failed)
			s->stalls_failed[order]++;
		else if (episode)
			s->stalls_ok[order]++;
	}
	if (failed) {
		stack_id = stack_of(ctx);
		count_fail(stack_id, order, gfp, pid_tgid, s);
	}
	if (failed || episode) {
		/* A failure without an episode is a unit of its own. */
		bool quiet = t && t->active ? t->quiet : over_rate();

		if (quiet)
			withheld();
		else if ((e = new_event(failed ? CW_ALLOC_FAIL : CW_ALLOC_DONE, pid_tgid))) {
			e->order = order;
			e->gfp = gfp;
			e->b = migratetype;
			e->stack_id = failed ? stack_id : stack_of(ctx);
			send(ctx, e);
		}
		if (t && !t->running)
			bpf_map_delete_elem(&tasks, &tid);
		else if (t)
			t->active = 0;
	}
	if (!failed) {
		struct cw_alloc_key k = { .stack_id = bpf_get_stackid(ctx, &stacks, 0), .order = order };
		struct cw_alloc_val *v = bpf_map_lookup_elem(&allocs, &k);

		if (!v) {
			struct cw_alloc_val nv = {};
			if (bpf_map_update_elem(&allocs, &k, &nv, BPF_NOEXIST) && s)
				s->counts_full++;
			v = bpf_map_lookup_elem(&allocs, &k);
		}
		if (v) {
			__sync_fetch_and_add(&v->count, 1);
			v->last_pid = pid_tgid >> 32;
			bpf_get_current_comm(v->last_comm, sizeof(v->last_comm));
		}
	}
	return 0;
}

/* The allocator's answer: no page (pfn -1 in the record) is a failure. */
SEC("tracepoint/kmem/mm_page_alloc")
int cw_page_alloc(struct trace_event_raw_mm_page_alloc *ctx)
{
	__u64 pfn = 0, gfp;
	bool failed;

	if (ctx->order < min_order)
		return 0;
	if (bpf_core_field_exists(ctx->pfn)) {
		CW_READ_UINT(pfn, ctx, pfn);
		failed = pfn == (__u64)-1 || (bpf_core_field_size(ctx->pfn) == 4 && pfn == 0xffffffffULL);
	} else {
		struct trace_event_raw_mm_page_alloc___page *old = (void *)ctx;
		failed = BPF_CORE_READ(old, page) == 0;
	}
	CW_READ_UINT(gfp, ctx, gfp_flags);
	return page_alloc(ctx, ctx->order, failed, gfp, ctx->migratetype);
}

SEC("raw_tp/mm_page_alloc")
int BPF_PROG(cw_page_alloc_raw, struct page *page, unsigned int order, gfp_t gfp, int migratetype)
{
	return page_alloc(ctx, order, !page, gfp, migratetype);
}

/* Open (or keep open) the stall episode of the current task; true if it
 * is over the rate and sends nothing. */
static __always_inline bool open_episode(__u32 tid)
{
	struct tstate *t = bpf_map_lookup_elem(&tasks, &tid);
	bool quiet;

	if (t && t->active)
		return t->quiet;
	quiet = over_rate();
	if (t) {
		t->active = 1;
		t->quiet = quiet;
	} else {
		struct tstate nt = { .active = 1, .quiet = quiet };
		bpf_map_update_elem(&tasks, &tid, &nt, BPF_ANY);
	}
	return quiet;
}

static __always_inline int reclaim_begin(void *ctx, int order, __u64 gfp)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct cw_event *e;

	if (order < (int)min_order || !tgid_wanted(pid_tgid))
		return 0;
	if (open_episode((__u32)pid_tgid)) {
		withheld();
		return 0;
	}
	e = new_event(CW_RECLAIM_BEGIN, pid_tgid);
	if (!e)
		return 0;
	e->order = order;
	e->gfp = gfp;
	e->stack_id = stack_of(ctx);
	send(ctx, e);
	return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_begin")
int cw_reclaim_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	__u64 gfp;

	CW_READ_UINT(gfp, ctx, gfp_flags);
	return reclaim_begin(ctx, ctx->order, gfp);
}

SEC("raw_tp/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(cw_reclaim_begin_raw, int order, gfp_t gfp)
{
	return reclaim_begin(ctx, order, gfp);
}

static __always_inline int reclaim_end(void *ctx, __u64 nr_reclaimed)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct tstate *t = bpf_map_lookup_elem(&tasks, &tid);
	struct cw_event *e;

	if (!t || !t->active)
		return 0;
	if (t->quiet) {
		withheld();
		return 0;
	}
	e = new_event(CW_RECLAIM_END, pid_tgid);
	if (!e)
		return 0;
	e->a = nr_reclaimed;
	send(ctx, e);
	return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_end")
int cw_reclaim_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	__u64 n;

	CW_READ_UINT(n, ctx, nr_reclaimed);
	return reclaim_end(ctx, n);
}

SEC("raw_tp/mm_vmscan_direct_reclaim_end")
int BPF_PROG(cw_reclaim_end_raw, unsigned long nr_reclaimed)
{
	return reclaim_end(ctx, nr_reclaimed);
}

/* prio: -1 where the kernel does not say. */
static __always_inline int try_compact(void *ctx, int order, __u64 gfp, __s64 prio)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct cw_event *e;

	if (order < (int)min_order || !tgid_wanted(pid_tgid))
		return 0;
	if (open_episode((__u32)pid_tgid)) {
		withheld();
		return 0;
	}
	e = new_event(CW_TRY_COMPACT, pid_tgid);
	if (!e)
		return 0;
	e->order = order;
	e->gfp = gfp;
	e->b = prio;
	e->stack_id = stack_of(ctx);
	send(ctx, e);
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_try_to_compact_pages")
int cw_try_compact(struct trace_event_raw_mm_compaction_try_to_compact_pages *ctx)
{
	__s64 prio = -1;
	__u64 gfp;

	CW_READ_UINT(gfp, ctx, gfp_mask);
	if (bpf_core_field_exists(ctx->prio))
		prio = ctx->prio;
	return try_compact(ctx, ctx->order, gfp, prio);
}

SEC("raw_tp/mm_compaction_try_to_compact_pages")
int BPF_PROG(cw_try_compact_raw, int order, gfp_t gfp, int prio)
{
	return try_compact(ctx, order, gfp, prio);
}

/* Compaction runs outside an episode (kcompactd, compact_memory, proactive
 * compaction) are reported too, unless a -p filter excludes the task. */
static __always_inline int compact_begin(void *ctx, __u64 zone_start, __u64 migrate_pfn, __u64 free_pfn,
					 __u64 zone_end, bool sync)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct tstate *t;
	struct cw_event *e;

	if (!tgid_wanted(pid_tgid))
		return 0;
	t = bpf_map_lookup_elem(&tasks, &tid);
	if (!t) {
		/* A run outside any episode is a unit of its own; its state
		 * goes at its end, quiet or not. */
		struct tstate nt = { .quiet = over_rate() };
		bpf_map_update_elem(&tasks, &tid, &nt, BPF_ANY);
		t = bpf_map_lookup_elem(&tasks, &tid);
		if (!t)
			return 0;
	}
	t->running = 1;
	t->migrated = 0;
	t->failed = 0;
	if (t->quiet) {
		withheld();
		return 0;
	}
	e = new_event(CW_COMPACT_BEGIN, pid_tgid);
	if (!e)
		return 0;
	e->a = zone_start;
	e->b = migrate_pfn;
	e->c = free_pfn;
	e->d = zone_end;
	e->e = sync;
	send(ctx, e);
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_begin")
int cw_compact_begin(struct trace_event_raw_mm_compaction_begin *ctx)
{
	return compact_begin(ctx, ctx->zone_start, ctx->migrate_pfn, ctx->free_pfn, ctx->zone_end, ctx->sync);
}

/* Before 5.18. */
SEC("raw_tp/mm_compaction_begin")
int BPF_PROG(cw_compact_begin_pfns, unsigned long zone_start, unsigned long migrate_pfn, unsigned long free_pfn,
	     unsigned long zone_end, bool sync)
{
	return compact_begin(ctx, zone_start, migrate_pfn, free_pfn, zone_end, sync);
}

/* Since 5.18: where the scanners start is in the compact_control. */
SEC("raw_tp/mm_compaction_begin")
int BPF_PROG(cw_compact_begin_cc, struct compact_control *cc, unsigned long zone_start, unsigned long zone_end,
	     bool sync)
{
	return compact_begin(ctx, zone_start, BPF_CORE_READ(cc, migrate_pfn), BPF_CORE_READ(cc, free_pfn), zone_end,
			     sync);
}

static __always_inline int migratepages(__u64 migrated, __u64 failed)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct tstate *t = bpf_map_lookup_elem(&tasks, &tid);

	if (!t || !t->running)
		return 0;
	t->migrated += migrated;
	t->failed += failed;
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_migratepages")
int cw_migratepages(struct trace_event_raw_mm_compaction_migratepages *ctx)
{
	__u64 m, f;

	CW_READ_UINT(m, ctx, nr_migrated);
	CW_READ_UINT(f, ctx, nr_failed);
	return migratepages(m, f);
}

/* Before 5.16: what migrate_pages() returned, the pages not migrated
 * when that is a count, else the pages left on the list (at most
 * COMPACT_CLUSTER_MAX, 32), as the classic record counts them. */
SEC("raw_tp/mm_compaction_migratepages")
int BPF_PROG(cw_migratepages_list, unsigned long nr_all, int migrate_rc, struct list_head *pages)
{
	struct list_head *p;
	__u64 failed = 0;

	if (migrate_rc >= 0) {
		failed = migrate_rc;
	} else {
		p = BPF_CORE_READ(pages, next);
		for (int i = 0; i < 64 && p && p != pages; i++) {
			failed++;
			p = BPF_CORE_READ(p, next);
		}
	}
	return migratepages(nr_all - failed, failed);
}

/* 5.18 to 6.x: the pages isolated are counted in the compact_control. */
SEC("raw_tp/mm_compaction_migratepages")
int BPF_PROG(cw_migratepages_cc, struct compact_control *cc, unsigned int nr_succeeded)
{
	return migratepages(nr_succeeded, BPF_CORE_READ(cc, nr_migratepages) - nr_succeeded);
}

/* 5.16-5.17 (unsigned long, unsigned int) and since 6.x (unsigned int,
 * unsigned int): how many, and how many moved. */
SEC("raw_tp/mm_compaction_migratepages")
int BPF_PROG(cw_migratepages_counts, unsigned long nr_all, unsigned int nr_succeeded)
{
	return migratepages(nr_succeeded, nr_all - nr_succeeded);
}

static __always_inline int compact_end(void *ctx, __u64 zone_start, __u64 migrate_pfn, __u64 free_pfn,
				       __u64 zone_end, bool sync, int status)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct tstate *t = bpf_map_lookup_elem(&tasks, &tid);
	struct cw_stats *s;
	struct cw_event *e;
	/* Negative statuses wrap past the table. */
	__u32 slot = (__u32)status;

	if (!t || !t->running)
		return 0;
	t->running = 0;
	s = kd_stats();
	if (s) {
		/* The mask bounds the index for the verifier: clang turns the
		 * comparison into a test of a copy, whose bound it loses, and
		 * would drop a mask it can prove redundant. */
		if (slot < CW_MAX_STATUS) {
			barrier_var(slot);
			s->runs_by_status[slot & (CW_MAX_STATUS - 1)]++;
		}
		if (!t->active)
			s->background_runs++;
	}
	/* One branch on one read: the 6.1 verifier does not know that two
	 * reads of t->quiet agree, and sees a reserved record leak. */
	if (t->quiet)
		withheld();
	else if ((e = new_event(CW_COMPACT_END, pid_tgid))) {
		e->a = zone_start;
		e->b = migrate_pfn;
		e->c = free_pfn;
		e->d = zone_end;
		e->e = sync;
		e->f = status;
		e->g = t->migrated;
		e->h = t->failed;
		send(ctx, e);
	}
	if (!t->active)
		bpf_map_delete_elem(&tasks, &tid);
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_end")
int cw_compact_end(struct trace_event_raw_mm_compaction_end *ctx)
{
	return compact_end(ctx, ctx->zone_start, ctx->migrate_pfn, ctx->free_pfn, ctx->zone_end, ctx->sync,
			   ctx->status);
}

SEC("raw_tp/mm_compaction_end")
int BPF_PROG(cw_compact_end_pfns, unsigned long zone_start, unsigned long migrate_pfn, unsigned long free_pfn,
	     unsigned long zone_end, bool sync, int status)
{
	return compact_end(ctx, zone_start, migrate_pfn, free_pfn, zone_end, sync, status);
}

SEC("raw_tp/mm_compaction_end")
int BPF_PROG(cw_compact_end_cc, struct compact_control *cc, unsigned long zone_start, unsigned long zone_end,
	     bool sync, int status)
{
	return compact_end(ctx, zone_start, BPF_CORE_READ(cc, migrate_pfn), BPF_CORE_READ(cc, free_pfn), zone_end,
			   sync, status);
}

static __always_inline int zone_event(void *ctx, __u32 kind, int nid, int idx, int order, __s64 d, __s64 e5,
				      __s64 f)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct tstate *t = bpf_map_lookup_elem(&tasks, &tid);
	struct cw_event *e;

	if (!t)
		return 0;
	if (t->quiet) {
		withheld();
		return 0;
	}
	e = new_event(kind, pid_tgid);
	if (!e)
		return 0;
	e->order = order;
	e->a = nid;
	e->b = idx;
	e->c = order;
	e->d = d;
	e->e = e5;
	e->f = f;
	send(ctx, e);
	return 0;
}

/* The classic records' nid and idx of a zone: zone_to_nid(), zone_idx(),
 * the zone's place in its node's node_zones. */
static __always_inline int zone_nid(struct zone *z)
{
	return BPF_CORE_READ(z, zone_pgdat, node_id);
}

static __always_inline int zone_index(struct zone *z)
{
	__u64 first = (__u64)BPF_CORE_READ(z, zone_pgdat) + bpf_core_field_offset(struct pglist_data, node_zones);
	__u64 size = bpf_core_type_size(struct zone);

	for (int i = 0; i < 8; i++)
		if ((__u64)z == first + i * size)
			return i;
	return -1;
}

SEC("tracepoint/compaction/mm_compaction_suitable")
int cw_suitable(struct trace_event_raw_mm_compaction_suitable_template *ctx)
{
	return zone_event(ctx, CW_SUITABLE, ctx->nid, ctx->idx, ctx->order, ctx->ret, 0, 0);
}

SEC("raw_tp/mm_compaction_suitable")
int BPF_PROG(cw_suitable_raw, struct zone *zone, int order, int ret)
{
	return zone_event(ctx, CW_SUITABLE, zone_nid(zone), zone_index(zone), order, ret, 0, 0);
}

/* compact_finished() traces on every pass of the compaction loop; only the
 * result that ends the run is worth a record. */
static __always_inline bool run_goes_on(int ret)
{
	if (ret == bpf_core_enum_value(enum compact_result, COMPACT_CONTINUE))
		return true;
	return bpf_core_enum_value_exists(enum compact_result, COMPACT_NO_SUITABLE_PAGE) &&
	       ret == bpf_core_enum_value(enum compact_result, COMPACT_NO_SUITABLE_PAGE);
}

SEC("tracepoint/compaction/mm_compaction_finished")
int cw_finished(struct trace_event_raw_mm_compaction_suitable_template *ctx)
{
	int ret = ctx->ret;

	if (run_goes_on(ret))
		return 0;
	return zone_event(ctx, CW_FINISHED, ctx->nid, ctx->idx, ctx->order, ret, 0, 0);
}

SEC("raw_tp/mm_compaction_finished")
int BPF_PROG(cw_finished_raw, struct zone *zone, int order, int ret)
{
	if (run_goes_on(ret))
		return 0;
	return zone_event(ctx, CW_FINISHED, zone_nid(zone), zone_index(zone), order, ret, 0, 0);
}

SEC("tracepoint/compaction/mm_compaction_deferred")
int cw_deferred(struct trace_event_raw_mm_compaction_defer_template *ctx)
{
	return zone_event(ctx, CW_DEFERRED, ctx->nid, ctx->idx, ctx->order, ctx->considered, ctx->defer_shift,
			  ctx->order_failed);
}

SEC("tracepoint/compaction/mm_compaction_defer_compaction")
int cw_defer_compaction(struct trace_event_raw_mm_compaction_defer_template *ctx)
{
	return zone_event(ctx, CW_DEFER_COMPACTION, ctx->nid, ctx->idx, ctx->order, ctx->considered,
			  ctx->defer_shift, ctx->order_failed);
}

SEC("tracepoint/compaction/mm_compaction_defer_reset")
int cw_defer_reset(struct trace_event_raw_mm_compaction_defer_template *ctx)
{
	return zone_event(ctx, CW_DEFER_RESET, ctx->nid, ctx->idx, ctx->order, ctx->considered, ctx->defer_shift,
			  ctx->order_failed);
}

/* The zone's deferral bookkeeping, as the classic record copies it. */
static __always_inline int defer_event(void *ctx, __u32 kind, struct zone *z, int order)
{
	return zone_event(ctx, kind, zone_nid(z), zone_index(z), order, BPF_CORE_READ(z, compact_considered),
			  BPF_CORE_READ(z, compact_defer_shift), BPF_CORE_READ(z, compact_order_failed));
}

SEC("raw_tp/mm_compaction_deferred")
int BPF_PROG(cw_deferred_raw, struct zone *zone, int order)
{
	return defer_event(ctx, CW_DEFERRED, zone, order);
}

SEC("raw_tp/mm_compaction_defer_compaction")
int BPF_PROG(cw_defer_compaction_raw, struct zone *zone, int order)
{
	return defer_event(ctx, CW_DEFER_COMPACTION, zone, order);
}

SEC("raw_tp/mm_compaction_defer_reset")
int BPF_PROG(cw_defer_reset_raw, struct zone *zone, int order)
{
	return defer_event(ctx, CW_DEFER_RESET, zone, order);
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* blkreq: follow block requests through every kernel function and block
 * tracepoint that is handed a `struct request *`.
 *
 * Every probe funnels into track(): a request is admitted at an admission
 * point (the start of its life: blk_mq_bio_to_request, block_io_start...)
 * if it passes the filters and fewer than max_requests were admitted; from
 * then on every step that sees the same pointer is emitted, with the stack,
 * until its end of life (completion or free), plus a short tail (the free
 * path runs after completion). Request structures are preallocated per tag
 * and reused, so each admission gets a session id, and an admission point
 * seeing a pointer again ends the old session.
 *
 * Races: several CPUs can see the same request at once (submit on one,
 * complete on another). Every decision that only one CPU may win is an
 * insert or a delete of a hash key, which the kernel makes atomic: one
 * CPU wins a new pointer (insert into `tracked`), a session id (insert
 * into `sessions`, whose size is the admission bound), the right to take
 * over a reused pointer (insert into `claims`), and the end of a session
 * (delete from `live`). No BPF atomic that returns a value is used: those
 * (fetch-and-add, compare-and-swap) arrived in 5.12, and 5.10 refuses to
 * load a program that has one anywhere. Nothing is a single global slot. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kdiag.bpf.h"
#include "blkreq.h"

#define EEXIST 17

const volatile __u64 max_requests = 8;
const volatile __u64 post_end_ns = 10000000;
const volatile __u32 filter_dev = 0;   /* kernel dev_t, 0: any */
const volatile __u32 filter_tgid = 0;  /* 0: any */
const volatile bool filter_comm_on = false;
const volatile char filter_comm[BRQ_COMM_LEN] = {};
const volatile __s32 filter_op = -1;   /* REQ_OP_*, -1: any */

/* The resolved set, indexed by target id; filled in before load. */
const volatile __u8 tgt_posmask[BRQ_MAX_TARGETS] = {};
const volatile __u8 tgt_flags[BRQ_MAX_TARGETS] = {};
const volatile __u8 tgt_rank[BRQ_MAX_TARGETS] = {};

/* Set by userspace once every probe is attached: probes go in one by one,
 * and a request admitted before its later steps' probes exist would show
 * a life with holes (admitted at block_io_start, issue never seen). */
__u64 armed = 0;
/* Sessions ended (a plain atomic add, which every kernel has). */
__u64 finished = 0;
/* Kernels before 5.15 have no attach cookies: the kprobe's target is then
 * found by the probed address in kprobe_ids. */
const volatile bool have_cookies = true;

struct rq_state {
	__u64 session;
	__u64 done_ns;
	__u64 state; /* enum brq_state; 64 bits for compare-and-swap */
	__u64 rank;  /* highest admission point seen in this session */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8); /* set to max_requests before load */
	__type(key, __u64);
	__type(value, struct rq_state);
} tracked SEC(".maps");

/* One key per session ever admitted, never deleted: sized max_requests
 * before load, so a full map is the admission bound. The keys are the
 * session ids (admission times, made unique by the insert itself). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u64);
	__type(value, __u8);
} sessions SEC(".maps");

/* Sessions not yet ended: whoever deletes the key ends it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u64);
	__type(value, __u8);
} live SEC(".maps");

/* A reused pointer is taken over from its old session by one CPU. */
struct claim {
	__u64 ptr;
	__u64 old_session;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct claim);
	__type(value, __u8);
} claims SEC(".maps");

/* Function address to target id, for kprobes without cookies. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BRQ_FUNC_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} kprobe_ids SEC(".maps");

KD_STATS(brq_stats);

/* Kernels before 6.5 have no block_io_start, and the functions that first
 * see a new request (blk_mq_bio_to_request...) are static and inlined, so
 * a request would be admitted only at insert or issue, its start unseen.
 * block_getrq fires when blk_mq_submit_bio has just got a request for the
 * task's bio: the first probe after it that sees a request carrying that
 * bio is the request's birth. By task, because the request is set up in
 * the submitter's context; matched on the bio, because an interrupt on
 * that CPU may hand our probes another request in between. */
const volatile bool bio_births = false;
/* Which argument of block_getrq is the bio: 0, or 1 before 5.11 (queue,
 * bio, op). */
const volatile __u32 getrq_bio_arg = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} new_bios SEC(".maps");

/* Perf-buffer path only. Probes on one CPU can nest (a tracepoint hit in
 * an interrupt while a function probe runs), so one slot per nesting
 * level up to a few. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct brq_event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} depth SEC(".maps");

KD_CHANNEL(events, 4 * 1024 * 1024);

struct brq_event brq_event_layout = {};
struct brq_stats brq_stats_layout = {};

/* Kernels before 5.15 keep the disk in the request itself. */
struct request___old {
	struct gendisk *rq_disk;
};

static __always_inline __u32 disk_dev(struct request *rq)
{
	struct gendisk *disk;

	if (bpf_core_field_exists(rq->q->disk))
		disk = BPF_CORE_READ(rq, q, disk);
	else
		disk = BPF_CORE_READ((struct request___old *)rq, rq_disk);
	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
}

static __always_inline __u32 part_dev(struct request *rq)
{
	if (!bpf_core_field_exists(rq->part))
		return 0;
	struct block_device *part = BPF_CORE_READ(rq, part);

	return part ? BPF_CORE_READ(part, bd_dev) : 0;
}

static __always_inline bool comm_matches(const char *comm)
{
	for (int i = 0; i < BRQ_COMM_LEN; i++) {
		if (comm[i] != filter_comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

/* The filters, in the submitter's context at admission. */
static __always_inline bool wanted(struct request *rq)
{
	if (filter_tgid && (bpf_get_current_pid_tgid() >> 32) != filter_tgid)
		return false;
	if (filter_comm_on) {
		char comm[BRQ_COMM_LEN] = {};

		bpf_get_current_comm(comm, sizeof(comm));
		if (!comm_matches(comm))
			return false;
	}
	if (filter_op >= 0 && (BPF_CORE_READ(rq, cmd_flags) & 0xff) != (__u32)filter_op)
		return false;
	if (filter_dev && disk_dev(rq) != filter_dev && part_dev(rq) != filter_dev)
		return false;
	return true;
}

/* A fresh session id under the admission bound; 0 if full. */
static __always_inline __u64 take_ticket(struct brq_stats *s, __u64 now)
{
	__u8 one = 1;

	if (!*(volatile __u64 *)&armed)
		return 0;
	/* Two CPUs may read the same nanosecond: the insert decides. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u64 id = now + i;
		long err = bpf_map_update_elem(&sessions, &id, &one, BPF_NOEXIST);

		if (!err) {
			bpf_map_update_elem(&live, &id, &one, BPF_NOEXIST);
			return id;
		}
		if (err != -EEXIST)
			break;
	}
	s->full++;
	return 0;
}

/* A session given back: its pointer went to another CPU. */
static __always_inline void return_ticket(__u64 id)
{
	bpf_map_delete_elem(&live, &id);
	bpf_map_delete_elem(&sessions, &id);
}

/* Exactly one caller ends a live session. */
static __always_inline bool end_session(struct rq_state *st, __u64 now)
{
	__u64 session = st->session;

	if (st->state != BRQ_LIVE || bpf_map_delete_elem(&live, &session))
		return false;
	st->done_ns = now;
	st->state = BRQ_DONE;
	__sync_fetch_and_add(&finished, 1);
	return true;
}

static __always_inline void emit(void *ctx, struct brq_stats *s, struct request *rq, __u64 session,
				 __u32 id, __u32 pos, __u8 flags, __u64 now)
{
	struct brq_event *e;
	__u32 zero = 0, *d, slot;

	d = bpf_map_lookup_elem(&depth, &zero);
	if (!d)
		return;
	slot = *d;
	if (slot >= 4) {
		s->lost++;
		return;
	}
	e = kd_reserve(events, &scratch, slot, sizeof(*e));
	if (!e) {
		s->lost++;
		return;
	}
	*d = slot + 1;
	e->ts_ns = now;
	e->rq = (__u64)rq;
	e->session = session;
	e->sector = BPF_CORE_READ(rq, __sector);
	e->bytes = BPF_CORE_READ(rq, __data_len);
	e->cmd_flags = BPF_CORE_READ(rq, cmd_flags);
	e->dev = disk_dev(rq);
	e->target = id;
	e->argpos = pos;
	e->flags = flags;
	e->pad = 0;
	e->cpu = bpf_get_smp_processor_id();
	__u64 pt = bpf_get_current_pid_tgid();
	e->pid = pt >> 32;
	e->tid = (__u32)pt;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->stack_sz = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	if (e->stack_sz < 0)
		s->stack_failed++;
	if (kd_submit(ctx, events, e, sizeof(*e)))
		s->lost++;
	else
		s->events++;
	*d = slot;
}

/* One step of one request: admit, follow, end. */
/* Ids and positions are 64-bit so that the bounds check and the table
 * index are the same register: a 32-bit id is zero-extended after the
 * check, and the verifier loses the bound. */
static __noinline int track(void *ctx, __u64 ptr, __u64 id, __u64 pos)
{
	struct request *rq = (struct request *)ptr;
	struct brq_stats *s;
	struct rq_state *st;
	__u8 flags = 0, one = 1, role, rank;
	__u64 now, fresh;
	struct claim claim;

	if (!ptr || id >= BRQ_MAX_TARGETS)
		return 0;
	s = kd_stats();
	if (!s)
		return 0;
	s->hits++;
	role = tgt_flags[id];
	rank = tgt_rank[id];
	now = bpf_ktime_get_ns();
	st = bpf_map_lookup_elem(&tracked, &ptr);

	if (bio_births && !(role & BRQ_ADMIT) && (!st || st->state != BRQ_LIVE)) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		__u64 *bio = bpf_map_lookup_elem(&new_bios, &tid);

		if (bio && *bio == (__u64)BPF_CORE_READ(rq, bio)) {
			bpf_map_delete_elem(&new_bios, &tid);
			role |= BRQ_ADMIT | BRQ_BIRTH;
			rank = 0;
		}
	}

	if (role & BRQ_ADMIT) {
		if (!st) {
			if (!wanted(rq)) {
				s->filtered++;
				return 0;
			}
			fresh = take_ticket(s, now);
			if (!fresh)
				return 0;
			struct rq_state init = { .session = fresh, .state = BRQ_LIVE, .rank = rank };

			if (bpf_map_update_elem(&tracked, &ptr, &init, BPF_NOEXIST)) {
				/* Another CPU admitted this pointer first: its step counts. */
				return_ticket(fresh);
				s->raced++;
				return 0;
			}
			s->admitted++;
			flags |= BRQ_EV_ADMITTED;
			goto record_new;
		}
		if (st->state == BRQ_LIVE && (rank > st->rank || !(role & BRQ_BIRTH))) {
			/* A later admission point of the same life. */
			if (rank > st->rank)
				st->rank = rank;
		} else {
			/* The pointer is back: the old life is over, its end unseen
			 * if it was still live (e.g. batched completion). */
			claim.ptr = ptr;
			claim.old_session = st->session;
			if (end_session(st, now)) {
				s->reused++;
				flags |= BRQ_EV_REUSED;
			}
			if (!wanted(rq)) {
				s->filtered++;
				st->state = BRQ_DEAD;
				return 0;
			}
			if (bpf_map_update_elem(&claims, &claim, &one, BPF_NOEXIST)) {
				/* Another CPU took the pointer over first. */
				s->raced++;
				return 0;
			}
			fresh = take_ticket(s, now);
			if (!fresh) {
				st->state = BRQ_DEAD;
				return 0;
			}
			st->rank = rank;
			st->done_ns = 0;
			st->state = BRQ_LIVE;
			st->session = fresh;
			s->admitted++;
			flags |= BRQ_EV_ADMITTED;
			goto record_new;
		}
	}
	if (!st)
		return 0;
	switch (st->state) {
	case BRQ_LIVE:
		break;
	case BRQ_DONE:
		if (now - st->done_ns > post_end_ns) {
			s->late++;
			return 0;
		}
		flags |= BRQ_EV_AFTER_END;
		break;
	default:
		return 0;
	}
	if ((role & BRQ_END) && end_session(st, now)) {
		s->ended++;
		flags |= BRQ_EV_ENDED;
	}
	if (!(role & BRQ_HIDDEN))
		emit(ctx, s, rq, st->session, id, pos, flags, now);
	return 0;

record_new:
	if (!(role & BRQ_HIDDEN))
		emit(ctx, s, rq, fresh, id, pos, flags, now);
	return 0;
}

/* Functions: the request may be any of the first six parameters, and a
 * few functions take two (a request and the one merged into it). */


static __always_inline __u64 reg_arg(struct pt_regs *regs, int i)
{
	switch (i) {
	case 0: return PT_REGS_PARM1_CORE(regs);
	case 1: return PT_REGS_PARM2_CORE(regs);
	case 2: return PT_REGS_PARM3_CORE(regs);
	case 3: return PT_REGS_PARM4_CORE(regs);
	case 4: return PT_REGS_PARM5_CORE(regs);
	default: return PT_REGS_PARM6_CORE(regs);
	}
}

static __always_inline __u64 kprobe_target(struct pt_regs *ctx)
{
	/* A kprobe on a function's entry sees the address after the
	 * breakpoint, also when ftrace serves it. */
	__u64 addr = PT_REGS_IP(ctx) - 1;
	__u32 *id;

	if (have_cookies)
		return bpf_get_attach_cookie(ctx);
	id = bpf_map_lookup_elem(&kprobe_ids, &addr);
	return id ? *id : BRQ_MAX_TARGETS;
}

static __always_inline int on_kprobe(struct pt_regs *ctx)
{
	__u64 id = kprobe_target(ctx);
	__u8 mask;

	if (id >= BRQ_MAX_TARGETS)
		return 0;
	mask = tgt_posmask[id];
#pragma unroll
	for (int i = 0; i < BRQ_MAX_ARGS; i++) {
		if (mask & (1 << i))
			track(ctx, reg_arg(ctx, i), id, i);
	}
	return 0;
}

SEC("kprobe.multi")
int brq_kmulti(struct pt_regs *ctx)
{
	return on_kprobe(ctx);
}

SEC("kprobe")
int brq_kprobe(struct pt_regs *ctx)
{
	return on_kprobe(ctx);
}

/* Tracepoints and fentry: tp_btf, raw_tp and fentry all see the arguments
 * as u64s (raw_tp's args[] has the same layout). The mask is read-only
 * data, so the verifier sees each program read only the arguments its
 * target has (bpf_get_func_arg would do for fentry, but only from 5.17). */
static __always_inline int on_tp(__u64 *args, void *ctx, __u32 id)
{
	__u8 mask = tgt_posmask[id];

#pragma unroll
	for (int i = 0; i < BRQ_MAX_ARGS; i++) {
		if (mask & (1 << i))
			track(ctx, args[i], id, i);
	}
	return 0;
}

static __always_inline void note_new_bio(__u64 bio)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (bio)
		bpf_map_update_elem(&new_bios, &tid, &bio, BPF_ANY);
}

/* Each read is its own constant offset: the verifier refuses a context
 * pointer moved by a register. */
static __always_inline __u64 getrq_bio(__u64 *args)
{
	__u64 bio;

	if (getrq_bio_arg == 1) {
		bio = args[1];
		barrier_var(bio);
	} else {
		bio = args[0];
		barrier_var(bio);
	}
	return bio;
}

SEC("tp_btf/block_getrq")
int brq_getrq_tb(__u64 *ctx)
{
	note_new_bio(getrq_bio(ctx));
	return 0;
}

SEC("raw_tp/block_getrq")
int brq_getrq_rt(struct bpf_raw_tracepoint_args *ctx)
{
	note_new_bio(getrq_bio(ctx->args));
	return 0;
}

#define TP_SLOT(n)                                                         \
	SEC("tp_btf") int brq_tb_##n(__u64 *ctx)                           \
	{                                                                  \
		return on_tp(ctx, ctx, BRQ_FUNC_SLOTS + n);                \
	}                                                                  \
	SEC("raw_tp") int brq_rt_##n(struct bpf_raw_tracepoint_args *ctx)  \
	{                                                                  \
		return on_tp(ctx->args, ctx, BRQ_FUNC_SLOTS + n);          \
	}

#define FE_SLOT(n)                                     \
	SEC("fentry") int brq_fe_##n(__u64 *ctx)       \
	{                                              \
		return on_tp(ctx, ctx, n);             \
	}

#define X10(M, n) M(n##0) M(n##1) M(n##2) M(n##3) M(n##4) M(n##5) M(n##6) M(n##7) M(n##8) M(n##9)

TP_SLOT(0) TP_SLOT(1) TP_SLOT(2) TP_SLOT(3) TP_SLOT(4) TP_SLOT(5) TP_SLOT(6) TP_SLOT(7)
TP_SLOT(8) TP_SLOT(9) TP_SLOT(10) TP_SLOT(11) TP_SLOT(12) TP_SLOT(13) TP_SLOT(14) TP_SLOT(15)

FE_SLOT(0) FE_SLOT(1) FE_SLOT(2) FE_SLOT(3) FE_SLOT(4) FE_SLOT(5) FE_SLOT(6) FE_SLOT(7) FE_SLOT(8) FE_SLOT(9)
#define FE_TENS(t) X10(FE_SLOT, t)
FE_TENS(1) FE_TENS(2) FE_TENS(3) FE_TENS(4) FE_TENS(5) FE_TENS(6) FE_TENS(7) FE_TENS(8) FE_TENS(9)
#define FE_HUNDRED(h) FE_TENS(h##0) FE_TENS(h##1) FE_TENS(h##2) FE_TENS(h##3) FE_TENS(h##4) \
	FE_TENS(h##5) FE_TENS(h##6) FE_TENS(h##7) FE_TENS(h##8) FE_TENS(h##9)
FE_HUNDRED(1) FE_HUNDRED(2) FE_HUNDRED(3)

char LICENSE[] SEC("license") = "GPL";

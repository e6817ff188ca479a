//! compactwatch's records, typed: the BPF side sends one `cw_event` layout
//! for every kind (bpf/compactwatch.h), with kind-specific fields in
//! `a`..`h`; here each kind becomes a variant with named fields, so no
//! other module knows which letter holds what.

use crate::bpf::types::cw_event;
use kdiag_shared::maps::{c_string, decode};

kdiag_shared::plain_data!(cw_event);

const ALLOC_FAIL: u32 = 1;
const ALLOC_DONE: u32 = 2;
const RECLAIM_BEGIN: u32 = 3;
const RECLAIM_END: u32 = 4;
const TRY_COMPACT: u32 = 5;
const COMPACT_BEGIN: u32 = 6;
const COMPACT_END: u32 = 7;
const SUITABLE: u32 = 8;
const FINISHED: u32 = 9;
const DEFERRED: u32 = 10;
const DEFER_COMPACTION: u32 = 11;
const DEFER_RESET: u32 = 12;

/// What happened in a zone's compaction bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneNote {
    /// compaction_suitable(): the kernel's `compact_result`.
    Suitable {
        result: i32,
    },
    /// compact_finished() ending a run.
    Finished {
        result: i32,
    },
    /// Skipped: deferred after `order_failed` failed (`considered` of the
    /// next 1 << `defer_shift` attempts so far).
    Deferred {
        considered: i64,
        defer_shift: i64,
        order_failed: i64,
    },
    /// A failure: the next 1 << `defer_shift` attempts are deferred.
    DeferCompaction {
        defer_shift: i64,
    },
    DeferReset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// mm_page_alloc returned no page.
    AllocFail {
        migratetype: i64,
    },
    /// mm_page_alloc ended a task's stall episode with a page.
    AllocDone,
    ReclaimBegin,
    ReclaimEnd {
        nr_reclaimed: u64,
    },
    /// try_to_compact_pages(); priority -1 when the kernel does not say.
    TryCompact {
        priority: i64,
    },
    CompactBegin {
        zone_start_pfn: i64,
        sync: bool,
    },
    CompactEnd {
        zone_start_pfn: i64,
        sync: bool,
        status: i32,
        migrated: u64,
        failed: u64,
    },
    Zone {
        nid: i64,
        zone: u32,
        note: ZoneNote,
    },
}

/// One record: who, when, and what.
#[derive(Clone, Debug)]
pub struct Ev {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub order: i32,
    pub gfp: u64,
    /// Kernel stack in the stacks map, or a negative errno.
    pub stack_id: i32,
    /// NUMA node of the CPU the event ran on.
    pub cpu_node: u32,
    pub what: What,
}

impl Ev {
    /// A record of this `what` with everything else empty (tests).
    #[cfg(test)]
    pub fn new(what: What, ts_ns: u64) -> Ev {
        Ev { ts_ns, pid: 7, tid: 8, comm: "t".into(), order: 5, gfp: 0, stack_id: -1, cpu_node: 0, what }
    }
}

/// Decode a record's bytes; records of an unknown kind are dropped.
pub fn decode_record(data: &[u8]) -> Option<Ev> {
    let e: cw_event = decode(data)?;
    let zone = |note| What::Zone { nid: e.a, zone: e.b as u32, note };
    let what = match e.kind {
        ALLOC_FAIL => What::AllocFail { migratetype: e.b },
        ALLOC_DONE => What::AllocDone,
        RECLAIM_BEGIN => What::ReclaimBegin,
        RECLAIM_END => What::ReclaimEnd { nr_reclaimed: e.a as u64 },
        TRY_COMPACT => What::TryCompact { priority: e.b },
        COMPACT_BEGIN => What::CompactBegin { zone_start_pfn: e.a, sync: e.e != 0 },
        COMPACT_END => What::CompactEnd {
            zone_start_pfn: e.a,
            sync: e.e != 0,
            status: e.f as i32,
            migrated: e.g as u64,
            failed: e.h as u64,
        },
        SUITABLE => zone(ZoneNote::Suitable { result: e.d as i32 }),
        FINISHED => zone(ZoneNote::Finished { result: e.d as i32 }),
        DEFERRED => zone(ZoneNote::Deferred { considered: e.d, defer_shift: e.e, order_failed: e.f }),
        DEFER_COMPACTION => zone(ZoneNote::DeferCompaction { defer_shift: e.e }),
        DEFER_RESET => zone(ZoneNote::DeferReset),
        _ => return None,
    };
    Some(Ev {
        ts_ns: e.ts_ns,
        pid: e.pid,
        tid: e.tid,
        comm: c_string(&e.comm),
        order: e.order,
        gfp: e.gfp,
        stack_id: e.stack_id,
        cpu_node: e.cpu_node,
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &cw_event) -> Vec<u8> {
        kdiag_shared::maps::bytes_of(e).to_vec()
    }

    #[test]
    fn fields_land_where_the_bpf_side_puts_them() {
        let mut e = cw_event {
            kind: COMPACT_END,
            ts_ns: 9,
            pid: 1,
            tid: 2,
            a: 0x100000,
            e: 1,
            f: 8,
            g: 512,
            h: 3,
            ..Default::default()
        };
        e.comm[0] = b'x' as i8;
        let ev = decode_record(&bytes(&e)).unwrap();
        assert_eq!(
            ev.what,
            What::CompactEnd { zone_start_pfn: 0x100000, sync: true, status: 8, migrated: 512, failed: 3 }
        );
        assert_eq!((ev.ts_ns, ev.pid, ev.tid, ev.comm.as_str()), (9, 1, 2, "x"));
        let e = cw_event { kind: DEFERRED, a: 0, b: 2, d: 1, e: 3, f: 5, ..Default::default() };
        assert_eq!(
            decode_record(&bytes(&e)).unwrap().what,
            What::Zone { nid: 0, zone: 2, note: ZoneNote::Deferred { considered: 1, defer_shift: 3, order_failed: 5 } }
        );
        let e = cw_event { kind: 99, ..Default::default() };
        assert!(decode_record(&bytes(&e)).is_none());
        assert!(decode_record(&[0u8; 4]).is_none());
    }
}

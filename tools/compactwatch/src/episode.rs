//! From BPF events to findings: a task's stall episode (direct reclaim and
//! compaction for one allocation, from the first reclaim or compaction
//! event to the mm_page_alloc that ends the call), failures, and compaction
//! runs outside any allocation. Decides and words "compaction not
//! attempted".

use crate::decode::Decoders;
use crate::gfp::{compaction_forbidden, KernelVersion};
use crate::record::{Ev, What, ZoneNote};
use crate::zoneinfo::Zone;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reclaim {
    pub duration_us: Option<u64>,
    pub nr_reclaimed: Option<u64>,
}

/// One compact_zone() run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Run {
    pub zone: String,
    pub mode: &'static str,
    pub status: String,
    pub duration_us: u64,
    pub migrated: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stall {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub order: i32,
    pub gfp: u64,
    pub gfp_text: String,
    #[serde(skip)]
    pub start_ns: u64,
    #[serde(skip)]
    pub end_ns: u64,
    pub duration_us: u64,
    pub reclaim: Vec<Reclaim>,
    pub compaction_attempted: bool,
    pub priority: Option<i64>,
    /// "Node 0 Normal: suitable=continue", "deferred (considered 1, limit 2)"...
    pub zone_notes: Vec<String>,
    pub runs: Vec<Run>,
    /// Why no compaction run happened, in words.
    pub not_attempted: Option<String>,
    pub outcome: &'static str,
    #[serde(skip)]
    pub stack_id: i32,
    #[serde(skip)]
    pub pending_run: Option<(u64, String, &'static str)>,
    #[serde(skip)]
    pending_reclaim: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Background {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub context: &'static str,
    #[serde(flatten)]
    pub run: Run,
    #[serde(skip)]
    pub end_ns: u64,
}

pub enum Finding {
    Fail(Ev),
    Stall(Stall),
    Compact(Background),
}

pub struct Tracker {
    open: HashMap<u32, Stall>,
    background: HashMap<u32, (u64, String, &'static str)>,
    pub kernel: KernelVersion,
}

fn zone_of(zones: &[Zone], pfn: i64) -> String {
    zones
        .iter()
        .find(|z| z.contains_pfn(pfn as u64))
        .map(|z| z.label())
        .unwrap_or_else(|| format!("zone at pfn {pfn:#x}"))
}

fn mode(sync: bool) -> &'static str {
    if sync {
        "sync"
    } else {
        "async"
    }
}

impl Tracker {
    pub fn new(kernel: KernelVersion) -> Tracker {
        Tracker { open: HashMap::new(), background: HashMap::new(), kernel }
    }

    fn stall<'a>(&'a mut self, ev: &Ev, dec: &Decoders) -> &'a mut Stall {
        self.open.entry(ev.tid).or_insert_with(|| Stall {
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm.clone(),
            order: ev.order,
            gfp: ev.gfp,
            gfp_text: dec.gfp.decode(ev.gfp),
            start_ns: ev.ts_ns,
            stack_id: ev.stack_id,
            outcome: "in progress",
            ..Stall::default()
        })
    }

    pub fn feed(&mut self, ev: &Ev, dec: &Decoders, zones: &[Zone]) -> Option<Finding> {
        match &ev.what {
            What::ReclaimBegin => {
                self.stall(ev, dec).pending_reclaim = Some(ev.ts_ns);
                None
            }
            What::ReclaimEnd { nr_reclaimed } => {
                if let Some(s) = self.open.get_mut(&ev.tid) {
                    let began = s.pending_reclaim.take();
                    s.reclaim.push(Reclaim {
                        duration_us: began.map(|b| ev.ts_ns.saturating_sub(b) / 1000),
                        nr_reclaimed: Some(*nr_reclaimed),
                    });
                }
                None
            }
            What::TryCompact { priority } => {
                let s = self.stall(ev, dec);
                s.compaction_attempted = true;
                s.priority = (*priority >= 0).then_some(*priority);
                None
            }
            What::Zone { nid, zone, note } => {
                let s = self.open.get_mut(&ev.tid)?;
                let z = format!("Node {nid} {}", dec.zone(*zone));
                let note = match note {
                    ZoneNote::Suitable { result } => format!("{z}: suitable={}", dec.status(*result)),
                    ZoneNote::Finished { result } => format!("{z}: finished={}", dec.status(*result)),
                    ZoneNote::Deferred { considered, defer_shift, order_failed } => format!(
                        "{z}: deferred (tried {considered} of the next {} attempts after an order-{order_failed} failure)",
                        1u64 << (*defer_shift).clamp(0, 63)
                    ),
                    ZoneNote::DeferCompaction { defer_shift } => {
                        format!("{z}: compaction failed, deferring the next {} attempts", 1u64 << (*defer_shift).clamp(0, 63))
                    }
                    ZoneNote::DeferReset => format!("{z}: deferral reset after success"),
                };
                s.zone_notes.push(note);
                None
            }
            What::CompactBegin { zone_start_pfn, sync } => {
                let run = (ev.ts_ns, zone_of(zones, *zone_start_pfn), mode(*sync));
                match self.open.get_mut(&ev.tid) {
                    Some(s) => s.pending_run = Some(run),
                    None => {
                        self.background.insert(ev.tid, run);
                    }
                }
                None
            }
            What::CompactEnd { zone_start_pfn, sync, status, migrated, failed } => {
                let mk = |began: Option<(u64, String, &'static str)>| {
                    let (b, zone, m) = began.unwrap_or((ev.ts_ns, zone_of(zones, *zone_start_pfn), mode(*sync)));
                    Run {
                        zone,
                        mode: m,
                        status: dec.status(*status),
                        duration_us: ev.ts_ns.saturating_sub(b) / 1000,
                        migrated: *migrated,
                        failed: *failed,
                    }
                };
                if let Some(s) = self.open.get_mut(&ev.tid) {
                    let r = mk(s.pending_run.take());
                    s.runs.push(r);
                    return None;
                }
                let run = mk(self.background.remove(&ev.tid));
                let context = if ev.comm.starts_with("kcompactd") {
                    "kcompactd (background)"
                } else {
                    "outside an allocation: compact_memory, sysfs compact or proactive"
                };
                Some(Finding::Compact(Background {
                    pid: ev.pid,
                    tid: ev.tid,
                    comm: ev.comm.clone(),
                    context,
                    run,
                    end_ns: ev.ts_ns,
                }))
            }
            What::AllocDone | What::AllocFail { .. } => {
                let failed = matches!(ev.what, What::AllocFail { .. });
                let stall = self.open.remove(&ev.tid).map(|mut s| {
                    s.end_ns = ev.ts_ns;
                    s.duration_us = ev.ts_ns.saturating_sub(s.start_ns) / 1000;
                    s.outcome = if failed { "failed" } else { "allocated" };
                    s.not_attempted = self.why_not(&s, dec);
                    s
                });
                match (failed, stall) {
                    (true, s) => {
                        // The failure is the headline; its stall goes first.
                        if let Some(s) = s {
                            self.open.insert(u32::MAX - ev.tid, s);
                        }
                        Some(Finding::Fail(ev.clone()))
                    }
                    (false, Some(s)) => Some(Finding::Stall(s)),
                    _ => None,
                }
            }
        }
    }

    /// The stall that belonged to a failure just returned by `feed`.
    pub fn take_failed_stall(&mut self, tid: u32) -> Option<Stall> {
        self.open.remove(&(u32::MAX - tid))
    }

    fn why_not(&self, s: &Stall, dec: &Decoders) -> Option<String> {
        if !s.runs.is_empty() {
            return None;
        }
        let m = dec.gfp.meaning(s.gfp);
        if let Some(why) = compaction_forbidden(&m, s.order.max(0) as u32, self.kernel) {
            return Some(why);
        }
        if s.zone_notes.iter().any(|n| n.contains("deferred")) {
            return Some("deferred: recent compaction failures in these zones put it on hold".into());
        }
        if s.compaction_attempted {
            if s.zone_notes.iter().any(|n| n.contains("suitable=skipped")) {
                return Some("skipped: too few free order-0 pages to migrate into (reclaim must come first)".into());
            }
            if s.zone_notes.iter().any(|n| n.contains("suitable=success")) {
                return Some("not needed: a suitable block was already free when compaction looked".into());
            }
            return Some("tried, but no zone was suitable".into());
        }
        if s.outcome == "allocated" {
            return Some("not needed: the allocation succeeded after direct reclaim".into());
        }
        if m.noretry {
            return Some("__GFP_NORETRY: the slow path gave up after reclaim without compacting".into());
        }
        Some("the slow path gave up before compaction (no progress, or the task is itself reclaiming)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec() -> Decoders {
        kdiag_testkit::needs_root("reads tracefs format files");
        Decoders::load(&kdiag_shared::precheck::tracefs().unwrap())
    }

    fn ev(what: What, ts_ms: u64) -> Ev {
        Ev::new(what, ts_ms * 1_000_000)
    }

    fn zone(note: ZoneNote) -> What {
        What::Zone { nid: 0, zone: 2, note }
    }

    fn zones() -> Vec<Zone> {
        vec![Zone { node: 0, name: "Normal".into(), start_pfn: 0x100000, spanned: 0x100000, ..Zone::default() }]
    }

    #[test]
    fn direct_compaction_episode() {
        let d = dec();
        let gfp_kernel = d.gfp.mask("GFP_KERNEL").unwrap();
        let mut t = Tracker::new(KernelVersion(6, 18));
        let z = zones();
        let mut e = ev(What::TryCompact { priority: 1 }, 1);
        e.gfp = gfp_kernel;
        assert!(t.feed(&e, &d, &z).is_none());
        // 4: continue.
        t.feed(&ev(zone(ZoneNote::Suitable { result: 4 }), 1), &d, &z);
        t.feed(&ev(What::CompactBegin { zone_start_pfn: 0x100000, sync: false }, 2), &d, &z);
        // 8: success.
        let end = What::CompactEnd { zone_start_pfn: 0x100000, sync: false, status: 8, migrated: 512, failed: 0 };
        t.feed(&ev(end, 5), &d, &z);
        let Some(Finding::Stall(st)) = t.feed(&ev(What::AllocDone, 6), &d, &z) else { panic!() };
        assert_eq!(st.duration_us, 5000);
        assert!(st.compaction_attempted && st.not_attempted.is_none());
        assert_eq!(st.priority, Some(1));
        assert_eq!(st.zone_notes, vec!["Node 0 Normal: suitable=continue"]);
        assert_eq!(
            st.runs,
            vec![Run {
                zone: "Node 0 Normal".into(),
                mode: "async",
                status: "success".into(),
                duration_us: 3000,
                migrated: 512,
                failed: 0
            }]
        );
    }

    #[test]
    fn noio_failure_says_compaction_was_not_attempted() {
        let d = dec();
        let noio = d.gfp.mask("GFP_NOIO").unwrap();
        let mut t = Tracker::new(KernelVersion(6, 18));
        let z = zones();
        let mut r = ev(What::ReclaimBegin, 1);
        r.gfp = noio;
        t.feed(&r, &d, &z);
        t.feed(&ev(What::ReclaimEnd { nr_reclaimed: 40 }, 3), &d, &z);
        let mut f = ev(What::AllocFail { migratetype: 0 }, 4);
        f.gfp = noio;
        assert!(matches!(t.feed(&f, &d, &z), Some(Finding::Fail(_))));
        let st = t.take_failed_stall(8).unwrap();
        assert_eq!(st.outcome, "failed");
        assert_eq!(st.reclaim, vec![Reclaim { duration_us: Some(2000), nr_reclaimed: Some(40) }]);
        assert!(st.not_attempted.as_deref().unwrap().contains("lacks __GFP_IO"), "{st:?}");
    }

    #[test]
    fn manual_compaction_is_a_background_run() {
        let d = dec();
        let mut t = Tracker::new(KernelVersion(6, 18));
        let z = zones();
        t.feed(&ev(What::CompactBegin { zone_start_pfn: 0x100000, sync: true }, 1), &d, &z);
        let end = What::CompactEnd { zone_start_pfn: 0, sync: false, status: 5, migrated: 0, failed: 0 };
        let Some(Finding::Compact(bg)) = t.feed(&ev(end, 3), &d, &z) else { panic!() };
        assert_eq!((bg.run.zone.as_str(), bg.run.mode, bg.run.status.as_str()), ("Node 0 Normal", "sync", "complete"));
        assert_eq!(bg.run.duration_us, 2000);
        assert!(bg.context.contains("compact_memory"));
    }
}

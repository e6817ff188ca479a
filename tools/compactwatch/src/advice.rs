//! One or two lines of advice, chosen by what the verdict found: free
//! memory spread over small blocks, a zone below its watermark, a mask
//! that cannot compact, a fragmentation index the kernel answers with
//! reclaim instead of compaction. Never a generic tuning list.

use crate::verdict::Verdict;
use crate::watermark::Step;

/// Current values of the knobs the advice names, when known (live runs).
#[derive(Clone, Debug, Default)]
pub struct Knobs {
    pub min_free_kbytes: Option<u64>,
    pub watermark_scale_factor: Option<u64>,
    pub extfrag_threshold: Option<u64>,
    pub compaction_proactiveness: Option<u64>,
}

impl Knobs {
    pub fn read_live() -> Knobs {
        let r = |n: &str| std::fs::read_to_string(format!("/proc/sys/vm/{n}")).ok()?.trim().parse().ok();
        Knobs {
            min_free_kbytes: r("min_free_kbytes"),
            watermark_scale_factor: r("watermark_scale_factor"),
            extfrag_threshold: r("extfrag_threshold"),
            compaction_proactiveness: r("compaction_proactiveness"),
        }
    }
}

fn now(v: Option<u64>) -> String {
    v.map(|v| format!(" (now {v})")).unwrap_or_default()
}

pub fn advise(v: &Verdict, k: &Knobs) -> Vec<String> {
    let order = v.request.order;
    let mut out = Vec::new();
    if v.any_ok() == Some(true) && v.compaction_forbidden.is_none() {
        return out;
    }
    let failing: Vec<&Step> = v.zones.iter().filter_map(|z| z.check.failing_step()).collect();
    let small_blocks = failing.iter().any(|s| matches!(s, Step::Lower { .. } | Step::Block { .. }));
    let below_min = !failing.is_empty() && failing.iter().all(|s| matches!(s, Step::Order0 { .. }));
    let frag = v.zones.iter().filter_map(|z| z.fragindex).max();

    if let Some(why) = &v.compaction_forbidden {
        if small_blocks || v.any_ok() != Some(false) {
            out.push(format!(
                "This allocation cannot compact for itself ({}), so order-{order} blocks must be made by others: \
                 `echo 1 > /proc/sys/vm/compact_memory` now; `echo 1 > /proc/sys/vm/drop_caches` frees page cache \
                 that keeps small blocks from merging.",
                why.split(':').next().unwrap_or(why)
            ));
        }
        if v.request.kernel < crate::gfp::KernelVersion(4, 10) {
            out.push(format!(
                "Lasting fix: a kernel with \"mm, page_alloc: only enforce watermarks for order-0 allocations\" (4.4) \
                 and GFP_NOFS compaction (4.10); until then raise vm.min_free_kbytes{} so reclaim keeps order-{order} headroom.",
                now(k.min_free_kbytes)
            ));
        }
        return out;
    }
    if below_min {
        out.push(format!(
            "The zones are short of free memory, not fragmented: reclaim is what fails. Let kswapd start earlier with \
             vm.watermark_scale_factor{} or vm.min_free_kbytes{}.",
            now(k.watermark_scale_factor),
            now(k.min_free_kbytes)
        ));
        return out;
    }
    if small_blocks {
        match (frag, k.extfrag_threshold) {
            (Some(f), Some(t)) if f >= 0 && (f as u64) < t => out.push(format!(
                "Free memory is in small blocks, but fragindex {} is below vm.extfrag_threshold ({t}), so the kernel \
                 reclaims instead of compacting: lower extfrag_threshold, or `echo 1 > /proc/sys/vm/compact_memory` now.",
                crate::watermark::fmt_index(f)
            )),
            _ => out.push(format!(
                "Free memory is in blocks below order {order}: `echo 1 > /proc/sys/vm/compact_memory` now; raise \
                 vm.compaction_proactiveness{} so kcompactd keeps high-order blocks ready.",
                now(k.compaction_proactiveness)
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfp::{GfpTable, KernelVersion};
    use crate::verdict::{judge, Request};
    use crate::watermark::Algo;
    use crate::zoneinfo::Zone;

    fn zone(free: i64, min: i64, nr: &[u64]) -> Zone {
        Zone {
            name: "Normal".into(),
            idx: 2,
            free,
            min,
            low: min,
            protection: vec![0; 4],
            nr_free: nr.iter().map(|&n| Some(n)).collect(),
            ..Zone::default()
        }
    }

    fn req(gfp: u64, kernel: KernelVersion) -> Request {
        let t = GfpTable::builtin_310();
        Request {
            order: 3,
            gfp: Some(gfp),
            gfp_text: t.decode(gfp),
            meaning: Some(t.meaning(gfp)),
            kernel,
            kernel_note: None,
            algo: Algo::for_kernel(kernel),
        }
    }

    const KERNEL: u64 = 0xd0;

    #[test]
    fn short_of_memory_points_at_watermarks() {
        let v = judge(req(KERNEL, KernelVersion(3, 10)), &[zone(100, 200, &[100])], false);
        let a = advise(&v, &Knobs { watermark_scale_factor: Some(10), ..Knobs::default() });
        assert_eq!(a.len(), 1);
        assert!(a[0].contains("not fragmented") && a[0].contains("watermark_scale_factor (now 10)"), "{a:?}");
    }

    #[test]
    fn fragmented_points_at_compaction() {
        let v = judge(req(KERNEL, KernelVersion(3, 10)), &[zone(10000, 200, &[10000])], false);
        let a = advise(&v, &Knobs { extfrag_threshold: Some(500), ..Knobs::default() });
        // fragindex(3) of 10000 order-0 pages is 0.875: compaction territory.
        assert!(a[0].contains("compact_memory") && a[0].contains("compaction_proactiveness"), "{a:?}");
        let a = advise(&v, &Knobs { extfrag_threshold: Some(950), ..Knobs::default() });
        assert!(a[0].contains("below vm.extfrag_threshold (950)"), "{a:?}");
    }

    #[test]
    fn nothing_to_say_when_it_fits() {
        let v = judge(req(KERNEL, KernelVersion(3, 10)), &[zone(10000, 200, &[0, 0, 0, 0, 5])], false);
        assert_eq!(v.any_ok(), Some(true));
        assert!(advise(&v, &Knobs::default()).is_empty());
    }
}

//! compactwatch's Prometheus metrics: the kernel's exact counters, by
//! order, outcome and compaction status only (never a caller or a task:
//! those are the records' and the summary's job).

use crate::stats::Totals;
use kdiag_shared::metrics::Families;

fn outcome(ok: bool) -> (&'static str, String) {
    ("outcome", if ok { "ok" } else { "failed" }.to_string())
}

/// The exposition for the counters summed over CPUs; `transport_lost` is
/// what the perf buffer dropped on kernels without a ring buffer;
/// `status` names a compaction status as this kernel does.
pub fn render(t: &Totals, transport_lost: u64, min_order: u32, status: &dyn Fn(i32) -> String) -> String {
    let mut f = Families::default();
    f.gauge(
        "kdiag_compactwatch_min_order",
        "Allocations of this order and above are watched (--order).",
        &[],
        min_order as f64,
    );
    let orders = t.alloc_ok.len().max(t.alloc_fail.len()).max(t.stalls_ok.len());
    for o in (min_order as usize)..orders {
        let order = ("order", o.to_string());
        for (ok, allocs, stalls) in [(true, &t.alloc_ok, &t.stalls_ok), (false, &t.alloc_fail, &t.stalls_failed)] {
            let labels = [order.clone(), outcome(ok)];
            f.counter(
                "kdiag_compactwatch_allocations_total",
                "High-order page allocations, by order and whether they got a page.",
                &labels,
                allocs.get(o).copied().unwrap_or(0),
            );
            f.counter(
                "kdiag_compactwatch_stalls_total",
                "Allocations that entered direct reclaim or compaction, by order and how they ended.",
                &labels,
                stalls.get(o).copied().unwrap_or(0),
            );
        }
    }
    for (v, &n) in t.runs_by_status.iter().enumerate().filter(|(_, &n)| n > 0) {
        f.counter(
            "kdiag_compactwatch_compaction_runs_total",
            "Compaction runs (compact_zone), in allocations or not, by end status.",
            &[("status", status(v as i32))],
            n,
        );
    }
    f.counter(
        "kdiag_compactwatch_background_compaction_runs_total",
        "Compaction runs outside an allocation: kcompactd, proactive, compact_memory.",
        &[],
        t.background_runs,
    );
    f.counter(
        "kdiag_compactwatch_rate_limited_total",
        "Allocations or compaction runs held back from detailed records by --max-rate (still counted).",
        &[],
        t.rate_limited,
    );
    f.counter(
        "kdiag_compactwatch_rate_limited_records_total",
        "Records those held-back units would have sent.",
        &[],
        t.rate_limited_events,
    );
    f.counter(
        "kdiag_compactwatch_lost_records_total",
        "Records lost to a full output buffer.",
        &[],
        t.lost + transport_lost,
    );
    for (ok, n) in [(true, t.counts_full), (false, t.fails_full)] {
        f.counter(
            "kdiag_compactwatch_uncounted_by_caller_total",
            "Allocations left out of the by-caller tables because a table was full.",
            &[outcome(ok)],
            n,
        );
    }
    f.counter("kdiag_compactwatch_stack_failures_total", "Stack captures that failed.", &[], t.stack_failed);
    f.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_order_outcome_and_status_from_the_watched_order_up() {
        let mut t = Totals { alloc_ok: vec![0; 16], alloc_fail: vec![0; 16], ..Default::default() };
        t.alloc_ok[9] = 32;
        t.alloc_ok[3] = 7; // below --order: the kernel side never counts it
        t.alloc_fail[9] = 2;
        t.stalls_ok = vec![0; 16];
        t.stalls_ok[9] = 5;
        t.stalls_failed = vec![0; 16];
        t.runs_by_status = vec![0, 0, 3, 0, 1];
        t.lost = 1;
        let name =
            |v: i32| ["not_suitable_zone", "skipped", "deferred", "no_suitable_page", "continue"][v as usize].into();
        let text = render(&t, 2, 9, &name);
        let has = |l: &str| assert!(text.lines().any(|x| x == l), "no {l:?} in\n{text}");
        has("kdiag_compactwatch_allocations_total{order=\"9\",outcome=\"ok\"} 32");
        has("kdiag_compactwatch_allocations_total{order=\"9\",outcome=\"failed\"} 2");
        has("kdiag_compactwatch_stalls_total{order=\"9\",outcome=\"ok\"} 5");
        has("kdiag_compactwatch_compaction_runs_total{status=\"deferred\"} 3");
        has("kdiag_compactwatch_compaction_runs_total{status=\"continue\"} 1");
        has("kdiag_compactwatch_lost_records_total 3");
        assert!(!text.contains("order=\"3\""), "{text}");
        assert_eq!(text.matches("compaction_runs_total{").count(), 2, "{text}");
    }
}

//! The summary at exit, computed from the kernel's exact counters and the
//! by-caller tables: one typed value, printed as text or as one JSON line.

use crate::bpf::types::{cw_alloc_key, cw_alloc_val, cw_fail_key, cw_stats};
use crate::stats::{self, Totals};
use kdiag_shared::maps::{self, c_string};
use serde::Serialize;

kdiag_shared::plain_data!(cw_alloc_key, cw_alloc_val, cw_fail_key, cw_stats);

#[derive(Clone, Debug, Serialize)]
pub struct OrderCount {
    pub order: usize,
    pub ok: u64,
    pub failed: u64,
}

/// One caller of high-order allocations, by kernel stack.
#[derive(Clone, Debug, Serialize)]
pub struct Caller {
    pub order: u32,
    /// Failed allocations only: the mask they asked with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gfp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gfp_text: Option<String>,
    pub count: u64,
    pub caller: String,
    pub last_comm: String,
    pub last_pid: u32,
    /// With --stack.
    pub stack: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub backend: &'static str,
    pub duration_s: f64,
    pub stop_reason: String,
    pub min_order: u32,
    pub by_order: Vec<OrderCount>,
    pub failures: u64,
    pub failures_reported: u64,
    pub stalls: u64,
    pub stalls_reported: u64,
    pub compaction_runs: u64,
    pub compaction_runs_reported: u64,
    pub top_failing: Vec<Caller>,
    pub top_callers: Vec<Caller>,
    pub max_rate: u32,
    pub rate_limited: u64,
    pub rate_limited_events: u64,
    pub lost: u64,
    pub counts_table_full: u64,
    pub failures_table_full: u64,
    pub stack_failed: u64,
    #[serde(skip)]
    totals: Totals,
    #[serde(skip)]
    transport_lost: u64,
}

/// How many records of each kind the run printed.
#[derive(Default)]
pub struct Reported {
    pub failures: u64,
    pub stalls: u64,
    pub compact_runs: u64,
}

/// What the summary needs from the run besides the maps.
pub struct Run<'a> {
    /// The backend's name: tp_btf, raw_tp or tracepoint.
    pub backend: &'static str,
    pub duration_s: f64,
    pub stop_reason: String,
    pub min_order: u32,
    pub max_rate: u32,
    pub transport_lost: u64,
    pub reported: &'a Reported,
    /// Stack id to frames and the caller's name.
    pub stack: &'a mut dyn FnMut(i32) -> (Vec<String>, String),
    pub with_stacks: bool,
    pub gfp_text: &'a dyn Fn(u64) -> String,
}

/// The kernel's counters, summed over CPUs.
pub fn totals(stats: &libbpf_rs::Map) -> anyhow::Result<Totals> {
    let mut st = Totals::default();
    st.add(&maps::sum_counters::<cw_stats>(stats)?);
    Ok(st)
}

pub fn build(st: Totals, allocs: &libbpf_rs::Map, fails: &libbpf_rs::Map, run: Run) -> anyhow::Result<Summary> {
    let mut caller = |order: u32, gfp: Option<u64>, stack_id: i32, v: &cw_alloc_val| {
        let (frames, name) = (run.stack)(stack_id);
        Caller {
            order,
            gfp: gfp.map(|g| format!("{g:#x}")),
            gfp_text: gfp.map(run.gfp_text),
            count: v.count,
            caller: name,
            last_comm: c_string(&v.last_comm),
            last_pid: v.last_pid,
            stack: run.with_stacks.then_some(frames),
        }
    };
    let ok_rows =
        maps::entries::<cw_alloc_key, cw_alloc_val>(allocs)?.into_iter().map(|(k, v)| ((k.order, k.stack_id), v));
    let top_callers = stats::top(ok_rows.collect(), |v| v.count, 10)
        .iter()
        .map(|((order, stack_id), v)| caller(*order, None, *stack_id, v))
        .collect();
    let fail_rows =
        maps::entries::<cw_fail_key, cw_alloc_val>(fails)?.into_iter().map(|(k, v)| ((k.order, k.gfp, k.stack_id), v));
    let top_failing = stats::top(fail_rows.collect(), |v| v.count, 10)
        .iter()
        .map(|((order, gfp, stack_id), v)| caller(*order, Some(*gfp), *stack_id, v))
        .collect();
    Ok(Summary {
        kind: "summary",
        backend: run.backend,
        duration_s: run.duration_s,
        stop_reason: run.stop_reason,
        min_order: run.min_order,
        by_order: st.by_order().into_iter().map(|(order, ok, failed)| OrderCount { order, ok, failed }).collect(),
        failures: st.failures(),
        failures_reported: run.reported.failures,
        stalls: st.stalls,
        stalls_reported: run.reported.stalls,
        compaction_runs: st.background_runs,
        compaction_runs_reported: run.reported.compact_runs,
        top_failing,
        top_callers,
        max_rate: run.max_rate,
        rate_limited: st.rate_limited,
        rate_limited_events: st.rate_limited_events,
        lost: st.lost + run.transport_lost,
        counts_table_full: st.counts_full,
        failures_table_full: st.fails_full,
        stack_failed: st.stack_failed,
        totals: st,
        transport_lost: run.transport_lost,
    })
}

impl Summary {
    pub fn text(&self) -> String {
        let mut t = format!(
            "compactwatch: {} after {:.1} s: {} failures ({} shown), {} stalls ({} shown), {} compaction runs \
             outside allocations ({} shown)\n",
            self.stop_reason,
            self.duration_s,
            self.failures,
            self.failures_reported,
            self.stalls,
            self.stalls_reported,
            self.compaction_runs,
            self.compaction_runs_reported
        );
        t += &format!("allocations of order >= {}:\n", self.min_order);
        if self.by_order.is_empty() {
            t += "  none seen\n";
        }
        for b in &self.by_order {
            t += &format!("  order {:>2}: {} ok, {} failed\n", b.order, b.ok, b.failed);
        }
        for (title, rows) in
            [("top callers of failed ones:", &self.top_failing), ("top callers of successful ones:", &self.top_callers)]
        {
            if rows.is_empty() {
                continue;
            }
            t += title;
            t += "\n";
            for c in rows {
                let mask = c.gfp_text.as_ref().map(|g| format!("  {g}")).unwrap_or_default();
                t += &format!(
                    "  {:>8}  order {:>2}{mask}  {}  (last: {} pid {})\n",
                    c.count, c.order, c.caller, c.last_comm, c.last_pid
                );
                for f in c.stack.iter().flatten() {
                    t += &format!("      {f}\n");
                }
            }
        }
        t += &self.totals.gaps_text(self.transport_lost, self.max_rate);
        t
    }
}

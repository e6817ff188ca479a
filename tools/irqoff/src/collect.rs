//! From BPF records and per-CPU counters to irqoff's report: each window
//! as a record with its stack named, and the summary.

use crate::bpf::types::{irqoff_event, irqoff_stats};
use crate::report::{CpuSummary, Kind, Record, StackOf, Summary};
use anyhow::{Context, Result};
use kdiag_shared::histogram::Log2Hist;
use kdiag_shared::maps;
use kdiag_shared::output::{Sink, WallClock};
use kdiag_shared::runctl::RunControl;
use kdiag_shared::stacks;
use kdiag_shared::symbolize::Symbolizer;
use std::time::Duration;

/// The per-CPU counters of the CPUs watched, indexed like `cpus`.
pub fn per_cpu_stats(map: &libbpf_rs::MapMut, cpus: &[u32]) -> Result<Vec<irqoff_stats>> {
    let per_cpu = maps::percpu_values::<irqoff_stats>(map).context("reading statistics")?;
    Ok(cpus.iter().map(|&c| per_cpu.get(c as usize).copied().unwrap_or_default()).collect())
}

/// Print a batch of records; returns how many were windows (not early
/// "ongoing" records).
pub fn flush(
    batch: Vec<irqoff_event>,
    wall: &WallClock,
    symbolizer: &mut Symbolizer,
    sink: &mut Sink,
    json: bool,
    steal: &crate::steal::Steal,
) -> Result<u64> {
    for ev in &batch {
        let mut rec = to_record(ev, wall, symbolizer);
        rec.steal_us = (steal.state() != "unknown").then_some(ev.steal_ns / 1000);
        if json {
            sink.json(&rec)?;
        } else {
            sink.text(&rec.text())?;
        }
    }
    Ok(batch.iter().filter(|e| e.kind == 0).count() as u64)
}

fn to_record(ev: &irqoff_event, wall: &WallClock, symbolizer: &mut Symbolizer) -> Record {
    let (frames, stack_error) = match stacks::kernel_from_event(symbolizer, ev.stack_sz as i64, &ev.stack) {
        stacks::Stack::Failed(e) => (vec![], Some(e)),
        st => (st.frames().to_vec(), None),
    };
    Record {
        kind: if ev.kind == 1 { Kind::Ongoing } else { Kind::Window },
        time: wall.to_system_time(ev.ts_ns),
        mono_ns: ev.ts_ns,
        cpu: ev.cpu,
        comm: maps::c_string(&ev.comm),
        pid: ev.pid,
        tid: ev.tid,
        own: ev.pid == std::process::id(),
        lat_us: ev.lat_ns / 1000,
        steal_us: None,
        stack_of: if ev.stack_of == 1 { StackOf::Holder } else { StackOf::Reenabler },
        user_space: ev.user != 0,
        stack: frames,
        stack_error,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn summarize(
    stats: &[irqoff_stats],
    cpus: &[u32],
    mode: &'static str,
    rc: &RunControl,
    stop_reason: String,
    threshold: Duration,
    period: Duration,
    reported: u64,
    transport_lost: u64,
) -> Summary {
    let sum = |f: fn(&irqoff_stats) -> u64| stats.iter().map(f).sum::<u64>();
    let mut hist = Log2Hist::default();
    for s in stats {
        hist.merge(&Log2Hist::from_slots(&s.hist));
    }
    Summary {
        kind: "summary",
        mode: if mode.starts_with("hardware") { "hw" } else { "sw" },
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason,
        threshold_us: threshold.as_micros() as u64,
        period_us: period.as_micros() as u64,
        windows: sum(|s| s.windows),
        reported,
        ongoing: sum(|s| s.ongoing),
        rate_limited: sum(|s| s.rate_limited),
        lost: sum(|s| s.lost + s.nmi_lost) + transport_lost,
        stack_failed: sum(|s| s.stack_failed + s.nmi_stack_failed),
        steal: "unknown",
        steal_explained: sum(|s| s.steal_explained),
        steal_failed: sum(|s| s.steal_failed),
        per_cpu: stats
            .iter()
            .zip(cpus)
            .map(|(s, &cpu)| CpuSummary {
                cpu,
                samples: s.samples,
                windows: s.windows,
                max_us: s.lat_max_ns / 1000,
                avg_us: s.lat_sum_ns.checked_div(s.windows).unwrap_or(0) / 1000,
                steal_us: s.steal_ns / 1000,
            })
            .collect(),
        hist_us: hist,
    }
}

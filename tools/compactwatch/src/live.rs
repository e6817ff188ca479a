//! The live run's output stage: findings from the episode tracker become
//! FAIL, STALL, COMPACT and VERDICT records (text or JSON), each with the
//! kernel stack of its caller.

use crate::decode::Decoders;
use crate::episode::{Finding, Stall, Tracker};
use crate::gfp::{self, KernelVersion};
use crate::record::{Ev, What};
use crate::summary::Reported;
use crate::watermark::Algo;
use crate::{advice, debugfs, dmesg, verdict, vmstat, zoneinfo};
use anyhow::{anyhow, Result};
use kdiag_shared::output::{json_time, Sink, WallClock};
use kdiag_shared::stacks::{Stack, Stacks};
use serde_json::json;

/// Everything the output stage needs besides the event.
pub struct Ctx<'a> {
    pub dec: &'a Decoders,
    pub kernel: KernelVersion,
    pub algo: Algo,
    pub order: u32,
    pub json: bool,
    pub stack: bool,
    pub wall: WallClock,
    pub stacks: Stacks,
    pub vm_last: vmstat::Counters,
    pub knobs: advice::Knobs,
    pub tracker: Tracker,
    pub zones: Vec<zoneinfo::Zone>,
    pub reported: Reported,
}

impl Ctx<'_> {
    /// A stack's frames as `sym+off [module]`, and its caller's name.
    pub fn stack_of(&mut self, id: i32) -> (Vec<String>, String) {
        let frames: Vec<String> = match self.stacks.kernel(id) {
            Stack::Frames(f) => f.iter().map(|f| f.label()).collect(),
            _ => vec![],
        };
        let name = caller(&frames);
        (frames, name)
    }

    /// Feed a batch of records, printing what they make.
    pub fn process(&mut self, batch: Vec<Ev>, sink: &mut Sink) -> Result<()> {
        for ev in &batch {
            match self.tracker.feed(ev, self.dec, &self.zones) {
                Some(Finding::Fail(f)) => {
                    self.reported.failures += 1;
                    let stall = self.tracker.take_failed_stall(f.tid);
                    self.zones = zoneinfo::read_live().map_err(|e| anyhow!(e))?;
                    emit_fail(self, &f, stall.as_ref(), sink)?;
                    let zones = std::mem::take(&mut self.zones);
                    emit_verdict(self, &zones, f.gfp, "failure", sink)?;
                    self.zones = zones;
                }
                Some(Finding::Stall(s)) => {
                    self.reported.stalls += 1;
                    emit_stall(self, &s, sink)?;
                }
                Some(Finding::Compact(b)) => {
                    self.reported.compact_runs += 1;
                    let time = json_time(self.wall.to_system_time(b.end_ns));
                    if self.json {
                        let mut v = serde_json::to_value(&b)?;
                        v["type"] = json!("compact");
                        v["time"] = json!(time);
                        sink.json(&v)?;
                    } else {
                        sink.text(&format!(
                            "{time} COMPACT {} ({}) tid {}, {}: {} {} compaction, status {}, {} us, migrated {} failed {}\n",
                            b.comm, b.pid, b.tid, b.context, b.run.zone, b.run.mode, b.run.status, b.run.duration_us,
                            b.run.migrated, b.run.failed
                        ))?;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The --interval verdict.
    pub fn interval_verdict(&mut self, sink: &mut Sink) -> Result<()> {
        self.zones = zoneinfo::read_live().map_err(|e| anyhow!(e))?;
        let gfp = self.dec.gfp.mask("GFP_KERNEL").unwrap_or(0);
        let zones = std::mem::take(&mut self.zones);
        let r = emit_verdict(self, &zones, gfp, "interval", sink);
        self.zones = zones;
        r
    }
}

fn caller(frames: &[String]) -> String {
    frames
        .iter()
        .find(|f| !dmesg::is_allocator_frame(f) && !f.starts_with("trace_") && !f.starts_with("__traceiter"))
        .cloned()
        .unwrap_or_else(|| "[unknown]".into())
}

fn migratetype(mt: i64) -> &'static str {
    match mt {
        0 => "Unmovable",
        1 => "Movable",
        2 => "Reclaimable",
        3 => "HighAtomic",
        _ => "other",
    }
}

fn stall_text(s: &Stall) -> String {
    let mut t = String::new();
    for r in &s.reclaim {
        t += &format!(
            "    direct reclaim: {} pages reclaimed in {} us\n",
            r.nr_reclaimed.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            r.duration_us.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    if s.compaction_attempted {
        t += &format!(
            "    compaction attempted{}\n",
            s.priority.map(|p| format!(", priority {p} (0 = most thorough)")).unwrap_or_default()
        );
    }
    for n in &s.zone_notes {
        t += &format!("    {n}\n");
    }
    for r in &s.runs {
        t += &format!(
            "    {} {} compaction: status {}, {} us, migrated {} failed {}\n",
            r.zone, r.mode, r.status, r.duration_us, r.migrated, r.failed
        );
    }
    if let Some(why) = &s.not_attempted {
        t += &format!("    compaction not attempted: {why}\n");
    }
    t
}

fn emit_stall(ctx: &mut Ctx, s: &Stall, sink: &mut Sink) -> Result<()> {
    let (frames, caller) = ctx.stack_of(s.stack_id);
    let time = json_time(ctx.wall.to_system_time(s.end_ns));
    if ctx.json {
        let mut v = serde_json::to_value(s)?;
        v["type"] = json!("stall");
        v["time"] = json!(time);
        v["caller"] = json!(caller);
        if ctx.stack {
            v["stack"] = json!(frames);
        }
        return Ok(sink.json(&v)?);
    }
    let mut t = format!(
        "{time} STALL {} ({}) tid {}: order {} {} stalled {} us, {}; caller {}\n",
        s.comm, s.pid, s.tid, s.order, s.gfp_text, s.duration_us, s.outcome, caller
    );
    t += &stall_text(s);
    if ctx.stack {
        for f in &frames {
            t += &format!("      {f}\n");
        }
    }
    Ok(sink.text(&t)?)
}

fn emit_fail(ctx: &mut Ctx, f: &Ev, stall: Option<&Stall>, sink: &mut Sink) -> Result<()> {
    let (frames, caller) = ctx.stack_of(f.stack_id);
    let mt = match f.what {
        What::AllocFail { migratetype } => migratetype,
        _ => -1,
    };
    let time = json_time(ctx.wall.to_system_time(f.ts_ns));
    let gfp_text = ctx.dec.gfp.decode(f.gfp);
    if ctx.json {
        return Ok(sink.json(&json!({
            "type": "fail", "time": time, "comm": f.comm, "pid": f.pid, "tid": f.tid, "order": f.order,
            "gfp": format!("{:#x}", f.gfp), "gfp_text": gfp_text, "gfp_flags": ctx.dec.gfp.bits(f.gfp), "migratetype": migratetype(mt),
            "node": f.cpu_node, "caller": caller, "stack": frames, "stall": stall,
        }))?);
    }
    let mut t = format!(
        "{time} FAIL {} ({}) tid {}: order {} {} ({:#x}) migratetype {} on node {}, caller {}\n",
        f.comm,
        f.pid,
        f.tid,
        f.order,
        gfp_text,
        f.gfp,
        migratetype(mt),
        f.cpu_node,
        caller
    );
    match stall {
        Some(s) => t += &stall_text(s),
        None => {
            let m = ctx.dec.gfp.meaning(f.gfp);
            let why = gfp::compaction_forbidden(&m, f.order.max(0) as u32, ctx.kernel)
                .unwrap_or_else(|| "no reclaim or compaction was seen for it (the fast path failed alone)".into());
            t += &format!("    compaction not attempted: {why}\n");
        }
    }
    for fr in &frames {
        t += &format!("      {fr}\n");
    }
    Ok(sink.text(&t)?)
}

fn emit_verdict(ctx: &mut Ctx, zones: &[zoneinfo::Zone], gfp: u64, why: &str, sink: &mut Sink) -> Result<()> {
    let req = verdict::Request {
        order: ctx.order,
        gfp: Some(gfp),
        gfp_text: ctx.dec.gfp.decode(gfp),
        meaning: Some(ctx.dec.gfp.meaning(gfp)),
        kernel: ctx.kernel,
        kernel_note: None,
        algo: ctx.algo,
    };
    let v = verdict::judge(req, zones, std::path::Path::new(debugfs::EXTFRAG).exists());
    let now = vmstat::read();
    let delta = vmstat::delta(&ctx.vm_last, &now);
    ctx.vm_last = now;
    let advice = advice::advise(&v, &ctx.knobs);
    let time = json_time(std::time::SystemTime::now());
    if ctx.json {
        return Ok(sink.json(&json!({
            "type": "verdict", "time": time, "why": why, "verdict": v, "vmstat_delta": delta, "advice": advice,
        }))?);
    }
    let mut t = format!("{time} VERDICT ({why}) ");
    t += &v.text();
    t += &format!("  vmstat since last verdict: {}\n", vmstat::text(&delta));
    for a in &advice {
        t += &format!("  advice: {a}\n");
    }
    Ok(sink.text(&t)?)
}

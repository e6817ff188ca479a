//! compactwatch: explain high-order allocation stalls and failures. See
//! `compactwatch --help` for the output and bpf/compactwatch.bpf.c for what
//! is collected where.

mod advice;
mod cli;
mod debugfs;
mod decode;
mod dmesg;
mod episode;
mod gfp;
mod metrics;
mod offline;
mod stats;
mod tpformat;
mod verdict;
mod vmstat;
mod watermark;
mod zoneinfo;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/compactwatch.skel.rs"));
}

use anyhow::{anyhow, Context, Result};
use bpf::types::{cw_alloc_key, cw_alloc_val, cw_event, cw_fail_key, cw_stats};
use bpf::CompactwatchSkelBuilder;
use decode::Decoders;
use episode::{Ev, Finding, Stall, Tracker};
use gfp::KernelVersion;
use kdiag_shared::args::BadInput;
use kdiag_shared::metrics::Exporter;
use kdiag_shared::output::{json_time, Sink, WallClock};
use kdiag_shared::runctl::RunControl;
use kdiag_shared::symbolize::{is_tracer_frame, Symbolizer};
use kdiag_shared::transport::{EventStream, Kind as Transport};
use kdiag_shared::{precheck, Errno};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::{Duration, Instant};
use watermark::Algo;

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("compactwatch");
    if let Err(e) = run(cli) {
        eprintln!("compactwatch: {e:#}");
        std::process::exit(kdiag_shared::args::exit_code(&e));
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    if let Some(path) = &cli.from_dmesg {
        if cli.metrics.addr.is_some() || cli.metrics.file.is_some() {
            return Err(BadInput("--metrics and --metrics-file watch a live run, not --from-dmesg".into()).into());
        }
        return from_dmesg(path, &cli);
    }
    let exporter = Exporter::start("compactwatch", &cli.metrics)?;
    precheck::check(precheck::Needs { btf: true, tracefs: true }).map_err(|e| anyhow!(e))?;
    let tfs = precheck::tracefs().map_err(|e| anyhow!(e))?;
    let dec = Decoders::load(&tfs);
    let kernel = KernelVersion::running().context("cannot read the kernel release")?;
    let algo = cli.algo.0.unwrap_or_else(|| Algo::for_kernel(kernel));
    live(cli, dec, kernel, algo, exporter)
}

fn from_dmesg(path: &std::path::Path, cli: &cli::Cli) -> Result<()> {
    let text = std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let report = dmesg::parse(&String::from_utf8_lossy(&text)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // Names in a modern report are given meaning by the running kernel's
    // table, when there is one to read.
    let live = precheck::tracefs().ok().map(|t| Decoders::load(&t).gfp);
    let a = offline::analyse(report, cli.algo.0, live.as_ref());
    let advice = advice::advise(&a.verdict, &advice::Knobs::default());
    let mut sink = Sink::stdout();
    if cli.json {
        sink.json(&json!({
            "type": "verdict",
            "source": path.display().to_string(),
            "comm": a.report.comm,
            "pid": a.report.pid,
            "caller": a.report.caller(),
            "gfp_names_from": a.gfp_source,
            "verdict": a.verdict,
            "advice": advice,
        }))?;
        return Ok(());
    }
    let mut s = format!(
        "FAIL (from {}) {} pid {}: order {} mode {:#x}, caller {}\n",
        path.display(),
        a.report.comm,
        a.report.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        a.report.order,
        a.report.mode,
        a.report.caller().unwrap_or("[unknown]")
    );
    if let Some(src) = a.gfp_source {
        s += &format!("  GFP names from the {src}\n");
    }
    s += &a.verdict.text();
    for l in &advice {
        s += &format!("  advice: {l}\n");
    }
    sink.text(&s)?;
    Ok(())
}

/// Everything the output stage needs besides the event.
struct Ctx<'a> {
    dec: &'a Decoders,
    kernel: KernelVersion,
    algo: Algo,
    order: u32,
    json: bool,
    stack: bool,
    wall: WallClock,
    symbolizer: Symbolizer,
    vm_last: vmstat::Counters,
    knobs: advice::Knobs,
    max_rate: u32,
}

fn live(cli: cli::Cli, dec: Decoders, kernel: KernelVersion, algo: Algo, mut exporter: Exporter) -> Result<()> {
    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = CompactwatchSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.min_order = cli.order;
    ro.target_tgid = cli.pid.unwrap_or(0);
    ro.max_per_sec = cli.max_rate;
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).map_err(|e| anyhow!(e))?;
    let skel = open.load().context("loading the BPF programs")?;

    // mm_page_alloc is the one signal without which the tool is blind; the
    // others are attached if this kernel has them, and missing ones named.
    let p = &skel.progs;
    let mut links = Vec::new();
    let mut missing = Vec::new();
    let all: [(&str, &libbpf_rs::ProgramMut); 12] = [
        ("kmem:mm_page_alloc", &p.cw_page_alloc),
        ("vmscan:mm_vmscan_direct_reclaim_begin", &p.cw_reclaim_begin),
        ("vmscan:mm_vmscan_direct_reclaim_end", &p.cw_reclaim_end),
        ("compaction:mm_compaction_try_to_compact_pages", &p.cw_try_compact),
        ("compaction:mm_compaction_begin", &p.cw_compact_begin),
        ("compaction:mm_compaction_end", &p.cw_compact_end),
        ("compaction:mm_compaction_migratepages", &p.cw_migratepages),
        ("compaction:mm_compaction_suitable", &p.cw_suitable),
        ("compaction:mm_compaction_finished", &p.cw_finished),
        ("compaction:mm_compaction_deferred", &p.cw_deferred),
        ("compaction:mm_compaction_defer_compaction", &p.cw_defer_compaction),
        ("compaction:mm_compaction_defer_reset", &p.cw_defer_reset),
    ];
    for (i, (name, prog)) in all.iter().enumerate() {
        match prog.attach() {
            Ok(l) => links.push(l),
            Err(e) if i == 0 => {
                let why = Errno::of_libbpf(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string());
                return Err(anyhow!("cannot attach to {name}: {why}"));
            }
            Err(_) => missing.push(*name),
        }
    }

    // Signals are ours before the banner says we are ready, so a Ctrl-C
    // right after it still ends with a summary and a clean detach.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    eprintln!(
        "compactwatch: kernel {kernel}, {} watermark algorithm{}; GFP names from the {}, compaction status from the {}",
        algo.name(),
        if cli.algo.0.is_some() { " (--algo)" } else { "" },
        dec.gfp.source,
        dec.status_source
    );
    if !missing.is_empty() {
        eprintln!("compactwatch: warning: this kernel lacks {}; those details will be missing", missing.join(", "));
    }
    eprintln!(
        "compactwatch: watching allocations of order >= {} ({}), events via {}{}. Ctrl-C to end.",
        cli.order,
        cli.pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "all tasks".into()),
        transport.name(),
        exporter.describe()
    );

    let pending: Rc<RefCell<Vec<Ev>>> = Rc::default();
    let sink_pending = pending.clone();
    let stream =
        EventStream::open(transport, &[(&skel.maps.events_ring, &skel.maps.events_perf)], move |data: &[u8]| {
            if data.len() >= std::mem::size_of::<cw_event>() {
                // SAFETY: cw_event is plain data and the length was checked.
                let e = unsafe { std::ptr::read_unaligned(data.as_ptr() as *const cw_event) };
                sink_pending.borrow_mut().push(to_ev(&e));
            }
        })
        .map_err(|e| anyhow!(e))?;

    let mut sink = Sink::stdout();
    let mut ctx = Ctx {
        dec: &dec,
        kernel,
        algo,
        order: cli.order,
        json: cli.json,
        stack: cli.stack,
        wall: WallClock::new(),
        symbolizer: Symbolizer::new(),
        vm_last: vmstat::read(),
        knobs: advice::Knobs::read_live(),
        max_rate: cli.max_rate,
    };
    let mut tracker = Tracker::new(kernel);
    let mut zones = zoneinfo::read_live().map_err(|e| anyhow!(e))?;
    let mut next_verdict = cli.interval.map(|i| Instant::now() + i);
    let mut counts = Counts::default();
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        let mut wait = rc.poll_timeout(Duration::from_millis(200));
        if let Some(t) = next_verdict {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        stream.poll(wait).map_err(|e| anyhow!(e))?;
        process(&pending, &mut tracker, &mut ctx, &mut zones, &skel.maps.stacks, &mut sink, &mut counts)?;
        exporter.update(|| Ok(metrics::render(&totals(&skel)?, stream.lost(), cli.order, &|v| dec.status(v))))?;
        if let (Some(t), Some(i)) = (next_verdict, cli.interval) {
            if Instant::now() >= t {
                zones = zoneinfo::read_live().map_err(|e| anyhow!(e))?;
                let gfp = dec.gfp.mask("GFP_KERNEL").unwrap_or(0);
                emit_verdict(&mut ctx, &zones, gfp, "interval", &mut sink)?;
                next_verdict = Some(t + i);
            }
        }
    };
    stream.poll(Duration::ZERO).map_err(|e| anyhow!(e))?;
    process(&pending, &mut tracker, &mut ctx, &mut zones, &skel.maps.stacks, &mut sink, &mut counts)?;

    let st = totals(&skel)?;
    let final_metrics = metrics::render(&st, stream.lost(), cli.order, &|v| dec.status(v));
    summary(&skel, &st, &mut ctx, &rc, reason.to_string(), stream.lost(), &counts, &mut sink)?;
    drop(stream);
    drop(links);
    exporter.finish(final_metrics);
    Ok(())
}

#[derive(Default)]
struct Counts {
    failures: u64,
    stalls: u64,
    compact_runs: u64,
}

fn to_ev(e: &cw_event) -> Ev {
    let comm: Vec<u8> = e.comm.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ev {
        ts_ns: e.ts_ns,
        kind: e.kind,
        pid: e.pid,
        tid: e.tid,
        order: e.order,
        gfp: e.gfp,
        a: e.a,
        b: e.b,
        d: e.d,
        e: e.e,
        f: e.f,
        g: e.g,
        h: e.h,
        stack_id: e.stack_id,
        cpu_node: e.cpu_node,
        comm: String::from_utf8_lossy(&comm).into_owned(),
    }
}

fn kernel_stack(map: &libbpf_rs::Map, id: i32, sym: &mut Symbolizer) -> Vec<String> {
    if id < 0 {
        return vec![];
    }
    let Ok(Some(raw)) = map.lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY) else { return vec![] };
    let addrs: Vec<u64> =
        raw.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).take_while(|&a| a != 0).collect();
    sym.kernel_stack(&addrs)
        .into_iter()
        .filter(|f| !f.sym.as_deref().is_some_and(is_tracer_frame))
        .map(|f| f.label())
        .collect()
}

fn caller(frames: &[String]) -> String {
    frames
        .iter()
        .find(|f| !dmesg::is_allocator_frame(f) && !f.starts_with("trace_") && !f.starts_with("__traceiter"))
        .cloned()
        .unwrap_or_else(|| "[unknown]".into())
}

#[allow(clippy::too_many_arguments)]
fn process(
    pending: &RefCell<Vec<Ev>>,
    tracker: &mut Tracker,
    ctx: &mut Ctx,
    zones: &mut Vec<zoneinfo::Zone>,
    stacks: &libbpf_rs::Map,
    sink: &mut Sink,
    counts: &mut Counts,
) -> Result<()> {
    let batch = std::mem::take(&mut *pending.borrow_mut());
    for ev in &batch {
        match tracker.feed(ev, ctx.dec, zones) {
            Some(Finding::Fail(f)) => {
                counts.failures += 1;
                let stall = tracker.take_failed_stall(f.tid);
                *zones = zoneinfo::read_live().map_err(|e| anyhow!(e))?;
                emit_fail(ctx, &f, stall.as_ref(), stacks, sink)?;
                emit_verdict(ctx, zones, f.gfp, "failure", sink)?;
            }
            Some(Finding::Stall(s)) => {
                counts.stalls += 1;
                emit_stall(ctx, &s, stacks, sink)?;
            }
            Some(Finding::Compact(b)) => {
                counts.compact_runs += 1;
                let time = json_time(ctx.wall.to_system_time(b.end_ns));
                if ctx.json {
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

fn emit_stall(ctx: &mut Ctx, s: &Stall, stacks: &libbpf_rs::Map, sink: &mut Sink) -> Result<()> {
    let frames = kernel_stack(stacks, s.stack_id, &mut ctx.symbolizer);
    let time = json_time(ctx.wall.to_system_time(s.end_ns));
    if ctx.json {
        let mut v = serde_json::to_value(s)?;
        v["type"] = json!("stall");
        v["time"] = json!(time);
        v["caller"] = json!(caller(&frames));
        if ctx.stack {
            v["stack"] = json!(frames);
        }
        return Ok(sink.json(&v)?);
    }
    let mut t = format!(
        "{time} STALL {} ({}) tid {}: order {} {} stalled {} us, {}; caller {}\n",
        s.comm,
        s.pid,
        s.tid,
        s.order,
        s.gfp_text,
        s.duration_us,
        s.outcome,
        caller(&frames)
    );
    t += &stall_text(s);
    if ctx.stack {
        for f in &frames {
            t += &format!("      {f}\n");
        }
    }
    Ok(sink.text(&t)?)
}

fn emit_fail(ctx: &mut Ctx, f: &Ev, stall: Option<&Stall>, stacks: &libbpf_rs::Map, sink: &mut Sink) -> Result<()> {
    let frames = kernel_stack(stacks, f.stack_id, &mut ctx.symbolizer);
    let time = json_time(ctx.wall.to_system_time(f.ts_ns));
    let gfp_text = ctx.dec.gfp.decode(f.gfp);
    if ctx.json {
        return Ok(sink.json(&json!({
            "type": "fail", "time": time, "comm": f.comm, "pid": f.pid, "tid": f.tid, "order": f.order,
            "gfp": format!("{:#x}", f.gfp), "gfp_text": gfp_text, "gfp_flags": ctx.dec.gfp.bits(f.gfp), "migratetype": migratetype(f.b),
            "node": f.cpu_node, "caller": caller(&frames), "stack": frames, "stall": stall,
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
        migratetype(f.b),
        f.cpu_node,
        caller(&frames)
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

/// Every entry of a hash map whose key and value are the plain-data types
/// `K` and `V`.
fn entries<K: Copy, V: Copy>(map: &libbpf_rs::Map) -> Vec<(K, V)> {
    map.keys()
        .filter_map(|k| {
            let v = map.lookup(&k, MapFlags::ANY).ok()??;
            if k.len() < std::mem::size_of::<K>() || v.len() < std::mem::size_of::<V>() {
                return None;
            }
            // SAFETY: K and V are the plain-data layouts of this map; lengths checked.
            unsafe {
                Some((
                    std::ptr::read_unaligned(k.as_ptr() as *const K),
                    std::ptr::read_unaligned(v.as_ptr() as *const V),
                ))
            }
        })
        .collect()
}

fn comm_of(v: &cw_alloc_val) -> String {
    let comm: Vec<u8> = v.last_comm.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&comm).into_owned()
}

/// The kernel's counters, summed over CPUs.
fn totals(skel: &bpf::CompactwatchSkel) -> Result<stats::Totals> {
    let mut st = stats::Totals::default();
    st.add(&kdiag_shared::maps::sum_counters::<cw_stats>(&skel.maps.stats).context("reading statistics")?);
    Ok(st)
}

#[allow(clippy::too_many_arguments)]
fn summary(
    skel: &bpf::CompactwatchSkel,
    st: &stats::Totals,
    ctx: &mut Ctx,
    rc: &RunControl,
    reason: String,
    transport_lost: u64,
    counts: &Counts,
    sink: &mut Sink,
) -> Result<()> {
    let ok_rows = entries::<cw_alloc_key, cw_alloc_val>(&skel.maps.allocs)
        .into_iter()
        .map(|(k, v)| ((k.order, k.stack_id), v))
        .collect();
    let callers: Vec<Value> = stats::top(ok_rows, |v: &cw_alloc_val| v.count, 10)
        .iter()
        .map(|((order, stack_id), v)| {
            let frames = kernel_stack(&skel.maps.stacks, *stack_id, &mut ctx.symbolizer);
            json!({
                "order": order, "count": v.count, "caller": caller(&frames),
                "last_comm": comm_of(v), "last_pid": v.last_pid,
                "stack": if ctx.stack { json!(frames) } else { Value::Null },
            })
        })
        .collect();
    let fail_rows = entries::<cw_fail_key, cw_alloc_val>(&skel.maps.fails)
        .into_iter()
        .map(|(k, v)| ((k.order, k.gfp, k.stack_id), v))
        .collect();
    let failing: Vec<Value> = stats::top(fail_rows, |v: &cw_alloc_val| v.count, 10)
        .iter()
        .map(|((order, gfp, stack_id), v)| {
            let frames = kernel_stack(&skel.maps.stacks, *stack_id, &mut ctx.symbolizer);
            json!({
                "order": order, "gfp": format!("{gfp:#x}"), "gfp_text": ctx.dec.gfp.decode(*gfp), "count": v.count,
                "caller": caller(&frames), "last_comm": comm_of(v), "last_pid": v.last_pid,
                "stack": if ctx.stack { json!(frames) } else { Value::Null },
            })
        })
        .collect();
    let by_order: Vec<Value> =
        st.by_order().iter().map(|&(o, ok, failed)| json!({"order": o, "ok": ok, "failed": failed})).collect();
    let sum = json!({
        "type": "summary",
        "duration_s": rc.elapsed().as_secs_f64(),
        "stop_reason": reason,
        "min_order": ctx.order,
        "by_order": by_order,
        "failures": st.failures(),
        "failures_reported": counts.failures,
        "stalls": st.stalls,
        "stalls_reported": counts.stalls,
        "compaction_runs": st.background_runs,
        "compaction_runs_reported": counts.compact_runs,
        "top_failing": failing,
        "top_callers": callers,
        "max_rate": ctx.max_rate,
        "rate_limited": st.rate_limited,
        "rate_limited_events": st.rate_limited_events,
        "lost": st.lost + transport_lost,
        "counts_table_full": st.counts_full,
        "failures_table_full": st.fails_full,
        "stack_failed": st.stack_failed,
    });
    if ctx.json {
        return Ok(sink.json(&sum)?);
    }
    let mut t = format!(
        "compactwatch: {reason} after {:.1} s: {} failures ({} shown), {} stalls ({} shown), {} compaction runs \
         outside allocations ({} shown)\n",
        rc.elapsed().as_secs_f64(),
        st.failures(),
        counts.failures,
        st.stalls,
        counts.stalls,
        st.background_runs,
        counts.compact_runs
    );
    t += &format!("allocations of order >= {}:\n", ctx.order);
    if by_order.is_empty() {
        t += "  none seen\n";
    }
    for b in &by_order {
        t += &format!("  order {:>2}: {} ok, {} failed\n", b["order"], b["ok"], b["failed"]);
    }
    for (title, rows) in [("top callers of failed ones:", &failing), ("top callers of successful ones:", &callers)] {
        if rows.is_empty() {
            continue;
        }
        t += title;
        t += "\n";
        for c in rows {
            let mask = c["gfp_text"].as_str().map(|g| format!("  {g}")).unwrap_or_default();
            t += &format!(
                "  {:>8}  order {:>2}{mask}  {}  (last: {} pid {})\n",
                c["count"],
                c["order"],
                c["caller"].as_str().unwrap_or(""),
                c["last_comm"].as_str().unwrap_or(""),
                c["last_pid"]
            );
            if let Some(frames) = c["stack"].as_array() {
                for f in frames {
                    t += &format!("      {}\n", f.as_str().unwrap_or(""));
                }
            }
        }
    }
    t += &st.gaps_text(transport_lost, ctx.max_rate);
    Ok(sink.text(&t)?)
}

//! blkreq: follow block requests through every kernel function and
//! tracepoint that handles them, as a call tree or a timeline. See
//! `blkreq --help` and bpf/blkreq.bpf.c for how.

mod attach;
mod btfscan;
mod cli;
mod filters;
mod globs;
mod report;
mod targets;
mod timeline;
mod tree;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/blkreq.skel.rs"));
}

use anyhow::{anyhow, Context, Result};
use bpf::types::{brq_event, brq_stats};
use cli::Format;
use kdiag_shared::backend;
use kdiag_shared::output::Sink;
use kdiag_shared::precheck;
use kdiag_shared::runctl::{RunControl, StopReason};
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::transport::{EventStream, Kind as Transport};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use targets::Resolved;
use timeline::Step;

/// After the last tracked request ends, its free path still runs (on the
/// completing CPU, microseconds later): steps this soon after the end
/// still belong to it, and the run lingers this long before stopping.
const POST_END: Duration = Duration::from_millis(10);

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("blkreq");
    if let Err(e) = run(cli) {
        eprintln!("blkreq: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    // Everything the user can get wrong is checked before anything loads.
    let forced = match &cli.backend {
        Some(b) => Some(backend::parse_backend(b, &attach::ALL).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let dev = match &cli.dev {
        Some(d) => Some(filters::parse_dev(d).map_err(|e| anyhow!(e))?),
        None => None,
    };
    if let Some(pid) = cli.pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(anyhow!("no process with PID {pid}"));
        }
    }
    precheck::check(precheck::Needs { btf: true, tracefs: false }).map_err(|e| anyhow!(e))?;
    let kernel = btfscan::Kernel::read().map_err(|e| anyhow!(e))?;
    let ops = &kernel.ops;
    let op = match &cli.op {
        Some(o) => Some(filters::parse_op(o, ops).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let resolved = targets::resolve(&kernel.sites, &cli.include, &cli.exclude, &btfscan::kallsyms_text())
        .map_err(|e| anyhow!(e))?;
    let plan = attach::plan(forced).map_err(|e| anyhow!(e))?;

    if cli.list {
        print!("{}", list(&resolved, &plan));
        return Ok(());
    }

    let transport = Transport::detect();
    let cfg = attach::Config {
        count: cli.count,
        post_end: POST_END,
        dev: dev.map(|(ma, mi)| filters::kernel_dev(ma, mi)).unwrap_or(0),
        tgid: cli.pid.unwrap_or(0),
        comm: cli.comm.as_deref().map(filters::comm_bytes),
        op,
        transport,
        bio_births: !resolved.tps.iter().any(|t| t.site.name == "block_io_start") && kernel.getrq_bio.is_some(),
        getrq_bio: kernel.getrq_bio.unwrap_or(0),
        have_cookies: kernel.has_attach_cookies,
    };
    let attached = attach::load_and_attach(&plan, &cfg, &resolved)?;

    let pending: Rc<RefCell<Vec<brq_event>>> = Rc::default();
    let sink_pending = pending.clone();
    let stream = EventStream::open(
        transport,
        &[(&attached.core.maps.events_ring, &attached.core.maps.events_perf)],
        move |data: &[u8]| {
            if data.len() >= std::mem::size_of::<brq_event>() {
                // SAFETY: brq_event is plain data and the length was checked.
                let ev = unsafe { std::ptr::read_unaligned(data.as_ptr() as *const brq_event) };
                sink_pending.borrow_mut().push(ev);
            }
        },
    )
    .map_err(|e| anyhow!(e))?;

    // Signals are ours before the banner says the run has started.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    let on = match (&cli.dev, dev) {
        (Some(_), Some((ma, mi))) => format!("{} ({ma}:{mi})", filters::dev_name(ma, mi)),
        _ => "any device".to_string(),
    };
    eprintln!("blkreq: {}", plan.explain());
    let blind = btfscan::modules_without_btf();
    if !blind.is_empty() {
        eprintln!(
            "blkreq: functions of modules {} not followed: they have no BTF (modules get it from 5.11)",
            blind.join(" ")
        );
    }
    eprintln!(
        "blkreq: following {} requests on {on} through {} functions and {} tracepoints ({} refused), \
         events via {}, attached in {} ms. Ctrl-C to end.",
        cli.count,
        attached.funcs_attached,
        attached.tps_attached,
        attached.refused.len(),
        transport.name(),
        attached.attach_time.as_millis()
    );

    let mut raw: Vec<brq_event> = Vec::new();
    let mut all_done_at: Option<Instant> = None;
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        stream.poll(rc.poll_timeout(Duration::from_millis(100))).map_err(|e| anyhow!(e))?;
        raw.append(&mut pending.borrow_mut());
        if all_done_at.is_none() && finished(&attached) >= cli.count as u64 {
            all_done_at = Some(Instant::now());
        }
        if all_done_at.is_some_and(|t| t.elapsed() > POST_END * 5) {
            break StopReason::Other(format!("tracked {} requests", cli.count));
        }
    };
    stream.poll(Duration::ZERO).map_err(|e| anyhow!(e))?;
    raw.append(&mut pending.borrow_mut());
    let lost_in_transport = stream.lost();
    let stats = read_stats(&attached.core.maps.stats)?;
    let done = finished(&attached);
    let (funcs_attached, tps_attached, attach_ms) =
        (attached.funcs_attached, attached.tps_attached, attached.attach_time.as_millis() as u64);
    let refused = attached.refused.clone();
    // Detach before the (slow) symbolization and printing.
    drop(stream);
    drop(attached);

    let steps = decode(&raw, &resolved, ops);
    let summary = report::Summary {
        kind: "summary",
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        requests: stats.admitted,
        completed: done,
        steps: steps.len() as u64,
        steps_lost: stats.lost + lost_in_transport,
        stack_failed: stats.stack_failed,
        filtered: stats.filtered,
        not_admitted_full: stats.full,
        admission_races: stats.raced,
        ended_by_reuse: stats.reused,
        late_steps_ignored: stats.late,
        functions_attached: funcs_attached,
        tracepoints_attached: tps_attached,
        attach_ms,
        refused: refused.into_iter().map(|(name, why)| report::Refused { name, why }).collect(),
    };
    output(cli.format(), &steps, &summary)
}

fn output(format: Format, steps: &[Step], summary: &report::Summary) -> Result<()> {
    let mut sink = Sink::stdout();
    let mut tree = tree::Tree::default();
    let mut ordered: Vec<&Step> = steps.iter().collect();
    ordered.sort_by_key(|s| s.mono_ns);
    for s in &ordered {
        let (ctx, path) = s.path();
        tree.insert(ctx, &path);
    }
    match format {
        Format::Tree => {
            sink.text(&tree.render())?;
            sink.text("\n")?;
            sink.text(&summary.text())?;
        }
        Format::Folded => {
            sink.text(&tree.folded())?;
            eprint!("{}", summary.text());
        }
        Format::Timeline => {
            sink.text(&timeline::render(&timeline::requests(steps)))?;
            sink.text(&summary.text())?;
        }
        Format::Json => {
            for r in timeline::requests(steps) {
                sink.json(&r)?;
            }
            sink.json(&serde_json::json!({"type": "tree", "roots": tree.roots}))?;
            sink.json(summary)?;
        }
    }
    Ok(())
}

fn finished(a: &attach::Attached) -> u64 {
    a.core
        .maps
        .bss_data
        .as_ref()
        // SAFETY: the .bss map is mmapped and written by BPF concurrently;
        // a volatile read of an aligned u64 is what we need.
        .map(|b| unsafe { std::ptr::read_volatile(&b.finished) })
        .unwrap_or(0)
}

/// The per-CPU counters, summed.
fn read_stats(map: &libbpf_rs::MapMut) -> Result<brq_stats> {
    kdiag_shared::maps::sum_counters(map).context("reading statistics")
}

fn decode(raw: &[brq_event], res: &Resolved, ops: &[(String, u32)]) -> Vec<Step> {
    let mut sym = Symbolizer::new();
    let mut names = std::collections::HashMap::new();
    raw.iter()
        .map(|e| {
            let stack = (e.stack_sz >= 0).then(|| {
                let n = (e.stack_sz as usize / 8).min(e.stack.len());
                sym.kernel_stack(&e.stack[..n])
                    .into_iter()
                    .map(|f| f.sym.unwrap_or_else(|| format!("{:#x}", f.addr)))
                    .collect::<Vec<_>>()
            });
            let comm: Vec<u8> = e.comm.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            let (ma, mi) = filters::split_kernel_dev(e.dev);
            let dev = names.entry(e.dev).or_insert_with(|| filters::dev_name(ma, mi)).clone();
            Step {
                mono_ns: e.ts_ns,
                session: e.session,
                rq: e.rq,
                what: res.by_id(e.target).map(|t| t.label()).unwrap_or_else(|| format!("target {}", e.target)),
                cpu: e.cpu,
                pid: e.pid,
                tid: e.tid,
                comm: String::from_utf8_lossy(&comm).into_owned(),
                flags: e.flags,
                dev,
                op: filters::op_name(e.cmd_flags, ops),
                sector: e.sector,
                bytes: e.bytes,
                stack,
            }
        })
        .collect()
}

/// `--list`: the resolved set, and how each would be attached. Nothing of
/// blkreq's own is loaded; only the backend probe's tiny program is, for
/// an instant, to learn what this kernel accepts.
fn list(res: &Resolved, plan: &attach::Plan) -> String {
    let mut out = format!("# {}\n", plan.explain());
    out.push_str(&format!("{:<48} {:<6} {:<24} {}\n", "NAME", "ARG", "METHOD", "ROLE"));
    for t in res.all() {
        let args: Vec<String> = t.site.positions.iter().map(|p| p.to_string()).collect();
        let mut role = t.role_name().to_string();
        if t.role & targets::HIDDEN != 0 {
            role.push_str(" (excluded: tracked, not shown)");
        }
        out.push_str(
            &format!("{:<48} {:<6} {:<24} {}\n", t.label(), args.join(","), plan.method_of(t), role).trim_end(),
        );
        out.push('\n');
    }
    let shown = res.all().count();
    let usable = res.all().filter(|t| t.skip.is_none()).count();
    out.push_str(&format!("# {shown} listed, {usable} attachable\n"));
    out
}

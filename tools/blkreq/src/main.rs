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

use anyhow::{Context, Result};
use bpf::types::{brq_event, brq_stats};
use cli::Format;
use kdiag_shared::lifecycle::Session;
use kdiag_shared::maps::c_string;
use kdiag_shared::output::Sink;
use kdiag_shared::runctl::StopReason;
use kdiag_shared::skel::Storage;
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::transport::{self, Inbox, Kind as Transport};
use kdiag_shared::{backend, ksyms, lifecycle, precheck, say};
use std::time::{Duration, Instant};
use targets::Resolved;
use timeline::Step;

/// After the last tracked request ends, its free path still runs (on the
/// completing CPU, microseconds later): steps this soon after the end
/// still belong to it, and the run lingers this long before stopping.
const POST_END: Duration = Duration::from_millis(10);

kdiag_shared::plain_data!(brq_event, brq_stats);

fn main() {
    lifecycle::main("blkreq", run)
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
    // Everything the user can get wrong is checked before anything loads.
    let forced = cli.backend.as_deref().map(|b| backend::parse_backend(b, &attach::ALL)).transpose();
    let forced = forced.map_err(anyhow::Error::msg)?;
    let dev = cli.dev.as_deref().map(filters::parse_dev).transpose().map_err(anyhow::Error::msg)?;
    if let Some(pid) = cli.pid.filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
        anyhow::bail!("no process with PID {pid}");
    }
    precheck::check(precheck::Needs { btf: true, tracefs: false })?;
    let kernel = btfscan::Kernel::read().map_err(anyhow::Error::msg)?;
    let ops = &kernel.ops;
    let op = cli.op.as_deref().map(|o| filters::parse_op(o, ops)).transpose().map_err(anyhow::Error::msg)?;
    let known = Some(ksyms::get()).filter(|k| k.error().is_none());
    let resolved = targets::resolve(&kernel.sites, &cli.include, &cli.exclude, known).map_err(anyhow::Error::msg)?;
    s.checkpoint()?;
    let plan = attach::plan(forced).map_err(anyhow::Error::msg)?;
    s.checkpoint()?;

    if cli.list {
        return Ok(kdiag_shared::output::stdout_text(&list(&resolved, &plan))?);
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
        bio_births: !resolved.tps.iter().any(|t| t.site.name == "block_io_start") && kernel.getrq_passes_only_a_bio,
    };
    let storage = Storage::new();
    let attached = attach::load_and_attach(&storage, &plan, &cfg, &resolved)?;
    let maps = &attached.core.maps;
    let inbox: Inbox<brq_event> = Inbox::open(transport, &[(&maps.events_ring, &maps.events_perf)], transport::record)?;
    s.checkpoint()?;

    s.start(cli.duration);
    let on = match (&cli.dev, dev) {
        (Some(_), Some((ma, mi))) => format!("{} ({ma}:{mi})", filters::dev_name(ma, mi)),
        _ => "any device".to_string(),
    };
    say!("{}", plan.explain());
    say!(
        "following {} requests on {on} through {} functions and {} tracepoints ({} refused), events via {}, \
         attached in {} ms. Ctrl-C to end.",
        cli.count,
        attached.funcs_attached,
        attached.tps_attached,
        attached.refused.len(),
        transport.name(),
        attached.attach_time.as_millis()
    );

    let mut raw: Vec<brq_event> = Vec::new();
    let mut all_done_at: Option<Instant> = None;
    let reason = s.event_loop(Duration::from_millis(100), |wait| {
        raw.extend(inbox.poll(wait)?);
        if all_done_at.is_none() && finished(&attached) >= cli.count as u64 {
            all_done_at = Some(Instant::now());
        }
        Ok(all_done_at
            .is_some_and(|t| t.elapsed() > POST_END * 5)
            .then(|| StopReason::Other(format!("tracked {} requests", cli.count))))
    })?;
    raw.extend(inbox.poll(Duration::ZERO)?);
    let lost_in_transport = inbox.lost();
    let stats: brq_stats = kdiag_shared::maps::sum_counters(&attached.core.maps.stats).context("reading statistics")?;
    let done = finished(&attached);
    let (funcs_attached, tps_attached, attach_ms) =
        (attached.funcs_attached, attached.tps_attached, attached.attach_time.as_millis() as u64);
    let refused = attached.refused.clone();
    // Detach before the (slow) symbolization and printing.
    drop(inbox);
    drop(attached);

    let steps = decode(&raw, &resolved, ops);
    let summary = report::Summary {
        kind: "summary",
        duration_s: s.run().elapsed().as_secs_f64(),
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
            lifecycle::say_text(&summary.text());
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

fn finished(a: &attach::Attached<'_>) -> u64 {
    a.core
        .maps
        .bss_data
        .as_ref()
        // SAFETY: the .bss map is mmapped and written by BPF concurrently;
        // a volatile read of an aligned u64 is what we need.
        .map(|b| unsafe { std::ptr::read_volatile(&b.finished) })
        .unwrap_or(0)
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
                comm: c_string(&e.comm),
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

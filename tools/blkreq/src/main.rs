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
use kdiag_shared::lifecycle::Session;
use kdiag_shared::runctl::StopReason;
use kdiag_shared::skel::Storage;
use kdiag_shared::transport::{self, Inbox, Kind as Transport};
use kdiag_shared::{backend, ksyms, lifecycle, precheck, say};
use std::time::{Duration, Instant};

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
        return Ok(kdiag_shared::output::stdout_text(&report::list(&resolved, &plan))?);
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
    let blind = btfscan::modules_without_btf();
    if !blind.is_empty() {
        say!("functions of modules {} not followed: they have no BTF (modules get it from 5.11)", blind.join(" "));
    }
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
        if all_done_at.is_none() && attached.finished() >= cli.count as u64 {
            all_done_at = Some(Instant::now());
        }
        Ok(all_done_at
            .is_some_and(|t| t.elapsed() > POST_END * 5)
            .then(|| StopReason::Other(format!("tracked {} requests", cli.count))))
    })?;
    raw.extend(inbox.poll(Duration::ZERO)?);
    let lost_in_transport = inbox.lost();
    let stats: brq_stats = kdiag_shared::maps::sum_counters(&attached.core.maps.stats).context("reading statistics")?;
    let done = attached.finished();
    let (funcs_attached, tps_attached, attach_ms) =
        (attached.funcs_attached, attached.tps_attached, attached.attach_time.as_millis() as u64);
    let refused = attached.refused.clone();
    // Detach before the (slow) symbolization and printing.
    drop(inbox);
    drop(attached);

    let steps = timeline::decode(&raw, &resolved, ops);
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
    report::output(cli.format(), &steps, &summary)
}

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
mod hooks;
mod live;
mod logline;
mod metrics;
mod offline;
mod record;
mod stats;
mod summary;
mod tpformat;
mod verdict;
mod vmstat;
mod watermark;
mod zoneinfo;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/compactwatch.skel.rs"));
}

use anyhow::{anyhow, Context, Result};
use bpf::CompactwatchSkelBuilder;
use decode::Decoders;
use episode::Tracker;
use gfp::KernelVersion;
use kdiag_shared::backend::Mechanism;
use kdiag_shared::lifecycle::Session;
use kdiag_shared::metrics::Exporter;
use kdiag_shared::output::{Sink, WallClock};
use kdiag_shared::stacks::Stacks;
use kdiag_shared::transport::{Inbox, Kind as Transport};
use kdiag_shared::{precheck, probe, say, warning};
use libbpf_rs::skel::{OpenSkel, Skel};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};
use watermark::Algo;

/// Raw tracepoints, as tp_btf where BTF types them: attached and detached
/// without the grace periods classic ones wait for (hooks.rs picks each
/// one's program by its arguments); classic tracepoint records through
/// CO-RE, the arguments of none known, on the last rung.
const LADDER: [Mechanism; 3] = [Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint];

fn main() {
    kdiag_shared::lifecycle::main("compactwatch", run)
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
    if let Some(path) = &cli.from_dmesg {
        if cli.metrics.addr.is_some() || cli.metrics.file.is_some() {
            anyhow::bail!("--metrics and --metrics-file watch a live run, not --from-dmesg");
        }
        return offline::run(path, &cli);
    }
    let mut exporter = Exporter::start(&cli.metrics)?;
    precheck::check(precheck::Needs { btf: true, tracefs: true })?;
    let tfs = precheck::tracefs().map_err(anyhow::Error::msg)?;
    let choice = s.choose(&LADDER, cli.backend.as_deref(), probe::kernel_supports)?;
    let plan = hooks::Plan::new(choice.mechanism, kdiag_shared::btf::vmlinux)?;
    let dec = Decoders::load(&tfs);
    let kernel = KernelVersion::running().context("cannot read the kernel release")?;
    let algo = cli.algo.0.unwrap_or_else(|| Algo::for_kernel(kernel));

    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = kdiag_shared::skel::open(CompactwatchSkelBuilder::default(), &mut storage)?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.min_order = cli.order;
    ro.target_tgid = cli.pid.unwrap_or(0);
    ro.max_per_sec = cli.max_rate;
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf)?;
    plan.select(open.open_object_mut())?;
    let skel = s.load(open)?;
    let (attached, missing) = plan.attach(skel.object())?;
    let mut links = kdiag_shared::links::Links::new();
    links.extend(attached);
    let inbox = Inbox::open(transport, &[(&skel.maps.events_ring, &skel.maps.events_perf)], record::decode_record)?;
    s.checkpoint()?;

    s.start(cli.duration);
    say!("{}", choice.explain());
    for note in &plan.classic {
        say!("{note}");
    }
    say!(
        "kernel {kernel}, {} watermark algorithm{}; GFP names from the {}, compaction status from the {}",
        algo.name(),
        if cli.algo.0.is_some() { " (--algo)" } else { "" },
        dec.gfp.source,
        dec.status_source
    );
    if !missing.is_empty() {
        warning!("this kernel lacks {}; those details will be missing", missing.join(", "));
    }
    say!(
        "watching allocations of order >= {} ({}), events via {}{}. Ctrl-C to end.",
        cli.order,
        cli.pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "all tasks".into()),
        transport.name(),
        exporter.describe()
    );
    let render = |st: &stats::Totals, lost| metrics::render(st, lost, cli.order, &|v| dec.status(v));

    let mut sink = Sink::stdout();
    let mut ctx = live::Ctx {
        dec: &dec,
        kernel,
        algo,
        order: cli.order,
        json: cli.json,
        stack: cli.stack,
        wall: WallClock::new(),
        stacks: Stacks::new(&skel.maps.stacks)?,
        vm_last: vmstat::read(),
        knobs: advice::Knobs::read_live(),
        tracker: Tracker::new(kernel),
        zones: zoneinfo::read_live().map_err(|e| anyhow!(e))?,
        reported: Default::default(),
    };
    let mut next_verdict = cli.interval.map(|i| Instant::now() + i);
    let reason = s.event_loop(Duration::from_millis(200), |wait| {
        let wait = next_verdict.map_or(wait, |t| wait.min(t.saturating_duration_since(Instant::now())));
        ctx.process(inbox.poll(wait)?, &mut sink)?;
        exporter.update(|| Ok(render(&summary::totals(&skel.maps.stats)?, inbox.lost())))?;
        if let (Some(t), Some(i)) = (next_verdict, cli.interval) {
            if Instant::now() >= t {
                ctx.interval_verdict(&mut sink)?;
                next_verdict = Some(t + i);
            }
        }
        Ok(None)
    })?;
    ctx.process(inbox.poll(Duration::ZERO)?, &mut sink)?;

    let totals = summary::totals(&skel.maps.stats).context("reading statistics")?;
    let final_metrics = render(&totals, inbox.lost());
    let summary = summary::build(
        totals,
        &skel.maps.allocs,
        &skel.maps.fails,
        summary::Run {
            backend: choice.mechanism.name(),
            duration_s: s.run().elapsed().as_secs_f64(),
            stop_reason: reason.to_string(),
            min_order: cli.order,
            max_rate: cli.max_rate,
            transport_lost: inbox.lost(),
            reported: &std::mem::take(&mut ctx.reported),
            stack: &mut |id| ctx.stack_of(id),
            with_stacks: cli.stack,
            gfp_text: &|g| dec.gfp.decode(g),
        },
    )
    .context("reading statistics")?;
    if cli.json {
        sink.json(&summary)?;
    } else {
        sink.text(&summary.text())?;
    }
    drop(inbox);
    drop(links);
    exporter.finish(final_metrics);
    Ok(())
}

//! offwaketime: how long threads were blocked, by the stacks of the sleeper
//! and of whoever woke it. See `offwaketime --help` and
//! bpf/offwaketime.bpf.c for how.

mod attach;
mod cli;
mod collect;
mod kernel;
mod profile;
mod report;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/offwaketime.skel.rs"));
}

use anyhow::{bail, Context as _, Result};
use bpf::OffwaketimeSkelBuilder;
use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_shared::lifecycle::Session;
use kdiag_shared::runctl::StopReason;
use kdiag_shared::stacks::{Form, Report, Stacks};
use kdiag_shared::{flame, ksyms, precheck, probe, say, warning};
use report::{Entry, Layout};
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

const LADDER: [Mechanism; 4] = [Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint, Mechanism::Kprobe];
/// How often user stacks are symbolized during the run, so that a process
/// that exits before the end still has names.
const SYMBOLIZE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    kdiag_shared::lifecycle::main("offwaketime", run)
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // loaded, so a bad command line leaves no trace in the kernel.
    cli.validate().map_err(anyhow::Error::msg)?;
    for (ids, what) in [(&cli.pids, "process"), (&cli.tids, "thread")] {
        if let Some(id) = ids.iter().find(|id| !Path::new(&format!("/proc/{id}")).exists()) {
            bail!("no such {what}: {id}");
        }
    }
    let svg = cli.stacks.create_svg()?;
    let pprof = cli.stacks.create_pprof()?;
    precheck::check(precheck::Needs { btf: true, tracefs: false })?;

    let mut kprobe_symbol = None;
    let choice = s.choose(&LADDER, cli.backend.as_deref(), |m| {
        if matches!(m, Mechanism::Tracepoint | Mechanism::Kprobe) {
            // Classic tracepoints are found through tracefs; the kprobe
            // rung also takes softirq vectors from one.
            precheck::tracefs().map_err(ProbeError::Unavailable)?;
        }
        if m == Mechanism::Kprobe {
            let k = ksyms::require().map_err(|e| ProbeError::Unavailable(e.to_string()))?;
            let sym = kernel::finish_task_switch_symbol(k);
            kprobe_symbol =
                Some(sym.ok_or_else(|| ProbeError::Unavailable("no finish_task_switch in kallsyms".into()))?);
        }
        probe::kernel_supports(m)
    })?;
    let mech = choice.mechanism;
    let btf = kdiag_shared::btf::vmlinux().ok();

    let mut storage = MaybeUninit::uninit();
    let mut open = kdiag_shared::skel::open(OffwaketimeSkelBuilder::default(), &mut storage)?;
    open.maps.stacks.set_max_entries(cli.stacks.stack_storage_size).context("sizing the stack map")?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    cli.configure(ro);
    ro.prev_state_arg = btf.as_ref().is_some_and(kernel::switch_passes_prev_state);
    attach::select(&mut open.progs, mech);
    let skel = s.load(open)?;
    let attached = attach::attach(&skel.progs, mech, kprobe_symbol.as_deref())?;
    s.checkpoint()?;

    s.start(cli.duration);
    say!("{}", choice.explain());
    if !attached.irq_missing.is_empty() {
        let missing = attached.irq_missing.join(", ");
        warning!("cannot follow {missing}; wakeups from there are shown as the interrupted task's");
    }
    let what = cli.what();
    let max = cli.max_us.map(|m| format!(" and at most {m} us")).unwrap_or_default();
    say!(
        "tracing blocked time of {what}, at least {} us{max}, by sleeper and waker stacks. Ctrl-C to end.",
        cli.min_us
    );

    let mut stacks = Stacks::new(&skel.maps.stacks)?;
    let mut last_pass = Instant::now();
    let targets: Vec<u32> = cli.pids.iter().chain(&cli.tids).copied().collect();
    let reason = s.event_loop(Duration::from_millis(200), |wait| {
        if !targets.is_empty() && !targets.iter().any(|t| Path::new(&format!("/proc/{t}")).exists()) {
            return Ok(Some(StopReason::Other("every traced process exited".into())));
        }
        std::thread::sleep(wait);
        if last_pass.elapsed() >= SYMBOLIZE_EVERY {
            stacks.name_users(collect::user_stacks(&skel.maps.counts));
            last_pass = Instant::now();
        }
        Ok(None)
    })?;
    // Detach first: the counts no longer move while they are read.
    drop(attached);
    stacks.name_users(collect::user_stacks(&skel.maps.counts));

    let softirq_names = kdiag_shared::softirq::vector_names(btf.as_ref());
    let mut entries = report::merge(collect::entries(&skel.maps.counts, &mut stacks, &softirq_names)?);
    entries.sort_by_key(|e| (e.weight_us(), e.blocked_ns, e.runq_ns, e.count));
    let stats = kdiag_shared::maps::sum_counters(&skel.maps.stats).context("reading statistics")?;
    let summary = collect::summarize(&entries, &stats, mech, s.run(), &reason);
    drop(stacks);
    drop(skel);

    let layout = Layout { delimited: cli.delimited };
    let report = Report {
        entries: &entries,
        text: &|e: &Entry| e.text(layout),
        folded: &|e: &Entry| (e.weight_us() > 0).then(|| e.folded(layout)),
        extra_json: vec![],
        extra_text: String::new(),
        summary_json: serde_json::to_value(&summary)?,
        summary_text: summary.text(),
    };
    report.write(Form::of(cli.json, cli.folded))?;
    if let (Some(file), Some(path)) = (svg, &cli.stacks.svg) {
        let labels = flame::Labels {
            title: format!("Off-Wake Time: {what}"),
            subtitle: Some("sleeper stacks below --, waker stacks above; width is blocked time".into()),
            count_name: "us".into(),
        };
        report.write_svg(file, path, &labels)?;
    }
    if let (Some(file), Some(path)) = (pprof, &cli.stacks.pprof) {
        let run = s.run().elapsed();
        let started = std::time::SystemTime::now() - run;
        profile::write(file, &entries, started, run).with_context(|| format!("writing {}", path.display()))?;
        say!("pprof profile written to {}", path.display());
    }
    Ok(())
}

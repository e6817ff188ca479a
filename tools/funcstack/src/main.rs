//! funcstack: which kernel paths lead to a function or tracepoint, how
//! often, from which tasks and CPUs. See `funcstack --help`,
//! bpf/funcstack.bpf.c and ftrace.rs for how.

mod bpfrun;
mod cli;
mod ftrace;
mod profile;
mod report;
mod target;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/funcstack.skel.rs"));
}

use anyhow::{anyhow, bail, Context as _, Result};
use bpfrun::BpfRun;
use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_shared::lifecycle::Session;
use kdiag_shared::runctl::StopReason;
use kdiag_shared::skel::Storage;
use kdiag_shared::stacks::{Form, Report, Stacks};
use kdiag_shared::{flame, precheck, say, warning};
use report::{Entry, Summary};
use std::path::Path;
use std::time::{Duration, Instant};
use target::{Kernel, Resolved, Spec};

/// Every backend the tool has, for `--backend`.
const ALL: [Mechanism; 5] =
    [Mechanism::Fentry, Mechanism::KprobeMulti, Mechanism::Kprobe, Mechanism::Tracepoint, Mechanism::Ftrace];
const ONE_FUNCTION: [Mechanism; 3] = [Mechanism::Fentry, Mechanism::Kprobe, Mechanism::Ftrace];
/// fentry would need one program load per function; kprobe-multi attaches
/// a whole glob at once, plain kprobes one by one.
const GLOB: [Mechanism; 3] = [Mechanism::KprobeMulti, Mechanism::Kprobe, Mechanism::Ftrace];
const TRACEPOINT: [Mechanism; 2] = [Mechanism::Tracepoint, Mechanism::Ftrace];
const SYMBOLIZE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    kdiag_shared::lifecycle::main("funcstack", run)
}

// One per run, never moved about: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Tracer<'s> {
    Bpf(BpfRun<'s>),
    Ftrace(ftrace::Session),
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // attached, so a bad command line leaves no trace in the kernel.
    let spec = Spec::parse(&cli.target).map_err(anyhow::Error::msg)?;
    if cli.ret && spec.is_tracepoint() {
        bail!("--ret needs a function: tracepoints have no return value");
    }
    if let Some(p) = cli.pid.filter(|p| !Path::new(&format!("/proc/{p}")).exists()) {
        bail!("no such process: {p}");
    }
    if let Some(b) = &cli.backend {
        kdiag_shared::backend::parse_backend(b, &ALL).map_err(anyhow::Error::msg)?;
    }
    let svg = cli.stacks.create_svg()?;
    let pprof = cli.stacks.create_pprof()?;
    precheck::check(precheck::Needs { btf: false, tracefs: false })?;
    // tracefs names tracepoints and carries the ftrace rung; a kernel
    // without it can still use fentry and kprobes.
    let tracefs = precheck::tracefs().ok();

    let mut kernel = None;
    let resolved = match &spec {
        Spec::Tracepoint { group, name } => {
            let t = tracefs.as_deref().ok_or_else(|| anyhow!("tracepoints need tracefs, which cannot be mounted"))?;
            target::resolve_tracepoint(t, group, name).map_err(anyhow::Error::msg)?
        }
        _ => kernel.insert(Kernel::load(tracefs.as_deref()).map_err(anyhow::Error::msg)?).resolve(&spec)?,
    };
    let ladder: &[Mechanism] = match &resolved {
        Resolved::Tracepoint { .. } => &TRACEPOINT,
        Resolved::Functions { glob: true, .. } => &GLOB,
        Resolved::Functions { .. } => &ONE_FUNCTION,
    };
    if let Some(m) = cli.backend.as_deref().and_then(|b| kdiag_shared::backend::parse_backend(b, &ALL).ok()) {
        if !ladder.contains(&m) {
            let names: Vec<&str> = ladder.iter().map(|m| m.name()).collect();
            bail!("backend {m} cannot trace {} (use {})", spec.label(), names.join(" or "));
        }
    }
    let nr_args = target::nr_args(&spec, cli.ret)?;

    let storage = Storage::new();
    let want = ftrace::Scope { pid: cli.pid, comm: cli.comm.clone() };
    let mut tracer = None;
    let choice = s
        .choose(ladder, cli.backend.as_deref(), |m| {
            let t = match m {
                Mechanism::Ftrace => {
                    let t = tracefs.as_deref().ok_or_else(|| ProbeError::Unavailable("no tracefs".into()))?;
                    let glob = match &spec {
                        Spec::Glob(g) => Some(g.as_str()),
                        _ => None,
                    };
                    Tracer::Ftrace(ftrace::Session::start(t, &resolved, glob, &want).map_err(ProbeError::Unavailable)?)
                }
                m => {
                    Tracer::Bpf(bpfrun::start(&storage, m, &resolved, &cli, nr_args).map_err(ProbeError::Unavailable)?)
                }
            };
            tracer = Some(t);
            Ok(())
        })
        .map_err(|e| {
            if e.is::<kdiag_shared::lifecycle::Stopped>() {
                e
            } else {
                anyhow!("cannot trace {}: {e}", spec.label())
            }
        })?;
    let mut tracer = tracer.context("no tracer after a successful backend choice")?;
    s.checkpoint()?;

    s.start(cli.duration);
    say!("{}", choice.explain());
    let is_ftrace = matches!(tracer, Tracer::Ftrace(_));
    if is_ftrace && cli.ret {
        warning!("--ret: ftrace cannot see return values; counting stacks only");
    }
    if is_ftrace && cli.user_stacks {
        warning!("-U: ftrace takes kernel stacks only");
    }
    let mut skipped: Vec<(String, String)> = match &resolved {
        Resolved::Functions { excluded, .. } => excluded.clone(),
        _ => vec![],
    };
    let refused = match &tracer {
        Tracer::Bpf(b) => b.skipped.clone(),
        Tracer::Ftrace(_) => vec![],
    };
    let attached = resolved.functions().len().saturating_sub(refused.len()).max(1);
    skipped.extend(refused);
    if let Some((n, why)) = skipped.first() {
        say!("{} matching functions left out, e.g. {n}: {why}", skipped.len());
    }
    say!("counting stacks that reach {}{}. Ctrl-C to end.", resolved.describe(&spec, attached), cli.scope());

    let mut stacks = match &tracer {
        Tracer::Bpf(b) => Some(Stacks::new(&b.skel.maps.stacks)?),
        Tracer::Ftrace(_) => None,
    };
    let mut last_pass = Instant::now();
    let reason = s.event_loop(Duration::from_millis(200), |wait| {
        if let Some(p) = cli.pid.filter(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            return Ok(Some(StopReason::Other(format!("process {p} exited"))));
        }
        match &mut tracer {
            Tracer::Bpf(b) => {
                std::thread::sleep(wait);
                if cli.user_stacks && last_pass.elapsed() >= SYMBOLIZE_EVERY {
                    stacks.as_mut().unwrap().name_users(b.user_stacks());
                    last_pass = Instant::now();
                }
            }
            Tracer::Ftrace(f) => f.poll(wait).map_err(anyhow::Error::msg)?,
        }
        Ok(None)
    })?;

    let label = spec.label();
    let (entries, rets, summary) = match tracer {
        Tracer::Bpf(mut b) => {
            // Detach first: the counts no longer move while they are read.
            b.detach();
            let stacks = stacks.as_mut().unwrap();
            if cli.user_stacks {
                stacks.name_users(b.user_stacks());
            }
            b.collect(stacks, &label, kernel.as_ref())?
        }
        Tracer::Ftrace(f) => {
            let (entries, summary) = f.collect(&label, &want).map_err(anyhow::Error::msg)?;
            (entries, vec![], summary)
        }
    };

    let entries = report::merge(entries);
    let shown = cli.top.map_or(entries.len(), |n| (n as usize).min(entries.len()));
    let summary = Summary {
        kind: "summary",
        target: label.clone(),
        backend: choice.mechanism.name().to_string(),
        duration_s: s.run().elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        attached,
        stacks: entries.len(),
        shown,
        count: entries.iter().map(|e| e.count).sum(),
        ..summary
    };
    let entries = &entries[..shown];

    let report = Report {
        entries,
        text: &Entry::text,
        folded: &|e: &Entry| Some(e.folded()),
        extra_json: rets.iter().map(serde_json::to_value).collect::<Result<_, _>>()?,
        extra_text: report::rets_text(&rets),
        summary_json: serde_json::to_value(&summary)?,
        summary_text: summary.text(),
    };
    report.write(Form::of(cli.json, cli.folded))?;
    if let (Some(file), Some(path)) = (svg, &cli.stacks.svg) {
        let labels = flame::Labels {
            title: format!("Stacks reaching {label}"),
            subtitle: Some("root: calling task; tips: the target; width: calls".into()),
            count_name: "calls".into(),
        };
        report.write_svg(file, path, &labels)?;
    }
    if let (Some(file), Some(path)) = (pprof, &cli.stacks.pprof) {
        let run = s.run().elapsed();
        let started = std::time::SystemTime::now() - run;
        profile::write(file, entries, started, run).with_context(|| format!("writing {}", path.display()))?;
        say!("pprof profile written to {}", path.display());
    }
    Ok(())
}

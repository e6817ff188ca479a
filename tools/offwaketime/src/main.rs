//! offwaketime: how long threads were blocked, by the stacks of the sleeper
//! and of whoever woke it. See `offwaketime --help` and
//! bpf/offwaketime.bpf.c for how.

mod cli;
mod kernel;
mod ksyms;
mod profile;
mod report;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/offwaketime.skel.rs"));
}

use anyhow::{anyhow, bail, Context as _, Result};
use bpf::types::{owt_key, owt_stats, owt_val};
use bpf::OffwaketimeSkelBuilder;
use kdiag_shared::backend::{self, Mechanism, ProbeError};
use kdiag_shared::maps::{plain, StackCache};
use kdiag_shared::runctl::{RunControl, StopReason};
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::{flame, precheck, probe, Errno};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, Map, MapCore, MapFlags};
use report::{Context, Entry, Layout, Side, Stack, StackFailures, Summary, Waker};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

const LADDER: [Mechanism; 4] = [Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint, Mechanism::Kprobe];
const NOT_TAKEN: i32 = -4096;
const CTX_TASK: u32 = 0;
const CTX_SOFTIRQ: u32 = 1;
const CTX_HARDIRQ: u32 = 2;
const CTX_NMI: u32 = 3;
const CTX_PREEMPTED: u32 = 4;
/// How often user stacks are symbolized during the run, so that a process
/// that exits before the end still has names.
const SYMBOLIZE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("offwaketime");
    if let Err(e) = run(cli) {
        eprintln!("offwaketime: {e:#}");
        std::process::exit(kdiag_shared::args::exit_code(&e));
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // loaded, so a bad command line leaves no trace in the kernel.
    cli.validate().map_err(|e| anyhow!(e))?;
    for &p in &cli.pids {
        if !Path::new(&format!("/proc/{p}")).exists() {
            bail!("no such process: {p}");
        }
    }
    for &t in &cli.tids {
        if !Path::new(&format!("/proc/{t}")).exists() {
            bail!("no such thread: {t}");
        }
    }
    let forced = match &cli.backend {
        Some(b) => Some(backend::parse_backend(b, &LADDER).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let svg = cli.stacks.create_svg().map_err(|e| anyhow!(e))?;
    let pprof = cli.stacks.create_pprof()?;
    precheck::check(precheck::Needs { btf: true, tracefs: false }).map_err(|e| anyhow!(e))?;

    let mut kprobe_symbol = None;
    let choice = backend::choose(&LADDER, forced, |m| {
        if matches!(m, Mechanism::Tracepoint | Mechanism::Kprobe) {
            // Classic tracepoints are found through tracefs; the kprobe
            // rung also takes softirq vectors from one.
            precheck::tracefs().map_err(ProbeError::Unavailable)?;
        }
        if m == Mechanism::Kprobe {
            let kallsyms = std::fs::read_to_string("/proc/kallsyms")
                .map_err(|e| ProbeError::Unavailable(format!("cannot read /proc/kallsyms: {e}")))?;
            kprobe_symbol = Some(
                kernel::finish_task_switch_symbol(&kallsyms)
                    .ok_or_else(|| ProbeError::Unavailable("no finish_task_switch in kallsyms".into()))?,
            );
        }
        probe::kernel_supports(m)
    })
    .map_err(|e| anyhow!(e))?;
    let mech = choice.mechanism;
    let btf = libbpf_rs::btf::Btf::from_vmlinux().ok();

    let mut storage = MaybeUninit::uninit();
    let mut open = OffwaketimeSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    open.maps.stacks.set_max_entries(cli.stacks.stack_storage_size).context("sizing the stack map")?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    for (i, &p) in cli.pids.iter().enumerate() {
        ro.tgids[i] = p;
    }
    ro.n_tgids = cli.pids.len() as u32;
    for (i, &t) in cli.tids.iter().enumerate() {
        ro.tids[i] = t;
    }
    ro.n_tids = cli.tids.len() as u32;
    ro.thread_kind = if cli.user_threads_only {
        1
    } else if cli.kernel_threads_only {
        2
    } else {
        0
    };
    ro.preempted_only = cli.state == Some(0);
    ro.state_mask = cli.state.filter(|&s| s != 0).unwrap_or(u32::MAX);
    ro.min_ns = cli.min_us.saturating_mul(1000);
    ro.max_ns = cli.max_us.map_or(u64::MAX, |m| m.saturating_mul(1000));
    ro.want_kstack = !cli.user_stacks_only;
    ro.want_ustack = !cli.kernel_stacks_only;
    ro.prev_state_arg = btf.as_ref().is_some_and(kernel::switch_passes_prev_state);

    let raw_irq = matches!(mech, Mechanism::TpBtf | Mechanism::RawTp);
    let p = &mut open.progs;
    for (prog, on) in [
        (&mut p.owt_switch_btf, mech == Mechanism::TpBtf),
        (&mut p.owt_waking_btf, mech == Mechanism::TpBtf),
        (&mut p.owt_switch_raw, mech == Mechanism::RawTp),
        (&mut p.owt_waking_raw, mech == Mechanism::RawTp),
        (&mut p.owt_switch_tp, mech == Mechanism::Tracepoint),
        (&mut p.owt_waking_tp, mech == Mechanism::Tracepoint),
        (&mut p.owt_switch_kprobe, mech == Mechanism::Kprobe),
        (&mut p.owt_waking_kprobe, mech == Mechanism::Kprobe),
        (&mut p.owt_hardirq_enter_raw, raw_irq),
        (&mut p.owt_hardirq_exit_raw, raw_irq),
        (&mut p.owt_softirq_enter_raw, raw_irq),
        (&mut p.owt_softirq_exit_raw, raw_irq),
        (&mut p.owt_hardirq_enter_tp, !raw_irq),
        (&mut p.owt_hardirq_exit_tp, !raw_irq),
        (&mut p.owt_softirq_enter_tp, !raw_irq),
        (&mut p.owt_softirq_exit_tp, !raw_irq),
    ] {
        prog.set_autoload(on);
    }
    let skel = open.load().context("loading the BPF programs")?;

    // Interrupt context first, so that the first wakeups from interrupts
    // are already named; exits before entries, so no entry goes unmatched.
    let (irq_links, irq_missing) = attach_irq_context(&skel.progs, raw_irq);
    let progs = &skel.progs;
    let (switch, waking) = match mech {
        Mechanism::TpBtf => (&progs.owt_switch_btf, &progs.owt_waking_btf),
        Mechanism::RawTp => (&progs.owt_switch_raw, &progs.owt_waking_raw),
        Mechanism::Tracepoint => (&progs.owt_switch_tp, &progs.owt_waking_tp),
        _ => (&progs.owt_switch_kprobe, &progs.owt_waking_kprobe),
    };
    let attach_err = |what: &str, e: libbpf_rs::Error| {
        let why = Errno::of_libbpf(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string());
        anyhow!("attaching to {what}: {why}")
    };
    let mut links: Vec<Link> = Vec::new();
    match mech {
        Mechanism::Kprobe => {
            let sym = kprobe_symbol.as_deref().unwrap_or("finish_task_switch");
            links.push(switch.attach_kprobe(false, sym).map_err(|e| attach_err(sym, e))?);
            links.push(waking.attach().map_err(|e| attach_err("try_to_wake_up", e))?);
        }
        _ => {
            // Wakeups before switches: a switch-in then finds its wakeup.
            links.push(waking.attach().map_err(|e| attach_err("sched_waking", e))?);
            links.push(switch.attach().map_err(|e| attach_err("sched_switch", e))?);
        }
    }

    // Signals are caught before the banner: whoever waits for it may send
    // one at once.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    eprintln!("offwaketime: {}", choice.explain());
    if !irq_missing.is_empty() {
        eprintln!(
            "offwaketime: warning: cannot follow {}; wakeups from there are shown as the interrupted task's",
            irq_missing.join(", ")
        );
    }
    let what = if !cli.pids.is_empty() {
        format!("PID {}", join(&cli.pids))
    } else if !cli.tids.is_empty() {
        format!("TID {}", join(&cli.tids))
    } else {
        "all threads".to_string()
    };
    let max = cli.max_us.map(|m| format!(" and at most {m} us")).unwrap_or_default();
    eprintln!(
        "offwaketime: tracing blocked time of {what}, at least {} us{max}, by sleeper and waker stacks. Ctrl-C to end.",
        cli.min_us
    );

    let mut sym = Symbolizer::new();
    let mut stacks = StackCache::default();
    let mut last_pass = Instant::now();
    let targets: Vec<u32> = cli.pids.iter().chain(&cli.tids).copied().collect();
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        if !targets.is_empty() && !targets.iter().any(|t| Path::new(&format!("/proc/{t}")).exists()) {
            break StopReason::Other("every traced process exited".into());
        }
        std::thread::sleep(rc.poll_timeout(Duration::from_millis(200)));
        if last_pass.elapsed() >= SYMBOLIZE_EVERY {
            symbolize_user_stacks(&skel.maps.counts, &skel.maps.stacks, &mut stacks, &mut sym);
            last_pass = Instant::now();
        }
    };
    // Detach first: the counts no longer move while they are read.
    drop(links);
    drop(irq_links);
    symbolize_user_stacks(&skel.maps.counts, &skel.maps.stacks, &mut stacks, &mut sym);

    let softirq_names = kdiag_shared::softirq::vector_names(btf.as_ref());
    let groups = read_counts(&skel.maps.counts)?;
    let mut lookups = Vec::new();
    for (k, _) in &groups {
        for id in [k.t_kstack, k.w_kstack].into_iter().filter(|&id| id >= 0) {
            let addrs = stacks.get(&skel.maps.stacks, id);
            lookups.extend(addrs.iter().enumerate().map(|(i, &a)| ksyms::lookup_addr(i, a)));
        }
    }
    let ksyms = ksyms::KernelSyms::load(&lookups);
    drop(lookups);
    let entries: Vec<Entry> = groups
        .iter()
        .map(|(k, v)| to_entry(k, v, &skel.maps.stacks, &mut stacks, &mut sym, &ksyms, &softirq_names))
        .collect();
    let mut entries = report::merge(entries);
    entries.sort_by_key(|e| (e.weight_us(), e.blocked_ns, e.runq_ns, e.count));
    let stats = read_stats(&skel.maps.stats)?;
    let summary = summarize(&entries, &stats, &choice.mechanism, &rc, &reason);
    drop(skel);

    let layout = Layout { delimited: cli.delimited };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if cli.json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    } else if cli.folded {
        for e in entries.iter().filter(|e| e.weight_us() > 0) {
            writeln!(out, "{}", e.folded(layout))?;
        }
        // stdout stays pure folded lines for flamegraph.pl.
        eprint!("{}", summary.text());
    } else {
        for e in &entries {
            write!(out, "{}", e.text(layout))?;
        }
        write!(out, "{}", summary.text())?;
    }
    out.flush()?;
    if let (Some(file), Some(path)) = (svg, &cli.stacks.svg) {
        write_svg(file, &entries, layout, &what).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("offwaketime: flame graph written to {}", path.display());
    }
    if let (Some(file), Some(path)) = (pprof, &cli.stacks.pprof) {
        let started = std::time::SystemTime::now() - rc.elapsed();
        profile::write(file, &entries, started, rc.elapsed()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("offwaketime: pprof profile written to {}", path.display());
    }
    Ok(())
}

/// Hardirq entries and exits that can run a wakeup. The timer and irq_work
/// vectors are x86's; a kernel without them still has irq_handler_*.
const HARDIRQ_TPS: [(&str, &str, &str); 5] = [
    ("irq", "irq_handler_entry", "irq_handler_exit"),
    ("irq_vectors", "local_timer_entry", "local_timer_exit"),
    ("irq_vectors", "irq_work_entry", "irq_work_exit"),
    ("irq_vectors", "call_function_entry", "call_function_exit"),
    ("irq_vectors", "call_function_single_entry", "call_function_single_exit"),
];

/// Attach the interrupt-context trackers; returns the links and what could
/// not be followed (only the softirq pair and the first two hardirq pairs
/// are worth a warning).
fn attach_irq_context(progs: &bpf::OffwaketimeProgs, raw: bool) -> (Vec<Link>, Vec<String>) {
    let mut links = Vec::new();
    let mut missing = Vec::new();
    let (soft_exit, soft_enter) = if raw {
        (&progs.owt_softirq_exit_raw, &progs.owt_softirq_enter_raw)
    } else {
        (&progs.owt_softirq_exit_tp, &progs.owt_softirq_enter_tp)
    };
    match (soft_exit.attach(), soft_enter.attach()) {
        (Ok(a), Ok(b)) => links.extend([a, b]),
        _ => missing.push("softirq_entry/exit".to_string()),
    }
    let (exit, enter) = if raw {
        (&progs.owt_hardirq_exit_raw, &progs.owt_hardirq_enter_raw)
    } else {
        (&progs.owt_hardirq_exit_tp, &progs.owt_hardirq_enter_tp)
    };
    for (i, (cat, entry, exit_tp)) in HARDIRQ_TPS.iter().enumerate() {
        let one = |prog: &libbpf_rs::ProgramMut, name: &str| {
            if raw {
                prog.attach_raw_tracepoint(name)
            } else {
                prog.attach_tracepoint(libbpf_rs::TracepointCategory::Custom(cat.to_string()), name)
            }
        };
        match one(exit, exit_tp) {
            Ok(x) => match one(enter, entry) {
                Ok(e) => links.extend([x, e]),
                Err(_) if i < 2 => missing.push(format!("{cat}:{entry}")),
                Err(_) => {}
            },
            Err(_) if i < 2 => missing.push(format!("{cat}:{exit_tp}")),
            Err(_) => {}
        }
    }
    (links, missing)
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

fn read_counts(map: &Map) -> Result<Vec<(owt_key, owt_val)>> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(v) = map.lookup(&k, MapFlags::ANY).context("reading counts")? {
            out.push((plain::<owt_key>(&k), plain::<owt_val>(&v)));
        }
    }
    Ok(out)
}

/// Symbolize the user stacks of every group seen so far while their
/// processes are alive; the symbolizer keeps the names.
fn symbolize_user_stacks(counts: &Map, stack_map: &Map, cache: &mut StackCache, sym: &mut Symbolizer) {
    for k in counts.keys() {
        let key = plain::<owt_key>(&k);
        for (tgid, id) in [(key.t_tgid, key.t_ustack), (key.w_tgid, key.w_ustack)] {
            if id < 0 || tgid == 0 || !cache.user_done.insert((tgid, id)) {
                continue;
            }
            let addrs = cache.get(stack_map, id).to_vec();
            sym.user_stack(tgid, &addrs);
        }
    }
}

fn comm(c: &[i8]) -> String {
    let bytes: Vec<u8> = c.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn kernel_stack(id: i32, map: &Map, cache: &mut StackCache, ksyms: &ksyms::KernelSyms) -> Stack {
    match id {
        NOT_TAKEN => Stack::NotTaken,
        id if id < 0 => Stack::Failed(Errno(-id)),
        id => {
            let addrs = cache.get(map, id).to_vec();
            Stack::Frames(report::strip_tracer_frames(ksyms.stack(&addrs)))
        }
    }
}

fn user_stack(tgid: u32, id: i32, map: &Map, cache: &mut StackCache, sym: &mut Symbolizer) -> (Stack, bool) {
    match id {
        NOT_TAKEN => (Stack::NotTaken, false),
        id if id < 0 => (Stack::Failed(Errno(-id)), false),
        id => {
            let addrs = cache.get(map, id).to_vec();
            let frames = sym.user_stack(tgid, &addrs);
            let truncated = !report::user_stack_complete(&frames);
            (Stack::Frames(frames), truncated)
        }
    }
}

fn to_entry(
    k: &owt_key,
    v: &owt_val,
    map: &Map,
    cache: &mut StackCache,
    sym: &mut Symbolizer,
    ksyms: &ksyms::KernelSyms,
    softirq_names: &[String],
) -> Entry {
    let (t_user, t_trunc) = user_stack(k.t_tgid, k.t_ustack, map, cache, sym);
    let (w_user, w_trunc) = user_stack(k.w_tgid, k.w_ustack, map, cache, sym);
    let context = match k.w_ctx {
        CTX_TASK => Context::Task,
        CTX_SOFTIRQ => Context::Softirq,
        CTX_HARDIRQ => Context::Hardirq,
        CTX_NMI => Context::Nmi,
        CTX_PREEMPTED => Context::Preempted,
        _ => Context::Unseen,
    };
    let softirq = (context == Context::Softirq).then(|| {
        softirq_names.get(k.w_softirq as usize).cloned().unwrap_or_else(|| format!("vector {}", k.w_softirq as i32))
    });
    let mut waker_kernel = kernel_stack(k.w_kstack, map, cache, ksyms);
    if matches!(context, Context::Hardirq | Context::Softirq | Context::Nmi) {
        if let Stack::Frames(f) = waker_kernel {
            waker_kernel = Stack::Frames(report::cut_at_interrupt_entry(f));
        }
    }
    Entry {
        kind: "wakeup",
        blocked_ns: v.blocked_ns,
        runq_ns: v.runq_ns,
        count: v.count,
        sleeper: Side {
            comm: comm(&k.t_comm),
            pid: k.t_pid,
            tgid: k.t_tgid,
            kernel_stack: kernel_stack(k.t_kstack, map, cache, ksyms),
            user_stack: t_user,
            user_stack_truncated: t_trunc,
        },
        waker: Waker {
            context,
            softirq,
            side: Side {
                comm: comm(&k.w_comm),
                pid: k.w_pid,
                tgid: k.w_tgid,
                kernel_stack: waker_kernel,
                user_stack: w_user,
                user_stack_truncated: w_trunc,
            },
        },
    }
}

/// The per-CPU counters, summed.
fn read_stats(map: &Map) -> Result<owt_stats> {
    kdiag_shared::maps::sum_counters(map).context("reading statistics")
}

fn summarize(entries: &[Entry], s: &owt_stats, mech: &Mechanism, rc: &RunControl, reason: &StopReason) -> Summary {
    // Distinct user stacks, so one busy stack is not counted per waker.
    let mut user: HashMap<(u32, String), bool> = HashMap::new();
    for e in entries {
        for side in [&e.sleeper, &e.waker.side] {
            if let Stack::Frames(f) = &side.user_stack {
                let id = f.iter().map(|f| format!("{:x}", f.addr)).collect::<Vec<_>>().join(",");
                user.insert((side.tgid, id), side.user_stack_truncated);
            }
        }
    }
    Summary {
        kind: "summary",
        backend: mech.name().to_string(),
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        groups: entries.len(),
        blocked_ns: entries.iter().map(|e| e.blocked_ns).sum(),
        runq_ns: entries.iter().map(|e| e.runq_ns).sum(),
        count: entries.iter().map(|e| e.count).sum(),
        sleeps: s.sleeps,
        wakeups: s.wakeups,
        outside_min_max: s.filtered_time,
        unseen_wakeups: s.unseen_wakeups,
        stack_failures: StackFailures {
            eexist: s.stack_eexist,
            enomem: s.stack_enomem,
            efault: s.stack_efault,
            other: s.stack_other,
        },
        groups_dropped: s.keys_dropped,
        sleeps_dropped: s.sleeps_dropped,
        wakeups_dropped: s.wakeups_dropped,
        user_stacks: user.len() as u64,
        user_stacks_truncated: user.values().filter(|&&t| t).count() as u64,
    }
}

fn write_svg(file: File, entries: &[Entry], layout: Layout, what: &str) -> Result<()> {
    let lines: Vec<String> = entries.iter().filter(|e| e.weight_us() > 0).map(|e| e.folded(layout)).collect();
    let labels = flame::Labels {
        title: format!("Off-Wake Time: {what}"),
        subtitle: Some("sleeper stacks below --, waker stacks above; width is blocked time".into()),
        count_name: "us".into(),
    };
    flame::write_svg(file, &labels, &lines)
}

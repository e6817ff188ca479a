//! funcstack: which kernel paths lead to a function or tracepoint, how
//! often, from which tasks and CPUs. See `funcstack --help`,
//! bpf/funcstack.bpf.c and ftrace.rs for how.

mod cli;
mod ftrace;
mod report;
mod target;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/funcstack.skel.rs"));
}

use anyhow::{anyhow, bail, Context as _, Result};
use bpf::types::{fs_key, fs_ret_key, fs_stats};
use bpf::{FuncstackSkel, FuncstackSkelBuilder};
use kdiag_shared::backend::{self, Mechanism, ProbeError};
use kdiag_shared::maps::{plain, StackCache};
use kdiag_shared::runctl::{RunControl, StopReason};
use kdiag_shared::symbolize::{Frame, Symbolizer};
use kdiag_shared::{flame, precheck, Errno};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, Map, MapCore, MapFlags};
use report::{Entry, RetEntry, RetValue, Stack, StackFailures, Summary};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};
use target::{Kallsyms, Resolved, Spec};

/// Every backend the tool has, for `--backend`.
const ALL: [Mechanism; 5] =
    [Mechanism::Fentry, Mechanism::KprobeMulti, Mechanism::Kprobe, Mechanism::Tracepoint, Mechanism::Ftrace];
const ONE_FUNCTION: [Mechanism; 3] = [Mechanism::Fentry, Mechanism::Kprobe, Mechanism::Ftrace];
/// fentry would need one program load per function; kprobe-multi attaches
/// a whole glob at once, plain kprobes one by one.
const GLOB: [Mechanism; 3] = [Mechanism::KprobeMulti, Mechanism::Kprobe, Mechanism::Ftrace];
const TRACEPOINT: [Mechanism; 2] = [Mechanism::Tracepoint, Mechanism::Ftrace];
/// Attaching kprobes one at a time: beyond this, ask for a narrower glob.
const MAX_SINGLE_KPROBES: usize = 1000;
const NOT_TAKEN: i32 = -4096;
const SYMBOLIZE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("funcstack");
    if let Err(e) = run(cli) {
        eprintln!("funcstack: {e:#}");
        std::process::exit(1);
    }
}

// One session per run, never moved about: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Session {
    Bpf(BpfSession),
    Ftrace(ftrace::Session),
}

struct BpfSession {
    skel: FuncstackSkel<'static>,
    links: Vec<Link>,
    /// Functions that would not take a probe, with why (glob, kprobe).
    skipped: Vec<(String, String)>,
    want_ip: bool,
}

fn run(cli: cli::Cli) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // attached, so a bad command line leaves no trace in the kernel.
    let spec = Spec::parse(&cli.target).map_err(|e| anyhow!(e))?;
    if cli.ret && spec.is_tracepoint() {
        bail!("--ret needs a function: tracepoints have no return value");
    }
    if let Some(p) = cli.pid {
        if !Path::new(&format!("/proc/{p}")).exists() {
            bail!("no such process: {p}");
        }
    }
    let forced = match &cli.backend {
        Some(b) => Some(backend::parse_backend(b, &ALL).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let svg = cli.stacks.create_svg().map_err(|e| anyhow!(e))?;
    precheck::check(precheck::Needs { btf: false, tracefs: false }).map_err(|e| anyhow!(e))?;
    // tracefs names tracepoints and carries the ftrace rung; a kernel
    // without it can still use fentry and kprobes.
    let tracefs = precheck::tracefs().ok();

    let mut kallsyms = None;
    let resolved = match &spec {
        Spec::Tracepoint { group, name } => {
            let t = tracefs.as_deref().ok_or_else(|| anyhow!("tracepoints need tracefs, which cannot be mounted"))?;
            target::resolve_tracepoint(t, group, name).map_err(|e| anyhow!(e))?
        }
        _ => {
            let k = Kallsyms::load(tracefs.as_deref()).map_err(|e| anyhow!(e))?;
            let r = target::resolve_functions(&spec, &k).map_err(|e| anyhow!(e))?;
            kallsyms = Some(k);
            r
        }
    };
    let ladder: &[Mechanism] = match &resolved {
        Resolved::Tracepoint { .. } => &TRACEPOINT,
        Resolved::Functions { glob: true, .. } => &GLOB,
        Resolved::Functions { .. } => &ONE_FUNCTION,
    };
    if let Some(m) = forced {
        if !ladder.contains(&m) {
            let names: Vec<&str> = ladder.iter().map(|m| m.name()).collect();
            bail!("backend {m} cannot trace {} (use {})", spec.label(), names.join(" or "));
        }
    }
    let btf = libbpf_rs::btf::Btf::from_vmlinux().ok();
    let nr_args = match (&spec, &btf) {
        (Spec::Function(f), Some(btf)) => {
            let sig = function_signature(btf, f);
            if cli.ret && sig.is_some_and(|(_, void)| void) {
                bail!("{f} returns void: --ret has nothing to count");
            }
            sig.map(|(n, _)| n)
        }
        _ => None,
    };

    let mut session = None;
    let choice = backend::choose(ladder, forced, |m| {
        let s = match m {
            Mechanism::Ftrace => {
                let t = tracefs.as_deref().ok_or_else(|| ProbeError::Unavailable("no tracefs".into()))?;
                let glob = match &spec {
                    Spec::Glob(g) => Some(g.as_str()),
                    _ => None,
                };
                let want = ftrace::Scope { pid: cli.pid, comm: cli.comm.clone() };
                Session::Ftrace(ftrace::Session::start(t, &resolved, glob, &want).map_err(ProbeError::Unavailable)?)
            }
            m => Session::Bpf(start_bpf(m, &resolved, &cli, nr_args).map_err(ProbeError::Unavailable)?),
        };
        session = Some(s);
        Ok(())
    })
    .map_err(|e| anyhow!("cannot trace {}: {e}", spec.label()))?;
    let mut session = session.context("no session after a successful backend choice")?;

    // Signals are caught before the banner: whoever waits for it may send
    // one at once.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    eprintln!("funcstack: {}", choice.explain());
    let is_ftrace = matches!(session, Session::Ftrace(_));
    if is_ftrace && cli.ret {
        eprintln!("funcstack: warning: --ret: ftrace cannot see return values; counting stacks only");
    }
    if is_ftrace && cli.user_stacks {
        eprintln!("funcstack: warning: -U: ftrace takes kernel stacks only");
    }
    let mut skipped: Vec<(String, String)> = match &resolved {
        Resolved::Functions { excluded, .. } => excluded.clone(),
        _ => vec![],
    };
    let refused = match &session {
        Session::Bpf(b) => b.skipped.clone(),
        Session::Ftrace(_) => vec![],
    };
    let attached = resolved.functions().len().saturating_sub(refused.len()).max(1);
    skipped.extend(refused);
    if !skipped.is_empty() {
        let (n, why) = &skipped[0];
        eprintln!("funcstack: {} matching functions left out, e.g. {n}: {why}", skipped.len());
    }
    let what = match &resolved {
        Resolved::Functions { glob: true, .. } => {
            format!("{} ({attached} functions)", spec.label())
        }
        _ => spec.label(),
    };
    let filter = match (cli.pid, &cli.comm) {
        (Some(p), Some(c)) => format!(" by process {p} named {c}"),
        (Some(p), None) => format!(" by process {p}"),
        (None, Some(c)) => format!(" by tasks named {c}"),
        (None, None) => String::new(),
    };
    eprintln!("funcstack: counting stacks that reach {what}{filter}. Ctrl-C to end.");

    let mut sym = Symbolizer::new();
    let mut stacks = StackCache::default();
    let mut last_pass = Instant::now();
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        if let Some(p) = cli.pid {
            if !Path::new(&format!("/proc/{p}")).exists() {
                break StopReason::Other(format!("process {p} exited"));
            }
        }
        let wait = rc.poll_timeout(Duration::from_millis(200));
        match &mut session {
            Session::Bpf(_) => std::thread::sleep(wait),
            Session::Ftrace(s) => s.poll(wait).map_err(|e| anyhow!(e))?,
        }
        if let Session::Bpf(b) = &session {
            if cli.user_stacks && last_pass.elapsed() >= SYMBOLIZE_EVERY {
                symbolize_user_stacks(&b.skel.maps.counts, &b.skel.maps.stacks, &mut stacks, &mut sym);
                last_pass = Instant::now();
            }
        }
    };

    let label = spec.label();
    let (entries, rets, mut summary) = match session {
        Session::Bpf(mut b) => {
            // Detach first: the counts no longer move while they are read.
            b.links.clear();
            let maps = &b.skel.maps;
            if cli.user_stacks {
                symbolize_user_stacks(&maps.counts, &maps.stacks, &mut stacks, &mut sym);
            }
            let name_of = |ip: u64| -> String {
                if !b.want_ip {
                    return label.clone();
                }
                kallsyms
                    .as_ref()
                    .and_then(|k| k.function_at(ip))
                    .map(String::from)
                    .unwrap_or_else(|| format!("{ip:#x}"))
            };
            let mut entries = Vec::new();
            for (k, per_cpu) in read_counts(&maps.counts)? {
                let target = name_of(k.ip);
                entries.push(to_entry(&k, per_cpu, target, &maps.stacks, &mut stacks, &mut sym));
            }
            let rets = read_rets(&maps.rets)?
                .into_iter()
                .map(|(k, n)| RetEntry::new(name_of(k.ip), ret_value(&k), n))
                .collect();
            let s = read_stats(&maps.stats)?;
            let summary = Summary {
                hits: s.hits,
                filtered: s.filtered,
                stack_failures: StackFailures {
                    eexist: s.stack_eexist,
                    enomem: s.stack_enomem,
                    efault: s.stack_efault,
                    other: s.stack_other,
                },
                keys_dropped: s.keys_dropped,
                rets_dropped: s.rets_dropped,
                ..Default::default()
            };
            (entries, rets, summary)
        }
        Session::Ftrace(s) => {
            let (samples, lost, scope) = s.stop().map_err(|e| anyhow!(e))?;
            let hits = samples.len() as u64;
            let mut tgids = HashMap::new();
            let mut filtered = 0;
            let mut entries = Vec::new();
            for mut smp in samples {
                // What the kernel filtered on is known, even for a task
                // that has exited since.
                let tgid = scope
                    .pid
                    .or(smp.tgid)
                    .or_else(|| *tgids.entry(smp.tid).or_insert_with(|| tgid_of(smp.tid)))
                    .unwrap_or(0);
                if let Some(c) = &scope.comm {
                    smp.comm = c.clone();
                }
                if cli.pid.is_some_and(|p| p != tgid) || cli.comm.as_ref().is_some_and(|c| *c != smp.comm) {
                    filtered += 1;
                    continue;
                }
                entries.push(ftrace_entry(&smp, tgid, &label));
            }
            let summary = Summary { hits, filtered, lost_records: lost, ..Default::default() };
            (entries, vec![], summary)
        }
    };

    let entries = report::merge(entries);
    let shown = cli.top.map_or(entries.len(), |n| (n as usize).min(entries.len()));
    summary = Summary {
        kind: "summary",
        target: label.clone(),
        backend: choice.mechanism.name().to_string(),
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        attached,
        stacks: entries.len(),
        shown,
        count: entries.iter().map(|e| e.count).sum(),
        ..summary
    };
    let entries = &entries[..shown];

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if cli.json {
        for e in entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        for r in &rets {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    } else if cli.folded {
        for e in entries {
            writeln!(out, "{}", e.folded())?;
        }
        // stdout stays pure folded lines for flamegraph.pl.
        eprint!("{}{}", report::rets_text(&rets), summary.text());
    } else {
        for e in entries {
            write!(out, "{}", e.text())?;
        }
        write!(out, "{}{}", report::rets_text(&rets), summary.text())?;
    }
    out.flush()?;
    if let (Some(file), Some(path)) = (svg, &cli.stacks.svg) {
        write_svg(file, entries, &label).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("funcstack: flame graph written to {}", path.display());
    }
    Ok(())
}

/// The number of arguments of `name` and whether it returns void, from
/// BTF; None when BTF does not describe it.
fn function_signature(btf: &libbpf_rs::btf::Btf, name: &str) -> Option<(u32, bool)> {
    use libbpf_rs::btf::{types, BtfType, ReferencesType, TypeId};
    let f = btf.type_by_name::<types::Func>(name)?;
    let proto = types::FuncProto::try_from(btf.type_by_id::<BtfType>(f.referenced_type_id())?).ok()?;
    // A prototype references its return type; id 0 is void.
    Some((proto.len() as u32, proto.referenced_type_id() == TypeId::from(0)))
}

fn describe(err: &libbpf_rs::Error, stage: &str) -> String {
    match Errno::of_libbpf(err) {
        Some(e) => format!("{e} at {stage}"),
        None => format!("{stage} failed: {err}"),
    }
}

/// Kernels before 5.15 lack bpf_get_func_ip; kprobes then read the address.
fn have_func_ip() -> bool {
    libbpf_rs::btf::Btf::from_vmlinux().is_ok_and(|b| kdiag_shared::probe::has_helper(&b, "BPF_FUNC_get_func_ip"))
}

/// Load the programs `m` needs and attach them to the target. Any failure
/// is this rung's, and the ladder moves on.
fn start_bpf(m: Mechanism, target: &Resolved, cli: &cli::Cli, nr_args: Option<u32>) -> Result<BpfSession, String> {
    let functions = target.functions();
    let want_ip = functions.len() > 1;
    let have_func_ip = have_func_ip();
    if want_ip && cli.ret && !have_func_ip && m != Mechanism::Ftrace {
        return Err("telling several functions' returns apart needs bpf_get_func_ip (first in 5.15)".into());
    }
    if m == Mechanism::Fentry && nr_args.is_none() {
        return Err(format!("{} is not described in the kernel's BTF", functions.first().map_or("", |f| f.as_str())));
    }
    if m == Mechanism::Kprobe && functions.len() > MAX_SINGLE_KPROBES {
        return Err(format!(
            "{} functions is too many to attach one by one (at most {MAX_SINGLE_KPROBES}): narrow the glob",
            functions.len()
        ));
    }
    // The skeleton borrows its storage for as long as it lives, which is
    // the whole run; a rung that fails leaks one small allocation.
    let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    // A refused load is an expected answer on this ladder: keep libbpf's
    // long explanation off stderr, the banner says it once.
    let saved = libbpf_rs::set_print(None);
    let result = load_and_attach(storage, m, target, cli, nr_args, want_ip, have_func_ip);
    libbpf_rs::set_print(saved);
    result
}

fn load_and_attach(
    storage: &'static mut MaybeUninit<libbpf_rs::OpenObject>,
    m: Mechanism,
    target: &Resolved,
    cli: &cli::Cli,
    nr_args: Option<u32>,
    want_ip: bool,
    have_func_ip: bool,
) -> Result<BpfSession, String> {
    let functions = target.functions();
    let mut open = FuncstackSkelBuilder::default().open(storage).map_err(|e| describe(&e, "open"))?;
    open.maps.stacks.set_max_entries(cli.stacks.stack_storage_size).map_err(|e| e.to_string())?;
    let ro = open.maps.rodata_data.as_deref_mut().ok_or("BPF object has no rodata")?;
    ro.target_tgid = cli.pid.unwrap_or(0);
    if let Some(c) = &cli.comm {
        ro.filter_comm = true;
        for (i, b) in c.bytes().take(15).enumerate() {
            ro.target_comm[i] = b as _;
        }
    }
    ro.want_ustack = cli.user_stacks;
    ro.want_ip = want_ip;
    ro.have_func_ip = have_func_ip;
    ro.nr_args = nr_args.unwrap_or(0);
    let p = &mut open.progs;
    let is_tp = matches!(target, Resolved::Tracepoint { .. });
    for (prog, on) in [
        (&mut p.fs_tp, is_tp),
        (&mut p.fs_fentry, m == Mechanism::Fentry),
        (&mut p.fs_fexit, m == Mechanism::Fentry && cli.ret),
        (&mut p.fs_kprobe, m == Mechanism::Kprobe),
        (&mut p.fs_kretprobe, m == Mechanism::Kprobe && cli.ret),
        (&mut p.fs_kmulti, m == Mechanism::KprobeMulti),
        (&mut p.fs_kretmulti, m == Mechanism::KprobeMulti && cli.ret),
    ] {
        prog.set_autoload(on);
    }
    if m == Mechanism::Fentry {
        let f = functions[0].clone();
        p.fs_fentry.set_attach_target(0, Some(f.clone())).map_err(|e| describe(&e, "open"))?;
        if cli.ret {
            p.fs_fexit.set_attach_target(0, Some(f)).map_err(|e| describe(&e, "open"))?;
        }
    }
    let skel = open.load().map_err(|e| describe(&e, "load"))?;
    let mut links = Vec::new();
    let mut skipped = Vec::new();
    let progs = &skel.progs;
    match (m, target) {
        (Mechanism::Tracepoint, Resolved::Tracepoint { group, name }) => {
            let cat = libbpf_rs::TracepointCategory::Custom(group.clone());
            links.push(progs.fs_tp.attach_tracepoint(cat, name).map_err(|e| describe(&e, "attach"))?);
        }
        (Mechanism::Fentry, _) => {
            if cli.ret {
                links.push(progs.fs_fexit.attach_trace().map_err(|e| describe(&e, "attach"))?);
            }
            links.push(progs.fs_fentry.attach_trace().map_err(|e| describe(&e, "attach"))?);
        }
        (Mechanism::KprobeMulti, _) => {
            let opts =
                |retprobe| libbpf_rs::KprobeMultiOpts { symbols: functions.to_vec(), retprobe, ..Default::default() };
            if cli.ret {
                links.push(
                    progs.fs_kretmulti.attach_kprobe_multi_with_opts(opts(true)).map_err(|e| describe(&e, "attach"))?,
                );
            }
            links.push(progs.fs_kmulti.attach_kprobe_multi_with_opts(opts(false)).map_err(|e| describe(&e, "attach"))?);
        }
        (Mechanism::Kprobe, _) => {
            let mut first_err = None;
            for f in functions {
                let res = (|| -> Result<Vec<Link>, libbpf_rs::Error> {
                    let mut l = Vec::new();
                    if cli.ret {
                        l.push(progs.fs_kretprobe.attach_kprobe(true, f)?);
                    }
                    l.push(progs.fs_kprobe.attach_kprobe(false, f)?);
                    Ok(l)
                })();
                match res {
                    Ok(l) => links.extend(l),
                    Err(e) => {
                        let why = describe(&e, "attach");
                        first_err.get_or_insert_with(|| why.clone());
                        skipped.push((f.clone(), format!("kprobe refused: {why}")));
                    }
                }
            }
            if links.is_empty() {
                return Err(first_err.unwrap_or_else(|| "nothing to attach".into()));
            }
        }
        _ => return Err(format!("{m} cannot trace this target")),
    }
    Ok(BpfSession { skel, links, skipped, want_ip })
}

/// Each key with its count on each CPU (index = CPU number).
fn read_counts(map: &Map) -> Result<Vec<(fs_key, Vec<u64>)>> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(per_cpu) = map.lookup_percpu(&k, MapFlags::ANY).context("reading counts")? {
            out.push((plain::<fs_key>(&k), per_cpu.iter().map(|v| plain::<u64>(v)).collect()));
        }
    }
    Ok(out)
}

fn read_rets(map: &Map) -> Result<Vec<(fs_ret_key, u64)>> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(v) = map.lookup(&k, MapFlags::ANY).context("reading return values")? {
            out.push((plain::<fs_ret_key>(&k), plain::<u64>(&v)));
        }
    }
    Ok(out)
}

fn ret_value(k: &fs_ret_key) -> RetValue {
    if k.bucket == 1 {
        RetValue::Range(k.val as u32)
    } else {
        RetValue::Exact(k.val)
    }
}

/// The per-CPU counters, summed.
fn read_stats(map: &Map) -> Result<fs_stats> {
    kdiag_shared::maps::sum_counters(map).context("reading statistics")
}

/// Symbolize the user stacks seen so far while their processes live; the
/// symbolizer keeps the names for the report.
fn symbolize_user_stacks(counts: &Map, stack_map: &Map, cache: &mut StackCache, sym: &mut Symbolizer) {
    for k in counts.keys() {
        let key = plain::<fs_key>(&k);
        if key.ustack < 0 || key.tgid == 0 || !cache.user_done.insert((key.tgid, key.ustack)) {
            continue;
        }
        let addrs = cache.get(stack_map, key.ustack).to_vec();
        sym.user_stack(key.tgid, &addrs);
    }
}

fn comm(c: &[i8]) -> String {
    let bytes: Vec<u8> = c.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn to_entry(
    k: &fs_key,
    per_cpu: Vec<u64>,
    target: String,
    map: &Map,
    cache: &mut StackCache,
    sym: &mut Symbolizer,
) -> Entry {
    let kernel_stack = match k.kstack {
        NOT_TAKEN => Stack::NotTaken,
        id if id < 0 => Stack::Failed(Errno(-id)),
        id => {
            let addrs = cache.get(map, id).to_vec();
            Stack::Frames(report::trim(sym.kernel_stack(&addrs), &target))
        }
    };
    let user_stack = match k.ustack {
        NOT_TAKEN => Stack::NotTaken,
        id if id < 0 => Stack::Failed(Errno(-id)),
        id => {
            let addrs = cache.get(map, id).to_vec();
            Stack::Frames(sym.user_stack(k.tgid, &addrs))
        }
    };
    Entry {
        kind: "stack",
        target,
        comm: comm(&k.comm),
        pid: k.tgid,
        tid: k.pid,
        cpus: per_cpu.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, _)| c as u32).collect(),
        count: per_cpu.iter().sum(),
        kernel_stack,
        user_stack,
    }
}

fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn ftrace_entry(s: &ftrace::Sample, tgid: u32, label: &str) -> Entry {
    let target = s.function.clone().unwrap_or_else(|| label.to_string());
    let frames: Vec<Frame> = s
        .frames
        .iter()
        .map(|(name, module)| match name.strip_prefix('<').and_then(|n| n.strip_suffix('>')) {
            // An address ftrace could not name.
            Some(hex) => Frame { addr: u64::from_str_radix(hex, 16).unwrap_or(0), sym: None, off: 0, module: None },
            None => Frame { addr: 0, sym: Some(name.clone()), off: 0, module: module.clone() },
        })
        .collect();
    Entry {
        kind: "stack",
        kernel_stack: Stack::Frames(report::trim(frames, &target)),
        target,
        comm: s.comm.clone(),
        pid: tgid,
        tid: s.tid,
        cpus: BTreeSet::from([s.cpu]),
        count: 1,
        user_stack: Stack::NotTaken,
    }
}

fn write_svg(file: File, entries: &[Entry], label: &str) -> Result<()> {
    let lines: Vec<String> = entries.iter().map(Entry::folded).collect();
    let labels = flame::Labels {
        title: format!("Stacks reaching {label}"),
        subtitle: Some("root: calling task; tips: the target; width: calls".into()),
        count_name: "calls".into(),
    };
    flame::write_svg(file, &labels, &lines)
}

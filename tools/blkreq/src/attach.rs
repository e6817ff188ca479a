//! The attach ladder. Functions: kprobe-multi (one link for the whole
//! set), else fentry (one program per function), else single kprobes
//! attached in parallel batches; tracepoints always, through tp_btf or
//! raw_tp. Each rung is first probed by loading and attaching a tiny
//! program (shared::probe): kernel config and BTF say what was built, not
//! what the kernel accepts (the host has fentry in BTF and refuses it).
//! A function that refuses is counted and named, never fatal: one
//! `notrace` function must not cost the other 150.

use crate::bpf::{BlkreqSkel, BlkreqSkelBuilder, OpenBlkreqSkel};
use crate::btfscan::Kind;
use crate::targets::{Resolved, Target, FUNC_SLOTS};
use anyhow::{anyhow, Context as _, Result};
use kdiag_shared::backend::{self, Choice, Mechanism};
use kdiag_shared::links::Links;
use kdiag_shared::skel::Storage;
use kdiag_shared::transport::Kind as Transport;
use kdiag_shared::{libbpf_log, probe, Errno};
use libbpf_rs::skel::{OpenSkel, Skel};
use libbpf_rs::{AsRawLibbpf, KprobeMultiOpts, Link, ProgramMut};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

pub const FUNC_LADDER: [Mechanism; 3] = [Mechanism::KprobeMulti, Mechanism::Fentry, Mechanism::Kprobe];
pub const TP_LADDER: [Mechanism; 2] = [Mechanism::TpBtf, Mechanism::RawTp];
pub const ALL: [Mechanism; 5] =
    [Mechanism::KprobeMulti, Mechanism::Fentry, Mechanism::Kprobe, Mechanism::TpBtf, Mechanism::RawTp];

/// How functions and tracepoints will be attached.
pub struct Plan {
    /// None: this kernel takes none of the function rungs (or the user
    /// asked for tracepoints only).
    pub funcs: Option<Mechanism>,
    pub funcs_choice: Result<Choice, String>,
    pub tps: Choice,
}

impl Plan {
    pub fn method_of(&self, t: &Target) -> String {
        if let Some(why) = &t.skip {
            return format!("- ({why})");
        }
        match t.site.kind {
            Kind::Function => {
                self.funcs.map(|m| m.name().to_string()).unwrap_or_else(|| "- (no function probes here)".into())
            }
            Kind::Tracepoint => self.tps.mechanism.name().to_string(),
        }
    }

    /// For the banner: what follows functions, and why not better.
    pub fn explain(&self) -> String {
        let funcs = match &self.funcs_choice {
            Ok(c) => format!("functions: {}", c.explain()),
            Err(e) => {
                let why =
                    e.strip_prefix("no usable backend on this kernel (").and_then(|w| w.strip_suffix(')')).unwrap_or(e);
                format!("functions: none ({why}), following requests through block tracepoints and their stacks only")
            }
        };
        format!("{funcs}; tracepoints: {}", self.tps.explain())
    }
}

pub fn plan(forced: Option<Mechanism>) -> Result<Plan, String> {
    let probe = probe::kernel_supports;
    let (func_forced, tp_forced) = match forced {
        Some(m) if FUNC_LADDER.contains(&m) => (Some(m), None),
        Some(m) => (None, Some(m)),
        None => (None, None),
    };
    let funcs_choice = match (forced, func_forced) {
        (Some(m), None) => Err(format!("--backend {m} asks for tracepoints only")),
        (_, f) => match backend::choose(&FUNC_LADDER, f, probe) {
            Ok(c) => Ok(c),
            // A forced rung that does not work is the user's error.
            Err(e) if f.is_some() => return Err(e),
            Err(e) => Err(e),
        },
    };
    let tps = backend::choose(&TP_LADDER, tp_forced, probe)?;
    Ok(Plan { funcs: funcs_choice.as_ref().ok().map(|c| c.mechanism), funcs_choice, tps })
}

/// What the BPF side is told before load.
pub struct Config {
    pub count: u32,
    pub post_end: Duration,
    pub dev: u32,
    pub tgid: u32,
    pub comm: Option<[u8; 16]>,
    pub op: Option<u32>,
    pub transport: Transport,
    /// Admit a request at the first probe after block_getrq that sees its
    /// bio (see `bio_births` in the BPF code): kernels before 6.5.
    pub bio_births: bool,
    /// Which argument of block_getrq is the bio: 0, or 1 before 5.11.
    pub getrq_bio: u8,
    /// Kprobes carry their target id as a cookie (5.15); before, the BPF
    /// side finds it by the probed address.
    pub have_cookies: bool,
}

fn configure(open: &mut OpenBlkreqSkel<'_>, cfg: &Config, res: &Resolved) -> Result<()> {
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = cfg.transport == Transport::RingBuf;
    ro.max_requests = cfg.count as u64;
    ro.post_end_ns = cfg.post_end.as_nanos() as u64;
    ro.filter_dev = cfg.dev;
    ro.filter_tgid = cfg.tgid;
    if let Some(c) = cfg.comm {
        ro.filter_comm_on = true;
        for (d, s) in ro.filter_comm.iter_mut().zip(c) {
            *d = s as i8;
        }
    }
    ro.filter_op = cfg.op.map(|o| o as i32).unwrap_or(-1);
    ro.bio_births = cfg.bio_births;
    ro.getrq_bio_arg = cfg.getrq_bio as u32;
    ro.have_cookies = cfg.have_cookies;
    for t in res.all().filter(|t| t.skip.is_none()) {
        let i = t.id as usize;
        ro.tgt_posmask[i] = t.site.posmask();
        ro.tgt_flags[i] = t.role;
        ro.tgt_rank[i] = t.rank;
    }
    // Never deleted during a run: at most one entry per admitted pointer.
    open.maps.tracked.set_max_entries(cfg.count).context("sizing the request table")?;
    open.maps.events_ring.set_max_entries(ring_bytes(cfg.count)).context("sizing the ring buffer")?;
    // A full `sessions` is the admission bound.
    open.maps.sessions.set_max_entries(cfg.count).context("sizing the session table")?;
    open.maps.live.set_max_entries(cfg.count).context("sizing the live-session table")?;
    cfg.transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf)?;
    for mut p in open.open_object_mut().progs_mut() {
        p.set_autoload(false);
    }
    Ok(())
}

/// Steps in flight per followed request that the ring buffer holds
/// before a burst is lost: about three times the steps of a request.
const RING_STEPS_PER_REQUEST: u64 = 32;

/// The ring buffer for `count` requests. Its pages are mapped into the
/// process twice (the kernel's wrap-around trick) and count in its RSS:
/// the 4 MiB ring that suited `-n 65536` made 8 MiB of a default run's
/// 15 MiB peak.
fn ring_bytes(count: u32) -> u32 {
    let want = count as u64 * RING_STEPS_PER_REQUEST * std::mem::size_of::<crate::bpf::types::brq_event>() as u64;
    want.next_power_of_two().clamp(256 << 10, 4 << 20) as u32
}

fn open_skel(storage: &Storage) -> Result<OpenBlkreqSkel<'_>> {
    kdiag_shared::skel::open(BlkreqSkelBuilder::default(), storage.slot())
}

fn set_prog(open: &mut OpenBlkreqSkel<'_>, name: &str, target: Option<&str>) -> Result<()> {
    for mut p in open.open_object_mut().progs_mut() {
        if p.name() == name {
            p.set_autoload(true);
            if let Some(t) = target {
                p.set_attach_target(0, Some(t.to_string())).with_context(|| format!("target {t} for {name}"))?;
            }
            return Ok(());
        }
    }
    Err(anyhow!("BPF object has no program {name}"))
}

/// Everything attached; dropping it detaches (kprobes in parallel, as
/// each kprobe removal waits for an RCU grace period).
pub struct Attached<'s> {
    pub core: BlkreqSkel<'s>,
    fentry: Vec<BlkreqSkel<'s>>,
    links: Links,
    pub funcs_attached: usize,
    pub tps_attached: usize,
    /// (function or tracepoint, why) for each that would not attach.
    pub refused: Vec<(String, String)>,
    pub attach_time: Duration,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        // Links first: the fentry objects' programs are theirs.
        self.links.detach();
        self.fentry.clear();
    }
}

impl Attached<'_> {
    /// Requests tracked to their end so far.
    pub fn finished(&self) -> u64 {
        self.core
            .maps
            .bss_data
            .as_ref()
            // SAFETY: the .bss map is mmapped and written by BPF concurrently;
            // a volatile read of an aligned u64 is what we need.
            .map(|b| unsafe { std::ptr::read_volatile(&b.finished) })
            .unwrap_or(0)
    }
}

fn find_prog<'a>(skel: &'a mut BlkreqSkel<'_>, name: &str) -> Option<ProgramMut<'a>> {
    skel.object_mut().progs_mut().find(|p| p.name() == name)
}

fn errno_text(e: &libbpf_rs::Error) -> String {
    Errno::of_libbpf(e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
}

pub fn load_and_attach<'s>(storage: &'s Storage, plan: &Plan, cfg: &Config, res: &Resolved) -> Result<Attached<'s>> {
    let started = Instant::now();
    let mut open = open_skel(storage)?;
    configure(&mut open, cfg, res)?;
    let tp_btf = plan.tps.mechanism == Mechanism::TpBtf;
    let tps: Vec<&Target> = res.tps.iter().filter(|t| t.skip.is_none()).collect();
    for t in &tps {
        let slot = t.id as usize - FUNC_SLOTS;
        if tp_btf {
            set_prog(&mut open, &format!("brq_tb_{slot}"), Some(&t.site.name))?;
        } else {
            set_prog(&mut open, &format!("brq_rt_{slot}"), None)?;
        }
    }
    let getrq = if tp_btf { "brq_getrq_tb" } else { "brq_getrq_rt" };
    if cfg.bio_births {
        set_prog(&mut open, getrq, None)?;
    }
    match plan.funcs {
        Some(Mechanism::KprobeMulti) => set_prog(&mut open, "brq_kmulti", None)?,
        Some(Mechanism::Kprobe) => set_prog(&mut open, "brq_kprobe", None)?,
        _ => {}
    }
    let core = open.load().map_err(|e| anyhow!(libbpf_log::explain_load("the BPF programs", &e)))?;
    let mut a = Attached {
        core,
        fentry: vec![],
        links: Links::new(),
        funcs_attached: 0,
        tps_attached: 0,
        refused: vec![],
        attach_time: Duration::ZERO,
    };

    for t in &tps {
        let slot = t.id as usize - FUNC_SLOTS;
        let name = if tp_btf { format!("brq_tb_{slot}") } else { format!("brq_rt_{slot}") };
        let prog = find_prog(&mut a.core, &name).context("tracepoint slot")?;
        let r = if tp_btf { prog.attach_trace() } else { prog.attach_raw_tracepoint(&t.site.name) };
        match r {
            Ok(l) => {
                a.links.push(l);
                a.tps_attached += 1;
            }
            Err(e) => a.refused.push((t.label(), errno_text(&e))),
        }
    }

    if cfg.bio_births {
        let prog = find_prog(&mut a.core, getrq).context("block_getrq program")?;
        let r = if tp_btf { prog.attach_trace() } else { prog.attach_raw_tracepoint("block_getrq") };
        match r {
            Ok(l) => a.links.push(l),
            // Requests are then admitted at insert or issue, as before.
            Err(e) => a.refused.push(("tracepoint:block_getrq".into(), errno_text(&e))),
        }
    }

    let funcs: Vec<&Target> = res.funcs.iter().filter(|t| t.skip.is_none()).collect();
    match plan.funcs {
        Some(Mechanism::KprobeMulti) => attach_kmulti(&mut a, &funcs),
        Some(Mechanism::Fentry) => attach_fentry(&mut a, storage, cfg, res, &funcs)?,
        Some(Mechanism::Kprobe) => {
            if !cfg.have_cookies {
                fill_kprobe_ids(&mut a.core, &funcs)?;
            }
            attach_kprobes(&mut a, &funcs, cfg.have_cookies)
        }
        _ => {}
    }
    a.attach_time = started.elapsed();
    if let Some(bss) = a.core.maps.bss_data.as_deref_mut() {
        // SAFETY: the mmapped .bss is shared with the BPF programs, which
        // only read `armed`.
        unsafe { std::ptr::write_volatile(&mut bss.armed, 1) };
    } else {
        return Err(anyhow!("BPF object has no .bss to arm admission with"));
    }
    Ok(a)
}

/// One link for all; if the kernel refuses the set (one symbol is not
/// traceable), halve it until the refusers are found.
fn attach_kmulti(a: &mut Attached, funcs: &[&Target]) {
    fn go(a: &mut Attached<'_>, funcs: &[&Target]) {
        if funcs.is_empty() {
            return;
        }
        let prog = find_prog(&mut a.core, "brq_kmulti").expect("kprobe.multi program");
        let opts = KprobeMultiOpts {
            symbols: funcs.iter().map(|t| t.site.name.clone()).collect(),
            cookies: funcs.iter().map(|t| t.id as u64).collect(),
            retprobe: false,
            ..Default::default()
        };
        match prog.attach_kprobe_multi_with_opts(opts) {
            Ok(l) => {
                a.links.push(l);
                a.funcs_attached += funcs.len();
            }
            Err(e) if funcs.len() == 1 => a.refused.push((funcs[0].label(), errno_text(&e))),
            Err(_) => {
                let (l, r) = funcs.split_at(funcs.len() / 2);
                go(a, l);
                go(a, r);
            }
        }
    }
    go(a, funcs)
}

/// Without attach cookies the kprobe program finds its target by address.
fn fill_kprobe_ids(core: &mut BlkreqSkel<'_>, funcs: &[&Target]) -> Result<()> {
    use libbpf_rs::MapCore;
    // The address a kprobe on a name lands on: the kernel's own lookup by
    // name finds the first text symbol of that name.
    let k = kdiag_shared::ksyms::require()?;
    for t in funcs {
        if let Some(a) = k.function(&t.site.name).map(|f| f.addr) {
            core.maps
                .kprobe_ids
                .update(&a.to_ne_bytes(), &t.id.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
                .with_context(|| format!("kprobe id of {}", t.site.name))?;
        }
    }
    Ok(())
}

/// Single kprobes: each registration is its own syscall and text patch,
/// so spread them over a few threads.
fn attach_kprobes(a: &mut Attached, funcs: &[&Target], cookies: bool) {
    let prog = find_prog(&mut a.core, "brq_kprobe").expect("kprobe program");
    let ptr = prog.as_libbpf_object().as_ptr() as usize;
    let jobs: Vec<(String, String, u64)> =
        // libbpf refuses any cookie where the kernel has none (before 5.15).
        funcs.iter().map(|t| (t.label(), t.site.name.clone(), if cookies { t.id as u64 } else { 0 })).collect();
    let per = jobs.len().div_ceil(8).max(1);
    let results: Vec<(String, Result<Link, String>)> = {
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(per)
                .map(|batch| {
                    s.spawn(move || {
                        batch
                            .iter()
                            .map(|(label, name, cookie)| (label.clone(), attach_one_kprobe(ptr, name, *cookie)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    };
    for (label, r) in results {
        match r {
            Ok(l) => {
                a.links.push(l);
                a.funcs_attached += 1;
            }
            Err(e) => a.refused.push((label, e)),
        }
    }
}

fn attach_one_kprobe(prog: usize, func: &str, cookie: u64) -> Result<Link, String> {
    let name = std::ffi::CString::new(func).map_err(|_| "bad name".to_string())?;
    let opts = libbpf_rs::libbpf_sys::bpf_kprobe_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_kprobe_opts>() as _,
        bpf_cookie: cookie,
        retprobe: false,
        ..Default::default()
    };
    // SAFETY: prog points to a loaded program that outlives this call (the
    // caller's scope joins all threads); libbpf only reads it here.
    let link = unsafe {
        libbpf_rs::libbpf_sys::bpf_program__attach_kprobe_opts(
            prog as *const libbpf_rs::libbpf_sys::bpf_program,
            name.as_ptr(),
            &opts,
        )
    };
    let err = unsafe { libbpf_rs::libbpf_sys::libbpf_get_error(link as *const _) };
    match std::ptr::NonNull::new(link) {
        Some(p) if err == 0 => Ok(unsafe { Link::from_ptr(p) }),
        _ => Err(Errno((-err) as i32).to_string()),
    }
}

/// fentry programs are bound to their function at load, and one refusal
/// fails a whole object's load: load them in objects of their own that
/// share the core's maps, halving a group that fails.
fn attach_fentry<'s>(
    a: &mut Attached<'s>,
    storage: &'s Storage,
    cfg: &Config,
    res: &Resolved,
    funcs: &[&Target],
) -> Result<()> {
    let mut groups: Vec<Vec<&Target>> = vec![funcs.to_vec()];
    while let Some(g) = groups.pop() {
        if g.is_empty() {
            continue;
        }
        match load_fentry_group(storage, &a.core, cfg, res, &g) {
            Ok(mut skel) => {
                for t in &g {
                    let name = format!("brq_fe_{}", t.id);
                    let prog = find_prog(&mut skel, &name).context("fentry slot")?;
                    // A refusal is expected (and named in the banner's
                    // count); libbpf's own line for it is noise at 3 a.m.
                    match prog.attach_trace() {
                        Ok(l) => {
                            a.links.push(l);
                            a.funcs_attached += 1;
                        }
                        Err(e) => a.refused.push((t.label(), errno_text(&e))),
                    }
                }
                a.fentry.push(skel);
            }
            Err(e) if g.len() == 1 => a.refused.push((g[0].label(), format!("{} at load", errno_text(&e)))),
            Err(_) => {
                let (l, r) = g.split_at(g.len() / 2);
                groups.push(l.to_vec());
                groups.push(r.to_vec());
            }
        }
    }
    Ok(())
}

fn load_fentry_group<'s>(
    storage: &'s Storage,
    core: &BlkreqSkel<'_>,
    cfg: &Config,
    res: &Resolved,
    group: &[&Target],
) -> Result<BlkreqSkel<'s>, libbpf_rs::Error> {
    let mut open = open_skel(storage).map_err(|e| libbpf_rs::Error::from(std::io::Error::other(e.to_string())))?;
    configure(&mut open, cfg, res).map_err(|e| libbpf_rs::Error::from(std::io::Error::other(e.to_string())))?;
    let m = &mut open.maps;
    m.tracked.reuse_fd(core.maps.tracked.as_fd())?;
    m.sessions.reuse_fd(core.maps.sessions.as_fd())?;
    m.live.reuse_fd(core.maps.live.as_fd())?;
    m.claims.reuse_fd(core.maps.claims.as_fd())?;
    m.stats.reuse_fd(core.maps.stats.as_fd())?;
    m.scratch.reuse_fd(core.maps.scratch.as_fd())?;
    m.depth.reuse_fd(core.maps.depth.as_fd())?;
    m.new_bios.reuse_fd(core.maps.new_bios.as_fd())?;
    m.bss.reuse_fd(core.maps.bss.as_fd())?;
    if cfg.transport == Transport::RingBuf {
        m.events_ring.reuse_fd(core.maps.events_ring.as_fd())?;
    } else {
        m.events_perf.reuse_fd(core.maps.events_perf.as_fd())?;
    }
    for t in group {
        set_prog(&mut open, &format!("brq_fe_{}", t.id), Some(&t.site.name))
            .map_err(|e| libbpf_rs::Error::from(std::io::Error::other(e.to_string())))?;
    }
    open.load()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btfscan::Site;

    fn resolved() -> Resolved {
        let f = |name: &str, positions: Vec<u8>| Site { name: name.into(), kind: Kind::Function, positions };
        let t = |name: &str| Site { name: name.into(), kind: Kind::Tracepoint, positions: vec![0] };
        let sites = vec![
            f("blk_mq_start_request", vec![0]),
            f("attempt_merge", vec![1, 2]),
            f("blk_mq_free_request", vec![0]),
            t("block_io_start"),
            t("block_rq_complete"),
        ];
        crate::targets::resolve(&sites, &[], &[], None).unwrap()
    }

    #[test]
    fn the_ring_grows_with_the_count() {
        assert_eq!(ring_bytes(8), 256 << 10);
        assert!(ring_bytes(512) > 256 << 10);
        assert_eq!(ring_bytes(65536), 4 << 20);
        assert!(ring_bytes(300).is_power_of_two());
    }

    /// The function rungs cannot attach on the host (no kprobes), but
    /// their programs must pass this kernel's verifier exactly as a guest
    /// would load them, with both transports and every filter on.
    #[test]
    fn kprobe_programs_pass_the_verifier() {
        kdiag_testkit::needs_root("loads BPF programs");
        for transport in [Transport::RingBuf, Transport::PerfBuf] {
            let cfg = Config {
                count: 4,
                post_end: Duration::from_millis(10),
                dev: crate::filters::kernel_dev(7, 0),
                tgid: 1,
                comm: Some(crate::filters::comm_bytes("dd")),
                op: Some(1),
                transport,
                bio_births: true,
                getrq_bio: 0,
                have_cookies: transport == Transport::RingBuf,
            };
            let res = resolved();
            let storage = Storage::new();
            let mut open = open_skel(&storage).unwrap();
            configure(&mut open, &cfg, &res).unwrap();
            for name in ["brq_kmulti", "brq_kprobe", "brq_tb_0", "brq_rt_1", "brq_getrq_tb", "brq_getrq_rt"] {
                let target = (name == "brq_tb_0").then_some("block_io_start");
                set_prog(&mut open, name, target).unwrap();
            }
            let skel = open.load().unwrap_or_else(|e| panic!("{transport:?}: {e:#}"));
            // Slots for tracepoints and functions, kprobe.multi, kprobe and
            // the two block_getrq programs.
            assert_eq!(skel.object().progs().count(), 2 * crate::targets::TP_SLOTS + FUNC_SLOTS + 4);
        }
    }

    /// Forced onto fentry: on the host every function is refused at load,
    /// and the per-function path turns that into a named refusal each,
    /// not an error; where fentry works, each function is attached or named.
    #[test]
    fn fentry_functions_attach_or_are_named() {
        kdiag_testkit::needs_root("loads BPF programs");
        let fentry_works = probe::kernel_supports(Mechanism::Fentry).is_ok();
        let cfg = Config {
            count: 2,
            post_end: Duration::from_millis(10),
            dev: 0,
            tgid: 0,
            comm: None,
            op: None,
            transport: Transport::RingBuf,
            bio_births: false,
            getrq_bio: 0,
            have_cookies: true,
        };
        let res = resolved();
        let plan = Plan {
            funcs: Some(Mechanism::Fentry),
            funcs_choice: Err("test".into()),
            tps: Choice { mechanism: Mechanism::RawTp, forced: true, passed_over: vec![] },
        };
        let storage = Storage::new();
        let a = load_and_attach(&storage, &plan, &cfg, &res).unwrap();
        assert_eq!(a.tps_attached, 2);
        if fentry_works {
            assert_eq!(a.funcs_attached + a.refused.len(), 3, "{:?}", a.refused);
            assert!(a.funcs_attached > 0, "{:?}", a.refused);
            return;
        }
        assert_eq!(a.funcs_attached, 0);
        let refused: Vec<&str> = a.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused.len(), 3, "{:?}", a.refused);
        for name in ["blk_mq_start_request", "attempt_merge", "blk_mq_free_request"] {
            assert!(refused.contains(&name), "{:?}", a.refused);
        }
        assert!(a.refused.iter().all(|(_, why)| why == "EPERM at load"), "{:?}", a.refused);
    }
}

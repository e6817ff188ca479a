//! The BPF rungs: one object per attempt, its programs chosen for the
//! rung, attached to the target; at the end, the counts read back as
//! entries. A failed rung's object is dropped at once; its storage slot
//! stays with the run's [`Storage`] until the end.

use crate::bpf::types::{fs_key, fs_ret_key, fs_stats};
use crate::bpf::{FuncstackSkel, FuncstackSkelBuilder};
use crate::cli::Cli;
use crate::report::{self, Entry, RetEntry, RetValue, Summary};
use crate::target::{Kernel, Resolved};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::links::Links;
use kdiag_shared::maps::{self, c_string};
use kdiag_shared::skel::Storage;
use kdiag_shared::stacks::{Stack, Stacks};
use kdiag_shared::Errno;
use libbpf_rs::skel::OpenSkel;
use libbpf_rs::{KprobeMultiOpts, Link, TracepointCategory};

/// Attaching kprobes one at a time: beyond this, ask for a narrower glob.
const MAX_SINGLE_KPROBES: usize = 1000;

kdiag_shared::plain_data!(fs_key, fs_ret_key, fs_stats);

pub struct BpfRun<'s> {
    pub skel: FuncstackSkel<'s>,
    links: Links,
    /// Functions that would not take a probe, with why (glob, kprobe).
    pub skipped: Vec<(String, String)>,
    want_ip: bool,
}

/// Kernels before 5.15 lack bpf_get_func_ip; kprobes then read the address.
fn have_func_ip() -> bool {
    kdiag_shared::btf::vmlinux().is_ok_and(|b| kdiag_shared::probe::has_helper(&b, "BPF_FUNC_get_func_ip"))
}

fn describe(err: &libbpf_rs::Error, stage: &str) -> String {
    match Errno::of_libbpf(err) {
        Some(e) => format!("{e} at {stage}"),
        None => format!("{stage} failed: {err}"),
    }
}

/// Load the programs `m` needs and attach them to the target. Any failure
/// is this rung's, and the ladder moves on.
pub fn start<'s>(
    storage: &'s Storage,
    m: Mechanism,
    target: &Resolved,
    cli: &Cli,
    nr_args: Option<u32>,
) -> Result<BpfRun<'s>, String> {
    let functions = target.functions();
    let want_ip = functions.len() > 1;
    let have_func_ip = have_func_ip();
    if want_ip && cli.ret && !have_func_ip {
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
    let mut open =
        kdiag_shared::skel::open(FuncstackSkelBuilder::default(), storage.slot()).map_err(|e| format!("{e:#}"))?;
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
    let (links, skipped) = attach(&skel, m, target, cli.ret)?;
    Ok(BpfRun { skel, links, skipped, want_ip })
}

fn attach(
    skel: &FuncstackSkel<'_>,
    m: Mechanism,
    target: &Resolved,
    ret: bool,
) -> Result<(Links, Vec<(String, String)>), String> {
    let functions = target.functions();
    let mut links = Links::new();
    let mut skipped = Vec::new();
    let progs = &skel.progs;
    let at = |r: libbpf_rs::Result<Link>| r.map_err(|e| describe(&e, "attach"));
    match (m, target) {
        (Mechanism::Tracepoint, Resolved::Tracepoint { group, name }) => {
            links.push(at(progs.fs_tp.attach_tracepoint(TracepointCategory::Custom(group.clone()), name))?);
        }
        (Mechanism::Fentry, _) => {
            if ret {
                links.push(at(progs.fs_fexit.attach_trace())?);
            }
            links.push(at(progs.fs_fentry.attach_trace())?);
        }
        (Mechanism::KprobeMulti, _) => {
            let opts = |retprobe| KprobeMultiOpts { symbols: functions.to_vec(), retprobe, ..Default::default() };
            if ret {
                links.push(at(progs.fs_kretmulti.attach_kprobe_multi_with_opts(opts(true)))?);
            }
            links.push(at(progs.fs_kmulti.attach_kprobe_multi_with_opts(opts(false)))?);
        }
        (Mechanism::Kprobe, _) => {
            let mut first_err = None;
            for f in functions {
                let res = (|| -> Result<Vec<Link>, libbpf_rs::Error> {
                    let mut l = Vec::new();
                    if ret {
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
    Ok((links, skipped))
}

impl BpfRun<'_> {
    /// Every key's user stack, for naming them while their processes live.
    pub fn user_stacks(&self) -> Vec<(u32, i32)> {
        maps::keys::<fs_key>(&self.skel.maps.counts).into_iter().map(|k| (k.tgid, k.ustack)).collect()
    }

    pub fn detach(&mut self) {
        self.links.detach();
    }

    /// The counts as entries, the return values, and the summary's counts.
    pub fn collect(
        &self,
        stacks: &mut Stacks,
        label: &str,
        kernel: Option<&Kernel>,
    ) -> anyhow::Result<(Vec<Entry>, Vec<RetEntry>, Summary)> {
        let name_of = |ip: u64| -> String {
            if !self.want_ip {
                return label.to_string();
            }
            kernel.and_then(|k| k.function_at(ip)).map(String::from).unwrap_or_else(|| format!("{ip:#x}"))
        };
        let maps = &self.skel.maps;
        let mut entries = Vec::new();
        for (k, per_cpu) in maps::percpu_entries::<fs_key, u64>(&maps.counts)? {
            let target = name_of(k.ip);
            let kernel_stack = match stacks.kernel(k.kstack) {
                Stack::Frames(f) => Stack::Frames(report::trim(f, &target)),
                other => other,
            };
            entries.push(Entry {
                kind: "stack",
                target,
                comm: c_string(&k.comm),
                pid: k.tgid,
                tid: k.pid,
                cpus: per_cpu.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, _)| c as u32).collect(),
                count: per_cpu.iter().sum(),
                kernel_stack,
                user_stack: stacks.user(k.tgid, k.ustack),
            });
        }
        let rets = maps::entries::<fs_ret_key, u64>(&maps.rets)?
            .into_iter()
            .map(|(k, n)| {
                let value = if k.bucket == 1 { RetValue::Range(k.val as u32) } else { RetValue::Exact(k.val) };
                RetEntry::new(name_of(k.ip), value, n)
            })
            .collect();
        let s: fs_stats = maps::sum_counters(&maps.stats)?;
        let summary = Summary {
            hits: s.hits,
            filtered: s.filtered,
            stack_failures: kdiag_shared::stack_failures!(s),
            keys_dropped: s.keys_dropped,
            rets_dropped: s.rets_dropped,
            ..Default::default()
        };
        Ok((entries, rets, summary))
    }
}

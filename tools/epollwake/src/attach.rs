//! What epollwake attaches on each backend. fentry and kprobe hook
//! ep_poll_callback and read the epitem (file and fd); the tracepoint
//! backends (tp_btf, raw_tp), for kernels without either, tie sockets from
//! sock tracepoints to wake-ups by return addresses in the waker's stack.
//! Herds are grouped by the socket callback call (sock_def_readable,
//! sock_def_wakeup) where the kernel has those as functions of their own.
//! Syscalls, scheduler and softirq events are raw tracepoints on every
//! backend.

use crate::bpf::{EpollwakeProgs, OpenEpollwakeProgs};
use crate::uprobe;
use anyhow::{anyhow, Context, Result};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::ksyms::{self, Range};
use kdiag_shared::links::Links;
use kdiag_shared::{rawtp, Errno};
use libbpf_rs::{MapCore, MapFlags, UprobeOpts};
use std::path::Path;
use std::thread::JoinHandle;

/// The tracepoint rungs: sockets from the sock tracepoints, as tp_btf
/// where the kernel types its tracepoints, raw_tp elsewhere.
pub const LADDER: [Mechanism; 4] = [Mechanism::Fentry, Mechanism::Kprobe, Mechanism::TpBtf, Mechanism::RawTp];
/// The functions whose ranges the tracepoint rungs look for in a waker's
/// stack, in the order of `enum ew_ksym`; the epitem rungs hook the last
/// two where they are functions of their own.
pub const KSYMS: [&str; 3] = ["ep_poll_callback", "sock_def_readable", "sock_def_wakeup"];
/// What is looked up: KSYMS, then the helper of 5.16's "x86/unwind: Recover
/// kretprobe trampoline entry", whose presence says the unwinder sees
/// through kretprobes.
const LOOKUP: [&str; 4] = [KSYMS[0], KSYMS[1], KSYMS[2], "kretprobe_find_ret_addr"];
const KRETPROBE_UNWINDER: usize = 3;

/// KSYMS' ranges, looked up on a thread of their own from the start of
/// the run: kallsyms takes the kernel tens of milliseconds to list, time
/// that the probes and the load overlap.
pub fn lookup_ksyms() -> JoinHandle<Result<Vec<Option<Range>>>> {
    std::thread::spawn(|| ksyms::function_ranges(&LOOKUP))
}

fn joined(lookup: JoinHandle<Result<Vec<Option<Range>>>>) -> Result<Vec<Option<Range>>> {
    lookup.join().map_err(|_| anyhow!("the kallsyms reader panicked"))?
}

/// What this kernel offers the chosen backend.
pub struct Plan {
    pub mech: Mechanism,
    /// How the tracepoints run: tp_btf or raw_tp.
    pub tracepoints: Mechanism,
    /// fentry or kprobe: the epitem names the file and fd.
    pub epitem: bool,
    pub readable_cb: bool,
    pub wakeup_cb: bool,
    /// kprobe rung on a kernel whose unwinder cannot see through a
    /// kretprobe: no kretprobe on ep_poll_callback, and its slot believed
    /// only for wake-ups whose stack passes through it.
    pub by_stack: bool,
    pub data_ready: bool,
    pub pwait2: bool,
    /// The tracepoint rungs' KSYMS ranges, still being read.
    lookup: Option<JoinHandle<Result<Vec<Option<Range>>>>>,
    /// The ranges already read, where the epitem rung needs them.
    ranges: Option<Vec<Option<Range>>>,
    /// What is missing, for the banner.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn new(mech: Mechanism, tracefs: &Path, lookup: JoinHandle<Result<Vec<Option<Range>>>>) -> Plan {
        let epitem = matches!(mech, Mechanism::Fentry | Mechanism::Kprobe);
        let mut plan = Plan {
            mech,
            tracepoints: rawtp::flavour_beside(mech),
            epitem,
            readable_cb: false,
            wakeup_cb: false,
            by_stack: false,
            data_ready: tracefs.join("events/sock/sk_data_ready").is_dir(),
            pwait2: tracefs.join("events/syscalls/sys_enter_epoll_pwait2").is_dir(),
            lookup: None,
            ranges: None,
            notes: vec![],
        };
        if !epitem {
            plan.lookup = Some(lookup);
            if !plan.data_ready {
                plan.notes.push("this kernel has no sock:sk_data_ready tracepoint (added in 6.3)".into());
            }
            return plan;
        }
        let found = joined(lookup).unwrap_or_default();
        let known = |i: usize| found.get(i).is_some_and(Option::is_some);
        plan.readable_cb = known(1);
        plan.wakeup_cb = known(2);
        // Before 5.16 (no kretprobe_find_ret_addr), a stack taken inside a
        // kretprobed function loses every frame above it: a kretprobe on
        // ep_poll_callback would hide which socket callback called it.
        plan.by_stack = mech == Mechanism::Kprobe && !known(KRETPROBE_UNWINDER);
        if plan.by_stack {
            plan.ranges = Some(found);
        }
        for (found, name) in [(plan.readable_cb, KSYMS[1]), (plan.wakeup_cb, KSYMS[2])] {
            if !found {
                plan.notes.push(format!("{name} is not in /proc/kallsyms: its herds are grouped by timing"));
            }
        }
        plan
    }

    /// The tracepoint rungs, and the kprobe rung that goes by stack: give
    /// the loaded programs KSYMS' ranges, before anything is attached.
    pub fn fill_ranges(&mut self, map: &libbpf_rs::Map<'_>) -> Result<()> {
        let found = match (self.lookup.take(), self.ranges.take()) {
            (Some(lookup), _) => joined(lookup),
            (None, Some(found)) => Ok(found),
            (None, None) => return Ok(()),
        };
        let mut ranges = crate::bpf::types::ew_ksym_ranges::default();
        match found {
            Ok(found) => {
                for (i, name) in KSYMS.iter().enumerate() {
                    match found.get(i).copied().flatten() {
                        Some((start, end)) => ranges.r[i] = [start, end],
                        None if !self.epitem => self.notes.push(format!("{name} is not in /proc/kallsyms")),
                        None => {}
                    }
                }
            }
            Err(e) => self.notes.push(e.to_string()),
        }
        map.update(&0u32.to_ne_bytes(), kdiag_shared::maps::bytes_of(&ranges), MapFlags::ANY)
            .context("giving the programs the callbacks' addresses")
    }

    /// How wake-ups are tied to sockets, for the banner.
    pub fn how(&self) -> String {
        let notes = self.notes.join("; ");
        match (self.epitem, self.notes.is_empty()) {
            (true, true) => "ep_poll_callback's epitem names the file and fd".to_string(),
            (true, false) => format!("ep_poll_callback's epitem names the file and fd ({notes})"),
            (false, true) => "sockets from sock:sk_data_ready and sock:inet_sock_set_state, tied to wake-ups \
                              through ep_poll_callback in the waker's stack"
                .to_string(),
            (false, false) => format!("sockets cannot be identified ({notes}); wake-ups are still reported"),
        }
    }

    /// Load only what this plan uses, the tracepoints as tp_btf or raw_tp.
    pub fn select(&self, p: &mut OpenEpollwakeProgs<'_>, uprobes: bool) -> Result<()> {
        let fentry = self.mech == Mechanism::Fentry;
        let kprobe = self.mech == Mechanism::Kprobe;
        for (prog, on) in [
            (&mut p.ew_fentry_epcb, fentry),
            (&mut p.ew_fexit_epcb, fentry),
            (&mut p.ew_kprobe_epcb, kprobe),
            (&mut p.ew_kretprobe_epcb, kprobe && !self.by_stack),
            (&mut p.ew_fentry_readable, fentry && self.readable_cb),
            (&mut p.ew_fexit_readable, fentry && self.readable_cb),
            (&mut p.ew_fentry_wakeup, fentry && self.wakeup_cb),
            (&mut p.ew_fexit_wakeup, fentry && self.wakeup_cb),
            (&mut p.ew_kprobe_readable, kprobe && self.readable_cb),
            (&mut p.ew_kretprobe_readable, kprobe && self.readable_cb),
            (&mut p.ew_kprobe_wakeup, kprobe && self.wakeup_cb),
            (&mut p.ew_kretprobe_wakeup, kprobe && self.wakeup_cb),
            (&mut p.ew_data_ready, !self.epitem && self.data_ready),
            (&mut p.ew_set_state, !self.epitem),
            (&mut p.ew_uprobe, uprobes),
        ] {
            prog.set_autoload(on);
        }
        for prog in [
            &mut p.ew_sys_enter,
            &mut p.ew_sys_exit,
            &mut p.ew_waking,
            &mut p.ew_switch,
            &mut p.ew_softirq_entry,
            &mut p.ew_softirq_exit,
            &mut p.ew_data_ready,
            &mut p.ew_set_state,
        ] {
            if prog.autoload() {
                rawtp::set_flavour(prog, self.tracepoints)?;
            }
        }
        Ok(())
    }
}

fn libbpf_err(e: &libbpf_rs::Error) -> String {
    Errno::of_libbpf(e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
}

/// Everything attached; dropping it detaches.
pub struct Attached {
    _links: Links,
    /// The functions the uprobes are on, by cookie.
    pub uprobe_names: Vec<String>,
}

/// Attach every loaded program, then the uprobes of `--uprobe`.
pub fn attach(
    p: &EpollwakeProgs<'_>,
    pid: u32,
    uprobes: Option<&(std::path::PathBuf, Vec<uprobe::Target>)>,
) -> Result<Attached> {
    let mut links = Links::new();
    // Softirq context before what depends on it, the syscalls before the
    // wake-ups they are the context of.
    let all = [
        &p.ew_softirq_entry,
        &p.ew_softirq_exit,
        &p.ew_sys_enter,
        &p.ew_sys_exit,
        &p.ew_data_ready,
        &p.ew_set_state,
        &p.ew_fentry_epcb,
        &p.ew_fexit_epcb,
        &p.ew_kprobe_epcb,
        &p.ew_kretprobe_epcb,
        &p.ew_fentry_readable,
        &p.ew_fexit_readable,
        &p.ew_fentry_wakeup,
        &p.ew_fexit_wakeup,
        &p.ew_kprobe_readable,
        &p.ew_kretprobe_readable,
        &p.ew_kprobe_wakeup,
        &p.ew_kretprobe_wakeup,
        &p.ew_waking,
        &p.ew_switch,
    ];
    for prog in all.into_iter().filter(|p| p.autoload()) {
        let name = prog.name().to_string_lossy().into_owned();
        links.push(rawtp::attach(prog).map_err(|e| anyhow!("attaching {name}: {}", libbpf_err(&e)))?);
    }
    let mut uprobe_names = Vec::new();
    if let Some((path, found)) = uprobes {
        for (i, t) in found.iter().enumerate() {
            let opts = UprobeOpts { cookie: i as u64, ..Default::default() };
            let link = p
                .ew_uprobe
                .attach_uprobe_with_opts(pid as i32, path, t.file_offset as usize, opts)
                .map_err(|e| anyhow!("--uprobe: attaching to {} in {}: {}", t.name, path.display(), libbpf_err(&e)))?;
            links.push(link);
            uprobe_names.push(t.name.clone());
        }
    }
    Ok(Attached { _links: links, uprobe_names })
}

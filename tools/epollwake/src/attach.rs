//! What epollwake attaches on each backend. fentry and kprobe hook
//! ep_poll_callback and read the epitem (file and fd); the tracepoint
//! backend, for kernels without either, ties sockets from sock tracepoints
//! to wake-ups by return addresses in the waker's stack. Herds are grouped
//! by the socket callback call (sock_def_readable, sock_def_wakeup) where
//! the kernel has those as functions of their own.

use crate::bpf::{EpollwakeProgs, OpenEpollwakeProgs};
use crate::uprobe;
use anyhow::{anyhow, Result};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::links::Links;
use kdiag_shared::{ksyms, Errno};
use libbpf_rs::UprobeOpts;
use std::path::Path;

pub const LADDER: [Mechanism; 3] = [Mechanism::Fentry, Mechanism::Kprobe, Mechanism::Tracepoint];
/// The functions whose ranges the tracepoint backend looks for in a
/// waker's stack, in the order of `enum ew_ksym`.
pub const KSYMS: [&str; 3] = ["ep_poll_callback", "sock_def_readable", "sock_def_wakeup"];

/// What this kernel offers the chosen backend.
pub struct Plan {
    pub mech: Mechanism,
    /// fentry or kprobe: the epitem names the file and fd.
    pub epitem: bool,
    pub readable_cb: bool,
    pub wakeup_cb: bool,
    /// kprobe rung on a kernel whose unwinder cannot see through a
    /// kretprobe: no kretprobe on ep_poll_callback, and its slot believed
    /// only for wake-ups whose stack passes through it (`ranges[0]`).
    pub by_stack: bool,
    pub data_ready: bool,
    pub pwait2: bool,
    /// `[start, end)` of each of KSYMS, for the tracepoint backend.
    pub ranges: [[u64; 2]; 3],
    /// What is missing, for the banner.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn new(mech: Mechanism, tracefs: &Path) -> Plan {
        let epitem = mech != Mechanism::Tracepoint;
        let mut plan = Plan {
            mech,
            epitem,
            readable_cb: false,
            wakeup_cb: false,
            by_stack: false,
            data_ready: tracefs.join("events/sock/sk_data_ready").is_dir(),
            pwait2: tracefs.join("events/syscalls/sys_enter_epoll_pwait2").is_dir(),
            ranges: [[0; 2]; 3],
            notes: vec![],
        };
        if epitem {
            let k = ksyms::get();
            plan.readable_cb = k.function(KSYMS[1]).is_some();
            plan.wakeup_cb = k.function(KSYMS[2]).is_some();
            plan.by_stack = mech == Mechanism::Kprobe && !unwinds_through_kretprobes(k);
            if let Some(f) = k.function(KSYMS[0]).filter(|_| plan.by_stack) {
                plan.ranges[0] = [f.addr, f.end];
            }
            for (found, name) in [(plan.readable_cb, KSYMS[1]), (plan.wakeup_cb, KSYMS[2])] {
                if !found {
                    plan.notes.push(format!("{name} is not in /proc/kallsyms: its herds are grouped by timing"));
                }
            }
            return plan;
        }
        match ksyms::require() {
            Ok(k) => {
                for (i, name) in KSYMS.iter().enumerate() {
                    match k.function(name) {
                        Some(f) => plan.ranges[i] = [f.addr, f.end],
                        None => plan.notes.push(format!("{name} is not in /proc/kallsyms")),
                    }
                }
            }
            Err(e) => plan.notes.push(e.to_string()),
        }
        if !plan.data_ready {
            plan.notes.push("this kernel has no sock:sk_data_ready tracepoint (added in 6.3)".into());
        }
        plan
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

    /// Load only what this plan uses.
    pub fn select(&self, p: &mut OpenEpollwakeProgs<'_>, uprobes: bool) {
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
            (&mut p.ew_enter_pwait2, self.pwait2),
            (&mut p.ew_exit_pwait2, self.pwait2),
            (&mut p.ew_uprobe, uprobes),
        ] {
            prog.set_autoload(on);
        }
    }
}

/// Can the kernel's unwinder see through a kretprobe (5.16: "x86/unwind:
/// Recover kretprobe trampoline entry", whose helper is
/// kretprobe_find_ret_addr)? Before, a stack taken inside a kretprobed
/// function loses every frame above it: a kretprobe on ep_poll_callback
/// would hide which socket callback called it.
fn unwinds_through_kretprobes(k: &kdiag_shared::ksyms::KernelSymbols) -> bool {
    k.function("kretprobe_find_ret_addr").is_some()
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
    let all = [
        &p.ew_enter_wait,
        &p.ew_enter_pwait,
        &p.ew_enter_pwait2,
        &p.ew_exit_wait,
        &p.ew_exit_pwait,
        &p.ew_exit_pwait2,
        &p.ew_data_ready,
        &p.ew_set_state,
        &p.ew_fentry_epcb,
        &p.ew_fexit_epcb,
        &p.ew_kprobe_epcb,
        &p.ew_kretprobe_epcb,
        &p.ew_waking,
        &p.ew_switch,
        &p.ew_enter_accept,
        &p.ew_enter_accept4,
        &p.ew_exit_accept,
        &p.ew_exit_accept4,
        &p.ew_enter_close,
        &p.ew_enter_ctl,
        &p.ew_exit_ctl,
        &p.ew_softirq_entry,
        &p.ew_softirq_exit,
        &p.ew_fentry_readable,
        &p.ew_fexit_readable,
        &p.ew_fentry_wakeup,
        &p.ew_fexit_wakeup,
        &p.ew_kprobe_readable,
        &p.ew_kretprobe_readable,
        &p.ew_kprobe_wakeup,
        &p.ew_kretprobe_wakeup,
    ];
    for prog in all.into_iter().filter(|p| p.autoload()) {
        let name = prog.name().to_string_lossy().into_owned();
        links.push(prog.attach().map_err(|e| anyhow!("attaching {name}: {}", libbpf_err(&e)))?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_shared::ksyms::KernelSymbols;

    #[test]
    fn kretprobe_unwinding_by_symbol() {
        let k = |t: &str| KernelSymbols::parse(std::io::Cursor::new(t.to_string()), "");
        assert!(unwinds_through_kretprobes(&k("ffffffff81100000 T kretprobe_find_ret_addr\n")));
        assert!(!unwinds_through_kretprobes(&k("ffffffff81100000 T kretprobe_trampoline\n")));
    }
}

//! Which programs run on which backend, and attaching them: the switch and
//! wakeup hooks of the chosen rung, and the interrupt-context trackers
//! that let a wakeup from an interrupt be named as such.

use crate::bpf::{OffwaketimeProgs, OpenOffwaketimeProgs};
use anyhow::{anyhow, Result};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::links::Links;
use kdiag_shared::Errno;
use libbpf_rs::{ProgramMut, TracepointCategory};

/// Interrupt context comes from raw tracepoints with the BTF rungs, from
/// classic tracepoints otherwise.
fn raw_irq(m: Mechanism) -> bool {
    matches!(m, Mechanism::TpBtf | Mechanism::RawTp)
}

/// Load only what backend `m` uses.
pub fn select(p: &mut OpenOffwaketimeProgs<'_>, m: Mechanism) {
    let raw = raw_irq(m);
    for (prog, on) in [
        (&mut p.owt_switch_btf, m == Mechanism::TpBtf),
        (&mut p.owt_waking_btf, m == Mechanism::TpBtf),
        (&mut p.owt_switch_raw, m == Mechanism::RawTp),
        (&mut p.owt_waking_raw, m == Mechanism::RawTp),
        (&mut p.owt_switch_tp, m == Mechanism::Tracepoint),
        (&mut p.owt_waking_tp, m == Mechanism::Tracepoint),
        (&mut p.owt_switch_kprobe, m == Mechanism::Kprobe),
        (&mut p.owt_waking_kprobe, m == Mechanism::Kprobe),
        (&mut p.owt_hardirq_enter_raw, raw),
        (&mut p.owt_hardirq_exit_raw, raw),
        (&mut p.owt_softirq_enter_raw, raw),
        (&mut p.owt_softirq_exit_raw, raw),
        (&mut p.owt_hardirq_enter_tp, !raw),
        (&mut p.owt_hardirq_exit_tp, !raw),
        (&mut p.owt_softirq_enter_tp, !raw),
        (&mut p.owt_softirq_exit_tp, !raw),
    ] {
        prog.set_autoload(on);
    }
}

/// Everything attached; dropping it detaches.
pub struct Attached {
    _links: Links,
    /// Interrupt tracepoints this kernel lacks: wakeups from there are
    /// shown as the interrupted task's.
    pub irq_missing: Vec<String>,
}

/// Attach for backend `m`; `kprobe_symbol` is where the kprobe rung hooks
/// the switch (finish_task_switch or its compiler clone).
pub fn attach(progs: &OffwaketimeProgs<'_>, m: Mechanism, kprobe_symbol: Option<&str>) -> Result<Attached> {
    // Interrupt context first, so that the first wakeups from interrupts
    // are already named; exits before entries, so no entry goes unmatched.
    let (mut links, irq_missing) = attach_irq_context(progs, raw_irq(m));
    let (switch, waking) = match m {
        Mechanism::TpBtf => (&progs.owt_switch_btf, &progs.owt_waking_btf),
        Mechanism::RawTp => (&progs.owt_switch_raw, &progs.owt_waking_raw),
        Mechanism::Tracepoint => (&progs.owt_switch_tp, &progs.owt_waking_tp),
        _ => (&progs.owt_switch_kprobe, &progs.owt_waking_kprobe),
    };
    let err = |what: &str, e: libbpf_rs::Error| {
        let why = Errno::of_libbpf(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string());
        anyhow!("attaching to {what}: {why}")
    };
    if m == Mechanism::Kprobe {
        let sym = kprobe_symbol.unwrap_or("finish_task_switch");
        links.push(switch.attach_kprobe(false, sym).map_err(|e| err(sym, e))?);
        links.push(waking.attach().map_err(|e| err("try_to_wake_up", e))?);
    } else {
        // Wakeups before switches: a switch-in then finds its wakeup.
        links.push(waking.attach().map_err(|e| err("sched_waking", e))?);
        links.push(switch.attach().map_err(|e| err("sched_switch", e))?);
    }
    Ok(Attached { _links: links, irq_missing })
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
fn attach_irq_context(progs: &OffwaketimeProgs<'_>, raw: bool) -> (Links, Vec<String>) {
    let mut links = Links::new();
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
        let one = |prog: &ProgramMut, name: &str| {
            if raw {
                prog.attach_raw_tracepoint(name)
            } else {
                prog.attach_tracepoint(TracepointCategory::Custom(cat.to_string()), name)
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

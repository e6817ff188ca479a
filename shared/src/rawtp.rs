//! Raw tracepoints, written once as `SEC("raw_tp/NAME")` with their
//! arguments read through CO-RE, and run as tp_btf where the kernel types
//! its tracepoints in BTF (5.5+; the kernel then checks each program
//! against the tracepoint's prototype at load), as raw_tp elsewhere
//! (4.17+, or a kernel whose BTF comes from `--btf`: tp_btf needs the
//! kernel's own).
//!
//! Either way the program is attached by BPF_RAW_TRACEPOINT_OPEN: no perf
//! event is opened, and detaching waits for no RCU grace period. The last
//! close of a classic tracepoint's perf event does wait, in
//! `perf_trace_destroy` under the kernel's `event_mutex`
//! (`tracepoint_synchronize_unregister`: 40-50 ms each on this VM, one
//! tracepoint after another whatever the number of closing threads).

use crate::backend::Mechanism;
use anyhow::{anyhow, Result};
use libbpf_rs::{Link, OpenProgramMut, ProgramAttachType, ProgramMut, ProgramType};

/// Run `prog` (`SEC("raw_tp/NAME")`) as `flavour`: tp_btf or raw_tp.
pub fn set_flavour(prog: &mut OpenProgramMut<'_>, flavour: Mechanism) -> Result<()> {
    if flavour != Mechanism::TpBtf {
        return Ok(());
    }
    let section = prog.section().to_string_lossy().into_owned();
    let name = section
        .strip_prefix("raw_tp/")
        .ok_or_else(|| anyhow!("program {:?} is not SEC(\"raw_tp/NAME\")", prog.name()))?
        .to_string();
    prog.set_prog_type(ProgramType::Tracing);
    prog.set_attach_type(ProgramAttachType::TraceRawTp);
    prog.set_attach_target(0, Some(name.clone())).map_err(|e| anyhow!("tp_btf/{name}: {e}"))
}

/// Attach a program that [`set_flavour`] prepared. libbpf would attach a
/// raw_tp section by name, which the kernel refuses for tp_btf: its
/// tracepoint was named at load.
pub fn attach(prog: &ProgramMut<'_>) -> libbpf_rs::Result<Link> {
    if prog.prog_type() == ProgramType::Tracing {
        prog.attach_trace()
    } else {
        prog.attach()
    }
}

/// The flavour of the raw tracepoints a tool attaches beside its chosen
/// rung `m`: the BTF rungs say it already (fentry needs the kernel BTF and
/// the 5.5 kernel that tp_btf needs), the others ask the kernel.
pub fn flavour_beside(m: Mechanism) -> Mechanism {
    match m {
        Mechanism::TpBtf | Mechanism::Fentry => Mechanism::TpBtf,
        Mechanism::RawTp => Mechanism::RawTp,
        _ if crate::probe::kernel_supports(Mechanism::TpBtf).is_ok() => Mechanism::TpBtf,
        _ => Mechanism::RawTp,
    }
}

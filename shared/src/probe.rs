//! Kernel feature probing: does this kernel really load and attach a
//! program of a given kind? Answered by doing it, with a tiny program from
//! `bpf/probe.bpf.c`, and undoing it at once. BTF and kernel config only say
//! what was compiled in; the host kernel here has fentry in BTF and still
//! refuses it with EPERM.
//!
//! The BTF-typed kinds (fentry, tp_btf) are loaded as two instructions by
//! hand instead: from an object, libbpf would parse the kernel's BTF again
//! for each probe to find its attach point (5-15 ms each on this VM, before
//! the tool's own load parses it once more); here it is parsed once per
//! process, and only the ids are kept.

use crate::backend::{Mechanism, ProbeError};
use crate::cpus;
use crate::perf::{EventSpec, PerfEvent};
use crate::Errno;
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenProgramMut, ProgramMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/probe.skel.rs"));
}
use skel::{OpenProbeProgs, ProbeSkelBuilder};

fn describe(err: &libbpf_rs::Error, stage: &str) -> String {
    match Errno::of_libbpf(err) {
        Some(e) => format!("{e} at {stage}"),
        None => format!("{stage} failed: {err}"),
    }
}

fn wanted<'a, 'obj>(progs: &'a mut OpenProbeProgs<'obj>, m: Mechanism) -> &'a mut OpenProgramMut<'obj> {
    match m {
        Mechanism::KprobeMulti => &mut progs.kd_probe_kmulti,
        Mechanism::Kprobe => &mut progs.kd_probe_kprobe,
        Mechanism::RawTp => &mut progs.kd_probe_raw_tp,
        Mechanism::Tracepoint => &mut progs.kd_probe_tp,
        Mechanism::PerfHw | Mechanism::PerfSw => &mut progs.kd_probe_perf,
        Mechanism::Fentry | Mechanism::TpBtf => unreachable!("loaded without an object"),
        Mechanism::Ftrace => unreachable!("ftrace is probed through tracefs"),
    }
}

/// Load and attach the probe program for `m`, then release everything.
/// ftrace needs no program: its probe sets a function filter in a
/// throwaway trace instance.
pub fn kernel_supports(m: Mechanism) -> Result<(), ProbeError> {
    if m == Mechanism::Ftrace {
        let tracefs = crate::precheck::tracefs().map_err(ProbeError::Unavailable)?;
        return crate::ftrace::function_tracer_usable(&tracefs).map_err(ProbeError::Unavailable);
    }
    if matches!(m, Mechanism::Fentry | Mechanism::TpBtf) {
        return try_btf_typed(m);
    }
    // A refusal is an expected answer here: libbpf's account of it is
    // collected (libbpf_log), not printed, and the banner says it once.
    try_mechanism(m)
}

/// Does this kernel have the BPF helper `name` (e.g.
/// "BPF_FUNC_get_func_ip", 5.15)? Its `enum bpf_func_id` lists every helper
/// it was built with. A program may still carry a call to a missing helper
/// behind a read-only flag: the verifier drops branches it proves dead.
pub fn has_helper(btf: &libbpf_rs::btf::Btf<'_>, name: &str) -> bool {
    let Some(e) = btf.type_by_name::<libbpf_rs::btf::types::Enum<'_>>("bpf_func_id") else { return false };
    let found = e.iter().any(|m| m.name.and_then(|n| n.to_str()) == Some(name));
    found
}

/// The kernel BTF ids the BTF-typed probes attach to: the function
/// `vfs_read` (fentry) and the tracepoint `sched_switch` (tp_btf).
struct AttachIds {
    vfs_read: Option<u32>,
    sched_switch: Option<u32>,
}

fn attach_ids() -> &'static Result<AttachIds, String> {
    static IDS: OnceLock<Result<AttachIds, String>> = OnceLock::new();
    IDS.get_or_init(|| {
        use libbpf_rs::btf::{types, Btf};
        // The kernel's own BTF, as libbpf uses for attach points: a --btf
        // file serves CO-RE, never attaching.
        let btf = Btf::from_vmlinux().map_err(|e| format!("the kernel has no BTF of its own to attach by: {e}"))?;
        Ok(AttachIds {
            vfs_read: btf.type_by_name::<types::Func>("vfs_read").map(|t| t.type_id().into()),
            sched_switch: btf.type_by_name::<types::Typedef>("btf_trace_sched_switch").map(|t| t.type_id().into()),
        })
    })
}

/// Load `r0 = 0; exit` as a tracing program attached to BTF id `id`, and
/// attach it (BPF_RAW_TRACEPOINT_OPEN takes fentry and tp_btf alike).
fn try_btf_typed(m: Mechanism) -> Result<(), ProbeError> {
    let ids = attach_ids().as_ref().map_err(|e| ProbeError::Unavailable(e.clone()))?;
    let (attach_type, id, target) = match m {
        Mechanism::Fentry => (libbpf_sys::BPF_TRACE_FENTRY, ids.vfs_read, "vfs_read"),
        _ => (libbpf_sys::BPF_TRACE_RAW_TP, ids.sched_switch, "btf_trace_sched_switch"),
    };
    let id = id.ok_or_else(|| ProbeError::Unavailable(format!("{target} is not in the kernel's BTF")))?;
    let mov_r0_0 = libbpf_sys::bpf_insn { code: 0xb7, ..Default::default() };
    let exit = libbpf_sys::bpf_insn { code: 0x95, ..Default::default() };
    let insns = [mov_r0_0, exit];
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: attach_type,
        attach_btf_id: id,
        ..Default::default()
    };
    // SAFETY: the instructions and options outlive the call (libbpf writes
    // only the options' output fields); the names are
    // NUL-terminated literals.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_TRACING,
            c"kd_probe".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        )
    };
    if fd < 0 {
        return Err(ProbeError::Unavailable(format!("{} at load", Errno(-fd))));
    }
    // SAFETY: a new fd that nothing else owns.
    let _prog = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a NULL name is how tracing programs are attached.
    let link = unsafe { libbpf_sys::bpf_raw_tracepoint_open(std::ptr::null(), fd) };
    if link < 0 {
        return Err(ProbeError::Unavailable(format!("{} at attach", Errno(-link))));
    }
    // SAFETY: as above; closing it detaches.
    drop(unsafe { OwnedFd::from_raw_fd(link) });
    Ok(())
}

fn try_mechanism(m: Mechanism) -> Result<(), ProbeError> {
    let mut storage = MaybeUninit::uninit();
    let mut open = ProbeSkelBuilder::default()
        .open(&mut storage)
        .map_err(|e| ProbeError::Fatal(format!("cannot open the probe object: {e}")))?;
    for prog in open.open_object_mut().progs_mut() {
        let mut prog = prog;
        prog.set_autoload(false);
    }
    wanted(&mut open.progs, m).set_autoload(true);
    let skel = open.load().map_err(|e| ProbeError::Unavailable(describe(&e, "load")))?;
    let prog: &ProgramMut = match m {
        Mechanism::KprobeMulti => &skel.progs.kd_probe_kmulti,
        Mechanism::Kprobe => &skel.progs.kd_probe_kprobe,
        Mechanism::RawTp => &skel.progs.kd_probe_raw_tp,
        Mechanism::Tracepoint => &skel.progs.kd_probe_tp,
        Mechanism::PerfHw | Mechanism::PerfSw => &skel.progs.kd_probe_perf,
        Mechanism::Fentry | Mechanism::TpBtf => unreachable!("loaded without an object"),
        Mechanism::Ftrace => unreachable!("ftrace is probed through tracefs"),
    };
    match m {
        Mechanism::PerfHw | Mechanism::PerfSw => {
            let spec = if m == Mechanism::PerfHw {
                // A period this long never fires during the probe.
                EventSpec::HwCycles { period_cycles: 1 << 40 }
            } else {
                EventSpec::SwCpuClock { period_ns: 1 << 40 }
            };
            let cpu = cpus::online().ok().and_then(|c| c.first().copied()).unwrap_or(0);
            let ev = PerfEvent::open(spec, cpu)?;
            ev.attach_bpf(prog.as_fd().as_raw_fd())
                .map_err(|e| ProbeError::Unavailable(format!("{e} at PERF_EVENT_IOC_SET_BPF")))?;
        }
        _ => {
            let _link = prog.attach().map_err(|e| ProbeError::Unavailable(describe(&e, "attach")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts every kernel we run on shares: classic tracepoints and the
    /// software clock work (the host, Debian 6.1 and 6.12 all have them).
    #[test]
    fn tracepoint_and_software_clock_are_supported() {
        kdiag_testkit::needs_root("loads BPF programs");
        assert_eq!(kernel_supports(Mechanism::Tracepoint), Ok(()));
        assert_eq!(kernel_supports(Mechanism::PerfSw), Ok(()));
    }

    /// The host is 6.18: helpers of 5.15 are there, made-up ones are not.
    #[test]
    fn helpers_from_btf() {
        let btf = libbpf_rs::btf::Btf::from_vmlinux().unwrap();
        assert!(has_helper(&btf, "BPF_FUNC_get_func_ip"));
        assert!(has_helper(&btf, "BPF_FUNC_get_attach_cookie"));
        assert!(!has_helper(&btf, "BPF_FUNC_no_such_helper"));
    }

    /// Every kernel we run on with BTF of its own takes tp_btf (5.5+); and
    /// the fentry answer is a load or attach verdict, or a yes.
    #[test]
    fn btf_typed_probes_answer() {
        if std::path::Path::new(crate::btf::SYSFS_VMLINUX).exists() {
            assert_eq!(kernel_supports(Mechanism::TpBtf), Ok(()));
        }
        match kernel_supports(Mechanism::Fentry) {
            Ok(()) => {}
            Err(ProbeError::Unavailable(why)) => {
                assert!(why.ends_with(" at load") || why.ends_with(" at attach"), "{why}")
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    /// Cross-check against an independent witness: the kprobe PMU exists in
    /// sysfs exactly when the kernel can create kprobes (absent on the host).
    #[test]
    fn kprobe_answer_matches_the_kprobe_pmu() {
        kdiag_testkit::needs_root("loads BPF programs");
        let pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
        match kernel_supports(Mechanism::Kprobe) {
            Ok(()) => assert!(pmu, "kprobe attached without a kprobe PMU"),
            Err(ProbeError::Unavailable(why)) => {
                assert!(!pmu, "kprobe PMU present but probe failed: {why}");
                assert!(why.ends_with(" at attach"), "{why}");
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    /// The host lists the function tracer and refuses every filter write
    /// with EPERM: the probe must say so rather than claim it works. On a
    /// kernel whose instance takes the filter, the probe must agree.
    #[test]
    fn ftrace_answer_matches_a_filter_write() {
        kdiag_testkit::needs_root("makes a tracefs instance");
        let tracefs = crate::precheck::tracefs().unwrap();
        let inst = crate::ftrace::Instance::create(&tracefs, "probe-witness").unwrap();
        let witness = inst.write("set_ftrace_filter", "vfs_read");
        drop(inst);
        match (kernel_supports(Mechanism::Ftrace), witness) {
            (Ok(()), Ok(())) => {}
            (Err(ProbeError::Unavailable(why)), Err(w)) => {
                assert_eq!(why, w.to_string());
            }
            (got, w) => panic!("probe {got:?} but a filter write gave {w:?}"),
        }
    }
}

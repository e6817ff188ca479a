//! Steal time: whether this machine can say how much of a gap its
//! hypervisor took, and where the BPF side reads it. A KVM host keeps a
//! `struct kvm_steal_time` per vCPU (the per-CPU variable `steal_time`) and
//! adds to it the time the vCPU waited to run, at each entry into the guest.
//! The kernel's own accounting of it (/proc/stat) is only updated at ticks,
//! so it is stale inside a window: irqoff reads the host's struct itself.

use kdiag_shared::Errno;
use libbpf_rs::btf::types::{DataSec, Struct, Var};
use libbpf_rs::skel::OpenSkel;
use libbpf_rs::{MapCore, MapFlags, ProgramInput};
use std::mem::MaybeUninit;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/steal.skel.rs"));
}

/// How the BPF side finds each CPU's struct.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Through the typed per-CPU symbol: the address per possible CPU.
    Ksym(Vec<u64>),
    /// From each CPU's runqueue, plus this offset between the two per-CPU
    /// variables (BTF's `.data..percpu` section); `why` the symbol did not do.
    Runqueue { delta: i64, why: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Steal {
    /// No hypervisor: nothing to take out of a window.
    BareMetal,
    /// A VM whose steal time cannot be read here, and why.
    Unknown(String),
    /// The KVM steal clock.
    Known(Source),
}

impl Steal {
    /// Ask the CPU what it runs under, then find the steal clock.
    pub fn locate() -> Steal {
        match hypervisor() {
            Hypervisor::None => Steal::BareMetal,
            Hypervisor::Other(sig) => Steal::Unknown(format!("hypervisor '{sig}' offers no KVM steal clock")),
            Hypervisor::Kvm { steal: false } => Steal::Unknown("the KVM host offers no steal clock".into()),
            Hypervisor::Kvm { steal: true } => match by_ksym() {
                Ok(Some(addrs)) => Steal::Known(Source::Ksym(addrs)),
                Ok(None) => Steal::Unknown("this kernel has no steal_time variable (no KVM guest support)".into()),
                Err(why) => match by_runqueue() {
                    Ok(delta) => Steal::Known(Source::Runqueue { delta, why }),
                    Err(e) => Steal::Unknown(format!("{why}; {e}")),
                },
            },
        }
    }

    /// "known", "none" (bare metal) or "unknown", for the JSON summary.
    pub fn state(&self) -> &'static str {
        match self {
            Steal::Known(_) => "known",
            Steal::BareMetal => "none",
            Steal::Unknown(_) => "unknown",
        }
    }

    pub fn readable(&self) -> bool {
        matches!(self, Steal::Known(_))
    }

    /// The runqueue offset for the BPF side, 0 when addresses are given.
    pub fn rq_delta(&self) -> i64 {
        match self {
            Steal::Known(Source::Runqueue { delta, .. }) => *delta,
            _ => 0,
        }
    }

    /// Give the BPF side each CPU's address, when the symbol gave them.
    pub fn fill(&self, steal_at: &impl MapCore) -> Result<(), libbpf_rs::Error> {
        let Steal::Known(Source::Ksym(addrs)) = self else { return Ok(()) };
        let values: Vec<Vec<u8>> = addrs.iter().map(|a| a.to_ne_bytes().to_vec()).collect();
        steal_at.update_percpu(&0u32.to_ne_bytes(), &values, MapFlags::ANY)
    }

    /// The banner line.
    pub fn explain(&self) -> String {
        match self {
            Steal::BareMetal => "steal time: none, no hypervisor (bare metal)".into(),
            Steal::Unknown(why) => {
                format!("steal time: unknown, {why}; windows may include time the hypervisor took from this VM")
            }
            Steal::Known(Source::Ksym(_)) => {
                "steal time: from the KVM steal clock (per-CPU symbol steal_time), taken out of each window".into()
            }
            Steal::Known(Source::Runqueue { why, .. }) => format!(
                "steal time: from the KVM steal clock, taken out of each window; found through each CPU's \
                 runqueue, as {why}"
            ),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Hypervisor {
    None,
    Other(String),
    Kvm { steal: bool },
}

/// The hypervisor bit of CPUID leaf 1, then the KVM signature, searched
/// the way the kernel does (kvm_cpuid_base: every 0x100 from 0x40000000,
/// as KVM moves up when it also offers Hyper-V's interface).
fn hypervisor() -> Hypervisor {
    use std::arch::x86_64::__cpuid;
    const HYPERVISOR_BIT: u32 = 1 << 31;
    const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
    if __cpuid(1).ecx & HYPERVISOR_BIT == 0 {
        return Hypervisor::None;
    }
    let signature = |leaf: u32| {
        let r = __cpuid(leaf);
        let b: Vec<u8> = [r.ebx, r.ecx, r.edx].iter().flat_map(|w| w.to_le_bytes()).collect();
        String::from_utf8_lossy(&b).trim_end_matches('\0').to_string()
    };
    for base in (0x4000_0000u32..0x4001_0000).step_by(0x100) {
        if signature(base) == "KVMKVMKVM" {
            return Hypervisor::Kvm { steal: __cpuid(base + 1).eax & KVM_FEATURE_STEAL_TIME != 0 };
        }
    }
    Hypervisor::Other(signature(0x4000_0000))
}

/// Each possible CPU's address through the typed symbol; None when the
/// kernel has no such variable; Err when the kernel will not resolve it.
fn by_ksym() -> Result<Option<Vec<u64>>, String> {
    let mut storage = MaybeUninit::uninit();
    let open = kdiag_shared::skel::open(skel::StealSkelBuilder::default(), &mut storage).map_err(|e| e.to_string())?;
    // A refusal is an expected answer here: libbpf's account of it is kept
    // (libbpf_log), and the banner says it once.
    let skel = open.load().map_err(|e| match Errno::of_libbpf(&e) {
        Some(Errno(libc::ENOENT)) => {
            "the kernel cannot resolve the per-CPU symbol steal_time (CONFIG_KALLSYMS_ALL off)".to_string()
        }
        _ => format!("loading the steal_time reader: {e}"),
    })?;
    let n = libbpf_rs::num_possible_cpus().map_err(|e| e.to_string())?;
    let mut addrs = Vec::with_capacity(n);
    for cpu in 0..n as u64 {
        let mut arg = cpu.to_ne_bytes();
        let input = ProgramInput { context_in: Some(&mut arg), ..Default::default() };
        skel.progs.irqoff_steal_addr.test_run(input).map_err(|e| format!("running the steal_time reader: {e}"))?;
        addrs.push(skel.maps.bss_data.as_ref().map(|b| b.addr).unwrap_or(0));
    }
    Ok(addrs.first().is_some_and(|&a| a != 0).then_some(addrs))
}

/// &steal_time - &runqueues as per-CPU offsets: the same for every CPU,
/// since each CPU's copy of the per-CPU section is laid out alike. The BPF
/// side reaches the runqueue through the current task's fair-class entity,
/// which exists with CONFIG_FAIR_GROUP_SCHED (every distribution has it).
fn by_runqueue() -> Result<i64, String> {
    let btf = kdiag_shared::btf::vmlinux().map_err(|e| format!("no kernel BTF: {e}"))?;
    let section: DataSec = btf.type_by_name(".data..percpu").ok_or("no per-CPU section in BTF")?;
    let offset = |name: &str| {
        section.iter().find_map(|v| {
            let var: Var = btf.type_by_id(v.ty)?;
            (var.name()?.to_str()? == name).then_some(v.offset as i64)
        })
    };
    let has = |ty: &str, member: &str| {
        btf.type_by_name::<Struct>(ty)
            .is_some_and(|s| s.iter().any(|m| m.name.and_then(|n| n.to_str()) == Some(member)))
    };
    if !(has("sched_entity", "cfs_rq") && has("cfs_rq", "rq")) {
        return Err("and no runqueue to find it from (no CONFIG_FAIR_GROUP_SCHED)".into());
    }
    match (offset("steal_time"), offset("runqueues")) {
        (Some(st), Some(rq)) => Ok(st - rq),
        _ => Err("and BTF does not place steal_time and runqueues in the per-CPU section".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::skel::SkelBuilder;

    mod window_test {
        include!(concat!(env!("OUT_DIR"), "/window_test.skel.rs"));
    }
    use window_test::WindowTestSkelBuilder;

    const MS: u64 = 1_000_000;
    const QUIET: u32 = 0;
    const OVER: u32 = 1;
    const STEAL_ONLY: u32 = 2;

    /// window.h's irqoff_judge, run by the kernel: (verdict, lat).
    fn judge(gap: u64, period: u64, idle: u64, steal: u64, threshold: u64) -> (u32, u64) {
        kdiag_testkit::needs_root("runs a BPF program");
        let mut storage = MaybeUninit::uninit();
        let skel = WindowTestSkelBuilder::default().open(&mut storage).unwrap().load().unwrap();
        let mut args: Vec<u8> = [gap, period, idle, steal, threshold].iter().flat_map(|v| v.to_ne_bytes()).collect();
        skel.progs.judge.test_run(ProgramInput { context_in: Some(&mut args), ..Default::default() }).unwrap();
        let bss = skel.maps.bss_data.as_ref().unwrap();
        (bss.verdict, bss.lat)
    }

    #[test]
    fn guest_time_is_the_gap_less_period_idle_and_steal() {
        assert_eq!(judge(12 * MS, MS, 0, 0, 10 * MS), (OVER, 11 * MS));
        // At the threshold exactly is a window, as before steal was known.
        assert_eq!(judge(11 * MS, MS, 0, 0, 10 * MS), (OVER, 10 * MS));
        assert_eq!(judge(25 * MS, MS, 2 * MS, 3 * MS, 10 * MS), (OVER, 19 * MS));
    }

    #[test]
    fn steal_alone_explains_only_what_idle_does_not() {
        // Over the threshold with the host's time, under it without.
        assert_eq!(judge(12 * MS, MS, 0, 3 * MS, 10 * MS), (STEAL_ONLY, 8 * MS));
        assert_eq!(judge(20 * MS, MS, 5 * MS, 5 * MS, 10 * MS), (STEAL_ONLY, 9 * MS));
        // Idle time explains this one with no steal: not steal's doing.
        assert_eq!(judge(12 * MS, MS, 3 * MS, 0, 10 * MS), (QUIET, 8 * MS));
        // Under the threshold even counting steal: nothing to explain.
        assert_eq!(judge(8 * MS, MS, 0, 2 * MS, 10 * MS), (QUIET, 5 * MS));
    }

    #[test]
    fn guest_time_never_goes_below_zero() {
        assert_eq!(judge(2 * MS, MS, 5 * MS, 5 * MS, 10 * MS), (QUIET, 0));
        assert_eq!(judge(0, MS, 0, 0, 10 * MS), (QUIET, 0));
    }

    /// The version protocol, on a struct the test plays the host for.
    #[test]
    fn steal_is_read_only_at_an_even_version() {
        kdiag_testkit::needs_root("runs a BPF program");
        let mut storage = MaybeUninit::uninit();
        let mut skel = WindowTestSkelBuilder::default().open(&mut storage).unwrap().load().unwrap();
        let mut read = |version: u32| {
            let bss = skel.maps.bss_data.as_mut().unwrap();
            bss.fake.steal = 123_456_789;
            bss.fake.version = version;
            skel.progs.read_fake.test_run(ProgramInput::default()).unwrap();
            let bss = skel.maps.bss_data.as_ref().unwrap();
            (bss.read_ok, bss.steal)
        };
        assert_eq!(read(4), (1, 123_456_789));
        // Odd: the host is mid-update; every retry sees it so, and gives up.
        assert_eq!(read(5), (0, 0));
    }

    fn kallsyms_lists_steal_time() -> bool {
        kdiag_shared::ksyms::require().unwrap().other_kind("steal_time").is_some()
    }

    /// Against independent witnesses: /proc/cpuinfo's hypervisor flag, and
    /// /proc/kallsyms, whose listing of the symbol is what decides whether
    /// the kernel resolves it. The host is a KVM guest with a steal clock
    /// and without per-CPU symbols in kallsyms.
    #[test]
    fn the_steal_clock_is_found_the_way_this_kernel_allows() {
        kdiag_testkit::needs_root("reads /proc/kallsyms and loads BPF programs");
        let hv = std::fs::read_to_string("/proc/cpuinfo").unwrap().split_whitespace().any(|f| f == "hypervisor");
        assert_eq!(hypervisor() != Hypervisor::None, hv);
        match (by_ksym(), kallsyms_lists_steal_time()) {
            (Ok(Some(addrs)), true) => {
                // One copy per CPU, each in its own per-CPU area.
                let n = addrs.len();
                let mut distinct = addrs.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), n, "{addrs:x?}");
            }
            (Err(why), false) => assert!(why.contains("CONFIG_KALLSYMS_ALL off"), "{why}"),
            (got, listed) => panic!("symbol route {got:?}, kallsyms lists steal_time: {listed}"),
        }
        if hypervisor() == (Hypervisor::Kvm { steal: true }) {
            let s = Steal::locate();
            assert!(s.readable(), "{s:?}");
            assert_eq!(s.state(), "known");
            if !kallsyms_lists_steal_time() {
                assert!(s.rq_delta() != 0, "{s:?}");
                assert!(s.explain().contains("runqueue"), "{}", s.explain());
            }
        }
    }
}

//! What offwaketime needs to know about the running kernel before loading:
//! answered from its BTF and its symbols, not from its version number, because
//! distribution kernels backport.

use kdiag_shared::ksyms::KernelSymbols;
use libbpf_rs::btf::{types, Btf, BtfType};

/// Does the sched_switch tracepoint pass prev_state (5.18+)? Its BTF
/// typedef `btf_trace_sched_switch` is a pointer to a prototype with the
/// tracepoint's arguments after a leading `void *`.
pub fn switch_passes_prev_state(btf: &Btf) -> bool {
    let Some(t) = btf.type_by_name::<BtfType>("btf_trace_sched_switch") else { return false };
    let Some(ptr) = t.skip_mods_and_typedefs().next_type() else { return false };
    match types::FuncProto::try_from(ptr.skip_mods_and_typedefs()) {
        Ok(proto) => proto.len() >= 5,
        Err(_) => false,
    }
}

/// The symbol to put the switch kprobe on: `finish_task_switch`, or the
/// compiler's clone of it (`finish_task_switch.isra.0`).
pub fn finish_task_switch_symbol(k: &KernelSymbols) -> Option<String> {
    k.with_prefix("finish_task_switch")
        .map(|f| f.name)
        .filter(|s| *s == "finish_task_switch" || s.strip_prefix("finish_task_switch.").is_some_and(|r| !r.is_empty()))
        .min_by_key(|s| s.len())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(text: &str) -> KernelSymbols {
        KernelSymbols::parse(std::io::Cursor::new(text), "")
    }

    #[test]
    fn clone_names() {
        let k = "ffffffff813a4370 t __pfx_finish_task_switch.isra.0\nffffffff813a4380 t finish_task_switch.isra.0\n";
        assert_eq!(finish_task_switch_symbol(&syms(k)).as_deref(), Some("finish_task_switch.isra.0"));
        let k = "ffffffff813a4380 T finish_task_switch\nffffffff813a4390 t finish_task_switch.cold\n";
        assert_eq!(finish_task_switch_symbol(&syms(k)).as_deref(), Some("finish_task_switch"));
        assert_eq!(finish_task_switch_symbol(&syms("1 T schedule\n")), None);
    }

    /// Against the release, an independent witness: prev_state joined the
    /// tracepoint's arguments in 5.18, so 5.10 says no, 6.1 and later yes.
    #[test]
    fn this_kernel() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut nums = release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap());
        let version = (nums.next().unwrap(), nums.next().unwrap());
        let btf = Btf::from_vmlinux().unwrap();
        assert_eq!(switch_passes_prev_state(&btf), version >= (5, 18), "kernel {}", release.trim());
    }
}

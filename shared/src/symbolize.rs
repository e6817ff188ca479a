//! Addresses to names: kernel addresses from the kernel symbol table
//! ([`crate::ksyms`]), user addresses of a live process through its maps
//! with blazesym, demangled. Lookups are batched per call and cached, because the
//! same few hundred addresses recur in every stack of a run.

use crate::ksyms::Place;
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::Pid;
use serde::Serialize;
use std::collections::HashMap;

/// One symbolized stack frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The address as captured; hex in JSON, where 64-bit numbers lose
    /// precision in most parsers.
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    /// Function name, demangled; None when nothing could be found.
    pub sym: Option<String>,
    /// Offset of `addr` into the function.
    pub off: u64,
    /// Kernel module, or the file a user address maps to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Frame {
    /// `sym+0x1b [module]`, or `[unknown]` as bcc prints it.
    pub fn label(&self) -> String {
        let Some(sym) = &self.sym else { return "[unknown]".to_string() };
        let mut s = if self.off == 0 { sym.clone() } else { format!("{sym}+{:#x}", self.off) };
        if let Some(m) = &self.module {
            s.push_str(&format!(" [{m}]"));
        }
        s
    }
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// The name of frames in BPF programs and trampolines. They live outside
/// kernel text and modules, and kallsyms does not always list them; a
/// lookup would then name whatever symbol precedes them (on the host, a
/// rodata marker), which would be a lie.
pub const BPF_FRAME: &str = "[bpf]";

/// Frames the tracing machinery itself adds to a stack taken from BPF:
/// programs, trampolines, tracepoint iterators, kprobe/fprobe plumbing.
pub fn is_tracer_frame(sym: &str) -> bool {
    const PREFIXES: [&str; 25] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "__probestub_",
        "bpf_trampoline_",
        "trace_call_bpf",
        "trace_event_raw_event_",
        "trace_event_buffer_",
        "perf_trace_",
        "perf_syscall_",
        "perf_tp_event",
        "kprobe_",
        "__kprobes",
        "aggr_pre_handler",
        "pre_handler_kretprobe",
        "fprobe_",
        "__fprobe_handler",
        "rethook_",
        "ftrace_",
        "arch_ftrace_",
        "function_stack_trace_call",
        "function_trace_call",
        "__trace_stack",
        "kprobe_multi_link_",
    ];
    sym == BPF_FRAME || PREFIXES.iter().any(|p| sym.starts_with(p))
}

pub struct Symbolizer {
    /// Built on the first user stack: tools without one never pay for it.
    blaze: Option<Blaze>,
    kernel: HashMap<u64, Frame>,
    user: HashMap<(u32, u64), Frame>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Symbolizer { blaze: None, kernel: HashMap::new(), user: HashMap::new() }
    }

    /// Symbolize a kernel stack. Every frame but the first is a return
    /// address, pointing after the call; looking up `addr - 1` keeps a call
    /// at the very end of a function from being blamed on the next one.
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let ksyms = crate::ksyms::get();
        for &a in &lookups {
            self.kernel.entry(a).or_insert_with(|| match ksyms.place(a) {
                Place::Function { name, off, module } => {
                    Frame { addr: a, sym: Some(name.to_string()), off, module: module.map(str::to_string) }
                }
                Place::Bpf => Frame { addr: a, sym: Some(BPF_FRAME.to_string()), off: 0, module: None },
                Place::Unknown => Frame { addr: a, sym: None, off: 0, module: None },
            });
        }
        restore(addrs, &lookups, |a| self.kernel[&a].clone())
    }

    /// Symbolize a user stack of `pid`, which must still be alive (or its
    /// maps cached from an earlier call for the same addresses).
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let missing: Vec<u64> = dedup(lookups.iter().copied().filter(|a| !self.user.contains_key(&(pid, *a))));
        if !missing.is_empty() {
            let src = Source::Process(Process::new(Pid::from(pid)));
            let blaze = self
                .blaze
                .get_or_insert_with(|| Blaze::builder().enable_demangling(true).enable_code_info(false).build());
            let syms = blaze.symbolize(&src, Input::AbsAddr(&missing)).unwrap_or_default();
            for (i, &a) in missing.iter().enumerate() {
                self.user.insert((pid, a), to_frame(a, syms.get(i)));
            }
        }
        restore(addrs, &lookups, |a| self.user[&(pid, a)].clone())
    }
}

fn lookup_addrs(addrs: &[u64]) -> Vec<u64> {
    addrs.iter().enumerate().map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) }).collect()
}

fn dedup(it: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Turn frames found at lookup addresses back into frames at the captured
/// addresses, with offsets measured from the captured address.
fn restore(addrs: &[u64], lookups: &[u64], get: impl Fn(u64) -> Frame) -> Vec<Frame> {
    addrs
        .iter()
        .zip(lookups)
        .map(|(&addr, &l)| {
            let f = get(l);
            Frame { addr, off: f.off + (addr - l), ..f }
        })
        .collect()
}

fn to_frame(addr: u64, s: Option<&Symbolized>) -> Frame {
    match s.and_then(|s| s.as_sym()) {
        Some(sym) => Frame {
            addr,
            sym: Some(sym.name.to_string()),
            off: sym.offset as u64,
            module: sym.module.as_ref().map(|m| {
                let p = std::path::Path::new(m);
                p.file_name().unwrap_or(m).to_string_lossy().into_owned()
            }),
        },
        None => Frame { addr, sym: None, off: 0, module: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let f = Frame { addr: 1, sym: Some("owner_func".into()), off: 0x12, module: Some("irqoff_test".into()) };
        assert_eq!(f.label(), "owner_func+0x12 [irqoff_test]");
        assert_eq!(Frame { addr: 1, sym: None, off: 0, module: None }.label(), "[unknown]");
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"addr":"0x1","sym":"owner_func","off":18,"module":"irqoff_test"}"#
        );
    }

    #[test]
    fn tracer_frames() {
        assert!(is_tracer_frame("bpf_prog_6deef7357e7b4530_handle"));
        assert!(is_tracer_frame("bpf_trace_run2"));
        assert!(is_tracer_frame("__traceiter_block_rq_issue"));
        assert!(is_tracer_frame(BPF_FRAME));
        assert!(!is_tracer_frame("schedule"));
    }

    /// A real kernel symbol resolves to itself, and a return address just
    /// past a function's start keeps its name.
    #[test]
    fn kernel_addresses_resolve() {
        kdiag_testkit::needs_root("reads kernel addresses from /proc/kallsyms");
        let addr = crate::ksyms::require().unwrap().function("schedule").expect("schedule in kallsyms").addr;
        let mut s = Symbolizer::new();
        let frames = s.kernel_stack(&[addr, addr + 5]);
        assert_eq!(frames[0].label(), "schedule");
        assert_eq!(frames[1].label(), "schedule+0x5");
        assert_eq!(frames[1].addr, addr + 5);
    }

    /// The names blazesym's own kernel symbolizer gives, on this kernel's
    /// real addresses: the lean table loses nothing.
    #[test]
    fn agrees_with_blazesym_here() {
        kdiag_testkit::needs_root("reads kernel addresses from /proc/kallsyms");
        let k = crate::ksyms::require().unwrap();
        let addrs: Vec<u64> = ["schedule", "pipe_read", "try_to_wake_up", "vfs_read", "do_syscall_64"]
            .iter()
            .filter_map(|n| k.function(n))
            .map(|f| f.addr + 7)
            .collect();
        assert!(addrs.len() >= 4, "{addrs:x?}");
        let lookups = lookup_addrs(&addrs);
        let blaze = Blaze::new();
        let src = Source::Kernel(blazesym::symbolize::source::Kernel { debug_syms: false, ..Default::default() });
        let theirs = blaze.symbolize(&src, Input::AbsAddr(&lookups)).unwrap();
        let theirs: Vec<String> = restore(&addrs, &lookups, |a| {
            let i = lookups.iter().position(|&l| l == a).unwrap();
            to_frame(a, theirs.get(i))
        })
        .iter()
        .map(Frame::label)
        .collect();
        let ours: Vec<String> = Symbolizer::new().kernel_stack(&addrs).iter().map(Frame::label).collect();
        assert_eq!(ours, theirs);
    }

    /// Our own process: a function of this test binary resolves by name.
    #[test]
    #[inline(never)]
    fn user_addresses_resolve() {
        kdiag_testkit::needs_root("opens /proc/PID/map_files (CAP_SYS_ADMIN)");
        let addr = user_addresses_resolve as *const () as u64;
        let mut s = Symbolizer::new();
        let frames = s.user_stack(std::process::id(), &[addr]);
        let name = frames[0].sym.clone().unwrap_or_default();
        assert!(name.contains("user_addresses_resolve"), "{frames:?}");
    }
}

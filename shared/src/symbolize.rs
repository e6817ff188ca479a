//! Addresses to names, with blazesym: kernel addresses from kallsyms (and
//! vmlinux when one is installed), user addresses of a live process through
//! its maps, demangled. Lookups are batched per call and cached, because the
//! same few hundred addresses recur in every stack of a run.

use blazesym::symbolize::source::{Kernel, Process, Source};
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

/// One captured stack, as far as it could be had: what tools that count
/// stacks report for each side (kernel, user) of a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Not asked for (-K/-U, a kernel thread's user stack, user space under
    /// an interrupt).
    NotTaken,
    Failed(crate::Errno),
    /// Innermost frame first.
    Frames(Vec<Frame>),
}

impl Stack {
    /// Frame names as bcc prints them, innermost first: kernel frames with
    /// their module; a failed or empty capture is one `[Missed ...]` line.
    pub fn names(&self, kernel: bool) -> Vec<String> {
        let what = if kernel { "Kernel" } else { "User" };
        match self {
            Stack::NotTaken => vec![],
            Stack::Failed(e) => vec![format!("[Missed {what} Stack: {e}]")],
            Stack::Frames(f) if f.is_empty() => vec![format!("[Missed {what} Stack]")],
            Stack::Frames(f) => f
                .iter()
                .map(|f| match (&f.sym, &f.module) {
                    (None, _) => "[unknown]".to_string(),
                    (Some(s), Some(m)) if kernel => format!("{s} [{m}]"),
                    (Some(s), _) => s.clone(),
                })
                .collect(),
        }
    }
}

/// Frames as JSON, or {"error": "EEXIST"}, or null when not taken.
impl Serialize for Stack {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Stack::NotTaken => s.serialize_none(),
            Stack::Frames(f) => f.serialize(s),
            Stack::Failed(e) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("error", &e.to_string())?;
                m.end()
            }
        }
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

/// Where the kernel's own code is, from kallsyms: addresses outside it and
/// outside every module are BPF programs or trampolines.
#[derive(Debug, Default)]
struct KernelText {
    ranges: Vec<(u64, u64)>,
}

impl KernelText {
    fn from_kallsyms(text: &str) -> Self {
        let mut marks = HashMap::new();
        for l in text.lines() {
            let mut f = l.split_whitespace();
            if let (Some(a), Some(_), Some(n)) = (f.next(), f.next(), f.next()) {
                if matches!(n, "_stext" | "_etext" | "_sinittext" | "_einittext") {
                    marks.insert(n.to_string(), u64::from_str_radix(a, 16).unwrap_or(0));
                }
            }
        }
        let ranges = [("_stext", "_etext"), ("_sinittext", "_einittext")]
            .iter()
            .filter_map(|(s, e)| Some((*marks.get(*s)?, *marks.get(*e)?)))
            .filter(|(s, e)| s < e)
            .collect();
        KernelText { ranges }
    }

    /// Unknown bounds (no kallsyms) count as inside: never call real code BPF.
    fn contains(&self, addr: u64) -> bool {
        self.ranges.is_empty() || self.ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }
}

/// A loaded kernel module's address range, from /proc/modules.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModuleRange {
    name: String,
    start: u64,
    end: u64,
}

fn parse_modules(text: &str) -> Vec<ModuleRange> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = f.get(1)?.parse::<u64>().ok()?;
            let start = u64::from_str_radix(f.get(5)?.trim_start_matches("0x"), 16).ok()?;
            (start != 0).then(|| ModuleRange { name: f[0].to_string(), start, end: start + size })
        })
        .collect()
}

pub struct Symbolizer {
    blaze: Blaze,
    kernel: HashMap<u64, Frame>,
    user: HashMap<(u32, u64), Frame>,
    modules: Vec<ModuleRange>,
    /// Read on the first kernel stack: tools without one never pay for it.
    text: Option<KernelText>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let modules = std::fs::read_to_string("/proc/modules").map(|t| parse_modules(&t)).unwrap_or_default();
        Symbolizer {
            blaze: Blaze::builder().enable_demangling(true).enable_code_info(false).build(),
            kernel: HashMap::new(),
            user: HashMap::new(),
            modules,
            text: None,
        }
    }

    /// Symbolize a kernel stack. Every frame but the first is a return
    /// address, pointing after the call; looking up `addr - 1` keeps a call
    /// at the very end of a function from being blamed on the next one.
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let missing: Vec<u64> = dedup(lookups.iter().copied().filter(|a| !self.kernel.contains_key(a)));
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel { debug_syms: false, ..Kernel::default() });
            let syms = self.blaze.symbolize(&src, Input::AbsAddr(&missing)).unwrap_or_default();
            let text = self.text.get_or_insert_with(|| {
                KernelText::from_kallsyms(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default())
            });
            for (i, &a) in missing.iter().enumerate() {
                let mut f = to_frame(a, syms.get(i));
                f.module = self.modules.iter().find(|m| a >= m.start && a < m.end).map(|m| m.name.clone());
                if f.module.is_none() && !text.contains(a) {
                    f = Frame { addr: a, sym: Some(BPF_FRAME.to_string()), off: 0, module: None };
                }
                self.kernel.insert(a, f);
            }
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
            let syms = self.blaze.symbolize(&src, Input::AbsAddr(&missing)).unwrap_or_default();
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
    fn stack_names_and_json() {
        let f = Frame { addr: 1, sym: Some("lo_rw_aio".into()), off: 4, module: Some("loop".into()) };
        let st = Stack::Frames(vec![f, Frame { addr: 2, sym: None, off: 0, module: None }]);
        assert_eq!(st.names(true), ["lo_rw_aio [loop]", "[unknown]"]);
        assert_eq!(st.names(false), ["lo_rw_aio", "[unknown]"]);
        assert_eq!(Stack::Frames(vec![]).names(false), ["[Missed User Stack]"]);
        let failed = Stack::Failed(crate::Errno(libc::EEXIST));
        assert_eq!(failed.names(true), ["[Missed Kernel Stack: EEXIST]"]);
        assert_eq!(serde_json::to_string(&failed).unwrap(), r#"{"error":"EEXIST"}"#);
        assert_eq!(serde_json::to_string(&Stack::NotTaken).unwrap(), "null");
        assert!(Stack::NotTaken.names(true).is_empty());
    }

    #[test]
    fn module_ranges() {
        let m = parse_modules("loop 40960 0 - Live 0xffffffffc0a00000\nbad line\nx 1 0 - Live 0x0000000000000000\n");
        assert_eq!(m, vec![ModuleRange { name: "loop".into(), start: 0xffffffffc0a00000, end: 0xffffffffc0a0a000 }]);
    }

    #[test]
    fn tracer_frames() {
        assert!(is_tracer_frame("bpf_prog_6deef7357e7b4530_handle"));
        assert!(is_tracer_frame("bpf_trace_run2"));
        assert!(is_tracer_frame("__traceiter_block_rq_issue"));
        assert!(is_tracer_frame(BPF_FRAME));
        assert!(!is_tracer_frame("schedule"));
    }

    #[test]
    fn outside_kernel_text_and_modules_is_bpf() {
        let k = KernelText::from_kallsyms(
            "ffffffff81000000 T _stext\nffffffff8220bb08 T _etext\nffffffff83b26734 R __stop_runtime_ptr_USER_PTR_MAX\n",
        );
        assert!(k.contains(0xffffffff81234567));
        assert!(!k.contains(0xffffffffa0001234));
        assert!(KernelText::default().contains(0xffffffffa0001234));
    }

    #[test]
    fn this_kernel_has_text_bounds() {
        let k = KernelText::from_kallsyms(&std::fs::read_to_string("/proc/kallsyms").unwrap());
        assert_eq!(k.ranges.len(), 2, "{k:?}");
    }

    /// A real kernel symbol from this kernel's kallsyms resolves to itself,
    /// and a return address just past a function's start keeps its name.
    #[test]
    fn kernel_addresses_resolve() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let addr = kallsyms
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[2] == "schedule").then(|| u64::from_str_radix(f[0], 16).unwrap())
            })
            .expect("schedule in kallsyms");
        assert_ne!(addr, 0, "kallsyms addresses are hidden (kptr_restrict)");
        let mut s = Symbolizer::new();
        let frames = s.kernel_stack(&[addr, addr + 5]);
        assert_eq!(frames[0].label(), "schedule");
        assert_eq!(frames[1].label(), "schedule+0x5");
        assert_eq!(frames[1].addr, addr + 5);
    }

    /// Our own process: a function of this test binary resolves by name.
    #[test]
    #[inline(never)]
    fn user_addresses_resolve() {
        let addr = user_addresses_resolve as *const () as u64;
        let mut s = Symbolizer::new();
        let frames = s.user_stack(std::process::id(), &[addr]);
        let name = frames[0].sym.clone().unwrap_or_default();
        assert!(name.contains("user_addresses_resolve"), "{frames:?}");
    }
}

//! What funcstack prints: one block per distinct (target, task, stacks),
//! most frequent first, as text, folded lines or JSON; return values; the
//! summary. Both the BPF and the ftrace backends feed the same entries.

use kdiag_shared::flame::folded_frame;
use kdiag_shared::symbolize::Frame;
use serde::Serialize;
use std::collections::BTreeSet;

pub use kdiag_shared::stacks::{Stack, StackFailures};

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function or tracepoint reached.
    pub target: String,
    pub comm: String,
    /// Process (thread group) id; 0 when the backend could not tell.
    pub pid: u32,
    pub tid: u32,
    pub cpus: BTreeSet<u32>,
    pub count: u64,
    pub kernel_stack: Stack,
    pub user_stack: Stack,
}

fn cpu_list(cpus: &BTreeSet<u32>) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

impl Entry {
    pub fn text(&self) -> String {
        let mut out = format!("  {}\n", self.target);
        for n in self.kernel_stack.names(true) {
            out.push_str(&format!("    {n}\n"));
        }
        let user = self.user_stack.names(false);
        if !user.is_empty() {
            out.push_str("    --\n");
            for n in user {
                out.push_str(&format!("    {n}\n"));
            }
        }
        let cpus = if self.cpus.is_empty() { String::new() } else { format!(" CPU {}", cpu_list(&self.cpus)) };
        out.push_str(&format!("    {} {}/{}{}\n", self.comm, self.pid, self.tid, cpus));
        out.push_str(&format!("      {}\n\n", self.count));
        out
    }

    /// Root first: the task, its user frames, its kernel frames, and the
    /// target as the leaf, so the flame graph's tips are the target.
    pub fn folded(&self) -> String {
        let mut parts = vec![self.comm.clone()];
        parts.extend(self.user_stack.names(false).into_iter().rev());
        parts.extend(self.kernel_stack.names(true).into_iter().rev());
        parts.push(self.target.clone());
        let line: Vec<String> = parts.iter().map(|p| folded_frame(p)).collect();
        format!("{} {}", line.join(";"), self.count)
    }

    fn merge_key(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}\0{}",
            self.target,
            self.tid,
            self.comm,
            self.kernel_stack.names(true).join(";"),
            self.user_stack.names(false).join(";")
        )
    }
}

/// Entries that read the same once symbolized are one: the kernel keys
/// stacks by id, and two call sites in one function differ only in offsets
/// that the report does not show. Sorted most frequent first.
pub fn merge(entries: Vec<Entry>) -> Vec<Entry> {
    let mut out = kdiag_shared::stacks::merge(entries, Entry::merge_key, |into, e| {
        into.count += e.count;
        into.cpus.extend(e.cpus);
    });
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.target.cmp(&b.target)).then(a.tid.cmp(&b.tid)));
    out
}

/// Drop the tracer's frames from the top, and the target itself when it
/// is the first frame left (kprobes and fentry see it, tracepoints not):
/// every backend then shows the same callers. ftrace's function tracer
/// puts its trampoline above the target, unnamed: `[FTRACE TRAMPOLINE]`
/// (6.12) or a bare address (6.1).
pub fn trim(frames: Vec<Frame>, target: &str) -> Vec<Frame> {
    let mut rest = kdiag_shared::stacks::strip_tracer_frames(frames);
    let unnamed = |f: &Frame| f.sym.as_deref().is_none_or(|s| s.starts_with('[') || s.starts_with("0x"));
    let trampolines = rest.iter().take_while(|f| unnamed(f)).count();
    if rest.get(trampolines).and_then(|f| f.sym.as_deref()) == Some(target) {
        rest.drain(..=trampolines);
    }
    rest
}

/// A return value, or a power-of-two range of large ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum RetValue {
    Exact(i64),
    /// log2 slot of the value as unsigned: [2^slot, 2^(slot+1)).
    Range(u32),
}

impl RetValue {
    pub fn label(&self) -> String {
        match *self {
            RetValue::Exact(v) if v < 0 => match kdiag_shared::errno_name(-v as i32) {
                Some(n) => format!("{v} ({n})"),
                None => v.to_string(),
            },
            RetValue::Exact(v) => v.to_string(),
            RetValue::Range(s) if s >= 63 => "[0x8000000000000000, max] (kernel pointers, large negatives)".into(),
            RetValue::Range(s) => format!("[{:#x}, {:#x}]", 1u64 << s, (1u64 << (s + 1)) - 1),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RetEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub target: String,
    #[serde(skip)]
    pub value: RetValue,
    /// The value, for exact ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// [low, high] for a range of large values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<[u64; 2]>,
    pub count: u64,
}

impl RetEntry {
    pub fn new(target: String, value: RetValue, count: u64) -> Self {
        let (ret, range) = match value {
            RetValue::Exact(v) => (Some(v), None),
            RetValue::Range(s) if s >= 63 => (None, Some([1u64 << 63, u64::MAX])),
            RetValue::Range(s) => (None, Some([1u64 << s, (1u64 << (s + 1)) - 1])),
        };
        RetEntry { kind: "ret", target, value, ret, range, count }
    }
}

/// Return values per function, most frequent first within each.
pub fn rets_text(rets: &[RetEntry]) -> String {
    let mut out = String::new();
    let mut targets: Vec<&str> = rets.iter().map(|r| r.target.as_str()).collect();
    targets.sort();
    targets.dedup();
    for t in targets {
        out.push_str(&format!("Return values of {t}:\n"));
        let mut mine: Vec<&RetEntry> = rets.iter().filter(|r| r.target == t).collect();
        mine.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        for r in mine {
            out.push_str(&format!("    {:<28} : {}\n", r.value.label(), r.count));
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub target: String,
    pub backend: String,
    pub duration_s: f64,
    pub stop_reason: String,
    /// Functions traced (1 for a tracepoint).
    pub attached: usize,
    pub stacks: usize,
    pub shown: usize,
    pub count: u64,
    /// Calls or events the kernel side saw, before -p/-c.
    pub hits: u64,
    pub filtered: u64,
    /// Trace records the kernel dropped (ftrace buffer overrun; an event
    /// and its stack are two records).
    pub lost_records: u64,
    pub stack_failures: StackFailures,
    /// Stacks lost because the counts map was full.
    pub keys_dropped: u64,
    pub rets_dropped: u64,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut out = format!(
            "funcstack: {} after {:.1}s, backend {}\n\
             Total: {} calls of {} in {} distinct stacks",
            self.stop_reason, self.duration_s, self.backend, self.count, self.target, self.stacks
        );
        if self.shown < self.stacks {
            out.push_str(&format!(", {} shown (-n)", self.shown));
        }
        out.push('\n');
        out.push_str(&format!("Not counted: {} by -p/-c filters", self.filtered));
        if self.lost_records > 0 {
            out.push_str(&format!(
                "; {} trace records lost by the kernel (buffer full; an event and its stack are two)",
                self.lost_records
            ));
        }
        if self.keys_dropped + self.rets_dropped > 0 {
            out.push_str(&format!(
                "; {} lost to full maps (stacks {}, return values {})",
                self.keys_dropped + self.rets_dropped,
                self.keys_dropped,
                self.rets_dropped
            ));
        }
        out.push('\n');
        if self.stack_failures.total() > 0 {
            out.push_str(&self.stack_failures.text());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_shared::Errno;

    fn f(sym: &str) -> Frame {
        Frame { addr: 0, sym: Some(sym.into()), off: 0, module: None }
    }

    fn entry(count: u64, tid: u32) -> Entry {
        Entry {
            kind: "stack",
            target: "vfs_fsync_range".into(),
            comm: "dd".into(),
            pid: 100,
            tid,
            cpus: [1].into(),
            count,
            kernel_stack: Stack::Frames(vec![f("do_fsync"), f("__x64_sys_fsync"), f("do_syscall_64")]),
            user_stack: Stack::NotTaken,
        }
    }

    #[test]
    fn text_block() {
        let t = entry(12, 101).text();
        assert_eq!(
            t,
            "  vfs_fsync_range\n    do_fsync\n    __x64_sys_fsync\n    do_syscall_64\n    dd 100/101 CPU 1\n      12\n\n"
        );
        let mut e = entry(1, 101);
        e.user_stack = Stack::Frames(vec![f("fsync"), f("main")]);
        assert!(e.text().contains("    do_syscall_64\n    --\n    fsync\n    main\n"), "{}", e.text());
        e.kernel_stack = Stack::Failed(Errno(libc::EEXIST));
        assert!(e.text().contains("    [Missed Kernel Stack: EEXIST]\n"));
    }

    #[test]
    fn folded_root_is_the_task_and_leaf_the_target() {
        let mut e = entry(12, 101);
        e.user_stack = Stack::Frames(vec![f("fsync"), f("main")]);
        assert_eq!(e.folded(), "dd;main;fsync;do_syscall_64;__x64_sys_fsync;do_fsync;vfs_fsync_range 12");
    }

    #[test]
    fn merge_sums_and_sorts() {
        let mut b = entry(3, 101);
        b.cpus = [0].into();
        if let Stack::Frames(fr) = &mut b.kernel_stack {
            fr[0].off = 0x10; // another call site in the same caller
        }
        let m = merge(vec![entry(2, 101), b, entry(9, 102)]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].tid, m[0].count), (102, 9));
        assert_eq!((m[1].count, m[1].cpus.iter().copied().collect::<Vec<_>>()), (5, vec![0, 1]));
    }

    #[test]
    fn trim_drops_tracer_frames_and_the_target() {
        let st = vec![f("bpf_prog_1_fs_kprobe"), f("bpf_trampoline_6442"), f("vfs_fsync_range"), f("do_fsync")];
        let names: Vec<_> = trim(st, "vfs_fsync_range").into_iter().map(|f| f.sym.unwrap()).collect();
        assert_eq!(names, ["do_fsync"]);
        let st = vec![f("trace_event_raw_event_block_rq"), f("blk_account_io_start"), f("ftrace_x")];
        let names: Vec<_> = trim(st, "block_io_start").into_iter().map(|f| f.sym.unwrap()).collect();
        assert_eq!(names, ["blk_account_io_start", "ftrace_x"]);
        for trampoline in [f("[FTRACE"), f("0xffffffffc04a4083"), Frame { addr: 1, sym: None, off: 0, module: None }] {
            let st = vec![trampoline, f("vfs_fsync_range"), f("do_fsync")];
            let names: Vec<_> = trim(st, "vfs_fsync_range").into_iter().map(|f| f.sym.unwrap()).collect();
            assert_eq!(names, ["do_fsync"]);
        }
        // An unnamed frame above anything but the target stays.
        let st = vec![Frame { addr: 1, sym: None, off: 0, module: None }, f("do_fsync")];
        assert_eq!(trim(st, "vfs_fsync_range").len(), 2);
    }

    #[test]
    fn return_values() {
        assert_eq!(RetValue::Exact(-5).label(), "-5 (EIO)");
        assert_eq!(RetValue::Exact(0).label(), "0");
        assert_eq!(RetValue::Range(12).label(), "[0x1000, 0x1fff]");
        let r = RetEntry::new("f".into(), RetValue::Range(12), 3);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"type":"ret","target":"f","range":[4096,8191],"count":3})
        );
        let t = rets_text(&[
            RetEntry::new("f".into(), RetValue::Exact(0), 1),
            RetEntry::new("f".into(), RetValue::Exact(-2), 4),
        ]);
        assert_eq!(
            t,
            "Return values of f:\n    -2 (ENOENT)                  : 4\n    0                            : 1\n\n"
        );
    }

    #[test]
    fn json_fields() {
        let v = serde_json::to_value(entry(1, 7)).unwrap();
        assert_eq!(v["type"], "stack");
        assert_eq!(v["cpus"], serde_json::json!([1]));
        assert_eq!(v["kernel_stack"][1]["sym"], "__x64_sys_fsync");
        assert!(v["user_stack"].is_null());
    }
}

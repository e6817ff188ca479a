//! Stacks from BPF to the report, one way for every tool: a capture is a
//! stack id in a stack map, a negative errno, or "not taken"; addresses
//! become frames through the symbolizer; the tracer's own frames are cut
//! from the top; user stacks are named while their process lives; entries
//! whose stacks read the same once named are merged.

use crate::symbolize::{is_tracer_frame, Frame, Symbolizer};
use crate::Errno;
use libbpf_rs::{Map, MapCore, MapFlags, MapHandle};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// A stack the BPF side chose not to take (-K/-U, a kernel thread's user
/// stack, user space under an interrupt): `KD_STACK_NOT_TAKEN` in
/// bpf/kdiag.bpf.h.
pub const NOT_TAKEN: i32 = -4096;

/// One captured stack, as far as it could be had: what tools report for
/// each side (kernel, user) of a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stack {
    NotTaken,
    Failed(Errno),
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

    pub fn frames(&self) -> &[Frame] {
        match self {
            Stack::Frames(f) => f,
            _ => &[],
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

/// The one rule for the tracer's own frames: a stack taken from BPF starts
/// with the program, its trampoline or kprobe plumbing and the tracepoint
/// iterator; those are cut from the top, and nothing below is touched.
pub fn strip_tracer_frames(frames: Vec<Frame>) -> Vec<Frame> {
    let skip = frames.iter().take_while(|f| f.sym.as_deref().is_some_and(is_tracer_frame)).count();
    frames.into_iter().skip(skip).collect()
}

/// A kernel stack carried in an event (`bpf_get_stack()` into the record):
/// its byte count, or a negative errno.
pub fn kernel_from_event(sym: &mut Symbolizer, size: i64, addrs: &[u64]) -> Stack {
    if size < 0 {
        return Stack::Failed(Errno(-size as i32));
    }
    let n = (size as usize / 8).min(addrs.len());
    Stack::Frames(strip_tracer_frames(sym.kernel_stack(&addrs[..n])))
}

/// A BPF_MAP_TYPE_STACK_TRACE map and the symbolizer, with each stack id
/// read once. It holds its own handle on the map, so a tool can keep it
/// beside the skeleton without tying their borrows together.
pub struct Stacks {
    map: MapHandle,
    addrs: HashMap<i32, Vec<u64>>,
    /// (tgid, stack id) of user stacks already named.
    users_named: HashSet<(u32, i32)>,
    pub sym: Symbolizer,
}

impl Stacks {
    pub fn new(map: &Map) -> anyhow::Result<Self> {
        let map = MapHandle::try_from(map).map_err(|e| anyhow::anyhow!("opening the stack map: {e}"))?;
        Ok(Stacks { map, addrs: HashMap::new(), users_named: HashSet::new(), sym: Symbolizer::new() })
    }

    /// The addresses of stack `id`, innermost first; empty if it is gone.
    fn addrs(&mut self, id: i32) -> Vec<u64> {
        let map = &self.map;
        self.addrs
            .entry(id)
            .or_insert_with(|| {
                map.lookup(&id.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .map(|bytes| {
                        bytes
                            .chunks_exact(8)
                            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                            .take_while(|&a| a != 0)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .clone()
    }

    fn capture(&mut self, id: i32, name: impl FnOnce(&mut Self, Vec<u64>) -> Vec<Frame>) -> Stack {
        match id {
            NOT_TAKEN => Stack::NotTaken,
            id if id < 0 => Stack::Failed(Errno(-id)),
            id => {
                let addrs = self.addrs(id);
                Stack::Frames(name(self, addrs))
            }
        }
    }

    /// Kernel stack `id`, named, the tracer's frames cut.
    pub fn kernel(&mut self, id: i32) -> Stack {
        self.capture(id, |s, a| strip_tracer_frames(s.sym.kernel_stack(&a)))
    }

    /// User stack `id` of process `tgid`.
    pub fn user(&mut self, tgid: u32, id: i32) -> Stack {
        self.capture(id, |s, a| s.sym.user_stack(tgid, &a))
    }

    /// Name the user stacks seen so far while their processes are alive;
    /// the symbolizer keeps the names for the report at the end. Tools
    /// call this about once a second with every (tgid, stack id) pair.
    pub fn name_users(&mut self, seen: impl IntoIterator<Item = (u32, i32)>) {
        for (tgid, id) in seen {
            if id < 0 || tgid == 0 || !self.users_named.insert((tgid, id)) {
                continue;
            }
            let addrs = self.addrs(id);
            self.sym.user_stack(tgid, &addrs);
        }
    }
}

/// Entries that read the same once named are one: the kernel keys stacks
/// by id, and two call sites in one function, or an interrupt stack cut
/// short, give one stack several ids. The first of each key stays, in
/// order, with the others added into it.
pub fn merge<E, K: Hash + Eq>(entries: Vec<E>, key: impl Fn(&E) -> K, mut add: impl FnMut(&mut E, E)) -> Vec<E> {
    let mut index: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<E> = Vec::new();
    for e in entries {
        let k = key(&e);
        match index.get(&k) {
            Some(&i) => add(&mut out[i], e),
            None => {
                index.insert(k, out.len());
                out.push(e);
            }
        }
    }
    out
}

/// How a stack tool's report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// bcc's multi-line blocks, then the summary.
    Text,
    /// One folded line per entry for flamegraph.pl; the summary goes to
    /// stderr so that stdout stays pure folded lines.
    Folded,
    /// One JSON object per entry, then the summary's.
    Json,
}

impl Form {
    pub fn of(json: bool, folded: bool) -> Form {
        match (json, folded) {
            (true, _) => Form::Json,
            (_, true) => Form::Folded,
            _ => Form::Text,
        }
    }
}

/// A stack tool's report: its entries in the three forms, anything else it
/// prints (funcstack's return values), and the summary.
pub struct Report<'a, E> {
    pub entries: &'a [E],
    pub text: &'a dyn Fn(&E) -> String,
    /// None leaves an entry out of folded lines and flame graphs (no
    /// weight to draw).
    pub folded: &'a dyn Fn(&E) -> Option<String>,
    pub extra_json: Vec<serde_json::Value>,
    pub extra_text: String,
    pub summary_json: serde_json::Value,
    pub summary_text: String,
}

impl<E: Serialize> Report<'_, E> {
    pub fn write(&self, form: Form) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        match form {
            Form::Json => {
                for e in self.entries {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
                for v in self.extra_json.iter().chain([&self.summary_json]) {
                    writeln!(out, "{v}")?;
                }
            }
            Form::Folded => {
                for line in self.entries.iter().filter_map(self.folded) {
                    writeln!(out, "{line}")?;
                }
                crate::lifecycle::say_text(&format!("{}{}", self.extra_text, self.summary_text));
            }
            Form::Text => {
                for e in self.entries {
                    write!(out, "{}", (self.text)(e))?;
                }
                write!(out, "{}{}", self.extra_text, self.summary_text)?;
            }
        }
        Ok(out.flush()?)
    }

    /// The flame graph of the folded lines, into `file` (created before the
    /// run, so an unwritable path failed at once).
    pub fn write_svg(
        &self,
        file: std::fs::File,
        path: &std::path::Path,
        labels: &crate::flame::Labels,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let lines: Vec<String> = self.entries.iter().filter_map(self.folded).collect();
        crate::flame::write_svg(file, labels, &lines).with_context(|| format!("writing {}", path.display()))?;
        crate::say!("flame graph written to {}", path.display());
        Ok(())
    }
}

/// Failed stack captures, by errno, as the BPF side counts them
/// (`KD_COUNT_STACK_FAILURE` in bpf/kdiag.bpf.h).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StackFailures {
    /// Stack map bucket held by another stack: a hash collision, long
    /// before the map is full.
    pub eexist: u64,
    /// Stack map full.
    pub enomem: u64,
    /// Nothing readable (e.g. a user stack of a task without user space).
    pub efault: u64,
    pub other: u64,
}

/// The failures from a counters struct with the fields `stack_eexist`,
/// `stack_enomem`, `stack_efault` and `stack_other`.
#[macro_export]
macro_rules! stack_failures {
    ($s:expr) => {
        $crate::stacks::StackFailures {
            eexist: $s.stack_eexist,
            enomem: $s.stack_enomem,
            efault: $s.stack_efault,
            other: $s.stack_other,
        }
    };
}

impl StackFailures {
    pub fn total(&self) -> u64 {
        self.eexist + self.enomem + self.efault + self.other
    }

    /// The summary line, with what to do when the map is too small (the
    /// tools that count stacks all take --stack-storage-size).
    pub fn text(&self) -> String {
        let mut s = format!(
            "Stack captures failed: {} (EEXIST {}, ENOMEM {}, EFAULT {}, other {})",
            self.total(),
            self.eexist,
            self.enomem,
            self.efault,
            self.other
        );
        if self.eexist + self.enomem > 0 {
            s.push_str("; the stack map is too small: raise --stack-storage-size");
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sym: &str) -> Frame {
        Frame { addr: 1, sym: Some(sym.into()), off: 0, module: None }
    }

    #[test]
    fn names_and_json() {
        let f = Frame { addr: 1, sym: Some("lo_rw_aio".into()), off: 4, module: Some("loop".into()) };
        let st = Stack::Frames(vec![f, Frame { addr: 2, sym: None, off: 0, module: None }]);
        assert_eq!(st.names(true), ["lo_rw_aio [loop]", "[unknown]"]);
        assert_eq!(st.names(false), ["lo_rw_aio", "[unknown]"]);
        assert_eq!(Stack::Frames(vec![]).names(false), ["[Missed User Stack]"]);
        let failed = Stack::Failed(Errno(libc::EEXIST));
        assert_eq!(failed.names(true), ["[Missed Kernel Stack: EEXIST]"]);
        assert_eq!(serde_json::to_string(&failed).unwrap(), r#"{"error":"EEXIST"}"#);
        assert_eq!(serde_json::to_string(&Stack::NotTaken).unwrap(), "null");
        assert!(Stack::NotTaken.names(true).is_empty());
    }

    /// Tracer frames go from the top only: a BPF frame below real kernel
    /// code (a tracepoint hit inside a helper) is part of the story.
    #[test]
    fn tracer_frames_are_cut_from_the_top_only() {
        let frames = vec![
            frame("bpf_prog_6deef7357e7b4530_handle"),
            frame("bpf_trace_run2"),
            frame("__traceiter_sched_switch"),
            frame("__schedule"),
            frame("[bpf]"),
            frame("schedule"),
        ];
        let names: Vec<String> = strip_tracer_frames(frames).iter().map(Frame::label).collect();
        assert_eq!(names, ["__schedule", "[bpf]", "schedule"]);
    }

    #[test]
    fn event_stacks() {
        let mut sym = Symbolizer::new();
        assert_eq!(kernel_from_event(&mut sym, -14, &[1, 2]), Stack::Failed(Errno(libc::EFAULT)));
        let Stack::Frames(f) = kernel_from_event(&mut sym, 8, &[0xffffffff81000000, 2]) else { panic!() };
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn merging_adds_into_the_first() {
        let merged = merge(vec![("a", 1), ("b", 2), ("a", 3)], |e| e.0, |into, e| into.1 += e.1);
        assert_eq!(merged, [("a", 4), ("b", 2)]);
    }

    #[test]
    fn failures_add_up() {
        let f = StackFailures { eexist: 3, enomem: 1, efault: 2, other: 0 };
        assert_eq!(f.total(), 6);
        assert_eq!(
            f.text(),
            "Stack captures failed: 6 (EEXIST 3, ENOMEM 1, EFAULT 2, other 0); \
             the stack map is too small: raise --stack-storage-size\n"
        );
        let f = StackFailures { efault: 2, ..Default::default() };
        assert_eq!(f.text(), "Stack captures failed: 2 (EEXIST 0, ENOMEM 0, EFAULT 2, other 0)\n");
    }
}

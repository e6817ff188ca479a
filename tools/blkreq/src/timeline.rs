//! Steps grouped into requests: per session, in time order, with the
//! delta from the previous step and where each ran.

use crate::tree::{self, Context};
use serde::Serialize;

/// One decoded BPF event, its stack already symbolized.
#[derive(Clone, Debug)]
pub struct Step {
    pub mono_ns: u64,
    pub session: u64,
    pub rq: u64,
    /// Function or `tracepoint:NAME`.
    pub what: String,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub flags: u8,
    pub dev: String,
    pub op: String,
    pub sector: u64,
    pub bytes: u32,
    /// Function names, innermost first, tracer frames kept (the tree
    /// removes them); None when the capture failed.
    pub stack: Option<Vec<String>>,
}

/// Mirrors of `enum brq_event_flags`.
pub const ADMITTED: u8 = 1;
pub const ENDED: u8 = 2;
pub const AFTER_END: u8 = 4;
pub const REUSED: u8 = 8;

pub fn flag_names(f: u8) -> Vec<&'static str> {
    let mut v = vec![];
    if f & ADMITTED != 0 {
        v.push("admit");
    }
    if f & REUSED != 0 {
        v.push("previous life unended");
    }
    if f & ENDED != 0 {
        v.push("end");
    }
    if f & AFTER_END != 0 {
        v.push("after end");
    }
    v
}

impl Step {
    /// Context and tree path of this step.
    pub fn path(&self) -> (Context, Vec<String>) {
        match &self.stack {
            Some(s) => tree::path(s, &self.what),
            None => (Context::Unknown, vec!["[stack unavailable]".to_string(), self.what.clone()]),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StepOut {
    pub t_ns: u64,
    pub delta_ns: u64,
    pub mono_ns: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub context: Context,
    pub step: String,
    pub flags: Vec<&'static str>,
    pub stack: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Request {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub session: u64,
    #[serde(serialize_with = "hex")]
    pub rq: u64,
    pub dev: String,
    pub op: String,
    pub sector: u64,
    pub bytes: u32,
    /// Whoever was running at admission: the submitter for syscall I/O.
    pub submitter: String,
    pub completed: bool,
    pub steps: Vec<StepOut>,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// Group by session, order by time (arrival order breaks ties: one CPU's
/// steps arrive in the order they happened).
pub fn requests(steps: &[Step]) -> Vec<Request> {
    let mut sessions: Vec<u64> = steps.iter().map(|s| s.session).collect();
    sessions.sort_unstable();
    sessions.dedup();
    // Session ids are admission times: shown as 1, 2, ... in that order.
    sessions
        .into_iter()
        .enumerate()
        .map(|(n, sid)| {
            let mut mine: Vec<&Step> = steps.iter().filter(|s| s.session == sid).collect();
            mine.sort_by_key(|s| s.mono_ns);
            let first = mine[0];
            let admit = mine.iter().find(|s| s.flags & ADMITTED != 0).copied().unwrap_or(first);
            let mut prev = first.mono_ns;
            let steps = mine
                .iter()
                .map(|s| {
                    let (context, _) = s.path();
                    let out = StepOut {
                        t_ns: s.mono_ns - first.mono_ns,
                        delta_ns: s.mono_ns - prev,
                        mono_ns: s.mono_ns,
                        cpu: s.cpu,
                        pid: s.pid,
                        tid: s.tid,
                        comm: s.comm.clone(),
                        context,
                        step: s.what.clone(),
                        flags: flag_names(s.flags),
                        stack: s.stack.clone().unwrap_or_default(),
                    };
                    prev = s.mono_ns;
                    out
                })
                .collect();
            Request {
                kind: "request",
                session: n as u64 + 1,
                rq: first.rq,
                dev: admit.dev.clone(),
                op: admit.op.clone(),
                sector: admit.sector,
                bytes: admit.bytes,
                submitter: format!("{}[{}]", admit.comm, admit.tid),
                completed: mine.iter().any(|s| s.flags & ENDED != 0),
                steps,
            }
        })
        .collect()
}

fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

pub fn render(reqs: &[Request]) -> String {
    let mut out = String::new();
    for r in reqs {
        out.push_str(&format!(
            "request {}: {} {} sector {} {} bytes, rq {:#x}, admitted in {}{}\n",
            r.session,
            r.dev,
            r.op,
            r.sector,
            r.bytes,
            r.rq,
            r.submitter,
            if r.completed { "" } else { " (not completed when the run ended)" }
        ));
        out.push_str(&format!(
            "  {:>12} {:>11} {:>3} {:<8} {:<24} {}\n",
            "T(us)", "DELTA(us)", "CPU", "CTX", "TASK", "STEP"
        ));
        for s in &r.steps {
            let flags = if s.flags.is_empty() { String::new() } else { format!("  [{}]", s.flags.join(", ")) };
            out.push_str(&format!(
                "  {:>12} {:>11} {:>3} {:<8} {:<24} {}{}\n",
                us(s.t_ns),
                us(s.delta_ns),
                s.cpu,
                s.context.name(),
                format!("{}[{}]", s.comm, s.tid),
                s.step,
                flags
            ));
        }
        out.push('\n');
    }
    out
}

/// Steps from the BPF records, stacks named, devices and ops by name.
pub fn decode(
    raw: &[crate::bpf::types::brq_event],
    res: &crate::targets::Resolved,
    ops: &[(String, u32)],
) -> Vec<Step> {
    let mut sym = kdiag_shared::symbolize::Symbolizer::new();
    let mut names = std::collections::HashMap::new();
    raw.iter()
        .map(|e| {
            let stack = (e.stack_sz >= 0).then(|| {
                let n = (e.stack_sz as usize / 8).min(e.stack.len());
                sym.kernel_stack(&e.stack[..n])
                    .into_iter()
                    .map(|f| f.sym.unwrap_or_else(|| format!("{:#x}", f.addr)))
                    .collect::<Vec<_>>()
            });
            let (ma, mi) = crate::filters::split_kernel_dev(e.dev);
            let dev = names.entry(e.dev).or_insert_with(|| crate::filters::dev_name(ma, mi)).clone();
            Step {
                mono_ns: e.ts_ns,
                session: e.session,
                rq: e.rq,
                what: res.by_id(e.target).map(|t| t.label()).unwrap_or_else(|| format!("target {}", e.target)),
                cpu: e.cpu,
                pid: e.pid,
                tid: e.tid,
                comm: kdiag_shared::maps::c_string(&e.comm),
                flags: e.flags,
                dev,
                op: crate::filters::op_name(e.cmd_flags, ops),
                sector: e.sector,
                bytes: e.bytes,
                stack,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(session: u64, ns: u64, what: &str, cpu: u32, flags: u8) -> Step {
        Step {
            mono_ns: ns,
            session,
            rq: 0xffff_8881_0000_0000 + session,
            what: what.into(),
            cpu,
            pid: 7,
            tid: 7,
            comm: "dd".into(),
            flags,
            dev: "loop0".into(),
            op: "WRITE".into(),
            sector: 8,
            bytes: 4096,
            stack: Some(vec!["blk_mq_submit_bio".into(), "do_syscall_64".into()]),
        }
    }

    #[test]
    fn grouped_ordered_and_timed() {
        let steps = vec![
            step(2, 5_000, "tracepoint:block_io_start", 0, ADMITTED),
            step(1, 1_000, "tracepoint:block_io_start", 0, ADMITTED),
            step(1, 31_500, "tracepoint:block_rq_complete", 1, ENDED),
            step(1, 2_250, "tracepoint:block_rq_issue", 0, 0),
        ];
        let r = requests(&steps);
        assert_eq!(r.iter().map(|r| r.session).collect::<Vec<_>>(), [1, 2]);
        let whats: Vec<_> = r[0].steps.iter().map(|s| (s.step.as_str(), s.t_ns, s.delta_ns)).collect();
        assert_eq!(
            whats,
            [
                ("tracepoint:block_io_start", 0, 0),
                ("tracepoint:block_rq_issue", 1_250, 1_250),
                ("tracepoint:block_rq_complete", 30_500, 29_250)
            ]
        );
        assert!(r[0].completed && !r[1].completed);
        let text = render(&r);
        assert!(text.starts_with("request 1: loop0 WRITE sector 8 4096 bytes"), "{text}");
        assert!(text.contains("      30.500      29.250   1 syscall  dd[7]"), "{text}");
        assert!(text.contains("not completed when the run ended"), "{text}");
    }
}

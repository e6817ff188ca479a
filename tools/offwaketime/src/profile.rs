//! offwaketime's pprof profile: one sample per group, valued in sleeps,
//! blocked and run-queue nanoseconds, its frames joined as the folded line
//! joins them (sleeper's stacks, `--`, waker's stacks), the tasks' names
//! as labels.

use crate::report::Entry;
use kdiag_shared::pprof::{locations, Loc, Profile};
use std::fs::File;
use std::time::{Duration, SystemTime};

pub fn write(file: File, entries: &[Entry], started: SystemTime, duration: Duration) -> std::io::Result<()> {
    let types = [("sleeps", "count"), ("blocked", "nanoseconds"), ("runqueue", "nanoseconds")];
    let mut p = Profile::new(&types, "blocked", started);
    for e in entries {
        let values = [e.count as i64, e.blocked_ns as i64, e.runq_ns as i64];
        p.add(&frames(e), &values, &[("comm", &e.sleeper.comm), ("waker", &e.waker.label())]);
    }
    p.write(file, duration)
}

/// Leaf first: the folded line read backwards, without its task names at
/// either end (they are labels), so the root is where the sleeper's thread
/// started and the leaf where the waker's did.
fn frames(e: &Entry) -> Vec<Loc> {
    let (s, w) = (&e.sleeper, &e.waker.side);
    let mut out: Vec<Loc> = locations(&w.user_stack, false).into_iter().rev().collect();
    out.extend(locations(&w.kernel_stack, true).into_iter().rev());
    out.push(Loc::separator());
    out.extend(locations(&s.kernel_stack, true));
    out.extend(locations(&s.user_stack, false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Context, Layout, Side, Stack, Waker};
    use kdiag_shared::symbolize::Frame;

    fn stack(names: &[&str]) -> Stack {
        Stack::Frames(names.iter().map(|n| Frame { addr: 1, sym: Some(n.to_string()), off: 0, module: None }).collect())
    }

    #[test]
    fn frames_are_the_folded_line_backwards() {
        let side = |comm: &str, k: &[&str], u: &[&str]| Side {
            comm: comm.into(),
            pid: 1,
            tgid: 1,
            kernel_stack: stack(k),
            user_stack: stack(u),
            user_stack_truncated: false,
        };
        let e = Entry {
            kind: "wakeup",
            blocked_ns: 5_000,
            runq_ns: 7,
            count: 2,
            sleeper: side("reader", &["schedule", "pipe_read"], &["read", "main"]),
            waker: Waker {
                context: Context::Task,
                softirq: None,
                side: side("writer", &["try_to_wake_up", "pipe_write"], &["write", "start"]),
            },
        };
        let names: Vec<String> = frames(&e).into_iter().rev().map(|l| l.name).collect();
        let folded = e.folded(Layout::default());
        let (stacks, _) = folded.rsplit_once(' ').unwrap();
        let parts: Vec<&str> = stacks.split(';').collect();
        assert_eq!(names, parts[1..parts.len() - 1], "{folded}");
    }
}

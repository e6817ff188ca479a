//! funcstack's pprof profile: one sample per distinct stack, valued in
//! calls, the target as its leaf frame (as in the folded line), the
//! calling task's name as a label.

use crate::report::Entry;
use kdiag_shared::pprof::{locations, Loc, Profile};
use std::fs::File;
use std::time::{Duration, SystemTime};

pub fn write(file: File, entries: &[Entry], started: SystemTime, duration: Duration) -> std::io::Result<()> {
    let mut p = Profile::new(&[("calls", "count")], "calls", started);
    for e in entries {
        p.add(&frames(e), &[e.count as i64], &[("comm", &e.comm)]);
    }
    p.write(file, duration)
}

/// Leaf first: the target, then its callers in the kernel, then in user
/// space, innermost first.
fn frames(e: &Entry) -> Vec<Loc> {
    let mut out = vec![Loc { name: e.target.clone(), addr: 0 }];
    out.extend(locations(&e.kernel_stack, true));
    out.extend(locations(&e.user_stack, false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Stack;
    use kdiag_shared::symbolize::Frame;

    #[test]
    fn frames_are_the_folded_line_backwards() {
        let f = |n: &str| Frame { addr: 1, sym: Some(n.into()), off: 0, module: None };
        let e = Entry {
            kind: "stack",
            target: "vfs_fsync_range".into(),
            comm: "dd".into(),
            pid: 1,
            tid: 1,
            cpus: [0].into(),
            count: 3,
            kernel_stack: Stack::Frames(vec![f("do_fsync"), f("do_syscall_64")]),
            user_stack: Stack::Frames(vec![f("fsync"), f("main")]),
        };
        let names: Vec<String> = frames(&e).into_iter().rev().map(|l| l.name).collect();
        let folded = e.folded();
        let parts: Vec<&str> = folded.rsplit_once(' ').unwrap().0.split(';').collect();
        assert_eq!(names, parts[1..], "{folded}");
    }
}

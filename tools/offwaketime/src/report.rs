//! What offwaketime prints: one group per (sleeper stacks, waker stacks,
//! waker context), as bcc's multi-line blocks, folded lines or JSON, and
//! the summary at exit.

use kdiag_shared::symbolize::Frame;
use serde::Serialize;

pub use kdiag_shared::stacks::{Stack, StackFailures};

/// Where the wakeup ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Task,
    Softirq,
    Hardirq,
    Nmi,
    /// Switched out runnable (--state 0): nothing woke it.
    Preempted,
    /// The sleep ended, but no wakeup of it was seen.
    Unseen,
}

#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub comm: String,
    pub pid: u32,
    pub tgid: u32,
    pub kernel_stack: Stack,
    pub user_stack: Stack,
    /// The user stack stops short of its thread's start: most likely code
    /// built without frame pointers.
    pub user_stack_truncated: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Waker {
    pub context: Context,
    /// The softirq vector's name, with context "softirq".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub softirq: Option<String>,
    #[serde(flatten)]
    pub side: Side,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    pub count: u64,
    pub sleeper: Side,
    pub waker: Waker,
}

/// Which stacks the user asked to see, and whether to mark the
/// kernel/user boundary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    pub delimited: bool,
}

impl Waker {
    /// What the waker is called in the report: a task, or a context.
    pub fn label(&self) -> String {
        match self.context {
            Context::Task => self.side.comm.clone(),
            Context::Softirq => format!("[softirq {}]", self.softirq.as_deref().unwrap_or("?")),
            Context::Hardirq => "[hardirq]".into(),
            Context::Nmi => "[nmi]".into(),
            Context::Preempted => "[preempted]".into(),
            Context::Unseen => "[wakeup not seen]".into(),
        }
    }
}

impl Entry {
    /// The flame graph width: blocked time, or for preempted switch-outs
    /// (which never blocked) their run-queue delay.
    pub fn weight_us(&self) -> u64 {
        if self.waker.context == Context::Preempted {
            self.runq_ns / 1000
        } else {
            self.blocked_ns / 1000
        }
    }

    /// bcc's block: waker stacks outermost first, `--`, sleeper stacks
    /// innermost first, so the chain reads from the waker's root down to
    /// the wakeup and on into where the sleeper waited.
    pub fn text(&self, layout: Layout) -> String {
        let mut out = String::new();
        let w = &self.waker;
        let who = if w.context == Context::Task { format!("{} {}", w.side.comm, w.side.pid) } else { w.label() };
        out.push_str(&format!("    {:<16} {}\n", "waker:", who));
        let wu: Vec<String> = w.side.user_stack.names(false).into_iter().rev().collect();
        let wk: Vec<String> = w.side.kernel_stack.names(true).into_iter().rev().collect();
        push_lines(&mut out, &wu);
        if layout.delimited && !wu.is_empty() && !wk.is_empty() {
            out.push_str("    -\n");
        }
        push_lines(&mut out, &wk);
        out.push_str(&format!("    {:<16} {}\n", "--", "--"));
        let s = &self.sleeper;
        let sk = s.kernel_stack.names(true);
        let su = s.user_stack.names(false);
        push_lines(&mut out, &sk);
        if layout.delimited && !sk.is_empty() && !su.is_empty() {
            out.push_str("    -\n");
        }
        push_lines(&mut out, &su);
        out.push_str(&format!("    {:<16} {} {}\n", "target:", s.comm, s.pid));
        out.push_str(&format!(
            "        {} us blocked, {} us run-queue, {} {}\n\n",
            self.blocked_ns / 1000,
            self.runq_ns / 1000,
            self.count,
            if self.count == 1 { "time" } else { "times" }
        ));
        out
    }

    /// bcc's folded line: sleeper comm at the root, its user then kernel
    /// frames outermost first, `--`, the waker's kernel then user frames
    /// innermost first, the waker as the leaf.
    pub fn folded(&self, layout: Layout) -> String {
        let s = &self.sleeper;
        let w = &self.waker;
        let mut parts = vec![s.comm.clone()];
        let su: Vec<String> = s.user_stack.names(false).into_iter().rev().collect();
        let sk: Vec<String> = s.kernel_stack.names(true).into_iter().rev().collect();
        let delim = |a: &[String], b: &[String]| layout.delimited && !a.is_empty() && !b.is_empty();
        let d1 = delim(&su, &sk);
        parts.extend(su);
        if d1 {
            parts.push("-".into());
        }
        parts.extend(sk);
        parts.push("--".into());
        let wk = w.side.kernel_stack.names(true);
        let wu = w.side.user_stack.names(false);
        let d2 = delim(&wk, &wu);
        parts.extend(wk);
        if d2 {
            parts.push("-".into());
        }
        parts.extend(wu);
        parts.push(w.label());
        // ';' separates frames and the last space the count: keep both
        // out of names (C++ and Rust names may hold spaces, which is fine).
        let line: Vec<String> = parts.iter().map(|p| kdiag_shared::flame::folded_frame(p)).collect();
        format!("{} {}", line.join(";"), self.weight_us())
    }
}

fn push_lines(out: &mut String, lines: &[String]) {
    for l in lines {
        out.push_str("    ");
        out.push_str(l);
        out.push('\n');
    }
}

/// Does this user stack reach its thread's start? A stack cut short by a
/// frame without a frame pointer ends in an ordinary function instead.
pub fn user_stack_complete(frames: &[Frame]) -> bool {
    if frames.len() >= 127 {
        return true; // the depth limit, not a missing frame pointer
    }
    // FP unwinding often reads one garbage frame past the root.
    frames.iter().rev().take(2).any(|f| f.sym.as_deref().is_some_and(is_thread_root))
}

fn is_thread_root(sym: &str) -> bool {
    const ROOTS: [&str; 12] = [
        "_start",
        "start", // musl's thread start
        "start_c11",
        "_start_c",
        "__libc_start_main",
        "__libc_start_call_main",
        "start_thread",
        "clone",
        "clone3",
        "__clone",
        "__clone3",
        "thread_start",
    ];
    ROOTS.contains(&sym) || sym.ends_with("thread_start") || sym.starts_with("__libc_start_main")
}

/// An interrupt runs on top of whatever it interrupted; below its entry
/// frame the stack belongs to that unrelated task (or the idle loop). Cut
/// there, so one interrupt wakeup is one group, not one per victim. A
/// softirq run from local_bh_enable in a task has no entry frame and keeps
/// the task's stack, which is what raised it.
pub fn cut_at_interrupt_entry(frames: Vec<Frame>) -> Vec<Frame> {
    let entry = frames.iter().position(|f| {
        f.sym.as_deref().is_some_and(|s| {
            s.starts_with("asm_sysvec_")
                || s == "asm_common_interrupt"
                || s == "asm_exc_nmi"
                || s.starts_with("asm_spurious")
        })
    });
    match entry {
        Some(i) => frames.into_iter().take(i + 1).collect(),
        None => frames,
    }
}

/// Groups that read the same once symbolized (same threads, same frame
/// names) are one group: the kernel keys them by stack id, and an
/// interrupt stack cut short, or two call sites in one function, can give
/// one stack several ids.
pub fn merge(entries: Vec<Entry>) -> Vec<Entry> {
    kdiag_shared::stacks::merge(
        entries,
        |e| {
            let folded = e.folded(Layout { delimited: true });
            let stacks = folded.rsplit_once(' ').map(|(s, _)| s.to_string()).unwrap_or_default();
            (e.sleeper.pid, e.waker.side.pid, stacks, format!("{:?} {:?}", e.waker.context, e.waker.softirq))
        },
        |into, e| {
            into.blocked_ns += e.blocked_ns;
            into.runq_ns += e.runq_ns;
            into.count += e.count;
        },
    )
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub backend: String,
    pub duration_s: f64,
    pub stop_reason: String,
    pub groups: usize,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    pub count: u64,
    /// Tracked switch-outs and wakeups seen in the kernel.
    pub sleeps: u64,
    pub wakeups: u64,
    /// Sleeps whose blocked time was outside -m/-M.
    pub outside_min_max: u64,
    /// Sleeps that ended without a wakeup being seen (shown as such).
    pub unseen_wakeups: u64,
    pub stack_failures: StackFailures,
    /// Groups lost because the counts map was full.
    pub groups_dropped: u64,
    /// Sleeps or wakeups not recorded because their map was full.
    pub sleeps_dropped: u64,
    pub wakeups_dropped: u64,
    pub user_stacks: u64,
    pub user_stacks_truncated: u64,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut out = format!(
            "offwaketime: {} after {:.1}s, backend {}\n\
             Total: {} us blocked, {} us run-queue, {} sleeps in {} groups\n",
            self.stop_reason,
            self.duration_s,
            self.backend,
            self.blocked_ns / 1000,
            self.runq_ns / 1000,
            self.count,
            self.groups
        );
        out.push_str(&format!(
            "Not shown: {} sleeps outside -m/-M; {} lost to full maps (groups {}, sleeps {}, wakeups {})\n",
            self.outside_min_max,
            self.groups_dropped + self.sleeps_dropped + self.wakeups_dropped,
            self.groups_dropped,
            self.sleeps_dropped,
            self.wakeups_dropped
        ));
        if self.unseen_wakeups > 0 {
            out.push_str(&format!(
                "{} sleeps ended without a wakeup seen (shown as [wakeup not seen])\n",
                self.unseen_wakeups
            ));
        }
        out.push_str(&self.stack_failures.text());
        if self.user_stacks_truncated > 0 {
            out.push_str(&format!(
                "User stacks: {} of {} stop before their thread's start, most likely code built \
                 without frame pointers (-fno-omit-frame-pointer, -C force-frame-pointers=yes)\n",
                self.user_stacks_truncated, self.user_stacks
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_shared::Errno;

    fn f(sym: &str) -> Frame {
        Frame { addr: 0x1000, sym: Some(sym.into()), off: 0, module: None }
    }

    fn entry() -> Entry {
        Entry {
            kind: "wakeup",
            blocked_ns: 201_092_000,
            runq_ns: 35_000,
            count: 3,
            sleeper: Side {
                comm: "wrk:worker_0".into(),
                pid: 4449,
                tgid: 4182,
                kernel_stack: Stack::Frames(vec![f("finish_task_switch"), f("schedule"), f("ep_poll")]),
                user_stack: Stack::Frames(vec![
                    f("epoll_wait"),
                    f("Envoy::Server::WorkerImpl::threadRoutine(Envoy::Server::GuardDog&)"),
                    f("start_thread"),
                ]),
                user_stack_truncated: false,
            },
            waker: Waker {
                context: Context::Task,
                softirq: None,
                side: Side {
                    comm: "kubelet".into(),
                    pid: 1172,
                    tgid: 1172,
                    kernel_stack: Stack::Frames(vec![f("autoremove_wake_function"), f("do_syscall_64")]),
                    user_stack: Stack::Frames(vec![Frame { addr: 1, sym: None, off: 0, module: None }]),
                    user_stack_truncated: true,
                },
            },
        }
    }

    #[test]
    fn text_is_the_bcc_block() {
        let t = entry().text(Layout::default());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "    waker:           kubelet 1172",
                "    [unknown]",
                "    do_syscall_64",
                "    autoremove_wake_function",
                "    --               --",
                "    finish_task_switch",
                "    schedule",
                "    ep_poll",
                "    epoll_wait",
                "    Envoy::Server::WorkerImpl::threadRoutine(Envoy::Server::GuardDog&)",
                "    start_thread",
                "    target:          wrk:worker_0 4449",
                "        201092 us blocked, 35 us run-queue, 3 times",
                "",
            ]
        );
        let d = entry().text(Layout { delimited: true });
        assert_eq!(d.lines().filter(|l| l.trim() == "-").count(), 2, "{d}");
    }

    #[test]
    fn folded_is_bcc_order() {
        let line = entry().folded(Layout::default());
        assert_eq!(
            line,
            "wrk:worker_0;start_thread;Envoy::Server::WorkerImpl::threadRoutine(Envoy::Server::GuardDog&);\
             epoll_wait;ep_poll;schedule;finish_task_switch;--;autoremove_wake_function;do_syscall_64;\
             [unknown];kubelet 201092"
        );
    }

    #[test]
    fn interrupt_wakers_are_named_by_context() {
        let mut e = entry();
        e.waker.context = Context::Softirq;
        e.waker.softirq = Some("TIMER".into());
        e.waker.side.user_stack = Stack::NotTaken;
        assert!(e.text(Layout::default()).starts_with("    waker:           [softirq TIMER]\n    do_syscall_64"));
        assert!(e.folded(Layout::default()).ends_with(";do_syscall_64;[softirq TIMER] 201092"));
        e.waker.context = Context::Hardirq;
        assert_eq!(e.waker.label(), "[hardirq]");
    }

    #[test]
    fn failed_and_missing_stacks_are_said() {
        let mut e = entry();
        e.sleeper.kernel_stack = Stack::Failed(Errno(libc::EEXIST));
        e.sleeper.user_stack = Stack::NotTaken;
        let t = e.text(Layout::default());
        assert!(t.contains("    [Missed Kernel Stack: EEXIST]\n    target:"), "{t}");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["sleeper"]["kernel_stack"]["error"], "EEXIST");
        assert!(v["sleeper"]["user_stack"].is_null());
    }

    #[test]
    fn json_fields_are_stable() {
        let v = serde_json::to_value(entry()).unwrap();
        assert_eq!(v["type"], "wakeup");
        assert_eq!(v["blocked_ns"], 201_092_000u64);
        assert_eq!(v["waker"]["context"], "task");
        assert_eq!(v["waker"]["comm"], "kubelet");
        assert!(v["waker"].get("softirq").is_none());
        assert_eq!(v["sleeper"]["kernel_stack"][0]["sym"], "finish_task_switch");
        assert_eq!(v["sleeper"]["user_stack_truncated"], false);
    }

    #[test]
    fn truncated_user_stacks() {
        assert!(user_stack_complete(&[f("read"), f("main"), f("__libc_start_main"), f("_start")]));
        assert!(user_stack_complete(&[
            f("work"),
            f("start_thread"),
            Frame { addr: 9, sym: None, off: 0, module: None }
        ]));
        assert!(user_stack_complete(&[f("x"), f("std::sys::pal::unix::thread::Thread::new::thread_start")]));
        assert!(!user_stack_complete(&[f("read"), f("some_fn")]));
        assert!(!user_stack_complete(&[]));
    }

    #[test]
    fn interrupt_stacks_end_at_the_entry() {
        let st = vec![f("try_to_wake_up"), f("hrtimer_interrupt"), f("asm_sysvec_apic_timer_interrupt"), f("do_idle")];
        let names: Vec<String> = cut_at_interrupt_entry(st).iter().map(|f| f.sym.clone().unwrap()).collect();
        assert_eq!(names, ["try_to_wake_up", "hrtimer_interrupt", "asm_sysvec_apic_timer_interrupt"]);
        let bh = vec![
            f("try_to_wake_up"),
            f("net_rx_action"),
            f("handle_softirqs"),
            f("__local_bh_enable_ip"),
            f("tcp_sendmsg"),
        ];
        assert_eq!(cut_at_interrupt_entry(bh.clone()), bh);
    }

    #[test]
    fn same_names_merge() {
        let a = entry();
        let mut b = entry();
        if let Stack::Frames(f) = &mut b.sleeper.kernel_stack {
            f[0].addr = 0x2000;
        }
        let mut c = entry();
        c.waker.side.pid = 1;
        let m = merge(vec![a, b, c]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].count, 6);
        assert_eq!(m[0].blocked_ns, 2 * 201_092_000);
    }

    #[test]
    fn summary_mentions_what_was_lost() {
        let s = Summary {
            stack_failures: StackFailures { eexist: 3, ..Default::default() },
            user_stacks: 10,
            user_stacks_truncated: 4,
            ..Default::default()
        };
        let t = s.text();
        assert!(t.contains("Stack captures failed: 3 (EEXIST 3"), "{t}");
        assert!(t.contains("raise --stack-storage-size"), "{t}");
        assert!(t.contains("4 of 10 stop before their thread's start"), "{t}");
    }
}

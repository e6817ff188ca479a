//! The call tree: each step's kernel stack, tracer frames removed, cut at
//! the innermost context boundary (an interrupt entry, softirq processing,
//! syscall entry, kthread start) so that an interrupt is its own root
//! instead of a branch of whatever syscall it happened to interrupt; then
//! merged into a trie, children in order of first sighting, each node
//! counting the steps that passed through it. Rendered in the layout of
//! the seed's stack-merging script.

use kdiag_shared::symbolize::is_tracer_frame;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Syscall,
    Hardirq,
    Softirq,
    Kthread,
    Idle,
    /// No boundary in the captured stack (truncated, or unusual entry).
    Unknown,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Syscall => "syscall",
            Context::Hardirq => "hardirq",
            Context::Softirq => "softirq",
            Context::Kthread => "kthread",
            Context::Idle => "idle",
            Context::Unknown => "?",
        }
    }
}

/// Which context a frame opens, if any. Names are x86-64's, across the
/// kernels we run on (3.10's `__softirqentry_text_start` to 6.x's
/// `handle_softirqs`, `x64_sys_call`).
pub fn boundary(sym: &str) -> Option<Context> {
    const SYSCALL: [&str; 11] = [
        "entry_SYSCALL_64",
        "entry_SYSCALL_64_after_hwframe",
        "do_syscall_64",
        "x64_sys_call",
        "entry_SYSCALL_compat",
        "entry_SYSENTER_compat",
        "entry_SYSENTER_compat_after_hwframe",
        "entry_INT80_compat",
        "do_fast_syscall_32",
        "__do_fast_syscall_32",
        "do_int80_syscall_32",
    ];
    const HARDIRQ_PREFIX: [&str; 3] = ["asm_sysvec_", "sysvec_", "__sysvec_"];
    const HARDIRQ: [&str; 6] =
        ["asm_common_interrupt", "common_interrupt", "__common_interrupt", "asm_exc_nmi", "exc_nmi", "do_IRQ"];
    const SOFTIRQ: [&str; 3] = ["handle_softirqs", "__do_softirq", "__softirqentry_text_start"];
    const KTHREAD: [&str; 3] = ["ret_from_fork_asm", "ret_from_fork", "kthread"];
    const IDLE: [&str; 8] = [
        "secondary_startup_64",
        "secondary_startup_64_no_verify",
        "common_startup_64",
        "start_secondary",
        "x86_64_start_kernel",
        "x86_64_start_reservations",
        "rest_init",
        "cpu_startup_entry",
    ];
    if SYSCALL.contains(&sym) {
        Some(Context::Syscall)
    } else if HARDIRQ.contains(&sym) || HARDIRQ_PREFIX.iter().any(|p| sym.starts_with(p)) {
        Some(Context::Hardirq)
    } else if SOFTIRQ.contains(&sym) {
        Some(Context::Softirq)
    } else if KTHREAD.contains(&sym) {
        Some(Context::Kthread)
    } else if IDLE.contains(&sym) {
        Some(Context::Idle)
    } else {
        None
    }
}

/// Cut a root-first stack at its innermost context boundary, widened to
/// the outermost frame of that same entry sequence (asm_sysvec_X, then
/// sysvec_X, then __sysvec_X form one entry).
pub fn cut<S: AsRef<str>>(root_first: &[S]) -> (Context, &[S]) {
    let Some(inner) = root_first.iter().rposition(|f| boundary(f.as_ref()).is_some()) else {
        return (Context::Unknown, root_first);
    };
    let ctx = boundary(root_first[inner].as_ref()).unwrap();
    let mut start = inner;
    while start > 0 && boundary(root_first[start - 1].as_ref()) == Some(ctx) {
        start -= 1;
    }
    (ctx, &root_first[start..])
}

/// A step's path in the tree: context, then names root first, ending at
/// the probe (`leaf`), which is added when the stack does not already end
/// in it (tracepoints; fentry, whose stack starts at the caller).
pub fn path(innermost_first: &[String], leaf: &str) -> (Context, Vec<String>) {
    let root_first: Vec<String> = innermost_first.iter().rev().filter(|s| !is_tracer_frame(s)).cloned().collect();
    let (ctx, kept) = cut(&root_first);
    let mut p = kept.to_vec();
    if p.last().map(String::as_str) != Some(leaf) {
        p.push(leaf.to_string());
    }
    (ctx, p)
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub name: String,
    pub hits: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

#[derive(Debug, Serialize)]
pub struct Root {
    pub context: Context,
    #[serde(flatten)]
    pub node: Node,
}

#[derive(Debug, Default, Serialize)]
pub struct Tree {
    pub roots: Vec<Root>,
}

impl Tree {
    pub fn insert(&mut self, ctx: Context, path: &[String]) {
        let Some(first) = path.first() else { return };
        let i = match self.roots.iter().position(|r| r.node.name == *first && r.context == ctx) {
            Some(i) => i,
            None => {
                self.roots.push(Root { context: ctx, node: Node { name: first.clone(), hits: 0, children: vec![] } });
                self.roots.len() - 1
            }
        };
        let mut node = &mut self.roots[i].node;
        node.hits += 1;
        for name in &path[1..] {
            let j = match node.children.iter().position(|c| c.name == *name) {
                Some(j) => j,
                None => {
                    node.children.push(Node { name: name.clone(), hits: 0, children: vec![] });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[j];
            node.hits += 1;
        }
    }

    /// The seed's layout: `(root): NAME`, then each node as `|` and
    /// `\-NAME`, indented one column per level; ours adds the hit count
    /// and the context of each root.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, r) in self.roots.iter().enumerate() {
            if k > 0 {
                out.push('\n');
            }
            out.push_str(&format!("(root): {} [{}]\n", r.node.name, r.context.name()));
            render_node(&r.node, 0, &mut out);
        }
        out
    }

    /// Folded stacks (`ctx;a;b;leaf N`), for flamegraph.pl and inferno;
    /// counts are the steps that ended exactly there.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for r in &self.roots {
            let mut stack = vec![format!("[{}]", r.context.name())];
            fold(&r.node, &mut stack, &mut out);
        }
        out
    }
}

fn render_node(n: &Node, depth: usize, out: &mut String) {
    let pad = " ".repeat(depth);
    out.push_str(&format!("{pad}|\n{pad}\\-{} ({})\n", n.name, n.hits));
    for c in &n.children {
        render_node(c, depth + 1, out);
    }
}

fn fold(n: &Node, stack: &mut Vec<String>, out: &mut String) {
    stack.push(n.name.clone());
    let below: u64 = n.children.iter().map(|c| c.hits).sum();
    if n.hits > below {
        out.push_str(&format!("{} {}\n", stack.join(";"), n.hits - below));
    }
    for c in &n.children {
        fold(c, stack, out);
    }
    stack.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// Recorded on the host (6.18) with `blkreq --json` on a loop device:
    /// the submission of an O_DIRECT write, innermost first as
    /// bpf_get_stack returns it; `[bpf]` is the JIT-ed program.
    const SUBMIT: &str = "[bpf] [bpf] bpf_trace_run1 blk_account_io_start blk_mq_submit_bio __submit_bio \
        submit_bio_noacct_nocheck submit_bio_wait __blkdev_direct_IO_simple blkdev_write_iter vfs_write \
        ksys_write do_syscall_64 entry_SYSCALL_64_after_hwframe";
    /// The same request's completion, recorded in the same run: softirq
    /// work picked up by ksoftirqd, a kthread.
    const COMPLETE_KSOFTIRQD: &str = "[bpf] [bpf] bpf_trace_run3 blk_update_request blk_mq_end_request \
        blk_done_softirq handle_softirqs run_ksoftirqd smpboot_thread_fn kthread ret_from_fork \
        ret_from_fork_asm";
    /// Constructed (no such capture on the host yet): a completion in an
    /// IPI that interrupted the idle loop, with the frames x86-64 shows.
    const COMPLETE_IRQ: &str = "bpf_prog_3c1f_brq_tb_4 bpf_trace_run3 __bpf_trace_block_rq_complete \
        blk_update_request blk_mq_end_request lo_complete_rq blk_complete_reqs \
        __sysvec_call_function_single sysvec_call_function_single asm_sysvec_call_function_single \
        pv_native_safe_halt default_idle do_idle cpu_startup_entry start_secondary \
        common_startup_64";
    /// Softirq run on interrupt exit, inside a syscall.
    const SOFTIRQ_IN_SYSCALL: &str = "blk_update_request blk_mq_end_request blk_done_softirq \
        handle_softirqs __irq_exit_rcu sysvec_apic_timer_interrupt asm_sysvec_apic_timer_interrupt \
        vfs_read ksys_read do_syscall_64 entry_SYSCALL_64_after_hwframe";
    const KWORKER: &str = "blk_mq_start_request loop_queue_rq blk_mq_dispatch_rq_list \
        __blk_mq_sched_dispatch_requests blk_mq_run_work_fn process_one_work worker_thread kthread \
        ret_from_fork ret_from_fork_asm";

    #[test]
    fn syscall_stack_keeps_its_entry_as_root_and_loses_tracer_frames() {
        let (ctx, p) = path(&v(SUBMIT), "tracepoint:block_io_start");
        assert_eq!(ctx, Context::Syscall);
        assert_eq!(p.first().unwrap(), "entry_SYSCALL_64_after_hwframe");
        assert_eq!(&p[p.len() - 3..], ["blk_mq_submit_bio", "blk_account_io_start", "tracepoint:block_io_start"]);
        assert!(!p.iter().any(|f| f.contains("bpf") || f.contains("traceiter")), "{p:?}");
    }

    #[test]
    fn interrupt_is_cut_from_the_idle_loop_it_interrupted() {
        let (ctx, p) = path(&v(COMPLETE_IRQ), "tracepoint:block_rq_complete");
        assert_eq!(ctx, Context::Hardirq);
        assert_eq!(p[0], "asm_sysvec_call_function_single");
        assert!(!p.iter().any(|f| f == "do_idle"), "{p:?}");
        assert_eq!(p.last().unwrap(), "tracepoint:block_rq_complete");
    }

    #[test]
    fn softirq_on_irq_exit_is_its_own_root() {
        let (ctx, p) = path(&v(SOFTIRQ_IN_SYSCALL), "blk_update_request");
        assert_eq!(ctx, Context::Softirq);
        assert_eq!(p, ["handle_softirqs", "blk_done_softirq", "blk_mq_end_request", "blk_update_request"]);
    }

    #[test]
    fn kthread_root_and_function_probe_not_duplicated() {
        let (ctx, p) = path(&v(KWORKER), "blk_mq_start_request");
        assert_eq!(ctx, Context::Kthread);
        assert_eq!(p[0], "ret_from_fork_asm");
        assert_eq!(p.iter().filter(|f| *f == "blk_mq_start_request").count(), 1);
    }

    #[test]
    fn softirq_in_ksoftirqd_is_softirq_not_kthread() {
        let (ctx, p) = path(&v(COMPLETE_KSOFTIRQD), "tracepoint:block_rq_complete");
        assert_eq!(ctx, Context::Softirq);
        assert_eq!(
            p,
            [
                "handle_softirqs",
                "blk_done_softirq",
                "blk_mq_end_request",
                "blk_update_request",
                "tracepoint:block_rq_complete"
            ]
        );
    }

    #[test]
    fn no_boundary_keeps_everything() {
        let (ctx, p) = path(&v("b a"), "leaf");
        assert_eq!((ctx, p), (Context::Unknown, v("a b leaf")));
    }

    fn merged() -> Tree {
        let mut t = Tree::default();
        for (s, leaf) in [
            (SUBMIT, "tracepoint:block_io_start"),
            (SUBMIT, "tracepoint:block_io_start"),
            (COMPLETE_IRQ, "tracepoint:block_rq_complete"),
            (KWORKER, "blk_mq_start_request"),
        ] {
            let (ctx, p) = path(&v(s), leaf);
            t.insert(ctx, &p);
        }
        t
    }

    #[test]
    fn merge_counts_and_keeps_first_sighting_order() {
        let t = merged();
        let roots: Vec<_> = t.roots.iter().map(|r| (r.node.name.as_str(), r.context, r.node.hits)).collect();
        assert_eq!(
            roots,
            [
                ("entry_SYSCALL_64_after_hwframe", Context::Syscall, 2),
                ("asm_sysvec_call_function_single", Context::Hardirq, 1),
                ("ret_from_fork_asm", Context::Kthread, 1),
            ]
        );
        // Two identical stacks share one chain.
        assert_eq!(t.roots[0].node.children.len(), 1);
    }

    #[test]
    fn renders_in_the_seed_layout() {
        let mut t = Tree::default();
        t.insert(Context::Syscall, &v("entry do_syscall_64 f g"));
        t.insert(Context::Syscall, &v("entry do_syscall_64 f h"));
        t.insert(Context::Syscall, &v("entry do_syscall_64 k"));
        let want = "\
(root): entry [syscall]
|
\\-entry (3)
 |
 \\-do_syscall_64 (3)
  |
  \\-f (2)
   |
   \\-g (1)
   |
   \\-h (1)
  |
  \\-k (1)
";
        assert_eq!(t.render(), want);
        assert_eq!(t.folded(), "[syscall];entry;do_syscall_64;f;g 1\n[syscall];entry;do_syscall_64;f;h 1\n[syscall];entry;do_syscall_64;k 1\n");
    }
}

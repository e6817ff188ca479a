//! blkreq on the running kernel: the real binary, real BPF programs, and
//! real block I/O that the test makes itself, with O_DIRECT on a loop
//! device of its own, so that every request it asserts on is one it
//! caused.

use kdiag_testkit::{held_by, run, run_watching_programs, spawn};
use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_blkreq");
const BANNER: &str = "Ctrl-C to end";
const START: Duration = Duration::from_secs(30);

/// A loop device over a file in /tmp, in direct-I/O mode; detached and
/// deleted on drop.
struct LoopDev {
    dev: String,
    file: String,
}

impl LoopDev {
    fn new(tag: &str) -> LoopDev {
        kdiag_testkit::needs_root("sets up a loop device");
        let file = format!("/tmp/blkreq-test-{}-{tag}.img", std::process::id());
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(32 << 20).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on", &file])
            .output()
            .expect("losetup (util-linux)");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        LoopDev { dev, file }
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A 4 KiB buffer aligned for O_DIRECT.
struct Aligned(*mut u8);

impl Aligned {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(4096, 4096) {
        Ok(l) => l,
        Err(_) => panic!(),
    };
    fn new() -> Self {
        // SAFETY: non-zero size layout.
        let p = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        assert!(!p.is_null());
        Aligned(p)
    }
    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: 4096 bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0, 4096) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with the same layout.
        unsafe { std::alloc::dealloc(self.0, Self::LAYOUT) }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    ReadWrite,
    WritesOnly,
}

/// Direct 4 KiB writes and reads on `dev` from a thread of this process
/// until dropped; counts what it did.
struct Io {
    stop: Arc<AtomicBool>,
    pub done: Arc<AtomicU64>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Io {
    fn start(dev: &str, mix: Mix) -> Io {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d, dev) = (stop.clone(), done.clone(), dev.to_string());
        let h = std::thread::spawn(move || {
            let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&dev).unwrap();
            let mut buf = Aligned::new();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let off = (i % 1024) * 4096;
                buf.buf()[0] = i as u8;
                f.write_at(buf.buf(), off).unwrap();
                if mix == Mix::ReadWrite {
                    f.read_at(buf.buf(), off).unwrap();
                }
                d.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Io { stop, done, h: Some(h) }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            h.join().unwrap();
        }
    }
}

fn summary(lines: &[Value]) -> &Value {
    let s = lines.last().expect("no output");
    assert_eq!(s["type"], "summary", "{s}");
    s
}

fn requests(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "request").collect()
}

fn steps(r: &Value) -> Vec<&str> {
    r["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect()
}

/// Every root-to-node path in the JSON tree that ends at `name`, each as
/// (context, names from the root).
fn paths_to(tree: &Value, name: &str) -> Vec<(String, Vec<String>)> {
    fn walk(n: &Value, path: &mut Vec<String>, name: &str, ctx: &str, out: &mut Vec<(String, Vec<String>)>) {
        path.push(n["name"].as_str().unwrap().to_string());
        if path.last().unwrap() == name {
            out.push((ctx.to_string(), path.clone()));
        }
        for c in n["children"].as_array().map(|v| v.as_slice()).unwrap_or(&[]) {
            walk(c, path, name, ctx, out);
        }
        path.pop();
    }
    let mut out = vec![];
    for r in tree["roots"].as_array().unwrap() {
        walk(r, &mut vec![], name, r["context"].as_str().unwrap(), &mut out);
    }
    out
}

/// The whole story on three requests: `-n 3` admits exactly three of ours,
/// follows each to its completion and stops by itself; the tree holds the
/// submission path under the syscall and the completion path in its own
/// context; each timeline is in time order.
#[test]
fn three_requests_tree_and_timeline() {
    let lo = LoopDev::new("tree");
    let io = Io::start(&lo.dev, Mix::ReadWrite);
    let out = run(BIN, &["--dev", lo.name(), "-n", "3", "--json", "30"]);
    drop(io);
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let s = summary(&lines);
    assert_eq!(s["stop_reason"], "tracked 3 requests", "{s}");
    assert_eq!(s["requests"], 3, "{s}");
    assert_eq!(s["completed"], 3, "{s}");
    assert_eq!(s["steps_lost"], 0, "{s}");
    // The host has no kprobes and no fentry: tracepoints only, and said so.
    assert!(
        out.stderr.contains("following requests through block tracepoints and their stacks only"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("fentry: EPERM"), "{}", out.stderr);

    let reqs = requests(&lines);
    assert_eq!(reqs.len(), 3, "{}", out.stdout);
    let sessions: std::collections::BTreeSet<u64> = reqs.iter().map(|r| r["session"].as_u64().unwrap()).collect();
    assert_eq!(sessions.len(), 3, "session ids must be distinct");
    for r in &reqs {
        assert_eq!(r["dev"], lo.name(), "{r}");
        assert!(r["op"] == "READ" || r["op"] == "WRITE", "{r}");
        assert!(r["completed"].as_bool().unwrap(), "{r}");
        // Submitted by this test's I/O thread, in this process.
        let first = &r["steps"][0];
        assert_eq!(first["pid"], std::process::id(), "{r}");
        assert_eq!(first["context"], "syscall", "{r}");
        assert_eq!(first["flags"][0], "admit", "{r}");
        // Ordered in time, deltas consistent, and the life cycle in order.
        let st = r["steps"].as_array().unwrap();
        let mono: Vec<u64> = st.iter().map(|s| s["mono_ns"].as_u64().unwrap()).collect();
        assert!(mono.windows(2).all(|w| w[0] <= w[1]), "{r}");
        for w in st.windows(2) {
            assert_eq!(
                w[1]["delta_ns"].as_u64().unwrap(),
                w[1]["mono_ns"].as_u64().unwrap() - w[0]["mono_ns"].as_u64().unwrap()
            );
        }
        let names = steps(r);
        let at = |n: &str| names.iter().position(|s| *s == n).unwrap_or_else(|| panic!("no {n} in {names:?}"));
        assert_eq!(at("tracepoint:block_io_start"), 0, "{names:?}");
        assert!(at("tracepoint:block_rq_issue") < at("tracepoint:block_rq_complete"), "{names:?}");
        assert!(at("tracepoint:block_rq_complete") <= at("tracepoint:block_io_done"), "{names:?}");
    }

    let tree = lines.iter().find(|l| l["type"] == "tree").expect("tree line");
    // Submission: syscall entry down to blk_mq_submit_bio, where the
    // request is born and block_io_start fires.
    let submit = paths_to(tree, "tracepoint:block_io_start");
    assert!(!submit.is_empty(), "{tree}");
    for (ctx, p) in &submit {
        assert_eq!(ctx, "syscall", "{p:?}");
        assert!(p[0].starts_with("entry_SYSCALL_64"), "{p:?}");
        assert!(p.iter().any(|f| f == "blk_mq_submit_bio"), "{p:?}");
        assert!(!p.iter().any(|f| f.contains("bpf")), "tracer frames left: {p:?}");
    }
    // Completion: blk_update_request, in an interrupt, softirq or worker,
    // never hanging below the submitting syscall.
    let complete = paths_to(tree, "tracepoint:block_rq_complete");
    assert!(!complete.is_empty(), "{tree}");
    for (ctx, p) in &complete {
        assert!(["softirq", "hardirq", "kthread"].contains(&ctx.as_str()), "{ctx}: {p:?}");
        assert_eq!(p[p.len() - 2], "blk_update_request", "{p:?}");
        assert!(!p.iter().any(|f| f.starts_with("entry_SYSCALL")), "{p:?}");
    }
    // Hit counts: the roots together count every step of every request.
    let roots = tree["roots"].as_array().unwrap();
    let all_steps: u64 = roots.iter().map(|r| r["hits"].as_u64().unwrap()).sum();
    assert_eq!(all_steps, s["steps"].as_u64().unwrap(), "{tree}");
}

/// The default output is the seed's indented tree, and --timeline prints
/// each request's steps with increasing times.
#[test]
fn text_tree_and_timeline_layout() {
    let lo = LoopDev::new("text");
    let io = Io::start(&lo.dev, Mix::WritesOnly);
    let tree = run(BIN, &["--dev", lo.name(), "-n", "2", "30"]);
    let tl = run(BIN, &["--dev", lo.name(), "-n", "2", "--timeline", "30"]);
    drop(io);
    assert!(tree.status.success(), "{tree:?}");
    assert!(tree.stdout.starts_with("(root): entry_SYSCALL_64"), "{}", tree.stdout);
    assert!(tree.stdout.contains("\n|\n\\-entry_SYSCALL_64"), "{}", tree.stdout);
    assert!(tree.stdout.contains("\\-blk_mq_submit_bio ("), "{}", tree.stdout);
    assert!(tree.stdout.contains("\\-tracepoint:block_rq_complete ("), "{}", tree.stdout);
    assert!(tree.stdout.contains("blkreq: tracked 2 requests after"), "{}", tree.stdout);

    assert!(tl.status.success(), "{tl:?}");
    let blocks: Vec<&str> = tl.stdout.split("\nrequest ").collect();
    let mut seen = 0;
    for b in blocks {
        let times: Vec<f64> = b
            .lines()
            .filter(|l| l.contains("tracepoint:"))
            .map(|l| l.split_whitespace().next().unwrap().parse::<f64>().unwrap())
            .collect();
        if times.is_empty() {
            continue;
        }
        seen += 1;
        assert_eq!(times[0], 0.0, "{b}");
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{b}");
        assert!(b.contains("WRITE"), "{b}");
    }
    assert_eq!(seen, 2, "{}", tl.stdout);
}

/// Filters act at admission in the kernel: only READs with --op read;
/// nothing from this process with someone else's --pid; ours with ours.
#[test]
fn filters_apply_at_admission() {
    let lo = LoopDev::new("filters");
    let io = Io::start(&lo.dev, Mix::ReadWrite);
    let reads = run(BIN, &["--dev", lo.name(), "-n", "3", "--op", "read", "--json", "30"]);
    let mine = run(BIN, &["--dev", lo.name(), "-n", "2", "--pid", &std::process::id().to_string(), "--json", "30"]);
    let others = run(BIN, &["--dev", lo.name(), "-n", "2", "--pid", "1", "--json", "2"]);
    let comm = run(BIN, &["--dev", lo.name(), "-n", "1", "--comm", "no-such-task", "--json", "2"]);
    let done = io.done.load(Ordering::Relaxed);
    drop(io);

    let lines = reads.json_lines();
    assert_eq!(summary(&lines)["requests"], 3, "{}", reads.stdout);
    assert_eq!(requests(&lines).len(), 3, "{}", reads.stdout);
    for r in requests(&lines) {
        assert_eq!(r["op"], "READ", "{r}");
    }
    assert!(summary(&lines)["filtered"].as_u64().unwrap() > 0, "the writes were not filtered: {}", reads.stdout);

    assert_eq!(summary(&mine.json_lines())["requests"], 2, "{}", mine.stdout);
    for (out, what) in [(&others, "--pid 1"), (&comm, "--comm")] {
        let lines = out.json_lines();
        let s = summary(&lines);
        assert_eq!(s["requests"], 0, "{what}: {s}");
        assert_eq!(s["stop_reason"], "duration ended", "{what}: {s}");
        assert!(s["filtered"].as_u64().unwrap() > 0, "{what}: no I/O seen at all: {s}");
    }
    assert!(done > 10, "the I/O thread did only {done} writes");
}

/// -x removes a tracepoint from the output; the tracker still admits at
/// block_io_start even when that one is excluded.
#[test]
fn exclude_hides_tracepoints_at_run_time() {
    let lo = LoopDev::new("exclude");
    let io = Io::start(&lo.dev, Mix::WritesOnly);
    let out = run(BIN, &["--dev", lo.name(), "-n", "2", "-x", "block_rq_issue", "-x", "block_io_*", "--json", "30"]);
    drop(io);
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    assert_eq!(summary(&lines)["requests"], 2, "{}", out.stdout);
    assert_eq!(requests(&lines).len(), 2, "{}", out.stdout);
    for r in requests(&lines) {
        let names = steps(r);
        assert!(
            !names.iter().any(|n| *n == "tracepoint:block_rq_issue" || n.starts_with("tracepoint:block_io_")),
            "{names:?}"
        );
        assert!(names.contains(&"tracepoint:block_rq_complete"), "{names:?}");
    }
}

fn list_names(args: &[&str]) -> Vec<String> {
    let out = run(BIN, args);
    assert!(out.status.success(), "{out:?}");
    out.stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("NAME"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// The seed author's wish, one command line: all blk_* but
/// blk_mq_free_request. Exactly that one function goes.
#[test]
fn list_excludes_exactly_one_function() {
    let all = list_names(&["--list", "-i", "blk_*"]);
    let but = list_names(&["--list", "-i", "blk_*", "-x", "blk_mq_free_request"]);
    assert!(all.contains(&"blk_mq_free_request".to_string()), "{all:?}");
    assert!(all.iter().filter(|n| !n.starts_with("tracepoint:")).all(|n| n.starts_with("blk_")), "{all:?}");
    let gone: Vec<&String> = all.iter().filter(|n| !but.contains(n)).collect();
    assert_eq!(gone, [&"blk_mq_free_request".to_string()]);
    assert_eq!(but.len(), all.len() - 1);
    // The block tracepoints stay, the tracer plumbing never shows.
    assert!(but.contains(&"tracepoint:block_io_start".to_string()), "{but:?}");
    assert!(!all.iter().any(|n| n.starts_with("__traceiter_") || n.starts_with("__bpf_trace_")), "{all:?}");
}

/// --list prints positions and methods, and blkreq itself loads and
/// attaches nothing while it runs (watched through its own fds).
#[test]
fn list_attaches_nothing() {
    // The backend probes load tiny programs of their own; blkreq's are
    // named brq_*.
    let (out, names) = run_watching_programs(BIN, &["--list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!names.iter().any(|n| n.starts_with("brq_")), "--list loaded {names:?}");
    let line =
        out.stdout.lines().find(|l| l.starts_with("tracepoint:block_rq_complete")).expect("block_rq_complete listed");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&f[1..4], ["0", "tp_btf", "end"], "{line}");
    let two = out.stdout.lines().find(|l| l.starts_with("attempt_merge ")).expect("attempt_merge listed");
    assert_eq!(two.split_whitespace().nth(1), Some("1,2"), "{two}");
    assert!(out.stdout.contains("fentry: EPERM at load"), "{}", out.stdout);
}

#[test]
fn bad_input_is_one_line_and_attaches_nothing() {
    let cases: &[(&[&str], &str)] = &[
        (&["--dev", "nosuchdisk"], "unknown block device 'nosuchdisk'"),
        (&["--dev", "250:250"], "unknown block device '250:250'"),
        (&["-i", "blk_[mq"], "bad glob 'blk_[mq': unclosed '['"),
        (&["-i", "no_such_function_*"], "-i 'no_such_function_*' matches no kernel function"),
        (&["-x", "no_such_function"], "-x 'no_such_function' matches no kernel function or tracepoint"),
        (&["--op", "wirte"], "unknown --op 'wirte' (this kernel has: read, write"),
        (&["-n", "0"], "COUNT must be between 1 and 65536"),
        (&["--backend", "uprobe"], "unknown backend 'uprobe'"),
        (&["--backend", "fentry"], "backend fentry is not usable on this kernel: EPERM at load"),
        (&["--tree", "--json"], "cannot be used with"),
        (&["soon"], "invalid duration 'soon'"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("brq_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: refused, exit 2");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("blkreq: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

/// Run on an idle loop device (nothing to admit, so only the duration or
/// a signal ends it), check what it holds, and that all of it is released.
fn detaches_everything(stop: Option<i32>, reason: &str) {
    let lo = LoopDev::new("detach");
    let args = ["--dev", lo.name(), "--json", "3"];
    let mut r = spawn(BIN, if stop.is_some() { &args[..3] } else { &args[..] });
    let banner = r.wait_for_stderr(BANNER, START);
    let held = held_by(r.pid());
    // "through 0 functions and N tracepoints": one program and one link each.
    let tps: usize = banner.split(" functions and ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(tps >= 8, "{banner}");
    assert_eq!(held.progs.len(), tps, "{held:?} {banner}");
    assert_eq!(held.links.len(), tps, "{held:?} {banner}");
    let (_, s) = r.end_with(stop, reason);
    assert_eq!(s["requests"], 0);
    kdiag_testkit::assert_released(&held, Duration::from_secs(5));
}

kdiag_testkit::detach_tests!(detaches_everything);

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["1"]);
}

/// A stop request at any moment of start-up or run ends it cleanly. Only
/// requests of a task that never does I/O are followed, so the run never
/// ends by itself first.
#[test]
fn stops_cleanly_at_any_moment() {
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &["--comm", "kdiag-no-such", "30"]);
}

/// `| head`: a reader that goes away ends the run quietly, exit 0; a gone
/// stderr is no reason to panic.
#[test]
fn survives_closed_outputs() {
    kdiag_testkit::assert_survives_closed_outputs(BIN, &["--comm", "kdiag-no-such", "1"]);
}

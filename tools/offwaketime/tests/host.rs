//! offwaketime on the running kernel: the real binary, real BPF programs,
//! and a workload (tests/workload/main.rs, built here with frame pointers)
//! whose sleeps and wakers are known.

use kdiag_testkit::consumers::pprof_raw;
use kdiag_testkit::{held_by, run, run_watching_programs, spawn, Held, Output, Running};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_offwaketime");
const BANNER: &str = "tracing blocked time of";
const START: Duration = Duration::from_secs(20);
const SLEEP_MS: u64 = 50;
const ROUNDS: u32 = 10;

/// The workload, compiled once per test run with frame pointers, for the
/// target these tests were built for.
fn workload_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("owt-workload");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workload/main.rs");
        let target = if cfg!(target_env = "musl") { "x86_64-unknown-linux-musl" } else { "x86_64-unknown-linux-gnu" };
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let st = Command::new(rustc)
            .args(["--edition", "2021", "-O", "-C", "force-frame-pointers=yes", "--target", target, "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running rustc for the workload");
        assert!(st.success(), "compiling the workload failed");
        out
    })
}

struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// What the workload measured itself: the writer's total nanosleep time
/// and the reader's total time in its read loop.
struct Measured {
    slept_ns: u64,
    read_ns: u64,
}

impl Workload {
    fn start(sleep_ms: u64, rounds: u32) -> Self {
        let mut child = Command::new(workload_bin())
            .args([sleep_ms.to_string(), rounds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Workload { child, stdin, stdout }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Start the rounds and wait until they are over.
    fn run_rounds(&mut self) -> Measured {
        self.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        Measured { slept_ns: field("slept_ns="), read_ns: field("read_ns=") }
    }

    /// Let it exit.
    fn finish(mut self) {
        drop(self.stdin.take());
        self.child.wait().unwrap();
    }
}

/// Trace a workload run with `args` (after `-p PID`), stop the tool with
/// SIGINT once the rounds are done, while the workload still lives.
fn trace_workload(args: &[&str]) -> (Output, Measured, String) {
    let mut w = Workload::start(SLEEP_MS, ROUNDS);
    let pid = w.pid();
    let mut all = vec!["-p", pid.as_str()];
    all.extend_from_slice(args);
    let mut r = spawn(BIN, &all);
    r.wait_for_stderr(BANNER, START);
    let m = w.run_rounds();
    r.signal(libc::SIGINT);
    let out = r.wait();
    w.finish();
    assert!(out.status.success(), "{out:?}");
    (out, m, pid)
}

fn syms(stack: &Value) -> Vec<String> {
    stack.as_array().map(|a| a.iter().filter_map(|f| f["sym"].as_str().map(String::from)).collect()).unwrap_or_default()
}

fn has(stack: &Value, needle: &str) -> bool {
    syms(stack).iter().any(|s| s.contains(needle))
}

fn groups(out: &Output) -> (Vec<Value>, Value) {
    let mut lines = out.json_lines();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{summary}");
    (lines, summary)
}

fn within(got: u64, want: u64, frac: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * frac
}

#[test]
fn pipe_wakeups_have_both_stacks_and_the_right_time() {
    wakeups_have_both_stacks_and_the_right_time("tp_btf", &["--json"]);
}

/// The other rungs are held to the same counts and times (each against
/// what the workload measured, so against each other too).
#[test]
fn other_backends_see_the_same_wakeups() {
    for backend in ["raw_tp", "tracepoint"] {
        wakeups_have_both_stacks_and_the_right_time(backend, &["--json", "--backend", backend]);
    }
}

fn wakeups_have_both_stacks_and_the_right_time(backend: &str, args: &[&str]) {
    let (out, m, pid) = trace_workload(args);
    let (groups, summary) = groups(&out);
    assert_eq!(summary["backend"], backend, "{summary}");
    assert!(out.stderr.contains(&format!("backend {backend} (")), "{}", out.stderr);
    assert_eq!(out.stderr.contains("forced by --backend"), args.contains(&"--backend"), "{}", out.stderr);

    // The reader, blocked in pipe_read, woken by the writer thread from
    // pipe_write, in task context.
    let pipe: Vec<&Value> = groups
        .iter()
        .filter(|g| g["sleeper"]["comm"] == "owt-reader" && has(&g["sleeper"]["kernel_stack"], "pipe_read"))
        .collect();
    assert!(!pipe.is_empty(), "no pipe_read sleep in {groups:#?}");
    for g in &pipe {
        assert_eq!(g["sleeper"]["tgid"].as_u64().unwrap().to_string(), pid);
        assert_eq!(g["waker"]["context"], "task", "{g}");
        assert_eq!(g["waker"]["comm"], "owt-writer", "{g}");
        assert!(has(&g["waker"]["kernel_stack"], "pipe_write"), "{g}");
        // Demangled Rust frames of the workload on both sides.
        assert!(syms(&g["sleeper"]["user_stack"]).iter().any(|s| s == "main::pipe_reader_blocks"), "{g}");
        assert!(syms(&g["waker"]["user_stack"]).iter().any(|s| s == "main::pipe_writer_wakes"), "{g}");
        assert!(!syms(&g["sleeper"]["user_stack"]).iter().any(|s| s.starts_with("_ZN")), "{g}");
        assert_eq!(g["sleeper"]["user_stack_truncated"], false, "{g}");
    }
    let blocked: u64 = pipe.iter().map(|g| g["blocked_ns"].as_u64().unwrap()).sum();
    let runq: u64 = pipe.iter().map(|g| g["runq_ns"].as_u64().unwrap()).sum();
    let count: u64 = pipe.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(count, ROUNDS as u64, "{pipe:#?}\n{summary}");
    // The reader's loop is all waiting: its blocked time plus run-queue
    // delay is its measured time, give or take its own few microseconds.
    assert!(within(blocked + runq, m.read_ns, 0.2), "blocked {blocked} + runq {runq} ns vs read loop {} ns", m.read_ns);
    assert!(blocked >= ROUNDS as u64 * SLEEP_MS * 1_000_000, "blocked {blocked} ns");

    // The writer's nanosleeps, woken by the timer interrupt: the context is
    // named, not the task the interrupt happened to land on.
    let timer: Vec<&Value> = groups
        .iter()
        .filter(|g| g["sleeper"]["comm"] == "owt-writer" && has(&g["sleeper"]["kernel_stack"], "nanosleep"))
        .collect();
    assert!(!timer.is_empty(), "no nanosleep sleep in {groups:#?}");
    // Never the task the interrupt landed on. A wakeup can go unseen when
    // the kernel skips the program because it interrupted the same program
    // on that CPU; the summary counts those, and they must stay rare.
    let mut in_irq = 0;
    for g in &timer {
        let ctx = g["waker"]["context"].as_str().unwrap();
        assert!(ctx == "hardirq" || ctx == "softirq" || ctx == "unseen", "{g}");
        assert_eq!(g["waker"]["pid"], 0, "{g}");
        assert!(g["waker"]["user_stack"].is_null(), "{g}");
        if ctx != "unseen" {
            assert!(has(&g["waker"]["kernel_stack"], "hrtimer_wakeup"), "{g}");
            in_irq += g["count"].as_u64().unwrap();
        }
    }
    assert!(in_irq + 1 >= ROUNDS as u64, "{timer:#?}");
    let slept: u64 = timer.iter().map(|g| g["blocked_ns"].as_u64().unwrap()).sum();
    let writer: Vec<&Value> = groups.iter().filter(|g| g["sleeper"]["comm"] == "owt-writer").collect();
    let n: u64 = timer.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(n, ROUNDS as u64, "{writer:#?}\n{summary}");
    assert!(within(slept, m.slept_ns, 0.2), "blocked {slept} ns vs slept {} ns", m.slept_ns);

    assert_eq!(summary["groups_dropped"], 0);
    assert_eq!(summary["sleeps_dropped"], 0);
}

#[test]
fn default_text_is_the_bcc_layout() {
    let (out, _, _) = trace_workload(&[]);
    let text = &out.stdout;
    // A block: waker line, its stacks, "--", the sleeper's, target line,
    // then the times.
    let block = text
        .split("\n\n")
        .find(|b| b.contains("target:          owt-reader") && b.contains("pipe_read"))
        .unwrap_or_else(|| panic!("no reader block in {text}"));
    let lines: Vec<&str> = block.lines().collect();
    assert!(lines[0].starts_with("    waker:           owt-writer "), "{block}");
    let sep = lines.iter().position(|l| *l == "    --               --").expect("separator");
    // pipe_write, or anon_pipe_write since 6.16.
    assert!(lines[1..sep].iter().any(|l| l.trim().ends_with("pipe_write")), "{block}");
    assert!(lines[sep..].iter().any(|l| l.trim().ends_with("pipe_read")), "{block}");
    let n = lines.len();
    assert!(lines[n - 2].starts_with("    target:          owt-reader "), "{block}");
    assert!(lines[n - 1].trim().ends_with("times") && lines[n - 1].contains(" us blocked, "), "{block}");
    let timer = text.split("\n\n").find(|b| b.contains("target:          owt-writer") && b.contains("nanosleep"));
    let timer = timer.unwrap_or_else(|| panic!("no writer block in {text}"));
    assert!(
        timer.starts_with("    waker:           [hardirq]") || timer.starts_with("    waker:           [softirq"),
        "{timer}"
    );
    assert!(text.contains("\nTotal: ") && text.contains("Stack captures failed: "), "{text}");
}

#[test]
fn folded_output_parses_and_the_svg_is_written() {
    let svg = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("owt-{}.svg", std::process::id()));
    let svg_arg = svg.to_str().unwrap().to_string();
    let (out, _, _) = trace_workload(&["-f", "--svg", &svg_arg]);
    assert!(!out.stdout.is_empty());
    let mut reader_line = None;
    for line in out.stdout.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count: {line:?}"));
        assert!(count.parse::<u64>().unwrap() > 0, "{line}");
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(frames.iter().filter(|f| **f == "--").count(), 1, "{line}");
        assert!(frames.iter().all(|f| !f.is_empty()), "{line}");
        if frames[0] == "owt-reader" && frames.iter().any(|f| f.ends_with("pipe_read")) {
            reader_line = Some(frames);
        }
    }
    let frames = reader_line.unwrap_or_else(|| panic!("no reader line in {}", out.stdout));
    // Sleeper root first, waker last; the sleeper's user frames before its
    // kernel frames, the waker's kernel frames before its user frames.
    let pos = |name: &str| {
        frames.iter().position(|f| f.ends_with(name)).unwrap_or_else(|| panic!("{name} not in {frames:?}"))
    };
    assert!(pos("main::pipe_reader_blocks") < pos("pipe_read"));
    assert!(pos("pipe_read") < pos("--") && pos("--") < pos("pipe_write"));
    assert!(pos("pipe_write") < pos("main::pipe_writer_wakes"));
    assert_eq!(*frames.last().unwrap(), "owt-writer");
    // The summary goes to stderr, keeping stdout for flamegraph.pl.
    assert!(out.stderr.contains("Total: "), "{}", out.stderr);

    let doc = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(doc.starts_with("<?xml") && doc.trim_end().ends_with("</svg>"), "{}", &doc[..200.min(doc.len())]);
    assert_eq!(doc.matches("<svg").count(), doc.matches("</svg>").count());
    assert!(doc.contains("main::pipe_reader_blocks") && doc.contains("pipe_write") && doc.contains("owt-writer"));
    assert!(out.stderr.contains("flame graph written to"), "{}", out.stderr);
}

#[test]
fn kprobes_are_refused_here_in_one_line() {
    // The host has no CONFIG_KPROBES; the guest-kernel tests cover this rung.
    let out = run(BIN, &["--backend", "kprobe", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("offwaketime: backend kprobe is not usable on this kernel"), "{}", out.stderr);
}

#[test]
fn bad_input_is_one_line_and_attaches_nothing() {
    let cases: &[(&[&str], &str)] = &[
        (&["-p", "999999999"], "no such process: 999999999"),
        (&["-t", "999999999"], "no such thread: 999999999"),
        (&["-p", "abc"], "'abc' is not a process or thread id"),
        (&["-m", "100", "-M", "10"], "-m 100 is greater than -M 10"),
        (&["--backend", "fentry"], "unknown backend 'fentry' (this tool supports: tp_btf, raw_tp, tracepoint, kprobe)"),
        (&["--svg", "/nonexistent-dir/x.svg"], "cannot write /nonexistent-dir/x.svg"),
        (&["soon"], "invalid duration 'soon'"),
        (&["-f", "--json"], "cannot be used with"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("owt_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: refused, exit 2");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("offwaketime: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[test]
fn a_traced_process_that_exits_ends_the_run_with_what_it_has() {
    let mut w = Workload::start(20, 3);
    let pid = w.pid();
    let mut r = spawn(BIN, &["-p", &pid, "--json"]);
    r.wait_for_stderr(BANNER, START);
    w.run_rounds();
    w.finish();
    // No signal: the tool notices on its own.
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let (groups, summary) = groups(&out);
    assert_eq!(summary["stop_reason"], "every traced process exited", "{summary}");
    assert!(groups.iter().any(|g| g["sleeper"]["comm"] == "owt-reader"), "{groups:#?}");
}

/// Run offwaketime, note the programs and links it holds, stop it with
/// `stop` (None: let the duration end), and prove all of it was released.
fn detaches_everything(stop: Option<i32>, reason: &str) {
    let args: &[&str] = if stop.is_some() { &["--json"] } else { &["--json", "2"] };
    let mut r: Running = spawn(BIN, args);
    r.wait_for_stderr(BANNER, START);
    let held: Held = held_by(r.pid());
    // sched_switch, sched_waking, and hardirq/softirq entry and exit; the
    // hardirq pair goes on five tracepoints on this x86 host.
    assert_eq!(held.progs.len(), 6, "{held:?}");
    assert_eq!(held.links.len(), 2 + 2 + 2 * 5, "{held:?}");
    r.end_with(stop, reason);
    kdiag_testkit::assert_released(&held, Duration::from_secs(5));
}

kdiag_testkit::detach_tests!(detaches_everything);

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["1"]);
}

/// A stop request at any moment of start-up or run ends it cleanly. PID 1 keeps the summary short; the start-up is that of any run.
#[test]
fn stops_cleanly_at_any_moment() {
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &["-p", "1", "30"]);
}

/// `| head`: a reader that goes away ends the run quietly, exit 0; a gone
/// stderr is no reason to panic.
#[test]
fn survives_closed_outputs() {
    kdiag_testkit::assert_survives_closed_outputs(BIN, &["-p", "1", "1"]);
}

/// One group as the text shows it: the sleeper's name, its frames in the
/// order printed (waker's stacks, `--`, sleeper's), us blocked, us
/// run-queue, sleeps.
type Group = (String, Vec<String>, u64, u64, u64);

fn text_groups(text: &str) -> Vec<Group> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| b.starts_with("    waker:")) {
        let lines: Vec<&str> = block.lines().collect();
        let n = lines.len();
        let comm = lines[n - 2].trim().strip_prefix("target:").unwrap().trim().rsplit_once(' ').unwrap().0.to_string();
        let frames =
            lines[1..n - 2].iter().map(|l| if l.trim() == "--               --" { "--" } else { l.trim() }.to_string());
        let nums: Vec<u64> = lines[n - 1].split_whitespace().filter_map(|w| w.parse().ok()).collect();
        out.push((comm, frames.collect(), nums[0], nums[1], nums[2]));
    }
    out.sort();
    out
}

/// `go tool pprof -raw` reads --pprof written during the same run as the
/// text report: the same groups with the same frames, in the order the
/// text prints them (leaf first: the waker's root down to the wakeup,
/// `--`, the sleeper's wait up to its root), the same times, the same
/// totals; the task names are labels.
#[test]
fn go_tool_pprof_reads_what_the_text_says() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("owt-{}.pb.gz", std::process::id()));
    let arg = path.to_str().unwrap().to_string();
    let (out, _, _) = trace_workload(&["--pprof", &arg]);
    assert!(out.stderr.contains(&format!("pprof profile written to {arg}")), "{}", out.stderr);
    let prof = pprof_raw(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(prof.types, ["sleeps/count", "blocked/nanoseconds", "runqueue/nanoseconds"]);
    let mut from_pprof: Vec<Group> = prof
        .samples
        .iter()
        .map(|s| {
            let comm = s.labels.iter().find(|(k, _)| k == "comm").expect("a comm label").1.clone();
            let us = |ns: i64| ns as u64 / 1000;
            (comm, s.frames.clone(), us(s.values[1]), us(s.values[2]), s.values[0] as u64)
        })
        .collect();
    from_pprof.sort();
    let from_text = text_groups(&out.stdout);
    assert!(
        from_text.iter().any(|g| g.0 == "owt-reader" && g.1.iter().any(|f| f.ends_with("pipe_read"))),
        "{from_text:?}"
    );
    assert_eq!(from_pprof, from_text);
    // The text's totals: microseconds of the summed nanoseconds.
    let total = out.stdout.lines().find_map(|l| l.strip_prefix("Total: ")).expect("a Total line");
    let nums: Vec<i64> = total.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(prof.total("blocked/nanoseconds") / 1000, nums[0], "{total}");
    assert_eq!(prof.total("runqueue/nanoseconds") / 1000, nums[1], "{total}");
    assert_eq!(prof.total("sleeps/count"), nums[2], "{total}");
}

#[test]
fn an_unwritable_pprof_path_exits_2_and_loads_nothing() {
    let (out, progs) = run_watching_programs(BIN, &["--pprof", "/nonexistent-dir/o.pb.gz", "1"]);
    assert!(progs.is_empty(), "{progs:?}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "offwaketime: --pprof /nonexistent-dir/o.pb.gz: cannot write it: No such file or directory (os error 2)"
    );
}

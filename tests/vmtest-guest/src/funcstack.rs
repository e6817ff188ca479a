//! funcstack against calls this process makes itself: three write+fsync
//! rounds on a tmpfs file, each reaching vfs_fsync_range from do_fsync (from
//! the syscall itself on 6.1, whose build inlines do_fsync) and returning 0
//! (tmpfs has nothing to flush). The tool filters on this
//! process, so nothing else the guest does changes the counts. Every rung
//! that the host cannot run (fentry, kprobe, kprobe-multi, ftrace) traces
//! the same calls here.

use crate::tool::{run_tool, set_comm, Run};

/// After SIGINT the tool reads its maps and symbolizes; give it time.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::{Ctx, Reporter};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread;

const FUNC: &str = "vfs_fsync_range";
const ROUNDS: u64 = 3;
const WORKER: &str = "fs-fsyncer";
const FILE: &str = "/tmp/funcstack-fsync";

/// Dropping it lets the fsync thread end; joining waits for that.
type Release = (mpsc::Sender<()>, thread::JoinHandle<()>);

/// The fsyncs, in a thread of its own, so its comm is known and the calls
/// are all made after the tool attached. The thread stays alive until
/// `release` is dropped.
fn fsyncs_in_thread() -> (Result<(), String>, Option<Release>) {
    let (done_tx, done_rx) = mpsc::channel();
    let (release, hold) = mpsc::channel::<()>();
    let h = thread::spawn(move || {
        set_comm(WORKER);
        let work = || {
            let f = std::fs::File::create(FILE).map_err(|e| format!("create {FILE}: {e}"))?;
            for i in 0..ROUNDS {
                f.write_at(b"x", i).map_err(|e| format!("write: {e}"))?;
                f.sync_all().map_err(|e| format!("fsync: {e}"))?;
            }
            drop(f);
            std::fs::remove_file(FILE).map_err(|e| format!("remove {FILE}: {e}"))
        };
        let _ = done_tx.send(work());
        let _ = hold.recv();
    });
    match done_rx.recv() {
        Ok(r) => (r, Some((release, h))),
        Err(_) => (Err("the fsync thread panicked".into()), None),
    }
}

fn fsyncs() -> Result<(), String> {
    let (r, held) = fsyncs_in_thread();
    if let Some((release, h)) = held {
        drop(release);
        let _ = h.join();
    }
    r
}

fn syms(stack: &Value) -> Vec<&str> {
    stack.as_array().map(|a| a.iter().filter_map(|f| f["sym"].as_str()).collect()).unwrap_or_default()
}

fn describe(s: &Value) -> String {
    let k = syms(&s["kernel_stack"]);
    format!(
        "{} {} x{} [{}]",
        s["target"],
        s["comm"],
        s["count"],
        k.iter().take(6).copied().collect::<Vec<_>>().join("<")
    )
}

/// The tool's run, or a FAIL line and None.
fn traced(rep: &mut Reporter, name: &str, args: &[&str]) -> Option<(Run, Vec<Value>, Value)> {
    checked(rep, name, args, run_tool("/bin/funcstack", args, true, STOP_LIMIT, fsyncs))
}

fn checked(
    rep: &mut Reporter,
    name: &str,
    args: &[&str],
    run: Result<(Run, Result<(), String>), String>,
) -> Option<(Run, Vec<Value>, Value)> {
    let run = match run {
        Ok((run, Ok(()))) => run,
        Ok((run, Err(e))) => {
            rep.fail(name, format!("workload: {e}; tool: {}", run.why()));
            return None;
        }
        Err(e) => {
            rep.fail(name, e);
            return None;
        }
    };
    if !run.ok() {
        rep.fail(name, format!("funcstack {}: {}", args.join(" "), run.why()));
        return None;
    }
    let mut records = run.json();
    match records.pop() {
        Some(summary) if summary["type"] == "summary" => Some((run, records, summary)),
        last => {
            rep.fail(name, format!("no summary last; {} lines, last {last:?}; {}", run.stdout.len(), run.why()));
            None
        }
    }
}

/// fsync(2)'s function that calls into the VFS: do_fsync, unless the
/// compiler inlined it into the syscall everywhere (then kallsyms has no
/// do_fsync, and no stack can show it).
fn fsync_caller() -> &'static str {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    // An unreadable kallsyms proves nothing: then do_fsync is required.
    let has = kallsyms.is_empty() || kallsyms.lines().any(|l| l.split_whitespace().nth(2) == Some("do_fsync"));
    if has {
        "do_fsync"
    } else {
        "__x64_sys_fsync"
    }
}

/// Our fsyncs' stacks of `target`: each through fsync's caller, from our
/// worker, with the tracer's frames gone. Returns (their total count, what
/// is wrong).
fn fsync_stacks(records: &[Value], target: &str) -> (u64, Vec<String>) {
    let pid = std::process::id();
    let caller = fsync_caller();
    let mut wrong = Vec::new();
    let mut n = 0;
    for s in records.iter().filter(|r| r["type"] == "stack" && r["target"] == target) {
        let k = syms(&s["kernel_stack"]);
        if !k.contains(&caller) {
            continue;
        }
        n += s["count"].as_u64().unwrap_or(0);
        if s["comm"] != WORKER || s["pid"].as_u64() != Some(pid as u64) {
            wrong.push(format!("not our worker: {}", describe(s)));
        }
        if k.iter().any(|f| f.starts_with("bpf_") || f.starts_with("ftrace_") || *f == target) {
            wrong.push(format!("tracer frames or the target left on top: {}", describe(s)));
        }
    }
    (n, wrong)
}

/// On failure, what the tool said and counted.
fn more(ok: bool, run: &Run, summary: &Value) -> String {
    if ok {
        return String::new();
    }
    format!("; summary {summary}; stderr: {}", run.stderr.join(" | "))
}

fn banner_says(run: &Run, want: &str) -> bool {
    run.stderr.iter().any(|l| l.contains(&format!("backend {want} (")))
}

fn single(rep: &mut Reporter, name: &str, forced: Option<&str>, want: &str) {
    let pid = std::process::id().to_string();
    let mut args = Vec::new();
    if let Some(b) = forced {
        args.extend(["--backend", b]);
    }
    args.extend(["-p", &pid, "--json", "--ret", FUNC]);
    let Some((run, records, summary)) = traced(rep, name, &args) else { return };
    let (n, wrong) = fsync_stacks(&records, FUNC);
    let rets: Vec<&Value> = records.iter().filter(|r| r["type"] == "ret").collect();
    let ret_ok = matches!(rets.as_slice(), [r] if r["target"] == FUNC && r["ret"] == 0 && r["count"] == ROUNDS);
    let ok = banner_says(&run, want) && summary["backend"] == want && n == ROUNDS && wrong.is_empty() && ret_ok;
    let stacks: Vec<String> = records.iter().filter(|r| r["type"] == "stack").map(describe).collect();
    rep.result(
        name,
        ok,
        format!(
            "backend {} (want {want}), {n} calls through {} (want {ROUNDS}), rets {}; {}; stacks: {}; {:.1} s",
            summary["backend"],
            fsync_caller(),
            rets.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(" "),
            wrong.join("; "),
            stacks.join("; "),
            run.secs
        ) + &more(ok, &run, &summary),
    );
}

fn glob(rep: &mut Reporter, name: &str, want: &str) {
    let pid = std::process::id().to_string();
    let Some((run, records, summary)) = traced(rep, name, &["-p", &pid, "--json", "vfs_fsync*"]) else { return };
    let (n, wrong) = fsync_stacks(&records, FUNC);
    let attached = summary["attached"].as_u64().unwrap_or(0);
    let ok = banner_says(&run, want) && summary["backend"] == want && attached >= 2 && n == ROUNDS && wrong.is_empty();
    let stacks: Vec<String> = records.iter().filter(|r| r["type"] == "stack").map(describe).collect();
    rep.result(
        name,
        ok,
        format!(
            "backend {} (want {want}), {attached} functions, {n} calls of {FUNC} through {} (want {ROUNDS}); {}; stacks: {}; {:.1} s",
            summary["backend"],
            fsync_caller(),
            wrong.join("; "),
            stacks.join("; "),
            run.secs
        ) + &more(ok, &run, &summary),
    );
}

fn instances_left() -> Result<Vec<String>, String> {
    let dir = "/sys/kernel/tracing/instances";
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kdiag-funcstack-"))
        .collect())
}

/// The worker outlives the run here: these kernels print no tgid for the
/// function tracer in an instance (record-tgid leaves saved_tgids empty),
/// so funcstack learns a sample's process from /proc/TID at exit, and
/// with -p it drops the calls of a thread that is gone by then.
/// `forced`: with `--backend ftrace`; else ftrace must be the tool's own
/// choice (a kernel without BTF).
pub fn ftrace(rep: &mut Reporter, name: &str, forced: bool) {
    let pid = std::process::id().to_string();
    let all = ["--backend", "ftrace", "-p", &pid, "--json", FUNC];
    let args = if forced { &all[..] } else { &all[2..] };
    let mut held = None;
    let run = run_tool("/bin/funcstack", args, true, STOP_LIMIT, || {
        let (r, h) = fsyncs_in_thread();
        held = h;
        r
    });
    if let Some((release, h)) = held {
        drop(release);
        let _ = h.join();
    }
    let Some((run, records, summary)) = checked(rep, name, args, run) else {
        return;
    };
    let (n, wrong) = fsync_stacks(&records, FUNC);
    let left = instances_left();
    // 5.10 shares the function tracer's options among all instances: the
    // run must not leave stack tracing on for the next function tracer.
    let stack_option = std::fs::read_to_string("/sys/kernel/tracing/options/func_stack_trace");
    let ok = banner_says(&run, "ftrace")
        && summary["backend"] == "ftrace"
        && n == ROUNDS
        && wrong.is_empty()
        && matches!(&stack_option, Ok(v) if v.trim() == "0")
        && matches!(&left, Ok(l) if l.is_empty());
    let stacks: Vec<String> = records.iter().filter(|r| r["type"] == "stack").map(describe).collect();
    rep.result(
        name,
        ok,
        format!(
            "backend {}, {n} calls through {} (want {ROUNDS}), lost records {}; instances left: {left:?}; \
             func_stack_trace left {stack_option:?}; {}; stacks: {}; {:.1} s",
            summary["backend"],
            fsync_caller(),
            summary["lost_records"],
            wrong.join("; "),
            stacks.join("; "),
            run.secs
        ) + &more(ok, &run, &summary),
    );
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    let works = |m: &str| ctx.expect.iter().any(|e| e == m);
    // Every rung below is required: one this kernel lacks is a failure,
    // not a skip, since these runs are the only proof of those backends.
    for (name, forced, mech) in [("funcstack.fentry", None, "fentry"), ("funcstack.kprobe", Some("kprobe"), "kprobe")] {
        if works(mech) {
            single(rep, name, forced, mech);
        } else {
            rep.fail(name, format!("the host did not expect {mech} on this kernel"));
        }
    }
    // Globs take kprobe-multi where the kernel has it (6.12), else one
    // kprobe per function (6.1).
    let want = if works("kprobe-multi") { "kprobe-multi" } else { "kprobe" };
    if works(want) {
        glob(rep, &format!("funcstack.glob-{want}"), want);
    } else {
        rep.fail("funcstack.glob", "neither kprobe-multi nor kprobe is expected on this kernel");
    }
    if works("ftrace") {
        ftrace(rep, "funcstack.ftrace", true);
    } else {
        rep.fail("funcstack.ftrace", "the host did not expect ftrace on this kernel");
    }
}

//! offwaketime against sleeps of known length with a known waker, made in
//! this process: a reader thread blocked on a pipe, a writer thread that
//! writes to it after each sleep. The kprobe rung is forced because only a
//! guest kernel has kprobes: it puts the switch probe on
//! `finish_task_switch` (often a compiler clone, `finish_task_switch.isra.0`)
//! and reads its first argument as the task switched out. If the clone's
//! arguments were rearranged, the reader's sleeps would not be found or not
//! be paired with the writer, and this test is what notices.

use crate::tool::{run_tool, set_comm};
use crate::{Ctx, Reporter};
use serde_json::Value;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// After SIGINT the tool reads its maps and symbolizes; give it time.
const STOP_LIMIT: Duration = Duration::from_secs(60);

const READER: &str = "owt-reader";
const WRITER: &str = "owt-writer";
const SLEEP_MS: u64 = 50;
const ROUNDS: u64 = 10;

pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Is thread `tid` of this process asleep (state S)?
fn sleeping(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('S')))
        .unwrap_or(false)
}

/// The writer's measured nanosleep total: what the reader is blocked for.
fn pipe_rounds() -> Result<Duration, String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned here only.
    let (mut r, mut w) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let (tid_tx, tid_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        set_comm(READER);
        let _ = tid_tx.send(gettid());
        let mut byte = [0u8; 1];
        for _ in 0..ROUNDS {
            r.read_exact(&mut byte).map_err(|e| format!("read: {e}"))?;
        }
        Ok::<(), String>(())
    });
    let tid = tid_rx.recv().map_err(|_| "the reader thread died at once".to_string())?;
    // The first round counts from the writer's start, so the reader must
    // already be blocked then, or its first sleep is not the writer's.
    let t = Instant::now();
    while !sleeping(tid) && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(1));
    }
    let writer = thread::spawn(move || {
        set_comm(WRITER);
        let mut slept = Duration::ZERO;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            thread::sleep(Duration::from_millis(SLEEP_MS));
            slept += t.elapsed();
            w.write_all(b"x").map_err(|e| format!("write: {e}"))?;
        }
        Ok::<Duration, String>(slept)
    });
    let slept = writer.join().map_err(|_| "writer panicked".to_string())??;
    reader.join().map_err(|_| "reader panicked".to_string())??;
    Ok(slept)
}

fn syms(stack: &Value) -> Vec<&str> {
    stack.as_array().map(|a| a.iter().filter_map(|f| f["sym"].as_str()).collect()).unwrap_or_default()
}

fn has(stack: &Value, needle: &str) -> bool {
    syms(stack).iter().any(|s| s.contains(needle))
}

fn short(stack: &Value) -> String {
    let s = syms(stack);
    if s.is_empty() {
        return stack.to_string();
    }
    s.iter().take(8).copied().collect::<Vec<_>>().join("<")
}

pub fn check(rep: &mut Reporter, name: &str, forced: Option<&str>, want: &str) {
    let pid = std::process::id().to_string();
    let mut args = Vec::new();
    if let Some(b) = forced {
        args.extend(["--backend", b]);
    }
    args.extend(["-p", &pid, "--json"]);
    let (run, slept) = match run_tool("/bin/offwaketime", &args, true, STOP_LIMIT, pipe_rounds) {
        Ok((run, Ok(slept))) => (run, slept),
        Ok((run, Err(e))) => return rep.fail(name, format!("workload: {e}; tool: {}", run.why())),
        Err(e) => return rep.fail(name, e),
    };
    let banner = run.stderr.iter().find(|l| l.contains(" backend ")).cloned().unwrap_or_default();
    let says = banner.contains(&format!("backend {want} ("));
    rep.result(
        &format!("{name}.banner"),
        says && run.ok(),
        format!("wanted backend {want}; {}; banner: {banner}", run.why()),
    );
    if !run.ok() {
        return rep.fail(name, "the tool failed, nothing to check");
    }
    let records = run.json();
    let Some(summary) = records.iter().find(|r| r["type"] == "summary") else {
        return rep.fail(name, format!("no summary in {} lines of stdout", run.stdout.len()));
    };
    let groups: Vec<&Value> = records.iter().filter(|r| r["type"] == "wakeup").collect();
    let pipe: Vec<&Value> = groups
        .iter()
        .copied()
        .filter(|g| g["sleeper"]["comm"] == READER && has(&g["sleeper"]["kernel_stack"], "pipe_read"))
        .collect();
    let describe = |g: &Value| {
        format!(
            "{} x{} {} us: sleeper [{}] waker {} {} [{}]",
            g["sleeper"]["comm"],
            g["count"],
            g["blocked_ns"].as_u64().unwrap_or(0) / 1000,
            short(&g["sleeper"]["kernel_stack"]),
            g["waker"]["context"],
            g["waker"]["comm"],
            short(&g["waker"]["kernel_stack"])
        )
    };
    if pipe.is_empty() {
        let all: Vec<String> = groups.iter().map(|g| describe(g)).collect();
        return rep
            .fail(name, format!("no {READER} sleep in pipe_read among {} groups: {}", groups.len(), all.join("; ")));
    }
    let by_writer = |g: &&Value| {
        g["waker"]["context"] == "task"
            && g["waker"]["comm"] == WRITER
            && has(&g["waker"]["kernel_stack"], "pipe_write")
    };
    let wrong: Vec<String> = pipe.iter().filter(|g| !by_writer(g)).map(|g| describe(g)).collect();
    let count: u64 = pipe.iter().map(|g| g["count"].as_u64().unwrap_or(0)).sum();
    let blocked: u64 = pipe.iter().map(|g| g["blocked_ns"].as_u64().unwrap_or(0)).sum();
    let slept_ns = slept.as_nanos() as u64;
    let off = (blocked as f64 - slept_ns as f64) / slept_ns as f64;
    let what = format!(
        "{count} sleeps of {ROUNDS}, blocked {} ms vs writer slept {} ms ({:+.1}%) [asked {} ms]; backend in summary {}; {}",
        blocked / 1_000_000,
        slept_ns / 1_000_000,
        off * 100.0,
        ROUNDS * SLEEP_MS,
        summary["backend"],
        pipe.iter().map(|g| describe(g)).collect::<Vec<_>>().join("; ")
    );
    let ok = wrong.is_empty() && count == ROUNDS && off.abs() <= 0.2 && summary["backend"] == want;
    if wrong.is_empty() {
        rep.result(name, ok, what);
    } else {
        rep.fail(name, format!("not woken by {WRITER} from pipe_write: {}; {what}", wrong.join("; ")));
    }
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    // The default must be the best rung; this harness's kernels all have it.
    check(rep, "offwaketime.default", None, "tp_btf");
    if ctx.expect.iter().any(|m| m == "kprobe") {
        check(rep, "offwaketime.kprobe", Some("kprobe"), "kprobe");
    } else {
        rep.fail("offwaketime.kprobe", "the host did not expect kprobes on this kernel: the kprobe rung went untested");
    }
}

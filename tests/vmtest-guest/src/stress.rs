//! Every tool, on every rung this kernel has, started, run against live
//! events and stopped, round after round: attaching and detaching patch
//! kernel text and static keys on every CPU, and the programs run in
//! scheduler, interrupt and allocator paths, so a tool that can hang a
//! kernel shows it here. Each run must end by itself with exit 0; a run
//! that hangs the guest shows up on the host as a guest that never
//! finished, with its console.
//!
//! While the tools run, threads of this process keep the events coming:
//! two threads bouncing a byte over pipes (context switches and wakeups),
//! one reading a file (vfs_read), and the test module's interrupts-off
//! windows and high-order allocations between rounds.

use crate::sys::Kmod;
use crate::{Ctx, Reporter};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Each run asks for one second; one still going after this is killed and
/// fails. Attaching and detaching a hundred fentry programs under
/// emulation on a loaded host took over 30 s.
const RUN_LIMIT: Duration = Duration::from_secs(90);

struct Case {
    name: String,
    args: Vec<String>,
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Threads that make events until `stop` is set.
fn workload(stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    let (mut a_r, mut a_w) = pipe();
    let (mut b_r, mut b_w) = pipe();
    let s1 = stop.clone();
    let ping = thread::spawn(move || {
        let mut byte = [0u8; 1];
        while !s1.load(Ordering::Relaxed) {
            if a_w.write_all(b"x").is_err() || b_r.read_exact(&mut byte).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        // Closing our ends ends the pong thread's read.
    });
    let pong = thread::spawn(move || {
        let mut byte = [0u8; 1];
        while a_r.read_exact(&mut byte).is_ok() {
            if b_w.write_all(b"y").is_err() {
                break;
            }
        }
    });
    let s2 = stop;
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        while !s2.load(Ordering::Relaxed) {
            buf.clear();
            let _ = File::open("/proc/self/stat").and_then(|mut f| f.read_to_end(&mut buf));
            thread::sleep(Duration::from_millis(2));
        }
    });
    vec![ping, pong, reader]
}

fn cases(ctx: &Ctx) -> Vec<Case> {
    let works = |m: &str| ctx.expect.iter().any(|e| e == m);
    let pid = std::process::id().to_string();
    let mut cases = Vec::new();
    let mut add = |tool: &str, backend: Option<&str>, args: &[&str]| {
        let mut a: Vec<String> = Vec::new();
        if let Some(b) = backend {
            a.extend(["--backend".to_string(), b.to_string()]);
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let name = match backend {
            Some(b) => format!("stress.{tool}.{b}"),
            None => format!("stress.{tool}"),
        };
        // "funcstack-glob": a second case of the same binary.
        let bin = tool.split('-').next().unwrap_or(tool);
        cases.push(Case { name, args: std::iter::once(format!("/bin/{bin}")).chain(a).collect() });
    };
    add("irqoff", None, &["-t", "10", "1"]);
    for b in ["tp_btf", "raw_tp", "tracepoint", "kprobe"] {
        if ["tp_btf", "raw_tp", "tracepoint"].contains(&b) || works(b) {
            add("offwaketime", Some(b), &["-p", &pid, "1"]);
        }
    }
    // Every task on the system, not only ours: the programs then run at
    // every switch and wakeup of the guest.
    add("offwaketime", None, &["1"]);
    for b in ["fentry", "kprobe", "tp_btf", "raw_tp"] {
        if ["tp_btf", "raw_tp"].contains(&b) || works(b) {
            add("epollwake", Some(b), &["-p", &pid, "1"]);
        }
    }
    add("compactwatch", None, &["--order", "3", "1"]);
    for b in ["fentry", "kprobe", "ftrace"] {
        if works(b) {
            add("funcstack", Some(b), &["vfs_read", "1"]);
        }
    }
    add("funcstack-glob", None, &["vfs_read*", "1"]);
    add("funcstack-tracepoint", None, &["tracepoint:sched:sched_switch", "1"]);
    add("blkreq", None, &["--dev", "loop0", "-n", "3", "1"]);
    cases
}

/// The control: no tool and no BPF, only the kernel's own tracer turning
/// the scheduler's and interrupts' tracepoints on and off, which patches
/// the same static keys on every CPU that attaching a tool does. If this
/// hangs a guest, the emulator or the kernel does, not a tool.
pub fn toggle_tracepoints(ctx: &Ctx, rep: &mut Reporter) {
    let Some(rounds) = ctx.stress_rounds else { return };
    let toggles = 100 * rounds;
    let name = "tracefs-toggle";
    let events = ["sched/sched_switch", "sched/sched_waking", "irq/softirq_entry", "irq/irq_handler_entry"];
    let t = Instant::now();
    for i in 0..toggles {
        if i % 20 == 0 {
            println!("KDIAG-STRESS tracefs toggle {i} of {toggles}, {:.1} s", t.elapsed().as_secs_f64());
        }
        for on in ["1", "0"] {
            for e in events {
                let path = format!("/sys/kernel/tracing/events/{e}/enable");
                if let Err(err) = crate::sys::write(&path, on) {
                    return rep.fail(name, format!("toggle {i}: {err}"));
                }
            }
        }
    }
    rep.pass(name, format!("{toggles} times on and off: {} in {:.1} s", events.join(" "), t.elapsed().as_secs_f64()));
}

/// One run: exit 0 within RUN_LIMIT, or why not.
fn run_once(argv: &[String]) -> Result<f64, String> {
    let t = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let mut err = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t.elapsed() > RUN_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(t.elapsed().as_secs_f64()),
        st => {
            let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
            let how = st.map(|s| s.to_string()).unwrap_or_else(|| format!("still running after {RUN_LIMIT:?}"));
            Err(format!("{}: {how}; stderr tail: {}", argv.join(" "), tail.join(" | ")))
        }
    }
}

/// The kernel's log so far, one message a line, from /dev/kmsg.
fn kernel_log() -> Vec<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg") else {
        return vec!["cannot open /dev/kmsg".into()];
    };
    let mut lines = Vec::new();
    // One record per read; EAGAIN at the end of the log.
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                lines.push(rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec).trim().to_string());
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            _ => break,
        }
    }
    lines
}

/// A loop device for blkreq, as its own test makes one.
fn loop_device() -> Option<crate::blkreq::LoopDev> {
    crate::blkreq::LoopDev::attach().ok()
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    let Some(rounds) = ctx.stress_rounds else { return };
    let cases = cases(ctx);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = workload(stop.clone());
    let dev = loop_device();
    let mut results: Vec<(Vec<f64>, Option<String>)> = cases.iter().map(|_| (Vec::new(), None)).collect();
    for round in 0..rounds {
        for (case, (times, failed)) in cases.iter().zip(results.iter_mut()) {
            if failed.is_some() {
                continue;
            }
            let mut argv = case.args.clone();
            if let Some(d) = &dev {
                for a in argv.iter_mut().filter(|a| *a == "loop0") {
                    *a = d.name().to_string();
                }
            }
            // Not a result line: a sign of life on the console, so a hang
            // is placed at the run it happened in.
            println!("KDIAG-STRESS round {} {}", round + 1, argv.join(" "));
            match run_once(&argv) {
                Ok(secs) => times.push(secs),
                Err(e) => {
                    println!("KDIAG-STRESS {} failed: {e}", case.name);
                    *failed = Some(format!("round {} of {rounds}: {e}", round + 1))
                }
            }
        }
        // Between rounds, the events the other tools exist for.
        if Kmod::loaded() {
            let _ = Kmod::set("irqoff_cpu", crate::kmod::window_cpu()).and_then(|_| Kmod::set("irqoff_ms", 20));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in threads {
        let _ = h.join();
    }
    // 5.10's verifier warns once per boot when a tracing program may
    // allocate at run time, which is unsafe in the scheduler (see
    // offwaketime's counts map); no tool may make it say so.
    let warned: Vec<String> = kernel_log().into_iter().filter(|l| l.contains("uses run-time allocation")).collect();
    rep.result(
        "stress.no-run-time-allocation",
        warned.is_empty(),
        if warned.is_empty() {
            "the kernel log has no \"trace type BPF program uses run-time allocation\" warning".to_string()
        } else {
            format!("the kernel warned: {}", warned.join(" | "))
        },
    );
    for (case, (times, failed)) in cases.iter().zip(results) {
        let max = times.iter().copied().fold(0.0, f64::max);
        let what = format!(
            "{} of {rounds} runs of {} ended with exit 0 (longest {max:.1} s)",
            times.len(),
            case.args.join(" ")
        );
        match failed {
            None => rep.pass(&case.name, what),
            Some(e) => rep.fail(&case.name, format!("{e}; before that {what}")),
        }
    }
}

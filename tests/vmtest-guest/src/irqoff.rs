//! irqoff against windows of known length made by the test module: each
//! window over the threshold is reported exactly once, with its length to
//! within one sampling period and the module's holder function in the
//! stack; a window under the threshold is not reported.
//!
//! Lengths are compared with what the module measured, not what was asked:
//! under emulation the host may preempt a vCPU mid-window, and the guest
//! clock (and so the window) runs on meanwhile.

use crate::kmod::{window_cpu, HOLDER};
use crate::sys::Kmod;
use crate::{Ctx, Reporter};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const THRESHOLD_MS: u64 = 10;
/// irqoff samples every 1 ms at this threshold.
const PERIOD_US: u64 = 1000;
/// A report may be short by up to one period, never long.
const TOLERANCE_US: i64 = PERIOD_US as i64;
const WINDOWS_MS: [u64; 4] = [20, 50, 200, 5];

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Injected {
    ms: u64,
    /// The module's measurement of the window.
    real_us: u64,
    /// CLOCK_MONOTONIC around the write that ran the window.
    start_ns: u64,
    end_ns: u64,
}

enum Line {
    Out(String),
    Err(String),
}

fn spawn_reader(child: &mut Child) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(Line::Out(l)))));
    thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(Line::Err(l)))));
    rx
}

pub fn run(_: &Ctx, rep: &mut Reporter) {
    if !Kmod::loaded() {
        return rep.fail("irqoff", "kdiag_test is not loaded");
    }
    let cpu = window_cpu();
    let mut child = match Command::new("/bin/irqoff")
        .args(["-t", &THRESHOLD_MS.to_string(), "--json", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return rep.fail("irqoff", format!("cannot start /bin/irqoff: {e}")),
    };
    let rx = spawn_reader(&mut child);
    let mut out = Vec::new();
    let mut err = Vec::new();

    // The banner ends with "Ctrl-C to end." once everything is attached.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Line::Err(l)) => {
                ready = l.contains("Ctrl-C");
                err.push(l);
            }
            Ok(Line::Out(l)) => out.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let banner_ns = monotonic_ns();
    if !ready {
        let _ = child.kill();
        let status = child.wait();
        return rep.fail("irqoff", format!("not ready after 30 s ({status:?}); stderr: {}", err.join(" | ")));
    }
    // The banner must name the mode a witness expects (hardware NMI only
    // where the kernel registered a CPU PMU), and the CPUs and threshold
    // of the command line.
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/cpu").exists();
    let mode = if pmu { "irqoff: hardware NMI mode" } else { "irqoff: software cpu-clock mode" };
    let online = kdiag_shared::cpus::online().map(|c| kdiag_shared::cpus::format_list(&c)).unwrap_or_default();
    let watching = format!("irqoff: watching CPUs {online} for interrupts off >= {THRESHOLD_MS} ms");
    rep.result(
        "irqoff.banner",
        err.iter().any(|l| l.starts_with(mode)) && err.iter().any(|l| l.starts_with(&watching)),
        format!("want '{mode}' and '{watching}': {}", err.join(" | ")),
    );
    // TCG emulates no KVM steal clock: the banner must say windows may hold
    // the host's time, rather than claim to have taken it out.
    let steal_line = err.iter().find(|l| l.contains("steal time:")).cloned().unwrap_or_default();
    rep.result(
        "irqoff.steal-unknown",
        steal_line.contains("steal time: unknown") && steal_line.contains("windows may include time the hypervisor"),
        steal_line,
    );

    let mut injected = Vec::new();
    for ms in WINDOWS_MS {
        // A window under the threshold only proves something if it stayed
        // there: when the host preempts the emulator mid-window, the guest
        // clock runs on and the window really is longer. Try again then.
        let attempts = if ms < THRESHOLD_MS { 3 } else { 1 };
        for _ in 0..attempts {
            // Quiet time between windows keeps their reports apart.
            thread::sleep(Duration::from_millis(300));
            let start_ns = monotonic_ns();
            let r = Kmod::set("irqoff_cpu", cpu).and_then(|_| Kmod::set("irqoff_ms", ms));
            let end_ns = monotonic_ns();
            match r.and_then(|_| Kmod::get("irqoff_last_us")) {
                Ok(real_us) => {
                    injected.push(Injected { ms, real_us, start_ns, end_ns });
                    if real_us < THRESHOLD_MS * 1000 - PERIOD_US {
                        break;
                    }
                }
                Err(e) => {
                    rep.fail(&format!("irqoff.{ms}ms"), format!("injecting: {e}"));
                    break;
                }
            }
        }
    }
    thread::sleep(Duration::from_millis(500));

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Line::Out(l)) => out.push(l),
            Ok(Line::Err(l)) => err.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > stop_deadline => {
                let _ = child.kill();
                break;
            }
            Err(_) => {}
        }
    }
    let status = child.wait();

    let records: Vec<Value> = out.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let windows: Vec<&Value> = records.iter().filter(|r| r["type"] == "window").collect();
    let summary = records.iter().find(|r| r["type"] == "summary");
    rep.result(
        "irqoff.steal-not-claimed",
        summary.is_some_and(|s| s["steal"] == "unknown") && windows.iter().all(|w| w["steal_us"].is_null()),
        format!(
            "summary steal {:?}; windows' steal_us: {:?}",
            summary.map(|s| &s["steal"]),
            windows.iter().map(|w| &w["steal_us"]).collect::<Vec<_>>()
        ),
    );
    let exited_ok = matches!(&status, Ok(s) if s.success());
    rep.result(
        "irqoff.exit",
        exited_ok && summary.is_some(),
        format!(
            "{status:?}, {} lines, {} windows, summary: {}{}",
            out.len(),
            windows.len(),
            summary.map(|s| s.to_string()).unwrap_or_else(|| "missing".into()),
            if exited_ok { String::new() } else { format!("; stderr: {}", err.join(" | ")) }
        ),
    );

    let has_holder = |w: &Value| {
        w["stack"]
            .as_array()
            .is_some_and(|s| s.iter().any(|f| f["sym"].as_str().is_some_and(|n| n.starts_with(HOLDER))))
    };
    let describe = |w: &Value| {
        let syms: Vec<&str> = w["stack"]
            .as_array()
            .map(|s| s.iter().filter_map(|f| f["sym"].as_str()).take(6).collect())
            .unwrap_or_default();
        let after_ms = (w["mono_ns"].as_u64().unwrap_or(0) as i64 - banner_ns as i64) / 1_000_000;
        format!(
            "cpu {} lat {} us {} {} at banner{after_ms:+} ms stack [{}]",
            w["cpu"],
            w["lat_us"],
            w["comm"],
            w["tid"],
            syms.join(" < ")
        )
    };
    // A window's report is stamped when interrupts come back on: after the
    // spin (which began after the write did) and a little after the write
    // returned at the latest. Only the injected CPU counts.
    let slack_ns = 20_000_000;
    let mut attributed = vec![false; windows.len()];
    let mut quiet_ok = None;
    let mut quiet_what = Vec::new();
    for inj in &injected {
        let from = inj.start_ns + inj.real_us * 1000 - PERIOD_US * 1000;
        let mine: Vec<usize> = windows
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w["cpu"].as_u64() == Some(cpu as u64)
                    && w["mono_ns"].as_u64().is_some_and(|t| t >= from && t <= inj.end_ns + slack_ns)
            })
            .map(|(i, _)| i)
            .collect();
        for &i in &mine {
            attributed[i] = true;
        }
        let reports: Vec<String> = mine.iter().map(|&i| describe(windows[i])).collect();
        let what = format!("injected {} us on cpu {cpu}; reports: [{}]", inj.real_us, reports.join("; "));
        if inj.ms < THRESHOLD_MS {
            // Only a window that stayed under the threshold must go
            // unreported, by any report at all on its CPU and in its time.
            if inj.real_us < THRESHOLD_MS * 1000 - PERIOD_US {
                quiet_ok = Some(quiet_ok.unwrap_or(true) && mine.is_empty());
            }
            quiet_what.push(what);
            continue;
        }
        // Exactly one report in its time on its CPU: that one names the
        // holder and has the length the module measured.
        let ok = match mine.as_slice() {
            [i] => {
                let w = windows[*i];
                has_holder(w) && (w["lat_us"].as_i64().unwrap_or(-1) - inj.real_us as i64).abs() <= TOLERANCE_US
            }
            _ => false,
        };
        rep.result(&format!("irqoff.{}ms", inj.ms), ok, what);
    }
    let quiet_what = quiet_what.join(" / ");
    match quiet_ok {
        Some(ok) => rep.result("irqoff.5ms", ok, quiet_what),
        None => rep.fail("irqoff.5ms", format!("the host stretched every try past the threshold: {quiet_what}")),
    }
    // Windows nobody injected: under emulation the host can stall a vCPU,
    // which a guest without a steal clock cannot tell from interrupts being
    // off, so they may exist (most land on whatever is busy: irqoff itself
    // while it starts and symbolizes, marked as its own). What they cannot
    // be: the holder's window again, a window under the threshold, a stack
    // that contradicts the saved registers, or an "own" mark on another
    // process's window or missing from irqoff's.
    let irqoff_pid = child.id() as u64;
    let wrong = |w: &Value| {
        let stack = w["stack"].as_array().map_or(0, |s| s.len());
        if has_holder(w) {
            Some("names the holder")
        } else if w["lat_us"].as_u64().is_none_or(|l| l < THRESHOLD_MS * 1000) {
            Some("under the threshold")
        } else if (w["pid"].as_u64() == Some(irqoff_pid)) != (w["own"] == true) {
            Some("own mark and pid disagree")
        } else if w.get("stack_error").is_some() || (w["user_space"] == true) != (stack == 0) {
            Some("stack and user_space disagree")
        } else {
            None
        }
    };
    let stray: Vec<&Value> = windows.iter().zip(&attributed).filter(|(_, a)| !**a).map(|(w, _)| *w).collect();
    let bad: Vec<String> = stray.iter().filter_map(|w| wrong(w).map(|why| format!("{why}: {}", describe(w)))).collect();
    let all: Vec<String> = stray.iter().map(|w| describe(w)).collect();
    rep.result(
        "irqoff.no-stray-reports",
        bad.is_empty(),
        format!(
            "{} reports outside the injected windows, {} impossible ones: [{}]; all: [{}]",
            stray.len(),
            bad.len(),
            bad.join("; "),
            all.join("; ")
        ),
    );
}

//! One guest boot under qemu's software emulation: stream its console,
//! collect the result lines, and kill it if it outlives its timeout.

use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

/// How a boot ended.
pub struct Outcome {
    pub results: Vec<TestResult>,
    /// The guest printed KDIAG-DONE: every selected test ran. With the
    /// passed and failed counts it announced there.
    pub done: Option<(u32, u32)>,
    pub timed_out: bool,
    /// The last console lines, to show when the guest died or hung.
    pub tail: Vec<String>,
    pub secs: f64,
}

const TAIL_LINES: usize = 40;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcg {
    Single,
    Multi,
}

/// A console line, as the guest driver prints it; kernel messages can be
/// glued in front of it, so it is looked for anywhere in the line.
pub fn parse_line(line: &str) -> Option<TestResult> {
    let rest = &line[line.find("KDIAG-TEST ")? + "KDIAG-TEST ".len()..];
    let mut parts = rest.splitn(3, ' ');
    let name = parts.next()?.to_string();
    let pass = match parts.next()? {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    Some(TestResult { name, pass, detail: parts.next().unwrap_or("").trim().to_string() })
}

/// `KDIAG-DONE passed=N failed=M`, found anywhere in the line.
pub fn parse_done(line: &str) -> Option<(u32, u32)> {
    let rest = &line[line.find("KDIAG-DONE ")? + "KDIAG-DONE ".len()..];
    let mut words = rest.split_whitespace();
    let passed = words.next()?.strip_prefix("passed=")?.parse().ok()?;
    let failed = words.next()?.strip_prefix("failed=")?.parse().ok()?;
    Some((passed, failed))
}

/// Boot once. The whole console goes to `log`; the terminal gets it from
/// the first line /init prints on (the kernel's boot messages only matter
/// when something goes wrong, and then the tail shows them).
pub fn boot(
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    append: &str,
    tcg: Tcg,
    timeout: Duration,
    log: &Path,
) -> Result<Outcome> {
    let start = Instant::now();
    let mut log =
        std::io::BufWriter::new(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?);
    let mut streaming = false;
    let mut child = Command::new("qemu-system-x86_64")
        // KVM is present here but its guests hang: emulate. One host thread
        // for both vCPUs: with multi-threaded TCG, 6.12 once took an int3
        // Oops mid text-poke (a tracepoint's static key flipping as a perf
        // event closed), which real CPUs do not do; serial TCG keeps the
        // two-CPU guest and the host has only two cores anyway.
        .args(["-accel", if tcg == Tcg::Single { "tcg,thread=single" } else { "tcg,thread=multi" }])
        .args(["-cpu", "max", "-smp", "2", "-m", "512"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;

    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        // The serial console is not guaranteed to be UTF-8 (early boot noise).
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = start + timeout;
    let mut results = Vec::new();
    let mut tail = VecDeque::new();
    let mut done = None;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                // Flushed by line: the log of a hung guest is read while
                // it still hangs.
                let _ = writeln!(log, "{line}").and_then(|_| log.flush());
                streaming |= line.contains("KDIAG-");
                if streaming {
                    println!("[{label}] {line}");
                }
                if let Some(r) = parse_line(&line) {
                    results.push(r);
                }
                if let Some(counts) = parse_done(&line) {
                    done = Some(counts);
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let _ = log.flush();
    let status = child.wait().context("waiting for qemu")?;
    let qemu_err = stderr_thread.join().unwrap_or_default();
    if !status.success() && !timed_out {
        tail.push_back(format!("qemu exited with {status}: {}", qemu_err.trim()));
    }
    Ok(Outcome { results, done, timed_out, tail: tail.into(), secs: start.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_line("KDIAG-TEST ladder.kprobe PASS loads and attaches"),
            Some(TestResult { name: "ladder.kprobe".into(), pass: true, detail: "loads and attaches".into() })
        );
        let r = parse_line("[   12.3] random: crng initKDIAG-TEST irqoff.20ms FAIL").unwrap();
        assert_eq!((r.name.as_str(), r.pass, r.detail.as_str()), ("irqoff.20ms", false, ""));
        assert_eq!(parse_line("KDIAG-TEST x MAYBE"), None);
        assert_eq!(parse_line("plain kernel line"), None);
        assert_eq!(parse_done("[ 9.1] x KDIAG-DONE passed=40 failed=2"), Some((40, 2)));
        assert_eq!(parse_done("KDIAG-DONE passed=40"), None);
    }
}

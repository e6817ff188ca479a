//! Running a tool around a workload of this process: start it, wait for
//! its banner ("Ctrl-C to end.": programs attached), run the workload, stop
//! the tool (or let it end by itself), and keep what it printed by line.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// One run of a tool, its output by line.
pub struct Run {
    /// None: still running at the limit, killed.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub secs: f64,
}

impl Run {
    pub fn json(&self) -> Vec<Value> {
        self.stdout.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn banner(&self) -> String {
        self.stderr
            .iter()
            .take_while(|l| !l.contains("Ctrl-C to end."))
            .chain(self.stderr.iter().find(|l| l.contains("Ctrl-C to end.")))
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Exit status and the end of stderr, for a FAIL line.
    pub fn why(&self) -> String {
        let status = self.status.map(|s| s.to_string()).unwrap_or_else(|| "killed: did not stop".into());
        let tail: Vec<&str> = self.stderr.iter().rev().take(4).rev().map(String::as_str).collect();
        format!("{status} after {:.1} s; stderr: {}", self.secs, tail.join(" | "))
    }
}

enum Line {
    Out(String),
    Err(String),
}

/// Start `bin`, wait for its banner ("Ctrl-C to end."), run `work`, then
/// either interrupt the tool (`interrupt`) or let it end by itself, within
/// `limit` either way.
pub fn run_tool<T>(
    bin: &str,
    args: &[&str],
    interrupt: bool,
    limit: Duration,
    work: impl FnOnce() -> T,
) -> Result<(Run, T), String> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let readers = [
        thread::spawn(move || {
            BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(Line::Out(l))))
        }),
        thread::spawn(move || {
            BufReader::new(err).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(Line::Err(l))))
        }),
    ];
    let mut run = Run { status: None, stdout: Vec::new(), stderr: Vec::new(), secs: 0.0 };
    // Attaching hundreds of functions under TCG takes a while.
    let start_limit = Duration::from_secs(60);
    let mut ready = false;
    while !ready && t.elapsed() < start_limit {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Line::Err(l)) => {
                ready = l.contains("Ctrl-C to end.");
                run.stderr.push(l);
            }
            Ok(Line::Out(l)) => run.stdout.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if !ready {
        let _ = child.kill();
        let status = child.wait();
        return Err(format!(
            "{bin} {}: no banner after {:.1} s ({status:?}); stderr: {}",
            args.join(" "),
            t.elapsed().as_secs_f64(),
            run.stderr.join(" | ")
        ));
    }
    let result = work();
    if interrupt {
        // SAFETY: kill(2) on our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let stop = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Line::Out(l)) => run.stdout.push(l),
            Ok(Line::Err(l)) => run.stderr.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if stop.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                run.secs = t.elapsed().as_secs_f64();
                return Ok((run, result));
            }
            Err(_) => {}
        }
    }
    for r in readers {
        let _ = r.join();
    }
    run.status = child.wait().ok();
    run.secs = t.elapsed().as_secs_f64();
    Ok((run, result))
}

/// Name the calling thread as the kernel reports it (comm).
pub fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of up to 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

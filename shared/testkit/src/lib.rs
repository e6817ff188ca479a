//! What tests of a tool binary need: run it, wait for its banner, see the
//! BPF programs and links *it* holds (from its own fds, never global counts:
//! other tests share the kernel), signal it, and prove that everything it
//! held is gone afterwards.

pub mod consumers;

pub use libc;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A tool running in the background, its stderr read line by line and its
/// stdout as it comes: a tool blocked on a full pipe would stop draining
/// its BPF buffers and lose events that the test counts.
pub struct Running {
    pub child: Child,
    stdout: Option<thread::JoinHandle<String>>,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout as JSON Lines; panics on any line that is not JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }
}

/// Start `bin` with `args`, stdout piped.
pub fn spawn(bin: &str, args: &[&str]) -> Running {
    spawn_with_env(bin, args, &[])
}

/// Start `bin` with `args` and extra environment variables.
pub fn spawn_with_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let stdout = thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running { child, stdout: Some(stdout), stderr_lines: rx, stderr: vec![] }
}

/// Run to completion.
pub fn run(bin: &str, args: &[&str]) -> Output {
    spawn(bin, args).wait()
}

const CAP_SYS_ADMIN: u32 = 21;

/// Is this process root with the capabilities root normally has? Read
/// from the kernel's own record (CapEff), not from the uid: a uid 0
/// stripped of its capabilities can load nothing.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 && caps & (1 << CAP_SYS_ADMIN) != 0 }
}

/// For a test that cannot run without root: fail at once with `why`, so
/// that `cargo test` run by another user says which tests need root and
/// for what, instead of failing with whatever errno the kernel gives.
pub fn needs_root(why: &str) {
    assert!(is_root(), "needs root: {why}");
}

/// Run `bin args` as nobody with no capabilities (setpriv, util-linux) and
/// check that it refuses in exactly one line that says what it needs, with
/// exit status 2, before touching the kernel. A test process that is not
/// root already is such a user and runs `bin` itself.
pub fn assert_refused_without_privileges(bin: &str, args: &[&str]) {
    let tool = std::path::Path::new(bin).file_name().unwrap().to_string_lossy().into_owned();
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out =
        cmd.args(args).output().unwrap_or_else(|e| panic!("running {bin} (as root: through setpriv, util-linux): {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim(), format!("{tool}: insufficient privileges: run as root (or with CAP_BPF and CAP_PERFMON)"));
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until a stderr line contains `needle`; panic after `timeout`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stderr.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(l) => self.stderr.push(l),
                Err(_) => panic!("no stderr line containing {needle:?} within {timeout:?}; got {:?}", self.stderr),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// End a `--json` run the way a detach test asks (`stop`: a signal to
    /// send, or None to let its duration end): it must exit 0 with a last
    /// line that is the summary and names `reason`. That summary, and the
    /// output, for the tool's own checks.
    pub fn end_with(self, stop: Option<i32>, reason: &str) -> (Output, serde_json::Value) {
        if let Some(sig) = stop {
            self.signal(sig);
        }
        let out = self.wait();
        assert!(out.status.success(), "{out:?}");
        let summary = out.json_lines().pop().unwrap_or_default();
        assert_eq!(summary["type"], "summary", "{out:?}");
        assert_eq!(summary["stop_reason"], reason, "{summary}");
        (out, summary)
    }

    /// Wait for exit and collect the output.
    pub fn wait(mut self) -> Output {
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap();
        self.stderr.extend(self.stderr_lines.iter());
        Output { status, stdout, stderr: self.stderr.join("\n") }
    }
}

/// BPF objects a process holds, read from its fdinfo.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub progs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    pub perf_events: usize,
}

pub fn held_by(pid: u32) -> Held {
    let mut held = Held::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return held };
    for fd in dir.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target == "anon_inode:[perf_event]" {
            held.perf_events += 1;
        }
        let name = fd.file_name();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy())).unwrap_or_default();
        for line in info.lines() {
            let mut kv = line.splitn(2, ':');
            let (k, v) = (kv.next().unwrap_or(""), kv.next().unwrap_or("").trim());
            match k {
                "prog_id" if target.contains("bpf-prog") => held.progs.extend(v.parse::<u32>().ok()),
                "link_id" if target.contains("bpf_link") => held.links.extend(v.parse::<u32>().ok()),
                _ => {}
            }
        }
    }
    held
}

/// The BPF programs process `pid` holds now, by name, with their types.
pub fn programs_held_by(pid: u32) -> Vec<(String, libbpf_rs::ProgramType)> {
    let ids = held_by(pid).progs;
    libbpf_rs::query::ProgInfoIter::default()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.name.to_string_lossy().into_owned(), p.ty))
        .collect()
}

/// Run to completion, watching the process while it runs: the names of
/// every BPF program it held at any moment. Looking at the kernel's
/// programs after it exited would prove nothing: its fds, and with them
/// its programs, are gone by then. Polled without pause, so that even a
/// process that fails within milliseconds is looked at.
pub fn run_watching_programs(bin: &str, args: &[&str]) -> (Output, BTreeSet<String>) {
    let mut r = spawn(bin, args);
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while r.child.try_wait().unwrap().is_none() {
        let ids = held_by(r.pid()).progs;
        if !ids.is_subset(&seen) {
            names.extend(
                libbpf_rs::query::ProgInfoIter::default()
                    .filter(|p| ids.contains(&p.id))
                    .map(|p| p.name.to_string_lossy().into_owned()),
            );
            seen.extend(ids);
        }
    }
    (r.wait(), names)
}

/// Programs and links currently loaded in the kernel, by id.
pub fn kernel_ids() -> (BTreeSet<u32>, BTreeSet<u32>) {
    let progs = libbpf_rs::query::ProgInfoIter::default().map(|p| p.id).collect();
    let links = libbpf_rs::query::LinkInfoIter::default().map(|l| l.id).collect();
    (progs, links)
}

/// Wait (the kernel frees programs after an RCU grace period) until none of
/// `held` is loaded any more; panic with what is left after `timeout`.
pub fn assert_released(held: &Held, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (progs, links) = kernel_ids();
        let left_progs: Vec<_> = held.progs.intersection(&progs).collect();
        let left_links: Vec<_> = held.links.intersection(&links).collect();
        if left_progs.is_empty() && left_links.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("still loaded after exit: programs {left_progs:?}, links {left_links:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The three ways a run ends, each as a test: `detaches_after_the_duration`,
/// `detaches_after_sigint`, `detaches_after_sigterm`, calling
/// `check(stop, expected_stop_reason)`, where `stop` is the signal to send
/// after the banner (None: let the duration end).
#[macro_export]
macro_rules! detach_tests {
    ($check:path) => {
        #[test]
        fn detaches_after_the_duration() {
            $check(None, "duration ended");
        }

        #[test]
        fn detaches_after_sigint() {
            $check(Some($crate::libc::SIGINT), "SIGINT received");
        }

        #[test]
        fn detaches_after_sigterm() {
            $check(Some($crate::libc::SIGTERM), "SIGTERM received");
        }
    };
}

/// What a process of ours may leave behind that is not bound to a file
/// descriptor: a private tracefs instance (`kdiag-TOOL-PID`) and legacy
/// kprobe events (libbpf names them `libbpf_PID_...`).
pub fn tracefs_leftovers(pid: u32) -> Vec<String> {
    let Some(tracefs) = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.join("events").is_dir())
    else {
        return vec![];
    };
    let mut left = Vec::new();
    let suffix = format!("-{pid}");
    if let Ok(dir) = std::fs::read_dir(tracefs.join("instances")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("kdiag-") && name.ends_with(&suffix) {
                left.push(format!("tracefs instance {name}"));
            }
        }
    }
    let marker = format!("libbpf_{pid}_");
    for line in std::fs::read_to_string(tracefs.join("kprobe_events")).unwrap_or_default().lines() {
        if line.contains(&marker) {
            left.push(format!("kprobe event {line}"));
        }
    }
    left
}

const STOP_SIGNALS: [(i32, &str); 3] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")];
const STOP_DELAYS_MS: [u64; 6] = [10, 30, 80, 150, 400, 1500];
/// How long after the signal a run may take to end.
pub const STOP_WITHIN: Duration = Duration::from_millis(500);

/// How SIGINT reaches the tool: as from a terminal (default disposition),
/// or as a background job of a script inherits it (ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sigint {
    Default,
    InheritedIgnored,
}

/// Has process `pid` taken over SIGINT, SIGTERM and SIGHUP (its SigCgt)?
/// A signal that arrives before a program's first instruction can be
/// caught by no program: the kernel applies the default action on the way
/// out of execve. The first thing every tool does is take them; this says
/// when that has happened.
pub fn catches_stop_signals(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].iter().all(|&s| caught & (1 << (s - 1)) != 0)
}

/// One run stopped by `sig` `delay` after exec (and not before the tool
/// catches the stop signals), watched throughout. Returns a line
/// describing anything wrong.
pub fn stop_once(bin: &str, args: &[&str], sig: (i32, &str), delay: Duration, sigint: Sigint) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(s, libc::SIG_DFL);
            }
            if sigint == Sigint::InheritedIgnored {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting {bin}: {e}"))?;
    let pid = child.id();
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut held = Held::default();
    let watch = |held: &mut Held| {
        let h = held_by(pid);
        held.progs.extend(h.progs);
        held.links.extend(h.links);
        held.perf_events = held.perf_events.max(h.perf_events);
    };
    let mut sent = None;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        watch(&mut held);
        // A tool that never takes the signals gets them anyway, late.
        let ready = catches_stop_signals(pid) || started.elapsed() > delay + Duration::from_secs(2);
        if sent.is_none() && started.elapsed() >= delay && ready {
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, sig.0) };
            sent = Some(Instant::now());
        }
        if sent.is_some_and(|t| t.elapsed() > STOP_WITHIN * 10) {
            let _ = child.kill();
        }
        thread::sleep(Duration::from_millis(2));
    };
    let took = sent.map(|t| t.elapsed());
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let what = format!("{} at {} ms", sig.1, delay.as_millis());
    let tail = || stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    let Some(took) = took else {
        return Err(format!("{what}: the tool ended by itself before the signal ({status}): {}", tail()));
    };
    if status.code() != Some(0) {
        return Err(format!("{what}: exit {status} after {took:?}: {}", tail()));
    }
    if took > STOP_WITHIN {
        return Err(format!("{what}: took {took:?} to end (limit {STOP_WITHIN:?})"));
    }
    let reason = format!("{} received", sig.1);
    let said = stderr.lines().any(|l| l.ends_with(": stopped during start-up"))
        || stdout.contains(&reason)
        || stderr.contains(&reason);
    if !said {
        return Err(format!("{what}: neither a summary with '{reason}' nor 'stopped during start-up': {}", tail()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (progs, links) = kernel_ids();
        let left_progs: Vec<_> = held.progs.intersection(&progs).collect();
        let left_links: Vec<_> = held.links.intersection(&links).collect();
        let left_tracefs = tracefs_leftovers(pid);
        if left_progs.is_empty() && left_links.is_empty() && left_tracefs.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: left behind programs {left_progs:?}, links {left_links:?}, {left_tracefs:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The stop-at-any-moment check: SIGINT (at its default disposition),
/// SIGTERM and SIGHUP, each sent 10, 30, 80, 150, 400 ms and 1.5 s after
/// exec; then SIGINT to a tool that inherited it ignored. Every run must
/// end within [`STOP_WITHIN`] with exit 0, a summary or "stopped during
/// start-up", and nothing left in the kernel. All failures are collected
/// and reported together.
pub fn assert_stops_cleanly_at_any_moment(bin: &str, args: &[&str]) {
    let mut failures = Vec::new();
    for sig in STOP_SIGNALS {
        for ms in STOP_DELAYS_MS {
            if let Err(e) = stop_once(bin, args, sig, Duration::from_millis(ms), Sigint::Default) {
                failures.push(e);
            }
        }
    }
    for ms in [30, 400] {
        if let Err(e) = stop_once(bin, args, STOP_SIGNALS[0], Duration::from_millis(ms), Sigint::InheritedIgnored) {
            failures.push(format!("SIGINT inherited ignored: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} runs went wrong:\n{}", failures.len(), 20, failures.join("\n"));
}

/// stdout read by a reader that goes away (`tool | head -0`): the tool
/// stops on its own, detaches and exits 0 without a word about it; and a
/// tool whose stderr reader is gone runs to its end without a panic.
pub fn assert_survives_closed_outputs(bin: &str, args: &[&str]) {
    // stdout: a pipe whose reading end we close at once.
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stdout closed: {status}; stderr: {stderr}");
    for bad in ["Broken pipe", "os error 32", "panicked"] {
        assert!(!stderr.contains(bad), "stdout closed: stderr says {bad:?}: {stderr}");
    }
    // stderr: a pipe whose reading end is closed before the tool writes.
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr closed: {status}");
}

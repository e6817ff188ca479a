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

/// A tool running in the background, its stderr read line by line.
pub struct Running {
    pub child: Child,
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
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running { child, stderr_lines: rx, stderr: vec![] }
}

/// Run to completion.
pub fn run(bin: &str, args: &[&str]) -> Output {
    spawn(bin, args).wait()
}

/// Run `bin args` as nobody with no capabilities (setpriv, util-linux) and
/// check that it refuses in exactly one line that says what it needs, with
/// exit status 1, before touching the kernel.
pub fn assert_refused_without_privileges(bin: &str, args: &[&str]) {
    let tool = std::path::Path::new(bin).file_name().unwrap().to_string_lossy().into_owned();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", bin])
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
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

    /// Wait for exit and collect the output.
    pub fn wait(mut self) -> Output {
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
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

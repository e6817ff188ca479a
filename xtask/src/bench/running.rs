//! Starting what the bench measures, ours or a peer's, on the tools' CPU,
//! and knowing when it is attached.

use super::{bpfstats, workloads};
use crate::tasks::binary;
use anyhow::{bail, Result};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Every tool of ours ends its banner so once its programs are attached.
const BANNER: &str = "Ctrl-C to end";
/// A peer not attached by then is reported as failing to start.
const START_LIMIT: Duration = Duration::from_secs(60);
/// A peer that prints a large report at Ctrl-C gets this long to finish.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// How the bench knows a program is attached.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// Ours: the banner on stderr, which each tool prints once attached.
    Banner,
    /// A peer in a cost row: it holds this many BPF programs and every one
    /// of them has run (kernel.bpf_stats_enabled is on during the bench),
    /// which only an attached program does. The waiting loop makes the
    /// events itself (a sleep is a context switch and a wake-up; it calls
    /// getppid). bpftrace loads and attaches probe by probe, hence the
    /// count. Its banner ("Attaching N probes...") comes before attaching.
    Ran(usize),
    /// A libbpf peer in the exec-to-attached row: every program it loaded
    /// has a BPF link (libbpf attaches tracepoints and raw tracepoints
    /// through links, one per program), polled in /proc/PID/fdinfo. Its
    /// banner goes to a block-buffered stdout when that is not a terminal,
    /// so it arrives late, and its programs need not run soon (hardirqs'
    /// fire only at device interrupts).
    Linked,
}

/// One program the bench runs while it measures.
#[derive(Clone, Debug)]
pub struct Subject {
    /// How the tables name it.
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub ready: Ready,
    /// Ours must run and exit 0 at Ctrl-C; a peer's failure only marks its row.
    pub ours: bool,
}

impl Subject {
    pub fn ours(tool: &str, args: Vec<String>) -> Subject {
        Subject { label: tool.to_string(), program: binary(tool), args, ready: Ready::Banner, ours: true }
    }

    pub fn peer(label: &str, program: PathBuf, args: &[&str], ready: Ready) -> Subject {
        let args = args.iter().map(|s| s.to_string()).collect();
        Subject { label: label.to_string(), program, args, ready, ours: false }
    }
}

/// A program started and attached. Dropped without `stop` (a workload
/// failed), it is still interrupted and waited for: nothing is left
/// tracing behind the bench.
pub struct Running {
    label: String,
    child: Option<Child>,
}

impl Running {
    /// Start it; return it with the time from exec to attached.
    pub fn start(s: &Subject) -> Result<(Running, Duration)> {
        let t0 = Instant::now();
        let mut cmd = Command::new(&s.program);
        cmd.args(&s.args).stdout(Stdio::null());
        cmd.stderr(if matches!(s.ready, Ready::Banner) { Stdio::piped() } else { Stdio::null() });
        let pin = workloads::work_cpu() > 0;
        // SAFETY: only sched_setaffinity and signal, async-signal-safe, in
        // the child. SIGINT at its default: a bench started from a script's
        // background job would otherwise pass on an ignored SIGINT, and a
        // peer that does not set its own handler (bpftrace) would never end.
        unsafe {
            cmd.pre_exec(move || {
                if pin {
                    workloads::pin(0);
                }
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            })
        };
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("{}: {e}", s.program.display()))?;
        let stderr = child.stderr.take();
        let mut running = Running { label: s.label.clone(), child: Some(child) };
        match s.ready {
            Ready::Banner => running.wait_banner(stderr.unwrap())?,
            Ready::Ran(n) => running.poll(|pid| {
                let progs = bpfstats::snapshot(pid);
                progs.len() >= n && progs.values().all(|p| p.runs > 0)
            })?,
            Ready::Linked => running.poll(|pid| {
                let progs = bpfstats::snapshot(pid).len();
                progs > 0 && bpfstats::links(pid) >= progs
            })?,
        }
        Ok((running, t0.elapsed()))
    }

    fn wait_banner(&mut self, stderr: std::process::ChildStderr) -> Result<()> {
        let mut stderr = BufReader::new(stderr);
        let mut seen = Vec::new();
        let mut line = String::new();
        while stderr.read_line(&mut line)? > 0 {
            if line.contains(BANNER) {
                // Keep reading: a tool whose stderr is closed fails at its
                // first message after the banner.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Ok(());
            }
            seen.push(std::mem::take(&mut line));
        }
        bail!("{} exited before its banner: {}", self.label, seen.join(" | "))
    }

    fn poll(&mut self, attached: impl Fn(u32) -> bool) -> Result<()> {
        let t0 = Instant::now();
        let pid = self.pid();
        while !attached(pid) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("{} exited with {status} before it was attached", self.label);
            }
            if t0.elapsed() > START_LIMIT {
                bail!("{} not attached after {} s", self.label, START_LIMIT.as_secs());
            }
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::getppid() };
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Ctrl-C, as a user ends a run; anything but exit 0 is a failure.
    pub fn stop(mut self) -> Result<()> {
        let status = interrupt(self.child.take().unwrap())?;
        if !status.success() {
            bail!("{} exited with {status}", self.label);
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = interrupt(child);
        }
    }
}

/// SIGINT, then SIGKILL if it has not ended within STOP_LIMIT.
fn interrupt(mut child: Child) -> std::io::Result<ExitStatus> {
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if t0.elapsed() > STOP_LIMIT {
            child.kill()?;
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

//! `cargo xtask bench`: what running each tool costs, measured on this
//! kernel while a workload makes exactly the events the tool traces:
//! - binary size as it ships (the static build, symbols stripped);
//! - start-up: exec to the banner (programs loaded and attached), median
//!   of 5;
//! - the kernel's own accounting of the tool's BPF programs (run_time_ns /
//!   run_cnt from the tool's fdinfo, kernel.bpf_stats_enabled on for the
//!   run): runs per second, ns per run, and their share of all CPUs;
//! - the workload's cost per operation without and with the tool: the
//!   overhead per traced event as the traced program feels it;
//! - peak RSS (VmHWM) of the tool after its run.

mod disk;
mod workloads;

use crate::tasks::{binary, build};
use anyhow::{bail, Context, Result};
use disk::Disk;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use workloads::Workload;

/// A tool, the arguments of its measured run, and what it watches.
struct Bench {
    tool: &'static str,
    args: fn(&Target) -> Vec<String>,
    workload: Option<Workload>,
}

/// What the runs are pointed at: this process (the workloads are its
/// threads) and the disk the direct writes go to.
struct Target {
    pid: String,
    disk: Disk,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Each tool as a user would run it on the workload (workloads.rs) that
/// makes its events; irqoff needs none (an idle box is its usual case).
/// blkreq gets -n 65536 so that it follows every request of the run
/// instead of ending after its default 8.
const BENCHES: &[Bench] = &[
    Bench { tool: "irqoff", args: |_| strings(&["-t", "10"]), workload: None },
    Bench { tool: "offwaketime", args: |t| strings(&["-p", &t.pid]), workload: Some(Workload::PipePingPong) },
    Bench {
        tool: "blkreq",
        args: |t| strings(&["--dev", &t.disk.dev, "-n", "65536"]),
        workload: Some(Workload::DirectWrite),
    },
    Bench { tool: "epollwake", args: |t| strings(&["-p", &t.pid, "--json"]), workload: Some(Workload::EpollPingPong) },
    Bench { tool: "compactwatch", args: |_| strings(&["--order", "5"]), workload: Some(Workload::ThpFault) },
    Bench {
        tool: "funcstack",
        args: |t| strings(&["-p", &t.pid, "tracepoint:syscalls:sys_enter_getppid"]),
        workload: Some(Workload::Getppid),
    },
];

/// Every tool's banner ends so once its programs are attached.
const READY: &str = "Ctrl-C to end";
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const RUN: Duration = Duration::from_secs(5);

/// Per-program kernel accounting, from the fdinfo of the tool's prog fds.
fn prog_stats(pid: u32) -> (u64, u64) {
    let mut sum = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return sum };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
        if let (Some(t), Some(n)) = (field("run_time_ns:"), field("run_cnt:")) {
            sum = (sum.0 + t, sum.1 + n);
        }
    }
    sum
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// A tool started and attached. Dropped without `stop` (a workload
/// failed), it is still interrupted and waited for: no tool is left
/// tracing behind the bench.
struct Running {
    tool: &'static str,
    child: Option<Child>,
}

impl Running {
    /// Start the tool; return it with the time it took to print its banner.
    fn start(tool: &'static str, args: &[String]) -> Result<(Running, Duration)> {
        let t0 = Instant::now();
        let mut cmd = Command::new(binary(tool));
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        if workloads::work_cpu() > 0 {
            // SAFETY: only sched_setaffinity, async-signal-safe, in the child.
            unsafe {
                cmd.pre_exec(|| {
                    workloads::pin(0);
                    Ok(())
                })
            };
        }
        let mut child = cmd.spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let running = Running { tool, child: Some(child) };
        let mut seen = Vec::new();
        let mut line = String::new();
        while stderr.read_line(&mut line)? > 0 {
            if line.contains(READY) {
                // Keep reading: a tool whose stderr is closed fails at its
                // first message after the banner.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Ok((running, t0.elapsed()));
            }
            seen.push(std::mem::take(&mut line));
        }
        bail!("{tool} exited before its banner: {}", seen.join(" | "))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Ctrl-C, as a user ends a run; anything but exit 0 is a failure.
    fn stop(mut self) -> Result<()> {
        let status = interrupt(self.child.take().unwrap())?;
        if !status.success() {
            bail!("{} exited with {status}", self.tool);
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

fn interrupt(mut child: Child) -> std::io::Result<ExitStatus> {
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()
}

pub fn bench() -> Result<()> {
    build(&[])?;
    let stats_before = std::fs::read_to_string(STATS).context("reading bpf_stats_enabled")?;
    std::fs::write(STATS, "1")?;
    let result = run_all();
    std::fs::write(STATS, stats_before.trim())?;
    result
}

fn run_all() -> Result<()> {
    let target = Target { pid: std::process::id().to_string(), disk: Disk::pick()? };
    println!("blkreq's direct writes go to {}", target.disk.describe());
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8}  {:<18} {:>10} {:>10}",
        "TOOL", "SIZE(KiB)", "START(ms)", "RUNS/s", "NS/RUN", "CPU%", "RSS(KiB)", "WORKLOAD OP", "NS/OP", "+TOOL"
    );
    for b in BENCHES {
        measure(b, &target)?.print();
    }
    Ok(())
}

/// One tool's figures, as the table shows them.
struct Row {
    tool: &'static str,
    size_kib: u64,
    start: Duration,
    /// Over the traced run: the programs' runs and time, and the run's length.
    runs: u64,
    run_ns: u64,
    elapsed: Duration,
    rss_kib: u64,
    /// The workload's ns per op, without and with the tool.
    bare: Option<f64>,
    traced: Option<f64>,
    op: &'static str,
}

fn measure(b: &Bench, target: &Target) -> Result<Row> {
    let args = (b.args)(target);
    let size_kib = std::fs::metadata(crate::tasks::shipped(b.tool)?)?.len() / 1024;
    let start = median_start(b.tool, &args)?;
    let run = |w: Workload| w.ns_per_op(RUN, &target.disk);
    let bare = b.workload.map(run).transpose()?;
    let (tool, _) = Running::start(b.tool, &args)?;
    let before = prog_stats(tool.pid());
    let t0 = Instant::now();
    let traced = match b.workload {
        Some(w) => Some(run(w)?),
        None => {
            std::thread::sleep(RUN);
            None
        }
    };
    let after = prog_stats(tool.pid());
    let elapsed = t0.elapsed();
    let rss_kib = vm_hwm_kb(tool.pid()).unwrap_or(0);
    tool.stop()?;
    Ok(Row {
        tool: b.tool,
        size_kib,
        start,
        runs: after.1 - before.1,
        run_ns: after.0 - before.0,
        elapsed,
        rss_kib,
        bare,
        traced,
        op: b.workload.map_or("(none: idle box)", Workload::op),
    })
}

/// Exec to banner, median of 5: the first run pays for cold caches.
fn median_start(tool: &'static str, args: &[String]) -> Result<Duration> {
    let mut starts = vec![];
    for _ in 0..5 {
        let (running, t) = Running::start(tool, args)?;
        starts.push(t);
        running.stop()?;
    }
    starts.sort();
    Ok(starts[starts.len() / 2])
}

impl Row {
    fn print(&self) {
        let cpus = workloads::work_cpu() as f64 + 1.0;
        let secs = self.elapsed.as_secs_f64();
        let ns_per_run = if self.runs > 0 { self.run_ns as f64 / self.runs as f64 } else { 0.0 };
        let (bare, added) = match (self.bare, self.traced) {
            (Some(x), Some(y)) => (format!("{x:.0}"), format!("{:+.0}", y - x)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<12} {:>9} {:>9.1} {:>9.0} {:>8.0} {:>7.3} {:>8}  {:<18} {:>10} {:>10}",
            self.tool,
            self.size_kib,
            self.start.as_secs_f64() * 1000.0,
            self.runs as f64 / secs,
            ns_per_run,
            self.run_ns as f64 / (secs * 1e9 * cpus) * 100.0,
            self.rss_kib,
            self.op,
            bare,
            added
        );
    }
}

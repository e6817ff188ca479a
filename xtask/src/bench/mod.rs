//! `cargo xtask bench`: what running each tool costs, measured on this
//! kernel while a workload makes exactly the events the tool traces:
//! - binary size of the static build;
//! - start-up: exec to the banner (programs loaded and attached), median
//!   of 5;
//! - the kernel's own accounting of the tool's BPF programs (run_time_ns /
//!   run_cnt from the tool's fdinfo, kernel.bpf_stats_enabled on for the
//!   run): runs per second, ns per run, and their share of all CPUs;
//! - the workload's cost per operation without and with the tool: the
//!   overhead per traced event as the traced program feels it;
//! - peak RSS (VmHWM) of the tool after its run.

mod workloads;

use crate::tasks::{binary, build};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
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
    dev: String,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const BENCHES: &[Bench] = &[
    Bench { tool: "irqoff", args: |_| strings(&["-t", "10"]), workload: None },
    Bench { tool: "offwaketime", args: |t| strings(&["-p", &t.pid]), workload: Some(Workload::PipePingPong) },
    Bench {
        tool: "blkreq",
        args: |t| strings(&["--dev", &t.dev, "-n", "65536"]),
        workload: Some(Workload::DirectWrite),
    },
    Bench { tool: "epollwake", args: |t| strings(&["-p", &t.pid, "--json"]), workload: Some(Workload::EpollPingPong) },
    Bench { tool: "compactwatch", args: |_| strings(&["--order", "4"]), workload: None },
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

/// Start the tool and return it with the time it took to print its banner.
fn start(tool: &str, args: &[String]) -> Result<(std::process::Child, Duration)> {
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
    let mut seen = Vec::new();
    let mut line = String::new();
    while stderr.read_line(&mut line)? > 0 {
        if line.contains(READY) {
            // Keep reading: a tool whose stderr is closed fails at its
            // first message after the banner.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return Ok((child, t0.elapsed()));
        }
        seen.push(std::mem::take(&mut line));
    }
    bail!("{tool} exited before its banner: {}", seen.join(" | "))
}

fn stop(tool: &str, mut child: std::process::Child) -> Result<()> {
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    if !status.success() {
        bail!("{tool} exited with {status}");
    }
    Ok(())
}

/// `MAJ:MIN` of the filesystem the direct writes go to.
fn disk_of_direct_writes() -> Result<String> {
    let dir = workloads::direct_write_file().parent().unwrap().to_path_buf();
    let dev = std::fs::metadata(&dir).with_context(|| format!("{}", dir.display()))?.dev();
    Ok(format!("{}:{}", libc::major(dev), libc::minor(dev)))
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
    let cpus = std::thread::available_parallelism()?.get() as f64;
    let target = Target { pid: std::process::id().to_string(), dev: disk_of_direct_writes()? };
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8}  {:<18} {:>10} {:>10}",
        "TOOL", "SIZE(KiB)", "START(ms)", "RUNS/s", "NS/RUN", "CPU%", "RSS(KiB)", "WORKLOAD OP", "NS/OP", "+TOOL"
    );
    for b in BENCHES {
        let args = (b.args)(&target);
        let size = std::fs::metadata(binary(b.tool))?.len() / 1024;
        let mut starts = vec![];
        for _ in 0..5 {
            let (child, t) = start(b.tool, &args)?;
            starts.push(t);
            stop(b.tool, child)?;
        }
        starts.sort();
        let bare = b.workload.map(|w| w.ns_per_op(RUN)).transpose()?;
        let (child, _) = start(b.tool, &args)?;
        let pid = child.id();
        let before = prog_stats(pid);
        let t0 = Instant::now();
        let traced = match b.workload {
            Some(w) => Some(w.ns_per_op(RUN)?),
            None => {
                std::thread::sleep(RUN);
                None
            }
        };
        let after = prog_stats(pid);
        let elapsed = t0.elapsed();
        let rss = vm_hwm_kb(pid).unwrap_or(0);
        stop(b.tool, child)?;
        let (ns, runs) = (after.0 - before.0, after.1 - before.1);
        let (op, bare_s, traced_s) = match (b.workload, bare, traced) {
            (Some(w), Some(x), Some(y)) => (w.op(), format!("{x:.0}"), format!("{:+.0}", y - x)),
            _ => ("(none: idle box)", "-".into(), "-".into()),
        };
        println!(
            "{:<12} {:>9} {:>9.1} {:>9.0} {:>8.0} {:>7.3} {:>8}  {:<18} {:>10} {:>10}",
            b.tool,
            size,
            starts[starts.len() / 2].as_secs_f64() * 1000.0,
            runs as f64 / elapsed.as_secs_f64(),
            if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
            ns as f64 / (elapsed.as_nanos() as f64 * cpus) * 100.0,
            rss,
            op,
            bare_s,
            traced_s
        );
    }
    Ok(())
}

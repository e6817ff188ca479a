//! `cargo xtask bench`: what running a tool costs, measured on this kernel.
//! - binary size of the static build;
//! - start-up: exec to the banner (programs loaded and attached), median;
//! - overhead per traced event: the kernel's own accounting of each BPF
//!   program (run_time_ns / run_cnt from the tool's fdinfo, with
//!   kernel.bpf_stats_enabled on for the run), and the share of CPU time;
//! - peak RSS (VmHWM) of the tool after its run.

use crate::tasks::{binary, build};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tool and the arguments its steady-state measurement runs with.
struct Bench {
    tool: &'static str,
    args: &'static [&'static str],
    /// A stderr line that says the tool is attached and running.
    banner: &'static str,
}

const BENCHES: &[Bench] = &[Bench { tool: "irqoff", args: &["-t", "10"], banner: "watching CPUs" }];

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const RUN: Duration = Duration::from_secs(5);

/// Per-program kernel accounting, from the fdinfo of the tool's prog fds.
fn prog_stats(pid: u32) -> Vec<(u64, u64)> {
    let mut out = vec![];
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return out };
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
        if let (Some(t), Some(n)) = (field("run_time_ns:"), field("run_cnt:")) {
            out.push((t, n));
        }
    }
    out
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Start the tool and return it with the time it took to print its banner.
fn start(b: &Bench, extra: &[&str]) -> Result<(std::process::Child, Duration)> {
    let t0 = Instant::now();
    let mut child = Command::new(binary(b.tool))
        .args(b.args)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line?.contains(b.banner) {
            return Ok((child, t0.elapsed()));
        }
    }
    bail!("{} exited before its banner", b.tool)
}

fn stop(mut child: std::process::Child) -> Result<()> {
    Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(())
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
    println!(
        "{:<12} {:>10} {:>11} {:>10} {:>12} {:>9} {:>9}",
        "TOOL", "SIZE(KiB)", "START(ms)", "RUNS/s", "NS/RUN", "CPU%", "RSS(KiB)"
    );
    for b in BENCHES {
        let size = std::fs::metadata(binary(b.tool))?.len() / 1024;
        let mut starts = vec![];
        for _ in 0..5 {
            let (child, t) = start(b, &[])?;
            starts.push(t);
            stop(child)?;
        }
        starts.sort();
        let (child, _) = start(b, &[])?;
        let pid = child.id();
        let before: (u64, u64) = prog_stats(pid).iter().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        std::thread::sleep(RUN);
        let after: (u64, u64) = prog_stats(pid).iter().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        let rss = vm_hwm_kb(pid).unwrap_or(0);
        stop(child)?;
        let (ns, runs) = (after.0 - before.0, after.1 - before.1);
        println!(
            "{:<12} {:>10} {:>11.1} {:>10.0} {:>12.0} {:>9.4} {:>9}",
            b.tool,
            size,
            starts[starts.len() / 2].as_secs_f64() * 1000.0,
            runs as f64 / RUN.as_secs_f64(),
            if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
            ns as f64 / (RUN.as_nanos() as f64 * cpus) * 100.0,
            rss
        );
    }
    Ok(())
}

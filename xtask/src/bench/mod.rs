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
//!
//! Then side by side (side.rs): our tools and the peers a user would pick
//! instead (peers.rs), on one workload, in the same interleaved reps, each
//! row our cost, the peer's and the ratio; exec to attached next to
//! libbpf-tools hardirqs. Last, where the time goes: the kernel's run time
//! and count per BPF program, ours and the peers', per workload operation.

mod bpfstats;
mod disk;
mod peers;
mod running;
mod side;
mod workloads;

use crate::tasks::build;
use anyhow::{Context, Result};
use disk::Disk;
use peers::Peers;
use running::{Running, Subject};
use side::{Breakdown, SideRow};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use workloads::Workload;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only one part: `table` (each tool alone, its start next to
    /// hardirqs') or `peers` (each tool next to its peers on one workload).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Interleaved repetitions of each side-by-side row.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Seconds each workload runs per measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Table,
    Peers,
}

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

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

pub fn bench(args: &Args) -> Result<()> {
    build(&[])?;
    let peers = Peers::find_or_install();
    let stats_before = std::fs::read_to_string(STATS).context("reading bpf_stats_enabled")?;
    std::fs::write(STATS, "1")?;
    let result = run_all(args, &peers);
    std::fs::write(STATS, stats_before.trim())?;
    result
}

fn run_all(args: &Args, peers: &Peers) -> Result<()> {
    let run = Duration::from_secs(args.secs);
    let target = Target { pid: std::process::id().to_string(), disk: Disk::pick()? };
    let mut side = Vec::new();
    let mut breakdown = Vec::new();
    if args.only != Some(Part::Peers) {
        println!("blkreq's direct writes go to {}", target.disk.describe());
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8}  {:<18} {:>10} {:>10}",
            "TOOL", "SIZE(KiB)", "START(ms)", "RUNS/s", "NS/RUN", "CPU%", "RSS(KiB)", "WORKLOAD OP", "NS/OP", "+TOOL"
        );
        let hardirqs = peers.hardirqs();
        for b in BENCHES {
            let row = measure(b, &target, run, &hardirqs)?;
            row.print();
            side.push(row.start_row(&hardirqs));
            breakdown.push(row.breakdown());
        }
    }
    if args.only != Some(Part::Table) {
        let (rows, costs) = side::run(peers, &target.disk, args.reps, run)?;
        side.extend(rows);
        breakdown.extend(costs);
    }
    side::print(&side, args.reps, run);
    side::print_breakdown(&breakdown);
    Ok(())
}

/// One tool's figures, as the table shows them.
struct Row {
    tool: &'static str,
    args: Vec<String>,
    size_kib: u64,
    start: Duration,
    /// hardirqs' exec to attached, median of as many starts interleaved
    /// with this tool's.
    peer_start: Option<Result<Duration, String>>,
    /// Over the traced run: the programs' runs and time by name, the
    /// run's length and the workload's operations.
    progs: BTreeMap<String, (u64, u64)>,
    elapsed: Duration,
    ops: Option<u64>,
    rss_kib: u64,
    /// The workload's ns per op, without and with the tool.
    bare: Option<f64>,
    traced: Option<f64>,
    op: &'static str,
}

fn measure(b: &Bench, target: &Target, run: Duration, hardirqs: &Result<Subject, String>) -> Result<Row> {
    let args = (b.args)(target);
    let ours = Subject::ours(b.tool, args.clone());
    let size_kib = std::fs::metadata(crate::tasks::shipped(b.tool)?)?.len() / 1024;
    let (start, peer_start) = median_start(&ours, hardirqs)?;
    let work = |w: Workload| w.run(run, &target.disk);
    let bare = b.workload.map(work).transpose()?;
    let (tool, _) = Running::start(&ours)?;
    let before = bpfstats::snapshot(tool.pid());
    let t0 = Instant::now();
    let traced = match b.workload {
        Some(w) => Some(work(w)?),
        None => {
            std::thread::sleep(run);
            None
        }
    };
    let after = bpfstats::snapshot(tool.pid());
    let elapsed = t0.elapsed();
    let rss_kib = vm_hwm_kb(tool.pid()).unwrap_or(0);
    tool.stop()?;
    let mut progs = BTreeMap::new();
    bpfstats::add_delta(&mut progs, &before, &after);
    Ok(Row {
        tool: b.tool,
        args,
        size_kib,
        start,
        peer_start,
        progs,
        elapsed,
        ops: traced.map(|t| t.ops),
        rss_kib,
        bare: bare.map(|o| o.ns_per_op()),
        traced: traced.map(|o| o.ns_per_op()),
        op: b.workload.map_or("(none: idle box)", Workload::op),
    })
}

/// Exec to attached, median of 5 (the first run pays for cold caches):
/// the tool's, and hardirqs' started right after each of the tool's.
fn median_start(
    ours: &Subject,
    peer: &Result<Subject, String>,
) -> Result<(Duration, Option<Result<Duration, String>>)> {
    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }
    let mut starts = vec![];
    let mut peer_starts = Ok(vec![]);
    for _ in 0..5 {
        let (running, t) = Running::start(ours)?;
        starts.push(t);
        running.stop()?;
        if let (Ok(p), Ok(v)) = (peer, &mut peer_starts) {
            match Running::start(p).and_then(|(r, t)| r.stop().map(|()| t)) {
                Ok(t) => v.push(t),
                Err(e) => peer_starts = Err(format!("{e:#}")),
            }
        }
    }
    let peer_start = match (peer, peer_starts) {
        (Err(_), _) => None,
        (Ok(_), r) => Some(r.map(median)),
    };
    Ok((median(starts), peer_start))
}

impl Row {
    fn print(&self) {
        let cpus = workloads::work_cpu() as f64 + 1.0;
        let secs = self.elapsed.as_secs_f64();
        let (run_ns, runs) = self.progs.values().fold((0, 0), |(t, n), p| (t + p.0, n + p.1));
        let ns_per_run = if runs > 0 { run_ns as f64 / runs as f64 } else { 0.0 };
        let (bare, added) = match (self.bare, self.traced) {
            (Some(x), Some(y)) => (format!("{x:.0}"), format!("{:+.0}", y - x)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<12} {:>9} {:>9.1} {:>9.0} {:>8.0} {:>7.3} {:>8}  {:<18} {:>10} {:>10}",
            self.tool,
            self.size_kib,
            self.start.as_secs_f64() * 1000.0,
            runs as f64 / secs,
            ns_per_run,
            run_ns as f64 / (secs * 1e9 * cpus) * 100.0,
            self.rss_kib,
            self.op,
            bare,
            added
        );
    }

    /// Exec to attached, side by side with hardirqs'.
    fn start_row(&self, hardirqs: &Result<Subject, String>) -> SideRow {
        let peer = match (&self.peer_start, hardirqs) {
            (Some(r), _) => r.clone().map(|d| d.as_secs_f64() * 1000.0),
            (None, Err(why)) => Err(why.clone()),
            (None, Ok(_)) => Err("not measured".into()),
        };
        SideRow {
            what: "exec to attached".into(),
            unit: "ms",
            ours: self.tool.into(),
            ours_value: self.start.as_secs_f64() * 1000.0,
            peer: "hardirqs".into(),
            peer_value: peer,
            bpf: None,
        }
    }

    fn breakdown(&self) -> Breakdown {
        Breakdown {
            who: format!("{} {}", self.tool, self.args.join(" ")),
            op: self.op,
            ops: self.ops,
            secs: self.elapsed.as_secs_f64(),
            progs: self.progs.clone(),
        }
    }
}

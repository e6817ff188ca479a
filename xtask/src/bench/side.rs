//! Our tools next to the peers a user would run instead, on the same
//! workload, in the same run. On a shared VM a figure is only worth its
//! ratio to a peer measured minutes apart, so each rep runs the workload
//! bare, with ours and with each peer, in an order that rotates from rep
//! to rep; each program's added cost per op is the difference to the bare
//! run of its own rep, and the row shows the median over the reps.

use super::disk::Disk;
use super::peers::Peers;
use super::running::{Running, Subject};
use super::workloads::{Ops, Workload};
use super::{bpfstats, strings};
use anyhow::Result;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One line of the side-by-side table.
pub struct SideRow {
    pub what: String,
    pub unit: &'static str,
    pub ours: String,
    pub ours_value: f64,
    pub peer: String,
    /// The peer's figure, or why there is none.
    pub peer_value: Result<f64, String>,
    /// Cost rows: the BPF programs' own run time per op, ours and the
    /// peer's. Far steadier than the workload's wall clock, which moves by
    /// more than a filtered-out event costs; it leaves out the kernel's
    /// dispatch to the program.
    pub bpf: Option<(f64, Option<f64>)>,
}

/// Where one program's time went: its BPF programs' run time and runs by
/// name, over `ops` operations of the workload (or `secs` of an idle box).
pub struct Breakdown {
    pub who: String,
    pub op: &'static str,
    pub ops: Option<u64>,
    pub secs: f64,
    pub progs: BTreeMap<String, (u64, u64)>,
}

/// A workload, our tool on it, and the peers measured with it.
struct Contest {
    what: &'static str,
    workload: Workload,
    ours: Subject,
    /// Each peer by name, or why it cannot run here.
    peers: Vec<(&'static str, Result<Subject, String>)>,
}

/// A process that sleeps and never wakes, for `-p`: a PID unrelated to
/// the workload, so the row is the cost of the filter alone.
struct Unrelated(Child);

impl Unrelated {
    fn spawn() -> Result<Unrelated> {
        let child = Command::new("sleep").arg("infinity").stdout(Stdio::null()).spawn()?;
        Ok(Unrelated(child))
    }
}

impl Drop for Unrelated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// offwaketime takes the sleeper's and the waker's stacks; offcputime
/// only the sleeper's, bpftrace's script both (peers.rs). funcstack and
/// bpftrace count the kernel stacks of every getppid on the box.
fn contests(peers: &Peers, unrelated: &str) -> Vec<Contest> {
    vec![
        Contest {
            what: "all threads",
            workload: Workload::PipePingPong,
            ours: Subject::ours("offwaketime", vec![]),
            peers: vec![("offcputime", peers.offcputime(&[])), ("bpftrace offwake", peers.offwake_bt())],
        },
        Contest {
            what: "-p an unrelated PID",
            workload: Workload::PipePingPong,
            ours: Subject::ours("offwaketime", strings(&["-p", unrelated])),
            peers: vec![("offcputime", peers.offcputime(&["-p", unrelated]))],
        },
        Contest {
            what: "stacks of a tracepoint",
            workload: Workload::Getppid,
            ours: Subject::ours("funcstack", strings(&["tracepoint:syscalls:sys_enter_getppid"])),
            peers: vec![("bpftrace @[kstack]", peers.getppid_kstack_bt())],
        },
    ]
}

/// What one program did over the reps.
struct Tally {
    label: String,
    subject: Result<Subject, String>,
    /// Added ns per op, one per rep it ran in.
    added: Vec<f64>,
    progs: BTreeMap<String, (u64, u64)>,
    ops: u64,
    secs: f64,
}

impl Tally {
    fn bpf_ns_per_op(&self) -> f64 {
        self.progs.values().map(|&(t, _)| t).sum::<u64>() as f64 / self.ops.max(1) as f64
    }
}

/// Run every contest; its table rows and the per-program breakdown.
pub fn run(peers: &Peers, disk: &Disk, reps: u32, dur: Duration) -> Result<(Vec<SideRow>, Vec<Breakdown>)> {
    let unrelated = Unrelated::spawn()?;
    let mut rows = vec![];
    let mut costs = vec![];
    for c in contests(peers, &unrelated.0.id().to_string()) {
        println!("side by side, {} ({}): {} reps", c.what, c.workload.op(), reps);
        let mut bare = vec![];
        let mut tallies: Vec<Tally> = std::iter::once((c.ours.label.as_str(), Ok(c.ours.clone())))
            .chain(c.peers.iter().map(|(l, s)| (*l, s.clone())))
            .map(|(label, subject)| Tally {
                label: label.to_string(),
                subject,
                added: vec![],
                progs: BTreeMap::new(),
                ops: 0,
                secs: 0.0,
            })
            .collect();
        // Slot 0 is the bare run, then ours, then the peers.
        let slots = tallies.len() + 1;
        let mut traced = vec![vec![]; tallies.len()];
        for rep in 0..reps as usize {
            for k in 0..slots {
                let slot = (k + rep) % slots;
                if slot == 0 {
                    bare.push(c.workload.run(dur, disk)?.ns_per_op());
                    continue;
                }
                let t = &mut tallies[slot - 1];
                let Ok(subject) = t.subject.clone() else { continue };
                match traced_run(&subject, c.workload, disk, dur, t) {
                    Ok(ns) => traced[slot - 1].push((rep, ns)),
                    Err(e) if subject.ours => return Err(e),
                    Err(e) => t.subject = Err(format!("{e:#}")),
                }
            }
        }
        for (t, runs) in tallies.iter_mut().zip(&traced) {
            t.added = runs.iter().map(|&(rep, ns)| ns - bare[rep]).collect();
        }
        println!("  bare ns/op: {}", join(&bare, |x| format!("{x:.0}")));
        for t in &tallies {
            match &t.subject {
                Ok(_) => println!("  {} added ns/op: {}", t.label, join(&t.added, |x| format!("{x:+.0}"))),
                Err(why) => println!("  {}: {why}", t.label),
            }
        }
        let ours = &tallies[0];
        for t in &tallies[1..] {
            rows.push(SideRow {
                what: format!("{}, {}", c.workload.op(), c.what),
                unit: "ns/op",
                ours: ours.label.clone(),
                ours_value: median(&ours.added),
                peer: t.label.clone(),
                peer_value: t.subject.as_ref().map(|_| median(&t.added)).map_err(Clone::clone),
                bpf: Some((ours.bpf_ns_per_op(), t.subject.is_ok().then(|| t.bpf_ns_per_op()))),
            });
        }
        for t in &tallies {
            if let Ok(s) = &t.subject {
                // bpftrace's arguments are its script: its label says which.
                let args = if s.ours || s.label == "offcputime" { s.args.join(" ") } else { String::new() };
                costs.push(Breakdown {
                    who: format!("{} {args}", s.label).trim_end().to_string(),
                    op: c.workload.op(),
                    ops: Some(t.ops),
                    secs: t.secs,
                    progs: t.progs.clone(),
                });
            }
        }
    }
    Ok((rows, costs))
}

/// Start `s`, run the workload, stop it: the workload's ns per op with it,
/// and its programs' time added to `t`.
fn traced_run(s: &Subject, w: Workload, disk: &Disk, dur: Duration, t: &mut Tally) -> Result<f64> {
    let (running, _) = Running::start(s)?;
    let before = bpfstats::snapshot(running.pid());
    let ops: Ops = w.run(dur, disk)?;
    let after = bpfstats::snapshot(running.pid());
    running.stop()?;
    bpfstats::add_delta(&mut t.progs, &before, &after);
    t.ops += ops.ops;
    t.secs += ops.elapsed.as_secs_f64();
    Ok(ops.ns_per_op())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn join(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|&x| f(x)).collect::<Vec<_>>().join(" ")
}

pub fn print(rows: &[SideRow], reps: u32, dur: Duration) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "Side by side, same run. Costs: what each adds to the workload's op, median over {reps} interleaved reps \
         of {} s, and its BPF programs' own run time per op (BPF). Exec to attached: median of 5, ours to the \
         banner, hardirqs to its links.",
        dur.as_secs()
    );
    println!(
        "{:<38} {:<12} {:>11} {:>7}  {:<18} {:>11} {:>7} {:>6} {:>6}",
        "ROW", "OURS", "", "BPF", "PEER", "", "BPF", "RATIO", "BPF"
    );
    for r in rows {
        let (peer, ratio) = match &r.peer_value {
            // A peer within noise of nothing has no meaningful ratio.
            Ok(p) if *p > 0.0 => (value(*p, r.unit), format!("{:.2}", r.ours_value / p)),
            Ok(p) => (value(*p, r.unit), "-".into()),
            Err(why) => (format!("({why})"), "-".into()),
        };
        let (ours_bpf, peer_bpf, bpf_ratio) = match r.bpf {
            Some((o, Some(p))) => (format!("{o:.0}"), format!("{p:.0}"), format!("{:.2}", o / p)),
            Some((o, None)) => (format!("{o:.0}"), "-".into(), "-".into()),
            None => ("".into(), "".into(), "".into()),
        };
        println!(
            "{:<38} {:<12} {:>11} {:>7}  {:<18} {:>11} {:>7} {:>6} {:>6}",
            r.what,
            r.ours,
            value(r.ours_value, r.unit),
            ours_bpf,
            r.peer,
            peer,
            peer_bpf,
            ratio,
            bpf_ratio
        );
    }
}

fn value(x: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{x:.1} ms"),
        _ => format!("{x:+.0} ns"),
    }
}

pub fn print_breakdown(all: &[Breakdown]) {
    if all.is_empty() {
        return;
    }
    println!();
    println!("Where the time goes: each BPF program's runs and run time (kernel.bpf_stats_enabled, all CPUs)");
    println!("  {:<18} {:>10} {:>9} {:>7} {:>9}", "PROGRAM", "RUNS", "RUNS/OP", "NS/RUN", "NS/OP");
    for b in all {
        // Per op of the workload; irqoff's idle box has none: per second.
        let (unit, per) = match b.ops {
            Some(ops) if ops > 0 => (format!("per {}", b.op), ops as f64),
            _ => ("per second".to_string(), b.secs.max(1e-9)),
        };
        println!("{} ({unit}):", b.who);
        let ran: Vec<_> = b.progs.iter().filter(|(_, &(_, n))| n > 0).collect();
        if ran.is_empty() {
            println!("  (no program ran)");
        }
        let (mut all_t, mut all_n) = (0, 0);
        for (name, &(t, n)) in &ran {
            println!(
                "  {:<18} {:>10} {:>9.2} {:>7.0} {:>9.0}",
                name,
                n,
                n as f64 / per,
                t as f64 / n as f64,
                t as f64 / per
            );
            all_t += t;
            all_n += n;
        }
        if ran.len() > 1 {
            println!(
                "  {:<18} {:>10} {:>9.2} {:>7.0} {:>9.0}",
                "(all)",
                all_n,
                all_n as f64 / per,
                all_t as f64 / all_n as f64,
                all_t as f64 / per
            );
        }
    }
}

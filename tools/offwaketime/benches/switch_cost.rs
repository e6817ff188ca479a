//! What offwaketime adds to a context switch, how fast it attaches, and its
//! peak memory. Not a test: it prints figures for the README.
//!
//!   cargo bench --target x86_64-unknown-linux-musl -p offwaketime --bench switch_cost [-- REPS]
//!
//! `perf bench sched pipe -l 200000` pinned to CPU 1 (one op is two context
//! switches and two wakeups; unpinned runs are bimodal on these VMs), the
//! tool pinned to CPU 0, in three modes interleaved per repetition: no
//! tool, tracing everything, and `-p` on an unrelated sleeping process.
//! Needs root and Debian's linux-perf.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_offwaketime");
const LOOPS: &str = "200000";

fn pipe_bench_us_per_op() -> f64 {
    let out = Command::new("taskset")
        .args(["-c", "1", "perf", "bench", "sched", "pipe", "-l", LOOPS])
        // cargo's library path for the bench breaks perf's dynamic linking.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("perf (apt: linux-perf) and taskset");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.trim().strip_suffix("usecs/op")?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no usecs/op in perf output: {text}"))
}

struct Tool {
    child: std::process::Child,
    attach: Duration,
}

/// Start the tool on CPU 0 and wait for its banner. taskset execs the
/// tool, so the child's pid is the tool's.
fn start(args: &[&str]) -> Tool {
    let t0 = Instant::now();
    let mut child = Command::new("taskset")
        .args(["-c", "0", BIN])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("tracing blocked time of") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "tool ended before attaching");
    }
    let attach = t0.elapsed();
    // Keep draining stderr so the tool never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Tool { child, attach }
}

/// Stop with SIGINT; returns the peak RSS in kB of the tool's whole life,
/// report included (wait4's ru_maxrss).
fn stop(t: Tool) -> u64 {
    // SAFETY: plain kill(2) and wait4(2) on our own child.
    unsafe {
        libc::kill(t.child.id() as i32, libc::SIGINT);
        let mut status = 0;
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::wait4(t.child.id() as i32, &mut status, 0, &mut ru);
        ru.ru_maxrss as u64
    }
}

/// A process that never runs, to filter on; gone even if the bench panics.
struct Unrelated(std::process::Child);

impl Drop for Unrelated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let reps: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let unrelated = Unrelated(Command::new("sleep").arg("3600").stdout(Stdio::null()).spawn().unwrap());
    let upid = unrelated.0.id().to_string();
    let modes: [(&str, Vec<&str>); 3] =
        [("no tool", vec![]), ("all threads", vec!["-f"]), ("-p unrelated", vec!["-p", &upid, "-f"])];
    let mut us: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    let mut attach_ms = vec![];
    let mut rss_kb: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    for rep in 0..reps {
        for (i, (name, args)) in modes.iter().enumerate() {
            let v = if args.is_empty() {
                pipe_bench_us_per_op()
            } else {
                let t = start(args);
                attach_ms.push(t.attach.as_secs_f64() * 1000.0);
                let v = pipe_bench_us_per_op();
                rss_kb[i].push(stop(t) as f64);
                v
            };
            eprintln!("rep {rep} {name:<13} {v:.3} us/op");
            us[i].push(v);
        }
    }
    drop(unrelated);
    let (base, _, _) = stats(&mut us[0].clone());
    println!("taskset -c 1 perf bench sched pipe -l {LOOPS}, tool on CPU 0, {reps} interleaved repetitions");
    println!("{:<14} {:>10} {:>10} {:>10} {:>16}", "mode", "median", "min", "max", "added/switch");
    for (i, (name, _)) in modes.iter().enumerate() {
        let (med, min, max) = stats(&mut us[i]);
        // One op is two switches (and two wakeups).
        let added_ns = (med - base) * 1000.0 / 2.0;
        println!("{name:<14} {med:>7.3} us {min:>7.3} us {max:>7.3} us {added_ns:>13.0} ns");
    }
    let (a, amin, amax) = stats(&mut attach_ms);
    println!("exec to attached: median {a:.0} ms (min {amin:.0}, max {amax:.0})");
    for (i, (name, _)) in modes.iter().enumerate().skip(1) {
        let (r, rmin, rmax) = stats(&mut rss_kb[i]);
        println!(
            "peak RSS, {name}, report included: median {:.1} MB (min {:.1}, max {:.1})",
            r / 1024.0,
            rmin / 1024.0,
            rmax / 1024.0
        );
    }
}

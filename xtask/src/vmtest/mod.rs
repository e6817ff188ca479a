//! `cargo xtask vmtest`: the tests that need a kernel this host does not
//! have. The host kernel has no kprobes, refuses fentry and loads no
//! modules, so every backend rung above tracepoints and every injected
//! fault is tested in real Debian kernels booted under qemu (TCG), with the
//! static tools, a test driver as /init and a test module inside.
//!
//! A guest test that cannot run (qemu missing, a download or module build
//! failing, a guest that hangs or dies) is a failure, never a skip.

mod apt;
mod expected;
mod initramfs;
mod kernels;
mod qemu;

use crate::setup::{apt_install, MUSL_TARGET};
use crate::tasks::{self, workspace_root, Tally, TOOLS};
use anyhow::{bail, Context, Result};
use kernels::{Kernel, KERNELS};
use qemu::TestResult;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which guest kernels: 5.10, 6.1, 6.12, 6.12-rt or all.
    #[arg(long, default_value = "all", value_name = "5.10|6.1|6.12|6.12-rt|all")]
    pub kernel: String,
    /// Run only the guest tests whose name contains NAME (e.g. ladder,
    /// irqoff, kmod-memory).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Seconds a guest may run before it is killed and counted as failed.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,
    /// How qemu emulates the two vCPUs: on one host thread (single, the
    /// suite's choice) or one thread each (multi, qemu's own default).
    #[arg(long, value_enum, default_value_t = qemu::Tcg::Single)]
    pub tcg: qemu::Tcg,
    /// Guests booted at once. One by default: with two, each emulator
    /// still has a core of CI's two, but on a host loaded besides, irqoff's
    /// window checks failed in both guests (vCPUs preempted mid-window).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// More words for the guest kernel's command line, e.g.
    /// "loglevel=7 softlockup_all_cpu_backtrace=1 kdiag_stress_rounds=20".
    #[arg(long, value_name = "WORDS")]
    pub append: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args { kernel: "all".into(), filter: None, timeout: 600, tcg: qemu::Tcg::Single, jobs: 1, append: None }
    }
}

/// qemu, and what building a module against Debian's headers needs: their
/// Makefile calls gcc-12, and 6.12's adds BTF to modules with pahole.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "dwarves", "xz-utils", "make", "gcc-12", "tar"];

pub struct Timer(Instant);

impl Timer {
    pub fn start() -> Self {
        Timer(Instant::now())
    }
    pub fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Run a command, keeping its output unless it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Rounds of the guest's stress test on the kernels that run it.
const STRESS_ROUNDS: u32 = 1;

const GUEST_CRATE: &str = "kdiag-vmtest-guest";
const GUEST_BIN: &str = "kdiag-vmtest-init";

/// Build the guest driver and the tools in one cargo call: the same
/// package set as `cargo xtask build` plus the driver, so the features of
/// shared dependencies unify the same way and nothing is rebuilt. If that
/// fails, build them one by one: a tool that does not build fails its own
/// line, and the guests still test the others.
fn build_guest_binaries() -> Result<Vec<TestResult>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = |pkgs: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(workspace_root()).args(["build", "--release", "--target", MUSL_TARGET]);
        for p in pkgs {
            c.args(["-p", p]);
        }
        crate::setup::run(&mut c)
    };
    let all: Vec<&str> = TOOLS.iter().copied().chain([GUEST_CRATE]).collect();
    if build(&all).is_ok() {
        return Ok(vec![]);
    }
    eprintln!("vmtest: building one package at a time to find which fails");
    build(&[GUEST_CRATE])?;
    let mut failures = Vec::new();
    for tool in TOOLS {
        if let Err(e) = tasks::build(&[tool.to_string()]) {
            failures.push(fail(&format!("build.{tool}"), format!("{e:#}")));
        }
    }
    Ok(failures)
}

fn initramfs(kernel: &Kernel, built: &[&str], out: &Path) -> Result<()> {
    let mut c = initramfs::Cpio::default();
    for d in ["dev", "proc", "sys", "tmp", "bin", "lib", "lib/modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.file_from("init", 0o755, &tasks::binary(GUEST_BIN))?;
    for tool in TOOLS {
        // A tool that did not build is left out (its build failure is
        // already counted); its guest tests then fail on the missing binary.
        if tasks::binary(tool).exists() && built.contains(tool) {
            c.file_from(&format!("bin/{tool}"), 0o755, &tasks::binary(tool))?;
        }
    }
    c.file_from("lib/modules/kdiag_test.ko", 0o644, &kernel.kmod)?;
    c.file_from("lib/modules/loop.ko", 0o644, &kernel.loop_ko)?;
    std::fs::write(out, c.finish()).with_context(|| format!("writing {}", out.display()))
}

struct KernelRun {
    label: &'static str,
    release: String,
    results: Vec<TestResult>,
    times: String,
}

fn fail(name: &str, detail: impl Into<String>) -> TestResult {
    TestResult { name: name.into(), pass: false, detail: detail.into() }
}

fn run_kernel(
    spec: &'static kernels::KernelSpec,
    prepared: Result<Kernel>,
    root: &Path,
    args: &Args,
    built: &[&str],
) -> KernelRun {
    let mut run = KernelRun { label: spec.label, release: String::new(), results: vec![], times: String::new() };
    let kernel = match prepared {
        Ok(k) => k,
        Err(e) => {
            run.results.push(fail("vm.prepare", format!("{e:#}")));
            return run;
        }
    };
    run.release = kernel.release.clone();
    let initrd: PathBuf = root.join(&kernel.release).join("initramfs.cpio");
    if let Err(e) = initramfs(&kernel, built, &initrd) {
        run.results.push(fail("vm.initramfs", format!("{e:#}")));
        return run;
    }
    let mut append = format!(
        "console=ttyS0 rdinit=/init panic=-1 oops=panic kdiag_expect={} kdiag_absent={}",
        kernel.expect.join(","),
        kernel.absent.join(",")
    );
    if let Some(f) = &args.filter {
        append.push_str(&format!(" kdiag_filter={f}"));
    }
    let user_words = args.append.as_deref().unwrap_or("");
    if !user_words.is_empty() {
        append.push_str(&format!(" {user_words}"));
    }
    if spec.stress && !user_words.contains("kdiag_stress_rounds=") {
        append.push_str(&format!(" kdiag_stress_rounds={STRESS_ROUNDS}"));
    }
    let stress = append.contains("kdiag_stress_rounds=");
    eprintln!("vmtest: booting {} ({})", spec.label, kernel.release);
    let console = root.join(&kernel.release).join("console.log");
    let timeout = Duration::from_secs(args.timeout);
    let outcome = match qemu::boot(spec.label, &kernel.vmlinuz, &initrd, &append, args.tcg, timeout, &console) {
        Ok(o) => o,
        Err(e) => {
            run.results.push(fail("vm.boot", format!("{e:#}")));
            return run;
        }
    };
    run.times = format!(
        "fetch+unpack {:.1} s, module build {:.1} s, boot+tests {:.1} s",
        kernel.fetch_secs, kernel.module_secs, outcome.secs
    );
    run.results = outcome.results;
    let want = expected::results(&kernel.expect, args.filter.as_deref(), stress);
    run.results.extend(check_results(&run.results, &want, outcome.done));
    if outcome.done.is_none() {
        let why = if outcome.timed_out {
            format!("killed after {} s without finishing", args.timeout)
        } else {
            "guest stopped before finishing its tests".to_string()
        };
        run.results.push(fail(
            "vm.boot",
            format!("{why}; whole console in {}; its tail:\n    {}", console.display(), outcome.tail.join("\n    ")),
        ));
    }
    run
}

/// What the host holds the guest's result lines to: every expected name
/// reported once and no other, and as many passes and failures as the
/// guest announced in KDIAG-DONE (a result line mangled by console noise
/// shows up there even when its name cannot be read).
fn check_results(got: &[TestResult], want: &[String], done: Option<(u32, u32)>) -> Vec<TestResult> {
    let mut out = Vec::new();
    let missing: Vec<&str> = want.iter().filter(|w| !got.iter().any(|g| &g.name == *w)).map(String::as_str).collect();
    if !missing.is_empty() {
        let why = if done.is_some() { "the guest finished without reporting" } else { "never reported" };
        out.push(fail("vm.results.missing", format!("{why} {}: {}", missing.len(), missing.join(" "))));
    }
    let mut seen = std::collections::HashSet::new();
    for g in got {
        if !want.contains(&g.name) {
            out.push(fail(
                "vm.results.unexpected",
                format!("{} is not among this kernel's results in xtask/src/vmtest/expected.rs", g.name),
            ));
        } else if !seen.insert(&g.name) {
            out.push(fail("vm.results.twice", format!("{} reported more than once", g.name)));
        }
    }
    if let Some((passed, failed)) = done {
        let (p, f) = (got.iter().filter(|r| r.pass).count() as u32, got.iter().filter(|r| !r.pass).count() as u32);
        if (p, f) != (passed, failed) {
            out.push(fail(
                "vm.results.count",
                format!(
                    "the guest announced passed={passed} failed={failed}, the host read {p} passes and {f} failures"
                ),
            ));
        }
    }
    out
}

/// `cargo xtask vmtest`: ends with its own "N passed, N failed" line.
pub fn run(args: &Args) -> Result<()> {
    let mut tally = Tally::default();
    let result = run_counted(args, &mut tally);
    println!("{} passed, {} failed", tally.passed, tally.failed);
    result
}

/// The guest tests as part of `cargo xtask test`, counted in its tally.
pub fn suite(tally: &mut Tally) -> Result<()> {
    run_counted(&Args::default(), tally)
}

fn run_counted(args: &Args, tally: &mut Tally) -> Result<()> {
    let specs: Vec<&'static kernels::KernelSpec> = match args.kernel.as_str() {
        "all" => KERNELS.iter().filter(|s| kernels::ALL.contains(&s.label)).collect(),
        k => match KERNELS.iter().find(|s| s.label == k) {
            Some(s) => vec![s],
            None => {
                let labels: Vec<&str> = KERNELS.iter().map(|s| s.label).collect();
                bail!("unknown kernel '{k}' (kernels: {}, all)", labels.join(", "));
            }
        },
    };
    let total = Timer::start();
    let mut runs = Vec::new();
    let mut host_results = Vec::new();
    match apt_install(VM_PACKAGES).and_then(|_| build_guest_binaries()) {
        Err(e) => host_results.push(fail("vm.setup", format!("{e:#}"))),
        Ok(build_failures) => {
            let built: Vec<&str> = TOOLS
                .iter()
                .copied()
                .filter(|t| !build_failures.iter().any(|f| f.name == format!("build.{t}")))
                .collect();
            host_results = build_failures;
            let root = workspace_root().join("target/vmtest");
            // Downloads and module builds one after another (apt and make
            // share the host); then the guests, --jobs at a time: each is
            // mostly one busy emulator thread.
            let kmod = workspace_root().join("tests/kmod");
            let prepared: Vec<_> = specs.iter().map(|s| (*s, kernels::prepare(s, &root, &kmod))).collect();
            let mut prepared = prepared.into_iter();
            loop {
                let batch: Vec<_> = prepared.by_ref().take(args.jobs.max(1)).collect();
                if batch.is_empty() {
                    break;
                }
                let (root, built) = (&root, &built);
                runs.extend(std::thread::scope(|sc| {
                    let hs: Vec<_> =
                        batch.into_iter().map(|(s, k)| sc.spawn(move || run_kernel(s, k, root, args, built))).collect();
                    hs.into_iter().map(|h| h.join().expect("a guest thread panicked")).collect::<Vec<_>>()
                }));
            }
        }
    }
    if !host_results.is_empty() {
        runs.insert(
            0,
            KernelRun { label: "host", release: String::new(), results: host_results, times: String::new() },
        );
    }

    println!();
    println!("vmtest results:");
    let failed_before = tally.failed;
    for run in &runs {
        let what =
            if run.label == "host" { "host".to_string() } else { format!("kernel {} {}", run.label, run.release) };
        let times = if run.times.is_empty() { String::new() } else { format!(" ({})", run.times) };
        println!("  {what}{times}");
        for r in &run.results {
            if r.pass {
                tally.passed += 1;
            } else {
                tally.failed += 1;
            }
            println!("    {} {:<28} {}", if r.pass { "PASS" } else { "FAIL" }, r.name, r.detail);
        }
    }
    println!("vmtest: {:.1} s in all", total.secs());
    let failed = tally.failed - failed_before;
    if failed > 0 {
        bail!("{failed} guest test(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, pass: bool) -> TestResult {
        TestResult { name: name.into(), pass, detail: String::new() }
    }

    fn names(v: &[TestResult]) -> Vec<&str> {
        v.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn every_expected_result_once_and_the_announced_counts() {
        let want: Vec<String> = ["setup", "a", "b"].iter().map(|s| s.to_string()).collect();
        let all = [r("setup", true), r("a", true), r("b", false)];
        assert!(check_results(&all, &want, Some((2, 1))).is_empty());
        // A result that never came.
        let got = check_results(&all[..2], &want, Some((2, 0)));
        assert_eq!(names(&got), ["vm.results.missing"]);
        assert!(got[0].detail.ends_with(": b"), "{}", got[0].detail);
        // A FAIL line mangled by kernel output: its name is lost, the
        // announced count still has it.
        let got = check_results(&all[..2], &want[..2], Some((2, 1)));
        assert_eq!(names(&got), ["vm.results.count"]);
        // Names the host does not know, and one reported twice.
        let extra = [r("setup", true), r("a", true), r("a", true), r("b", false), r("c", true)];
        assert_eq!(names(&check_results(&extra, &want, Some((4, 1)))), ["vm.results.twice", "vm.results.unexpected"]);
        // A guest that died: what is missing is said once.
        assert_eq!(names(&check_results(&all[..1], &want, None)), ["vm.results.missing"]);
    }
}

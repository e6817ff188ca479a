//! build, run and test: thin wrappers around cargo with the musl target,
//! so that what is tested is the static binary that ships.

use crate::setup::{run as run_cmd, MUSL_TARGET};
use anyhow::{bail, Result};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const TOOLS: &[&str] = &["irqoff", "offwaketime", "blkreq", "epollwake", "compactwatch", "funcstack"];

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn binary(tool: &str) -> PathBuf {
    workspace_root().join("target").join(MUSL_TARGET).join("release").join(tool)
}

/// The binary as it ships: `binary(tool)` without its symbol table (the
/// release profile keeps symbols, which test binaries need), in
/// target/<musl>/release/shipped/.
pub fn shipped(tool: &str) -> Result<PathBuf> {
    let dir = binary(tool).with_file_name("shipped");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(tool);
    run_cmd(Command::new("strip").arg("--strip-all").arg("-o").arg(&out).arg(binary(tool)))?;
    Ok(out)
}

pub fn build(tools: &[String]) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--release", "--target", MUSL_TARGET]);
    let all: Vec<String> = TOOLS.iter().map(|s| s.to_string()).collect();
    for t in if tools.is_empty() { &all } else { tools } {
        if !TOOLS.contains(&t.as_str()) {
            bail!("unknown tool '{t}' (tools: {})", TOOLS.join(", "));
        }
        c.args(["-p", t]);
    }
    run_cmd(&mut c)
}

pub fn run(tool: &str, args: &[String]) -> Result<()> {
    build(&[tool.to_string()])?;
    let status = Command::new(binary(tool)).args(args).status()?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Test counts summed over every runner the suite calls, so the suite ends
/// with one line that says what ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    /// Counts from a libtest closing line:
    /// `test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; ...`.
    pub fn from_libtest_line(line: &str) -> Option<Tally> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let count = |what: &str| {
            rest.split([';', '.']).find_map(|part| part.trim().strip_suffix(what)?.trim().parse::<u64>().ok())
        };
        Some(Tally { passed: count(" passed")?, failed: count(" failed")?, ignored: count(" ignored").unwrap_or(0) })
    }
}

/// What a libtest run printed: each test binary announces "running N
/// tests" and closes with a "test result:" line. A binary that crashed
/// (a signal, an abort) never closes: it counts as one failure, since
/// its results are unknown.
#[derive(Default)]
struct LibtestOutput {
    tally: Tally,
    open: bool,
    crashed: u64,
}

impl LibtestOutput {
    fn line(&mut self, line: &str) {
        let l = line.trim_end();
        if l.starts_with("running ") && (l.ends_with(" tests") || l.ends_with(" test")) {
            self.close_crashed();
            self.open = true;
        } else if let Some(t) = Tally::from_libtest_line(l) {
            self.tally.add(t);
            self.open = false;
        }
    }

    fn close_crashed(&mut self) {
        if self.open {
            self.crashed += 1;
            self.open = false;
        }
    }

    fn finish(mut self) -> (Tally, u64) {
        self.close_crashed();
        let mut t = self.tally;
        t.failed += self.crashed;
        (t, self.crashed)
    }
}

/// Run `cmd`, echoing its output, and add up the libtest results it prints.
fn cargo_test(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut out = LibtestOutput::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        out.line(&line);
    }
    let status = child.wait()?;
    let (t, crashed) = out.finish();
    tally.add(t);
    if crashed > 0 {
        eprintln!("xtask: {crashed} test binary(ies) ended without a result line (crashed): counted as failed");
    }
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn test() -> Result<()> {
    crate::setup::apt_install(crate::setup::TEST_PACKAGES)?;
    let mut tally = Tally::default();
    let errors = run_suites(&mut tally);
    for e in &errors {
        eprintln!("xtask: {e:#}");
    }
    // The closing line CI and people read, also when a suite failed.
    println!("\n{}", closing_line(tally, errors.len()));
    match errors.len() {
        0 => Ok(()),
        n => bail!("{n} part(s) of the suite failed"),
    }
}

/// The suite's closing line. A part that failed without a test result of
/// its own (a build, the packages) still counts once, so the line never
/// reads "0 failed" next to a failed suite.
fn closing_line(mut tally: Tally, failed_parts: usize) -> String {
    if tally.failed == 0 {
        tally.failed += failed_parts as u64;
    }
    format!("kdiag: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored)
}

/// The cargo test runs of the suite. xtask itself is host code; everything
/// else is tested as the static musl build. One test thread: BPF tests
/// share this kernel. No fail fast: a failing test binary must not hide
/// the ones after it.
const CARGO_TESTS: [&[&str]; 2] = [
    &["test", "--no-fail-fast", "-p", "xtask"],
    &[
        "test",
        "--no-fail-fast",
        "--release",
        "--target",
        MUSL_TARGET,
        "--workspace",
        "--exclude",
        "xtask",
        "--lib",
        "--bins",
        "--tests",
        "--",
        "--test-threads=1",
    ],
];

/// Every part runs, whatever failed before it; each failure is returned.
fn run_suites(tally: &mut Tally) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for args in CARGO_TESTS {
        if let Err(e) = cargo_test(cargo().args(args), tally) {
            errors.push(e);
        }
    }
    match crate::package::package() {
        Ok(packages) => {
            if let Err(e) = crate::package::check::run_checks(&packages, tally) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e.context("building the packages")),
    }
    if let Err(e) = crate::vmtest::suite(tally) {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines() {
        let t = Tally::from_libtest_line(
            "test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        assert_eq!(t, Some(Tally { passed: 11, failed: 0, ignored: 2 }));
        let t = Tally::from_libtest_line("test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured");
        assert_eq!(t, Some(Tally { passed: 9, failed: 1, ignored: 0 }));
        assert_eq!(Tally::from_libtest_line("running 10 tests"), None);
    }

    #[test]
    fn a_binary_without_a_result_line_crashed() {
        let mut out = LibtestOutput::default();
        for l in [
            "running 2 tests",
            "test a ... ok",
            "test b ... ok",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "running 3 tests",
            "test c ... ok",
            // SIGSEGV here: no result line; the next binary starts.
            "running 1 test",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "running 4 tests",
        ] {
            out.line(l);
        }
        let (t, crashed) = out.finish();
        assert_eq!(crashed, 2);
        assert_eq!(t, Tally { passed: 3, failed: 2, ignored: 0 });
    }

    /// A test binary killed by a signal, as cargo_test sees it: "running"
    /// with no result line, then a status that is not success. It fails
    /// the run, counts as failed, and the closing line says so.
    #[test]
    fn a_crashed_binary_fails_the_run_and_the_closing_line_says_so() {
        let mut tally = Tally::default();
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo 'running 2 tests'; echo 'test a ... ok'; kill -ABRT $$"]);
        let res = cargo_test(&mut sh, &mut tally);
        assert!(res.as_ref().is_err_and(|e| e.to_string().contains("signal: 6")), "{res:?}");
        assert_eq!(tally, Tally { passed: 0, failed: 1, ignored: 0 });
        assert_eq!(closing_line(tally, 1), "kdiag: 0 passed, 1 failed, 0 skipped");
    }

    /// A part that failed with no test result of its own (a build, the
    /// packages) is not "0 failed"; failed tests are not counted twice.
    #[test]
    fn the_closing_line_counts_a_part_that_failed_without_results() {
        let t = |passed, failed| Tally { passed, failed, ignored: 1 };
        assert_eq!(closing_line(t(5, 0), 1), "kdiag: 5 passed, 1 failed, 1 skipped");
        assert_eq!(closing_line(t(5, 2), 1), "kdiag: 5 passed, 2 failed, 1 skipped");
        assert_eq!(closing_line(t(5, 0), 0), "kdiag: 5 passed, 0 failed, 1 skipped");
    }

    /// Each cargo test run goes on past a failing test binary.
    #[test]
    fn every_cargo_test_run_is_no_fail_fast() {
        for args in CARGO_TESTS {
            let cargo_args = args.split(|a| *a == "--").next().unwrap();
            assert!(cargo_args.contains(&"--no-fail-fast"), "{args:?}");
        }
    }
}

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

/// Run `cmd`, echoing its output, and add up the libtest results it prints.
fn cargo_test(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(t) = Tally::from_libtest_line(&line) {
            tally.add(t);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn test() -> Result<()> {
    crate::setup::apt_install(crate::setup::TEST_PACKAGES)?;
    let mut tally = Tally::default();
    let result = run_suites(&mut tally);
    // The closing line CI and people read, also when a suite failed.
    println!("\nkdiag: {} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    result
}

fn run_suites(tally: &mut Tally) -> Result<()> {
    // xtask itself is host code; everything else is tested as the static
    // musl build. One test thread: BPF tests share this kernel.
    cargo_test(cargo().args(["test", "-p", "xtask"]), tally)?;
    cargo_test(
        cargo().args([
            "test",
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
        ]),
        tally,
    )?;
    let packages = crate::package::package()?;
    crate::package::check::run_checks(&packages, tally)?;
    crate::vmtest::suite(tally)
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
}

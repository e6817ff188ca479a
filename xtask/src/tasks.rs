//! build, run and test: thin wrappers around cargo with the musl target,
//! so that what is tested is the static binary that ships.

use crate::setup::{run as run_cmd, MUSL_TARGET};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Command;

pub const TOOLS: &[&str] = &["irqoff", "offwaketime", "blkreq", "epollwake", "compactwatch"];

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

pub fn test() -> Result<()> {
    // xtask itself is host code; everything else is tested as the static
    // musl build. One test thread: BPF tests share this kernel.
    run_cmd(cargo().args(["test", "-p", "xtask"]))?;
    run_cmd(cargo().args([
        "test",
        "--release",
        "--target",
        MUSL_TARGET,
        "--workspace",
        "--exclude",
        "xtask",
        "--",
        "--test-threads=1",
    ]))
}

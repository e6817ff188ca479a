//! Installing what the build and the tests need, only when it is missing,
//! so a second run costs a few `dpkg -s` calls.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Debian packages: the C toolchain for vendored libbpf/elfutils, clang
/// for BPF, musl for static binaries, bpftool for checking what is attached.
pub const APT_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "make",
    "clang",
    "llvm",
    "musl-tools",
    "autoconf",
    "automake",
    "autopoint",
    "flex",
    "bison",
    "gawk",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
    "linux-libc-dev",
    "bpftool",
    "util-linux",
];

/// What only the tests use: a real epoll server and a load generator for
/// epollwake's summary test (tools/epollwake/tests/nginx).
pub const TEST_PACKAGES: &[&str] = &["nginx-light", "apache2-utils"];

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn installed(pkg: &str) -> bool {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).stderr(Stdio::null()).output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output().context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
}

pub fn ensure() -> Result<()> {
    apt_install(APT_PACKAGES)?;
    rust_target()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

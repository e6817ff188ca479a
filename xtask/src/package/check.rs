//! Checks of the built packages, run by `cargo xtask test`: what ships is
//! static, both package formats list the same files, the .rpm verifies and
//! is readable by old rpm, and the .deb installs into a bare Debian 12
//! chroot, works there, and purges without a trace.

use super::{owned_dirs, Packages, CONFFILES};
use crate::setup::apt_install;
use crate::tasks::{workspace_root, Tally, TOOLS};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn binaries_are_static(p: &Packages) -> Result<()> {
    let root = p.deb.parent().unwrap().join("root/usr/sbin");
    for tool in TOOLS {
        let dynamic = output(Command::new("readelf").arg("-d").arg(root.join(tool)))?;
        ensure!(!dynamic.contains("(NEEDED)"), "{tool} needs shared libraries:\n{dynamic}");
        let program_headers = output(Command::new("readelf").arg("-l").arg(root.join(tool)))?;
        ensure!(!program_headers.contains("INTERP"), "{tool} asks for a dynamic loader");
    }
    Ok(())
}

fn deb_lists_the_files(p: &Packages) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(&p.deb))?;
    let listed: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches('.').to_string())
        .collect();
    let want: BTreeSet<String> = p.files.iter().cloned().collect();
    ensure!(listed == want, "deb lists {listed:?}, expected {want:?}");
    Ok(())
}

fn rpm_lists_the_files_and_verifies(p: &Packages) -> Result<()> {
    let listed: BTreeSet<String> =
        output(Command::new("rpm").arg("-qlp").arg(&p.rpm))?.lines().map(String::from).collect();
    let want: BTreeSet<String> = p.files.iter().cloned().chain(owned_dirs(&p.files)).collect();
    ensure!(listed == want, "rpm lists {listed:?}, expected {want:?}");
    let check = output(Command::new("rpm").arg("-K").arg(&p.rpm))?;
    ensure!(check.contains("digests OK") || check.contains("md5 OK"), "rpm -K: {check}");
    let conf = output(Command::new("rpm").arg("-qcp").arg(&p.rpm))?;
    for f in CONFFILES {
        ensure!(conf.lines().any(|l| l == *f), "{f} is not %config in the rpm: {conf}");
    }
    // EL7's rpm 4.11 reads gzip payloads, not zstd.
    let comp = output(Command::new("rpm").args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"]).arg(&p.rpm))?;
    ensure!(comp == "gzip", "payload compressed with {comp}");
    Ok(())
}

/// rpm's own install and erase, into an empty root: every file lands, and
/// erasing leaves nothing but rpm's database (scriptlets need a shell the
/// empty root does not have; they are exercised by the .deb test).
fn rpm_installs_and_erases_clean(p: &Packages) -> Result<()> {
    let root = p.rpm.parent().unwrap().join("rpm-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let rpm = |args: &[&str]| output(Command::new("rpm").arg("--root").arg(&root).args(args));
    rpm(&["--initdb"])?;
    let before = all_paths(&root)?;
    rpm(&["-i", "--nodeps", "--noscripts", p.rpm.to_str().unwrap()])?;
    for f in &p.files {
        ensure!(root.join(f.trim_start_matches('/')).is_file(), "{f} not installed by rpm");
    }
    rpm(&["-e", "--noscripts", "kdiag"])?;
    // rpm made the standard parents (/usr/share/man...) that a real system's
    // `filesystem` package owns; anything else left over is ours.
    let after = all_paths(&root)?;
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.starts_with("/var/lib/rpm"))
        .filter(|p| root.join(p.trim_start_matches('/')).is_file() || p.contains("kdiag"))
        .collect();
    ensure!(left.is_empty(), "left behind after rpm -e: {left:?}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// A bare Debian 12 in target/package/NAME: minbase plus the packages
/// `include` lists (comma-separated).
pub(super) fn fresh_chroot(name: &str, include: &str) -> Result<PathBuf> {
    apt_install(&["debootstrap"])?;
    let dir = workspace_root().join("target/package").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    output(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={include}"), "bookworm"])
            .arg(&dir)
            .arg("http://deb.debian.org/debian"),
    )?;
    Ok(dir)
}

pub(super) fn in_chroot(root: &Path, args: &[&str]) -> Result<String> {
    output(Command::new("chroot").arg(root).args(args).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
}

fn deb_installs_works_and_purges_clean(p: &Packages) -> Result<()> {
    // man-db answers `man -w`.
    let root = fresh_chroot("chroot", "man-db")?;
    let before: BTreeSet<String> = all_paths(&root)?;
    std::fs::copy(&p.deb, root.join("tmp/kdiag.deb"))?;
    in_chroot(&root, &["dpkg", "-i", "/tmp/kdiag.deb"])?;
    for tool in TOOLS {
        let help = in_chroot(&root, &[&format!("/usr/sbin/{tool}"), "--help"])?;
        ensure!(help.contains("Usage:"), "{tool} --help in the chroot: {help}");
        let page = in_chroot(&root, &["man", "-w", tool])?;
        ensure!(page.trim() == format!("/usr/share/man/man8/{tool}.8.gz"), "man -w {tool}: {page}");
        for f in [
            format!("usr/share/bash-completion/completions/{tool}"),
            format!("usr/share/zsh/vendor-completions/_{tool}"),
            format!("usr/share/fish/vendor_completions.d/{tool}.fish"),
        ] {
            ensure!(root.join(&f).is_file(), "{f} missing after install");
        }
    }
    let page = in_chroot(&root, &["man", "-w", "7", "kdiag"])?;
    ensure!(page.trim() == "/usr/share/man/man7/kdiag.7.gz", "man -w 7 kdiag: {page}");
    // The service is shipped, not enabled.
    ensure!(root.join("usr/lib/systemd/system/kdiag-irqoff.service").is_file(), "service missing");
    ensure!(!root.join("etc/systemd/system/multi-user.target.wants/kdiag-irqoff.service").exists(), "service enabled");

    in_chroot(&root, &["dpkg", "--purge", "kdiag"])?;
    std::fs::remove_file(root.join("tmp/kdiag.deb"))?;
    let after = all_paths(&root)?;
    let left: Vec<&String> = after.difference(&before).filter(|p| !p.starts_with("/var/lib/dpkg/")).collect();
    ensure!(left.is_empty(), "left behind after purge: {left:?}");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Every path under `root`, ignoring the volatile parts of a chroot.
fn all_paths(root: &Path) -> Result<BTreeSet<String>> {
    let mut set = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let rel = format!("/{}", p.strip_prefix(root)?.display());
            if rel.starts_with("/proc") || rel.starts_with("/var/cache/man") || rel.starts_with("/var/log/dpkg") {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            set.insert(rel);
        }
    }
    Ok(set)
}

/// The shipped notice names every crate Cargo links into the tools, each
/// with a license text, plus musl; read from the .deb's own tree.
fn third_party_licenses_ship(p: &Packages) -> Result<()> {
    let path = p.deb.parent().unwrap().join("root/usr/share/doc/kdiag/THIRD-PARTY-LICENSES");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crates = super::licenses::shipped_crates()?;
    ensure!(crates.len() > 20, "only {} crates found", crates.len());
    for c in &crates {
        ensure!(
            text.contains(&format!("\n{} {}\nLicense: ", c.name, c.version)),
            "{} {} is not in the notice",
            c.name,
            c.version
        );
    }
    ensure!(text.contains("Permission is hereby granted"), "no MIT text in the notice");
    ensure!(text.contains("\nmusl libc\nLicense: MIT"), "musl is not in the notice");
    Ok(())
}

/// Run every check; each counts as one test in the suite's tally.
pub fn run_checks(p: &Packages, tally: &mut Tally) -> Result<()> {
    type Check = fn(&Packages) -> Result<()>;
    let checks: [(&str, Check); 7] = [
        ("binaries_are_static", binaries_are_static),
        ("third_party_licenses_ship", third_party_licenses_ship),
        ("deb_lists_the_files", deb_lists_the_files),
        ("rpm_lists_the_files_and_verifies", rpm_lists_the_files_and_verifies),
        ("rpm_installs_and_erases_clean", rpm_installs_and_erases_clean),
        ("deb_installs_works_and_purges_clean", deb_installs_works_and_purges_clean),
        ("service_runs_under_systemd", super::systemd::service_runs_under_systemd),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        match check(p) {
            Ok(()) => {
                println!("package check {name} ... ok");
                tally.passed += 1;
            }
            Err(e) => {
                println!("package check {name} ... FAILED\n{e:#}");
                tally.failed += 1;
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("package checks failed: {}", failed.join(", "));
    }
    Ok(())
}

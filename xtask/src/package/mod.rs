//! `cargo xtask package`: one `kdiag` .deb and one .rpm holding the static
//! tools, their man pages and completions (generated from each tool's own
//! clap definition by running it with KDIAG_GENERATE), the overview page,
//! the irqoff service with its defaults and log rotation, and the docs.
//!
//! The native builders (dpkg-deb, rpmbuild) do the packing: they are what
//! the target distributions trust, and they need nothing compiled first.

pub mod check;
pub mod licenses;
mod systemd;

use crate::setup::{apt_install, run};
use crate::tasks::{binary, build, workspace_root, TOOLS};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NAME: &str = "kdiag";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const SUMMARY: &str =
    "single-purpose kernel diagnosis tools (irqoff, offwaketime, blkreq, epollwake, compactwatch, funcstack)";
const DESCRIPTION: &str = "Static eBPF-based tools that each answer one question about a running kernel:\n\
interrupts-off windows, off-CPU time by waker, block request paths, epoll\n\
wake-ups, high-order allocation failures and the call paths to any kernel\nfunction. Each picks the best tracing\n\
mechanism the kernel supports and detaches everything when it stops.";

/// Files that are configuration: kept on upgrade, removed only on purge.
pub const CONFFILES: &[&str] = &["/etc/default/kdiag-irqoff", "/etc/logrotate.d/kdiag"];

pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    /// Every file the packages install, absolute paths.
    pub files: Vec<String>,
}

fn out_dir() -> PathBuf {
    workspace_root().join("target/package")
}

fn write(path: &Path, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn generated(tool: &str, what: &str) -> Result<Vec<u8>> {
    let out = Command::new(binary(tool)).env("KDIAG_GENERATE", what).output()?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("{tool} did not generate its {what} output: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// Lay out the installed tree under `root`.
fn stage(root: &Path) -> Result<()> {
    let src = workspace_root();
    let pkg = src.join("packaging");
    for tool in TOOLS {
        fs::create_dir_all(root.join("usr/sbin"))?;
        fs::copy(crate::tasks::shipped(tool)?, root.join("usr/sbin").join(tool))?;
        write(&root.join(format!("usr/share/man/man8/{tool}.8.gz")), gzip(&generated(tool, "man")?)?, 0o644)?;
        write(&root.join(format!("usr/share/bash-completion/completions/{tool}")), generated(tool, "bash")?, 0o644)?;
        write(&root.join(format!("usr/share/zsh/vendor-completions/_{tool}")), generated(tool, "zsh")?, 0o644)?;
        write(&root.join(format!("usr/share/fish/vendor_completions.d/{tool}.fish")), generated(tool, "fish")?, 0o644)?;
    }
    write(&root.join("usr/share/man/man7/kdiag.7.gz"), gzip(&fs::read(pkg.join("man/kdiag.7"))?)?, 0o644)?;
    let doc = root.join("usr/share/doc/kdiag");
    write(&doc.join("README.md"), fs::read(src.join("README.md"))?, 0o644)?;
    write(&doc.join("LICENSE"), fs::read(src.join("LICENSE"))?, 0o644)?;
    write(&doc.join("copyright"), fs::read(pkg.join("copyright"))?, 0o644)?;
    write(&doc.join("THIRD-PARTY-LICENSES"), licenses::third_party_text()?, 0o644)?;
    write(&doc.join("k8s/irqoff-daemonset.yaml"), fs::read(pkg.join("k8s/irqoff-daemonset.yaml"))?, 0o644)?;
    write(&doc.join("k8s/README.md"), fs::read(pkg.join("k8s/README.md"))?, 0o644)?;
    write(
        &root.join("usr/lib/systemd/system/kdiag-irqoff.service"),
        fs::read(pkg.join("systemd/kdiag-irqoff.service"))?,
        0o644,
    )?;
    write(&root.join("etc/default/kdiag-irqoff"), fs::read(pkg.join("systemd/kdiag-irqoff.default"))?, 0o644)?;
    write(&root.join("etc/logrotate.d/kdiag"), fs::read(pkg.join("logrotate/kdiag"))?, 0o644)?;
    Ok(())
}

fn list_files(root: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, root, out)?;
            } else {
                out.push(format!("/{}", p.strip_prefix(root)?.display()));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    Ok(files)
}

/// Maintainer scripts: nothing is enabled or started by installing; the
/// service's logs go on purge, like its configuration.
const POSTINST: &str = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
const POSTRM: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = purge ]; then rm -rf /var/log/kdiag; fi\n\
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
const PRERM: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then \
systemctl stop kdiag-irqoff.service || true; fi\n";

fn build_deb(root: &Path, out: &Path) -> Result<PathBuf> {
    let deb_root = out.join("deb-root");
    let _ = fs::remove_dir_all(&deb_root);
    copy_tree(root, &deb_root)?;
    let installed_kb = dir_size(&deb_root)? / 1024;
    let control = format!(
        "Package: {NAME}\nVersion: {VERSION}-1\nArchitecture: amd64\nMaintainer: kdiag developers <kdiag@example.invalid>\n\
         Installed-Size: {installed_kb}\nSection: admin\nPriority: optional\nHomepage: https://example.invalid/kdiag\n\
         Description: {SUMMARY}\n{}\n",
        DESCRIPTION.lines().map(|l| format!(" {l}")).collect::<Vec<_>>().join("\n")
    );
    let debian = deb_root.join("DEBIAN");
    write(&debian.join("control"), control, 0o644)?;
    write(&debian.join("conffiles"), CONFFILES.join("\n") + "\n", 0o644)?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    let deb = out.join(format!("{NAME}_{VERSION}-1_amd64.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&deb_root).arg(&deb))?;
    Ok(deb)
}

fn build_rpm(root: &Path, files: &[String], out: &Path) -> Result<PathBuf> {
    let top = out.join("rpmbuild");
    let _ = fs::remove_dir_all(&top);
    // rpm removes only the directories a package owns: claim ours.
    let file_list: Vec<String> = owned_dirs(files)
        .into_iter()
        .map(|d| format!("%dir {d}"))
        .chain(files.iter().map(|f| {
            if CONFFILES.contains(&f.as_str()) {
                format!("%config(noreplace) {f}")
            } else {
                f.clone()
            }
        }))
        .collect();
    let spec = format!(
        "Name: {NAME}\nVersion: {VERSION}\nRelease: 1\nSummary: {SUMMARY}\nLicense: GPL-2.0-only\n\
         URL: https://example.invalid/kdiag\nBuildArch: x86_64\nAutoReqProv: no\n\n\
         %description\n{DESCRIPTION}\n\n\
         %install\nmkdir -p %{{buildroot}}\ncp -a {}/. %{{buildroot}}/\n\n\
         %post\n{}\n%preun\nif [ \"$1\" = 0 ] && [ -d /run/systemd/system ]; then \
         systemctl stop kdiag-irqoff.service || true; fi\n\
         %postun\nif [ \"$1\" = 0 ]; then rm -rf /var/log/kdiag; fi\n\
         if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n\n\
         %files\n{}\n",
        root.display(),
        POSTINST.lines().skip(2).collect::<Vec<_>>().join("\n"),
        file_list.join("\n")
    );
    let spec_path = top.join("SPECS/kdiag.spec");
    write(&spec_path, spec, 0o644)?;
    run(Command::new("rpmbuild")
        .arg("-bb")
        .arg(&spec_path)
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        // gzip payload and SHA-256 digests: readable by EL7's rpm 4.11 and by current rpm.
        .args(["--define", "_binary_payload w9.gzdio"])
        .args(["--define", "_binary_filedigest_algorithm 8"])
        .args(["--define", "_build_id_links none"])
        .args(["--define", "__strip /bin/true"])
        .args(["--define", "__os_install_post %{nil}"])
        .args(["--define", "debug_package %{nil}"]))?;
    let rpm = top.join(format!("RPMS/x86_64/{NAME}-{VERSION}-1.x86_64.rpm"));
    let dest = out.join(rpm.file_name().unwrap());
    fs::rename(&rpm, &dest)?;
    Ok(dest)
}

/// Directories only kdiag puts files in (its doc directory), which the
/// rpm must own so that erasing the package removes them.
pub fn owned_dirs(files: &[String]) -> Vec<String> {
    let base = "/usr/share/doc/kdiag";
    let mut dirs: Vec<String> = files
        .iter()
        .filter_map(|f| Path::new(f).parent().map(|p| p.display().to_string()))
        .filter(|d| d == base || d.starts_with(&format!("{base}/")))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(from).arg(to))
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}

pub fn package() -> Result<Packages> {
    apt_install(&["dpkg-dev", "rpm", "gzip", "binutils"])?;
    build(&[])?;
    let out = out_dir();
    let root = out.join("root");
    let _ = fs::remove_dir_all(&root);
    stage(&root)?;
    let files = list_files(&root)?;
    let deb = build_deb(&root, &out)?;
    let rpm = build_rpm(&root, &files, &out)?;
    println!("xtask: built {}\nxtask: built {}", deb.display(), rpm.display());
    Ok(Packages { deb, rpm, files })
}

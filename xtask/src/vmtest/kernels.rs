//! The guest kernels: which Debian packages, fetched and unpacked under
//! target/vmtest/, and what their configs promise about attach mechanisms.
//!
//! What the configs say (checked on 6.1.0-56 and 6.12.117+deb12; `check`
//! below re-reads them on every run, and the guest proves each by a real
//! load and attach):
//!
//! | config                                 | 5.10 | 6.1 | 6.12 | needed for   |
//! |----------------------------------------|------|-----|------|--------------|
//! | KPROBES, KPROBE_EVENTS                 | y    | y   | y    | kprobe       |
//! | FPROBE                                 | n    | n   | y    | kprobe.multi |
//! | FUNCTION_TRACER, DYNAMIC_FTRACE_WITH_DIRECT_CALLS | y | y | y | fentry (BPF trampolines) |
//! | FUNCTION_TRACER, DYNAMIC_FTRACE        | y    | y   | y    | ftrace (no BPF) |
//! | DEBUG_INFO_BTF                         | y    | y   | y    | CO-RE, tp_btf, fentry |
//! | DEBUG_INFO_BTF_MODULES                 | n    | y   | y    | fentry on module functions |
//! | MODULE_SIG_FORCE                       | n    | n   | n    | unsigned test module loads (taints) |
//! | IRQSOFF_TRACER                         | n    | n   | n    | (no in-kernel irqsoff tracer to compare with) |
//! | KERNEL_XZ / KERNEL_ZSTD                | xz   | xz  | zstd | xz decompresses ~2 s slower under TCG |
//! | MODULE_COMPRESS_XZ                     | n    | n   | y    | 6.12's loop.ko.xz is unpacked on the host |
//! | PREEMPT_VOLUNTARY                      | y    | y   | y    | (5.10 is Debian 11's kernel) |
//!
//! The 6.12 headers ship a BTF vmlinux, so the test module gets BTF there
//! and fentry can attach to its functions; the 6.1 headers do not (probe
//! the module with kprobes there), and 5.10 has no module BTF at all.
//!
//! Debian 11's kernel comes from the suites bullseye and
//! bullseye-security, which the host's apt sources do not list: those are
//! read through an apt configuration of their own under target/vmtest/apt/
//! (same mirrors as the host's), so the host's sources stay as they are.

use super::apt::Apt;
use super::{run_quiet, Timer};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct KernelSpec {
    /// What `--kernel` takes.
    pub label: &'static str,
    /// Debian suites the packages come from; empty: the host's own sources.
    suites: &'static [&'static str],
    /// Debian meta-packages that depend on the newest image and headers of
    /// the series; resolving them on every run follows security updates.
    image_meta: &'static str,
    headers_meta: &'static str,
    /// Mechanisms this kernel must accept and refuse, as its config says
    /// (asserted against the config before the guest asserts them).
    pub works: &'static [&'static str],
    pub refused: &'static [&'static str],
    /// Runs the guest's stress test: every tool attached and detached over
    /// and over (the kernels a lockup was seen on or near).
    pub stress: bool,
}

/// qemu's TCG emulates no PMU, so hardware cycles never work in a guest.
const ALWAYS_WORKS: &[&str] = &["tp_btf", "raw_tp", "tracepoint", "sw"];
const NEVER_WORKS: &[&str] = &["hw"];

/// What `--kernel all` and the suite boot: the kernels every tool's guest
/// tests pass on. The others can be booted by name.
pub const ALL: &[&str] = &["5.10", "6.1", "6.12"];

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        suites: &["bullseye", "bullseye-security"],
        image_meta: "linux-image-amd64",
        headers_meta: "linux-headers-amd64",
        works: &["fentry", "kprobe", "ftrace"],
        refused: &["kprobe-multi"],
        stress: true,
    },
    KernelSpec {
        label: "6.1",
        suites: &[],
        image_meta: "linux-image-amd64",
        headers_meta: "linux-headers-amd64",
        works: &["fentry", "kprobe", "ftrace"],
        refused: &["kprobe-multi"],
        stress: true,
    },
    KernelSpec {
        label: "6.12",
        suites: &[],
        image_meta: "linux-image-6.12-amd64",
        headers_meta: "linux-headers-6.12-amd64",
        works: &["kprobe-multi", "fentry", "kprobe", "ftrace"],
        refused: &[],
        stress: false,
    },
    // PREEMPT_RT: interrupt handlers and softirqs run in threads.
    KernelSpec {
        label: "6.12-rt",
        suites: &[],
        image_meta: "linux-image-6.12-rt-amd64",
        headers_meta: "linux-headers-6.12-rt-amd64",
        works: &["kprobe-multi", "fentry", "kprobe", "ftrace"],
        refused: &[],
        stress: false,
    },
];

/// A kernel ready to boot.
pub struct Kernel {
    /// e.g. "6.1.0-56-amd64"
    pub release: String,
    pub vmlinuz: PathBuf,
    pub loop_ko: PathBuf,
    pub kmod: PathBuf,
    pub expect: Vec<String>,
    pub absent: Vec<String>,
    pub fetch_secs: f64,
    pub module_secs: f64,
}

/// Unpack only the listed members of a .deb (the image is 500 MB unpacked;
/// a guest needs its vmlinuz, config and one or two modules).
fn extract_members(deb: &Path, dest: &Path, patterns: &[&str]) -> Result<()> {
    fs::create_dir_all(dest)?;
    let mut dpkg = Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped()).spawn()?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(dest)
        .args(patterns)
        .stdin(dpkg.stdout.take().unwrap())
        .output()?;
    let dpkg_ok = dpkg.wait()?.success();
    if !tar.status.success() || !dpkg_ok {
        bail!("unpacking {} failed: {}", deb.display(), String::from_utf8_lossy(&tar.stderr).trim());
    }
    Ok(())
}

fn find_file(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, pred) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
            return Some(p);
        }
    }
    None
}

pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("CONFIG_"))
        .map(|(k, v)| (k.trim_start_matches("CONFIG_").to_string(), v.to_string()))
        .collect()
}

/// What a config says each mechanism needs. Only "y" counts: these are
/// core features, never modules.
pub fn mechanisms_from_config(cfg: &BTreeMap<String, String>) -> (Vec<&'static str>, Vec<&'static str>) {
    let y = |k: &str| cfg.get(k).is_some_and(|v| v == "y");
    let bpf_tracing = y("BPF_SYSCALL") && y("BPF_EVENTS");
    let rules = [
        ("kprobe", bpf_tracing && y("KPROBES") && y("KPROBE_EVENTS")),
        ("kprobe-multi", bpf_tracing && y("FPROBE")),
        (
            "fentry",
            y("BPF_JIT") && y("DEBUG_INFO_BTF") && y("FUNCTION_TRACER") && y("DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
        ),
        // The function tracer with set_ftrace_filter, no BPF.
        ("ftrace", y("FUNCTION_TRACER") && y("DYNAMIC_FTRACE")),
    ];
    let works = rules.iter().filter(|(_, ok)| *ok).map(|(m, _)| *m).collect();
    let refused = rules.iter().filter(|(_, ok)| !*ok).map(|(m, _)| *m).collect();
    (works, refused)
}

/// The config must agree with the table above, or the table is stale:
/// better to stop than to assert the wrong thing in the guest.
fn check(spec: &KernelSpec, cfg: &BTreeMap<String, String>) -> Result<(Vec<String>, Vec<String>)> {
    let (works, refused) = mechanisms_from_config(cfg);
    let mut want_works: Vec<&str> = spec.works.to_vec();
    let mut want_refused: Vec<&str> = spec.refused.to_vec();
    let (mut w, mut r) = (works.clone(), refused.clone());
    for v in [&mut want_works, &mut want_refused, &mut w, &mut r] {
        v.sort();
    }
    if w != want_works || r != want_refused {
        bail!(
            "kernel {} config gives works={works:?} refused={refused:?}, but vmtest expects works={:?} \
             refused={:?}: update KERNELS in xtask/src/vmtest/kernels.rs",
            spec.label,
            spec.works,
            spec.refused
        );
    }
    let to_owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut expect = to_owned(&works);
    expect.extend(to_owned(ALWAYS_WORKS));
    let mut absent = to_owned(&refused);
    absent.extend(to_owned(NEVER_WORKS));
    Ok((expect, absent))
}

/// Build the test module against this kernel's headers.
fn build_module(headers: &Path, kmod_src: &Path, out: &Path) -> Result<PathBuf> {
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    fs::create_dir_all(out)?;
    for f in ["kdiag_test.c", "Kbuild"] {
        fs::copy(kmod_src.join(f), out.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let o = Command::new("make")
        .arg("-C")
        .arg(headers)
        .arg(format!("M={}", out.display()))
        // Debian 11's headers name gcc-10, a bullseye package; the host's
        // gcc-12 builds a module that loads and runs there just as well.
        .arg("CC=gcc-12")
        .arg("modules")
        .output()
        .context("running make")?;
    let ko = out.join("kdiag_test.ko");
    if !o.status.success() || !ko.exists() {
        bail!(
            "building kdiag_test.ko against {} failed:\n{}{}",
            headers.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(ko)
}

/// Download, unpack and check one kernel, and build the test module for it.
pub fn prepare(spec: &'static KernelSpec, root: &Path, kmod_src: &Path) -> Result<Kernel> {
    let t = Timer::start();
    let apt = if spec.suites.is_empty() { Apt::host() } else { Apt::suites(root, spec.suites)? };
    let image_pkg = apt.resolve(spec.image_meta, "linux-image-")?;
    let headers_pkg = apt.resolve(spec.headers_meta, "linux-headers-")?;
    let release = image_pkg.trim_start_matches("linux-image-").to_string();
    // The headers package holds only the arch part; its common part and
    // the kbuild tools are separate packages it depends on.
    let mut header_pkgs = vec![headers_pkg.clone()];
    header_pkgs.extend(
        apt.depends(&headers_pkg)?
            .into_iter()
            .filter(|d| (d.starts_with("linux-headers-") && d.contains("common")) || d.starts_with("linux-kbuild-")),
    );
    let debs = root.join("debs");
    let image_deb = apt.fetch(&image_pkg, &debs)?;
    let header_debs = header_pkgs.iter().map(|p| apt.fetch(p, &debs)).collect::<Result<Vec<_>>>()?;

    let kdir = root.join(&release);
    let image_dir = kdir.join("image");
    let headers_dir = kdir.join("headers");
    // Keyed by the .deb names, so a newer package is unpacked afresh.
    let stamp_text =
        std::iter::once(&image_deb).chain(&header_debs).map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
    let stamp = kdir.join("unpacked");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_text.as_str()) {
        for d in [&image_dir, &headers_dir] {
            if d.exists() {
                fs::remove_dir_all(d)?;
            }
        }
        extract_members(&image_deb, &image_dir, &["./boot/*", "*/kernel/drivers/block/loop.ko*"])?;
        for deb in &header_debs {
            run_quiet(Command::new("dpkg").arg("-x").arg(deb).arg(&headers_dir))?;
        }
        fs::write(&stamp, &stamp_text)?;
    }

    let vmlinuz = image_dir.join(format!("boot/vmlinuz-{release}"));
    let config_text =
        fs::read_to_string(image_dir.join(format!("boot/config-{release}"))).context("reading the kernel config")?;
    let (expect, absent) = check(spec, &parse_config(&config_text))?;

    // busybox-style loaders and finit_module without flags want a plain .ko.
    let loop_any =
        find_file(&image_dir, &|n| n.starts_with("loop.ko")).ok_or_else(|| anyhow!("no loop.ko in {image_pkg}"))?;
    let loop_ko = kdir.join("loop.ko");
    if loop_any.extension().is_some_and(|e| e == "xz") {
        let o = Command::new("xz").arg("-dc").arg(&loop_any).output().context("running xz")?;
        if !o.status.success() {
            bail!("xz -d {}: {}", loop_any.display(), String::from_utf8_lossy(&o.stderr));
        }
        fs::write(&loop_ko, o.stdout)?;
    } else {
        fs::copy(&loop_any, &loop_ko)?;
    }

    // The headers' Makefile includes the common part by absolute path under
    // /usr/src; point it at the unpacked copy instead of installing it.
    let hdr = headers_dir.join(format!("usr/src/linux-headers-{release}"));
    let makefile = hdr.join("Makefile");
    let text = fs::read_to_string(&makefile).context("reading the headers' Makefile")?;
    let unpacked_src = headers_dir.join("usr/src");
    let fixed = text.replace("include /usr/src/", &format!("include {}/", unpacked_src.display()));
    if fixed != text {
        fs::write(&makefile, fixed)?;
    }
    let fetch_secs = t.secs();

    let t = Timer::start();
    let kmod = build_module(&hdr, kmod_src, &kdir.join("kmod"))?;
    Ok(Kernel { release, vmlinuz, loop_ko, kmod, expect, absent, fetch_secs, module_secs: t.secs() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rules() {
        let cfg = parse_config(
            "CONFIG_BPF_SYSCALL=y\nCONFIG_BPF_EVENTS=y\nCONFIG_KPROBES=y\nCONFIG_KPROBE_EVENTS=y\n\
             # CONFIG_FPROBE is not set\nCONFIG_BPF_JIT=y\nCONFIG_DEBUG_INFO_BTF=y\n\
             CONFIG_FUNCTION_TRACER=y\nCONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y\nCONFIG_DYNAMIC_FTRACE=y\n",
        );
        let (works, refused) = mechanisms_from_config(&cfg);
        assert_eq!(works, ["kprobe", "fentry", "ftrace"]);
        assert_eq!(refused, ["kprobe-multi"]);
        let spec = |label: &str| KERNELS.iter().find(|k| k.label == label).unwrap();
        assert!(check(spec("6.1"), &cfg).is_ok());
        assert!(check(spec("5.10"), &cfg).is_ok());
        let err = check(spec("6.12"), &cfg).unwrap_err().to_string();
        assert!(err.contains("update KERNELS"), "{err}");
    }
}

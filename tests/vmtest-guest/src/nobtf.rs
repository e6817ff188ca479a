//! A kernel without BTF, as fleets still run (CONFIG_DEBUG_INFO_BTF=n):
//! /sys/kernel/btf is hidden under an empty tmpfs, after the kernel's own
//! BTF was copied to a file. Without the file every tool that needs BTF
//! must refuse in one line naming `--btf`; with it (given as `KDIAG_BTF`,
//! the way a service would) each passes its usual checks on the rungs that
//! attach without the kernel's BTF (raw_tp, kprobe, kprobe-multi), since
//! tp_btf and fentry attach by BTF ids only the kernel's own BTF gives
//! libbpf. funcstack, which can do without, must fall back to ftrace.

use crate::tool::run_tool;
use crate::{blkreq, compactwatch, epollwake, funcstack, kmod, offwaketime, sys, Ctx, Reporter};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

const BTF_DIR: &str = "/sys/kernel/btf";
const COPY: &str = "/tmp/vmlinux.btf";

/// Copy the kernel's BTF aside, then hide the directory it lives in.
fn hide() -> Result<u64, String> {
    let bytes = std::fs::copy(format!("{BTF_DIR}/vmlinux"), COPY).map_err(|e| format!("copying the BTF: {e}"))?;
    sys::mount("tmpfs", BTF_DIR).map_err(|e| format!("tmpfs over {BTF_DIR}: {e}"))?;
    if std::path::Path::new(&format!("{BTF_DIR}/vmlinux")).exists() {
        return Err(format!("{BTF_DIR}/vmlinux still visible"));
    }
    Ok(bytes)
}

fn unhide() -> Result<(), String> {
    let dir = CString::new(BTF_DIR).unwrap();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(dir.as_ptr(), 0) } != 0 {
        return Err(format!("umount {BTF_DIR}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Without BTF and without `--btf`: exit 2, one line that names `--btf`.
fn refuses(rep: &mut Reporter, tool: &str, args: &[&str]) {
    let name = format!("nobtf.{tool}.refused");
    let out = match std::process::Command::new(format!("/bin/{tool}")).args(args).env_remove("KDIAG_BTF").output() {
        Ok(o) => o,
        Err(e) => return rep.fail(&name, format!("cannot start {tool}: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let ok =
        out.status.code() == Some(2) && matches!(lines.as_slice(), [l] if l.contains("--btf") && l.contains("no BTF"));
    rep.result(&name, ok, format!("{} {}: {}; stderr: {}", tool, args.join(" "), out.status, lines.join(" | ")));
}

/// irqoff with the copy: it must attach and end cleanly, and say what it
/// knows of steal time (nothing, under TCG).
fn irqoff_runs(rep: &mut Reporter) {
    let args = ["-t", "10", "--json", "1"];
    match run_tool("/bin/irqoff", &args, false, Duration::from_secs(30), || ()) {
        Ok((run, ())) => rep.result("nobtf.irqoff", run.ok(), format!("{}; banner: {}", run.why(), run.banner())),
        Err(e) => rep.fail("nobtf.irqoff", e),
    }
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    match hide() {
        Ok(bytes) => rep.pass("nobtf.hidden", format!("{bytes} bytes of BTF in {COPY}; {BTF_DIR} is empty")),
        Err(e) => return rep.fail("nobtf.hidden", e),
    }
    // Whatever a check does, the BTF comes back for the groups after this.
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| hidden(ctx, rep))) {
        rep.fail("nobtf", format!("panicked: {}", crate::panic_message(p.as_ref())));
    }
    std::env::remove_var("KDIAG_BTF");
    match unhide() {
        Ok(()) => rep.pass("nobtf.restored", format!("{BTF_DIR}/vmlinux is back")),
        Err(e) => rep.fail("nobtf.restored", e),
    }
}

fn hidden(ctx: &Ctx, rep: &mut Reporter) {
    let works = |m: &str| ctx.expect.iter().any(|e| e == m);
    for (tool, args) in [
        ("offwaketime", &["1"][..]),
        ("blkreq", &["-n", "1", "1"][..]),
        ("epollwake", &["-p", "1", "1"][..]),
        ("compactwatch", &["1"][..]),
        ("irqoff", &["1"][..]),
    ] {
        refuses(rep, tool, args);
    }
    // funcstack needs BTF only for its BPF rungs' CO-RE and fentry: without
    // any, it traces through ftrace.
    funcstack::ftrace(rep, "nobtf.funcstack", false);

    // From here on every tool this process starts finds the copy.
    std::env::set_var("KDIAG_BTF", COPY);
    irqoff_runs(rep);
    offwaketime::check(rep, "nobtf.offwaketime", None, "raw_tp");
    match blkreq::LoopDev::attach() {
        Ok(dev) => {
            let best = if works("kprobe-multi") { "kprobe-multi" } else { "kprobe" };
            blkreq::check(rep, "nobtf.blkreq", &dev, None, best);
        }
        Err(e) => rep.fail("nobtf.blkreq", format!("no loop device: {e}")),
    }
    // The checks assert: a panic is this result's failure, not the group's.
    let epoll = catch_unwind(|| {
        epollwake::loopback_up().and_then(|()| epollwake::case("kprobe", "127.0.0.1:0", "ipv4", "127.0.0.1"))
    });
    match epoll {
        Ok(Ok(d)) => rep.pass("nobtf.epollwake", d),
        Ok(Err(e)) => rep.fail("nobtf.epollwake", e),
        Err(p) => rep.fail("nobtf.epollwake", format!("panicked: {}", crate::panic_message(p.as_ref()))),
    }
    let compaction = kmod::with_low_min_free(|| {
        compactwatch::case_as(rep, "nobtf.compactwatch", "raw_tp", "nofs", 64, 3, compactwatch::compacted)
    });
    if let Err(e) = compaction {
        rep.fail("nobtf.compactwatch", e.to_string());
    }
}

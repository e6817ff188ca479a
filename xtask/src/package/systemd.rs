//! The kdiag-irqoff service under a real systemd as PID 1: a bare Debian 12
//! with systemd, booted by systemd-nspawn, the .deb installed in it. The
//! service is started and stopped with systemctl, its banner read from the
//! journal, its windows from its log, across a forced logrotate; what the
//! running irqoff held in the kernel is gone after the stop.
//!
//! The windows are the host's own: at a 1 ms threshold a VM's vCPUs show a
//! few natural windows every second (timer interrupts served late), which
//! is all a service test needs; their exact lengths are the host tests'
//! business (tools/irqoff/tests/host.rs injects known ones).

use super::check::{fresh_chroot, in_chroot, output};
use super::Packages;
use crate::setup::apt_install;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOG: &str = "var/log/kdiag/irqoff.log";
const PROM: &str = "var/lib/prometheus/node-exporter/kdiag-irqoff.prom";

/// A booted container, powered off and waited for on drop.
struct Container {
    nspawn: Child,
    root: PathBuf,
    leader: u32,
}

impl Container {
    /// --keep-unit: no scope of its own, which would need the host's
    /// systemd (D-Bus); the container lives in our cgroup.
    fn boot(root: &Path) -> Result<Self> {
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            .args(["--boot", "--register=no", "--keep-unit", "--quiet", "--console=passive", "--capability=all"])
            // nspawn's seccomp filter refuses these by default; irqoff needs them.
            .args(["--system-call-filter=bpf perf_event_open", "--machine=kdiag-systemd-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut c = Container { nspawn, root: root.to_path_buf(), leader: 0 };
        c.leader = wait(Duration::from_secs(60), "the container's PID 1", || leader_of(c.nspawn.id()))?;
        wait(Duration::from_secs(90), "the container to boot", || {
            let state = c.run(&["systemctl", "is-system-running"]).unwrap_or_default();
            matches!(state.trim(), "running" | "degraded").then_some(())
        })?;
        Ok(c)
    }

    /// Run a command inside, in every namespace of its PID 1.
    fn run(&self, args: &[&str]) -> Result<String> {
        output(Command::new("nsenter").arg("-t").arg(self.leader.to_string()).args(["-a", "--"]).args(args))
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.run(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn leader_of(nspawn: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn wait<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Lines of the log that start a window record (`TIME CPU COMM TID LAT`).
fn windows(log: &str) -> usize {
    log.lines().filter(|l| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'_').count()
}

/// The BPF programs held by the irqoff processes of the container whose
/// PID 1 is `leader` (same PID namespace), seen from the host through
/// their fds.
fn programs_held_in(leader: u32) -> BTreeSet<u32> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let theirs = ns(&leader.to_string());
    let mut ids = BTreeSet::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "irqoff" || theirs.is_none() || ns(&pid) != theirs {
            continue;
        }
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
            ids.extend(
                info.unwrap_or_default().lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

fn program_loaded(id: u32) -> bool {
    Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().is_ok_and(|o| o.status.success())
}

pub fn service_runs_under_systemd(p: &Packages) -> Result<()> {
    apt_install(&["systemd-container", "bpftool"])?;
    let root = fresh_chroot("systemd-root", "systemd,systemd-sysv,dbus,logrotate")?;
    std::fs::copy(&p.deb, root.join("tmp/kdiag.deb"))?;
    in_chroot(&root, &["dpkg", "-i", "/tmp/kdiag.deb"])?;
    // Natural windows need a low threshold (module comment).
    std::fs::write(
        root.join("etc/default/kdiag-irqoff"),
        std::fs::read_to_string(root.join("etc/default/kdiag-irqoff"))?
            .replace("IRQOFF_THRESHOLD_MS=10", "IRQOFF_THRESHOLD_MS=1")
            .replace("IRQOFF_ARGS=", "IRQOFF_ARGS=--max-rate 0 --metrics-interval 1s"),
    )?;
    let c = Container::boot(&root)?;
    c.run(&["systemctl", "start", "kdiag-irqoff"])?;
    let journal = || c.run(&["journalctl", "-u", "kdiag-irqoff", "--no-pager", "-o", "cat"]).unwrap_or_default();
    wait(Duration::from_secs(30), "irqoff's banner in the journal", || {
        journal().contains("irqoff: watching CPUs").then_some(())
    })
    .with_context(|| format!("journal: {}", journal()))?;
    let banner = journal();
    ensure!(banner.contains("appending to /var/log/kdiag/irqoff.log"), "{banner}");
    ensure!(banner.contains(&format!("metrics every 1s into /{PROM}")), "{banner}");
    let held = programs_held_in(c.leader);
    ensure!(!held.is_empty(), "the service's irqoff holds no BPF program");
    wait(Duration::from_secs(60), "a window in the log", || (windows(&c.file(LOG)) > 0).then_some(()))?;
    wait(Duration::from_secs(10), "the metrics file", || {
        c.file(PROM).contains("kdiag_irqoff_samples_total").then_some(())
    })?;

    // copytruncate: the log is copied to .1 and emptied; irqoff's next
    // write must land at the new end, not leave a hole where the old
    // content was.
    c.run(&["logrotate", "-f", "/etc/logrotate.d/kdiag"])?;
    ensure!(windows(&c.file(&format!("{LOG}.1"))) > 0, "nothing rotated to {LOG}.1");
    wait(Duration::from_secs(60), "a window after logrotate", || (windows(&c.file(LOG)) > 0).then_some(()))?;
    let after = std::fs::read(root.join(LOG))?;
    ensure!(after.first() != Some(&0), "the log starts with a hole after logrotate: irqoff wrote at its old offset");

    c.run(&["systemctl", "stop", "kdiag-irqoff"])?;
    let state = c.run(&["systemctl", "show", "-p", "ActiveState,Result", "kdiag-irqoff"])?;
    ensure!(state.contains("ActiveState=inactive") && state.contains("Result=success"), "after stop: {state}");
    ensure!(c.file(LOG).contains("irqoff: SIGTERM received after"), "no summary in the log: {}", c.file(LOG));
    ensure!(programs_held_in(c.leader).is_empty(), "an irqoff still runs after systemctl stop");
    wait(Duration::from_secs(10), "the service's BPF programs to be freed", || {
        (!held.iter().any(|&id| program_loaded(id))).then_some(())
    })
    .with_context(|| format!("still loaded: {held:?}"))?;
    drop(c);
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

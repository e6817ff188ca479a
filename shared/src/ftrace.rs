//! ftrace through tracefs, for tools that must work where BPF does not: a
//! private trace instance under `instances/`, so the global tracer (which
//! an engineer on the box may be using by hand) is never touched, and
//! everything set up in it goes away with it.
//!
//! An instance is named `kdiag-<tool>-<pid>`. One left behind by a tool that
//! was killed with SIGKILL is removed by the next run of that tool.

use crate::Errno;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tracefs instance this process created; dropped, it is stopped and
/// removed.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
}

/// A failed tracefs write, with the file, the value and the errno, because
/// what an EPERM or EINVAL means depends on all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    pub file: String,
    pub value: String,
    pub errno: Errno,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.value.len() > 40 { format!("{}...", &self.value[..40]) } else { self.value.clone() };
        write!(f, "{} writing '{}' to {}", self.errno, v.trim(), self.file)
    }
}

fn prefix(tool: &str) -> String {
    format!("kdiag-{tool}-")
}

impl Instance {
    /// Create `instances/kdiag-<tool>-<pid>` under `tracefs`, first
    /// removing instances of earlier runs of `tool` whose process is gone.
    pub fn create(tracefs: &Path, tool: &str) -> Result<Self, String> {
        let instances = tracefs.join("instances");
        if !instances.is_dir() {
            return Err(format!("{} is missing: this kernel has no trace instances", instances.display()));
        }
        remove_stale(&instances, tool);
        let dir = instances.join(format!("{}{}", prefix(tool), std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create trace instance {}: {e}", dir.display()))?;
        Ok(Instance { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Replace the content of `file` (for filter files: reset, then set).
    pub fn write(&self, file: &str, value: &str) -> Result<(), WriteError> {
        write_file(&self.dir.join(file), file, value, true)
    }

    /// Add to `file` without resetting it (filter files take one write per
    /// batch of names).
    pub fn append(&self, file: &str, value: &str) -> Result<(), WriteError> {
        write_file(&self.dir.join(file), file, value, false)
    }

    pub fn read(&self, file: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.dir.join(file))
    }
}

fn write_file(path: &Path, file: &str, value: &str, truncate: bool) -> Result<(), WriteError> {
    let err = |e: std::io::Error| WriteError {
        file: file.to_string(),
        value: value.to_string(),
        errno: Errno(e.raw_os_error().unwrap_or(0)),
    };
    let mut f = OpenOptions::new().write(true).truncate(truncate).append(!truncate).open(path).map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

/// Stop whatever runs in the instance at `dir` and remove it. Best effort:
/// every step is tried even if an earlier one failed.
fn teardown(dir: &Path) -> std::io::Result<()> {
    let quiet = |file: &str, value: &str, truncate: bool| {
        let _ = write_file(&dir.join(file), file, value, truncate);
    };
    quiet("tracing_on", "0", true);
    // On 5.10 the function tracer's options are one set for all instances
    // (6.1 keeps them per instance): left on, the next function tracer
    // anywhere, the top level's too, takes a stack at every call. Turned
    // off while ours still runs, so that the kernel acts on it.
    quiet("options/func_stack_trace", "0", true);
    quiet("current_tracer", "nop", true);
    quiet("events/enable", "0", true);
    // Opening a filter file for writing with O_TRUNC empties it.
    quiet("set_ftrace_filter", "", true);
    quiet("set_ftrace_pid", "", true);
    quiet("set_event_pid", "", true);
    // The kernel refuses to remove an instance whose buffers are still
    // being read; a reader thread may need a moment to close its file.
    let mut last = Ok(());
    for _ in 0..20 {
        last = std::fs::remove_dir(dir);
        match &last {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    last
}

fn remove_stale(instances: &Path, tool: &str) {
    let Ok(dir) = std::fs::read_dir(instances) else { return };
    let prefix = prefix(tool);
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = teardown(&e.path());
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.dir) {
            crate::warning!("could not remove trace instance {}: {e}", self.dir.display());
        }
    }
}

/// Can this kernel run the function tracer with a filter, in an instance?
/// Answered by doing it: some kernels list the tracer and still refuse
/// every filter and tracer write with EPERM (the host here does).
pub fn function_tracer_usable(tracefs: &Path) -> Result<(), String> {
    let inst = Instance::create(tracefs, "probe")?;
    let tracers = inst.read("available_tracers").map_err(|e| format!("cannot read available_tracers: {e}"))?;
    if !tracers.split_whitespace().any(|t| t == "function") {
        return Err("no function tracer (CONFIG_FUNCTION_TRACER is off)".into());
    }
    // The same function the BPF probes use; it is traceable everywhere.
    inst.write("set_ftrace_filter", "vfs_read").map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_is_created_and_removed() {
        kdiag_testkit::needs_root("makes a tracefs instance");
        let tracefs = crate::precheck::tracefs().unwrap();
        let inst = Instance::create(&tracefs, "selftest").unwrap();
        let dir = inst.path().to_path_buf();
        assert!(dir.join("trace_pipe").exists());
        inst.write("tracing_on", "0").unwrap();
        assert_eq!(inst.read("tracing_on").unwrap().trim(), "0");
        let e = inst.write("no_such_file", "1").unwrap_err();
        assert_eq!(e.errno, Errno(libc::ENOENT));
        assert_eq!(e.to_string(), "ENOENT writing '1' to no_such_file");
        drop(inst);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_instances_of_dead_runs_are_removed() {
        kdiag_testkit::needs_root("makes tracefs instances");
        let tracefs = crate::precheck::tracefs().unwrap();
        // No process has pid u32::MAX - 1: pid_max is at most 2^22.
        let stale = tracefs.join("instances").join(format!("{}{}", prefix("stale"), u32::MAX - 1));
        std::fs::create_dir(&stale).unwrap();
        let inst = Instance::create(&tracefs, "stale").unwrap();
        assert!(!stale.exists());
        drop(inst);
    }
}

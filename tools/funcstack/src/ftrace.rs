//! The ftrace rung: no BPF at all. Functions go through the function
//! tracer with `func_stack_trace` and a `set_ftrace_filter`, tracepoints
//! through the event tracer with the `stacktrace` option; both in a
//! private tracefs instance (never the global tracer), read from its
//! trace_pipe and parsed here.

use crate::report::{self, Entry, Summary};
use crate::target::Resolved;
use kdiag_shared::ftrace::Instance;
use kdiag_shared::stacks::Stack;
use kdiag_shared::symbolize::Frame;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// One stack as ftrace printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub comm: String,
    pub tid: u32,
    /// With the record-tgid option; None when the kernel did not know it.
    pub tgid: Option<u32>,
    pub cpu: u32,
    /// The function reached (function tracer); None for an event.
    pub function: Option<String>,
    /// (name, module), innermost first.
    pub frames: Vec<(String, Option<String>)>,
}

/// The fields before the event text: `COMM-TID (TGID) [CPU] FLAGS TS: `.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    comm: &'a str,
    tid: u32,
    tgid: Option<u32>,
    cpu: u32,
    rest: &'a str,
}

/// ftrace prints `<...>` for a task its saved_cmdlines cache no longer
/// holds (seen on 6.1 for a short-lived thread); the task itself, read
/// while tracing and usually still alive, knows its name.
fn resolve_comm(comm: &str, tid: u32) -> String {
    if comm != "<...>" {
        return comm.to_string();
    }
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_else(|_| comm.to_string())
}

/// Parse the head of a trace line. The command name may hold spaces,
/// dashes and brackets, so the line is split at the CPU field, the first
/// `[digits]` preceded by `-TID` or `-TID (TGID)`.
fn head(line: &str) -> Option<Head<'_>> {
    let mut from = 0;
    while let Some(i) = line[from..].find('[').map(|i| i + from) {
        from = i + 1;
        let Some(close) = line[i..].find(']').map(|c| c + i) else {
            break;
        };
        let Ok(cpu) = line[i + 1..close].parse::<u32>() else {
            continue;
        };
        let mut task = line[..i].trim_end();
        let mut tgid = None;
        if let Some(t) = task.strip_suffix(')') {
            let Some((before, inside)) = t.rsplit_once('(') else {
                continue;
            };
            tgid = inside.trim().parse::<u32>().ok();
            task = before.trim_end();
        }
        let Some((comm, tid)) = task.rsplit_once('-') else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            continue;
        };
        let after = &line[close + 1..];
        let rest = after.find(": ").map(|c| &after[c + 2..]).unwrap_or("");
        return Some(Head { comm: comm.trim_start(), tid, tgid, cpu, rest });
    }
    None
}

/// ` => name`, ` => name+0x1c/0x40`, ` => name [module]`.
fn frame(line: &str) -> Option<(String, Option<String>)> {
    let f = line.trim_start().strip_prefix("=> ")?.trim();
    let (f, module) = match f.strip_suffix(']').and_then(|r| r.rsplit_once(" [")) {
        Some((name, m)) => (name, Some(m.to_string())),
        None => (f, None),
    };
    let name = f.split(['+', ' ']).next().unwrap_or(f);
    Some((name.to_string(), module))
}

/// Turns trace_pipe text into samples, a line at a time; a sample is
/// complete when the line after its last frame arrives.
#[derive(Default)]
pub struct Parser {
    pending: Option<Sample>,
    /// The function each CPU last entered: its stack follows on that CPU,
    /// though other CPUs' lines may come between.
    last_function: HashMap<u32, String>,
    partial: String,
    pub lost: u64,
}

impl Parser {
    pub fn feed(&mut self, text: &str, out: &mut Vec<Sample>) {
        self.partial.push_str(text);
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let complete: String = self.partial.drain(..=end).collect();
        for line in complete.lines() {
            self.line(line, out);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Sample>) {
        let rest = std::mem::take(&mut self.partial);
        for line in rest.lines() {
            self.line(line, out);
        }
        out.extend(self.pending.take());
    }

    fn line(&mut self, line: &str, out: &mut Vec<Sample>) {
        if let Some(f) = frame(line) {
            if let Some(p) = &mut self.pending {
                p.frames.push(f);
            }
            return;
        }
        out.extend(self.pending.take());
        if line.starts_with('#') || line.trim().is_empty() {
            return;
        }
        // "CPU:1 [LOST 42 EVENTS]"
        if let Some(n) = line.split_once("[LOST ").and_then(|(_, r)| r.split_whitespace().next()) {
            self.lost += n.parse::<u64>().unwrap_or(0);
            return;
        }
        let Some(h) = head(line) else { return };
        if h.rest.trim() == "<stack trace>" {
            self.pending = Some(Sample {
                comm: resolve_comm(h.comm, h.tid),
                tid: h.tid,
                tgid: h.tgid,
                cpu: h.cpu,
                function: self.last_function.remove(&h.cpu),
                frames: vec![],
            });
        } else if let Some((func, _parent)) = h.rest.split_once(" <-") {
            self.last_function.insert(h.cpu, func.trim().to_string());
        }
    }
}

pub struct Session {
    // The pipe before the instance: fields drop in order, and an instance
    // whose trace_pipe is still open cannot be removed (EBUSY).
    pipe: Option<File>,
    inst: Instance,
    parser: Parser,
    samples: Vec<Sample>,
    /// What the kernel itself filtered on, and so holds for every sample.
    pub scope: Scope,
}

/// -p and -c. Given to the kernel where it can filter (pid lists for both
/// tracers, a `comm ==` filter for events), because the task may be gone by
/// the time its line is read, and then neither its process nor (when
/// ftrace prints `<...>`) its name can be looked up any more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The threads of process `pid` now.
fn threads(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Restrict the tracer to process `pid`: its threads now, and through the
/// fork option every task they start from here on. The threads are listed
/// again after the fork option is on, for one started in between.
fn limit_to_process(inst: &Instance, pids_file: &str, fork_option: &str, pid: u32) -> Result<(), String> {
    let first = threads(pid);
    if first.is_empty() {
        return Err(format!("process {pid} is gone"));
    }
    set(inst, pids_file, &first.join(" "))?;
    set(inst, fork_option, "1")?;
    let late: Vec<String> = threads(pid).into_iter().filter(|t| !first.contains(t)).collect();
    if !late.is_empty() {
        inst.append(pids_file, &late.join(" ")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn set(inst: &Instance, file: &str, value: &str) -> Result<(), String> {
    inst.write(file, value).map_err(|e| e.to_string())
}

impl Session {
    /// Set up the instance and start tracing. Nothing is traced until the
    /// filter is in place: a function tracer without one would trace every
    /// function in the kernel.
    /// `want` is what the caller filters on; what the kernel took over is in
    /// the session's `scope`, and the caller need not check that again.
    pub fn start(tracefs: &Path, target: &Resolved, glob: Option<&str>, want: &Scope) -> Result<Self, String> {
        let inst = Instance::create(tracefs, "funcstack")?;
        set(&inst, "tracing_on", "0")?;
        // Stacks are big records; the default buffer overruns quickly.
        let _ = inst.write("buffer_size_kb", "4096");
        // Without it there is no process id in the output (before 4.13);
        // the tid still is, and -p then looks the process up.
        let _ = inst.write("options/record-tgid", "1");
        // Reading trace_pipe goes through vfs_read and friends: tracing one
        // of those from this very process feeds itself forever. Leave us
        // out (5.8+; older kernels rely on the read budget in drain()).
        let me = std::process::id().to_string();
        let _ = inst.write("set_ftrace_notrace_pid", &me);
        let _ = inst.write("set_event_notrace_pid", &me);
        let mut scope = Scope::default();
        match target {
            Resolved::Functions { names, .. } => {
                let tracers = inst.read("available_tracers").unwrap_or_default();
                if !tracers.split_whitespace().any(|t| t == "function") {
                    return Err("no function tracer in this kernel (CONFIG_FUNCTION_TRACER is off)".into());
                }
                let refused = |e: kdiag_shared::ftrace::WriteError| match e.errno.0 {
                    libc::EPERM => format!("{e}: this kernel refuses the function tracer"),
                    libc::EINVAL => format!("{e}: ftrace cannot trace it (notrace)"),
                    _ => e.to_string(),
                };
                match glob {
                    Some(g) => inst.write("set_ftrace_filter", g).map_err(refused)?,
                    None => {
                        for (i, chunk) in names.chunks(256).enumerate() {
                            let names = chunk.join(" ");
                            let res = if i == 0 {
                                inst.write("set_ftrace_filter", &names)
                            } else {
                                inst.append("set_ftrace_filter", &names)
                            };
                            res.map_err(refused)?;
                        }
                    }
                }
                let filter =
                    inst.read("set_ftrace_filter").map_err(|e| format!("cannot read set_ftrace_filter: {e}"))?;
                if filter.lines().all(|l| l.starts_with('#') || l.trim().is_empty()) {
                    return Err("the function filter came out empty: ftrace cannot trace these functions".into());
                }
                if let Some(p) = want.pid {
                    limit_to_process(&inst, "set_ftrace_pid", "options/function-fork", p)?;
                    scope.pid = Some(p);
                }
                set(&inst, "current_tracer", "function")?;
                // Where the option is shared by all instances (5.10) it may
                // read as on already, and writing 1 then changes nothing in
                // this one: off first makes the 1 take effect.
                set(&inst, "options/func_stack_trace", "0")?;
                set(&inst, "options/func_stack_trace", "1")?;
            }
            Resolved::Tracepoint { group, name } => {
                if let Some(p) = want.pid {
                    limit_to_process(&inst, "set_event_pid", "options/event-fork", p)?;
                    scope.pid = Some(p);
                }
                // `comm` is a field every event can be filtered on; a kernel
                // that refuses it leaves the check to the caller.
                if let Some(c) = &want.comm {
                    if inst.write(&format!("events/{group}/{name}/filter"), &format!("comm == \"{c}\"")).is_ok() {
                        scope.comm = Some(c.clone());
                    }
                }
                set(&inst, "options/stacktrace", "1")?;
                set(&inst, &format!("events/{group}/{name}/enable"), "1")?;
            }
        }
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(inst.path().join("trace_pipe"))
            .map_err(|e| format!("cannot open trace_pipe: {e}"))?;
        set(&inst, "tracing_on", "1")?;
        Ok(Session { inst, pipe: Some(pipe), parser: Parser::default(), samples: vec![], scope })
    }

    /// Read what trace_pipe has, waiting up to `timeout` for the first data.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(pipe) = &self.pipe else {
            return Ok(());
        };
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("waiting for trace_pipe: {e}"));
        }
        self.drain(4 << 20)
    }

    /// Read until the pipe is empty, or at most `budget` bytes: while
    /// tracing, a target hit by our own reading would otherwise never let
    /// the caller look at its deadline again.
    fn drain(&mut self, budget: usize) -> Result<(), String> {
        let Some(pipe) = &mut self.pipe else {
            return Ok(());
        };
        let mut buf = vec![0u8; 1 << 16];
        let mut taken = 0;
        loop {
            if taken >= budget {
                return Ok(());
            }
            match pipe.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    taken += n;
                    self.parser.feed(&String::from_utf8_lossy(&buf[..n]), &mut self.samples);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading trace_pipe: {e}")),
            }
        }
    }

    /// Stop tracing, take what is left in the buffer, and remove the
    /// instance. Returns the samples and the events the kernel lost.
    pub fn stop(mut self) -> Result<(Vec<Sample>, u64, Scope), String> {
        let _ = self.inst.write("tracing_on", "0");
        // Tracing is off: what is left is finite, and all of it is ours.
        let drained = self.drain(usize::MAX);
        self.parser.finish(&mut self.samples);
        self.pipe = None;
        let Session { inst, parser, samples, scope, .. } = self;
        drop(inst);
        drained?;
        Ok((samples, parser.lost, scope))
    }

    /// Stop, and turn the samples into report entries: what the kernel
    /// filtered on (-p, -c) is known even for a task that has exited
    /// since; what it could not filter is filtered here and counted.
    pub fn collect(self, label: &str, want: &Scope) -> Result<(Vec<Entry>, Summary), String> {
        let (samples, lost, scope) = self.stop()?;
        let hits = samples.len() as u64;
        let mut tgids = HashMap::new();
        let mut filtered = 0;
        let mut entries = Vec::new();
        for mut smp in samples {
            let tgid = scope
                .pid
                .or(smp.tgid)
                .or_else(|| *tgids.entry(smp.tid).or_insert_with(|| tgid_of(smp.tid)))
                .unwrap_or(0);
            if let Some(c) = &scope.comm {
                smp.comm = c.clone();
            }
            if want.pid.is_some_and(|p| p != tgid) || want.comm.as_ref().is_some_and(|c| *c != smp.comm) {
                filtered += 1;
                continue;
            }
            entries.push(entry(&smp, tgid, label));
        }
        Ok((entries, Summary { hits, filtered, lost_records: lost, ..Default::default() }))
    }
}

fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn entry(s: &Sample, tgid: u32, label: &str) -> Entry {
    let target = s.function.clone().unwrap_or_else(|| label.to_string());
    let frames: Vec<Frame> = s
        .frames
        .iter()
        .map(|(name, module)| match name.strip_prefix('<').and_then(|n| n.strip_suffix('>')) {
            // An address ftrace could not name.
            Some(hex) => Frame { addr: u64::from_str_radix(hex, 16).unwrap_or(0), sym: None, off: 0, module: None },
            None => Frame { addr: 0, sym: Some(name.clone()), off: 0, module: module.clone() },
        })
        .collect();
    Entry {
        kind: "stack",
        kernel_stack: Stack::Frames(report::trim(frames, &target)),
        target,
        comm: s.comm.clone(),
        pid: tgid,
        tid: s.tid,
        cpus: BTreeSet::from([s.cpu]),
        count: 1,
        user_stack: Stack::NotTaken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_comm_is_asked_of_the_task() {
        let me = std::process::id();
        let mine = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(resolve_comm("<...>", me), mine.trim_end());
        assert_eq!(resolve_comm("umount", me), "umount");
        assert_eq!(resolve_comm("<...>", u32::MAX), "<...>");
    }

    /// Real output of this host's event tracer (stacktrace option) and the
    /// layout of the function tracer's func_stack_trace records.
    const TRACE: &str = "\
# tracer: nop
#           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION
          umount-22772   (  22772) [000] .....  4483.440598: sys_umount(name: 0x56531c1472e0, flags: 0)
          umount-22772   (  22772) [000] .....  4483.440734: <stack trace>
 => ftrace_syscall_enter
 => syscall_trace_enter
 => do_syscall_64
 => entry_SYSCALL_64_after_hwframe
 my worker-3-77 (-------) [001] d..1.  10.000001: vfs_fsync_range <-do_fsync
          other-9       (      9) [000] .....  10.000002: sys_umount(name: 0x1, flags: 0)
 my worker-3-77 (-------) [001] d..1.  10.000003: <stack trace>
 => vfs_fsync_range+0x4/0x90
 => do_fsync+0x38/0x70 [ext4]
 => <ffffffff81000000>
CPU:1 [LOST 42 EVENTS]
";

    #[test]
    fn heads() {
        let h = head("          umount-22772   (  22772) [000] .....  4483.440598: sys_umount(name: 0x5)").unwrap();
        assert_eq!(h, Head { comm: "umount", tid: 22772, tgid: Some(22772), cpu: 0, rest: "sys_umount(name: 0x5)" });
        let h = head("  kworker/0:1-[x]-12 [003] ..... 1.5: <stack trace>").unwrap();
        assert_eq!((h.comm, h.tid, h.tgid, h.cpu, h.rest), ("kworker/0:1-[x]", 12, None, 3, "<stack trace>"));
        assert!(head(" => do_fsync").is_none());
    }

    #[test]
    fn samples_from_events_and_functions() {
        let mut p = Parser::default();
        let mut out = vec![];
        // Fed in awkward pieces, as reads of a pipe come.
        let (a, b) = TRACE.split_at(300);
        p.feed(a, &mut out);
        p.feed(b, &mut out);
        p.finish(&mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].comm, "umount");
        assert_eq!((out[0].tid, out[0].tgid, out[0].cpu, out[0].function.as_deref()), (22772, Some(22772), 0, None));
        let names: Vec<&str> = out[0].frames.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            names,
            ["ftrace_syscall_enter", "syscall_trace_enter", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
        );
        assert_eq!(out[1].comm, "my worker-3");
        assert_eq!((out[1].tid, out[1].tgid, out[1].cpu), (77, None, 1));
        assert_eq!(out[1].function.as_deref(), Some("vfs_fsync_range"));
        assert_eq!(out[1].frames[1], ("do_fsync".to_string(), Some("ext4".to_string())));
        assert_eq!(out[1].frames[2].0, "<ffffffff81000000>");
        assert_eq!(p.lost, 42);
    }
}

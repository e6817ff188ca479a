//! The peers a user would run instead of us, measured in the same run:
//! libbpf-tools (offcputime, hardirqs) and bpftrace, both Debian
//! packages. Missing ones are installed with apt-get; one that is still
//! missing makes its rows say why, and never fails the bench.

use super::running::{Ready, Subject};
use std::path::{Path, PathBuf};

const PACKAGES: &[&str] = &["libbpf-tools", "bpftrace"];

/// Where each peer is, or why it is not there.
pub struct Peers {
    pub offcputime: Result<PathBuf, String>,
    pub hardirqs: Result<PathBuf, String>,
    pub bpftrace: Result<PathBuf, String>,
}

/// Sleeper and waker stacks (kernel and user, as offwaketime takes them)
/// with the blocked time summed by both, from the same two tracepoints
/// offwaketime uses on a kernel without fentry or kprobes: the waker's
/// stacks at sched_waking, in the waker's context, keyed by the wakee;
/// the sleeper's at its switch-out; the sum at its switch-in.
const OFFWAKE_BT: &str = r#"
tracepoint:sched:sched_waking {
    @wk[args->pid] = kstack; @wu[args->pid] = ustack; @wc[args->pid] = comm;
}
tracepoint:sched:sched_switch {
    if (args->prev_state != 0) {
        @ts[args->prev_pid] = nsecs; @sk[args->prev_pid] = kstack; @su[args->prev_pid] = ustack;
    }
    $t = @ts[args->next_pid];
    if ($t != 0) {
        @[args->next_comm, @sk[args->next_pid], @su[args->next_pid],
          @wc[args->next_pid], @wk[args->next_pid], @wu[args->next_pid]] = sum(nsecs - $t);
        delete(@ts[args->next_pid]);
    }
}
"#;

/// The one-liner that counts a tracepoint's kernel stacks.
const GETPPID_KSTACK_BT: &str = "tracepoint:syscalls:sys_enter_getppid { @[kstack] = count(); }";

impl Peers {
    /// Find the peers; install the packages once if any is missing.
    pub fn find_or_install() -> Peers {
        let found = Peers::find();
        if found.offcputime.is_ok() && found.hardirqs.is_ok() && found.bpftrace.is_ok() {
            return found;
        }
        let why = match install() {
            Ok(()) => "not found after apt-get install".to_string(),
            Err(e) => e,
        };
        let found = Peers::find();
        let or_why = |r: Result<PathBuf, String>| r.map_err(|e| format!("{e}: {why}"));
        Peers {
            offcputime: or_why(found.offcputime),
            hardirqs: or_why(found.hardirqs),
            bpftrace: or_why(found.bpftrace),
        }
    }

    fn find() -> Peers {
        Peers { offcputime: locate("offcputime"), hardirqs: locate("hardirqs"), bpftrace: locate("bpftrace") }
    }

    pub fn offcputime(&self, args: &[&str]) -> Result<Subject, String> {
        let p = self.offcputime.clone()?;
        Ok(Subject::peer("offcputime", p, args, Ready::Ran(1)))
    }

    pub fn offwake_bt(&self) -> Result<Subject, String> {
        let p = self.bpftrace.clone()?;
        Ok(Subject::peer("bpftrace offwake", p, &["-e", OFFWAKE_BT], Ready::Ran(2)))
    }

    pub fn getppid_kstack_bt(&self) -> Result<Subject, String> {
        let p = self.bpftrace.clone()?;
        Ok(Subject::peer("bpftrace @[kstack]", p, &["-e", GETPPID_KSTACK_BT], Ready::Ran(1)))
    }

    /// hardirqs at its defaults, the exec-to-attached reference.
    pub fn hardirqs(&self) -> Result<Subject, String> {
        let p = self.hardirqs.clone()?;
        Ok(Subject::peer("hardirqs", p, &[], Ready::Linked))
    }
}

/// libbpf-tools puts its tools in /usr/sbin, which a user's PATH may lack.
fn locate(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(Path::new).chain([Path::new("/usr/sbin"), Path::new("/usr/bin")]);
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{name} not installed"))
}

/// Install the peers' packages the way the rest of xtask installs what it
/// needs (apt-get update first: a fresh machine has no package lists); why
/// not, in one line.
fn install() -> Result<(), String> {
    crate::setup::apt_install(PACKAGES).map_err(|e| format!("installing {}: {e:#}", PACKAGES.join(" ")))
}

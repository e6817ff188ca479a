//! funcstack's command line, with bcc stackcount's flag names where they
//! overlap.

use clap::Parser;
use kdiag_shared::runctl::parse_duration;
use std::time::Duration;

const AFTER_HELP: &str = "\
Counts the distinct stacks that lead to TARGET and prints them at exit,
most frequent first:
  FUNC                  a kernel function, e.g. vfs_fsync_range
  GLOB                  functions by pattern (* and ?), e.g. 'vfs_fsync*'
  tracepoint:GROUP:NAME a tracepoint, e.g. tracepoint:syscalls:sys_enter_umount
A target this kernel cannot trace is refused with the reason: no such
function (or inlined everywhere), only compiler clones (name.isra.0), a
variable, code the kernel keeps tracers out of (noinstr, entry, __init),
or no mechanism that works here (then each mechanism's refusal is listed).

Output (default), one block per distinct (target, task, stacks):
  TARGET                the function (or tracepoint) that was reached
    frame               kernel stack, innermost caller first (TARGET itself
                        is not repeated); [unknown] when no symbol covers it
    --                  with -U: where the user stack begins
    frame               user stack, innermost first
    COMM PID/TID CPU c  the calling task: command, process id, thread id,
                        and the CPUs it called from
      COUNT             how many times this stack reached TARGET
  [Missed Kernel Stack: EEXIST] and similar: that capture failed (EEXIST:
                        stack map collision, raise --stack-storage-size)
With --ret, then per function the distribution of return values: small
values one by one (negative ones named as errnos), larger ones by power of
two range. At the end: totals, what the filters left out, lost events and
failed stack captures.

-f prints folded lines for flamegraph.pl: COMM;user frames;kernel frames,
outermost first;TARGET COUNT. --svg FILE writes that flame graph directly.
--json prints one object per block ({\"type\":\"stack\", \"target\", \"comm\",
\"pid\", \"tid\", \"cpus\", \"count\", \"kernel_stack\", \"user_stack\"}), then
{\"type\":\"ret\", ...} with --ret, and a last {\"type\":\"summary\", ...}.
--pprof FILE writes a gzipped pprof profile (go tool pprof, Grafana
Pyroscope, Parca): one sample per block, sample type calls/count, frames
leaf first as the block prints them (TARGET, kernel, user), label comm.

Backends, best first: fentry/fexit (one function), kprobe-multi (globs),
kprobe, ftrace (the function tracer with func_stack_trace and a filter, in
a private tracefs instance: needs no BPF), and for tracepoints classic
tracepoints, then ftrace's event tracer with stack traces. --ret needs
fexit or kretprobes; on ftrace only the stacks are counted.

Examples:
  funcstack vfs_fsync_range 10      who calls vfs_fsync_range, for 10 s
  funcstack -p 4182 --ret do_unlinkat
                                    process 4182's unlink paths and errors
  funcstack -f 'tracepoint:syscalls:sys_enter_umount' > umount.folded
  funcstack --svg io.svg tracepoint:block:block_io_start 30";

/// Count the kernel stacks that lead to a kernel function or tracepoint.
#[derive(Parser, Debug)]
#[command(name = "funcstack", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Only calls made by this process.
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Only calls made by tasks with this command name (as in ps -o comm).
    #[arg(short = 'c', long = "comm", value_name = "COMM", value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Show only the COUNT most frequent stacks.
    #[arg(short = 'n', long = "top", value_name = "COUNT",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,

    /// Also count return values (fexit or kretprobes).
    #[arg(long = "ret")]
    pub ret: bool,

    /// Also take user stacks.
    #[arg(short = 'U', long = "user-stacks")]
    pub user_stacks: bool,

    /// Folded output, one line per stack, for flamegraph.pl.
    #[arg(short = 'f', long = "folded", conflicts_with = "json")]
    pub folded: bool,

    /// One JSON object per stack instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub stacks: kdiag_shared::args::StackArgs,

    /// fentry, kprobe-multi, kprobe, tracepoint or ftrace; default: the
    /// best one this kernel allows for the target.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,

    /// FUNC, GLOB or tracepoint:GROUP:NAME.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// How long to run (10, 90s, 5m); default until Ctrl-C.
    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

impl Cli {
    /// -p and -c, for the banner.
    pub fn scope(&self) -> String {
        match (self.pid, &self.comm) {
            (Some(p), Some(c)) => format!(" by process {p} named {c}"),
            (Some(p), None) => format!(" by process {p}"),
            (None, Some(c)) => format!(" by tasks named {c}"),
            (None, None) => String::new(),
        }
    }
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("'{s}' is not a process id")),
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    // The kernel keeps 15 bytes of a command name.
    if s.is_empty() || s.len() > 15 {
        return Err(format!("'{s}' is not a command name (1 to 15 bytes, as the kernel keeps it)"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("funcstack").chain(args.iter().copied()))
    }

    #[test]
    fn seed_call_and_defaults() {
        let c = parse(&["vfs_fsync_range"]).unwrap();
        assert_eq!(c.target, "vfs_fsync_range");
        assert!(c.pid.is_none() && c.comm.is_none() && c.top.is_none() && c.duration.is_none());
        assert!(!c.ret && !c.folded && !c.json && !c.user_stacks);
        assert_eq!(c.stacks.stack_storage_size, 16384);
    }

    #[test]
    fn flags() {
        let c = parse(&["-p", "42", "-c", "umount", "-n", "3", "--ret", "-U", "-f", "vfs_*", "5s"]).unwrap();
        assert_eq!((c.pid, c.comm.as_deref(), c.top), (Some(42), Some("umount"), Some(3)));
        assert!(c.ret && c.user_stacks && c.folded);
        assert_eq!(c.duration, Some(Duration::from_secs(5)));
    }

    #[test]
    fn bad_input() {
        assert!(parse(&["-p", "x", "f"]).unwrap_err().to_string().contains("not a process id"));
        assert!(parse(&["-c", "a-very-long-command-name", "f"]).unwrap_err().to_string().contains("1 to 15 bytes"));
        assert!(parse(&["-n", "0", "f"]).is_err());
        assert!(parse(&["-f", "--json", "f"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["f", "soon"]).unwrap_err().to_string().contains("invalid duration 'soon'"));
    }
}

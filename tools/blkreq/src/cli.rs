//! blkreq's command line.

use clap::{ArgGroup, Parser};
use kdiag_shared::runctl::parse_duration;
use std::time::Duration;

const AFTER_HELP: &str = "\
What is traced: every kernel function with a `struct request *` parameter
(found in the BTF of the kernel and of its loaded modules, at any position)
and every tracepoint that is handed one. -i narrows the functions, -x
removes functions or tracepoints; exclude wins. Tracer plumbing
(__traceiter_*, __bpf_trace_*, perf_trace_*, ...) is never included.
--list prints the resolved set and attaches nothing.

How: functions through kprobe-multi, else fentry, else kprobes (the first
this kernel accepts); tracepoints always, through tp_btf or raw_tp. Kernels
without kprobes and fentry are followed through the block tracepoints and
the kernel stacks captured at each; the banner says which.

Which requests: the first COUNT that start (block_io_start,
blk_mq_bio_to_request...; before 6.5, the first step after block_getrq)
and pass --dev/--pid/--comm/--op, tested in the kernel when the request
starts (so --pid and --comm are the submitter).
The run ends when all COUNT have completed, at the duration, or at Ctrl-C.

Output --tree (default): the kernel stacks of all steps of all tracked
requests merged into one call tree, like the seed's script:
  (root): NAME [context]   one tree per context: syscall, hardirq, softirq,
                           kthread, idle. Stacks are cut where a context
                           starts, so an interrupt never hangs below the
                           syscall it interrupted.
  \\-function (N)           N: steps whose stack passed through it
  tracepoint:NAME          the step was this tracepoint
--timeline: per request, one line per step:
  T(us)      time since the request was admitted
  DELTA(us)  time since its previous step
  CPU        where the step ran (submission and completion often differ)
  CTX        syscall, hardirq, softirq, kthread, idle (from the stack)
  TASK       comm[tid] of the current task; in hardirq/softirq context this
             is whoever was interrupted, not who asked for the I/O
  STEP       the function or tracepoint; `admit`, `end` and `after end`
             (the free path) mark the life cycle
-f: folded stacks `[ctx];root;...;leaf N` for flamegraph.pl.
--json: one object per request {\"type\":\"request\", \"session\", \"rq\",
\"dev\", \"op\", \"steps\":[{\"t_ns\", \"delta_ns\", \"mono_ns\", \"cpu\", \"tid\",
\"comm\", \"context\", \"step\", \"flags\", \"stack\"}]}, then {\"type\":\"tree\",
\"roots\"} and {\"type\":\"summary\"}.
At exit: requests tracked and completed, steps, and what was lost: steps
dropped (full buffer), failed stack captures, functions that refused to
attach.

Examples:
  blkreq --dev vda                    8 requests to vda, as a call tree
  blkreq -n 3 --timeline --op write   3 writes, step by step
  blkreq -i 'blk_*' -x blk_mq_free_request --list
                                      all blk_* functions but one";

/// Follow block requests through every kernel function that handles them.
#[derive(Parser, Debug)]
#[command(name = "blkreq", version, about, after_help = AFTER_HELP)]
#[command(group(ArgGroup::new("format").args(["tree", "timeline", "json", "folded"])))]
pub struct Cli {
    /// Track COUNT requests (at most COUNT at a time), then stop.
    #[arg(short = 'n', long = "count", value_name = "COUNT", default_value = "8", value_parser = parse_count,
          allow_negative_numbers = true)]
    pub count: u32,

    /// Trace only functions matching GLOB (repeatable; default all).
    #[arg(short = 'i', long = "include", value_name = "GLOB")]
    pub include: Vec<String>,

    /// Do not trace functions or tracepoints matching GLOB (repeatable; wins over -i).
    #[arg(short = 'x', long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Only requests to this disk or partition (vda, /dev/loop0, 7:0).
    #[arg(long, value_name = "NAME|MAJ:MIN")]
    pub dev: Option<String>,

    /// Only requests submitted by this process (thread group id).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only requests submitted by tasks with this name (first 15 characters).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Only requests of this operation (read, write, flush, discard...).
    #[arg(long, value_name = "OP")]
    pub op: Option<String>,

    /// Merged call tree of all steps (default).
    #[arg(long)]
    pub tree: bool,

    /// Each request's steps in time order.
    #[arg(long)]
    pub timeline: bool,

    /// JSON Lines.
    #[arg(long)]
    pub json: bool,

    /// Folded stacks for flame graphs.
    #[arg(short = 'f', long = "folded")]
    pub folded: bool,

    /// Print the functions and tracepoints that would be traced, with the
    /// request's parameter position and the attach method, and exit.
    #[arg(long)]
    pub list: bool,

    /// Attach mechanism: kprobe-multi, fentry or kprobe for functions;
    /// tp_btf or raw_tp to follow tracepoints only through that one.
    #[arg(long, value_name = "MECHANISM")]
    pub backend: Option<String>,

    /// How long to run at most (60, 90s, 5m); default until COUNT requests
    /// completed or Ctrl-C.
    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

fn parse_count(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n as u32),
        Ok(_) => Err(format!("COUNT must be between 1 and 65536, got {s}")),
        Err(_) => Err(format!("COUNT must be a whole number, got '{s}'")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Tree,
    Timeline,
    Json,
    Folded,
}

impl Cli {
    pub fn format(&self) -> Format {
        if self.timeline {
            Format::Timeline
        } else if self.json {
            Format::Json
        } else if self.folded {
            Format::Folded
        } else {
            Format::Tree
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("blkreq").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.count, 8);
        assert_eq!(c.format(), Format::Tree);
        assert!(c.include.is_empty() && c.exclude.is_empty() && !c.list);
    }

    #[test]
    fn the_seed_authors_wish() {
        let c = parse(&["-i", "blk_*", "-x", "blk_mq_free_request", "-n", "3", "10"]).unwrap();
        assert_eq!(c.include, ["blk_*"]);
        assert_eq!(c.exclude, ["blk_mq_free_request"]);
        assert_eq!(c.count, 3);
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
    }

    #[test]
    fn one_format_at_a_time() {
        assert_eq!(parse(&["--timeline"]).unwrap().format(), Format::Timeline);
        assert_eq!(parse(&["-f"]).unwrap().format(), Format::Folded);
        assert!(parse(&["--tree", "--json"]).is_err());
    }

    #[test]
    fn bad_counts() {
        for n in ["0", "-1", "x", "70000"] {
            assert!(parse(&["-n", n]).unwrap_err().to_string().contains("COUNT"), "{n}");
        }
    }
}

//! offwaketime's command line, with bcc offwaketime's flag names.

use clap::Parser;
use kdiag_shared::runctl::parse_duration;
use std::time::Duration;

/// The most PIDs or TIDs one run filters on: the BPF side compares them in
/// an unrolled loop on every context switch.
pub const MAX_FILTER: usize = 16;

const AFTER_HELP: &str = "\
What is measured, per sleep of a traced thread:
  switch-out --- blocked time ---> wakeup --- run-queue delay ---> switch-in
Blocked time is what the waker is responsible for; run-queue delay is time
spent runnable, waiting for a CPU. Sleeps are grouped by (sleeper stacks,
waker stacks, waker context) and printed at exit.

Output (default, as bcc's offwaketime), one block per group, fewest
microseconds first, so the biggest are just above the totals:
  waker:  COMM TID      the task that woke the sleeper; or its context when
                        no task is to blame: [hardirq], [softirq NAME] (the
                        softirq vector, e.g. TIMER, NET_RX), [nmi];
                        [preempted] (with --state 0: switched out runnable,
                        nothing woke it); [wakeup not seen]
  waker user stack, then kernel stack, outermost frame first, down to
                        the wakeup
  --                    the boundary between waker and sleeper
  sleeper kernel stack, then user stack, innermost frame first (where it
                        blocked, up to its thread's start)
  target: COMM TID      the sleeper
  N us blocked, M us run-queue, C times
                        totals of the group: blocked time, run-queue delay,
                        number of sleeps
  [Missed Kernel Stack: EEXIST] and similar: that capture failed (EEXIST:
                        stack map collision, raise --stack-storage-size)
  [unknown]             an address no symbol covers
At the end: totals, sleeps not shown and why, failed stack captures, and how
many user stacks look cut short (a binary built without frame pointers).

-f prints folded lines for flamegraph.pl (the width is blocked time in us):
  sleeper_comm;user frames;kernel frames;--;waker kernel frames;waker user
  frames;waker_comm BLOCKED_US
  flamegraph.pl --title='Off-Wake Time' --countname=us < out.folded > out.svg
--svg FILE writes that flame graph directly. --json prints one object per
group ({\"type\":\"wakeup\", \"blocked_ns\", \"runq_ns\", \"count\", \"sleeper\":{...},
\"waker\":{\"context\", ...}}) and a last {\"type\":\"summary\", ...}.
--pprof FILE writes a gzipped pprof profile (go tool pprof, Grafana
Pyroscope, Parca): one sample per group with sample types sleeps/count,
blocked/nanoseconds (the default) and runqueue/nanoseconds; frames leaf
first as the block prints them, a -- frame joining the waker's stacks to
the sleeper's; labels comm (the sleeper) and waker.

Examples:
  offwaketime -p 4182 30          who wakes process 4182's threads, for 30 s
  offwaketime -p 4182 -m 1000 -f > out.folded
                                  blocked 1 ms or more, folded
  offwaketime -t 4449 --svg worker.svg 10
                                  one thread, a flame graph file";

/// Off-CPU time by sleeper and waker stacks: who blocked where, and who woke it.
#[derive(Parser, Debug)]
#[command(name = "offwaketime", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Trace only these processes (sleepers), e.g. 4182 or 4182,5012.
    #[arg(short = 'p', long = "pid", value_name = "PID[,PID..]", value_parser = parse_id,
          value_delimiter = ',', conflicts_with = "tids")]
    pub pids: Vec<u32>,

    /// Trace only these threads (sleepers).
    #[arg(short = 't', long = "tid", value_name = "TID[,TID..]", value_parser = parse_id,
          value_delimiter = ',')]
    pub tids: Vec<u32>,

    /// User threads only (no kernel threads).
    #[arg(short = 'u', long = "user-threads-only", conflicts_with = "kernel_threads_only")]
    pub user_threads_only: bool,

    /// Kernel threads only (no user threads).
    #[arg(short = 'k', long = "kernel-threads-only")]
    pub kernel_threads_only: bool,

    /// Show user stacks only.
    #[arg(short = 'U', long = "user-stacks-only", conflicts_with = "kernel_stacks_only")]
    pub user_stacks_only: bool,

    /// Show kernel stacks only.
    #[arg(short = 'K', long = "kernel-stacks-only")]
    pub kernel_stacks_only: bool,

    /// Only sleeps with a blocked time of at least MIN_US microseconds.
    #[arg(short = 'm', long = "min-block-time", value_name = "MIN_US", default_value = "1")]
    pub min_us: u64,

    /// Only sleeps with a blocked time of at most MAX_US microseconds.
    #[arg(short = 'M', long = "max-block-time", value_name = "MAX_US")]
    pub max_us: Option<u64>,

    /// Only switch-outs in these task states (bits of include/linux/sched.h:
    /// 1 interruptible, 2 uninterruptible); 0: preempted tasks only, which
    /// have no waker and whose run-queue delay -m/-M then judge. Default:
    /// every sleeping state.
    #[arg(long = "state", value_name = "MASK", value_parser = parse_state)]
    pub state: Option<u32>,

    /// Folded output, one line per group, for flamegraph.pl.
    #[arg(short = 'f', long = "folded", conflicts_with = "json")]
    pub folded: bool,

    /// Insert a '-' between kernel and user frames.
    #[arg(short = 'd', long = "delimited")]
    pub delimited: bool,

    /// One JSON object per group instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub stacks: kdiag_shared::args::StackArgs,

    /// tp_btf, raw_tp, tracepoint or kprobe; default: the first of these,
    /// in that order, that this kernel allows.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,

    /// How long to run (10, 90s, 5m); default until Ctrl-C.
    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

fn parse_id(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("'{s}' is not a process or thread id")),
    }
}

fn parse_state(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse::<u32>(),
    };
    v.map_err(|_| format!("state mask must be a number, got '{s}'"))
}

impl Cli {
    /// The filters and choices, as the BPF side reads them.
    pub fn configure(&self, ro: &mut crate::bpf::types::rodata) {
        for (i, &p) in self.pids.iter().enumerate() {
            ro.tgids[i] = p;
        }
        ro.n_tgids = self.pids.len() as u32;
        for (i, &t) in self.tids.iter().enumerate() {
            ro.tids[i] = t;
        }
        ro.n_tids = self.tids.len() as u32;
        ro.thread_kind = if self.user_threads_only {
            1
        } else if self.kernel_threads_only {
            2
        } else {
            0
        };
        ro.preempted_only = self.state == Some(0);
        ro.state_mask = self.state.filter(|&s| s != 0).unwrap_or(u32::MAX);
        ro.min_ns = self.min_us.saturating_mul(1000);
        ro.max_ns = self.max_us.map_or(u64::MAX, |m| m.saturating_mul(1000));
        ro.want_kstack = !self.user_stacks_only;
        ro.want_ustack = !self.kernel_stacks_only;
    }

    /// What is traced, for the banner and the flame graph's title.
    pub fn what(&self) -> String {
        let join = |ids: &[u32]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        if !self.pids.is_empty() {
            format!("PID {}", join(&self.pids))
        } else if !self.tids.is_empty() {
            format!("TID {}", join(&self.tids))
        } else {
            "all threads".to_string()
        }
    }

    /// Checks that need more than one flag, as one-line errors.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(max) = self.max_us {
            if self.min_us > max {
                return Err(format!("-m {} is greater than -M {max}: nothing could be shown", self.min_us));
            }
        }
        for (flag, ids) in [("-p", &self.pids), ("-t", &self.tids)] {
            if ids.len() > MAX_FILTER {
                return Err(format!("{flag} takes at most {MAX_FILTER} ids, got {}", ids.len()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("offwaketime").chain(args.iter().copied()))
    }

    #[test]
    fn seed_call_and_defaults() {
        let c = parse(&["-p", "4182"]).unwrap();
        assert_eq!(c.pids, vec![4182]);
        assert_eq!(c.min_us, 1);
        assert_eq!(c.max_us, None);
        assert_eq!(c.state, None);
        assert_eq!(c.stacks.stack_storage_size, 16384);
        assert!(c.duration.is_none() && !c.folded && !c.json);
    }

    #[test]
    fn lists_and_durations() {
        let c = parse(&["-p", "1,2,3", "-m", "1000", "-M", "5000", "-f", "-d", "5s"]).unwrap();
        assert_eq!(c.pids, vec![1, 2, 3]);
        assert_eq!((c.min_us, c.max_us), (1000, Some(5000)));
        assert!(c.folded && c.delimited);
        assert_eq!(c.duration, Some(Duration::from_secs(5)));
        assert_eq!(parse(&["--state", "0x2"]).unwrap().state, Some(2));
        assert_eq!(parse(&["--state", "0"]).unwrap().state, Some(0));
    }

    #[test]
    fn bad_input() {
        assert!(parse(&["-p", "abc"]).unwrap_err().to_string().contains("not a process or thread id"));
        assert!(parse(&["-p", "0"]).is_err());
        assert!(parse(&["-p", "1", "-t", "2"]).is_err());
        assert!(parse(&["-u", "-k"]).is_err());
        assert!(parse(&["-U", "-K"]).is_err());
        assert!(parse(&["-f", "--json"]).is_err());
        assert!(parse(&["--stack-storage-size", "1"]).is_err());
        let e = parse(&["-m", "10", "-M", "5"]).unwrap().validate().unwrap_err();
        assert_eq!(e, "-m 10 is greater than -M 5: nothing could be shown");
        let many: Vec<String> = (1..=17).map(|i| i.to_string()).collect();
        let e = parse(&["-p", &many.join(",")]).unwrap().validate().unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }
}

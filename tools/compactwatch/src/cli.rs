//! compactwatch's command line.

use crate::watermark::Algo;
use clap::Parser;
use kdiag_shared::runctl::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Output (text), one block per finding, on stdout:
  FAIL     an allocation of order >= N returned no page (kmem:mm_page_alloc
           with pfn -1): time, task, order, decoded GFP mask, migratetype,
           NUMA node of the CPU, caller, and the zone verdict at that moment
  STALL    a task's direct reclaim / compaction episode for one allocation:
           reclaim begin..end with pages reclaimed; compaction priority,
           per-zone suitability, deferral, each zone's run with status,
           duration, pages migrated/failed; how the allocation ended and the
           total stall time. 'compaction not attempted' says why in words:
           the mask forbids it on this kernel, deferred after failures,
           reclaim alone was enough.
  COMPACT  a compaction run outside any allocation (kcompactd, a write to
           /proc/sys/vm/compact_memory, proactive compaction): zone, status,
           duration, pages migrated/failed
  VERDICT  per node/zone: free pages, min/low/high watermarks, lowmem
           reserve, free blocks per order, the order-N watermark check by
           the running kernel's algorithm (pre-4.4 or modern, or --algo) and
           the step where it fails, the other algorithm's answer, the
           fragmentation and unusable-free indices of order N (with the
           kernel's own from /sys/kernel/debug/extfrag when debugfs is
           mounted), the largest free order, and vmstat deltas of
           compact_*, allocstall_* and pgmigrate_* since the last verdict;
           then one or two lines of advice tied to what failed
  At exit, counted in the kernel and so exact whatever was shown above:
  failures, stalls and compaction runs outside allocations (with how many
  were shown in detail), order >= N allocations by order (ok/failed), the
  top failing callers by kernel stack, order and GFP mask, the top callers
  of successful ones (kernel stacks with --stack); then what was held back:
  'rate limit' (--max-rate: allocations or runs not shown, and the records
  they would have sent) apart from 'lost' (records dropped because the
  buffer was full: lower --max-rate).
--max-rate N: at most N allocations (each with its whole reclaim and
  compaction episode) or compaction runs outside allocations are shown per
  CPU per second; 0 shows all. A failing allocation sends about 20 records
  and prints a verdict, so a flood of them would otherwise overrun the
  buffer and lose records at random; under the limit each one shown is
  whole, and the counts at exit miss nothing.
GFP names, compaction status and zone names come from the running kernel's
tracepoint format files (then BTF), never a fixed table.

--json prints one object per line: {\"type\": \"fail\"|\"stall\"|\"compact\"|
\"verdict\"|\"summary\", ...}; times are RFC 3339 UTC. The summary's
failures, stalls and compaction_runs are exact counts; *_reported are the
ones shown as records; by_order, top_failing ({order, gfp, gfp_text, count,
caller, last_comm, last_pid}), top_callers; max_rate, rate_limited
(allocations or runs not shown), rate_limited_events (their records), lost
(records dropped, buffer full), counts_table_full, failures_table_full,
stack_failed.

--from-dmesg FILE reads a saved 'page allocation failure' report (with its
Mem-Info block) and prints the same verdict for that moment; the kernel
version, if the report does not show it, is inferred and the reasons
printed. FILE may be dmesg output (also -T, -r, -x), journalctl -k in any
of its time formats, a syslog file such as /var/log/messages (rsyslog's
#012 escapes included), or a listing with a number before each line; - is
stdin. Kernels 3.10 to 6.x. Of several reports the newest is analysed
(--all: each, newest first); a nodemask, or the cpuset's mems_allowed for
__GFP_HARDWALL masks, leaves other nodes' zones out of the verdict.

Examples:
  compactwatch                      order >= 4 until Ctrl-C
  compactwatch --order 9 --stack 60 THP-sized allocations for a minute
  compactwatch -p 1234 --interval 10  one process, a verdict every 10 s
  compactwatch --from-dmesg /var/log/messages.1
  journalctl -k -b -1 | compactwatch --from-dmesg - --all";

/// Explain high-order allocation stalls and failures: reclaim, compaction,
/// and the zone watermark verdict.
#[derive(Parser, Debug)]
#[command(name = "compactwatch", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Watch allocations of this order and above (0-15).
    #[arg(long, value_name = "N", default_value = "4", value_parser = parse_order, allow_negative_numbers = true)]
    pub order: u32,

    /// Only this process (thread group id).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,

    /// Print a zone verdict every SECS seconds as well as at each failure.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Print kernel stacks of failures, stalls and top callers.
    #[arg(long)]
    pub stack: bool,

    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    /// Analyse a saved page allocation failure report instead of tracing
    /// (- reads stdin).
    #[arg(long = "from-dmesg", value_name = "FILE")]
    pub from_dmesg: Option<PathBuf>,

    /// With --from-dmesg: every report in the file, newest first, not
    /// only the newest.
    #[arg(long, requires = "from_dmesg")]
    pub all: bool,

    /// Watermark algorithm: auto (by kernel version), pre-4.4 or modern.
    #[arg(long, value_name = "auto|pre-4.4|modern", default_value = "auto", value_parser = parse_algo)]
    pub algo: AlgoChoice,

    /// Show at most N allocations or compaction runs per CPU per second (0:
    /// no limit); the rest are counted in the summary.
    #[arg(long = "max-rate", value_name = "N", default_value = "10", value_parser = parse_rate, allow_negative_numbers = true)]
    pub max_rate: u32,

    /// tp_btf, raw_tp (each tracepoint read as the arguments this kernel
    /// passes it) or tracepoint (the classic records, stable across kernel
    /// versions); default: the first this kernel allows.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,

    /// How long to run (60, 90s, 5m); default until Ctrl-C.
    #[command(flatten)]
    pub metrics: kdiag_shared::metrics::MetricsArgs,

    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgoChoice(pub Option<Algo>);

fn parse_algo(s: &str) -> Result<AlgoChoice, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(AlgoChoice(None)),
        "pre-4.4" | "pre44" | "old" => Ok(AlgoChoice(Some(Algo::Pre44))),
        "modern" | "new" => Ok(AlgoChoice(Some(Algo::Modern))),
        _ => Err(format!("unknown algorithm '{s}' (use auto, pre-4.4 or modern)")),
    }
}

fn parse_order(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(o) if (0..=15).contains(&o) => Ok(o as u32),
        Ok(_) => Err(format!("order must be between 0 and 15, got {s}")),
        Err(_) => Err(format!("order must be a whole number, got '{s}'")),
    }
}

fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(p) if p > 0 && p <= u32::MAX as i64 => {
            if std::path::Path::new(&format!("/proc/{p}")).exists() {
                Ok(p as u32)
            } else {
                Err(format!("no process with pid {p}"))
            }
        }
        _ => Err(format!("pid must be a positive number, got '{s}'")),
    }
}

fn parse_rate(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (0..=u32::MAX as i64).contains(&n) => Ok(n as u32),
        _ => Err(format!("max-rate must be a whole number >= 0 (0: no limit), got '{s}'")),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Duration::from_secs(n)),
        _ => Err(format!("interval must be a whole number of seconds >= 1, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("compactwatch").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_full_call() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.order, c.pid, c.interval, c.stack, c.json), (4, None, None, false, false));
        assert_eq!(c.algo, AlgoChoice(None));
        assert_eq!(c.max_rate, 10);
        assert_eq!(parse(&["--max-rate", "0"]).unwrap().max_rate, 0);
        let me = std::process::id().to_string();
        let c = parse(&["--order", "9", "-p", &me, "--interval", "5", "--stack", "--json", "--algo", "pre-4.4", "30"])
            .unwrap();
        assert_eq!(c.order, 9);
        assert_eq!(c.pid, Some(std::process::id()));
        assert_eq!(c.interval, Some(Duration::from_secs(5)));
        assert_eq!(c.algo, AlgoChoice(Some(Algo::Pre44)));
        assert_eq!(c.duration, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--order", "16"], "order must be between 0 and 15"),
            (&["--order", "-1"], "order must be between 0 and 15"),
            (&["--order", "x"], "order must be a whole number"),
            (&["-p", "0"], "pid must be a positive number"),
            (&["-p", "4294967290"], "no process with pid"),
            (&["--interval", "0"], "interval must be"),
            (&["--algo", "3.10"], "unknown algorithm '3.10'"),
            (&["soon"], "invalid duration 'soon'"),
            (&["--max-rate", "-1"], "max-rate must be a whole number >= 0"),
            (&["--max-rate", "1.5"], "max-rate must be a whole number >= 0"),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}

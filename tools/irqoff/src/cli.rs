//! irqoff's command line, in SysAK's and bcc's conventions.

use clap::Parser;
use kdiag_shared::runctl::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Output (text): a header, then for each window one line and its kernel stack:
  TIME(irqoff)  local time the window ended (YYYY-MM-DD_HH:MM:SS)
  CPU           the CPU that ran with interrupts off
  COMM, TID     the task that was running there; '(irqoff itself)' at the
                end of the line when that was irqoff (its own start-up and
                symbolization: little to say about the box)
  LAT(us)       how long interrupts were off, in microseconds; never less
                than the threshold (one sampling period is subtracted, so a
                report may be short by up to one period, never long); time
                the CPU was idle and steal time are not in it
  STEAL(us)     in a KVM guest, the time the hypervisor kept this vCPU from
                running inside the window (outside guest idle), taken out of
                LAT(us): without it a descheduled vCPU looks exactly like
                interrupts being off; 0 on bare metal; - in a VM whose steal
                time cannot be read (the banner says why)
  stack lines   <address> function+offset [module]: in software mode the
                code that re-enabled interrupts, in hardware mode the code
                that held them off; <user space> when the timer interrupted
                user code (no kernel stack), as the saved registers say
A window still open after 5 thresholds (hardware mode) gets an early
'ongoing' line, then its final line when it ends.
At exit: per-CPU count, max, average and steal time over the run, a log2
histogram, counts of windows not reported (rate limit, full buffers) and
failed stack captures, and of gaps that were over the threshold only with
the hypervisor's time counted (steal time alone explains them).

--json prints one object per line: {\"type\":\"window\"|\"ongoing\", \"time\",
\"mono_ns\" (CLOCK_MONOTONIC), \"cpu\", \"comm\", \"pid\", \"tid\", \"own\" (the task
was irqoff itself), \"lat_us\", \"steal_us\" (null when
unknown), \"stack_of\", \"user_space\" (the window ended in user code: no kernel
stack), \"stack\":[{\"addr\", \"sym\", \"off\", \"module\"}]}, and a last
{\"type\":\"summary\", ..., \"steal\":\"known\"|\"none\"|\"unknown\", \"steal_explained\",
\"steal_failed\", \"per_cpu\":[{..., \"steal_us\"}]}.

Examples:
  irqoff                  report windows over 10 ms until Ctrl-C
  irqoff -t 5 -f irqoff.log 10m
                          windows over 5 ms, appended to irqoff.log, for 10 minutes
  irqoff -c 2-3 --json    only CPUs 2 and 3, as JSON Lines";

/// Report long interrupts-off windows, with the stack of the code that held them.
#[derive(Parser, Debug)]
#[command(name = "irqoff", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Report windows of at least THRESH milliseconds.
    #[arg(short = 't', long = "threshold", value_name = "THRESH_MS", default_value = "10",
          value_parser = parse_threshold, allow_negative_numbers = true)]
    pub threshold_ms: u64,

    /// Append the report to FILE instead of printing it.
    #[arg(short = 'f', long = "file", value_name = "LOGFILE")]
    pub log: Option<PathBuf>,

    /// Watch only these CPUs (e.g. 0-3,7); default all online CPUs.
    #[arg(short = 'c', long = "cpus", value_name = "CPULIST")]
    pub cpus: Option<String>,

    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    /// hw (NMI from the cycles counter) or sw (cpu-clock hrtimer); default:
    /// hw if this machine has a PMU, else sw.
    #[arg(long, value_name = "hw|sw")]
    pub backend: Option<String>,

    /// Report at most N windows per CPU per second (0: no limit); the rest
    /// are counted in the summary.
    #[arg(long = "max-rate", value_name = "N", default_value = "50")]
    pub max_rate: u32,

    #[command(flatten)]
    pub metrics: kdiag_shared::metrics::MetricsArgs,

    /// How long to run (60, 90s, 5m); default until Ctrl-C.
    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

fn parse_threshold(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i64>() {
        Ok(ms) if ms >= 1 => Ok(ms as u64),
        Ok(_) => Err(format!("threshold must be at least 1 ms, got {s}")),
        Err(_) => Err(format!("threshold must be a whole number of milliseconds, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("irqoff").chain(args.iter().copied()))
    }

    #[test]
    fn seed_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.threshold_ms, 10);
        assert_eq!(c.duration, None);
        assert!(c.log.is_none() && !c.json);
    }

    #[test]
    fn seed_call() {
        let c = parse(&["-t", "10", "-f", "out.log", "60"]).unwrap();
        assert_eq!(c.threshold_ms, 10);
        assert_eq!(c.log.unwrap().to_str(), Some("out.log"));
        assert_eq!(c.duration, Some(Duration::from_secs(60)));
        assert_eq!(parse(&["5m"]).unwrap().duration, Some(Duration::from_secs(300)));
    }

    #[test]
    fn bad_thresholds() {
        for t in ["-5", "0", "abc", "1.5"] {
            let e = parse(&["-t", t]).unwrap_err().to_string();
            assert!(e.contains("threshold"), "{t}: {e}");
        }
    }
}

//! What irqoff prints: one record per window (text as SysAK prints it, or
//! JSON), and the summary at exit.

use kdiag_shared::histogram::Log2Hist;
use kdiag_shared::output::{json_time, sysak_time};
use kdiag_shared::symbolize::Frame;
use kdiag_shared::Errno;
use serde::Serialize;
use std::time::SystemTime;

pub const HEADER: &str = "TIME(irqoff)        CPU COMM                 TID    LAT(us)  STEAL(us)\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A window that ended; its length is final.
    Window,
    /// A window still open when an NMI looked; its length is a lower bound.
    Ongoing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackOf {
    /// Software mode: the code that re-enabled interrupts.
    Reenabler,
    /// Hardware mode: the code running while interrupts were off.
    Holder,
}

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(serialize_with = "time_json")]
    pub time: SystemTime,
    /// The same instant on CLOCK_MONOTONIC, in ns, to line records up with
    /// other tracers' timestamps.
    pub mono_ns: u64,
    pub cpu: u32,
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    /// The task was irqoff itself: its own syscalls (ring buffer set-up,
    /// symbolization) ran there, so the window says little about the box.
    pub own: bool,
    pub lat_us: u64,
    /// Hypervisor time inside the window, already taken out of `lat_us`;
    /// None where steal time cannot be known.
    pub steal_us: Option<u64>,
    pub stack_of: StackOf,
    /// The sampled code was user code, so there is no kernel stack: said by
    /// the kernel's saved registers, not guessed from an empty stack.
    pub user_space: bool,
    pub stack: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "errno_json")]
    pub stack_error: Option<Errno>,
}

fn time_json<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&json_time(*t))
}

fn errno_json<S: serde::Serializer>(e: &Option<Errno>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&e.map(|e| e.to_string()).unwrap_or_default())
}

impl Record {
    /// The seed's layout, steal time added at the end: one line, then
    /// `<address> symbol` per frame.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<19} {:>4} {:<16} {:>8} {:>10} {:>10}",
            sysak_time(self.time),
            self.cpu,
            self.comm,
            self.tid,
            self.lat_us,
            self.steal_us.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        );
        if self.kind == Kind::Ongoing {
            out.push_str("  ongoing: interrupts still off, at least this long");
        }
        if self.own {
            out.push_str("  (irqoff itself)");
        }
        out.push('\n');
        for f in &self.stack {
            out.push_str(&format!("<{:#018x}> {}\n", f.addr, f.label()));
        }
        if let Some(e) = self.stack_error {
            out.push_str(&format!("<stack not captured: {e}>\n"));
        } else if self.user_space {
            out.push_str("<user space>\n");
        } else if self.stack.is_empty() {
            out.push_str("<no kernel frames captured>\n");
        }
        out
    }
}

/// Per-CPU totals, from the BPF side's counters: they include windows that
/// were rate-limited or lost, so the summary is complete even when the
/// stream of records was not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuSummary {
    pub cpu: u32,
    pub samples: u64,
    pub windows: u64,
    pub max_us: u64,
    pub avg_us: u64,
    /// Steal time over the run, as the KVM steal clock counts it.
    pub steal_us: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: &'static str,
    pub duration_s: f64,
    pub stop_reason: String,
    pub threshold_us: u64,
    pub period_us: u64,
    pub windows: u64,
    pub reported: u64,
    pub ongoing: u64,
    pub rate_limited: u64,
    pub lost: u64,
    pub stack_failed: u64,
    /// "known", "none" (bare metal) or "unknown".
    pub steal: &'static str,
    /// Gaps over the threshold only with the hypervisor's time counted.
    pub steal_explained: u64,
    /// Samples whose steal clock could not be read.
    pub steal_failed: u64,
    pub per_cpu: Vec<CpuSummary>,
    pub hist_us: Log2Hist,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut out = format!(
            "\nirqoff: {} after {:.1}s, {} mode, threshold {} us, sampling period {} us\n",
            self.stop_reason, self.duration_s, self.mode, self.threshold_us, self.period_us
        );
        out.push_str(&format!(
            "windows over the threshold: {} (reported {}, ongoing records {}); not reported: \
             rate-limited {}, lost to full buffers {}; stack captures failed: {}\n",
            self.windows, self.reported, self.ongoing, self.rate_limited, self.lost, self.stack_failed
        ));
        match self.steal {
            "unknown" => out.push_str("steal time: unknown; windows may include time the hypervisor took\n"),
            "none" => {}
            _ => {
                out.push_str(&format!(
                    "steal time: {} us; gaps over the threshold that steal time alone explains: {}",
                    self.per_cpu.iter().map(|c| c.steal_us).sum::<u64>(),
                    self.steal_explained
                ));
                if self.steal_failed > 0 {
                    out.push_str(&format!("; samples with the steal clock unreadable: {}", self.steal_failed));
                }
                out.push('\n');
            }
        }
        let steal = |c: &CpuSummary| if self.steal == "unknown" { "-".to_string() } else { c.steal_us.to_string() };
        out.push_str(&format!(
            "{:>4} {:>10} {:>8} {:>10} {:>10} {:>10}\n",
            "CPU", "SAMPLES", "WINDOWS", "MAX(us)", "AVG(us)", "STEAL(us)"
        ));
        for c in &self.per_cpu {
            out.push_str(&format!(
                "{:>4} {:>10} {:>8} {:>10} {:>10} {:>10}\n",
                c.cpu,
                c.samples,
                c.windows,
                c.max_us,
                c.avg_us,
                steal(c)
            ));
        }
        out.push_str(&self.hist_us.render("usecs"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(kind: Kind) -> Record {
        Record {
            kind,
            time: UNIX_EPOCH + Duration::from_secs(1_651_751_119),
            mono_ns: 5_000_000_000,
            cpu: 3,
            comm: "kworker/3:0".into(),
            pid: 379531,
            tid: 379531,
            own: false,
            lat_us: 1_000_539,
            steal_us: Some(2_000),
            stack_of: StackOf::Holder,
            user_space: false,
            stack: vec![
                Frame { addr: 0xffffffffc04e2072, sym: Some("owner_func".into()), off: 0x12, module: Some("m".into()) },
                Frame { addr: 0xffffffff890b1c5b, sym: Some("process_one_work".into()), off: 0x1cb, module: None },
            ],
            stack_error: None,
        }
    }

    #[test]
    fn text_matches_the_seed_layout() {
        let t = record(Kind::Window).text();
        let lines: Vec<&str> = t.lines().collect();
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(&cols[1..], ["3", "kworker/3:0", "379531", "1000539", "2000"]);
        assert_eq!(cols[0].len(), "2022-05-05_11:45:19".len());
        assert_eq!(lines[1], "<0xffffffffc04e2072> owner_func+0x12 [m]");
        assert_eq!(lines[2], "<0xffffffff890b1c5b> process_one_work+0x1cb");
        let h: Vec<&str> = HEADER.split_whitespace().collect();
        assert_eq!(h, ["TIME(irqoff)", "CPU", "COMM", "TID", "LAT(us)", "STEAL(us)"]);
        let mut unknown = record(Kind::Window);
        unknown.steal_us = None;
        assert!(unknown.text().lines().next().unwrap().ends_with("1000539          -"), "{}", unknown.text());
    }

    #[test]
    fn user_space_is_said_not_left_blank() {
        let mut r = record(Kind::Window);
        r.stack.clear();
        assert_eq!(r.text().lines().nth(1), Some("<no kernel frames captured>"));
        r.user_space = true;
        assert_eq!(r.text().lines().nth(1), Some("<user space>"));
        assert_eq!(serde_json::to_value(&r).unwrap()["user_space"], true);
    }

    #[test]
    fn ongoing_is_marked() {
        assert!(record(Kind::Ongoing).text().lines().next().unwrap().contains("ongoing"));
    }

    #[test]
    fn own_windows_are_marked() {
        let mut r = record(Kind::Window);
        assert!(!r.text().contains("irqoff itself"));
        assert_eq!(serde_json::to_value(&r).unwrap()["own"], false);
        r.own = true;
        assert!(r.text().lines().next().unwrap().ends_with("  (irqoff itself)"));
        assert_eq!(serde_json::to_value(&r).unwrap()["own"], true);
    }

    #[test]
    fn json_fields_are_stable() {
        let v: serde_json::Value = serde_json::to_value(record(Kind::Window)).unwrap();
        assert_eq!(v["type"], "window");
        assert_eq!(v["time"], "2022-05-05T11:45:19.000000Z");
        assert_eq!(v["lat_us"], 1_000_539);
        assert_eq!(v["steal_us"], 2_000);
        assert_eq!(v["stack_of"], "holder");
        assert_eq!(v["stack"][0]["addr"], "0xffffffffc04e2072");
        assert_eq!(v["stack"][0]["sym"], "owner_func");
        assert!(v.get("stack_error").is_none());
        let mut r = record(Kind::Window);
        r.stack_error = Some(Errno(libc::EFAULT));
        assert_eq!(serde_json::to_value(r).unwrap()["stack_error"], "EFAULT");
    }

    fn summary(steal: &'static str) -> Summary {
        Summary {
            kind: "summary",
            mode: "sw",
            duration_s: 6.0,
            stop_reason: "duration ended".into(),
            threshold_us: 3000,
            period_us: 1000,
            windows: 1,
            reported: 1,
            ongoing: 0,
            rate_limited: 0,
            lost: 0,
            stack_failed: 0,
            steal,
            steal_explained: 4,
            steal_failed: 0,
            per_cpu: vec![
                CpuSummary { cpu: 0, samples: 6000, windows: 1, max_us: 5970, avg_us: 5970, steal_us: 53_135 },
                CpuSummary { cpu: 1, samples: 6000, windows: 0, max_us: 0, avg_us: 0, steal_us: 157_862 },
            ],
            hist_us: Log2Hist::default(),
        }
    }

    #[test]
    fn summary_says_what_steal_time_explains() {
        let t = summary("known").text();
        assert!(t.contains("steal time: 210997 us; gaps over the threshold that steal time alone explains: 4"), "{t}");
        let row1 = t.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap();
        assert!(row1.ends_with("157862"), "{t}");
        let t = summary("unknown").text();
        assert!(t.contains("steal time: unknown; windows may include time the hypervisor took"), "{t}");
        assert!(t.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap().ends_with("-"), "{t}");
        assert!(!summary("none").text().contains("steal time"));
    }
}

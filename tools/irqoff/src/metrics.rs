//! irqoff's Prometheus metrics: the kernel's per-CPU counters, labelled by
//! CPU only (a stack or a task would make a series per window).

use crate::bpf::types::irqoff_stats;
use kdiag_shared::histogram::slot;
use kdiag_shared::metrics::{exp2_buckets, Families};
use std::time::Duration;

/// The longest window with a bucket of its own: 2^25 us, about 34 s.
const LAST_SLOT: usize = 24;

/// What the run was set up with, exposed alongside the counts.
pub struct Setup {
    pub mode: &'static str,
    pub threshold: Duration,
    pub period: Duration,
}

/// The exposition for counters read from the kernel (`stats[i]` is CPU
/// `cpus[i]`'s).
pub fn render(stats: &[irqoff_stats], cpus: &[u32], setup: &Setup) -> String {
    let mut f = Families::default();
    f.gauge(
        "kdiag_irqoff_info",
        "How irqoff detects windows: mode hw (NMI from the cycles counter) or sw (cpu-clock hrtimer).",
        &[("mode", setup.mode.to_string())],
        1.0,
    );
    f.gauge(
        "kdiag_irqoff_threshold_seconds",
        "Windows shorter than this are not counted.",
        &[],
        setup.threshold.as_secs_f64(),
    );
    f.gauge(
        "kdiag_irqoff_sampling_period_seconds",
        "The cpu-clock period; a window's length may be short by up to one period.",
        &[],
        setup.period.as_secs_f64(),
    );
    // Every window is at least the threshold long: buckets start there.
    let first = slot(setup.threshold.as_micros() as u64).min(LAST_SLOT);
    for (s, &cpu) in stats.iter().zip(cpus) {
        let cpu = [("cpu", cpu.to_string())];
        f.histogram(
            "kdiag_irqoff_window_seconds",
            "Interrupts-off windows over the threshold, by length, reported or not.",
            &cpu,
            &exp2_buckets(&s.hist, first, LAST_SLOT, 1e-6),
            s.windows,
            s.lat_sum_ns as f64 / 1e9,
        );
        f.gauge(
            "kdiag_irqoff_window_max_seconds",
            "The longest window since irqoff started.",
            &cpu,
            s.lat_max_ns as f64 / 1e9,
        );
        f.counter("kdiag_irqoff_samples_total", "cpu-clock samples taken.", &cpu, s.samples);
        f.counter(
            "kdiag_irqoff_ongoing_records_total",
            "Early records of windows still open (hardware mode).",
            &cpu,
            s.ongoing,
        );
        f.counter(
            "kdiag_irqoff_rate_limited_windows_total",
            "Windows counted but not reported: over --max-rate.",
            &cpu,
            s.rate_limited,
        );
        f.counter(
            "kdiag_irqoff_lost_records_total",
            "Window and ongoing records lost to a full output buffer.",
            &cpu,
            s.lost + s.nmi_lost,
        );
        f.counter(
            "kdiag_irqoff_stack_failures_total",
            "Stack captures that failed.",
            &cpu,
            s.stack_failed + s.nmi_stack_failed,
        );
    }
    f.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_series_and_buckets_from_the_threshold() {
        let mut s = irqoff_stats { samples: 5979, windows: 3, lat_sum_ns: 40_000_000, ..Default::default() };
        s.hist[13] = 2; // 8.192-16.383 ms
        s.hist[15] = 1; // 32.768-65.535 ms
        let setup = Setup { mode: "sw", threshold: Duration::from_millis(10), period: Duration::from_millis(1) };
        let text = render(&[irqoff_stats::default(), s], &[0, 3], &setup);
        let has = |l: &str| assert!(text.lines().any(|x| x == l), "no {l:?} in\n{text}");
        has("kdiag_irqoff_info{mode=\"sw\"} 1");
        has("kdiag_irqoff_threshold_seconds 0.01");
        has("kdiag_irqoff_samples_total{cpu=\"3\"} 5979");
        has("kdiag_irqoff_window_seconds_bucket{cpu=\"3\",le=\"0.016384\"} 2");
        has("kdiag_irqoff_window_seconds_bucket{cpu=\"3\",le=\"0.032768\"} 2");
        has("kdiag_irqoff_window_seconds_bucket{cpu=\"3\",le=\"0.065536\"} 3");
        has("kdiag_irqoff_window_seconds_count{cpu=\"3\"} 3");
        has("kdiag_irqoff_window_seconds_sum{cpu=\"3\"} 0.04");
        has("kdiag_irqoff_window_seconds_count{cpu=\"0\"} 0");
        assert!(!text.contains("le=\"0.008192\""), "no bucket below the threshold:\n{text}");
        assert_eq!(text.matches("_bucket{cpu=\"3\"").count(), LAST_SLOT - 13 + 2, "{text}");
    }
}

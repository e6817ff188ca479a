//! The arithmetic that turns a threshold into sampling periods.

use std::time::Duration;

/// cpu-clock period: 1 ms (1 kHz, well under the kernel's sample-rate
/// throttle), or half the threshold for thresholds under 2 ms. A report is
/// short by at most one period.
pub fn sampling_period(threshold: Duration) -> Duration {
    (threshold / 2).min(Duration::from_millis(1))
}

/// Windows still open after this long get an early "ongoing" record.
pub fn ongoing_after(threshold: Duration) -> Duration {
    threshold * 5
}

/// NMI check interval: twice per threshold, so a window lasting one
/// threshold plus a period is seen by at least one NMI while still open.
pub fn nmi_interval(threshold: Duration) -> Duration {
    threshold / 2
}

/// The cycles counter counts cycles, not time: convert the NMI interval
/// with the CPU's frequency in kHz.
pub fn cycles_for(interval: Duration, cpu_khz: u64) -> u64 {
    (interval.as_nanos() * cpu_khz as u128 / 1_000_000).max(1) as u64
}

/// The CPU's maximum frequency in kHz: cpufreq if present, else the
/// "cpu MHz" of /proc/cpuinfo (all a VM usually offers).
pub fn cpu_khz(cpu: u32) -> Option<u64> {
    let sys = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq");
    if let Some(khz) = std::fs::read_to_string(sys).ok().and_then(|s| s.trim().parse().ok()) {
        return Some(khz);
    }
    mhz_from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn mhz_from_cpuinfo(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1)?.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn periods() {
        assert_eq!(sampling_period(10 * MS), MS);
        assert_eq!(sampling_period(MS), MS / 2);
        assert_eq!(ongoing_after(10 * MS), 50 * MS);
        assert_eq!(nmi_interval(10 * MS), 5 * MS);
    }

    #[test]
    fn cycles_not_nanoseconds() {
        // 5 ms at 2.5 GHz is 12.5 million cycles, not 5 million.
        assert_eq!(cycles_for(5 * MS, 2_500_000), 12_500_000);
        assert_eq!(cycles_for(Duration::ZERO, 2_500_000), 1);
    }

    #[test]
    fn cpuinfo_mhz() {
        let t = "processor\t: 0\ncpu MHz\t\t: 2199.998\nprocessor\t: 1\ncpu MHz\t\t: 2400.000\n";
        assert_eq!(mhz_from_cpuinfo(t), Some(2_400_000));
        assert_eq!(mhz_from_cpuinfo("flags: x"), None);
    }

    #[test]
    fn this_machine_has_a_frequency() {
        assert!(cpu_khz(0).unwrap() > 100_000);
    }
}

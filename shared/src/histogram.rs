//! log2 histograms, printed the way bcc's tools print them so that eyes
//! (and scripts) used to `print_log2_hist` read ours without effort.

use serde::Serialize;

pub const SLOTS: usize = 64;

/// Slot of `v` in a log2 histogram: 0 holds 0 and 1, slot k holds
/// [2^k, 2^(k+1)). The BPF side uses the same rule.
pub fn slot(v: u64) -> usize {
    if v < 2 {
        0
    } else {
        63 - v.leading_zeros() as usize
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Log2Hist {
    pub counts: Vec<u64>,
}

impl Log2Hist {
    pub fn from_slots(slots: &[u64]) -> Self {
        Log2Hist { counts: slots.to_vec() }
    }

    pub fn add(&mut self, v: u64) {
        let s = slot(v);
        if self.counts.len() <= s {
            self.counts.resize(s + 1, 0);
        }
        self.counts[s] += 1;
    }

    pub fn merge(&mut self, other: &Log2Hist) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// bcc's layout: `low -> high : count |****|`, from the first to the
    /// last non-empty slot. Empty when there is nothing to show.
    pub fn render(&self, unit: &str) -> String {
        let Some(last) = self.counts.iter().rposition(|&c| c > 0) else { return String::new() };
        let first = self.counts.iter().position(|&c| c > 0).unwrap_or(0);
        let max = *self.counts.iter().max().unwrap_or(&1);
        let mut out = format!("{:>24} : count    distribution\n", unit);
        for s in first..=last {
            let (low, high) = if s == 0 { (0, 1) } else { (1u64 << s, (1u64 << (s + 1)) - 1) };
            let c = self.counts[s];
            let stars = (c * 40).div_ceil(max) as usize;
            out.push_str(&format!("{:>10} -> {:<10} : {:<8} |{:<40}|\n", low, high, c, "*".repeat(stars.min(40))));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_powers_of_two() {
        assert_eq!(slot(0), 0);
        assert_eq!(slot(1), 0);
        assert_eq!(slot(2), 1);
        assert_eq!(slot(3), 1);
        assert_eq!(slot(4), 2);
        assert_eq!(slot(10_000), 13);
        assert_eq!(slot(u64::MAX), 63);
    }

    #[test]
    fn renders_like_bcc() {
        let mut h = Log2Hist::default();
        for v in [10_000, 12_000, 20_000, 50_000] {
            h.add(v);
        }
        let text = h.render("usecs");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "                   usecs : count    distribution");
        assert_eq!(lines[1], "      8192 -> 16383      : 2        |****************************************|");
        assert_eq!(lines[2], "     16384 -> 32767      : 1        |********************                    |");
        assert_eq!(lines[3], "     32768 -> 65535      : 1        |********************                    |");
        assert_eq!(lines.len(), 4);
        assert_eq!(h.total(), 4);
    }

    #[test]
    fn empty_renders_nothing_and_merge_adds() {
        assert_eq!(Log2Hist::default().render("usecs"), "");
        let mut a = Log2Hist::from_slots(&[1, 2]);
        a.merge(&Log2Hist::from_slots(&[0, 1, 5]));
        assert_eq!(a.counts, vec![1, 3, 5]);
    }
}

//! The kernel's counters, summed over CPUs, and the words for what the
//! detailed records do not show: the summary's numbers come from here, not
//! from the records, so they stay exact when --max-rate or a full buffer
//! kept records back.

use crate::bpf::types::cw_stats;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub alloc_ok: Vec<u64>,
    pub alloc_fail: Vec<u64>,
    pub lost: u64,
    pub counts_full: u64,
    pub fails_full: u64,
    pub stack_failed: u64,
    pub rate_limited: u64,
    pub rate_limited_events: u64,
    pub stalls: u64,
    pub background_runs: u64,
    pub stalls_ok: Vec<u64>,
    pub stalls_failed: Vec<u64>,
    /// Compaction runs by the raw end status (index), every context.
    pub runs_by_status: Vec<u64>,
}

impl Totals {
    pub fn add(&mut self, s: &cw_stats) {
        let grow = |v: &mut Vec<u64>, from: &[u64]| {
            v.resize(v.len().max(from.len()), 0);
            v.iter_mut().zip(from).for_each(|(a, b)| *a += b);
        };
        grow(&mut self.alloc_ok, &s.alloc_ok);
        grow(&mut self.alloc_fail, &s.alloc_fail);
        grow(&mut self.stalls_ok, &s.stalls_ok);
        grow(&mut self.stalls_failed, &s.stalls_failed);
        grow(&mut self.runs_by_status, &s.runs_by_status);
        self.lost += s.lost;
        self.counts_full += s.counts_full;
        self.fails_full += s.fails_full;
        self.stack_failed += s.stack_failed;
        self.rate_limited += s.rate_limited;
        self.rate_limited_events += s.rate_limited_events;
        self.stalls += s.stalls_ok.iter().sum::<u64>();
        self.background_runs += s.background_runs;
    }

    pub fn failures(&self) -> u64 {
        self.alloc_fail.iter().sum()
    }

    /// Orders with anything seen: (order, ok, failed).
    pub fn by_order(&self) -> Vec<(usize, u64, u64)> {
        (0..self.alloc_ok.len().max(self.alloc_fail.len()))
            .map(|o| (o, self.alloc_ok.get(o).copied().unwrap_or(0), self.alloc_fail.get(o).copied().unwrap_or(0)))
            .filter(|&(_, ok, failed)| ok + failed > 0)
            .collect()
    }

    /// The text summary's closing lines: what was held back by the rate
    /// limit (on purpose, counted above) and what was lost (not on purpose),
    /// kept apart because they call for different fixes.
    pub fn gaps_text(&self, transport_lost: u64, max_rate: u32) -> String {
        let mut t = String::new();
        if self.rate_limited > 0 {
            t += &format!(
                "rate limit (--max-rate {max_rate} per CPU per second): {} allocations or compaction runs not shown \
                 in detail ({} records withheld); the counts above include them\n",
                self.rate_limited, self.rate_limited_events
            );
        }
        let lost = self.lost + transport_lost;
        if lost + self.counts_full + self.fails_full + self.stack_failed > 0 {
            t += &format!(
                "not recorded: {lost} events lost (buffer full), {} allocations uncounted by caller (table full: {} \
                 ok, {} failed), {} stacks failed\n",
                self.counts_full + self.fails_full,
                self.counts_full,
                self.fails_full,
                self.stack_failed
            );
        }
        t
    }
}

/// The `n` largest by count; equal counts keep a fixed order (by key) so
/// two runs over the same data print the same list.
pub fn top<K: Ord, V>(mut rows: Vec<(K, V)>, count: impl Fn(&V) -> u64, n: usize) -> Vec<(K, V)> {
    rows.sort_by(|a, b| count(&b.1).cmp(&count(&a.1)).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(fail5: u64, ok5: u64, rl: u64, lost: u64) -> cw_stats {
        let mut s = cw_stats::default();
        s.alloc_fail[5] = fail5;
        s.alloc_ok[5] = ok5;
        s.rate_limited = rl;
        s.rate_limited_events = rl * 20;
        s.lost = lost;
        s.stalls_ok[5] = ok5;
        s
    }

    #[test]
    fn per_cpu_counters_sum_exactly() {
        let mut t = Totals::default();
        for s in [cpu(600, 1, 590, 0), cpu(422, 1, 410, 0), cpu(0, 0, 0, 0)] {
            t.add(&s);
        }
        assert_eq!(t.failures(), 1022);
        assert_eq!(t.by_order(), vec![(5, 2, 1022)]);
        assert_eq!((t.rate_limited, t.rate_limited_events, t.stalls), (1000, 20000, 2));
    }

    #[test]
    fn rate_limit_and_loss_are_reported_apart() {
        let mut t = Totals::default();
        assert_eq!(t.gaps_text(0, 10), "", "nothing held back, nothing said");
        t.add(&cpu(100, 0, 90, 0));
        let g = t.gaps_text(0, 10);
        assert!(g.contains("--max-rate 10 per CPU") && g.contains(": 90 allocations") && g.contains("1800 records"));
        assert!(!g.contains("lost"), "{g}");
        t.add(&cpu(0, 0, 0, 3));
        t.fails_full = 2;
        let g = t.gaps_text(4, 10);
        assert!(g.contains("not recorded: 7 events lost") && g.contains("0 ok, 2 failed"), "{g}");
        assert!(g.lines().next().unwrap().contains("rate limit"), "{g}");
    }

    #[test]
    fn top_is_by_count_then_key() {
        let rows = vec![((3, 5), 10u64), ((1, 5), 10), ((2, 6), 50), ((4, 5), 1)];
        let t = top(rows, |v| *v, 3);
        assert_eq!(t, vec![((2, 6), 50), ((1, 5), 10), ((3, 5), 10)]);
    }
}

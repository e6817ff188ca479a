//! /proc/vmstat counters that tell compaction's story: compact_* (stalls,
//! failures, successes, pages scanned), allocstall_* (direct reclaim entries
//! per zone) and pgmigrate_*. Reported as deltas between verdicts.

use std::collections::BTreeMap;

pub type Counters = BTreeMap<String, u64>;

fn wanted(name: &str) -> bool {
    name.starts_with("compact_") || name.starts_with("allocstall_") || name.starts_with("pgmigrate_")
}

pub fn parse(text: &str) -> Counters {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            wanted(k).then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
        })
        .collect()
}

pub fn read() -> Counters {
    std::fs::read_to_string("/proc/vmstat").map(|t| parse(&t)).unwrap_or_default()
}

/// Counters that moved, with how much.
pub fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

pub fn text(d: &Counters) -> String {
    if d.is_empty() {
        return "no change".into();
    }
    d.iter().map(|(k, v)| format!("{k} +{v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_of_the_counters_that_matter() {
        let a = parse(
            "nr_free_pages 5\ncompact_stall 87914\ncompact_fail 40935\nallocstall_normal 3\npgmigrate_success 0\n",
        );
        assert_eq!(a.len(), 4);
        let b = parse("compact_stall 87914\ncompact_fail 40936\nallocstall_normal 5\npgmigrate_success 0\n");
        let d = delta(&a, &b);
        assert_eq!(text(&d), "allocstall_normal +2, compact_fail +1");
        assert_eq!(text(&delta(&b, &b)), "no change");
        assert!(read().contains_key("compact_stall"));
    }
}

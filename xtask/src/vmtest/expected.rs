//! The result names a guest must report, worked out on the host from the
//! mechanisms its kernel's config promises, so that a test which stops
//! reporting (or a result line lost in console noise) is a failure rather
//! than a shorter list of passes. Kept in step with tests/vmtest-guest by
//! hand: a name there that is missing here, or the other way round, fails
//! the run and names itself.

/// The guest's test groups, as its TESTS table names them (`--filter`
/// matches these), and the results each one reports.
fn groups(works: &dyn Fn(&str) -> bool) -> Vec<(&'static str, Vec<String>)> {
    let all = |prefix: &str, cases: &[&str]| cases.iter().map(|c| format!("{prefix}.{c}")).collect::<Vec<_>>();
    let first = |ladder: &[&'static str]| ladder.iter().copied().find(|m| works(m));
    // backends.rs: the best rung unforced, then every other working rung
    // the host cannot run, forced.
    let mut backend = Vec::new();
    for (tool, ladder) in [
        ("epollwake", &["fentry", "kprobe", "tp_btf", "raw_tp"][..]),
        ("offwaketime", &["tp_btf", "raw_tp", "tracepoint", "kprobe"][..]),
        ("funcstack", &["fentry", "kprobe", "ftrace"][..]),
        ("funcstack-glob", &["kprobe-multi", "kprobe", "ftrace"][..]),
    ] {
        let best = first(ladder);
        backend.push(format!("backend.{tool}"));
        for rung in ladder {
            if works(rung) && ["kprobe-multi", "fentry", "kprobe", "ftrace"].contains(rung) && Some(*rung) != best {
                backend.push(format!("backend.{tool}.{rung}"));
            }
        }
    }
    let blkreq_best = if works("kprobe-multi") { "kprobe-multi" } else { "fentry" };
    let glob = if works("kprobe-multi") { "kprobe-multi" } else { "kprobe" };
    let mut stress: Vec<String> = vec!["stress.irqoff".into()];
    for b in ["tp_btf", "raw_tp", "tracepoint", "kprobe"] {
        if works(b) {
            stress.push(format!("stress.offwaketime.{b}"));
        }
    }
    stress.push("stress.offwaketime".into());
    for b in ["fentry", "kprobe", "tp_btf", "raw_tp"] {
        if works(b) {
            stress.push(format!("stress.epollwake.{b}"));
        }
    }
    stress.push("stress.compactwatch".into());
    for b in ["fentry", "kprobe", "ftrace"] {
        if works(b) {
            stress.push(format!("stress.funcstack.{b}"));
        }
    }
    stress.extend(
        ["funcstack-glob", "funcstack-tracepoint", "blkreq", "no-run-time-allocation"].map(|c| format!("stress.{c}")),
    );
    vec![
        (
            "ladder",
            all(
                "ladder",
                &["kprobe-multi", "fentry", "kprobe", "tp_btf", "raw_tp", "tracepoint", "ftrace", "hw", "sw"],
            ),
        ),
        ("backend", backend),
        ("kmod-irqoff", vec!["kmod-irqoff".into()]),
        ("kmod-memory", all("kmod-memory", &["kernel", "nofs", "noio", "kernel+noretry", "release"])),
        ("loop", vec!["loop".into()]),
        ("blkreq", all("blkreq", &[blkreq_best, "kprobe"])),
        ("compactwatch", all("compactwatch", &["nofs", "noio", "kernel+noretry", "from-dmesg", "restore"])),
        (
            "irqoff",
            all(
                "irqoff",
                &[
                    "banner",
                    "steal-unknown",
                    "steal-not-claimed",
                    "exit",
                    "20ms",
                    "50ms",
                    "200ms",
                    "5ms",
                    "no-stray-reports",
                ],
            ),
        ),
        ("offwaketime", all("offwaketime", &["default.banner", "default", "kprobe.banner", "kprobe"])),
        ("funcstack", all("funcstack", &["fentry", "kprobe", &format!("glob-{glob}"), "ftrace"])),
        ("epollwake", all("epollwake", &["kprobe-ipv4", "kprobe-ipv6", "fentry-ipv4", "fentry-ipv6"])),
        (
            "nobtf",
            all(
                "nobtf",
                &[
                    "hidden",
                    "offwaketime.refused",
                    "blkreq.refused",
                    "epollwake.refused",
                    "compactwatch.refused",
                    "irqoff.refused",
                    "funcstack",
                    "irqoff",
                    "offwaketime.banner",
                    "offwaketime",
                    "blkreq",
                    "epollwake",
                    "compactwatch",
                    "restored",
                ],
            ),
        ),
        ("tracefs-toggle", vec!["tracefs-toggle".into()]),
        ("stress", stress),
    ]
}

/// The groups that run only when the host asks for the stress test.
const STRESS_GROUPS: [&str; 2] = ["tracefs-toggle", "stress"];

/// Every result a guest whose kernel accepts `works` must report under
/// `filter` (a substring of the group names, as the guest applies it),
/// with or without the stress test.
pub fn results(works: &[String], filter: Option<&str>, stress: bool) -> Vec<String> {
    let works = |m: &str| works.iter().any(|w| w == m);
    let mut names = vec!["setup".to_string()];
    for (group, results) in groups(&works) {
        if (stress || !STRESS_GROUPS.contains(&group)) && filter.is_none_or(|f| group.contains(f)) {
            names.extend(results);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel() {
        let k61: Vec<String> = ["fentry", "kprobe", "ftrace", "tp_btf", "raw_tp", "tracepoint", "sw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = results(&k61, None, true);
        for name in ["setup", "blkreq.fentry", "funcstack.glob-kprobe", "backend.epollwake.kprobe", "stress.blkreq"] {
            assert!(r.contains(&name.to_string()), "{name} missing from {r:?}");
        }
        assert!(!r.iter().any(|n| n.contains("kprobe-multi") && !n.starts_with("ladder.")), "{r:?}");
        let mut k612 = k61.clone();
        k612.push("kprobe-multi".into());
        let r = results(&k612, Some("blkreq"), false);
        assert!(!results(&k612, None, false).iter().any(|n| n.starts_with("stress")));
        assert_eq!(r, ["setup", "blkreq.kprobe-multi", "blkreq.kprobe"]);
        // Duplicates would let one line stand in for two results.
        let all = results(&k612, None, true);
        let mut dedup = all.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len());
    }
}

//! CPU lists in the kernel's own syntax (`0-3,7`), as `-c` takes them and
//! as /sys/devices/system/cpu/online prints them.

use std::collections::BTreeSet;

/// Parse `0-3,7,9-10` into a sorted list without duplicates.
pub fn parse_list(s: &str) -> Result<Vec<u32>, String> {
    let bad = |part: &str| format!("invalid CPU list '{s}': '{part}' is not a CPU number or range");
    let mut set = BTreeSet::new();
    for part in s.trim().split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        let (lo, hi) = (lo.map_err(|_| bad(part))?, hi.map_err(|_| bad(part))?);
        if lo > hi {
            return Err(format!("invalid CPU list '{s}': range '{part}' runs backwards"));
        }
        set.extend(lo..=hi);
    }
    Ok(set.into_iter().collect())
}

/// Format a list back into ranges, for banners.
pub fn format_list(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(",")
}

/// The CPUs that are online now.
pub fn online() -> anyhow::Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| anyhow::anyhow!("cannot read /sys/devices/system/cpu/online: {e}"))?;
    parse_list(&text).map_err(anyhow::Error::msg)
}

/// Resolve `-c LIST` (or all online CPUs) and reject CPUs that are not online.
pub fn select(requested: Option<&str>, online: &[u32]) -> anyhow::Result<Vec<u32>> {
    let Some(req) = requested else { return Ok(online.to_vec()) };
    let cpus = parse_list(req).map_err(anyhow::Error::msg)?;
    let missing: Vec<u32> = cpus.iter().copied().filter(|c| !online.contains(c)).collect();
    if !missing.is_empty() {
        anyhow::bail!("CPU {} is not online (online CPUs: {})", format_list(&missing), format_list(online));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_syntax() {
        assert_eq!(parse_list("0-3,7").unwrap(), vec![0, 1, 2, 3, 7]);
        assert_eq!(parse_list(" 5 ,1-2,2\n").unwrap(), vec![1, 2, 5]);
        assert_eq!(parse_list("0").unwrap(), vec![0]);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "a", "1-", "-1", "3-1", "1,,2", "1.5"] {
            assert!(parse_list(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn formats_ranges() {
        assert_eq!(format_list(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(format_list(&[]), "");
    }

    #[test]
    fn select_checks_online() {
        let on = [0, 1];
        assert_eq!(select(None, &on).unwrap(), vec![0, 1]);
        assert_eq!(select(Some("1"), &on).unwrap(), vec![1]);
        assert_eq!(select(Some("1-3"), &on).unwrap_err().to_string(), "CPU 2-3 is not online (online CPUs: 0-1)");
    }

    #[test]
    fn this_machine_has_cpus() {
        assert!(!online().unwrap().is_empty());
    }
}

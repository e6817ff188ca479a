//! Address ranges of kernel functions, from /proc/kallsyms: the tracepoint
//! backend recognises a wake-up that came through ep_poll_callback (and
//! which socket callback called it) by the return addresses in the waker's
//! stack, without kprobes.

use std::collections::HashMap;

/// `[start, end)` of each function in `names` that kallsyms lists: end is
/// the next text symbol's address. Missing names are absent from the map;
/// hidden addresses (kptr_restrict) are an error.
pub fn function_ranges(kallsyms: &str, names: &[&str]) -> Result<HashMap<String, (u64, u64)>, String> {
    let mut text: Vec<u64> = Vec::with_capacity(1 << 17);
    let mut starts: HashMap<String, u64> = HashMap::new();
    for line in kallsyms.lines() {
        let mut f = line.split_whitespace();
        let (Some(a), Some(t), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
        if !matches!(t, "t" | "T") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(a, 16) else { continue };
        text.push(addr);
        if names.contains(&name) && !starts.contains_key(name) {
            starts.insert(name.to_string(), addr);
        }
    }
    if !starts.is_empty() && starts.values().all(|&a| a == 0) {
        return Err("kernel addresses are hidden in /proc/kallsyms (kernel.kptr_restrict): \
                    run as root, or set kernel.kptr_restrict=0"
            .into());
    }
    text.sort_unstable();
    text.dedup();
    Ok(starts
        .into_iter()
        .map(|(n, s)| {
            let i = text.partition_point(|&a| a <= s);
            let end = text.get(i).copied().unwrap_or(s + 1);
            (n, (s, end))
        })
        .collect())
}

/// Can the kernel's unwinder see through a kretprobe (5.16: "x86/unwind:
/// Recover kretprobe trampoline entry", whose helper is
/// kretprobe_find_ret_addr)? Before, a stack taken inside a kretprobed
/// function loses every frame above it: a kretprobe on ep_poll_callback
/// would hide which socket callback called it.
pub fn unwinds_through_kretprobes(kallsyms: &str) -> bool {
    kallsyms.lines().any(|l| l.split_whitespace().nth(2) == Some("kretprobe_find_ret_addr"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_end_at_the_next_function() {
        let k = "ffffffff81731c30 t ep_poll_callback\n\
                 ffffffff81731f00 T ep_something_else\n\
                 ffffffff81e35100 T sock_def_readable\n\
                 ffffffff81e35180 d some_data\n\
                 ffffffff81e35200 t next_fn\n";
        let r = function_ranges(k, &["ep_poll_callback", "sock_def_readable", "absent"]).unwrap();
        assert_eq!(r["ep_poll_callback"], (0xffffffff81731c30, 0xffffffff81731f00));
        assert_eq!(r["sock_def_readable"], (0xffffffff81e35100, 0xffffffff81e35200));
        assert!(!r.contains_key("absent"));
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let k = "0000000000000000 t ep_poll_callback\n0000000000000000 T x\n";
        assert!(function_ranges(k, &["ep_poll_callback"]).unwrap_err().contains("kptr_restrict"));
    }

    /// This kernel: the functions the tracepoint backend needs are there.
    #[test]
    fn kretprobe_unwinding_by_symbol() {
        assert!(unwinds_through_kretprobes("ffffffff81100000 T kretprobe_find_ret_addr\n"));
        assert!(!unwinds_through_kretprobes("ffffffff81100000 T kretprobe_trampoline\n"));
    }

    #[test]
    fn this_kernel_has_the_epoll_callbacks() {
        let k = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let r = function_ranges(&k, &["ep_poll_callback", "sock_def_readable", "sock_def_wakeup"]).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        for (n, (s, e)) in &r {
            assert!(s < e && e - s < 64 * 1024, "{n}: {s:#x}..{e:#x}");
        }
    }
}

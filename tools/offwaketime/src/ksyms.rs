//! Kernel addresses to names in a few MB: /proc/kallsyms is read twice,
//! keeping first only the text symbols' addresses, then only the names of
//! the symbols the stacks need. A full in-memory symbol table (what
//! blazesym builds) costs about 10 MB of RSS on a 6.18 kernel, the whole
//! budget of a tool meant for production boxes.

use kdiag_shared::symbolize::Frame;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};

const KALLSYMS: &str = "/proc/kallsyms";
/// No kernel function is this long; beyond it an address is not code we
/// know (kallsyms has no sizes).
const MAX_FUNC: u64 = 1 << 20;

/// Symbols of the addresses asked for, keyed by lookup address.
pub struct KernelSyms {
    found: HashMap<u64, Frame>,
}

/// One kallsyms line: address, type, name, optional [module].
fn parse_line(l: &str) -> Option<(u64, char, &str, Option<&str>)> {
    let mut f = l.split_whitespace();
    let addr = u64::from_str_radix(f.next()?, 16).ok()?;
    let ty = f.next()?.chars().next()?;
    let name = f.next()?;
    let module = f.next().map(|m| m.trim_start_matches('[').trim_end_matches(']'));
    Some((addr, ty, name, module))
}

fn is_text(ty: char) -> bool {
    matches!(ty, 't' | 'T' | 'w' | 'W')
}

impl KernelSyms {
    pub fn load(lookups: &[u64]) -> Self {
        Self::from_reader(lookups, || std::fs::File::open(KALLSYMS).ok().map(BufReader::new))
    }

    fn from_reader<R: BufRead>(lookups: &[u64], open: impl Fn() -> Option<R>) -> Self {
        let mut found = HashMap::new();
        let Some(r) = open() else { return KernelSyms { found } };
        let mut starts: Vec<u64> = r
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                parse_line(&l)
                    .filter(|(a, t, n, _)| *a != 0 && is_text(*t) && !n.starts_with("__pfx_"))
                    .map(|(a, ..)| a)
            })
            .collect();
        starts.sort_unstable();
        starts.dedup();
        // The symbol start each lookup falls in.
        let owner: HashMap<u64, u64> = lookups
            .iter()
            .filter_map(|&a| {
                let i = starts.partition_point(|&s| s <= a);
                (i > 0 && a - starts[i - 1] < MAX_FUNC).then(|| (a, starts[i - 1]))
            })
            .collect();
        drop(starts);
        let wanted: HashSet<u64> = owner.values().copied().collect();
        let mut names: HashMap<u64, (String, Option<String>)> = HashMap::new();
        if let Some(r) = open() {
            for l in r.lines().map_while(Result::ok) {
                if let Some((a, t, n, m)) = parse_line(&l) {
                    if is_text(t) && !n.starts_with("__pfx_") && wanted.contains(&a) && !names.contains_key(&a) {
                        names.insert(a, (n.to_string(), m.map(str::to_string)));
                    }
                }
            }
        }
        for (&a, s) in &owner {
            if let Some((name, module)) = names.get(s) {
                found.insert(a, Frame { addr: a, sym: Some(name.clone()), off: a - s, module: module.clone() });
            }
        }
        KernelSyms { found }
    }

    /// Frames of a captured stack, looked up as
    /// [`kdiag_shared::symbolize::Symbolizer::kernel_stack`] does: return
    /// addresses (all but the first) minus one.
    pub fn stack(&self, addrs: &[u64]) -> Vec<Frame> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let l = lookup_addr(i, addr);
                match self.found.get(&l) {
                    Some(f) => Frame { addr, off: f.off + (addr - l), ..f.clone() },
                    None => Frame { addr, sym: None, off: 0, module: None },
                }
            })
            .collect()
    }
}

pub fn lookup_addr(i: usize, addr: u64) -> u64 {
    if i == 0 {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_shared::symbolize::Symbolizer;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff813a4370 t __pfx_finish_task_switch.isra.0
ffffffff813a4380 t finish_task_switch.isra.0
ffffffff813a4600 T schedule
ffffffff813a4600 T schedule_alias
ffffffff82000000 D some_data
ffffffffc0a00000 t loop_queue_rq\t[loop]
";

    fn syms(lookups: &[u64]) -> KernelSyms {
        KernelSyms::from_reader(lookups, || Some(std::io::Cursor::new(TEXT)))
    }

    #[test]
    fn names_offsets_and_modules() {
        let k = syms(&[0xffffffff813a4385, 0xffffffff813a4600, 0xffffffffc0a00010, 0xffffffff82000010]);
        let f = k.stack(&[0xffffffff813a4385, 0xffffffff813a4601, 0xffffffffc0a00011, 0xffffffff82000011]);
        assert_eq!(f[0].label(), "finish_task_switch.isra.0+0x5");
        // A return address right after a call at the end of a function.
        assert_eq!(f[1].label(), "schedule+0x1");
        assert_eq!(f[2].label(), "loop_queue_rq+0x11 [loop]");
        // Data is not code: the nearest text symbol is over 1 MB away.
        assert_eq!(f[3].label(), "[unknown]");
    }

    /// The same names blazesym gives, on this kernel's real kallsyms.
    #[test]
    fn agrees_with_blazesym_here() {
        let kallsyms = std::fs::read_to_string(KALLSYMS).unwrap();
        let addrs: Vec<u64> = kallsyms
            .lines()
            .filter_map(parse_line)
            .filter(|(a, t, n, m)| {
                *a != 0
                    && is_text(*t)
                    && m.is_none()
                    && ["schedule", "pipe_read", "try_to_wake_up", "anon_pipe_read"].contains(n)
            })
            .map(|(a, ..)| a + 7)
            .collect();
        assert!(addrs.len() >= 2, "{addrs:x?}");
        let lookups: Vec<u64> = addrs.iter().enumerate().map(|(i, &a)| lookup_addr(i, a)).collect();
        let ours: Vec<String> = KernelSyms::load(&lookups).stack(&addrs).iter().map(|f| f.label()).collect();
        let theirs: Vec<String> = Symbolizer::new().kernel_stack(&addrs).iter().map(|f| f.label()).collect();
        assert_eq!(ours, theirs);
    }
}

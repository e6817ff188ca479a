//! Reading BPF maps from userspace: plain-data values as the skeleton's
//! types, stack maps by id (each id read once), and the count of stack
//! captures that failed, by reason.

use libbpf_rs::{Map, MapCore, MapFlags};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A value of a skeleton type from map bytes; the type's default when the
/// bytes are short (a map of another layout must not crash the report).
pub fn plain<T: Copy + Default>(bytes: &[u8]) -> T {
    if bytes.len() < std::mem::size_of::<T>() {
        return T::default();
    }
    // SAFETY: T is a plain-data type from the skeleton and the length was checked.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) }
}

/// Entry 0 of a per-CPU array of counters, summed over CPUs. Every tool
/// keeps its statistics so, as a struct of u64 counters only; that is what
/// `T` must be (a struct with narrower fields would be added wrongly).
pub fn sum_counters<T: Copy + Default>(map: &impl MapCore) -> Result<T, libbpf_rs::Error> {
    let size = std::mem::size_of::<T>();
    assert_eq!(size % 8, 0, "a counters struct holds u64s only");
    let mut sum = vec![0u64; size / 8];
    let per_cpu = map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?.unwrap_or_default();
    for v in per_cpu.iter().filter(|v| v.len() >= size) {
        for (acc, c) in sum.iter_mut().zip(v.chunks_exact(8)) {
            *acc = acc.wrapping_add(u64::from_ne_bytes(c.try_into().unwrap()));
        }
    }
    let bytes: Vec<u8> = sum.iter().flat_map(|c| c.to_ne_bytes()).collect();
    Ok(plain(&bytes))
}

/// Stack ids to addresses, read from a BPF_MAP_TYPE_STACK_TRACE map once each.
#[derive(Default)]
pub struct StackCache {
    addrs: HashMap<i32, Vec<u64>>,
    /// (tgid, stack id) of user stacks already symbolized, so each is
    /// looked up once, while its process still lives.
    pub user_done: HashSet<(u32, i32)>,
}

impl StackCache {
    /// The addresses of stack `id`, innermost first; empty if it is gone.
    pub fn get(&mut self, map: &Map, id: i32) -> &[u64] {
        self.addrs.entry(id).or_insert_with(|| {
            map.lookup(&id.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|bytes| {
                    bytes
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                        .take_while(|&a| a != 0)
                        .collect()
                })
                .unwrap_or_default()
        })
    }
}

/// Failed bpf_get_stackid() calls, by errno, as the BPF side counts them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StackFailures {
    /// Stack map bucket held by another stack: a hash collision, long
    /// before the map is full.
    pub eexist: u64,
    /// Stack map full.
    pub enomem: u64,
    /// Nothing readable (e.g. a user stack of a task without user space).
    pub efault: u64,
    pub other: u64,
}

impl StackFailures {
    pub fn total(&self) -> u64 {
        self.eexist + self.enomem + self.efault + self.other
    }

    /// The summary line, with what to do when the map is too small (the
    /// tools that count stacks all take --stack-storage-size).
    pub fn text(&self) -> String {
        let mut s = format!(
            "Stack captures failed: {} (EEXIST {}, ENOMEM {}, EFAULT {}, other {})",
            self.total(),
            self.eexist,
            self.enomem,
            self.efault,
            self.other
        );
        if self.eexist + self.enomem > 0 {
            s.push_str("; the stack map is too small: raise --stack-storage-size");
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    #[repr(C)]
    struct Pair {
        a: u32,
        b: u64,
    }

    #[test]
    fn plain_values_and_short_bytes() {
        let mut bytes = vec![0u8; std::mem::size_of::<Pair>()];
        bytes[..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[8..16].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(plain::<Pair>(&bytes), Pair { a: 7, b: 9 });
        assert_eq!(plain::<Pair>(&bytes[..3]), Pair::default());
    }

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    #[repr(C)]
    struct Counters {
        hits: u64,
        lost: u64,
    }

    /// A real per-CPU array in this kernel, each CPU with its own counts.
    #[test]
    fn counters_are_summed_over_cpus() {
        use libbpf_rs::{MapHandle, MapType};
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let map = MapHandle::create(MapType::PercpuArray, Some("kd_test_sum"), 4, 16, 1, &opts).unwrap();
        let cpus = libbpf_rs::num_possible_cpus().unwrap();
        let values: Vec<Vec<u8>> =
            (0..cpus as u64).map(|c| [c + 1, 10 * (c + 1)].iter().flat_map(|v| v.to_ne_bytes()).collect()).collect();
        map.update_percpu(&0u32.to_ne_bytes(), &values, MapFlags::ANY).unwrap();
        let n = cpus as u64;
        let want = Counters { hits: n * (n + 1) / 2, lost: 10 * n * (n + 1) / 2 };
        assert_eq!(sum_counters::<Counters>(&map).unwrap(), want);
    }

    #[test]
    fn failures_add_up() {
        let f = StackFailures { eexist: 3, enomem: 1, efault: 2, other: 0 };
        assert_eq!(f.total(), 6);
        assert_eq!(
            f.text(),
            "Stack captures failed: 6 (EEXIST 3, ENOMEM 1, EFAULT 2, other 0); \
             the stack map is too small: raise --stack-storage-size\n"
        );
        let f = StackFailures { efault: 2, ..Default::default() };
        assert_eq!(f.text(), "Stack captures failed: 2 (EEXIST 0, ENOMEM 0, EFAULT 2, other 0)\n");
    }
}

//! Reading BPF maps from userspace as the skeleton's plain-data types.
//!
//! A tool marks its skeleton types as plain data once ([`plain_data!`]);
//! everything that turns map bytes or records into those types is here,
//! so no tool casts pointers.

use libbpf_rs::{MapCore, MapFlags};

pub use plain::Plain;

/// Declare skeleton types plain data: any bit pattern is a valid value.
/// True of every type libbpf-cargo generates from a BPF program's structs
/// of integers and arrays (no references, no enums, no bools).
#[macro_export]
macro_rules! plain_data {
    ($($t:ty),+ $(,)?) => {
        // SAFETY: the generated types are #[repr(C)] structs of integers
        // and arrays of integers, valid for any bytes.
        $(unsafe impl $crate::maps::Plain for $t {})+
    };
}

/// A value of a skeleton type from map or record bytes; None when the
/// bytes are too short (a map of another layout must not crash a report).
pub fn decode<T: Plain + Default>(bytes: &[u8]) -> Option<T> {
    let mut v = T::default();
    plain::copy_from_bytes(&mut v, bytes).ok()?;
    Some(v)
}

/// The bytes of a plain-data value, to write into a map.
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: T is plain data; libbpf-cargo spells out padding as fields,
    // so every byte of a generated type is initialised.
    unsafe { plain::as_bytes(v) }
}

/// As [`decode`], the type's default for short bytes.
pub fn plain<T: Plain + Default>(bytes: &[u8]) -> T {
    decode(bytes).unwrap_or_default()
}

/// A C string from a record (a task's comm): up to its NUL, lossy UTF-8.
pub fn c_string(c: &[i8]) -> String {
    let bytes: Vec<u8> = c.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Every key of a hash map whose keys are `K`.
pub fn keys<K: Plain + Default>(map: &impl MapCore) -> Vec<K> {
    map.keys().filter_map(|k| decode(&k)).collect()
}

/// Every entry of a hash map whose keys and values are `K` and `V`.
pub fn entries<K: Plain + Default, V: Plain + Default>(map: &impl MapCore) -> Result<Vec<(K, V)>, libbpf_rs::Error> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(v) = map.lookup(&k, MapFlags::ANY)? {
            if let (Some(k), Some(v)) = (decode(&k), decode(&v)) {
                out.push((k, v));
            }
        }
    }
    Ok(out)
}

/// Every entry of a per-CPU hash map, with its value on each CPU (index =
/// CPU number).
pub fn percpu_entries<K: Plain + Default, V: Plain + Default>(
    map: &impl MapCore,
) -> Result<Vec<(K, Vec<V>)>, libbpf_rs::Error> {
    let mut out = Vec::new();
    for k in map.keys() {
        if let Some(per_cpu) = map.lookup_percpu(&k, MapFlags::ANY)? {
            if let Some(k) = decode(&k) {
                out.push((k, per_cpu.iter().map(|v| plain(v)).collect()));
            }
        }
    }
    Ok(out)
}

/// Entry 0 of a per-CPU array, one value per CPU (index = CPU number).
pub fn percpu_values<T: Plain + Default>(map: &impl MapCore) -> Result<Vec<T>, libbpf_rs::Error> {
    let per_cpu = map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?.unwrap_or_default();
    Ok(per_cpu.iter().map(|v| plain(v)).collect())
}

/// Entry 0 of a per-CPU array of counters, summed over CPUs. Every tool
/// keeps its statistics so, as a struct of u64 counters only; that is what
/// `T` must be (a struct with narrower fields would be added wrongly).
pub fn sum_counters<T: Plain + Default>(map: &impl MapCore) -> anyhow::Result<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::{MapHandle, MapType};

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    #[repr(C)]
    struct Pair {
        a: u32,
        b: u64,
    }

    #[derive(Clone, Copy, Default, Debug, PartialEq)]
    #[repr(C)]
    struct Counters {
        hits: u64,
        lost: u64,
    }

    plain_data!(Pair, Counters);

    #[test]
    fn plain_values_and_short_bytes() {
        let mut bytes = vec![0u8; std::mem::size_of::<Pair>()];
        bytes[..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[8..16].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(plain::<Pair>(&bytes), Pair { a: 7, b: 9 });
        // Unaligned bytes decode too: records sit anywhere in a buffer.
        let mut shifted = vec![0u8];
        shifted.extend(&bytes);
        assert_eq!(decode::<Pair>(&shifted[1..]), Some(Pair { a: 7, b: 9 }));
        assert_eq!(plain::<Pair>(&bytes[..3]), Pair::default());
        assert_eq!(decode::<Pair>(&bytes[..3]), None);
    }

    fn map(kind: MapType, key: u32, value: u32, entries: u32) -> MapHandle {
        kdiag_testkit::needs_root("creates BPF maps");
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        MapHandle::create(kind, Some("kd_test_map"), key, value, entries, &opts).unwrap()
    }

    /// A real per-CPU array in this kernel, each CPU with its own counts.
    #[test]
    fn counters_are_summed_over_cpus() {
        let map = map(MapType::PercpuArray, 4, 16, 1);
        let cpus = libbpf_rs::num_possible_cpus().unwrap();
        let values: Vec<Vec<u8>> =
            (0..cpus as u64).map(|c| [c + 1, 10 * (c + 1)].iter().flat_map(|v| v.to_ne_bytes()).collect()).collect();
        map.update_percpu(&0u32.to_ne_bytes(), &values, MapFlags::ANY).unwrap();
        let n = cpus as u64;
        let want = Counters { hits: n * (n + 1) / 2, lost: 10 * n * (n + 1) / 2 };
        assert_eq!(sum_counters::<Counters>(&map).unwrap(), want);
        let per_cpu = percpu_values::<Counters>(&map).unwrap();
        assert_eq!(per_cpu.len(), cpus);
        assert_eq!(per_cpu[0], Counters { hits: 1, lost: 10 });
    }

    #[test]
    fn hash_entries_decode() {
        let map = map(MapType::Hash, 4, 16, 8);
        for i in 1..=3u32 {
            let v = Pair { a: i, b: 10 * i as u64 };
            let mut bytes = vec![0u8; 16];
            bytes[..4].copy_from_slice(&v.a.to_ne_bytes());
            bytes[8..].copy_from_slice(&v.b.to_ne_bytes());
            map.update(&i.to_ne_bytes(), &bytes, MapFlags::ANY).unwrap();
        }
        let mut got = entries::<u32, Pair>(&map).unwrap();
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got, [(1, Pair { a: 1, b: 10 }), (2, Pair { a: 2, b: 20 }), (3, Pair { a: 3, b: 30 })]);
    }
}

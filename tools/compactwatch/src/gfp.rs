//! GFP masks: names for the bits of the kernel in question, and what the
//! bits mean for compaction. Bit positions moved in 4.4 (`__GFP_WAIT` split
//! into direct and kswapd reclaim) and again later, so the table comes from
//! the running kernel's format file, then from BTF `___GFP_*_BIT`, and only
//! for kernels too old for either (a saved 3.10 report) from a built-in
//! table.

use serde::Serialize;
use std::fmt;

/// Where a name table came from, shown in the banner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    FormatFile,
    Btf,
    Builtin310,
    /// Names printed in the report itself (`mode:0x...(GFP_NOFS|__GFP_COMP)`).
    Report,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::FormatFile => "tracepoint format file",
            Source::Btf => "kernel BTF",
            Source::Builtin310 => "built-in 3.10 table",
            Source::Report => "names printed in the report",
        })
    }
}

#[derive(Clone, Debug)]
pub struct GfpTable {
    /// In `__print_flags` order: composite names (GFP_KERNEL) before bits.
    pub entries: Vec<(u64, String)>,
    pub source: Source,
}

/// include/linux/gfp.h of 3.10 (CentOS 7): one bit per flag, `__GFP_WAIT`
/// still meaning "may sleep and reclaim".
const GFP_310: &[(u64, &str)] = &[
    (0x01, "__GFP_DMA"),
    (0x02, "__GFP_HIGHMEM"),
    (0x04, "__GFP_DMA32"),
    (0x08, "__GFP_MOVABLE"),
    (0x10, "__GFP_WAIT"),
    (0x20, "__GFP_HIGH"),
    (0x40, "__GFP_IO"),
    (0x80, "__GFP_FS"),
    (0x100, "__GFP_COLD"),
    (0x200, "__GFP_NOWARN"),
    (0x400, "__GFP_REPEAT"),
    (0x800, "__GFP_NOFAIL"),
    (0x1000, "__GFP_NORETRY"),
    (0x2000, "__GFP_MEMALLOC"),
    (0x4000, "__GFP_COMP"),
    (0x8000, "__GFP_ZERO"),
    (0x10000, "__GFP_NOMEMALLOC"),
    (0x20000, "__GFP_HARDWALL"),
    (0x40000, "__GFP_THISNODE"),
    (0x80000, "__GFP_RECLAIMABLE"),
    (0x100000, "__GFP_KMEMCG"),
    (0x200000, "__GFP_NOTRACK"),
    (0x400000, "__GFP_NO_KSWAPD"),
    (0x800000, "__GFP_OTHER_NODE"),
    (0x1000000, "__GFP_WRITE"),
];

/// 3.10's composite masks, most specific first, as its show_gfp_flags did.
const GFP_310_COMPOSITE: &[(u64, &str)] = &[
    (0x10 | 0x40 | 0x80 | 0x20000 | 0x02 | 0x08 | 0x4000 | 0x10000 | 0x1000 | 0x200 | 0x400000, "GFP_TRANSHUGE"),
    (0x10 | 0x40 | 0x80 | 0x20000 | 0x02 | 0x08, "GFP_HIGHUSER_MOVABLE"),
    (0x10 | 0x40 | 0x80 | 0x20000 | 0x02, "GFP_HIGHUSER"),
    (0x10 | 0x40 | 0x80 | 0x20000, "GFP_USER"),
    (0x10 | 0x40 | 0x80, "GFP_KERNEL"),
    (0x10 | 0x40, "GFP_NOFS"),
    (0x20, "GFP_ATOMIC"),
    (0x10, "GFP_NOIO"),
];

impl GfpTable {
    pub fn builtin_310() -> GfpTable {
        let entries = GFP_310_COMPOSITE.iter().chain(GFP_310).map(|&(v, n)| (v, n.to_string())).collect();
        GfpTable { entries, source: Source::Builtin310 }
    }

    pub fn from_entries(entries: Vec<(u64, String)>, source: Source) -> GfpTable {
        GfpTable { entries, source }
    }

    /// From BTF: the `___GFP_<NAME>_BIT` enumerators (5.x+ kernels define
    /// the bits as an enum, which lands in BTF).
    pub fn from_btf_enum(members: &[(String, i64)]) -> Option<GfpTable> {
        let entries: Vec<(u64, String)> = members
            .iter()
            .filter_map(|(n, v)| {
                let flag = n.strip_prefix("___GFP_")?.strip_suffix("_BIT")?;
                (flag != "LAST" && (0..64).contains(v)).then(|| (1u64 << v, format!("__GFP_{flag}")))
            })
            .collect();
        (entries.len() > 8).then_some(GfpTable { entries, source: Source::Btf })
    }

    /// The mask of a single-bit (or composite) name, if this kernel has it.
    pub fn mask(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|(_, n)| n == name).map(|(v, _)| *v)
    }

    pub fn has(&self, gfp: u64, name: &str) -> bool {
        self.mask(name).is_some_and(|m| m != 0 && gfp & m == m)
    }

    /// `GFP_NOFS|__GFP_COMP`, the way `__print_flags` prints it: each entry
    /// whose bits are all set is printed and its bits removed.
    pub fn decode(&self, gfp: u64) -> String {
        let mut left = gfp;
        let mut parts = Vec::new();
        for (mask, name) in &self.entries {
            if *mask != 0 && left & mask == *mask {
                parts.push(name.clone());
                left &= !mask;
            }
        }
        if left != 0 {
            parts.push(format!("{left:#x}"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("|")
        }
    }

    /// Single-bit flag names set in `gfp` (composites expanded).
    pub fn bits(&self, gfp: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(m, n)| m.count_ones() == 1 && n.starts_with("__") && gfp & m != 0)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn meaning(&self, gfp: u64) -> Meaning {
        Meaning {
            can_reclaim: self.has(gfp, "__GFP_DIRECT_RECLAIM") || self.has(gfp, "__GFP_WAIT"),
            io: self.has(gfp, "__GFP_IO"),
            fs: self.has(gfp, "__GFP_FS"),
            high: self.has(gfp, "__GFP_HIGH"),
            noretry: self.has(gfp, "__GFP_NORETRY"),
            nofail: self.has(gfp, "__GFP_NOFAIL"),
            dma: self.has(gfp, "__GFP_DMA"),
            dma32: self.has(gfp, "__GFP_DMA32"),
            highmem: self.has(gfp, "__GFP_HIGHMEM"),
            movable: self.has(gfp, "__GFP_MOVABLE"),
        }
    }
}

/// What a GFP mask allows, independent of bit positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Meaning {
    pub can_reclaim: bool,
    pub io: bool,
    pub fs: bool,
    pub high: bool,
    pub noretry: bool,
    pub nofail: bool,
    pub dma: bool,
    pub dma32: bool,
    pub highmem: bool,
    pub movable: bool,
}

/// A kernel release, as far as compaction rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// `3.10.0-514.el7.x86_64`, `6.18.44-fc`: the first two numbers.
    pub fn parse(s: &str) -> Option<KernelVersion> {
        let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        (2..=9).contains(&major).then_some(KernelVersion(major, minor))
    }

    pub fn running() -> Option<KernelVersion> {
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: u is a valid utsname to fill.
        if unsafe { libc::uname(&mut u) } != 0 {
            return None;
        }
        // SAFETY: release is NUL-terminated by the kernel.
        let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        KernelVersion::parse(&rel.to_string_lossy())
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Why direct compaction cannot run for this mask on this kernel, in words;
/// None when the mask allows it. The rule moved: up to 4.9
/// try_to_compact_pages() returned COMPACT_SKIPPED unless both __GFP_FS and
/// __GFP_IO were set; from 4.10 only __GFP_IO is needed; 6.8 moved the same
/// check into the allocator slow path (gfp_compaction_allowed()). None of
/// these emits mm_compaction_try_to_compact_pages, which is how the live
/// path sees "not attempted".
pub fn compaction_forbidden(m: &Meaning, order: u32, kernel: KernelVersion) -> Option<String> {
    if order == 0 {
        return Some("order-0 allocations are never compacted for".into());
    }
    if !m.can_reclaim {
        return Some(
            "the mask does not allow direct reclaim (atomic or NOWAIT allocation): \
                     no reclaim and no compaction are tried"
                .into(),
        );
    }
    let old = kernel < KernelVersion(4, 10);
    match (m.io, m.fs) {
        (false, _) => Some(format!(
            "the mask lacks __GFP_IO (GFP_NOIO): kernel {kernel} never compacts for such allocations{}",
            if kernel >= KernelVersion(6, 8) { " (gfp_compaction_allowed() in the slow path)" } else { "" }
        )),
        (true, false) if old => Some(format!(
            "the mask lacks __GFP_FS (GFP_NOFS): before 4.10, try_to_compact_pages() returns \
             COMPACT_SKIPPED unless both __GFP_FS and __GFP_IO are set (kernel {kernel})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's mode on 3.10: WAIT|IO|COMP|KMEMCG, i.e. GFP_NOFS plus the
    /// compound-page and kmemcg bits (the article's reader comment confirms
    /// __GFP_COMP, not __GFP_REPEAT).
    #[test]
    fn seed_mode_on_310() {
        let t = GfpTable::builtin_310();
        assert_eq!(t.decode(0x104050), "GFP_NOFS|__GFP_COMP|__GFP_KMEMCG");
        assert_eq!(t.bits(0x104050), vec!["__GFP_WAIT", "__GFP_IO", "__GFP_COMP", "__GFP_KMEMCG"]);
        let m = t.meaning(0x104050);
        assert!(m.can_reclaim && m.io && !m.fs);
        let why = compaction_forbidden(&m, 5, KernelVersion(3, 10)).unwrap();
        assert!(why.contains("lacks __GFP_FS") && why.contains("before 4.10"), "{why}");
        // The same mask on a newer kernel may compact.
        assert_eq!(compaction_forbidden(&m, 5, KernelVersion(4, 19)), None);
        assert_eq!(t.decode(0x10 | 0x40 | 0x80), "GFP_KERNEL");
        assert_eq!(t.decode(0x8000_0000), "0x80000000");
    }

    /// 6.x bit numbers, as this host's format file and BTF define them.
    fn table_6x() -> GfpTable {
        let bits: &[(&str, i64)] = &[
            ("___GFP_DMA_BIT", 0),
            ("___GFP_HIGHMEM_BIT", 1),
            ("___GFP_DMA32_BIT", 2),
            ("___GFP_MOVABLE_BIT", 3),
            ("___GFP_RECLAIMABLE_BIT", 4),
            ("___GFP_HIGH_BIT", 5),
            ("___GFP_IO_BIT", 6),
            ("___GFP_FS_BIT", 7),
            ("___GFP_ZERO_BIT", 8),
            ("___GFP_DIRECT_RECLAIM_BIT", 10),
            ("___GFP_KSWAPD_RECLAIM_BIT", 11),
            ("___GFP_NOWARN_BIT", 13),
            ("___GFP_NORETRY_BIT", 16),
            ("___GFP_COMP_BIT", 18),
            ("___GFP_LAST_BIT", 25),
        ];
        let v: Vec<(String, i64)> = bits.iter().map(|(n, b)| (n.to_string(), *b)).collect();
        GfpTable::from_btf_enum(&v).unwrap()
    }

    #[test]
    fn masks_on_6x() {
        let t = table_6x();
        assert_eq!(t.source, Source::Btf);
        let nofs = 0x400 | 0x800 | 0x40;
        let noio = 0x400 | 0x800;
        assert_eq!(t.decode(nofs | 0x40000), "__GFP_IO|__GFP_DIRECT_RECLAIM|__GFP_KSWAPD_RECLAIM|__GFP_COMP");
        let v = KernelVersion(6, 18);
        assert_eq!(compaction_forbidden(&t.meaning(nofs), 5, v), None);
        let why = compaction_forbidden(&t.meaning(noio | 0x10000), 5, v).unwrap();
        assert!(why.contains("lacks __GFP_IO") && why.contains("gfp_compaction_allowed"), "{why}");
        assert!(t.meaning(noio | 0x10000).noretry);
        let atomic = 0x20 | 0x800;
        assert!(compaction_forbidden(&t.meaning(atomic), 5, v).unwrap().contains("atomic"));
        // 0x10 is __GFP_WAIT on 3.10 but __GFP_RECLAIMABLE here.
        assert!(!t.meaning(0x10).can_reclaim);
    }

    #[test]
    fn versions() {
        assert_eq!(KernelVersion::parse("3.10.0-514.el7.x86_64"), Some(KernelVersion(3, 10)));
        assert_eq!(KernelVersion::parse("6.18.44-fc-v669"), Some(KernelVersion(6, 18)));
        assert_eq!(KernelVersion::parse("#1 SMP"), None);
        assert!(KernelVersion(4, 9) < KernelVersion(4, 10));
        assert!(KernelVersion::running().unwrap() >= KernelVersion(5, 0));
    }
}

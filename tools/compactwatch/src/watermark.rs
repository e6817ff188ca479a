//! `__zone_watermark_ok()` as the kernel computes it, in its two shapes,
//! with every step kept so the report can name the one that fails; and the
//! fragmentation and unusable-free indices of /sys/kernel/debug/extfrag.

use crate::zoneinfo::Zone;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// 3.x to 4.3: every lower order's free pages are taken away in turn
    /// and the remainder must stay above a halving minimum.
    Pre44,
    /// 4.4 and later: an order-0 check, then any free block of the order.
    Modern,
}

impl Algo {
    pub fn for_kernel(v: crate::gfp::KernelVersion) -> Algo {
        if v < crate::gfp::KernelVersion(4, 4) {
            Algo::Pre44
        } else {
            Algo::Modern
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Pre44 => "pre-4.4",
            Algo::Modern => "modern",
        }
    }
}

/// How hard the allocation may dig into reserves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    /// __GFP_HIGH: min is halved (ALLOC_HIGH / ALLOC_MIN_RESERVE).
    pub high: bool,
    /// Atomic or realtime: a further quarter off (ALLOC_HARDER / ALLOC_NON_BLOCK).
    pub harder: bool,
    /// The allocation may use CMA pageblocks (movable allocations).
    pub cma: bool,
}

/// One step of the check, in the kernel's order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// free - (2^order - 1) [- cma] [- highatomic] must exceed min + reserve.
    Order0 { avail: i64, min: i64, reserve: i64, ok: bool },
    /// Pre-4.4: after removing free blocks of order `o`, what is left must
    /// exceed `min` (the mark halved o+1 times).
    Lower { o: usize, removed: i64, left: i64, min: i64, ok: bool },
    /// Modern: a free block of order >= the request exists.
    Block { order: usize, found_at: Option<usize>, ok: bool },
    /// A saved report hid the counts this step needs.
    Unknown { o: usize, why: String },
}

impl Step {
    pub fn ok(&self) -> Option<bool> {
        match self {
            Step::Order0 { ok, .. } | Step::Lower { ok, .. } | Step::Block { ok, .. } => Some(*ok),
            Step::Unknown { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Step::Order0 { avail, min, reserve, ok } => format!(
                "order-0 step: {avail} usable free pages {} min {min} + lowmem reserve {reserve} = {}",
                if *ok { ">" } else { "<=" },
                min + reserve
            ),
            Step::Lower { o, removed, left, min, ok } => format!(
                "step o={o}: after taking away {removed} pages in order-{o} blocks, {left} pages left {} min>>{} = {min}",
                if *ok { ">" } else { "<=" },
                o + 1
            ),
            Step::Block { order, found_at: Some(at), .. } => {
                format!("free-block step: an order-{at} block can serve order {order}")
            }
            Step::Block { order, found_at: None, .. } => {
                format!("free-block step: no free block of order >= {order} in an allowed migratetype")
            }
            Step::Unknown { o, why } => format!("step o={o}: cannot tell ({why})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub algo: Algo,
    pub order: usize,
    pub mark: i64,
    /// Some(true/false), or None when the data ran out before a verdict.
    pub ok: Option<bool>,
    pub steps: Vec<Step>,
}

impl Check {
    /// The step that decided a failure.
    pub fn failing_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.ok() == Some(false))
    }
}

fn reduce_min(mark: i64, f: Flags, algo: Algo) -> i64 {
    let mut min = mark;
    if f.high {
        min -= min / 2;
    }
    // Modern kernels grant the extra quarter only together with ALLOC_MIN_RESERVE.
    if f.harder && (algo == Algo::Pre44 || f.high) {
        min -= min / 4;
    }
    min
}

/// `__zone_watermark_ok(z, order, mark, highest_zoneidx, flags, free)`.
pub fn check(z: &Zone, order: usize, mark: i64, highest_zoneidx: usize, f: Flags, algo: Algo) -> Check {
    let reserve = z.protection.get(highest_zoneidx).copied().unwrap_or(0);
    let min = reduce_min(mark, f, algo);
    let cma = if f.cma { 0 } else { z.free_cma };
    let mut steps = Vec::new();
    let mut free = z.free - ((1i64 << order) - 1);
    let done = |steps: Vec<Step>, ok: Option<bool>| Check { algo, order, mark, ok, steps };
    match algo {
        Algo::Pre44 => {
            let ok0 = free - cma > min + reserve;
            steps.push(Step::Order0 { avail: free - cma, min, reserve, ok: ok0 });
            if !ok0 {
                return done(steps, Some(false));
            }
            let mut m = min;
            for o in 0..order {
                let Some(Some(n)) = z.nr_free.get(o).copied() else {
                    steps.push(Step::Unknown { o, why: format!("order-{o} free count not shown") });
                    return done(steps, None);
                };
                let removed = (n as i64) << o;
                free -= removed;
                m >>= 1;
                let ok = free > m;
                steps.push(Step::Lower { o, removed, left: free, min: m, ok });
                if !ok {
                    return done(steps, Some(false));
                }
            }
            done(steps, Some(true))
        }
        Algo::Modern => {
            let harder = f.high || f.harder;
            let avail = free - cma - if harder { 0 } else { z.highatomic };
            let ok0 = avail > min + reserve;
            steps.push(Step::Order0 { avail, min, reserve, ok: ok0 });
            if !ok0 || order == 0 {
                return done(steps, Some(ok0));
            }
            // Only the migratetypes a normal allocation may take count
            // (highatomic is reserved); pagetypeinfo tells them apart,
            // buddyinfo alone counts every type.
            let counts: Vec<Option<u64>> = match &z.nr_free_pcptypes {
                Some(v) if !harder => v.iter().map(|&n| Some(n)).collect(),
                _ => z.nr_free.clone(),
            };
            let mut unknown = false;
            for (o, n) in counts.iter().enumerate().skip(order) {
                match n {
                    Some(n) if *n > 0 => {
                        steps.push(Step::Block { order, found_at: Some(o), ok: true });
                        return done(steps, Some(true));
                    }
                    None => unknown = true,
                    _ => {}
                }
            }
            if unknown || counts.len() <= order {
                steps.push(Step::Unknown { o: order, why: "free counts at this order and above not shown".into() });
                return done(steps, None);
            }
            steps.push(Step::Block { order, found_at: None, ok: false });
            done(steps, Some(false))
        }
    }
}

/// The sums `fill_contig_page_info()` makes over the buddy counts.
struct Contig {
    free_pages: u64,
    blocks_total: u64,
    blocks_suitable: u64,
}

fn contig(nr_free: &[u64], order: usize) -> Contig {
    let mut c = Contig { free_pages: 0, blocks_total: 0, blocks_suitable: 0 };
    for (o, &n) in nr_free.iter().enumerate() {
        c.blocks_total += n;
        c.free_pages += n << o;
        if o >= order {
            c.blocks_suitable += n << (o - order);
        }
    }
    c
}

/// Fragmentation index x1000, as extfrag_index prints it (x/1000): towards
/// 0 a failure would be for lack of memory, towards 1000 for fragmentation;
/// -1000 when a suitable block exists.
pub fn fragmentation_index(nr_free: &[u64], order: usize) -> i64 {
    let c = contig(nr_free, order);
    let requested = 1u64 << order;
    if c.blocks_total == 0 {
        return 0;
    }
    if c.blocks_suitable > 0 {
        return -1000;
    }
    1000 - ((1000 + c.free_pages * 1000 / requested) / c.blocks_total) as i64
}

/// Unusable free space index x1000: the share of free memory in blocks too
/// small for `order`.
pub fn unusable_index(nr_free: &[u64], order: usize) -> i64 {
    let c = contig(nr_free, order);
    if c.free_pages == 0 {
        return 1000;
    }
    ((c.free_pages - (c.blocks_suitable << order)) * 1000 / c.free_pages) as i64
}

/// `-1.000`, `0.333`: the debugfs rendering of an index.
pub fn fmt_index(v: i64) -> String {
    format!("{}{}.{:03}", if v < 0 { "-" } else { "" }, v.abs() / 1000, v.abs() % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(free: i64, min: i64, nr_free: &[u64]) -> Zone {
        Zone {
            name: "Normal".into(),
            free,
            min,
            protection: vec![0, 0, 0, 0],
            nr_free: nr_free.iter().map(|&n| Some(n)).collect(),
            ..Zone::default()
        }
    }

    /// The kernel's own example: free lists of small blocks only.
    #[test]
    fn pre44_fails_at_the_named_step() {
        // 1000 pages free, all order 0 and 1; min 100.
        let z = zone(1000, 100, &[600, 200, 0, 0, 0]);
        let c = check(&z, 2, 100, 2, Flags::default(), Algo::Pre44);
        assert_eq!(c.ok, Some(false));
        // f = 1000 - 3 = 997 > 100; o=0: 997-600 = 397 > 50; o=1: 397-400 = -3 <= 25.
        assert_eq!(c.failing_step(), Some(&Step::Lower { o: 1, removed: 400, left: -3, min: 25, ok: false }));
        // The modern check only asks for a block of order >= 2: none.
        let m = check(&z, 2, 100, 2, Flags::default(), Algo::Modern);
        assert_eq!(m.failing_step(), Some(&Step::Block { order: 2, found_at: None, ok: false }));
    }

    #[test]
    fn modern_passes_with_one_big_block_that_pre44_rejects() {
        // 960 order-0 pages and one order-5 block: the seed in miniature.
        let z = zone(1000, 100, &[960, 0, 0, 0, 0, 1]);
        assert_eq!(check(&z, 5, 100, 2, Flags::default(), Algo::Modern).ok, Some(true));
        assert_eq!(check(&z, 5, 100, 2, Flags::default(), Algo::Pre44).ok, Some(false));
    }

    #[test]
    fn reserve_and_high_flag() {
        let mut z = zone(1000, 600, &[1000]);
        z.protection = vec![0, 500, 500];
        let c = check(&z, 0, 600, 2, Flags::default(), Algo::Modern);
        assert!(matches!(c.failing_step(), Some(Step::Order0 { reserve: 500, .. })), "{c:?}");
        z.protection = vec![0; 3];
        assert_eq!(check(&z, 0, 1200, 2, Flags::default(), Algo::Modern).ok, Some(false));
        // __GFP_HIGH halves the mark: 1000 > 600.
        assert_eq!(check(&z, 0, 1200, 2, Flags { high: true, ..Flags::default() }, Algo::Modern).ok, Some(true));
    }

    #[test]
    fn unknown_counts_give_no_verdict() {
        let mut z = zone(100000, 100, &[10, 10]);
        z.nr_free.push(None);
        let c = check(&z, 5, 100, 2, Flags::default(), Algo::Pre44);
        assert_eq!(c.ok, None);
        assert!(matches!(c.steps.last(), Some(Step::Unknown { o: 2, .. })));
    }

    #[test]
    fn indices_match_the_kernel_formulas() {
        // This host's DMA zone: one block each of order 8 and 9, three of 10.
        let dma = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3];
        assert_eq!(fmt_index(unusable_index(&dma, 9)), "0.066");
        assert_eq!(fmt_index(unusable_index(&dma, 10)), "0.200");
        assert_eq!(fmt_index(fragmentation_index(&dma, 9)), "-1.000");
        assert_eq!(fmt_index(unusable_index(&[0; 11], 3)), "1.000");
        // Only order-0 pages: a failure at order 3 is fragmentation.
        assert_eq!(fragmentation_index(&[1000], 3), 1000 - (1000 + 125000) / 1000);
        assert_eq!(fmt_index(fragmentation_index(&[1000], 3)), "0.874");
    }

    #[test]
    fn indices_match_debugfs_on_this_host() {
        kdiag_testkit::needs_root("reads debugfs, or mounts it");
        crate::debugfs::with_mounted(compare_with_debugfs)
    }

    fn compare_with_debugfs() {
        let mut last = String::new();
        for _ in 0..20 {
            let buddy = std::fs::read_to_string("/proc/buddyinfo").unwrap();
            let u = crate::debugfs::read_index("unusable_index").expect("unusable_index");
            let x = crate::debugfs::read_index("extfrag_index").expect("extfrag_index");
            let buddy2 = std::fs::read_to_string("/proc/buddyinfo").unwrap();
            if buddy != buddy2 {
                continue;
            }
            let mut zones = crate::zoneinfo::parse_zoneinfo(&std::fs::read_to_string("/proc/zoneinfo").unwrap());
            crate::zoneinfo::apply_buddyinfo(&mut zones, &buddy);
            assert!(!u.is_empty() && u.len() == x.len());
            let mut mismatch = None;
            for ((node, zname, uv), (_, _, xv)) in u.iter().zip(&x) {
                let label = format!("Node {node} {zname}");
                let z = zones.iter().find(|z| z.node == *node && z.name == *zname).unwrap();
                let counts: Vec<u64> = z.nr_free.iter().map(|n| n.unwrap()).collect();
                for o in 0..uv.len() {
                    let (mu, mx) = (fmt_index(unusable_index(&counts, o)), fmt_index(fragmentation_index(&counts, o)));
                    if mu != uv[o] || mx != xv[o] {
                        mismatch = Some(format!("{label} order {o}: ours {mu}/{mx}, kernel {}/{}", uv[o], xv[o]));
                    }
                }
            }
            match mismatch {
                None => return,
                Some(m) => last = m,
            }
        }
        panic!("indices never matched debugfs: {last}");
    }
}

//! The state of each node/zone, from /proc: zoneinfo (free pages,
//! watermarks, lowmem protection, CMA, the zone's pfn range), buddyinfo
//! (free blocks per order) and pagetypeinfo (the same per migratetype, and
//! the highatomic reserve). Everything the watermark check reads.

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Zone {
    pub node: u32,
    pub name: String,
    /// Index of the zone within its node (DMA=0, DMA32=1, Normal=2 on x86-64).
    pub idx: usize,
    /// Pages; None when a saved report did not show it.
    pub free: i64,
    pub min: i64,
    pub low: i64,
    pub high: i64,
    /// lowmem_reserve[] (zoneinfo's "protection"), indexed by highest zone.
    pub protection: Vec<i64>,
    pub free_cma: i64,
    /// Pages held back for high-order atomic allocations.
    pub highatomic: i64,
    pub managed: i64,
    pub start_pfn: u64,
    pub spanned: u64,
    /// Free blocks per order; None for orders a truncated report hid.
    pub nr_free: Vec<Option<u64>>,
    /// Free blocks per order of the migratetypes a normal allocation may
    /// take (Unmovable, Movable, Reclaimable), when pagetypeinfo was read.
    pub nr_free_pcptypes: Option<Vec<u64>>,
}

impl Zone {
    pub fn label(&self) -> String {
        format!("Node {} {}", self.node, self.name)
    }

    /// The highest order with a free block, if any is known.
    pub fn largest_free_order(&self) -> Option<usize> {
        self.nr_free.iter().rposition(|n| n.is_some_and(|n| n > 0))
    }

    pub fn contains_pfn(&self, pfn: u64) -> bool {
        pfn >= self.start_pfn && pfn < self.start_pfn + self.spanned
    }
}

fn num(s: Option<&str>) -> i64 {
    s.and_then(|v| v.trim().trim_end_matches(',').parse().ok()).unwrap_or(0)
}

/// "Node 0, zone   Normal" -> (0, "Normal")
fn node_zone(l: &str) -> Option<(u32, String)> {
    let rest = l.strip_prefix("Node")?;
    let (n, z) = rest.split_once(',')?;
    let zone = z.trim().strip_prefix("zone")?.trim();
    Some((n.trim().parse().ok()?, zone.split_whitespace().next()?.to_string()))
}

pub fn parse_zoneinfo(text: &str) -> Vec<Zone> {
    let mut zones: Vec<Zone> = Vec::new();
    for line in text.lines() {
        if let Some((node, name)) = node_zone(line) {
            let idx = zones.iter().filter(|z| z.node == node).count();
            zones.push(Zone { node, name, idx, ..Zone::default() });
            continue;
        }
        let Some(z) = zones.last_mut() else { continue };
        let t = line.trim();
        if let Some(p) = t.strip_prefix("protection:") {
            z.protection = p.trim().trim_matches(['(', ')']).split(',').filter_map(|v| v.trim().parse().ok()).collect();
            continue;
        }
        let mut f = t.split_whitespace();
        let key = f.next().unwrap_or("");
        match key {
            "pages" if t.starts_with("pages free") => z.free = num(t.split_whitespace().nth(2)),
            "min" => z.min = num(f.next()),
            "low" => z.low = num(f.next()),
            "high" if !line.contains(':') => z.high = num(f.next()),
            "managed" => z.managed = num(f.next()),
            "spanned" => z.spanned = num(f.next()) as u64,
            "nr_free_cma" => z.free_cma = num(f.next()),
            "start_pfn:" => z.start_pfn = num(f.next()) as u64,
            _ => {}
        }
    }
    zones
}

/// Fill `nr_free` from /proc/buddyinfo.
pub fn apply_buddyinfo(zones: &mut [Zone], text: &str) {
    for line in text.lines() {
        let Some((node, rest)) = line.split_once(", zone") else { continue };
        let Some(node) = node.strip_prefix("Node").and_then(|n| n.trim().parse::<u32>().ok()) else { continue };
        let mut f = rest.split_whitespace();
        let Some(name) = f.next() else { continue };
        if let Some(z) = zones.iter_mut().find(|z| z.node == node && z.name == name) {
            z.nr_free = f.map(|v| v.parse().ok()).collect();
        }
    }
}

/// Per-migratetype free counts and the highatomic reserve from
/// /proc/pagetypeinfo.
pub fn apply_pagetypeinfo(zones: &mut [Zone], text: &str) {
    let mut block_pages = 512i64;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Pages per block:") {
            block_pages = v.trim().parse().unwrap_or(512);
        }
        // "Node    0, zone   Normal, type      Movable   87  65 ..."
        if let Some((head, counts)) = line.split_once(", type") {
            let Some((node, name)) = node_zone(head) else { continue };
            let mut f = counts.split_whitespace();
            let ty = f.next().unwrap_or("");
            let counts: Vec<u64> = f.filter_map(|v| v.parse().ok()).collect();
            let Some(z) = zones.iter_mut().find(|z| z.node == node && z.name == name) else { continue };
            if matches!(ty, "Unmovable" | "Movable" | "Reclaimable") {
                let acc = z.nr_free_pcptypes.get_or_insert_with(|| vec![0; counts.len()]);
                for (a, c) in acc.iter_mut().zip(&counts) {
                    *a += c;
                }
            }
            continue;
        }
        // "Node 0, zone   Normal   57  4250  109  0  0": blocks per type;
        // the HighAtomic column counts reserved pageblocks.
        if let Some((node, name)) = node_zone(line) {
            if line.contains("type") {
                continue;
            }
            let cols: Vec<i64> = line
                .split_once(&name)
                .map(|(_, r)| r.split_whitespace().filter_map(|v| v.parse().ok()).collect())
                .unwrap_or_default();
            if cols.len() >= 4 {
                if let Some(z) = zones.iter_mut().find(|z| z.node == node && z.name == name) {
                    z.highatomic = cols[3] * block_pages;
                }
            }
        }
    }
}

/// The live zones, with empty zones (no managed pages) left out.
pub fn read_live() -> Result<Vec<Zone>, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
    let mut zones = parse_zoneinfo(&read("/proc/zoneinfo")?);
    apply_buddyinfo(&mut zones, &read("/proc/buddyinfo")?);
    if let Ok(t) = read("/proc/pagetypeinfo") {
        apply_pagetypeinfo(&mut zones, &t);
    }
    zones.retain(|z| z.managed > 0);
    Ok(zones)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONEINFO: &str = "Node 0, zone      DMA
  pages free     3840
        boost    0
        min      41
        low      51
        high     61
        spanned  4095
        present  3998
        managed  3840
        protection: (0, 3019, 6091, 6091, 6091)
      nr_free_pages 3840
      nr_free_cma  0
              high:     0
  start_pfn:           1
Node 0, zone   Normal
  pages free     474956
        min      8500
        low      10625
        high     12750
        spanned  5505024
        managed  786432
        protection: (0, 0, 0, 0, 0)
      nr_free_cma  7
              high:     32312
  start_pfn:           1048576
Node 0, zone  Movable
  pages free     0
";

    #[test]
    fn zoneinfo_and_buddyinfo() {
        let mut z = parse_zoneinfo(ZONEINFO);
        assert_eq!(z.len(), 3);
        assert_eq!((z[0].free, z[0].min, z[0].low, z[0].high), (3840, 41, 51, 61));
        assert_eq!(z[0].protection, vec![0, 3019, 6091, 6091, 6091]);
        assert_eq!((z[1].name.as_str(), z[1].idx, z[1].free_cma, z[1].high), ("Normal", 1, 7, 12750));
        assert_eq!(z[1].start_pfn, 1048576);
        assert!(z[1].contains_pfn(1048576 + 5505023) && !z[1].contains_pfn(1048575));
        apply_buddyinfo(
            &mut z,
            "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n",
        );
        assert_eq!(z[0].nr_free.len(), 11);
        assert_eq!(z[0].largest_free_order(), Some(10));
        apply_pagetypeinfo(
            &mut z,
            "Pages per block:  512\n\
             Node    0, zone   Normal, type    Unmovable      1    824\n\
             Node    0, zone   Normal, type      Movable     87     65\n\
             Node    0, zone   Normal, type   HighAtomic      5      5\n\n\
             Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate \n\
             Node 0, zone   Normal           57         4250          109            2            0 \n",
        );
        assert_eq!(z[1].nr_free_pcptypes, Some(vec![88, 889]));
        assert_eq!(z[1].highatomic, 1024);
    }

    #[test]
    fn live_zones_are_consistent() {
        let zones = read_live().unwrap();
        assert!(zones.iter().any(|z| z.name == "Normal"), "{zones:?}");
        for z in &zones {
            assert!(z.min > 0 && z.min <= z.low && z.low <= z.high, "{z:?}");
            assert!(!z.nr_free.is_empty(), "{z:?}");
            // Per migratetype counts where pagetypeinfo is readable (by root).
            assert_eq!(z.nr_free_pcptypes.is_some(), std::fs::File::open("/proc/pagetypeinfo").is_ok(), "{z:?}");
        }
    }
}

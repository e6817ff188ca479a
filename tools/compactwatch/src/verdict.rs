//! The per node/zone verdict for one allocation (order, mask, kernel):
//! both watermark algorithms with the failing step, the indices, the
//! largest free order, and whether compaction could have run at all.

use crate::gfp::{compaction_forbidden, KernelVersion, Meaning};
use crate::watermark::{self, Algo, Check, Flags};
use crate::zoneinfo::Zone;
use serde::Serialize;

/// What was asked of the allocator.
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    pub order: u32,
    pub gfp: Option<u64>,
    pub gfp_text: String,
    /// None when the mask could not be decoded for that kernel.
    pub meaning: Option<Meaning>,
    pub kernel: KernelVersion,
    /// How the kernel version was learned, when not from uname.
    pub kernel_note: Option<String>,
    pub algo: Algo,
}

#[derive(Clone, Debug, Serialize)]
pub struct ZoneVerdict {
    pub zone: String,
    pub node: u32,
    pub name: String,
    pub free: i64,
    pub min: i64,
    pub low: i64,
    pub high: i64,
    pub reserve: i64,
    pub free_cma: i64,
    pub highatomic: i64,
    pub nr_free: Vec<Option<u64>>,
    pub largest_free_order: Option<usize>,
    /// Index x1000 (None when the free counts are incomplete).
    pub fragindex: Option<i64>,
    pub unusable: Option<i64>,
    /// The kernel's own values from debugfs, when it was mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debugfs: Option<(String, String)>,
    /// The check by the algorithm in force, at the min watermark (the
    /// allocator slow path), and by the other algorithm for comparison.
    pub check: Check,
    pub other: Check,
    /// The fast path's check at the low watermark.
    pub low_ok: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub request: Request,
    /// Why compaction could not run for this mask, if it could not.
    pub compaction_forbidden: Option<String>,
    pub zones: Vec<ZoneVerdict>,
}

/// The highest zone index the mask may use.
pub fn highest_zoneidx(m: Option<&Meaning>, zones: &[Zone]) -> usize {
    let idx_of = |name: &str, dflt: usize| zones.iter().find(|z| z.name == name).map(|z| z.idx).unwrap_or(dflt);
    match m {
        Some(m) if m.dma => idx_of("DMA", 0),
        Some(m) if m.dma32 => idx_of("DMA32", 1),
        Some(m) if m.movable && m.highmem && zones.iter().any(|z| z.name == "Movable" && z.managed > 0) => {
            idx_of("Movable", 3)
        }
        _ => idx_of("Normal", 2),
    }
}

pub fn judge(req: Request, zones: &[Zone], debugfs: bool) -> Verdict {
    let hz = highest_zoneidx(req.meaning.as_ref(), zones);
    let flags = req.meaning.map(|m| Flags { high: m.high, harder: !m.can_reclaim, cma: m.movable }).unwrap_or_default();
    let other_algo = if req.algo == Algo::Pre44 { Algo::Modern } else { Algo::Pre44 };
    let (dbg_u, dbg_x) = if debugfs {
        (crate::debugfs::read_index("unusable_index"), crate::debugfs::read_index("extfrag_index"))
    } else {
        (None, None)
    };
    let order = req.order as usize;
    let zones = zones
        .iter()
        .filter(|z| z.idx <= hz)
        .map(|z| {
            let complete: Option<Vec<u64>> = z.nr_free.iter().copied().collect();
            let kernel_idx = |t: &Option<Vec<(u32, String, Vec<String>)>>| {
                t.as_ref()?.iter().find(|(n, zn, _)| *n == z.node && *zn == z.name)?.2.get(order).cloned()
            };
            ZoneVerdict {
                zone: z.label(),
                node: z.node,
                name: z.name.clone(),
                free: z.free,
                min: z.min,
                low: z.low,
                high: z.high,
                reserve: z.protection.get(hz).copied().unwrap_or(0),
                free_cma: z.free_cma,
                highatomic: z.highatomic,
                nr_free: z.nr_free.clone(),
                largest_free_order: z.largest_free_order(),
                fragindex: complete.as_ref().map(|c| watermark::fragmentation_index(c, order)),
                unusable: complete.as_ref().map(|c| watermark::unusable_index(c, order)),
                debugfs: kernel_idx(&dbg_x).zip(kernel_idx(&dbg_u)),
                check: watermark::check(z, order, z.min, hz, flags, req.algo),
                other: watermark::check(z, order, z.min, hz, flags, other_algo),
                low_ok: watermark::check(z, order, z.low, hz, flags, req.algo).ok,
            }
        })
        .collect();
    let compaction_forbidden = req.meaning.and_then(|m| compaction_forbidden(&m, req.order, req.kernel));
    Verdict { request: req, compaction_forbidden, zones }
}

fn yn(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "passes",
        Some(false) => "FAILS",
        None => "cannot tell",
    }
}

impl ZoneVerdict {
    pub fn text(&self, order: u32) -> String {
        let mut s = format!(
            "  {:<14} free {} min {} low {} high {} reserve {}{}{} (pages)\n",
            self.zone,
            self.free,
            self.min,
            self.low,
            self.high,
            self.reserve,
            if self.free_cma > 0 { format!(" cma {}", self.free_cma) } else { String::new() },
            if self.highatomic > 0 { format!(" highatomic {}", self.highatomic) } else { String::new() },
        );
        let blocks: Vec<String> =
            self.nr_free.iter().map(|n| n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())).collect();
        s += &format!("    free blocks by order 0..: {}\n", blocks.join(" "));
        let lfo = self.largest_free_order.map(|o| o.to_string()).unwrap_or_else(|| "none".into());
        let idx = match (self.fragindex, self.unusable) {
            (Some(f), Some(u)) => format!(
                "fragindex({order}) {} unusable({order}) {}{}",
                watermark::fmt_index(f),
                watermark::fmt_index(u),
                match &self.debugfs {
                    Some((x, u2)) => format!(" [debugfs: {x} {u2}]"),
                    None => String::new(),
                }
            ),
            _ => "indices: counts incomplete".into(),
        };
        s += &format!("    largest free order {lfo}; {idx}\n");
        s += &format!(
            "    order-{order} check ({}, at min): {}{}\n",
            self.check.algo.name(),
            yn(self.check.ok),
            match self.check.failing_step() {
                Some(st) => format!(" at {}", st.describe()),
                None => match self.check.steps.last() {
                    Some(st @ watermark::Step::Unknown { .. }) => format!(": {}", st.describe()),
                    _ => String::new(),
                },
            }
        );
        s += &format!(
            "    ({} algorithm would {}{})\n",
            self.other.algo.name(),
            match self.other.ok {
                Some(true) => "pass",
                Some(false) => "fail",
                None => "need counts the data lacks",
            },
            match self.other.failing_step() {
                Some(st) => format!(" at {}", st.describe()),
                None => String::new(),
            }
        );
        s
    }
}

impl Verdict {
    /// Zones whose check fails, and whether any passes.
    pub fn any_ok(&self) -> Option<bool> {
        let oks: Vec<Option<bool>> = self.zones.iter().map(|z| z.check.ok).collect();
        if oks.contains(&Some(true)) {
            Some(true)
        } else if oks.iter().all(|o| *o == Some(false)) {
            Some(false)
        } else {
            None
        }
    }

    pub fn text(&self) -> String {
        let r = &self.request;
        let mut s = format!(
            "verdict for order {} {} on kernel {}{}, {} watermark algorithm:\n",
            r.order,
            r.gfp.map(|g| format!("mode {g:#x} ({})", r.gfp_text)).unwrap_or_else(|| r.gfp_text.clone()),
            r.kernel,
            r.kernel_note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
            r.algo.name()
        );
        for z in &self.zones {
            s += &z.text(r.order);
        }
        let names = |want: Option<bool>| -> String {
            self.zones.iter().filter(|z| z.check.ok == want).map(|z| z.zone.as_str()).collect::<Vec<_>>().join(", ")
        };
        s += &match self.any_ok() {
            Some(true) => format!("  => order-{} watermark check passes in: {}\n", r.order, names(Some(true))),
            Some(false) => format!("  => order-{} watermark check FAILS in every allowed zone\n", r.order),
            None => format!(
                "  => order-{} watermark check cannot be settled from the data (fails in: {})\n",
                r.order,
                names(Some(false))
            ),
        };
        match &self.compaction_forbidden {
            Some(why) => s += &format!("  => compaction not attempted: {why}\n"),
            None if r.meaning.is_some() => s += "  => the mask allows direct compaction on this kernel\n",
            None => s += "  => cannot tell whether compaction was allowed: mask not decodable for this kernel\n",
        }
        s
    }
}

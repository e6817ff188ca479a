//! A saved "page allocation failure" report (dmesg, /var/log/messages,
//! journalctl -k): the failing task, order and mode, the call trace, and
//! the Mem-Info block's per-zone free pages, watermarks, lowmem reserves
//! and free-area counts. Reports from the field are often mangled: syslog
//! prefixes, rsyslog's `#012` for embedded newlines, lines cut at a fixed
//! width. A cut line yields what it shows and marks the rest unknown, so
//! the verdict never rests on a number the report did not contain.

use crate::gfp::KernelVersion;
use crate::zoneinfo::Zone;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub comm: String,
    pub order: u32,
    pub mode: u64,
    /// `GFP_NOFS|__GFP_COMP` when the kernel printed names (4.10+).
    pub mode_names: Option<String>,
    pub kernel: Option<String>,
    pub pid: Option<u32>,
    /// Function names, innermost first, with their module if any.
    pub trace: Vec<String>,
    pub zones: Vec<Zone>,
}

impl Report {
    /// The first frame that is not the allocator or its reporting.
    pub fn caller(&self) -> Option<&str> {
        self.trace.iter().map(String::as_str).find(|f| !is_allocator_frame(f))
    }
}

/// Frames of the page/slab allocator and its failure reporting: the caller
/// an engineer wants is the first frame past these.
pub fn is_allocator_frame(f: &str) -> bool {
    const ALLOCATOR: &[&str] = &[
        "dump_stack",
        "__dump_stack",
        "show_stack",
        "warn_alloc",
        "__alloc_pages",
        "alloc_pages",
        "__get_free_pages",
        "get_free_pages",
        "kmalloc",
        "__kmalloc",
        "krealloc",
        "__krealloc",
        "kmalloc_order",
        "kmalloc_large",
        "___kmalloc_large",
        "__alloc_frozen_pages",
        "alloc_frozen_pages",
        "__folio_alloc",
        "folio_alloc",
        "vma_alloc_folio",
        "alloc_slab_page",
        "allocate_slab",
        "new_slab",
        "___slab_alloc",
        "__slab_alloc",
        "kmem_cache_alloc",
        "__kvmalloc",
        "kvmalloc",
        "dump_header",
        "alloc_anon_folio",
        "__folio_alloc_node",
        "alloc_pages_mpol",
        "folio_alloc_mpol",
        "vma_alloc_anon_folio_pmd",
        "get_page_from_freelist",
        "prep_new_page",
        "post_alloc_hook",
    ];
    ALLOCATOR.iter().any(|a| f.starts_with(a))
}

/// Remove what syslog and the kernel put in front of the message.
fn strip_prefix(line: &str) -> &str {
    let mut l = line;
    if let Some(i) = l.find(" kernel: ") {
        l = &l[i + 9..];
    }
    let t = l.trim_start();
    if t.starts_with('[') {
        // "[12345.678901] ", but not a call-trace "[<ffff...>]".
        if let Some(end) = t.find(']') {
            let inner = &t[1..end];
            if !inner.starts_with('<') && inner.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return t[end + 1..].trim_start();
            }
        }
    }
    t
}

fn kb(v: &str) -> Option<i64> {
    v.strip_suffix("kB")?.parse().ok()
}

fn zone_index(name: &str, seen_before: usize) -> usize {
    match name {
        "DMA" => 0,
        "DMA32" => 1,
        "Normal" => 2,
        "Movable" => 3,
        _ => seen_before,
    }
}

/// "Node 1 Normal free:3315332kB min:205324kB ..." (the zone line).
fn zone_line(l: &str) -> Option<Zone> {
    let rest = l.strip_prefix("Node ")?;
    let mut f = rest.split_whitespace();
    let node = f.next()?.parse().ok()?;
    let name = f.next()?.to_string();
    let mut z = Zone { node, name, ..Zone::default() };
    let mut seen_free = false;
    for tok in f {
        let Some((k, v)) = tok.split_once(':') else { continue };
        let Some(pages) = kb(v).map(|k| k / 4) else { continue };
        match k {
            "free" => {
                z.free = pages;
                seen_free = true;
            }
            "min" => z.min = pages,
            "low" => z.low = pages,
            "high" => z.high = pages,
            "free_cma" => z.free_cma = pages,
            "managed" => z.managed = pages,
            _ => {}
        }
    }
    seen_free.then_some(z)
}

/// "Node 0 DMA32: 36913*4kB (UEM) 14087*8kB (UEM) ... = 261328kB" (free areas).
fn buddy_line(l: &str) -> Option<(u32, String, Vec<Option<u64>>)> {
    let rest = l.strip_prefix("Node ")?;
    let (head, counts) = rest.split_once(": ")?;
    let mut h = head.split_whitespace();
    let node = h.next()?.parse().ok()?;
    let name = h.next()?.to_string();
    let complete = counts.contains(" = ");
    let mut nr = Vec::new();
    for tok in counts.split_whitespace() {
        if tok == "=" {
            break;
        }
        if tok.starts_with('(') {
            continue;
        }
        let Some((n, size)) = tok.split_once('*') else { break };
        let (Ok(n), Some(size_kb)) = (n.parse::<u64>(), kb(size)) else { break };
        let order = (size_kb / 4).max(1).trailing_zeros() as usize;
        if order != nr.len() {
            break;
        }
        nr.push(Some(n));
    }
    if !complete {
        // Orders past the cut are unknown, up to the largest order Linux has.
        while nr.len() < 11 {
            nr.push(None);
        }
    }
    (!nr.is_empty()).then_some((node, name, nr))
}

pub fn parse(text: &str) -> Result<Report, String> {
    let mut r = Report::default();
    let mut found = false;
    let lines: Vec<String> = text.lines().flat_map(|l| l.split("#012")).map(|l| strip_prefix(l).to_string()).collect();
    for l in &lines {
        if let Some(i) = l.find(": page allocation failure: ") {
            if found {
                // Only the first report; a saved log may hold several.
                break;
            }
            found = true;
            r.comm = l[..i].trim().to_string();
            let rest = &l[i + 27..];
            for part in rest.split(", ") {
                if let Some(o) = part.strip_prefix("order:") {
                    r.order = o.trim().parse().map_err(|_| format!("bad order in '{l}'"))?;
                }
                if let Some(m) = part.strip_prefix("mode:") {
                    let m = m.trim();
                    let (hex, names) = match m.split_once('(') {
                        Some((h, n)) => (h, Some(n.trim_end_matches([')', ',']).to_string())),
                        None => (m.split(',').next().unwrap_or(m), None),
                    };
                    r.mode = u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                        .map_err(|_| format!("bad mode in '{l}'"))?;
                    r.mode_names = names;
                }
            }
            continue;
        }
        if !found {
            continue;
        }
        if let Some(rest) = l.strip_prefix("CPU: ") {
            let toks: Vec<&str> = rest.split_whitespace().collect();
            r.pid = toks.iter().position(|t| *t == "PID:").and_then(|i| toks.get(i + 1)?.parse().ok());
            r.kernel = toks
                .iter()
                .find(|t| t.matches('.').count() >= 2 && KernelVersion::parse(t).is_some())
                .map(|t| t.to_string());
            continue;
        }
        if let Some(frame) = trace_frame(l) {
            r.trace.push(frame);
            continue;
        }
        if let Some(v) = l.strip_prefix("lowmem_reserve[]:").or_else(|| l.strip_prefix("lowmem reserve[]:")) {
            if let Some(z) = r.zones.last_mut() {
                z.protection = v.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            }
            continue;
        }
        if let Some(mut z) = zone_line(l) {
            z.idx = zone_index(&z.name, r.zones.iter().filter(|p| p.node == z.node).count());
            r.zones.push(z);
            continue;
        }
        if let Some((node, name, nr)) = buddy_line(l) {
            if let Some(z) = r.zones.iter_mut().find(|z| z.node == node && z.name == name) {
                z.nr_free = nr;
            }
        }
    }
    if !found {
        return Err("no 'page allocation failure' line in the file".into());
    }
    if r.zones.is_empty() {
        return Err("the report has no Mem-Info zone lines (Node N ZONE free:...kB min:...kB)".into());
    }
    Ok(r)
}

/// "[<ffffffff81686b13>] dump_stack+0x19/0x1b" or " dump_stack_lvl+0x5d/0x80"
/// (4.x+ print no address) -> "dump_stack", with " [module]" kept.
fn trace_frame(l: &str) -> Option<String> {
    let t = l.trim_start();
    let t = match t.strip_prefix("[<") {
        Some(r) => r.split_once(">]")?.1.trim_start(),
        None => t.strip_prefix("? ").unwrap_or(t),
    };
    let (sym, rest) = t.split_once('+')?;
    let off = rest.split_whitespace().next()?;
    if !off.starts_with("0x") || !off.contains('/') || sym.contains(' ') || sym.is_empty() {
        return None;
    }
    let module = rest.split_whitespace().nth(1).filter(|m| m.starts_with('['));
    Some(match module {
        Some(m) => format!("{sym} {m}"),
        None => sym.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SEED: &str = include_str!("../tests/fixtures/seed-004-centos7-order5-nofs.txt");

    #[test]
    fn seed_report() {
        let r = parse(SEED).unwrap();
        assert_eq!((r.comm.as_str(), r.order, r.mode), ("kworker/31:0", 5, 0x104050));
        assert_eq!(r.mode_names, None);
        assert_eq!(r.kernel, None, "the seed's CPU line is cut before the version");
        assert_eq!(r.pid, Some(635928));
        assert_eq!(r.trace.len(), 20);
        assert_eq!(r.trace[1], "warn_alloc_failed");
        assert_eq!(r.caller(), Some("osdmap_set_max_osd [libceph]"));
        let labels: Vec<String> = r.zones.iter().map(|z| z.label()).collect();
        assert_eq!(labels, ["Node 0 DMA", "Node 0 DMA32", "Node 0 Normal", "Node 1 Normal"]);
        let n1 = &r.zones[3];
        assert_eq!((n1.free, n1.min, n1.low, n1.high, n1.idx), (828833, 51331, 64163, 76996, 2));
        assert_eq!(n1.protection, vec![0, 0, 0, 0]);
        // Cut after "990*32kB (UE": orders 0-3 known, the rest not.
        assert_eq!(&n1.nr_free[..4], &[Some(241701), Some(240734), Some(24010), Some(990)]);
        assert!(n1.nr_free[4..].iter().all(Option::is_none));
        // The OCR'd "lowmem reserve[]" of the DMA zone still counts.
        assert_eq!(r.zones[0].protection, vec![0, 1700, 64161, 64161]);
        // "... 1*128kB (U) 1*256" : the cut token is not taken as a count.
        assert_eq!(r.zones[0].nr_free[5], Some(1));
        assert_eq!(r.zones[0].nr_free[6], None);
        assert_eq!(&r.zones[2].nr_free[..6], &[Some(69629), Some(411), Some(1), Some(3), Some(0), None]);
    }

    #[test]
    fn syslog_prefixes_and_modern_mode() {
        let text = "Mar  3 03:12:01 db7 kernel: [81234.567890] nfsd: page allocation failure: order:5, \
                    mode:0x40c40(GFP_NOFS|__GFP_COMP), nodemask=(null),cpuset=/,mems_allowed=0\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567899] CPU: 3 PID: 812 Comm: nfsd Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567900]  warn_alloc+0x138/0x160\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567901]  __alloc_pages_slowpath.constprop.0+0xc55/0xcc0\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567902]  nfsd4_encode_readv+0x22/0x100 [nfsd]\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567910] Node 0 Normal free:81200kB boost:0kB min:5000kB low:6200kB high:7400kB\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567911] lowmem_reserve[]: 0 0 0 0\n\
                    Mar  3 03:12:01 db7 kernel: [81234.567912] Node 0 Normal: 20000*4kB (UME) 200*8kB (UM) 0*16kB 0*32kB \
                    0*64kB 0*128kB 0*256kB 0*512kB 0*1024kB 0*2048kB 0*4096kB = 81600kB\n";
        let r = parse(text).unwrap();
        assert_eq!(r.comm, "nfsd");
        assert_eq!(r.mode, 0x40c40);
        assert_eq!(r.mode_names.as_deref(), Some("GFP_NOFS|__GFP_COMP"));
        assert_eq!(r.kernel.as_deref(), Some("6.1.0-18-amd64"));
        assert_eq!(r.caller(), Some("nfsd4_encode_readv [nfsd]"));
        let z = &r.zones[0];
        assert_eq!((z.free, z.min), (20300, 1250));
        assert_eq!(z.nr_free.len(), 11);
        assert_eq!(z.nr_free[1], Some(200));
        assert!(z.nr_free.iter().all(Option::is_some));
    }

    #[test]
    fn unusable_files_are_one_line_errors() {
        assert_eq!(parse("hello\n").unwrap_err(), "no 'page allocation failure' line in the file");
        let e = parse("x: page allocation failure: order:3, mode:0x20\n").unwrap_err();
        assert!(e.contains("no Mem-Info"), "{e}");
        assert!(parse("x: page allocation failure: order:zz, mode:0x20\n").unwrap_err().starts_with("bad order"));
    }
}

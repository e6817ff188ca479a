//! Saved "page allocation failure" reports (dmesg, /var/log/messages,
//! journalctl -k; logline.rs takes off what the log put around them): for
//! each, the failing task, order and mode, the call trace, and the Mem-Info
//! block's per-zone free pages, watermarks, lowmem reserves and free-area
//! counts, as kernels from 3.10 to 6.x print them. Reports from the field
//! are often mangled: lines cut at a fixed width, other messages in
//! between. A cut line yields what it shows and marks the rest unknown, so
//! the verdict never rests on a number the report did not contain.

use crate::gfp::KernelVersion;
use crate::logline;
use crate::zoneinfo::Zone;

/// What is looked for, said when a file has none.
pub const WANTED: &str =
    "a line 'COMM: page allocation failure: order:N, mode:0x...' in dmesg, journalctl or syslog form";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The log's time of the report's first line, as the log wrote it.
    pub stamp: Option<String>,
    pub comm: String,
    pub order: u32,
    pub mode: u64,
    /// `GFP_NOFS|__GFP_COMP` when the kernel printed names (4.10+).
    pub mode_names: Option<String>,
    /// `nodemask=`, `cpuset=` and `mems_allowed=` of the header (4.x+);
    /// None when not printed, `(null)` kept as printed.
    pub nodemask: Option<String>,
    pub cpuset: Option<String>,
    pub mems_allowed: Option<String>,
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

/// "15864kB"; 6.x prints "reserved_highatomic:0KB".
fn kb(v: &str) -> Option<i64> {
    v.strip_suffix("kB").or_else(|| v.strip_suffix("KB"))?.parse().ok()
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
            "reserved_highatomic" => z.highatomic = pages,
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

/// Where the header's fields start: after "COMM: page allocation failure: "
/// (2.6.32 and older RHEL kernels print a '.' for the second ':').
fn header_fields(msg: &str) -> Option<(usize, usize)> {
    const HEADER: &str = ": page allocation failure";
    let i = msg.find(HEADER)?;
    let rest = &msg[i + HEADER.len()..];
    (rest.starts_with(": ") || rest.starts_with(". ")).then_some((i, i + HEADER.len() + 2))
}

/// Every report in `text`, oldest first as logs are written: Err when there
/// is none, else each one parsed or the reason it cannot be used.
pub fn parse_all(text: &str) -> Result<Vec<Result<Report, String>>, String> {
    let lines = logline::lines(text);
    let starts: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| header_fields(&l.msg).is_some()).map(|(i, _)| i).collect();
    if starts.is_empty() {
        return Err(format!("no page allocation failure report found (looked for {WANTED})"));
    }
    let ends = starts.iter().skip(1).copied().chain([lines.len()]);
    Ok(starts.iter().zip(ends).map(|(&a, b)| parse_one(&lines[a..b])).collect())
}

/// The newest usable report; tests and callers that want just one.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Report, String> {
    let mut all = parse_all(text)?;
    let newest = all.iter().rposition(Result::is_ok).unwrap_or(all.len() - 1);
    all.swap_remove(newest)
}

/// "order:5, mode:0x40c40(GFP_NOFS|__GFP_COMP), nodemask=(null),cpuset=/,mems_allowed=0"
fn header(r: &mut Report, l: &str) -> Result<(), String> {
    let (i, fields) = header_fields(l).unwrap_or_default();
    r.comm = l[..i].trim().to_string();
    let rest = &l[fields..];
    let mode = rest.find("mode:").map(|m| &rest[m + 5..]).ok_or_else(|| format!("no mode in '{l}'"))?;
    let hex_len = mode.find(|c: char| !c.is_ascii_hexdigit() && c != 'x').unwrap_or(mode.len());
    r.mode =
        u64::from_str_radix(mode[..hex_len].trim_start_matches("0x"), 16).map_err(|_| format!("bad mode in '{l}'"))?;
    // Names only when the line was not cut inside them.
    r.mode_names = mode[hex_len..]
        .strip_prefix('(')
        .and_then(|n| n.split_once(')'))
        .map(|(n, _)| n.to_string())
        .filter(|n| !n.is_empty() && n != "none");
    // Names are joined by '|': commas separate the fields.
    for part in rest.split(',').map(str::trim) {
        if let Some(o) = part.strip_prefix("order:") {
            r.order = o.parse().map_err(|_| format!("bad order in '{l}'"))?;
        } else if let Some(v) = part.strip_prefix("nodemask=") {
            r.nodemask = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("cpuset=") {
            r.cpuset = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("mems_allowed=") {
            r.mems_allowed = Some(v.to_string());
        }
    }
    Ok(())
}

fn parse_one(lines: &[logline::Line]) -> Result<Report, String> {
    let mut r = Report { stamp: lines[0].stamp.clone(), ..Report::default() };
    header(&mut r, &lines[0].msg)?;
    for l in lines[1..].iter().map(|l| l.msg.as_str()) {
        // "CPU: 3 PID: 812 Comm: ..." (3.10+), "Pid: 812, comm: ..." before.
        if let Some(rest) = l.strip_prefix("CPU: ").or_else(|| l.strip_prefix("Pid: ").map(|_| l)) {
            let toks: Vec<&str> = rest.split_whitespace().map(|t| t.trim_end_matches(',')).collect();
            let pid = toks.iter().position(|t| *t == "PID:" || *t == "Pid:");
            r.pid = pid.and_then(|i| toks.get(i + 1)?.parse().ok());
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
    if r.zones.is_empty() {
        return Err("the report has no Mem-Info zone lines (Node N ZONE free:...kB min:...kB)".into());
    }
    Ok(r)
}

/// "[<ffffffff81686b13>] dump_stack+0x19/0x1b" or " dump_stack_lvl+0x5d/0x80"
/// (4.x+ print no address) -> "dump_stack", with " [module]" kept; None
/// for anything else, "? " guesses included.
fn trace_frame(l: &str) -> Option<String> {
    // Before 4.x an interrupt's frames come after "<IRQ>  " or "<EOI>  ".
    let t = l.trim_start();
    let t = t.strip_prefix("<IRQ>").or_else(|| t.strip_prefix("<EOI>")).unwrap_or(t).trim_start();
    let t = match t.strip_prefix("[<") {
        Some(r) => r.split_once(">]")?.1.trim_start(),
        None => t,
    };
    // "? sym": a stale return address the unwinder found on the stack, not
    // a frame; it must not be taken for the caller.
    if t.starts_with("? ") {
        return None;
    }
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
    /// Captured from Debian's 6.12 in the guest tests, as `dmesg -r` prints.
    pub const DEBIAN_612: &str = include_str!("../tests/fixtures/debian-6.12-order5-noio.txt");
    pub const DEBIAN_61: &str = include_str!("../tests/fixtures/debian-6.1-order5-noio.txt");

    /// The seed's lines as each kind of log would have them.
    fn every_form_of(text: &str) -> Vec<(&'static str, String)> {
        let each = |f: &dyn Fn(usize, &str) -> String| text.lines().enumerate().map(|(i, l)| f(i, l) + "\n").collect();
        let ts = |i: usize| format!("[{:>5}.{:06}]", 81234 + i / 1000, i * 7 % 1_000_000);
        let mut forms: Vec<(&str, String)> = vec![
            ("plain", text.to_string()),
            ("dmesg", each(&|i, l| format!("{} {l}", ts(i)))),
            ("dmesg -T", each(&|_, l| format!("[Tue Oct  6 10:11:12 2020] {l}"))),
            ("dmesg -r", each(&|i, l| format!("<4>{} {l}", ts(i)))),
            ("dmesg -x", each(&|i, l| format!("kern  :warn  : {} {l}", ts(i)))),
            ("journalctl -k", each(&|_, l| format!("Oct 06 10:11:12 ceph7 kernel: {l}"))),
            ("journalctl -o short-precise", each(&|i, l| format!("Oct 06 10:11:12.{:06} ceph7 kernel: {l}", i * 13))),
            ("journalctl -o short-iso", each(&|_, l| format!("2020-10-06T10:11:12+0800 ceph7 kernel: {l}"))),
            ("syslog", each(&|i, l| format!("Oct  6 10:11:12 ceph7 kernel: {} {l}", ts(i)))),
            // As the article printed it: a number before every line.
            ("numbered", each(&|i, l| format!("{} {l}", i + 1))),
            ("cat -n", each(&|i, l| format!("{:>6}\t{l}", i + 1))),
        ];
        // rsyslog with one message holding the whole Mem-Info block.
        let (head, mem) = text.split_at(text.find("Mem-Info:").unwrap());
        let joined = mem.lines().collect::<Vec<_>>().join("#012");
        let messages = head.lines().map(|l| format!("Oct  6 10:11:12 ceph7 kernel: {l}\n")).collect::<String>()
            + &format!("Oct  6 10:11:12 ceph7 kernel: {joined}\n");
        forms.push(("rsyslog #012", messages));
        forms
    }

    #[test]
    fn every_log_form_gives_the_same_report() {
        for text in [SEED, DEBIAN_612, DEBIAN_61] {
            let want = Report { stamp: None, ..parse(text).unwrap() };
            // The kernel's own lines, whatever log they were captured from.
            let bare: String = logline::lines(text).into_iter().map(|l| l.msg + "\n").collect();
            for (form, t) in every_form_of(&bare) {
                let got = parse(&t).unwrap_or_else(|e| panic!("{form}: {e}"));
                assert_eq!(Report { stamp: None, ..got }, want, "{form}");
            }
        }
    }

    #[test]
    fn the_stamp_is_the_logs() {
        let forms = every_form_of(SEED);
        let stamp = |form: &str| parse(&forms.iter().find(|(f, _)| *f == form).unwrap().1).unwrap().stamp;
        assert_eq!(stamp("dmesg -T").as_deref(), Some("[Tue Oct  6 10:11:12 2020]"));
        assert_eq!(stamp("journalctl -k").as_deref(), Some("Oct 06 10:11:12"));
        assert_eq!(stamp("dmesg").as_deref(), Some("[81234.000000]"));
        assert_eq!(stamp("plain"), None);
    }

    /// What Debian's 6.12 printed for the test module's order-5 GFP_NOIO
    /// allocation: named mode, nodemask/cpuset/mems_allowed, "UID:" in the
    /// CPU line, frames inside <TASK>, boost: and reserved_highatomic:.
    #[test]
    fn a_real_6_12_report() {
        let r = parse(DEBIAN_612).unwrap();
        assert_eq!((r.comm.as_str(), r.order, r.mode), ("init", 5, 0xc00));
        assert_eq!(r.mode_names.as_deref(), Some("GFP_NOIO"));
        assert_eq!(
            (r.nodemask.as_deref(), r.cpuset.as_deref(), r.mems_allowed.as_deref()),
            (Some("(null)"), Some("/"), Some("0"))
        );
        assert_eq!((r.pid, r.kernel.as_deref()), (Some(1), Some("6.12.118+deb12-amd64")));
        assert_eq!(r.stamp.as_deref(), Some("[37.707503]"));
        assert_eq!(r.caller(), Some("alloc_set [kdiag_test]"));
        // "? " guesses are not frames.
        assert!(!r.trace.iter().any(|f| f.contains("do_sys_openat2") || f.contains("direct_compact")), "{:?}", r.trace);
        assert_eq!(r.trace.first().map(String::as_str), Some("dump_stack_lvl"));
        let labels: Vec<String> = r.zones.iter().map(|z| z.label()).collect();
        assert_eq!(labels, ["Node 0 DMA", "Node 0 DMA32"]);
        let dma32 = &r.zones[1];
        assert_eq!((dma32.free, dma32.min, dma32.low, dma32.high, dma32.managed), (50222, 247, 361, 475, 114449));
        assert_eq!(dma32.protection, vec![0, 0, 0, 0, 0]);
        assert_eq!(&dma32.nr_free[..3], &[Some(248), Some(24987), Some(0)]);
        assert_eq!(dma32.nr_free.len(), 11);
    }

    /// Debian's 6.1: no "UID:" in the CPU line.
    #[test]
    fn a_real_6_1_report() {
        let r = parse(DEBIAN_61).unwrap();
        assert_eq!((r.comm.as_str(), r.order, r.mode_names.as_deref()), ("init", 5, Some("GFP_NOIO")));
        assert_eq!((r.pid, r.kernel.as_deref()), (Some(1), Some("6.1.0-57-amd64")));
        assert_eq!(r.caller(), Some("alloc_set [kdiag_test]"));
        assert_eq!(r.zones[1].label(), "Node 0 DMA32");
        assert_eq!((r.zones[1].free, r.zones[1].protection.len()), (50068, 5));
        assert_eq!(&r.zones[1].nr_free[..2], &[Some(62), Some(25007)]);
    }

    #[test]
    fn several_reports_each_in_file_order() {
        let text = format!("{SEED}some other message\n{DEBIAN_612}");
        let all = parse_all(&text).unwrap();
        let comms: Vec<&str> = all.iter().map(|r| r.as_ref().unwrap().comm.as_str()).collect();
        assert_eq!(comms, ["kworker/31:0", "init"]);
        // The seed's report stops where the next one starts.
        assert_eq!(all[0].as_ref().unwrap().zones.len(), 4);
        // A report cut before its Mem-Info is said to be unusable.
        let cut = format!("x: page allocation failure: order:3, mode:0x20\n{DEBIAN_612}");
        let all = parse_all(&cut).unwrap();
        assert!(all[0].as_ref().unwrap_err().contains("no Mem-Info"));
        assert_eq!(all[1].as_ref().unwrap().comm, "init");
    }

    /// Older kernels: "failure." and a "Pid:" line (2.6.32 to 3.9); frames
    /// after <IRQ>.
    #[test]
    fn old_headers_and_interrupt_frames() {
        let text = "[2313169.749777] tcpdump: page allocation failure. order:9, mode:0x20\n\
                    [2313169.749779] Pid: 7812, comm: tcpdump Tainted: PF       W  O 3.8.0-29-generic #42\n\
                    [2313169.749780] Call Trace:\n\
                    [2313169.749781]  <IRQ>  [<ffffffff8113a6c6>] warn_alloc_failed+0xf6/0x150\n\
                    [2313169.749782]  [<ffffffff811476e9>] ? wakeup_kswapd+0x69/0x160\n\
                    [2313169.749783]  [<ffffffffa0104e3a>] alloc_dma_memory+0x8a/0xe0 [fbcapture]\n\
                    [2313169.749790] Node 0 Normal free:2264kB min:13224kB low:16528kB high:19836kB\n";
        let r = parse(text).unwrap();
        assert_eq!((r.comm.as_str(), r.order, r.mode), ("tcpdump", 9, 0x20));
        assert_eq!((r.pid, r.kernel.as_deref()), (Some(7812), Some("3.8.0-29-generic")));
        assert_eq!(r.trace, ["warn_alloc_failed", "alloc_dma_memory [fbcapture]"]);
    }

    #[test]
    fn highatomic_reserve_and_cut_names() {
        let text = "x: page allocation failure: order:4, mode:0x40dc0(GFP_KERNEL|__GFP_CO\n\
                    Node 0 Normal free:173104kB boost:4096kB min:173116kB low:186432kB high:199748kB reserved_highatomic:2048KB\n";
        let r = parse(text).unwrap();
        assert_eq!(r.mode, 0x40dc0);
        assert_eq!(r.mode_names, None, "a name cut in half is no name");
        assert_eq!(r.zones[0].highatomic, 512);
    }

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
        assert_eq!(
            parse("hello\n").unwrap_err(),
            format!("no page allocation failure report found (looked for {WANTED})")
        );
        let e = parse("x: page allocation failure: order:3, mode:0x20\n").unwrap_err();
        assert!(e.contains("no Mem-Info"), "{e}");
        assert!(parse("x: page allocation failure: order:zz, mode:0x20\n").unwrap_err().starts_with("bad order"));
    }
}

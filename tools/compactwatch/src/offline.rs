//! `--from-dmesg`: the verdict after the fact, from a saved report. The
//! kernel version decides the GFP bit layout, the compaction rule and the
//! watermark algorithm; when the report does not print it (the seed's CPU
//! line is cut), it is inferred from what the report does show, and the
//! inference is printed with its reasons. A log holding several reports
//! gives the newest, or each one newest first with --all.

use crate::advice;
use crate::cli::Cli;
use crate::decode::Decoders;
use crate::dmesg::{self, Report};
use crate::gfp::{GfpTable, KernelVersion, Source};
use crate::verdict::{self, Request, Verdict};
use crate::watermark::Algo;
use kdiag_shared::output::Sink;
use kdiag_shared::precheck;
use serde_json::json;
use std::io::Read;
use std::path::Path;

/// A file that cannot be analysed: the user's input, not the tool, is at
/// fault, so the tool exits 2 as for a bad flag.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

pub struct Analysis {
    pub report: Report,
    pub verdict: Verdict,
    pub gfp_source: Option<Source>,
    /// Which nodes the allocation could use, when the report limits them.
    pub nodes_note: Option<String>,
}

/// `-` is stdin.
fn read(path: &Path) -> Result<(String, String), BadInput> {
    let mut bytes = Vec::new();
    let (name, r) = if path.as_os_str() == "-" {
        ("stdin".to_string(), std::io::stdin().lock().read_to_end(&mut bytes))
    } else {
        (path.display().to_string(), std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)))
    };
    r.map_err(|e| BadInput(format!("cannot read {name}: {e}")))?;
    Ok((name, String::from_utf8_lossy(&bytes).into_owned()))
}

pub fn run(path: &Path, cli: &Cli) -> anyhow::Result<()> {
    let (source, text) = read(path)?;
    let all = dmesg::parse_all(&text).map_err(|e| BadInput(format!("{source}: {e}")))?;
    let n = all.len();
    // Newest first.
    let usable: Vec<(usize, &Report)> =
        all.iter().enumerate().rev().filter_map(|(i, r)| Some((i, r.as_ref().ok()?))).collect();
    if usable.is_empty() {
        let why = all.last().and_then(|r| r.as_ref().err()).cloned().unwrap_or_default();
        let which = if n > 1 { format!(" ({n} reports, none usable; the newest:)") } else { String::new() };
        return Err(BadInput(format!("{source}{which}: {why}")).into());
    }
    let shown = if cli.all { &usable[..] } else { &usable[..1] };
    // Names in a modern report are given meaning by the running kernel's
    // table, when there is one to read.
    let live = precheck::tracefs().ok().map(|t| Decoders::load(&t).gfp);
    let mut sink = Sink::stdout();
    for &(i, report) in shown {
        let a = analyse(report.clone(), cli.algo.0, live.as_ref());
        let advice = advice::advise(&a.verdict, &advice::Knobs::default());
        if cli.json {
            sink.json(&json!({
                "type": "verdict",
                "source": source,
                "report": i + 1,
                "reports": n,
                "stamp": a.report.stamp,
                "comm": a.report.comm,
                "pid": a.report.pid,
                "caller": a.report.caller(),
                "nodemask": a.report.nodemask,
                "cpuset": a.report.cpuset,
                "mems_allowed": a.report.mems_allowed,
                "gfp_names_from": a.gfp_source,
                "nodes": a.nodes_note,
                "verdict": a.verdict,
                "advice": advice,
            }))?;
        } else {
            sink.text(&text_of(&a, &advice, &source, (i + 1, n)))?;
        }
    }
    for (i, r) in all.iter().enumerate().rev() {
        if let Err(why) = r {
            if cli.json {
                sink.json(&json!({"type": "skipped", "source": source, "report": i + 1, "reports": n, "reason": why}))?;
            } else {
                sink.text(&format!("  report {} of {n} in {source} skipped: {why}\n", i + 1))?;
            }
        }
    }
    if !cli.json && usable.len() > shown.len() {
        sink.text(&format!(
            "  {} earlier report(s) in {source} not shown; --all analyses each, newest first\n",
            usable.len() - shown.len()
        ))?;
    }
    Ok(())
}

fn text_of(a: &Analysis, advice: &[String], source: &str, (k, n): (usize, usize)) -> String {
    let r = &a.report;
    let mut from = format!("from {source}");
    if n > 1 {
        from += &format!(", report {k} of {n}");
    }
    if let Some(t) = &r.stamp {
        from += &format!(", logged {t}");
    }
    let mut s = format!(
        "FAIL ({from}) {} pid {}: order {} mode {:#x}, caller {}\n",
        r.comm,
        r.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        r.order,
        r.mode,
        r.caller().unwrap_or("[unknown]")
    );
    if let Some(src) = a.gfp_source {
        s += &format!("  GFP names from the {src}\n");
    }
    if let Some(note) = &a.nodes_note {
        s += &format!("  {note}\n");
    }
    s += &a.verdict.text();
    for l in advice {
        s += &format!("  advice: {l}\n");
    }
    s
}

/// The nodes the allocation could take pages from, and why, when the
/// report narrows them: an explicit nodemask always, the task's cpuset
/// (mems_allowed) for allocations marked __GFP_HARDWALL (GFP_USER and the
/// GFP_HIGHUSER family); other allocations may fall back to an ancestor
/// cpuset's nodes, which the report does not show.
fn allowed_nodes(r: &Report) -> Option<(Vec<u32>, String)> {
    let list = |v: &Option<String>| {
        v.as_deref().filter(|v| *v != "(null)").and_then(|v| kdiag_shared::cpus::parse_list(v).ok())
    };
    let hardwall = r.mode_names.as_deref().is_some_and(|n| {
        n.split('|').any(|f| f.starts_with("GFP_USER") || f.starts_with("GFP_HIGHUSER") || f == "__GFP_HARDWALL")
    });
    let mask = list(&r.nodemask).map(|l| (l, format!("nodemask={}", r.nodemask.as_deref().unwrap_or_default())));
    let mems = list(&r.mems_allowed).filter(|_| hardwall).map(|l| {
        (
            l,
            format!(
                "mems_allowed={} of cpuset {}",
                r.mems_allowed.as_deref().unwrap_or_default(),
                r.cpuset.as_deref().unwrap_or("?")
            ),
        )
    });
    match (mask, mems) {
        (Some((a, wa)), Some((b, wb))) => {
            Some((a.into_iter().filter(|n| b.contains(n)).collect(), format!("{wa} and {wb}")))
        }
        (Some(m), None) | (None, Some(m)) => Some(m),
        (None, None) => None,
    }
}

/// Which kernel wrote the report, and why we think so.
fn kernel_of(r: &Report) -> (KernelVersion, Option<String>) {
    if let Some(v) = r.kernel.as_deref().and_then(KernelVersion::parse) {
        return (v, None);
    }
    let old_name = r.trace.iter().any(|f| f == "warn_alloc_failed");
    // Every sleeping or kswapd-waking mask has bit 0x400000 or 0x2000000
    // set in the 4.4-4.9 layout; 0x10 was __GFP_WAIT before it.
    let pre44_bits = r.mode & (0x400000 | 0x2000000) == 0 && r.mode & 0x10 != 0;
    if r.mode_names.is_none() && old_name && pre44_bits {
        return (
            KernelVersion(3, 10),
            Some(
                "version not in the report; pre-4.4 inferred: warn_alloc_failed in the trace, mode printed \
                  without names, __GFP_WAIT-era bits"
                    .into(),
            ),
        );
    }
    if r.mode_names.is_some() {
        return (KernelVersion(4, 10), Some("version not in the report; 4.10+ inferred from the named mode".into()));
    }
    (
        KernelVersion(4, 4),
        Some("version not in the report and not inferable; assuming 4.4-4.9 (override with --algo)".into()),
    )
}

/// `live` is the running kernel's table, used to give names printed in a
/// modern report their meaning (names are stable where bits are not).
pub fn analyse(report: Report, algo: Option<Algo>, live: Option<&GfpTable>) -> Analysis {
    let (kernel, note) = kernel_of(&report);
    let allowed = allowed_nodes(&report);
    let (table, gfp, source): (Option<GfpTable>, Option<u64>, Option<Source>) = if kernel < KernelVersion(4, 4) {
        (Some(GfpTable::builtin_310()), Some(report.mode), Some(Source::Builtin310))
    } else if let (Some(names), Some(live)) = (&report.mode_names, live) {
        let mask = names.split('|').filter_map(|n| live.mask(n.trim())).fold(0, |a, m| a | m);
        (Some(live.clone()), Some(mask), Some(Source::Report))
    } else if KernelVersion::running() == Some(kernel) && live.is_some() {
        (live.cloned(), Some(report.mode), live.map(|t| t.source))
    } else {
        (None, None, None)
    };
    let gfp_text = match (&report.mode_names, &table, gfp) {
        (Some(n), _, _) => n.clone(),
        (None, Some(t), Some(g)) => t.decode(g),
        _ => format!("mode {:#x}, bit layout of this kernel unknown", report.mode),
    };
    let req = Request {
        order: report.order,
        gfp: Some(report.mode),
        gfp_text,
        meaning: table.as_ref().zip(gfp).map(|(t, g)| t.meaning(g)),
        kernel,
        kernel_note: note,
        algo: algo.unwrap_or_else(|| Algo::for_kernel(kernel)),
    };
    let zones: Vec<_> = report
        .zones
        .iter()
        .filter(|z| allowed.as_ref().is_none_or(|(nodes, _)| nodes.contains(&z.node)))
        .cloned()
        .collect();
    let verdict = verdict::judge(req, &zones, false);
    let nodes_note = allowed.map(|(nodes, why)| {
        format!(
            "only node(s) {} allowed ({why}): zones of other nodes left out",
            kdiag_shared::cpus::format_list(&nodes)
        )
    });
    Analysis { report, verdict, gfp_source: source, nodes_note }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::Step;

    fn seed() -> Analysis {
        let text = include_str!("../tests/fixtures/seed-004-centos7-order5-nofs.txt");
        analyse(crate::dmesg::parse(text).unwrap(), None, None)
    }

    /// The article's conclusion, reproduced: on that 3.10 kernel the GFP_NOFS
    /// mask skips compaction, and the order-5 watermark check fails on node 1
    /// despite 3.2 GB free, at the step FIELD-NOTES names (o=3, one step
    /// before the article's hand computation with the free-area total).
    #[test]
    fn seed_conclusion() {
        let a = seed();
        let v = &a.verdict;
        assert_eq!(v.request.kernel, KernelVersion(3, 10));
        assert!(v.request.kernel_note.as_deref().unwrap().contains("warn_alloc_failed"));
        assert_eq!(v.request.algo, Algo::Pre44);
        assert_eq!(v.request.gfp_text, "GFP_NOFS|__GFP_COMP|__GFP_KMEMCG");
        let why = v.compaction_forbidden.as_deref().unwrap();
        assert!(why.contains("lacks __GFP_FS"), "{why}");

        let n1 = v.zones.iter().find(|z| z.zone == "Node 1 Normal").unwrap();
        assert_eq!(n1.check.ok, Some(false));
        // free 828833 - 31 = 828802; -241701 -481468 -96040 = 9593 > 6416 (o=2);
        // -7920 = 1673 <= 3208 (o=3).
        assert_eq!(
            n1.check.failing_step(),
            Some(&Step::Lower { o: 3, removed: 7920, left: 1673, min: 3208, ok: false })
        );
        assert!(matches!(&n1.check.steps[3], Step::Lower { o: 2, left: 9593, min: 6416, ok: true, .. }));
        // The modern algorithm needs the order>=5 counts the cut line hides.
        assert_eq!(n1.other.ok, None);

        let n0 = v.zones.iter().find(|z| z.zone == "Node 0 Normal").unwrap();
        assert!(matches!(n0.check.failing_step(), Some(Step::Lower { o: 0, .. })));
        let dma32 = v.zones.iter().find(|z| z.zone == "Node 0 DMA32").unwrap();
        assert_eq!(dma32.reserve, 62460);
        assert!(matches!(dma32.check.failing_step(), Some(Step::Lower { o: 1, .. })));
        let dma = v.zones.iter().find(|z| z.zone == "Node 0 DMA").unwrap();
        assert!(matches!(dma.check.failing_step(), Some(Step::Order0 { reserve: 64161, .. })));
        assert_eq!(v.any_ok(), Some(false));

        let text = v.text();
        assert!(text.contains("Node 1 Normal"), "{text}");
        assert!(
            text.contains(
                "FAILS at step o=3: after taking away 7920 pages in order-3 blocks, 1673 pages left <= min>>4 = 3208"
            ),
            "{text}"
        );
        assert!(text.contains("compaction not attempted: the mask lacks __GFP_FS"), "{text}");
        let advice = crate::advice::advise(v, &crate::advice::Knobs::default());
        assert!(advice[0].contains("compact_memory") && advice[0].contains("drop_caches"), "{advice:?}");
    }

    #[test]
    fn algo_override_is_honoured() {
        let text = include_str!("../tests/fixtures/seed-004-centos7-order5-nofs.txt");
        let a = analyse(crate::dmesg::parse(text).unwrap(), Some(Algo::Modern), None);
        assert_eq!(a.verdict.request.algo, Algo::Modern);
        let n1 = a.verdict.zones.iter().find(|z| z.zone == "Node 1 Normal").unwrap();
        assert_eq!(n1.other.algo, Algo::Pre44);
        assert_eq!(n1.other.ok, Some(false));
    }

    #[test]
    fn modern_report_uses_names_with_the_live_table() {
        kdiag_testkit::needs_root("reads tracefs format files");
        let tfs = kdiag_shared::precheck::tracefs().unwrap();
        let live = crate::decode::Decoders::load(&tfs).gfp;
        let text = "nfsd: page allocation failure: order:5, mode:0x40c40(GFP_NOFS|__GFP_COMP), nodemask=(null)\n\
                    CPU: 3 PID: 812 Comm: nfsd Not tainted 6.1.0-18-amd64 #1\n\
                    Node 0 Normal free:81200kB min:5000kB low:6200kB high:7400kB\n\
                    lowmem_reserve[]: 0 0 0 0\n\
                    Node 0 Normal: 20000*4kB (UME) 200*8kB (UM) 0*16kB 0*32kB 0*64kB 0*128kB 0*256kB 0*512kB \
                    0*1024kB 0*2048kB 0*4096kB = 81600kB\n";
        let a = analyse(crate::dmesg::parse(text).unwrap(), None, Some(&live));
        let v = &a.verdict;
        assert_eq!(v.request.algo, Algo::Modern);
        assert_eq!(v.compaction_forbidden, None, "GFP_NOFS compacts on 6.1");
        assert_eq!(v.zones[0].check.failing_step(), Some(&Step::Block { order: 5, found_at: None, ok: false }));
        assert_eq!(v.zones[0].fragindex, Some(1000 - (1000 + 20400 * 1000 / 32) / 20200));
    }

    /// The report Debian's 6.12 printed in the guest, judged here with this
    /// kernel's names: what the live tool said of the same allocation there.
    #[test]
    fn real_6_12_report_conclusion() {
        let text = include_str!("../tests/fixtures/debian-6.12-order5-noio.txt");
        kdiag_testkit::needs_root("reads tracefs format files");
        let tfs = kdiag_shared::precheck::tracefs().unwrap();
        let live = crate::decode::Decoders::load(&tfs).gfp;
        let a = analyse(crate::dmesg::parse(text).unwrap(), None, Some(&live));
        let v = &a.verdict;
        assert_eq!(v.request.kernel, KernelVersion(6, 12));
        assert_eq!(v.request.kernel_note, None, "the version is in the report");
        assert_eq!(v.request.algo, Algo::Modern);
        assert_eq!(v.request.gfp_text, "GFP_NOIO");
        assert!(v.compaction_forbidden.as_deref().unwrap().contains("lacks __GFP_IO"), "{:?}", v.compaction_forbidden);
        // Fragmented to order 1: no order-5 block in either zone.
        let zones: Vec<(&str, Option<bool>)> = v.zones.iter().map(|z| (z.zone.as_str(), z.check.ok)).collect();
        assert_eq!(zones, [("Node 0 DMA", Some(false)), ("Node 0 DMA32", Some(false))]);
        assert_eq!(v.zones[1].largest_free_order, Some(1));
        assert_eq!(a.nodes_note, None, "nodemask=(null) and the root cpuset limit nothing");
    }

    /// Two nodes; the header says which the allocation could use.
    #[test]
    fn nodemask_and_hardwall_cpusets_narrow_the_zones() {
        let report = |mode: &str, tail: &str| {
            format!(
                "app: page allocation failure: order:4, mode:{mode}, {tail}\n\
                 CPU: 3 PID: 812 Comm: app Not tainted 5.10.0-28-amd64 #1\n\
                 Node 0 Normal free:81200kB boost:0kB min:5000kB low:6200kB high:7400kB\n\
                 lowmem_reserve[]: 0 0 0 0\n\
                 Node 1 Normal free:9000000kB boost:0kB min:5000kB low:6200kB high:7400kB\n\
                 lowmem_reserve[]: 0 0 0 0\n\
                 Node 0 Normal: 20300*4kB (UME) 0*8kB 0*16kB 0*32kB 0*64kB 0*128kB 0*256kB 0*512kB 0*1024kB 0*2048kB 0*4096kB = 81200kB\n\
                 Node 1 Normal: 0*4kB 0*8kB 0*16kB 0*32kB 0*64kB 0*128kB 0*256kB 0*512kB 0*1024kB 0*2048kB 2197*4096kB = 9000000kB\n"
            )
        };
        let nodes = |text: String| {
            let a = analyse(crate::dmesg::parse(&text).unwrap(), None, None);
            (a.verdict.zones.iter().map(|z| z.node).collect::<Vec<_>>(), a.nodes_note, a.verdict.any_ok())
        };
        let user = "0x100cca(GFP_HIGHUSER_MOVABLE)";
        let kernel = "0xcc0(GFP_KERNEL)";
        // A user allocation is held to its cpuset's nodes: node 0 only, where
        // no order-4 block is free, though node 1 has thousands.
        let (n, note, ok) = nodes(report(user, "nodemask=(null),cpuset=db,mems_allowed=0"));
        assert_eq!((n, ok), (vec![0], Some(false)));
        assert!(note.unwrap().contains("mems_allowed=0 of cpuset db"));
        // A kernel allocation may fall back to other nodes: both judged.
        let (n, note, ok) = nodes(report(kernel, "nodemask=(null),cpuset=db,mems_allowed=0"));
        assert_eq!((n, note, ok), (vec![0, 1], None, Some(true)));
        // An explicit nodemask binds every allocation.
        let (n, note, _) = nodes(report(kernel, "nodemask=1,cpuset=/,mems_allowed=0-1"));
        assert_eq!(n, vec![1]);
        assert!(note.unwrap().contains("nodemask=1"));
    }
}

//! `--from-dmesg`: the verdict after the fact, from a saved report. The
//! kernel version decides the GFP bit layout, the compaction rule and the
//! watermark algorithm; when the report does not print it (the seed's CPU
//! line is cut), it is inferred from what the report does show, and the
//! inference is printed with its reasons.

use crate::dmesg::Report;
use crate::gfp::{GfpTable, KernelVersion, Source};
use crate::verdict::{self, Request, Verdict};
use crate::watermark::Algo;

pub struct Analysis {
    pub report: Report,
    pub verdict: Verdict,
    pub gfp_source: Option<Source>,
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
    let verdict = verdict::judge(req, &report.zones, false);
    Analysis { report, verdict, gfp_source: source }
}

/// `--from-dmesg FILE`: the verdict on a saved report, no BPF at all.
pub fn report(path: &std::path::Path, cli: &crate::cli::Cli) -> anyhow::Result<()> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let report =
        crate::dmesg::parse(&String::from_utf8_lossy(&text)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // Names in a modern report are given meaning by the running kernel's
    // table, when there is one to read.
    let live = kdiag_shared::precheck::tracefs().ok().map(|t| crate::decode::Decoders::load(&t).gfp);
    let a = analyse(report, cli.algo.0, live.as_ref());
    let advice = crate::advice::advise(&a.verdict, &crate::advice::Knobs::default());
    let mut sink = kdiag_shared::output::Sink::stdout();
    if cli.json {
        sink.json(&serde_json::json!({
            "type": "verdict",
            "source": path.display().to_string(),
            "comm": a.report.comm,
            "pid": a.report.pid,
            "caller": a.report.caller(),
            "gfp_names_from": a.gfp_source,
            "verdict": a.verdict,
            "advice": advice,
        }))?;
        return Ok(());
    }
    let mut s = format!(
        "FAIL (from {}) {} pid {}: order {} mode {:#x}, caller {}\n",
        path.display(),
        a.report.comm,
        a.report.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        a.report.order,
        a.report.mode,
        a.report.caller().unwrap_or("[unknown]")
    );
    if let Some(src) = a.gfp_source {
        s += &format!("  GFP names from the {src}\n");
    }
    s += &a.verdict.text();
    for l in &advice {
        s += &format!("  advice: {l}\n");
    }
    sink.text(&s)?;
    Ok(())
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
}

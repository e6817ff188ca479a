//! Names for the numbers the BPF side sends, for the running kernel: GFP
//! bits, compaction results (`enum compact_result`, whose order changed
//! several times) and zone names. Format files first, BTF next, built-in
//! last, and the banner says which was used.

use crate::gfp::{GfpTable, Source};
use crate::tpformat::{Format, Table};
use libbpf_rs::btf::types::Enum;
use libbpf_rs::btf::Btf;
use std::path::Path;

pub struct Decoders {
    pub gfp: GfpTable,
    pub status: Table,
    pub status_source: &'static str,
    pub zones: Table,
}

fn btf_enum(btf: &Btf, name: &str) -> Option<Table> {
    let e: Enum = btf.type_by_name(name)?;
    Some(e.iter().filter_map(|m| Some((m.value as u64, m.name?.to_string_lossy().into_owned()))).collect())
}

/// `COMPACT_NO_SUITABLE_PAGE` -> `no_suitable_page`, the tracepoint's spelling.
fn status_name(enumerator: &str) -> String {
    enumerator.trim_start_matches("COMPACT_").to_ascii_lowercase()
}

fn gfp_from_btf(btf: &Btf) -> Option<GfpTable> {
    btf.type_by_kind::<Enum>().find_map(|e| {
        let members: Vec<(String, i64)> =
            e.iter().filter_map(|m| Some((m.name?.to_string_lossy().into_owned(), m.value))).collect();
        members.iter().any(|(n, _)| n == "___GFP_IO_BIT").then(|| GfpTable::from_btf_enum(&members)).flatten()
    })
}

impl Decoders {
    pub fn load(tracefs: &Path) -> Decoders {
        let fmt = |ev: &str| Format::read(tracefs, ev).ok();
        let btf = kdiag_shared::btf::vmlinux().ok();
        let gfp = fmt("kmem/mm_page_alloc")
            .and_then(|f| f.flags_table("gfp_flags"))
            .map(|t| GfpTable::from_entries(t, Source::FormatFile))
            .or_else(|| btf.as_ref().and_then(gfp_from_btf))
            .unwrap_or_else(GfpTable::builtin_310);
        let (status, status_source) = match fmt("compaction/mm_compaction_end").and_then(|f| f.symbolic_table("status"))
        {
            Some(t) => (t, "format file"),
            None => match btf.as_ref().and_then(|b| btf_enum(b, "compact_result")) {
                Some(t) => (t.into_iter().map(|(v, n)| (v, status_name(&n))).collect(), "BTF"),
                None => (vec![], "none"),
            },
        };
        let zones = fmt("compaction/mm_compaction_suitable")
            .and_then(|f| f.symbolic_table("idx"))
            .or_else(|| {
                let t = btf_enum(btf.as_ref()?, "zone_type")?;
                Some(
                    t.into_iter()
                        .filter(|(_, n)| n != "__MAX_NR_ZONES")
                        .map(|(v, n)| {
                            let n = n.trim_start_matches("ZONE_");
                            (
                                v,
                                if n == "NORMAL" {
                                    "Normal".into()
                                } else if n == "MOVABLE" {
                                    "Movable".into()
                                } else {
                                    n.to_string()
                                },
                            )
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        Decoders { gfp, status, status_source, zones }
    }

    pub fn status(&self, v: i32) -> String {
        self.status
            .iter()
            .find(|(n, _)| *n == v as u64)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| format!("status {v}"))
    }

    pub fn zone(&self, idx: u32) -> String {
        self.zones
            .iter()
            .find(|(n, _)| *n == idx as u64)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| format!("zone{idx}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format file and BTF must tell the same story on this kernel: the
    /// format file's status table agrees with BTF's enum compact_result,
    /// and the GFP bits agree with BTF's ___GFP_*_BIT.
    #[test]
    fn format_files_agree_with_btf() {
        kdiag_testkit::needs_root("reads tracefs format files");
        let d = Decoders::load(&kdiag_shared::precheck::tracefs().unwrap());
        assert_eq!(d.gfp.source, Source::FormatFile);
        assert_eq!(d.status_source, "format file");
        let btf = Btf::from_vmlinux().unwrap();
        let from_btf: Vec<(u64, String)> =
            btf_enum(&btf, "compact_result").unwrap().into_iter().map(|(v, n)| (v, status_name(&n))).collect();
        for (v, name) in &d.status {
            assert!(from_btf.contains(&(*v, name.clone())), "{name}={v} not in BTF {from_btf:?}");
        }
        let g = gfp_from_btf(&btf).unwrap();
        for name in ["__GFP_IO", "__GFP_FS", "__GFP_DIRECT_RECLAIM", "__GFP_NORETRY", "__GFP_COMP"] {
            assert_eq!(d.gfp.mask(name), g.mask(name), "{name}");
        }
        assert_eq!(d.zone(2), "Normal");
        assert_eq!(d.status(1), "skipped");
    }
}

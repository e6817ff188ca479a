//! Which program follows each tracepoint on this kernel. Raw: the one
//! written for the arguments this kernel's BTF says the tracepoint passes
//! (`btf_trace_<name>`), run as tp_btf or raw_tp, the backend chosen.
//! Classic: with `--backend tracepoint`, and for a tracepoint whose raw
//! arguments are none of those known here, alone, and the banner says so.

use anyhow::{anyhow, Result};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::rawtp;
use libbpf_rs::btf::Btf;
use libbpf_rs::{Link, Object, OpenObject};

/// A tracepoint and the programs that can follow it.
struct Hook {
    group: &'static str,
    name: &'static str,
    classic: &'static str,
    /// Each raw program, with the arguments it reads.
    raw: &'static [(&'static [&'static str], &'static str)],
}

const ZONE_RESULT: &[&str] = &["struct zone *", "s32", "s32"];
const ZONE: &[&str] = &["struct zone *", "s32"];

/// mm_page_alloc first: without it the tool is blind, so it alone must
/// attach. The prototypes: include/trace/events/{kmem,vmscan,compaction}.h.
const HOOKS: [Hook; 12] = [
    Hook {
        group: "kmem",
        name: "mm_page_alloc",
        classic: "cw_page_alloc",
        raw: &[(&["struct page *", "u32", "u32", "s32"], "cw_page_alloc_raw")],
    },
    Hook {
        group: "vmscan",
        name: "mm_vmscan_direct_reclaim_begin",
        classic: "cw_reclaim_begin",
        raw: &[(&["s32", "u32"], "cw_reclaim_begin_raw")],
    },
    Hook {
        group: "vmscan",
        name: "mm_vmscan_direct_reclaim_end",
        classic: "cw_reclaim_end",
        raw: &[(&["u64"], "cw_reclaim_end_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_try_to_compact_pages",
        classic: "cw_try_compact",
        raw: &[(&["s32", "u32", "s32"], "cw_try_compact_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_begin",
        classic: "cw_compact_begin",
        raw: &[
            (&["u64", "u64", "u64", "u64", "bool"], "cw_compact_begin_pfns"),
            (&["struct compact_control *", "u64", "u64", "bool"], "cw_compact_begin_cc"),
        ],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_end",
        classic: "cw_compact_end",
        raw: &[
            (&["u64", "u64", "u64", "u64", "bool", "s32"], "cw_compact_end_pfns"),
            (&["struct compact_control *", "u64", "u64", "bool", "s32"], "cw_compact_end_cc"),
        ],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_migratepages",
        classic: "cw_migratepages",
        raw: &[
            (&["u64", "s32", "struct list_head *"], "cw_migratepages_list"),
            (&["struct compact_control *", "u32"], "cw_migratepages_cc"),
            (&["u64", "u32"], "cw_migratepages_counts"),
            (&["u32", "u32"], "cw_migratepages_counts"),
        ],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_suitable",
        classic: "cw_suitable",
        raw: &[(ZONE_RESULT, "cw_suitable_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_finished",
        classic: "cw_finished",
        raw: &[(ZONE_RESULT, "cw_finished_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_deferred",
        classic: "cw_deferred",
        raw: &[(ZONE, "cw_deferred_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_defer_compaction",
        classic: "cw_defer_compaction",
        raw: &[(ZONE, "cw_defer_compaction_raw")],
    },
    Hook {
        group: "compaction",
        name: "mm_compaction_defer_reset",
        classic: "cw_defer_reset",
        raw: &[(ZONE, "cw_defer_reset_raw")],
    },
];

/// The program each tracepoint gets, in HOOKS order.
pub struct Plan {
    mech: Mechanism,
    progs: Vec<&'static str>,
    /// The tracepoints left to their classic programs, and why.
    pub classic: Vec<String>,
}

impl Plan {
    /// For backend `m`, with the kernel's BTF (`--backend tracepoint`
    /// asks it nothing).
    pub fn new(m: Mechanism, btf: impl FnOnce() -> Result<Btf<'static>>) -> Result<Plan> {
        if m == Mechanism::Tracepoint {
            return Ok(Plan::with_args(m, |_| None));
        }
        let btf = btf()?;
        Ok(Plan::with_args(m, |name| kdiag_shared::btf::tracepoint_args(&btf, name)))
    }

    /// `args_of` says what a tracepoint passes, None where it cannot.
    fn with_args(m: Mechanism, args_of: impl Fn(&str) -> Option<Vec<String>>) -> Plan {
        let mut plan = Plan { mech: m, progs: vec![], classic: vec![] };
        for h in &HOOKS {
            if m == Mechanism::Tracepoint {
                plan.progs.push(h.classic);
                continue;
            }
            let args = args_of(h.name);
            match args.as_ref().and_then(|a| h.raw.iter().find(|(want, _)| a == want)) {
                Some((_, prog)) => plan.progs.push(prog),
                None => {
                    plan.progs.push(h.classic);
                    let why = match args {
                        Some(a) => format!("its raw arguments ({}) are none this tool knows", a.join(", ")),
                        None => "BTF does not type it".to_string(),
                    };
                    plan.classic.push(format!("{}:{} as a classic tracepoint: {why}", h.group, h.name));
                }
            }
        }
        plan
    }

    /// Load only the chosen programs, the raw ones as tp_btf or raw_tp.
    pub fn select(&self, obj: &mut OpenObject) -> Result<()> {
        for mut prog in obj.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let on = self.progs.contains(&name.as_str());
            prog.set_autoload(on);
            if on && !HOOKS.iter().any(|h| h.classic == name) {
                rawtp::set_flavour(&mut prog, self.mech)?;
            }
        }
        Ok(())
    }

    /// Attach what was loaded: mm_page_alloc or an error, the rest where
    /// this kernel has them (the missing ones named in the second list).
    pub fn attach(&self, obj: &Object) -> Result<(Vec<Link>, Vec<String>)> {
        let (mut links, mut missing) = (vec![], vec![]);
        for (i, (h, want)) in HOOKS.iter().zip(&self.progs).enumerate() {
            let event = format!("{}:{}", h.group, h.name);
            let prog = obj.progs_mut().find(|p| p.name() == *want).ok_or_else(|| anyhow!("no program {want}"))?;
            match rawtp::attach(&prog) {
                Ok(l) => links.push(l),
                Err(e) if i == 0 => {
                    let why =
                        kdiag_shared::Errno::of_libbpf(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string());
                    return Err(anyhow!("cannot attach to {event}: {why}"));
                }
                Err(_) => missing.push(event),
            }
        }
        Ok((links, missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::CompactwatchSkelBuilder;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    use std::mem::MaybeUninit;

    /// Every program the table names is in the object, and every program
    /// of the object is in the table.
    #[test]
    fn the_table_names_the_object_s_programs() {
        let mut storage = MaybeUninit::uninit();
        let open = CompactwatchSkelBuilder::default().open(&mut storage).unwrap();
        let mut in_object: Vec<String> =
            open.open_object().progs().map(|p| p.name().to_string_lossy().into_owned()).collect();
        let mut in_table: Vec<String> = HOOKS
            .iter()
            .flat_map(|h| std::iter::once(h.classic).chain(h.raw.iter().map(|(_, p)| *p)))
            .map(String::from)
            .collect();
        in_object.sort();
        in_table.sort();
        in_table.dedup();
        assert_eq!(in_object, in_table);
    }

    /// On this kernel (6.18) every tracepoint has a raw program; forced
    /// classic, none does.
    #[test]
    fn this_kernel_gets_raw_programs() {
        let plan = Plan::new(Mechanism::TpBtf, kdiag_shared::btf::vmlinux).unwrap();
        assert!(plan.classic.is_empty(), "{:?}", plan.classic);
        assert!(plan.progs.contains(&"cw_compact_begin_cc") && plan.progs.contains(&"cw_migratepages_counts"));
        let plan = Plan::new(Mechanism::Tracepoint, || panic!("no BTF wanted")).unwrap();
        assert_eq!(plan.progs, HOOKS.iter().map(|h| h.classic).collect::<Vec<_>>());
    }

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    /// 5.10's prototypes (Debian 11) pick the pfn and list variants; a
    /// prototype nobody wrote a program for, or none, leaves that one
    /// tracepoint classic, and says why.
    #[test]
    fn each_prototype_its_program_and_the_unknown_classic() {
        let plan = Plan::with_args(Mechanism::RawTp, |name| match name {
            "mm_compaction_begin" => strings(&["u64", "u64", "u64", "u64", "bool"]),
            "mm_compaction_migratepages" => strings(&["u64", "s32", "struct list_head *"]),
            "mm_compaction_end" => strings(&["struct compact_control *", "u64"]),
            "mm_page_alloc" => strings(&["struct page *", "u32", "u32", "s32"]),
            _ => None,
        });
        assert_eq!(plan.progs[0], "cw_page_alloc_raw");
        assert_eq!(plan.progs[4], "cw_compact_begin_pfns");
        assert_eq!(plan.progs[5], "cw_compact_end");
        assert_eq!(plan.progs[6], "cw_migratepages_list");
        assert_eq!(plan.progs[7], "cw_suitable");
        assert_eq!(plan.classic.len(), 9, "{:?}", plan.classic);
        assert_eq!(
            plan.classic[3],
            "compaction:mm_compaction_end as a classic tracepoint: its raw arguments (struct compact_control *, \
             u64) are none this tool knows"
        );
        assert!(
            plan.classic[0].ends_with("mm_vmscan_direct_reclaim_begin as a classic tracepoint: BTF does not type it")
        );
    }
}

//! The resolved set: discovered sites, narrowed by the user's globs, each
//! with its role in a request's life and its attach target id.

use crate::btfscan::{Kind, Site};
use crate::globs::{is_plumbing, Glob};
use kdiag_shared::ksyms::KernelSymbols;

/// Mirrors of `enum brq_role` in bpf/blkreq.h.
pub const ADMIT: u8 = 1;
pub const END: u8 = 2;
pub const HIDDEN: u8 = 4;
pub const BIRTH: u8 = 8;

pub const FUNC_SLOTS: usize = 400;
pub const TP_SLOTS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub site: Site,
    /// Index in the BPF tables; tracepoints start at FUNC_SLOTS.
    pub id: u32,
    pub role: u8,
    /// Order of admission points within one life (see `role_of`).
    pub rank: u8,
    /// Why this target will not be attached, decided before attaching.
    pub skip: Option<String>,
}

impl Target {
    pub fn label(&self) -> String {
        match self.site.kind {
            Kind::Function => self.site.name.clone(),
            Kind::Tracepoint => format!("tracepoint:{}", self.site.name),
        }
    }

    pub fn role_name(&self) -> &'static str {
        match (self.role & ADMIT != 0, self.role & END != 0) {
            (true, _) => "admission",
            (_, true) => "end of life",
            _ => "",
        }
    }
}

/// Where a request's life starts and ends. Filesystem I/O is born in
/// blk_mq_submit_bio, which allocates the request and hands it to
/// blk_mq_bio_to_request; passthrough I/O through blk_mq_alloc_request and
/// blk_rq_init-style helpers; both pass block_io_start (6.5+). Older
/// kernels lack block_io_start, so insert and issue admit there instead.
fn role_of(site: &Site, have_io_start: bool) -> (u8, u8) {
    match (site.kind, site.name.as_str()) {
        (Kind::Function, "blk_mq_rq_ctx_init" | "blk_rq_init") => (ADMIT | BIRTH, 1),
        (Kind::Function, "blk_mq_bio_to_request") => (ADMIT | BIRTH, 2),
        (Kind::Tracepoint, "block_io_start") => (ADMIT | BIRTH, 3),
        (Kind::Tracepoint, "block_rq_insert") if !have_io_start => (ADMIT, 4),
        (Kind::Tracepoint, "block_rq_issue") if !have_io_start => (ADMIT, 5),
        (Kind::Tracepoint, "block_rq_complete" | "block_io_done") => (END, 0),
        (
            Kind::Function,
            "blk_mq_free_request" | "__blk_mq_free_request" | "blk_mq_end_request" | "__blk_mq_end_request",
        ) => (END, 0),
        _ => (0, 0),
    }
}

#[derive(Debug, Default)]
pub struct Resolved {
    pub funcs: Vec<Target>,
    pub tps: Vec<Target>,
}

impl Resolved {
    pub fn all(&self) -> impl Iterator<Item = &Target> {
        self.funcs.iter().chain(&self.tps)
    }

    pub fn by_id(&self, id: u32) -> Option<&Target> {
        if (id as usize) < FUNC_SLOTS {
            self.funcs.get(id as usize)
        } else {
            self.tps.get(id as usize - FUNC_SLOTS)
        }
    }
}

/// Apply the globs. Functions: those matching an include (all without
/// `-i`) and no exclude. Tracepoints are always attached: the host kernel
/// has nothing else; `-x` hides one unless the tracker needs it, in which
/// case it still drives admission and end of life but is not shown.
/// A glob that matches nothing is an error: at 3 a.m. a typo must not pass
/// for "that function was never called".
pub fn resolve(
    sites: &[Site],
    include: &[String],
    exclude: &[String],
    kernel: Option<&KernelSymbols>,
) -> Result<Resolved, String> {
    let inc = include.iter().map(|g| Glob::new(g)).collect::<Result<Vec<_>, _>>()?;
    let exc = exclude.iter().map(|g| Glob::new(g)).collect::<Result<Vec<_>, _>>()?;
    let visible: Vec<&Site> = sites.iter().filter(|s| !is_plumbing(&s.name)).collect();
    for g in &inc {
        if !visible.iter().any(|s| s.kind == Kind::Function && g.matches(&s.name)) {
            return Err(format!("-i '{}' matches no kernel function with a struct request * parameter", g.text));
        }
    }
    for g in &exc {
        if !visible.iter().any(|s| g.matches(&s.name)) {
            return Err(format!(
                "-x '{}' matches no kernel function or tracepoint with a struct request * parameter",
                g.text
            ));
        }
    }
    let have_io_start = sites.iter().any(|s| s.kind == Kind::Tracepoint && s.name == "block_io_start");
    let excluded = |s: &Site| exc.iter().any(|g| g.matches(&s.name));
    let mut r = Resolved::default();
    for s in visible {
        let (role, rank) = role_of(s, have_io_start);
        match s.kind {
            Kind::Function => {
                if excluded(s) || !(inc.is_empty() || inc.iter().any(|g| g.matches(&s.name))) {
                    continue;
                }
                let id = r.funcs.len() as u32;
                let skip = if id as usize >= FUNC_SLOTS {
                    Some(format!("more than {FUNC_SLOTS} functions selected; narrow the set with -i"))
                } else if kernel.is_some_and(|k| k.function(&s.name).is_none()) {
                    Some("not in kallsyms (inlined or renamed by the compiler)".to_string())
                } else if s.positions.iter().any(|&p| p as usize >= 6) {
                    Some("request passed on the stack (parameter 7 or later)".to_string())
                } else {
                    None
                };
                r.funcs.push(Target { site: s.clone(), id, role, rank, skip });
            }
            Kind::Tracepoint => {
                let hidden = excluded(s);
                if hidden && role == 0 {
                    continue;
                }
                let id = (FUNC_SLOTS + r.tps.len()) as u32;
                let skip = (r.tps.len() >= TP_SLOTS).then(|| format!("more than {TP_SLOTS} tracepoints"));
                let role = if hidden { role | HIDDEN } else { role };
                r.tps.push(Target { site: s.clone(), id, role, rank, skip });
            }
        }
    }
    if !r.tps.iter().any(|t| t.role & ADMIT != 0 && t.skip.is_none()) {
        return Err("this kernel has no block tracepoint to admit requests at (block_io_start, or \
                    block_rq_insert and block_rq_issue)"
            .into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Site {
        Site { name: name.into(), kind: Kind::Function, positions: vec![0] }
    }
    fn tp(name: &str) -> Site {
        Site { name: name.into(), kind: Kind::Tracepoint, positions: vec![0] }
    }
    fn sites() -> Vec<Site> {
        vec![
            f("blk_mq_start_request"),
            f("blk_mq_free_request"),
            f("__blk_mq_free_request"),
            f("blk_mq_bio_to_request"),
            f("scsi_queue_rq"),
            f("__traceiter_block_rq_issue"),
            f("blk_inlined_away"),
            tp("block_io_start"),
            tp("block_rq_issue"),
            tp("block_rq_complete"),
            tp("block_rq_merge"),
        ]
    }
    fn ksyms() -> Option<&'static KernelSymbols> {
        static SYMS: std::sync::OnceLock<KernelSymbols> = std::sync::OnceLock::new();
        let text: String = sites()
            .iter()
            .filter(|s| s.name != "blk_inlined_away")
            .enumerate()
            .map(|(i, s)| format!("{:x} T {}\n", 0xffffffff81000000u64 + 0x100 * i as u64, s.name))
            .collect();
        Some(SYMS.get_or_init(|| KernelSymbols::parse(std::io::Cursor::new(text), "")))
    }
    fn names(ts: &[Target]) -> Vec<&str> {
        ts.iter().map(|t| t.site.name.as_str()).collect()
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn all_blk_but_one_is_one_command_line() {
        let r = resolve(&sites(), &s(&["blk_*"]), &s(&["blk_mq_free_request"]), ksyms()).unwrap();
        assert_eq!(names(&r.funcs), ["blk_mq_start_request", "blk_mq_bio_to_request", "blk_inlined_away"]);
        // Tracepoints stay: they are what the host kernel has.
        assert_eq!(names(&r.tps), ["block_io_start", "block_rq_issue", "block_rq_complete", "block_rq_merge"]);
    }

    #[test]
    fn plumbing_is_never_included_and_ids_are_dense() {
        let r = resolve(&sites(), &[], &[], ksyms()).unwrap();
        assert!(!names(&r.funcs).contains(&"__traceiter_block_rq_issue"));
        assert_eq!(r.funcs.iter().map(|t| t.id).collect::<Vec<_>>(), (0..r.funcs.len() as u32).collect::<Vec<_>>());
        assert_eq!(r.tps[0].id as usize, FUNC_SLOTS);
        assert_eq!(r.by_id(FUNC_SLOTS as u32 + 2).unwrap().site.name, "block_rq_complete");
    }

    #[test]
    fn roles() {
        let r = resolve(&sites(), &[], &[], ksyms()).unwrap();
        let get = |n: &str| r.all().find(|t| t.site.name == n).unwrap().clone();
        assert_eq!(get("block_io_start").role, ADMIT | BIRTH);
        assert_eq!(get("blk_mq_bio_to_request").rank, 2);
        assert_eq!(get("block_rq_issue").role, 0, "io_start exists: issue does not admit");
        assert_eq!(get("block_rq_complete").role, END);
        assert_eq!(get("blk_mq_free_request").role, END);
        assert!(get("blk_inlined_away").skip.unwrap().contains("kallsyms"));
        // Before 6.5 there is no block_io_start: insert/issue admit.
        let old: Vec<Site> = sites().into_iter().filter(|s| s.name != "block_io_start").collect();
        let r = resolve(&old, &[], &[], ksyms()).unwrap();
        assert_eq!(r.tps.iter().find(|t| t.site.name == "block_rq_issue").unwrap().role, ADMIT);
    }

    #[test]
    fn excluded_tracepoints_still_drive_tracking_but_are_hidden() {
        let r = resolve(&sites(), &[], &s(&["block_*"]), ksyms()).unwrap();
        assert_eq!(names(&r.tps), ["block_io_start", "block_rq_complete"]);
        assert!(r.tps.iter().all(|t| t.role & HIDDEN != 0));
    }

    #[test]
    fn globs_matching_nothing_are_errors() {
        let e = resolve(&sites(), &s(&["bkl_*"]), &[], ksyms()).unwrap_err();
        assert_eq!(e, "-i 'bkl_*' matches no kernel function with a struct request * parameter");
        let e = resolve(&sites(), &[], &s(&["nope"]), ksyms()).unwrap_err();
        assert!(e.starts_with("-x 'nope' matches no"), "{e}");
        // Plumbing does not count as a match.
        assert!(resolve(&sites(), &s(&["__traceiter_*"]), &[], ksyms()).is_err());
        assert!(resolve(&sites(), &s(&["blk_[mq"]), &[], ksyms()).unwrap_err().contains("unclosed"));
    }
}

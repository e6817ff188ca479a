//! Discovery from kernel BTF: every function with a `struct request *`
//! parameter, at each position it has one, and every tracepoint whose
//! `btf_trace_<name>` typedef carries one. BTF is the kernel's own
//! description of itself, so the set follows the running kernel instead of
//! a list that ages with each release. Loaded modules (loop, nvme_core,
//! virtio_blk, scsi_mod...) describe their own functions in BTF split from
//! vmlinux's; those are read too, with btf-rs (libbpf-rs reads only whole
//! BTF).

use libbpf_rs::btf::types::{Func, FuncProto, Typedef};
use libbpf_rs::btf::{BtfKind, BtfType};
use libbpf_rs::Btf;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    Tracepoint,
}

/// Something that is handed a request, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub kind: Kind,
    /// 0-based parameter positions holding a `struct request *` (for a
    /// tracepoint, after its leading `void *`).
    pub positions: Vec<u8>,
}

impl Site {
    /// Bit i set: parameter i is a request.
    pub fn posmask(&self) -> u8 {
        self.positions.iter().filter(|&&p| p < 8).fold(0, |m, &p| m | (1 << p))
    }
}

/// Is `ty` a pointer to `struct request` (through typedefs and qualifiers)?
fn is_request_ptr(ty: BtfType<'_>) -> bool {
    let ty = ty.skip_mods_and_typedefs();
    if ty.kind() != BtfKind::Ptr {
        return false;
    }
    let Some(target) = ty.next_type() else { return false };
    let target = target.skip_mods_and_typedefs();
    target.kind() == BtfKind::Struct && target.name().is_some_and(|n| n == "request")
}

fn request_positions(btf: &Btf<'_>, proto: FuncProto<'_>, skip: usize) -> Vec<u8> {
    proto
        .iter()
        .enumerate()
        .skip(skip)
        .filter(|(_, p)| btf.type_by_id::<BtfType<'_>>(p.ty).is_some_and(is_request_ptr))
        .map(|(i, _)| (i - skip) as u8)
        .collect()
}

/// Every site in `btf`, functions first, each list sorted by name.
pub fn scan(btf: &Btf<'_>) -> Vec<Site> {
    let mut funcs = Vec::new();
    for f in btf.type_by_kind::<Func<'_>>() {
        let Some(name) = f.name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let Some(proto) = f.next_type().and_then(|t| FuncProto::try_from(t).ok()) else { continue };
        let positions = request_positions(btf, proto, 0);
        if !positions.is_empty() {
            funcs.push(Site { name, kind: Kind::Function, positions });
        }
    }
    let mut tps = Vec::new();
    for t in btf.type_by_kind::<Typedef<'_>>() {
        let Some(name) = t.name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("btf_trace_")) else {
            continue;
        };
        let name = name.to_string();
        let Some(ptr) = t.next_type().filter(|p| p.kind() == BtfKind::Ptr) else { continue };
        let Some(proto) = ptr.next_type().and_then(|t| FuncProto::try_from(t).ok()) else { continue };
        let positions = request_positions(btf, proto, 1);
        if !positions.is_empty() {
            tps.push(Site { name, kind: Kind::Tracepoint, positions });
        }
    }
    // BTF can describe one static function name twice (two translation
    // units); it is one attach target by name.
    funcs.sort_by(|a, b| a.name.cmp(&b.name));
    funcs.dedup_by(|a, b| a.name == b.name);
    tps.sort_by(|a, b| a.name.cmp(&b.name));
    funcs.extend(tps);
    funcs
}

/// Which argument of `tracepoint` is a bio, if any (the leading `void *`
/// not counted). block_getrq passes just the bio since 5.11; before, the
/// queue, the bio and the op.
pub fn bio_position(btf: &Btf<'_>, tracepoint: &str) -> Option<u8> {
    let t = btf.type_by_name::<Typedef<'_>>(&format!("btf_trace_{tracepoint}"))?;
    let proto = t.next_type().filter(|p| p.kind() == BtfKind::Ptr).and_then(|p| p.next_type())?;
    let proto = FuncProto::try_from(proto).ok()?;
    let is_bio = |ty| {
        btf.type_by_id::<BtfType<'_>>(ty).is_some_and(|t| {
            let t = t.skip_mods_and_typedefs();
            t.kind() == BtfKind::Ptr
                && t.next_type()
                    .map(|s| s.skip_mods_and_typedefs())
                    .is_some_and(|s| s.kind() == BtfKind::Struct && s.name().is_some_and(|n| n == "bio"))
        })
    };
    let pos = proto.iter().skip(1).position(|p| is_bio(p.ty))?;
    Some(pos as u8)
}

/// What blkreq needs from the running kernel's BTF, read once.
pub struct Kernel {
    /// Sites of the kernel and its loaded modules.
    pub sites: Vec<Site>,
    /// `enum req_op`, for --op.
    pub ops: Vec<(String, u32)>,
    /// Which argument of block_getrq is the bio (see `bio_position`).
    pub getrq_bio: Option<u8>,
    /// Kprobes can carry a cookie (5.15): the helper is in the kernel's
    /// list of BPF helpers.
    pub has_attach_cookies: bool,
}

impl Kernel {
    pub fn read() -> Result<Kernel, String> {
        let btf = kdiag_shared::btf::vmlinux().map_err(|e| e.to_string())?;
        Ok(Kernel {
            sites: scan_kernel(&btf),
            ops: request_ops(&btf),
            getrq_bio: bio_position(&btf, "block_getrq"),
            has_attach_cookies: kdiag_shared::probe::has_helper(&btf, "BPF_FUNC_get_attach_cookie"),
        })
    }
}

/// Scan the running kernel (`btf`, vmlinux's) and its loaded modules.
fn scan_kernel(btf: &Btf<'_>) -> Vec<Site> {
    let mut sites = scan(btf);
    let mut from_modules = scan_modules();
    if !from_modules.is_empty() {
        // Functions first, by name, then tracepoints, as scan() orders them.
        from_modules.retain(|m| !sites.iter().any(|s| s.kind == Kind::Function && s.name == m.name));
        sites.extend(from_modules);
        sites.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    }
    sites
}

/// The loaded modules that have no BTF of their own (kernels before 5.11,
/// or built without CONFIG_DEBUG_INFO_BTF_MODULES): their functions
/// cannot be found, so the banner says they are not followed.
pub fn modules_without_btf() -> Vec<String> {
    let dir = std::path::Path::new(VMLINUX).parent().expect("a directory");
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| !dir.join(m).exists())
        .map(str::to_string)
        .collect()
}

/// Functions of every module with BTF that take a request.
pub fn scan_modules() -> Vec<Site> {
    // Module BTF is split against the kernel's own, in sysfs beside it.
    if kdiag_shared::btf::custom().is_some() {
        return vec![];
    }
    let dir = std::path::Path::new(VMLINUX).parent().expect("a directory");
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let modules: Vec<std::path::PathBuf> =
        entries.flatten().filter(|e| e.file_name() != "vmlinux").map(|e| e.path()).collect();
    if modules.is_empty() {
        return vec![];
    }
    // Mapped where sysfs allows it (cheap); read whole otherwise.
    let base = btf_rs::Btf::from_file_with_backend(VMLINUX, btf_rs::Backend::Mmap)
        .or_else(|_| btf_rs::Btf::from_file(VMLINUX));
    let Ok(base) = base else { return vec![] };
    modules.iter().flat_map(|m| module_sites(&base, m)).collect()
}

fn module_sites(base: &btf_rs::Btf, path: &std::path::Path) -> Vec<Site> {
    let Ok(btf) = btf_rs::Btf::from_split_file(path, base) else { return vec![] };
    let Some(split) = btf.split() else { return vec![] };
    func_sites(&btf, split)
}

/// The functions of `section` (of `btf`) that take a request.
fn func_sites(btf: &btf_rs::Btf, section: &btf_rs::BtfSection) -> Vec<Site> {
    use fallible_iterator::FallibleIterator;
    let mut sites = Vec::new();
    let mut types = section.type_iter();
    while let Ok(Some(t)) = types.next() {
        let btf_rs::Type::Func(f) = t else { continue };
        let Ok(btf_rs::Type::FuncProto(proto)) = btf.resolve_chained_type(&f) else { continue };
        let positions: Vec<u8> = proto
            .parameters
            .iter()
            .enumerate()
            .filter(|(_, p)| points_to_request(btf, p))
            .map(|(i, _)| i as u8)
            .collect();
        if let (false, Ok(name)) = (positions.is_empty(), btf.resolve_name(&f)) {
            sites.push(Site { name, kind: Kind::Function, positions });
        }
    }
    sites
}

/// `is_request_ptr` for btf-rs types.
fn points_to_request(btf: &btf_rs::Btf, param: &btf_rs::Parameter) -> bool {
    use btf_rs::Type;
    let Ok(mut t) = btf.resolve_chained_type(param) else { return false };
    let mut through_ptr = false;
    // Typedefs and qualifiers on either side of one pointer; the bound only
    // guards against a malformed chain.
    for _ in 0..16 {
        match &t {
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {}
            Type::Ptr(_) if !through_ptr => through_ptr = true,
            Type::Struct(s) => return through_ptr && btf.resolve_name(s).is_ok_and(|n| n == "request"),
            _ => return false,
        }
        let Some(next) = t.as_btf_type().and_then(|x| btf.resolve_chained_type(x).ok()) else { return false };
        t = next;
    }
    false
}

/// Names of `enum req_op` (READ, WRITE, FLUSH...) and their values, from
/// BTF, so `--op` accepts exactly what this kernel has.
fn request_ops(btf: &Btf<'_>) -> Vec<(String, u32)> {
    let Some(e) = btf.type_by_name::<libbpf_rs::btf::types::Enum<'_>>("req_op") else { return vec![] };
    e.iter()
        .filter_map(|m| {
            let name = m.name?.to_str()?.strip_prefix("REQ_OP_")?.to_ascii_lowercase();
            (name != "last").then_some((name, m.value as u32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(sites: &'a [Site], name: &str, kind: Kind) -> &'a Site {
        sites.iter().find(|s| s.name == name && s.kind == kind).unwrap_or_else(|| panic!("{name} not found"))
    }

    /// The running kernel's BTF: the well-known sites are found at the
    /// positions the kernel source gives them.
    #[test]
    fn finds_the_block_layer_in_kernel_btf() {
        let sites = Kernel::read().unwrap().sites;
        let funcs = sites.iter().filter(|s| s.kind == Kind::Function).count();
        assert!(funcs > 50, "only {funcs} functions");
        assert_eq!(find(&sites, "blk_mq_start_request", Kind::Function).positions, vec![0]);
        assert_eq!(find(&sites, "blk_mq_free_request", Kind::Function).positions, vec![0]);
        // blk_rq_append_bio(struct request *rq, struct bio *bio).
        assert_eq!(find(&sites, "blk_rq_append_bio", Kind::Function).positions, vec![0]);
        // Tracepoints: the leading void * is not counted.
        assert_eq!(find(&sites, "block_rq_issue", Kind::Tracepoint).positions, vec![0]);
        assert_eq!(find(&sites, "block_rq_complete", Kind::Tracepoint).positions, vec![0]);
        // The host is 6.18: attach cookies since 5.15.
        assert!(Kernel::read().unwrap().has_attach_cookies);
        // block_bio_queue takes a bio, not a request.
        assert!(!sites.iter().any(|s| s.name == "block_bio_queue"));
        // Some functions take two (a request and the one merged into it).
        assert!(sites.iter().any(|s| s.positions.len() == 2), "no function takes two requests");
        // Not first position: blk_mq_sched_try_insert_merge? Accept any.
        assert!(sites.iter().any(|s| s.positions.iter().any(|&p| p > 0)), "request never past position 0");
    }

    /// This kernel: block_getrq(struct bio *); block_rq_issue takes a
    /// request; block_split a bio and a sector; a missing one has none.
    #[test]
    fn where_tracepoints_pass_a_bio() {
        let btf = Btf::from_path(VMLINUX).unwrap();
        assert_eq!(bio_position(&btf, "block_getrq"), Some(0));
        assert_eq!(Kernel::read().unwrap().getrq_bio, Some(0));
        assert_eq!(bio_position(&btf, "block_rq_issue"), None);
        assert_eq!(bio_position(&btf, "block_split"), Some(0));
        assert_eq!(bio_position(&btf, "no_such_tracepoint"), None);
    }

    /// The module scanner (btf-rs) and the vmlinux one (libbpf-rs) must
    /// agree: run the first over vmlinux itself, since this host has no
    /// module BTF, and compare every function and position.
    #[test]
    fn both_scanners_agree_on_vmlinux() {
        let rs = btf_rs::Btf::from_file_with_backend(VMLINUX, btf_rs::Backend::Mmap)
            .or_else(|_| btf_rs::Btf::from_file(VMLINUX))
            .unwrap();
        let mut theirs = func_sites(&rs, rs.base());
        theirs.sort_by(|a, b| a.name.cmp(&b.name));
        theirs.dedup_by(|a, b| a.name == b.name);
        let ours: Vec<Site> = Kernel::read().unwrap().sites.into_iter().filter(|s| s.kind == Kind::Function).collect();
        assert!(ours.len() > 50);
        assert_eq!(theirs, ours);
    }

    #[test]
    fn request_ops_come_from_btf() {
        let ops = Kernel::read().unwrap().ops;
        assert!(ops.contains(&("read".to_string(), 0)), "{ops:?}");
        assert!(ops.contains(&("write".to_string(), 1)), "{ops:?}");
        assert!(ops.iter().any(|(n, _)| n == "flush"), "{ops:?}");
    }

    #[test]
    fn posmask() {
        let s = Site { name: "x".into(), kind: Kind::Function, positions: vec![0, 2] };
        assert_eq!(s.posmask(), 0b101);
    }
}

//! What the user asked to trace, and whether this kernel has it: a
//! function, a glob of functions, or a tracepoint. Every "no" is one line
//! that says why (no such function, only compiler clones of it, a variable,
//! code the kernel never lets a tracer into), decided from the kernel's
//! symbols and tracefs before anything is loaded.

use kdiag_shared::ksyms::{self, KernelSymbols, Place};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Function(String),
    Glob(String),
    Tracepoint { group: String, name: String },
}

impl Spec {
    /// `FUNC`, `GLOB` (with `*`, `?`), or `tracepoint:GROUP:NAME` (also
    /// `tp:` and `t:`, as bcc's stackcount writes it).
    pub fn parse(s: &str) -> Result<Spec, String> {
        let s = s.trim();
        for p in ["tracepoint:", "tp:", "t:"] {
            if let Some(rest) = s.strip_prefix(p) {
                let (group, name) = rest
                    .split_once(':')
                    .or_else(|| rest.split_once('/'))
                    .ok_or_else(|| format!("'{s}' is not a tracepoint: write tracepoint:GROUP:NAME"))?;
                for part in [group, name] {
                    if part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("'{s}' is not a tracepoint: write tracepoint:GROUP:NAME"));
                    }
                }
                return Ok(Spec::Tracepoint { group: group.into(), name: name.into() });
            }
        }
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "_.*?".contains(c)) {
            return Err(format!("'{s}' is not a function name or glob (letters, digits, _ . * ?)"));
        }
        if s.contains(['*', '?']) {
            if s.chars().all(|c| c == '*' || c == '?') {
                return Err(format!("'{s}' would match every kernel function: narrow it down"));
            }
            return Ok(Spec::Glob(s.into()));
        }
        Ok(Spec::Function(s.into()))
    }

    pub fn is_tracepoint(&self) -> bool {
        matches!(self, Spec::Tracepoint { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Spec::Function(f) | Spec::Glob(f) => f.clone(),
            Spec::Tracepoint { group, name } => format!("tracepoint:{group}:{name}"),
        }
    }
}

/// `*` any run of characters, `?` one character: the globs ftrace's
/// set_ftrace_filter takes too.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Kernel text regions no tracer may enter: the entry code, noinstr code
/// (runs where tracing is unsafe: before RCU is watching, in NMI entry),
/// kprobes' own code, cpuidle, and __init code freed after boot. Their
/// bounds are symbols in kallsyms, so this needs neither debugfs nor
/// available_filter_functions (which some kernels refuse to show).
const FORBIDDEN: [(&str, &str, &str); 7] = [
    ("__entry_text_start", "__entry_text_end", "kernel entry code"),
    ("__irqentry_text_start", "__irqentry_text_end", "interrupt entry code"),
    ("__softirqentry_text_start", "__softirqentry_text_end", "softirq entry code"),
    ("__noinstr_text_start", "__noinstr_text_end", "noinstr code, which runs where tracing is unsafe"),
    ("__cpuidle_text_start", "__cpuidle_text_end", "cpuidle code"),
    ("__kprobes_text_start", "__kprobes_text_end", "the kprobes machinery itself"),
    ("_sinittext", "_einittext", "__init code, freed after boot"),
];

/// The kernel's functions, as far as tracing them goes.
pub struct Kernel<'k> {
    syms: &'k KernelSymbols,
    forbidden: Vec<(u64, u64, &'static str)>,
    /// available_filter_functions, where the kernel shows it.
    filterable: Option<BTreeSet<String>>,
}

/// Pieces of functions that are not worth tracing by themselves: cold
/// fragments the compiler split off.
fn is_fragment(name: &str) -> bool {
    name.contains(".cold")
}

impl Kernel<'static> {
    pub fn load(tracefs: Option<&Path>) -> Result<Self, String> {
        let syms = ksyms::require().map_err(|e| e.to_string())?;
        let filterable = tracefs
            .and_then(|t| std::fs::read_to_string(t.join("available_filter_functions")).ok())
            .map(|t| t.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect());
        Ok(Kernel::new(syms, filterable))
    }
}

impl<'k> Kernel<'k> {
    pub fn new(syms: &'k KernelSymbols, filterable: Option<BTreeSet<String>>) -> Self {
        let forbidden = FORBIDDEN
            .iter()
            .filter_map(|(a, b, why)| Some((syms.address(a)?, syms.address(b)?, *why)))
            .filter(|(a, b, _)| a < b)
            .collect();
        Kernel { syms, forbidden, filterable }
    }

    /// Why a tracer may not enter the function at `addr`, if it may not.
    fn forbidden(&self, addr: u64, name: &str) -> Option<String> {
        if let Some((_, _, why)) = self.forbidden.iter().find(|(a, b, _)| addr >= *a && addr < *b) {
            return Some(format!("the kernel keeps tracers out of {why}"));
        }
        if let Some(f) = &self.filterable {
            if !f.contains(name) {
                return Some("the kernel marks it notrace: it is not in available_filter_functions".to_string());
            }
        }
        None
    }

    /// Resolve a function or glob.
    pub fn resolve(&self, spec: &Spec) -> anyhow::Result<Resolved> {
        resolve_functions(spec, self).map_err(anyhow::Error::msg)
    }

    /// The function at or before `addr`, for naming what a glob hit.
    pub fn function_at(&self, addr: u64) -> Option<&str> {
        match self.syms.place(addr) {
            Place::Function { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// What will be traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Tracepoint {
        group: String,
        name: String,
    },
    /// Function names, sorted; `excluded` are glob matches left out, with
    /// why.
    Functions {
        names: Vec<String>,
        excluded: Vec<(String, String)>,
        glob: bool,
    },
}

impl Resolved {
    /// What is counted, for the banner.
    pub fn describe(&self, spec: &Spec, attached: usize) -> String {
        match self {
            Resolved::Functions { glob: true, .. } => format!("{} ({attached} functions)", spec.label()),
            _ => spec.label(),
        }
    }

    pub fn functions(&self) -> &[String] {
        match self {
            Resolved::Functions { names, .. } => names,
            Resolved::Tracepoint { .. } => &[],
        }
    }
}

/// Resolve a function or glob against kallsyms.
pub fn resolve_functions(spec: &Spec, k: &Kernel) -> Result<Resolved, String> {
    match spec {
        Spec::Function(name) => {
            if let Some(f) = k.syms.function(name) {
                if let Some(why) = k.forbidden(f.addr, name) {
                    return Err(format!("{name} is not traceable: {why}"));
                }
                return Ok(Resolved::Functions { names: vec![name.clone()], excluded: vec![], glob: false });
            }
            if let Some(kind) = k.syms.other_kind(name) {
                return Err(format!("{name} is not a function: kallsyms lists it as a symbol of type '{kind}' (data)"));
            }
            let clones: BTreeSet<&str> = k
                .syms
                .with_prefix(name)
                .filter(|f| !is_fragment(f.name) && f.name[name.len()..].starts_with('.'))
                .map(|f| f.name)
                .collect();
            if !clones.is_empty() {
                let list: Vec<&str> = clones.into_iter().collect();
                return Err(format!(
                    "{name} is not in this kernel as such: the compiler inlined or specialised it, \
                     leaving {}; trace that name instead",
                    list.join(", ")
                ));
            }
            Err(format!(
                "no function {name} in this kernel: it does not exist here, or the compiler inlined it \
                 into every caller (then trace a caller), or it is in a module that is not loaded"
            ))
        }
        Spec::Glob(pat) => {
            let mut names = BTreeSet::new();
            let mut excluded = Vec::new();
            let mut seen = BTreeSet::new();
            for f in k.syms.functions().filter(|f| !is_fragment(f.name)) {
                if !glob_match(pat, f.name) || !seen.insert(f.name) {
                    continue;
                }
                match k.forbidden(f.addr, f.name) {
                    Some(why) => excluded.push((f.name.to_string(), why)),
                    None => {
                        names.insert(f.name.to_string());
                    }
                }
            }
            if names.is_empty() && excluded.is_empty() {
                return Err(format!("no kernel function matches '{pat}'"));
            }
            if names.is_empty() {
                return Err(format!(
                    "'{pat}' matches {} functions and none is traceable ({}: {})",
                    excluded.len(),
                    excluded[0].0,
                    excluded[0].1
                ));
            }
            Ok(Resolved::Functions { names: names.into_iter().collect(), excluded, glob: true })
        }
        Spec::Tracepoint { .. } => unreachable!("tracepoints are resolved through tracefs"),
    }
}

/// The number of arguments of the function traced, from BTF (fentry needs
/// it); None when BTF does not describe it. --ret on a function that
/// returns void is an error.
pub fn nr_args(spec: &Spec, ret: bool) -> anyhow::Result<Option<u32>> {
    use libbpf_rs::btf::{types, BtfType, ReferencesType, TypeId};
    let (Spec::Function(name), Ok(btf)) = (spec, kdiag_shared::btf::vmlinux()) else { return Ok(None) };
    let Some(f) = btf.type_by_name::<types::Func>(name) else { return Ok(None) };
    let Some(proto) =
        btf.type_by_id::<BtfType>(f.referenced_type_id()).and_then(|t| types::FuncProto::try_from(t).ok())
    else {
        return Ok(None);
    };
    // A prototype references its return type; id 0 is void.
    if ret && proto.referenced_type_id() == TypeId::from(0) {
        anyhow::bail!("{name} returns void: --ret has nothing to count");
    }
    Ok(Some(proto.len() as u32))
}

/// Check that `events/GROUP/NAME` exists under tracefs.
pub fn resolve_tracepoint(tracefs: &Path, group: &str, name: &str) -> Result<Resolved, String> {
    let events = tracefs.join("events");
    let g = events.join(group);
    if !g.is_dir() {
        return Err(format!("no tracepoint group '{group}' in this kernel (see {})", events.display()));
    }
    if !g.join(name).join("format").exists() {
        let mut near: Vec<String> = std::fs::read_dir(&g)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        near.retain(|n| n != "enable" && n != "filter");
        let shared = |n: &str| n.bytes().zip(name.bytes()).take_while(|(a, b)| a == b).count();
        let best = near.iter().map(|n| shared(n)).max().unwrap_or(0);
        near.retain(|n| best >= 3 && shared(n) == best);
        near.sort();
        near.truncate(5);
        let hint = if near.is_empty() { String::new() } else { format!("; similar: {}", near.join(", ")) };
        return Err(format!("no tracepoint {group}:{name} in this kernel{hint}"));
    }
    Ok(Resolved::Tracepoint { group: group.into(), name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000010 T __entry_text_start
ffffffff81000020 T entry_SYSCALL_64
ffffffff81001a87 T __entry_text_end
ffffffff817119d0 T __pfx_vfs_fsync_range
ffffffff817119e0 T vfs_fsync_range
ffffffff81711c30 T vfs_fsync
ffffffff81712000 t do_execveat_common.isra.0
ffffffff81712100 t do_execveat_common.cold
ffffffff821ef5c0 T __noinstr_text_start
ffffffff821ef620 T do_syscall_64
ffffffff821f7645 T __noinstr_text_end
ffffffff83000000 D jiffies_64
";

    fn syms() -> &'static KernelSymbols {
        static SYMS: std::sync::OnceLock<KernelSymbols> = std::sync::OnceLock::new();
        SYMS.get_or_init(|| KernelSymbols::parse(std::io::Cursor::new(KALLSYMS), ""))
    }

    fn k() -> Kernel<'static> {
        Kernel::new(syms(), None)
    }

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("vfs_fsync_range"), Ok(Spec::Function("vfs_fsync_range".into())));
        assert_eq!(Spec::parse("vfs_fsync*"), Ok(Spec::Glob("vfs_fsync*".into())));
        let tp = Spec::Tracepoint { group: "syscalls".into(), name: "sys_enter_umount".into() };
        assert_eq!(Spec::parse("tracepoint:syscalls:sys_enter_umount").as_ref(), Ok(&tp));
        assert_eq!(Spec::parse("t:syscalls:sys_enter_umount").as_ref(), Ok(&tp));
        assert_eq!(Spec::parse("tracepoint:syscalls/sys_enter_umount").as_ref(), Ok(&tp));
        assert!(Spec::parse("tracepoint:block").unwrap_err().contains("write tracepoint:GROUP:NAME"));
        assert!(Spec::parse("vfs read").unwrap_err().contains("not a function name"));
        assert!(Spec::parse("**").unwrap_err().contains("every kernel function"));
        assert_eq!(tp.label(), "tracepoint:syscalls:sys_enter_umount");
    }

    #[test]
    fn globs() {
        assert!(glob_match("vfs_*", "vfs_fsync"));
        assert!(glob_match("*fsync*", "vfs_fsync_range"));
        assert!(glob_match("vfs_fsyn?", "vfs_fsync"));
        assert!(!glob_match("vfs_fsyn?", "vfs_fsync_range"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn each_kind_of_no_is_explained() {
        let k = k();
        let f = |s: &str| resolve_functions(&Spec::parse(s).unwrap(), &k);
        assert_eq!(
            f("vfs_fsync_range"),
            Ok(Resolved::Functions { names: vec!["vfs_fsync_range".into()], excluded: vec![], glob: false })
        );
        let e = f("do_syscall_64").unwrap_err();
        assert_eq!(
            e,
            "do_syscall_64 is not traceable: the kernel keeps tracers out of noinstr code, \
             which runs where tracing is unsafe"
        );
        assert!(f("entry_SYSCALL_64").unwrap_err().contains("kernel entry code"));
        assert!(f("jiffies_64").unwrap_err().starts_with("jiffies_64 is not a function"));
        let e = f("do_execveat_common").unwrap_err();
        assert!(e.contains("leaving do_execveat_common.isra.0;"), "{e}");
        assert!(!e.contains(".cold"), "{e}");
        assert!(f("no_such_fn").unwrap_err().starts_with("no function no_such_fn in this kernel"));
        assert_eq!(f("zz_nothing*").unwrap_err(), "no kernel function matches 'zz_nothing*'");
        assert!(f("do_sys*").unwrap_err().contains("none is traceable"));
    }

    #[test]
    fn glob_sets_skip_fragments_and_forbidden_code() {
        let k = k();
        let r = resolve_functions(&Spec::Glob("*".to_string() + "_*"), &k).unwrap();
        let names = r.functions();
        assert!(names.contains(&"vfs_fsync".to_string()) && names.contains(&"do_execveat_common.isra.0".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("__pfx_") || n.contains(".cold") || n == "do_syscall_64"));
        let Resolved::Functions { excluded, .. } = r else { panic!() };
        assert!(excluded.iter().any(|(n, _)| n == "do_syscall_64"));
    }

    #[test]
    fn available_filter_functions_has_the_last_word() {
        let only: BTreeSet<String> = ["vfs_fsync".to_string()].into();
        let k = Kernel::new(syms(), Some(only));
        let e = resolve_functions(&Spec::Function("vfs_fsync_range".into()), &k).unwrap_err();
        assert_eq!(
            e,
            "vfs_fsync_range is not traceable: the kernel marks it notrace: it is not in available_filter_functions"
        );
    }

    #[test]
    fn functions_are_named_by_address() {
        let k = k();
        assert_eq!(k.function_at(0xffffffff817119e4), Some("vfs_fsync_range"));
        assert_eq!(k.function_at(0xffffffff81711c30), Some("vfs_fsync"));
    }

    /// The host's own kallsyms: do_syscall_64 is noinstr on x86-64 since 5.x.
    #[test]
    fn this_kernel_marks_do_syscall_64() {
        kdiag_testkit::needs_root("reads kernel addresses from /proc/kallsyms");
        let k = Kernel::load(None).unwrap();
        let e = resolve_functions(&Spec::Function("do_syscall_64".into()), &k).unwrap_err();
        assert!(e.contains("noinstr"), "{e}");
        assert!(resolve_functions(&Spec::Function("vfs_fsync_range".into()), &k).is_ok());
    }
}

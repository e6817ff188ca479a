//! `--uprobe BINARY:SYMBOL`: find the user functions to probe. SYMBOL is a
//! glob matched against demangled names (C++ and Rust) as well as raw
//! ones, so the seed's `*FileEventImpl*assignEvents*` works on Envoy.
//! BINARY is a path, or the file name of something the target has mapped
//! (reached through /proc/PID/root, so containers work).

use blazesym::inspect::source::{Elf, Source};
use blazesym::inspect::Inspector;
use blazesym::SymType;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// More matches than this is a glob that needs narrowing, not a trace.
pub const MAX_MATCHES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub binary: String,
    pub glob: String,
}

/// `BINARY:SYMBOL`, split at the first colon: C++ names contain `::`,
/// paths seldom contain `:`.
pub fn parse_spec(s: &str) -> Result<Spec, String> {
    match s.split_once(':') {
        Some((b, g)) if !b.is_empty() && !g.is_empty() => Ok(Spec { binary: b.to_string(), glob: g.to_string() }),
        _ => Err(format!("invalid --uprobe '{s}': expected BINARY:SYMBOL, e.g. envoy:*assignEvents*")),
    }
}

/// `*` any run of characters, `?` one character.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Rust (legacy and v0, without the hash) or C++ demangling; None when the
/// name is not mangled.
pub fn demangle(name: &str) -> Option<String> {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return Some(format!("{d:#}"));
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            return sym.demangle().ok();
        }
    }
    None
}

/// The file to attach to.
pub fn resolve_binary(pid: u32, binary: &str) -> Result<PathBuf, String> {
    let p = Path::new(binary);
    if p.is_absolute() && p.exists() {
        return Ok(p.to_path_buf());
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let found = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|path| {
        path.starts_with('/') && (Path::new(path).file_name().is_some_and(|f| f == binary) || path.ends_with(binary))
    });
    if let Some(path) = found {
        let via_root = PathBuf::from(format!("/proc/{pid}/root{path}"));
        return Ok(if via_root.exists() { via_root } else { PathBuf::from(path) });
    }
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    Err(format!("--uprobe: '{binary}' is neither a file nor mapped by process {pid}"))
}

#[derive(Clone, Debug)]
pub struct Target {
    /// Demangled (or raw) name, for the timeline.
    pub name: String,
    pub file_offset: u64,
}

/// Functions of `path` matching `glob`, one per address.
pub fn find_functions(path: &Path, glob: &str) -> Result<Vec<Target>, String> {
    let inspector = Inspector::new();
    let src = Source::Elf(Elf { debug_syms: false, ..Elf::new(path) });
    let mut found: Vec<Target> = Vec::new();
    inspector
        .for_each(&src, |sym| {
            if sym.sym_type == SymType::Function && sym.size.unwrap_or(0) > 0 {
                if let Some(off) = sym.file_offset {
                    let nice = demangle(&sym.name);
                    if glob_match(glob, &sym.name) || nice.as_deref().is_some_and(|n| glob_match(glob, n)) {
                        found.push(Target { name: nice.unwrap_or_else(|| sym.name.to_string()), file_offset: off });
                    }
                }
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| format!("--uprobe: reading symbols of {}: {e}", path.display()))?;
    found.sort_by_key(|t| t.file_offset);
    found.dedup_by_key(|t| t.file_offset);
    if found.is_empty() {
        return Err(format!("--uprobe: no function matching '{glob}' in {}", path.display()));
    }
    if found.len() > MAX_MATCHES {
        return Err(format!(
            "--uprobe: '{glob}' matches {} functions in {} (at most {MAX_MATCHES}); narrow the pattern",
            found.len(),
            path.display()
        ));
    }
    Ok(found)
}

/// `--uprobe BINARY:GLOB` of process `pid`: the binary's path and the
/// functions the glob matches in it.
pub fn resolve(pid: u32, arg: &str) -> Result<(PathBuf, Vec<Target>), String> {
    let spec = parse_spec(arg)?;
    let path = resolve_binary(pid, &spec.binary)?;
    let found = find_functions(&path, &spec.glob)?;
    Ok((path, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("envoy:*FileEventImpl*assignEvents*").unwrap(),
            Spec { binary: "envoy".into(), glob: "*FileEventImpl*assignEvents*".into() }
        );
        assert_eq!(parse_spec("/usr/bin/envoy:Envoy::Event::X::f").unwrap().glob, "Envoy::Event::X::f");
        assert!(parse_spec("envoy").is_err());
        assert!(parse_spec(":x").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*assignEvents*", "Envoy::Event::FileEventImpl::assignEvents(unsigned int, event_base*)"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*d", "abc"));
        assert!(glob_match("*FileEventImpl*assignEvents*", "FileEventImpl::assignEvents"));
    }

    #[test]
    fn demangles_cpp_and_rust() {
        assert_eq!(
            demangle("_ZN5Envoy5Event13FileEventImpl12assignEventsEj").as_deref(),
            Some("Envoy::Event::FileEventImpl::assignEvents(unsigned int)")
        );
        assert_eq!(demangle("_ZN4host6server6handle17h0123456789abcdefE").as_deref(), Some("host::server::handle"));
        assert_eq!(demangle("main"), None);
    }

    #[inline(never)]
    fn a_probe_target(x: u64) -> u64 {
        std::hint::black_box(x.rotate_left(7))
    }

    /// This test binary's own function, found by a glob on its demangled name.
    #[test]
    fn finds_a_function_of_this_binary() {
        // Taken by address so it stays a function of its own.
        assert_ne!(std::hint::black_box(a_probe_target as fn(u64) -> u64)(1), 0);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let t = find_functions(&exe, "*uprobe*tests*a_probe_target").unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t[0].name.ends_with("uprobe::tests::a_probe_target"), "{t:?}");
        assert!(t[0].file_offset > 0);
        assert!(find_functions(&exe, "no_such_function_anywhere_*").unwrap_err().contains("no function matching"));
    }
}

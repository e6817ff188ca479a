//! The licenses of everything the static tools carry inside them. Every
//! crate they link (and the C that libbpf-sys vendors: libbpf, libelf,
//! zlib), and musl itself, ships in the binaries, and most of those
//! licenses (MIT, BSD, Apache-2.0, zlib) ask for their notice to travel
//! with the code. The list comes from Cargo's own dependency graph, so it
//! cannot fall behind Cargo.lock.

use crate::tasks::{workspace_root, TOOLS};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-musl";
const MUSL_COPYRIGHT: &str = "/usr/share/doc/musl/copyright";

/// One shipped crate.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub license: String,
    pub repository: String,
    dir: std::path::PathBuf,
}

fn is_license_file(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["LICENSE", "LICENCE", "COPYING", "NOTICE", "COPYRIGHT", "UNLICENSE"].iter().any(|p| n.starts_with(p))
}

/// License files at the top of `dir`, and at the top of its immediate
/// subdirectories (vendored C sources keep theirs there).
fn license_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_file() && is_license_file(&name) {
            out.push(p);
        } else if p.is_dir()
            && !name.starts_with('.')
            && !["src", "tests", "benches", "examples"].contains(&name.as_str())
        {
            out.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|s| s.path().is_file() && is_license_file(&s.file_name().to_string_lossy()))
                    .map(|s| s.path()),
            );
        }
    }
    out.sort();
    out
}

/// The crates reachable from the tools through normal dependencies on the
/// musl target: build scripts' and tests' dependencies do not ship, and
/// the workspace's own crates are this project's (GPL-2.0, in LICENSE).
pub fn shipped_crates() -> Result<Vec<Crate>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--filter-platform", TARGET])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    shipped_from_metadata(&meta)
}

fn shipped_from_metadata(meta: &Value) -> Result<Vec<Crate>> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().context("no members")?.iter().filter_map(Value::as_str).collect();
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(id, p)| members.contains(*id) && p["name"].as_str().is_some_and(|n| TOOLS.contains(&n)))
        .map(|(id, _)| *id)
        .collect();
    if todo.len() != TOOLS.len() {
        bail!("cargo metadata names {} of the {} tools", todo.len(), TOOLS.len());
    }
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                todo.push(pkg);
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .iter()
        .filter(|id| !members.contains(*id))
        .filter_map(|id| packages.get(id))
        .map(|p| Crate {
            name: p["name"].as_str().unwrap_or("?").to_string(),
            version: p["version"].as_str().unwrap_or("?").to_string(),
            license: p["license"].as_str().unwrap_or("(not stated)").to_string(),
            repository: p["repository"].as_str().unwrap_or("").to_string(),
            dir: Path::new(p["manifest_path"].as_str().unwrap_or("/")).parent().unwrap().to_path_buf(),
        })
        .collect();
    crates.sort();
    Ok(crates)
}

/// The text installed as /usr/share/doc/kdiag/THIRD-PARTY-LICENSES.
pub fn third_party_text() -> Result<String> {
    let crates = shipped_crates()?;
    let rule = "-".repeat(72);
    let mut s = String::from(
        "Software inside the kdiag binaries\n\n\
         The kdiag tools are statically linked. Besides kdiag's own code\n\
         (GPL-2.0, see LICENSE), they contain the software listed here, each\n\
         under its own license, whose text follows its entry.\n\n",
    );
    for c in &crates {
        s += &format!("  {} {} ({})\n", c.name, c.version, c.license);
    }
    s += "  musl libc (MIT)\n";
    let mut first_with: BTreeMap<String, String> = BTreeMap::new();
    for c in &crates {
        s += &format!("\n{rule}\n{} {}\nLicense: {}\n", c.name, c.version, c.license);
        if !c.repository.is_empty() {
            s += &format!("Source: {}\n", c.repository);
        }
        let files = license_files(&c.dir);
        if files.is_empty() {
            s += "(the crate ships no license file; its license is the one named above)\n";
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let text = text.trim_end().to_string();
            let rel = f.strip_prefix(&c.dir).unwrap_or(&f).display().to_string();
            // Most crates carry the very same Apache-2.0 text: once is enough.
            match first_with.get(&text) {
                Some(other) => s += &format!("\n== {rel}: the same text as {other}, above ==\n"),
                None => {
                    s += &format!("\n== {rel} ==\n{text}\n");
                    first_with.insert(text, format!("{} {}'s {rel}", c.name, c.version));
                }
            }
        }
    }
    let musl = std::fs::read_to_string(MUSL_COPYRIGHT).with_context(|| format!("reading {MUSL_COPYRIGHT}"))?;
    s += &format!("\n{rule}\nmusl libc\nLicense: MIT\n\n{}\n", musl.trim_end());
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This workspace: the libraries every tool is built on are listed,
    /// with licenses; the workspace's own crates and build-only tools
    /// (libbpf-cargo compiles the BPF, it does not ship) are not.
    #[test]
    fn shipped_crates_follow_the_dependency_graph() {
        let crates = shipped_crates().unwrap();
        let names: BTreeSet<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        for want in ["libbpf-rs", "libbpf-sys", "blazesym", "clap", "serde_json", "btf-rs"] {
            assert!(names.contains(want), "{want} missing from {names:?}");
        }
        for not in ["kdiag-shared", "irqoff", "libbpf-cargo", "kdiag-testkit", "xtask"] {
            assert!(!names.contains(not), "{not} listed: {names:?}");
        }
        assert!(crates.iter().all(|c| !c.license.is_empty()), "{crates:?}");
    }

    #[test]
    fn vendored_c_licenses_are_found() {
        let crates = shipped_crates().unwrap();
        let sys = crates.iter().find(|c| c.name == "libbpf-sys").unwrap();
        let files: Vec<String> =
            license_files(&sys.dir).iter().map(|f| f.strip_prefix(&sys.dir).unwrap().display().to_string()).collect();
        assert!(files.iter().any(|f| f.starts_with("libbpf/LICENSE")), "{files:?}");
        assert!(files.iter().any(|f| f.starts_with("zlib/")), "{files:?}");
        assert!(files.iter().any(|f| f.starts_with("elfutils/COPYING")), "{files:?}");
    }
}

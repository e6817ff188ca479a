//! apt for the guest kernels' packages: either the host's own sources, or
//! other Debian suites (Debian 11's for 5.10) read through a configuration
//! private to target/vmtest/apt/, so the host's sources and package lists
//! are never touched. The private sources use the mirrors the host's
//! sources use, as `apt-cache policy` names them.

use super::run_quiet;
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The keyring every Debian release is signed with (package
/// debian-archive-keyring, on every Debian system).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub struct Apt {
    /// `-o` settings given to every apt command; none for the host's apt.
    opts: Vec<String>,
}

/// (archive URI, suite) of each package index the host's apt reads, from
/// `apt-cache policy` lines such as
/// ` 500 http://mirror/debian-security bookworm-security/main amd64 Packages`.
fn host_archives(policy: &str) -> Vec<(String, String)> {
    policy
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let _prio = w.next()?.parse::<i32>().ok()?;
            let uri = w.next().filter(|u| u.contains("://"))?;
            let suite = w.next()?.split('/').next()?;
            Some((uri.to_string(), suite.to_string()))
        })
        .collect()
}

/// One sources.list line per suite: a security suite from the host's
/// security archive, any other from its main archive.
fn sources_list(archives: &[(String, String)], suites: &[&str]) -> Result<String> {
    let mut out = String::new();
    for suite in suites {
        let security = suite.ends_with("-security");
        let (uri, _) = archives.iter().find(|(_, s)| s.ends_with("-security") == security).ok_or_else(|| {
            anyhow!(
                "the host's apt sources have no {} archive to take {suite} from",
                if security { "security" } else { "main" }
            )
        })?;
        out.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
    }
    Ok(out)
}

impl Apt {
    pub fn host() -> Apt {
        Apt { opts: vec![] }
    }

    /// apt seeing only `suites`, configured under `root`.
    pub fn suites(root: &Path, suites: &[&str]) -> Result<Apt> {
        let dir = root.join("apt").join(suites.join("+"));
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        let parts = dir.join("sources.list.d");
        for d in [lists.join("partial"), cache.join("archives/partial"), parts.clone()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let policy = Command::new("apt-cache").arg("policy").output().context("running apt-cache policy")?;
        let text = sources_list(&host_archives(&String::from_utf8_lossy(&policy.stdout)), suites)?;
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            fs::write(&list, &text)?;
            // New sources: whatever lists were fetched before are stale.
            fs::remove_dir_all(&lists)?;
            fs::create_dir_all(lists.join("partial"))?;
        }
        let path = |p: &PathBuf| p.display().to_string();
        let opts = [
            ("Dir::Etc::SourceList", path(&list)),
            ("Dir::Etc::SourceParts", path(&parts)),
            ("Dir::State::Lists", path(&lists)),
            ("Dir::Cache", path(&cache)),
            // Downloads land in target/, which apt's own user cannot write.
            ("APT::Sandbox::User", "root".to_string()),
        ];
        Ok(Apt { opts: opts.iter().flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")]).collect() })
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.args(&self.opts);
        c
    }

    fn update(&self) -> Result<()> {
        run_quiet(self.cmd("apt-get").args(["update", "-q"]))
    }

    pub fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let out =
            self.cmd("apt-cache").args(["depends", pkg]).stderr(Stdio::null()).output().context("running apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| l.trim_start().trim_start_matches('|').strip_prefix("Depends: "))
            .map(|d| d.trim().to_string())
            .collect())
    }

    /// The concrete package a meta-package points at now.
    pub fn resolve(&self, meta: &str, prefix: &str) -> Result<String> {
        let find = || self.depends(meta).map(|d| d.into_iter().find(|p| p.starts_with(prefix)));
        if let Some(p) = find()? {
            return Ok(p);
        }
        // Lists never fetched (a fresh machine, or new private sources).
        self.update()?;
        find()?.ok_or_else(|| anyhow!("apt-cache knows no {prefix}* behind {meta}"))
    }

    fn candidate_version(&self, pkg: &str) -> Result<String> {
        let out = self.cmd("apt-cache").args(["policy", pkg]).output().context("running apt-cache policy")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_string))
            .filter(|v| v != "(none)")
            .ok_or_else(|| anyhow!("no candidate version of {pkg}"))
    }

    /// The .deb of `pkg` at its candidate version, downloaded once.
    pub fn fetch(&self, pkg: &str, debs: &Path) -> Result<PathBuf> {
        let version = self.candidate_version(pkg)?.replace(':', "%3a");
        let prefix = format!("{pkg}_{version}_");
        let cached = || -> Option<PathBuf> {
            fs::read_dir(debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
        };
        if let Some(p) = cached() {
            return Ok(p);
        }
        fs::create_dir_all(debs)?;
        eprintln!("vmtest: downloading {pkg} {version}");
        run_quiet(self.cmd("apt-get").args(["download", "-q", pkg]).current_dir(debs))
            .with_context(|| format!("apt-get download {pkg}"))?;
        match cached() {
            Some(p) => Ok(p),
            None => bail!("apt-get download {pkg} left no {prefix}*.deb in {}", debs.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_sources_follow_the_hosts_mirrors() {
        let policy = "Package files:\n 100 /var/lib/dpkg/status\n     release a=now\n \
            500 http://m.example/debian-security bookworm-security/main amd64 Packages\n     release v=12\n \
            500 http://m.example/debian bookworm-updates/main amd64 Packages\n \
            500 http://m.example/debian bookworm/main amd64 Packages\nPinned packages:\n";
        let archives = host_archives(policy);
        assert_eq!(archives.len(), 3);
        let list = sources_list(&archives, &["bullseye", "bullseye-security"]).unwrap();
        assert_eq!(
            list,
            format!(
                "deb [signed-by={KEYRING}] http://m.example/debian bullseye main\n\
                 deb [signed-by={KEYRING}] http://m.example/debian-security bullseye-security main\n"
            )
        );
        let no_security = &archives[1..];
        assert!(sources_list(no_security, &["bullseye-security"]).is_err());
    }
}

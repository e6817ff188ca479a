//! The programs fleets read our output with, run by the tests on loopback:
//! a real Prometheus server, node_exporter's textfile collector, `promtool`
//! and `go tool pprof`, all from Debian's packages, installed when missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Install the Debian packages `(program, package)` whose program is not
/// on PATH, as xtask installs the build's.
pub fn need(programs: &[(&str, &str)]) {
    let missing: Vec<&str> = programs.iter().filter(|(bin, _)| !on_path(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return;
    }
    let ok = |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success());
    assert!(ok(Command::new("apt-get").args(["update", "-q"])), "apt-get update failed");
    assert!(
        ok(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing)),
        "apt-get install {missing:?} failed"
    );
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from `addr`; the body, or None when nothing answers 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// `promtool check metrics` on `text`: its complaints, empty when none.
pub fn promtool_check(text: &str) -> String {
    need(&[("promtool", "prometheus")]);
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        said
    } else {
        format!("exit {}: {said}", out.status)
    }
}

/// A background server, killed (by its own pid) and its data removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kdiag-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Debian's Prometheus on loopback, scraping `target` every second.
pub struct Prometheus {
    server: Server,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Self {
        need(&[("prometheus", "prometheus")]);
        let dir = scratch("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kdiag\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { server: Server { child, dir }, addr };
        wait_for("prometheus", Duration::from_secs(60), || http_get(addr, "/-/ready").is_some());
        p
    }

    /// The value of an instant query that yields one number.
    pub fn query(&self, expr: &str) -> Option<f64> {
        let q: String = expr
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let body = http_get(self.addr, &format!("/api/v1/query?query={q}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Wait until Prometheus has scraped its target successfully.
    pub fn wait_until_up(&self) {
        wait_for("a successful scrape", Duration::from_secs(30), || self.query("max(up)") == Some(1.0));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.server.dir.join("log")).unwrap_or_default()
    }
}

/// Debian's node_exporter with only its textfile collector, on `dir`.
pub struct NodeExporter {
    _server: Server,
    pub addr: SocketAddr,
}

impl NodeExporter {
    pub fn start(dir: &Path) -> Self {
        need(&[("prometheus-node-exporter", "prometheus-node-exporter")]);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus-node-exporter")
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-node-exporter");
        let n = NodeExporter { _server: Server { child, dir: scratch("node-exporter") }, addr };
        wait_for("node_exporter", Duration::from_secs(30), || http_get(addr, "/metrics").is_some());
        n
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").expect("node_exporter answers")
    }
}

/// One sample as `go tool pprof -raw` prints it.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub values: Vec<i64>,
    /// Function names, leaf first.
    pub frames: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// A profile as pprof itself read it: its sample types and samples.
#[derive(Debug)]
pub struct RawProfile {
    /// `type/unit`, `[dflt]` dropped.
    pub types: Vec<String>,
    pub samples: Vec<RawSample>,
}

impl RawProfile {
    /// The total of the values of sample type `ty` (e.g. "blocked/nanoseconds").
    pub fn total(&self, ty: &str) -> i64 {
        let i = self.types.iter().position(|t| t == ty).unwrap_or_else(|| panic!("no {ty} in {:?}", self.types));
        self.samples.iter().map(|s| s.values[i]).sum()
    }
}

/// Parse `go tool pprof -raw` output: the sample type line, samples (values,
/// location ids, then a line of `key:[value]` labels), and the locations
/// (`id: 0xaddr M=n function file:line s=n`).
pub fn parse_pprof_raw(text: &str) -> RawProfile {
    let mut lines = text.lines().skip_while(|l| l.trim() != "Samples:").skip(1);
    let types: Vec<String> =
        lines.next().unwrap_or("").split_whitespace().map(|t| t.trim_end_matches("[dflt]").to_string()).collect();
    let mut ids = Vec::new();
    let mut names = std::collections::HashMap::new();
    let mut in_locations = false;
    for l in lines {
        let t = l.trim();
        if t == "Locations" {
            in_locations = true;
        } else if t == "Mappings" {
            break;
        } else if in_locations {
            let (id, rest) = t.split_once(": ").unwrap_or_else(|| panic!("location line {l:?}"));
            let rest = rest.split_once(' ').map(|(_, r)| r).unwrap_or("");
            let rest = rest.split_once(' ').map(|(_, r)| r).unwrap_or(""); // M=n
            let name = rest.rsplit_once(' ').map(|(n, _)| n).unwrap_or(rest); // s=n
            let name = name.rsplit_once(' ').map(|(n, _)| n).unwrap_or(name); // file:line
            names.insert(id.to_string(), name.to_string());
        } else if let Some((values, locs)) =
            t.split_once(':').filter(|(v, _)| v.split_whitespace().all(|n| n.parse::<i64>().is_ok()))
        {
            let values = values.split_whitespace().map(|v| v.parse().unwrap()).collect();
            ids.push((values, locs.split_whitespace().map(String::from).collect::<Vec<_>>(), vec![]));
        } else if let Some(last) = ids.last_mut() {
            for kv in t.split("] ") {
                if let Some((k, v)) = kv.split_once(":[") {
                    last.2.push((k.to_string(), v.strip_suffix(']').unwrap_or(v).to_string()));
                }
            }
        }
    }
    let samples = ids
        .into_iter()
        .map(|(values, locs, labels)| RawSample {
            values,
            frames: locs
                .iter()
                .map(|id| names.get(id).cloned().unwrap_or_else(|| panic!("no location {id}")))
                .collect(),
            labels,
        })
        .collect();
    RawProfile { types, samples }
}

/// `go tool pprof -raw FILE`: pprof's own reading of a profile. Without
/// symbolization: pprof's demangler would otherwise shorten the (already
/// demangled) Rust and C++ names for display.
pub fn pprof_raw(file: &Path) -> RawProfile {
    parse_pprof_raw(&pprof_raw_text(file))
}

fn pprof_raw_text(file: &Path) -> String {
    need(&[("go", "golang-go")]);
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw", "-symbolize=none"])
        .arg(file)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("running go tool pprof");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go tool pprof -raw {}: {err}", file.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

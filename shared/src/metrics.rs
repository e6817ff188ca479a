//! Prometheus metrics of a tool that runs as a service: `--metrics ADDR`
//! serves them on `http://ADDR/metrics` while it runs, `--metrics-file
//! FILE` rewrites a file for node_exporter's textfile collector (a
//! temporary file, then a rename, so the collector never reads half a
//! file). Both carry the Prometheus text format 0.0.4: it is what the
//! textfile collector and `promtool check metrics` parse (both reject
//! OpenMetrics' `info` type and read its `_total` samples as families of
//! their own), and every Prometheus scrapes it.
//!
//! A tool's counters live in the kernel, so the families are built afresh
//! from them each time ([`Families`]), never incremented here.

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The metrics flags of the tools that run as services; their clap ids
/// are prefixed, so a tool's own `--interval` or `--file` stays its own.
#[derive(clap::Args, Clone, Debug)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics while running
    /// (IP:PORT, e.g. 127.0.0.1:9860, or :9860 for every address). At exit the
    /// final counts wait up to 5 s for one last scrape.
    #[arg(id = "metrics_addr", long = "metrics", value_name = "ADDR", value_parser = parse_addr)]
    pub addr: Option<SocketAddr>,

    /// Rewrite FILE (a *.prom file in node_exporter's textfile directory)
    /// with the same metrics every --metrics-interval, and at exit.
    #[arg(id = "metrics_file", long = "metrics-file", value_name = "FILE", value_parser = parse_prom_path)]
    pub file: Option<PathBuf>,

    /// How often --metrics-file is rewritten (15, 30s, 1m).
    #[arg(id = "metrics_interval", long = "metrics-interval", value_name = "INTERVAL", default_value = "15s",
          value_parser = crate::runctl::parse_duration)]
    pub interval: Duration,
}

/// `ip:port`, `[v6]:port`, or `:port` for every address (as
/// node_exporter's --web.listen-address takes it). No host names: a
/// listening address is an interface's, and resolving names would link
/// musl's DNS resolver into every tool.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().map_err(|_| format!("'{s}' is not an address to listen on (e.g. 127.0.0.1:9860 or :9860)"))
}

fn parse_prom_path(s: &str) -> Result<PathBuf, String> {
    if !s.ends_with(".prom") {
        return Err(format!("'{s}' must end in .prom: node_exporter's textfile collector reads only *.prom"));
    }
    Ok(PathBuf::from(s))
}

/// Metric families assembled from a tool's counters for one exposition.
#[derive(Default)]
pub struct Families {
    list: Vec<MetricFamily>,
}

pub type Labels<'a> = &'a [(&'a str, String)];

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let i = match self.list.iter().position(|f| f.name() == name) {
            Some(i) => i,
            None => {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(kind);
                self.list.push(f);
                self.list.len() - 1
            }
        };
        assert_eq!(self.list[i].get_field_type(), kind, "{name} used with two types");
        &mut self.list[i]
    }

    fn push(&mut self, name: &str, help: &str, kind: MetricType, labels: Labels, mut m: Metric) {
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.clone());
                    l
                })
                .collect(),
        );
        self.family(name, help, kind).mut_metric().push(m);
    }

    /// A counter: `name` must end in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels, value: u64) {
        debug_assert!(name.ends_with("_total"), "{name}");
        let mut c = Counter::default();
        c.set_value(value as f64);
        let mut m = Metric::default();
        m.set_counter(c);
        self.push(name, help, MetricType::COUNTER, labels, m);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels, value: f64) {
        self.push(name, help, MetricType::GAUGE, labels, Metric::from_gauge(gauge(value)));
    }

    /// A histogram from counts already bucketed: `buckets` are (upper
    /// bound, cumulative count), ascending; +Inf is `count`.
    pub fn histogram(&mut self, name: &str, help: &str, labels: Labels, buckets: &[(f64, u64)], count: u64, sum: f64) {
        let mut h = Histogram::default();
        h.set_bucket(
            buckets
                .iter()
                .map(|&(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        let mut m = Metric::default();
        m.set_histogram(h);
        self.push(name, help, MetricType::HISTOGRAM, labels, m);
    }

    /// The text exposition; families with no samples are left out.
    pub fn encode(&self) -> String {
        let list: Vec<MetricFamily> = self.list.iter().filter(|f| !f.get_metric().is_empty()).cloned().collect();
        prometheus::TextEncoder::new().encode_to_string(&list).expect("families are named and non-empty")
    }
}

fn gauge(value: f64) -> Gauge {
    let mut g = Gauge::default();
    g.set_value(value);
    g
}

/// Cumulative exponential buckets from log2 slots as the BPF side counts
/// them (slot k holds whole units in [2^k, 2^(k+1)); slot 0 holds 0 and
/// 1): bucket k's upper bound is 2^(k+1) units times `unit` (e.g. 1e-6
/// for microseconds into seconds), for slots `first..=last`; later slots
/// only reach +Inf. A value counted in slot k is below 2^(k+1) units, so
/// each bucket holds exactly what `le` promises.
pub fn exp2_buckets(slots: &[u64], first: usize, last: usize, unit: f64) -> Vec<(f64, u64)> {
    let mut cumulative: u64 = slots.iter().take(first).sum();
    (first..=last)
        .map(|k| {
            cumulative += slots.get(k).copied().unwrap_or(0);
            ((1u64 << (k + 1)) as f64 * unit, cumulative)
        })
        .collect()
}

/// The longest a finished run waits for a last scrape of its final counts.
const LAST_SCRAPE_WAIT: Duration = Duration::from_secs(5);
/// The served text is refreshed at most this often.
const REFRESH: Duration = Duration::from_millis(200);

/// Where a tool's metrics go: an HTTP endpoint, a textfile, both or none.
pub struct Exporter {
    addr: Option<SocketAddr>,
    server: Option<Arc<Served>>,
    file: Option<PathBuf>,
    interval: Duration,
    next_file: Instant,
    next_refresh: Instant,
    file_failing: bool,
}

/// What the HTTP thread serves, and when it was last asked.
#[derive(Default)]
struct Served {
    state: Mutex<ServedState>,
    scraped: Condvar,
}

#[derive(Default)]
struct ServedState {
    body: String,
    scrapes: u64,
    last: Option<Instant>,
    /// Time between the last two scrapes: the scraper's interval.
    gap: Option<Duration>,
}

impl Exporter {
    /// Bind the address and prove the file can be written, before the tool
    /// loads anything: an address in use or an unwritable directory is the
    /// user's to fix, in one line, with nothing left behind.
    pub fn start(args: &MetricsArgs) -> anyhow::Result<Self> {
        let mut bound = None;
        let server = match args.addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen there: {e}"))?;
                // Port 0 asks the kernel for one: say which.
                bound = listener.local_addr().ok();
                let served = Arc::new(Served::default());
                let s = served.clone();
                std::thread::Builder::new()
                    .name("metrics".into())
                    .spawn(move || serve(listener, &s))
                    .map_err(|e| anyhow::anyhow!("starting the metrics thread: {e}"))?;
                Some(served)
            }
            None => None,
        };
        if let Some(path) = &args.file {
            write_atomically(path, "")
                .map_err(|e| anyhow::anyhow!("--metrics-file {}: cannot write it: {e}", path.display()))?;
        }
        let now = Instant::now();
        Ok(Exporter {
            addr: bound,
            server,
            file: args.file.clone(),
            interval: args.interval,
            next_file: now,
            next_refresh: now,
            file_failing: false,
        })
    }

    /// Whether anyone asked for metrics: tools skip building them if not.
    pub fn wanted(&self) -> bool {
        self.server.is_some() || self.file.is_some()
    }

    /// For the banner: where the metrics go, e.g. ", metrics on
    /// http://127.0.0.1:9860/metrics"; empty when nowhere.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(a) = self.addr {
            out += &format!(", metrics on http://{a}/metrics");
        }
        if let Some(p) = &self.file {
            out += &format!(", metrics every {} into {}", humantime::format_duration(self.interval), p.display());
        }
        out
    }

    /// Called from the tool's loop: `render` runs only when the served
    /// text is due for a refresh or the file for a rewrite.
    pub fn update(&mut self, render: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
        let now = Instant::now();
        let file_due = self.file.is_some() && now >= self.next_file;
        let served_due = self.server.is_some() && now >= self.next_refresh;
        if !file_due && !served_due {
            return Ok(());
        }
        let text = render()?;
        if served_due {
            self.publish(text.clone());
            self.next_refresh = now + REFRESH;
        }
        if file_due {
            self.write_file(&text);
            self.next_file = now + self.interval;
        }
        Ok(())
    }

    /// The final counts, as the tool's summary has them: into the file,
    /// and to the endpoint, which waits (at most [`LAST_SCRAPE_WAIT`]) for
    /// its scraper's next visit so the last increments are not lost.
    pub fn finish(mut self, text: String) {
        self.write_file(&text);
        let Some(served) = self.server.take() else { return };
        let mut st = served.state.lock().unwrap_or_else(|e| e.into_inner());
        st.body = text;
        let (Some(last), Some(gap)) = (st.last, st.gap) else { return };
        let deadline = (last + gap + gap / 2).min(Instant::now() + LAST_SCRAPE_WAIT);
        let seen = st.scrapes;
        while st.scrapes == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = served.scraped.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn publish(&self, text: String) {
        if let Some(s) = &self.server {
            s.state.lock().unwrap_or_else(|e| e.into_inner()).body = text;
        }
    }

    /// A failed rewrite (disk full) must not end a long-running diagnosis:
    /// say so once, keep running, say when it works again.
    fn write_file(&mut self, text: &str) {
        let Some(path) = &self.file else { return };
        match write_atomically(path, text) {
            Ok(()) if self.file_failing => {
                crate::say!("--metrics-file {}: written again", path.display());
                self.file_failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.file_failing => {
                crate::warning!("--metrics-file {}: {e}; will retry", path.display());
                self.file_failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Write `FILE.tmp` (which the collector ignores: it is not *.prom), then
/// rename it over FILE.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let res = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn serve(listener: TcpListener, served: &Served) {
    for conn in listener.incoming().flatten() {
        // One scrape at a time: a scraper that stalls holds the next one
        // up for at most the timeouts, and no client can make us spawn.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        if answer(conn, served).unwrap_or(false) {
            let mut st = served.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            st.gap = st.last.map(|l| now - l);
            st.last = Some(now);
            st.scrapes += 1;
            served.scraped.notify_all();
        }
    }
}

/// Answer one HTTP request; true if it was a scrape of /metrics.
fn answer(mut conn: TcpStream, served: &Served) -> std::io::Result<bool> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = served.state.lock().unwrap_or_else(|e| e.into_inner()).body.clone();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET" | "HEAD", "/") => ("200 OK", "text/plain; charset=utf-8", "metrics at /metrics\n".to_string()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_string()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&out)?;
    Ok(status.starts_with("200") && path == "/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        m: MetricsArgs,
    }

    fn parse(args: &[&str]) -> Result<MetricsArgs, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.m).map_err(|e| e.to_string())
    }

    #[test]
    fn addresses_and_files() {
        assert_eq!(parse(&["--metrics", "127.0.0.1:9860"]).unwrap().addr, Some("127.0.0.1:9860".parse().unwrap()));
        assert_eq!(parse(&["--metrics", ":9860"]).unwrap().addr, Some("0.0.0.0:9860".parse().unwrap()));
        assert_eq!(parse(&["--metrics", "[::1]:9"]).unwrap().addr, Some("[::1]:9".parse().unwrap()));
        for bad in ["9860", "localhost:9860", "1.2.3.4:99999", "nowhere.invalid:1"] {
            let e = parse(&["--metrics", bad]).unwrap_err();
            assert!(e.contains("is not an address to listen on"), "{bad}: {e}");
        }
        assert!(parse(&["--metrics-file", "/x/irqoff.txt"]).unwrap_err().contains("must end in .prom"));
        assert_eq!(parse(&[]).unwrap().interval, Duration::from_secs(15));
    }

    #[test]
    fn text_format_names_types_and_buckets() {
        let mut f = Families::default();
        f.counter("kd_things_total", "Things.", &[("cpu", "0".into())], 3);
        f.counter("kd_things_total", "Things.", &[("cpu", "1".into())], 4);
        f.gauge("kd_info", "What runs.", &[("mode", "sw".into())], 1.0);
        let slots = [0, 0, 0, 2, 1, 0, 7];
        f.histogram("kd_len_seconds", "Lengths.", &[], &exp2_buckets(&slots, 3, 4, 1e-6), 10, 0.25);
        assert_eq!(
            f.encode(),
            "# HELP kd_things_total Things.\n# TYPE kd_things_total counter\n\
             kd_things_total{cpu=\"0\"} 3\nkd_things_total{cpu=\"1\"} 4\n\
             # HELP kd_info What runs.\n# TYPE kd_info gauge\nkd_info{mode=\"sw\"} 1\n\
             # HELP kd_len_seconds Lengths.\n# TYPE kd_len_seconds histogram\n\
             kd_len_seconds_bucket{le=\"0.000016\"} 2\nkd_len_seconds_bucket{le=\"0.000032\"} 3\n\
             kd_len_seconds_bucket{le=\"+Inf\"} 10\nkd_len_seconds_sum 0.25\nkd_len_seconds_count 10\n"
        );
    }

    #[test]
    fn buckets_below_the_first_are_counted_in_it() {
        assert_eq!(exp2_buckets(&[1, 1, 1], 1, 2, 1.0), vec![(4.0, 2), (8.0, 3)]);
    }

    fn scrape(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    fn args(addr: &str, file: Option<PathBuf>) -> MetricsArgs {
        MetricsArgs { addr: Some(addr.parse().unwrap()), file, interval: Duration::from_secs(3600) }
    }

    #[test]
    fn serves_the_latest_text_and_refuses_a_taken_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Exporter::start(&args(&addr.to_string(), None)).err().unwrap();
        assert!(e.to_string().contains("cannot listen there"), "{e}");
        drop(taken);
        let mut ex = Exporter::start(&args(&addr.to_string(), None)).unwrap();
        assert_eq!(ex.describe(), format!(", metrics on http://{addr}/metrics"));
        ex.update(|| Ok("a_total 1\n".into())).unwrap();
        let r = scrape(addr, "/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\na_total 1\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(scrape(addr, "/nothing").starts_with("HTTP/1.1 404"));
        ex.finish("a_total 2\n".into());
        assert!(scrape(addr, "/metrics").ends_with("a_total 2\n"));
    }

    #[test]
    fn the_file_is_replaced_whole_and_a_bad_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("kdiag-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.prom");
        let mut a = args("127.0.0.1:0", Some(path.clone()));
        a.addr = None;
        let mut ex = Exporter::start(&a).unwrap();
        ex.update(|| Ok("a_total 1\n".into())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a_total 1\n");
        ex.update(|| unreachable!("not due before the interval")).unwrap();
        ex.finish("a_total 2\n".into());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a_total 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["t.prom"], "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
        a.file = Some(dir.join("t.prom"));
        let e = Exporter::start(&a).err().unwrap();
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

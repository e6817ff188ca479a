//! Where a tool's report goes and how time is written in it: text for
//! people, JSON Lines for machines, a log file that is appended to and
//! never truncated, BPF monotonic timestamps turned into wall-clock time.

use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, sampled once.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl WallClock {
    pub fn new() -> Self {
        WallClock { offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC) }
    }

    #[cfg(test)]
    fn with_offset(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    /// Monotonic nanoseconds now, on the clock BPF programs read.
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// `2022-05-05_11:45:19`, local time: the TIME column of SysAK's tools.
pub fn sysak_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as _;
    // SAFETY: tm is plain data; localtime_r fills it from secs.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}_{:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// RFC 3339 in UTC with microseconds: the `time` field of JSON output.
pub fn json_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The destination of a tool's report: stdout, or a log file opened for
/// appending so that a second run never destroys the first run's findings.
pub struct Sink {
    out: Box<dyn Write>,
    path: Option<PathBuf>,
}

impl Sink {
    pub fn stdout() -> Self {
        Sink { out: Box::new(io::stdout()), path: None }
    }

    /// Open `path` for appending, creating it if needed.
    pub fn append(path: &Path) -> anyhow::Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
        Ok(Sink { out: Box::new(f), path: Some(path.to_path_buf()) })
    }

    /// Stdout unless a log file was given.
    pub fn from_option(path: Option<&Path>) -> anyhow::Result<Self> {
        path.map_or_else(|| Ok(Sink::stdout()), Sink::append)
    }

    pub fn is_file(&self) -> bool {
        self.path.is_some()
    }

    /// Write a block of text and flush it, so `tail -f` sees every event
    /// as it happens and nothing is lost if the tool is killed.
    pub fn text(&mut self, s: &str) -> io::Result<()> {
        self.out.write_all(s.as_bytes())?;
        self.out.flush()
    }

    /// Write one JSON object on one line.
    pub fn json<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        let mut line = serde_json::to_string(v).map_err(io::Error::other)?;
        line.push('\n');
        self.text(&line)
    }
}

/// Text on stdout, flushed.
pub fn stdout_text(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_to_wall_clock() {
        let c = WallClock::with_offset(1_700_000_000_000_000_000);
        let t = c.to_system_time(5_000_000_000);
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_700_000_005);
        assert_eq!(json_time(t), "2023-11-14T22:13:25.000000Z");
    }

    #[test]
    fn real_clock_agrees_with_system_time() {
        let c = WallClock::new();
        let now = c.to_system_time(WallClock::monotonic_now());
        let diff = now.duration_since(SystemTime::now()).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(100), "{diff:?}");
    }

    #[test]
    fn sysak_time_layout() {
        let s = sysak_time(SystemTime::now());
        assert_eq!(s.len(), 19, "{s}");
        assert_eq!(&s[10..11], "_");
    }

    #[test]
    fn log_file_is_appended_not_truncated() {
        let path = std::env::temp_dir().join(format!("kdiag-sink-{}.log", std::process::id()));
        std::fs::write(&path, "earlier run\n").unwrap();
        let mut s = Sink::append(&path).unwrap();
        assert!(s.is_file());
        s.json(&serde_json::json!({"lat_us": 12})).unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier run\n{\"lat_us\":12}\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unwritable_log_is_one_clear_line() {
        let e = Sink::append(Path::new("/nonexistent-dir/x.log")).err().unwrap().to_string();
        assert!(e.starts_with("cannot open log file /nonexistent-dir/x.log: "), "{e}");
        assert!(!e.contains('\n'));
    }
}

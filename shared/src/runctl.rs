//! Run control: how long a tool runs and why it stopped. Ctrl-C, SIGTERM
//! and SIGHUP only raise a flag; the tool's loop sees it within one poll
//! timeout, prints its summary and drops everything it attached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parse the positional duration: a bare number is seconds (as in bcc and
/// SysAK), anything else is humantime (`90s`, `5m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration '{s}': {e} (use seconds, or e.g. 90s, 5m)"))?,
    };
    if d.is_zero() {
        return Err(format!("invalid duration '{s}': must be longer than zero"));
    }
    Ok(d)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    DurationEnded,
    Signal(&'static str),
    /// The tool's own reason, e.g. the traced process exited.
    Other(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::DurationEnded => f.write_str("duration ended"),
            StopReason::Signal(s) => write!(f, "{s} received"),
            StopReason::Other(s) => f.write_str(s),
        }
    }
}

const SIGNALS: [(i32, &str); 3] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")];

pub struct RunControl {
    signal: Arc<AtomicUsize>,
    deadline: Option<Instant>,
    started: Instant,
}

impl RunControl {
    /// Start the clock and take over SIGINT, SIGTERM and SIGHUP. Call it
    /// before printing the banner: users and tests take the banner as the
    /// sign that the tool is running and can be stopped cleanly.
    pub fn start(duration: Option<Duration>) -> std::io::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        for (sig, _) in SIGNALS {
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
        }
        let started = Instant::now();
        Ok(RunControl { signal, deadline: duration.map(|d| started + d), started })
    }

    /// Why the run should stop now, if it should.
    pub fn stop_reason(&self) -> Option<StopReason> {
        let sig = self.signal.load(Ordering::Relaxed) as i32;
        if let Some((_, name)) = SIGNALS.iter().find(|(s, _)| *s == sig) {
            return Some(StopReason::Signal(name));
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Some(StopReason::DurationEnded),
            _ => None,
        }
    }

    /// How long the next poll may block: `max`, or less near the deadline.
    pub fn poll_timeout(&self, max: Duration) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(max),
            None => max,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0").unwrap_err().contains("longer than zero"));
        assert!(parse_duration("-5").unwrap_err().starts_with("invalid duration '-5'"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn deadline_and_timeout() {
        let rc = RunControl::start(Some(Duration::from_millis(50))).unwrap();
        assert_eq!(rc.stop_reason(), None);
        assert!(rc.poll_timeout(Duration::from_secs(1)) <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(rc.stop_reason(), Some(StopReason::DurationEnded));
        assert_eq!(rc.poll_timeout(Duration::from_secs(1)), Duration::ZERO);
    }
}

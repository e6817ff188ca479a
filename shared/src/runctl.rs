//! Run control: how long a tool runs and why it stopped. Ctrl-C, SIGTERM
//! and SIGHUP only raise a flag, from the first instruction of `main` on;
//! start-up checks it between steps, the run's loop within one poll
//! timeout, and either way everything attached is dropped.

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
    /// Whoever read our stdout went away (`| head`): stop without a word.
    ReaderGone,
    /// The tool's own reason, e.g. the traced process exited.
    Other(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::DurationEnded => f.write_str("duration ended"),
            StopReason::Signal(s) => write!(f, "{s} received"),
            StopReason::ReaderGone => f.write_str("the reader of stdout went away"),
            StopReason::Other(s) => f.write_str(s),
        }
    }
}

const SIGNALS: [(i32, &str); 3] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")];

/// The stop signals, taken over as the first thing a tool does: from then
/// on SIGINT, SIGTERM and SIGHUP only raise this flag. SIGINT is taken
/// even when it was inherited ignored (a job started in the background by
/// a script), as perf and bpftrace do: a tool that holds kernel probes
/// must always be stoppable the way it says in its banner.
#[derive(Clone)]
pub struct Stop {
    signal: Arc<AtomicUsize>,
}

impl Stop {
    pub fn install() -> std::io::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        for (sig, _) in SIGNALS {
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
        }
        Ok(Stop { signal })
    }

    /// The name of the stop signal received, if one was.
    pub fn signal(&self) -> Option<&'static str> {
        let sig = self.signal.load(Ordering::Relaxed) as i32;
        SIGNALS.iter().find(|(s, _)| *s == sig).map(|(_, name)| *name)
    }
}

/// `fd` is a pipe or socket whose reader is gone. poll() reports POLLERR
/// (pipe) or POLLHUP (socket) on it without our asking; a terminal or a
/// file never does.
fn reader_gone(fd: i32) -> bool {
    // SAFETY: stat is plain data; fstat fills it, or fails on a closed fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return false;
    }
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// A run that has started: its clock, its deadline, and why it stops.
pub struct RunControl {
    stop: Stop,
    deadline: Option<Instant>,
    started: Instant,
}

impl RunControl {
    /// Start the clock. Call it once attached, before printing the banner:
    /// users and tests take the banner as the sign that the tool is
    /// running and can be stopped cleanly.
    pub fn start(stop: &Stop, duration: Option<Duration>) -> Self {
        let started = Instant::now();
        RunControl { stop: stop.clone(), deadline: duration.map(|d| started + d), started }
    }

    /// Why the run should stop now, if it should.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if let Some(name) = self.stop.signal() {
            return Some(StopReason::Signal(name));
        }
        if reader_gone(1) {
            return Some(StopReason::ReaderGone);
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
        let rc = RunControl::start(&Stop::install().unwrap(), Some(Duration::from_millis(50)));
        assert_eq!(rc.stop_reason(), None);
        assert!(rc.poll_timeout(Duration::from_secs(1)) <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(rc.stop_reason(), Some(StopReason::DurationEnded));
        assert_eq!(rc.poll_timeout(Duration::from_secs(1)), Duration::ZERO);
    }

    /// A pipe whose reading end is closed is a reader gone; an open one
    /// or a file is not.
    #[test]
    fn a_closed_pipe_is_a_reader_gone() {
        let mut fds = [0; 2];
        // SAFETY: plain pipe/close on fds this test owns.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let open = reader_gone(fds[1]);
            libc::close(fds[0]);
            let closed = reader_gone(fds[1]);
            libc::close(fds[1]);
            assert!(!open && closed, "open {open} closed {closed}");
        }
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!reader_gone(std::os::fd::AsRawFd::as_raw_fd(&f)));
    }
}

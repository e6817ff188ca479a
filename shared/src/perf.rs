//! perf_event_open per CPU, the hardware-to-software fallback, and
//! attaching BPF programs with `PERF_EVENT_IOC_SET_BPF`.
//!
//! A BPF program attached this way lives exactly as long as the perf fd:
//! dropping a [`PerfEvent`] closes the fd and detaches the program, so a
//! tool that drops its events leaves nothing behind in the kernel.

use crate::backend::ProbeError;
use crate::Errno;
use perf_event_open_sys as sys;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Which counter drives the program, with its sampling period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSpec {
    /// `cycles`, delivered as an NMI: fires even while interrupts are off.
    /// The period is in CPU cycles, not nanoseconds.
    HwCycles { period_cycles: u64 },
    /// `cpu-clock`, an hrtimer: fires only when interrupts are on.
    SwCpuClock { period_ns: u64 },
}

impl EventSpec {
    pub fn is_hw(&self) -> bool {
        matches!(self, EventSpec::HwCycles { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            EventSpec::HwCycles { .. } => "cycles",
            EventSpec::SwCpuClock { .. } => "cpu-clock",
        }
    }

    fn attr(&self) -> sys::bindings::perf_event_attr {
        // SAFETY: perf_event_attr is plain old data; all-zero is its documented default.
        let mut attr: sys::bindings::perf_event_attr = unsafe { std::mem::zeroed() };
        attr.size = std::mem::size_of::<sys::bindings::perf_event_attr>() as u32;
        match *self {
            EventSpec::HwCycles { period_cycles } => {
                attr.type_ = sys::bindings::PERF_TYPE_HARDWARE;
                attr.config = sys::bindings::PERF_COUNT_HW_CPU_CYCLES as u64;
                attr.__bindgen_anon_1.sample_period = period_cycles;
                // The NMI watchdog holds a counter too; multiplexing would
                // silently skip our NMIs, so insist on a dedicated one.
                attr.set_pinned(1);
            }
            EventSpec::SwCpuClock { period_ns } => {
                attr.type_ = sys::bindings::PERF_TYPE_SOFTWARE;
                attr.config = sys::bindings::PERF_COUNT_SW_CPU_CLOCK as u64;
                attr.__bindgen_anon_1.sample_period = period_ns;
            }
        }
        // Idle time must be sampled too, or every idle stretch would look
        // like a missed tick.
        attr.set_exclude_idle(0);
        attr.set_disabled(1);
        attr
    }
}

/// Why opening an event failed, in the terms a tool must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenFailure {
    /// The event does not exist here (no PMU, typical in VMs): fall back.
    Unsupported,
    /// We may not open it: a privilege problem, never a reason to fall back.
    Privilege,
    /// Anything else (EBUSY, EINVAL, EMFILE...): report it as is.
    Other,
}

/// The fallback decision table: which errno means "no such hardware".
pub fn classify(errno: i32) -> OpenFailure {
    match errno {
        libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::EOPNOTSUPP => OpenFailure::Unsupported,
        libc::EACCES | libc::EPERM => OpenFailure::Privilege,
        _ => OpenFailure::Other,
    }
}

/// A failed open on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenError {
    pub event: &'static str,
    pub cpu: u32,
    pub errno: Errno,
}

impl OpenError {
    pub fn failure(&self) -> OpenFailure {
        classify(self.errno.0)
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.failure() {
            OpenFailure::Unsupported => " (no PMU for it on this machine)",
            OpenFailure::Privilege => {
                " (not permitted: run as root, or with CAP_PERFMON; check kernel.perf_event_paranoid)"
            }
            OpenFailure::Other => "",
        };
        write!(f, "perf event {} on CPU {}: {}{}", self.event, self.cpu, self.errno, why)
    }
}

impl std::error::Error for OpenError {}

/// One open perf event on one CPU. Closing it detaches its BPF program.
#[derive(Debug)]
pub struct PerfEvent {
    pub cpu: u32,
    fd: OwnedFd,
}

impl PerfEvent {
    /// Open `spec` system-wide on `cpu`, disabled until [`attach_bpf`](Self::attach_bpf).
    pub fn open(spec: EventSpec, cpu: u32) -> Result<Self, OpenError> {
        let mut attr = spec.attr();
        // SAFETY: attr is a valid, fully initialised perf_event_attr.
        let fd =
            unsafe { sys::perf_event_open(&mut attr, -1, cpu as i32, -1, sys::bindings::PERF_FLAG_FD_CLOEXEC as _) };
        if fd < 0 {
            return Err(OpenError { event: spec.name(), cpu, errno: Errno::last() });
        }
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        Ok(PerfEvent { cpu, fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Run `prog_fd` at each overflow, then start counting.
    pub fn attach_bpf(&self, prog_fd: RawFd) -> Result<(), Errno> {
        // SAFETY: both fds are valid for the duration of the calls.
        unsafe {
            if sys::ioctls::SET_BPF(self.fd.as_raw_fd(), prog_fd as u32) < 0 {
                return Err(Errno::last());
            }
            if sys::ioctls::ENABLE(self.fd.as_raw_fd(), 0) < 0 {
                return Err(Errno::last());
            }
        }
        Ok(())
    }
}

impl AsRawFd for PerfEvent {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Open one event per CPU with `open`. All or nothing: if any CPU fails,
/// every event already opened is closed before the error is returned, so a
/// fallback never runs beside half of the first attempt.
pub fn open_on_cpus<T, F>(cpus: &[u32], mut open: F) -> Result<Vec<T>, OpenError>
where
    F: FnMut(u32) -> Result<T, OpenError>,
{
    let mut opened = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        match open(cpu) {
            Ok(ev) => opened.push(ev),
            Err(e) => {
                drop(opened);
                return Err(e);
            }
        }
    }
    Ok(opened)
}

/// Open `spec` on every CPU in `cpus` and attach `prog_fd` to each.
/// On any failure nothing stays open or attached.
pub fn open_and_attach(spec: EventSpec, cpus: &[u32], prog_fd: RawFd) -> Result<Vec<PerfEvent>, OpenError> {
    let events = open_on_cpus(cpus, |cpu| PerfEvent::open(spec, cpu))?;
    for ev in &events {
        ev.attach_bpf(prog_fd).map_err(|errno| OpenError { event: spec.name(), cpu: ev.cpu, errno })?;
    }
    Ok(events)
}

impl From<OpenError> for ProbeError {
    /// Only a missing event lets the backend ladder move on to the next
    /// rung; a privilege problem must stop the tool with its own message.
    fn from(e: OpenError) -> Self {
        match e.failure() {
            OpenFailure::Unsupported => ProbeError::Unavailable(e.to_string()),
            OpenFailure::Privilege | OpenFailure::Other => ProbeError::Fatal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn err(errno: i32) -> OpenError {
        OpenError { event: "cycles", cpu: 1, errno: Errno(errno) }
    }

    #[test]
    fn decision_table() {
        for e in [libc::ENOENT, libc::ENODEV, libc::ENXIO, libc::EOPNOTSUPP] {
            assert_eq!(classify(e), OpenFailure::Unsupported, "{}", Errno(e));
        }
        for e in [libc::EACCES, libc::EPERM] {
            assert_eq!(classify(e), OpenFailure::Privilege, "{}", Errno(e));
        }
        for e in [libc::EBUSY, libc::EINVAL, libc::EMFILE] {
            assert_eq!(classify(e), OpenFailure::Other, "{}", Errno(e));
        }
    }

    #[test]
    fn only_missing_hardware_lets_the_ladder_move_on() {
        assert!(matches!(ProbeError::from(err(libc::ENOENT)), ProbeError::Unavailable(_)));
        match ProbeError::from(err(libc::EACCES)) {
            ProbeError::Fatal(m) => assert!(m.contains("not permitted"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ProbeError::from(err(libc::EBUSY)), ProbeError::Fatal(_)));
        assert!(err(libc::ENOENT).to_string().contains("no PMU"));
    }

    /// Succeed on CPUs 0 and 1, fail on CPU 2: what was opened for 0 and 1
    /// must be dropped (closed, detached) by the time the error comes back.
    #[test]
    fn partial_failure_closes_what_was_opened() {
        struct Ev(Rc<RefCell<Vec<u32>>>, u32);
        impl Drop for Ev {
            fn drop(&mut self) {
                self.0.borrow_mut().push(self.1);
            }
        }
        let closed = Rc::new(RefCell::new(Vec::new()));
        let res = open_on_cpus(&[0, 1, 2, 3], |cpu| {
            if cpu == 2 {
                assert!(closed.borrow().is_empty(), "closed before the failure");
                return Err(OpenError { event: "cycles", cpu, errno: Errno(libc::ENOENT) });
            }
            assert!(cpu < 2, "kept opening after a failure");
            Ok(Ev(closed.clone(), cpu))
        });
        assert_eq!(res.map(|v| v.len()).unwrap_err().cpu, 2);
        assert_eq!(*closed.borrow(), vec![0, 1]);
    }

    /// The real syscall on this machine: software cpu-clock opens on CPU 0,
    /// disabled, and once enabled counts CPU 0's time (idle included), as
    /// the count read back from the kernel shows.
    #[test]
    fn software_event_opens() {
        kdiag_testkit::needs_root("opens a perf event on a whole CPU");
        let ev = PerfEvent::open(EventSpec::SwCpuClock { period_ns: 1_000_000 }, 0).unwrap();
        let count = || {
            let mut ns = 0u64;
            // SAFETY: reads 8 bytes into a u64 from our own perf fd.
            let n = unsafe { libc::read(ev.as_raw_fd(), (&mut ns as *mut u64).cast(), 8) };
            assert_eq!(n, 8, "{}", std::io::Error::last_os_error());
            ns
        };
        assert_eq!(count(), 0, "counting before it was enabled");
        // SAFETY: ioctl on our own perf fd, no argument.
        assert_eq!(unsafe { sys::ioctls::ENABLE(ev.as_raw_fd(), 0) }, 0);
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (ns, wall) = (count(), start.elapsed().as_nanos() as u64);
        assert!(ns > 20_000_000 && ns <= wall + 5_000_000, "cpu-clock counted {ns} ns in {wall} ns");
    }
}

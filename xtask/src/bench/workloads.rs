//! What each tool is measured against: a small, steady stream of exactly
//! the events that tool traces, made by threads of this process (so `-p`
//! names it). Each workload runs for a while and reports its own cost per
//! operation, with and without the tool: the difference is what the tool
//! costs the traced program per event, as that program feels it.

use super::disk::Disk;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pin the calling thread to `cpu`. Both ends of a ping-pong share one
/// CPU, and the tool runs on another: a wake-up then never waits for an
/// idle vCPU to come back (hundreds of microseconds on a VM), which would
/// drown what the tool adds, and the tool's own reading never competes
/// with the workload. What remains is the BPF programs' cost, paid in the
/// workload's context, which is the point.
pub fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPU the workloads run on: the last one online. (Not from
/// available_parallelism, which a pinned thread sees as 1.)
pub fn work_cpu() -> usize {
    // SAFETY: sysconf has no side effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (online.max(1) - 1) as usize
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// getppid(2) in a loop: one syscall tracepoint hit per op (funcstack).
    Getppid,
    /// Two threads bouncing one byte over a pipe pair: per op, two context
    /// switches and (both on one CPU, as the bench counts them) one
    /// sched_waking (offwaketime).
    PipePingPong,
    /// One thread waits in epoll_wait on a TCP loopback socket, the other
    /// writes to it and waits for the echo: one epoll wake-up per op
    /// (epollwake).
    EpollPingPong,
    /// 4 KiB O_DIRECT writes to a real block device (see disk.rs): one
    /// block request per op (blkreq).
    DirectWrite,
    /// Fault in and drop a transparent huge page: one order-9 allocation
    /// per op (compactwatch).
    ThpFault,
}

impl Workload {
    pub fn op(self) -> &'static str {
        match self {
            Workload::Getppid => "getppid",
            Workload::PipePingPong => "pipe round trip",
            Workload::EpollPingPong => "epoll round trip",
            Workload::DirectWrite => "4K O_DIRECT write",
            Workload::ThpFault => "2M THP fault",
        }
    }

    /// Run for `dur`: how many operations, in how long. `disk` is where
    /// DirectWrite writes.
    pub fn run(self, dur: Duration, disk: &Disk) -> std::io::Result<Ops> {
        // On a thread of its own, so only the workload is pinned.
        let (ops, elapsed) = std::thread::scope(|s| {
            let run = s.spawn(|| -> std::io::Result<(u64, Duration)> {
                pin(work_cpu());
                match self {
                    Workload::Getppid => getppid(dur),
                    Workload::PipePingPong => pipe_ping_pong(dur),
                    Workload::EpollPingPong => epoll_ping_pong(dur),
                    Workload::DirectWrite => direct_write(dur, disk),
                    Workload::ThpFault => thp_fault(dur),
                }
            });
            run.join().expect("workload thread")
        })?;
        Ok(Ops { ops, elapsed })
    }
}

/// What one run of a workload did.
#[derive(Clone, Copy, Debug)]
pub struct Ops {
    pub ops: u64,
    pub elapsed: Duration,
}

impl Ops {
    pub fn ns_per_op(self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.ops.max(1) as f64
    }
}

/// Every workload's loop: run `batch` (which does `per` operations and is
/// told how many were done before) until `dur` has passed; how many
/// operations, in how long. The first error ends the run.
fn repeat(
    dur: Duration,
    per: u64,
    mut batch: impl FnMut(u64) -> std::io::Result<()>,
) -> std::io::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < dur {
        batch(ops)?;
        ops += per;
    }
    Ok((ops, start.elapsed()))
}

fn getppid(dur: Duration) -> std::io::Result<(u64, Duration)> {
    // In thousands: the clock would cost more than the call.
    repeat(dur, 1000, |_| {
        for _ in 0..1000 {
            // SAFETY: getppid has no arguments and cannot fail.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        Ok(())
    })
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, which are owned by the Files below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// The bouncing thread ends when its pipe or socket is closed.
fn pipe_ping_pong(dur: Duration) -> std::io::Result<(u64, Duration)> {
    let (mut a_rx, mut a_tx) = pipe()?;
    let (mut b_rx, mut b_tx) = pipe()?;
    let cpu = work_cpu();
    let echo = std::thread::spawn(move || {
        pin(cpu);
        let mut byte = [0u8; 1];
        while a_rx.read_exact(&mut byte).is_ok() && b_tx.write_all(&byte).is_ok() {}
    });
    let mut byte = [0u8; 1];
    let run = repeat(dur, 1, |_| {
        a_tx.write_all(&byte)?;
        b_rx.read_exact(&mut byte)
    });
    drop(a_tx);
    let _ = echo.join();
    run
}

/// A connected TCP pair over loopback, Nagle off on both ends: the
/// echo's wake-ups then come from the network stack (softirq,
/// sock_def_readable, sock:sk_data_ready), the path epollwake ties
/// sockets to wake-ups by, and not from a unix socket it has no name for.
fn tcp_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

fn epoll_ping_pong(dur: Duration) -> std::io::Result<(u64, Duration)> {
    let (mut client, server) = tcp_pair()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let cpu = work_cpu();
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        pin(cpu);
        epoll_echo(server, &stop2)
    });
    let mut byte = [0u8; 1];
    let run = repeat(dur, 1, |_| {
        client.write_all(&byte)?;
        client.read_exact(&mut byte)
    });
    stop.store(true, Ordering::Relaxed);
    drop(client);
    let _ = echo.join();
    run
}

/// Echo every byte, waiting for each in epoll_wait: the wake-up that
/// epollwake reports. A timeout so that `stop` is seen even if the peer
/// is gone.
fn epoll_echo(mut server: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    // SAFETY: a new epoll fd, owned below.
    let ep = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
    // SAFETY: valid fds and a valid event.
    unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, server.as_raw_fd(), &mut ev) };
    let mut buf = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: one-element buffer that outlives the call.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 1, 100) };
        if n == 1 {
            if server.read(&mut buf)? == 0 {
                return Ok(());
            }
            server.write_all(&buf)?;
        }
    }
    Ok(())
}

/// Blocks rewritten in turn: enough to not hit one cached block in the
/// device, few enough to fit any disk's free space or our loop device.
const BLOCKS: u64 = 256;

fn direct_write(dur: Duration, disk: &Disk) -> std::io::Result<(u64, Duration)> {
    let f = disk.open_direct()?;
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a non-zero layout, freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: buf holds 4096 initialised bytes.
    let block = unsafe { std::slice::from_raw_parts(buf, 4096) };
    let run = repeat(dur, 1, |done| f.write_at(block, 4096 * (done % BLOCKS)).map(drop));
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    run
}

const HUGE: usize = 2 << 20;

/// Fault in one 2 MiB transparent huge page and drop it again, in a loop:
/// one order-9 allocation per op, over compactwatch's --order, so its
/// mm_page_alloc program does its whole work (a stack capture and count)
/// each time.
/// MADV_HUGEPAGE so this works with THP "madvise" as well as "always".
fn thp_fault(dur: Duration) -> std::io::Result<(u64, Duration)> {
    let len = 2 * HUGE;
    // SAFETY: a new private anonymous mapping, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // A 2 MiB-aligned 2 MiB inside the 4 MiB mapping: what a PMD maps.
    let huge = ((map as usize + HUGE - 1) & !(HUGE - 1)) as *mut libc::c_void;
    let thp_before = thp_faults();
    // SAFETY: huge..huge+HUGE lies inside the mapping.
    unsafe { libc::madvise(huge, HUGE, libc::MADV_HUGEPAGE) };
    let run = repeat(dur, 1, |_| {
        // SAFETY: as above.
        unsafe {
            std::ptr::write_volatile(huge as *mut u8, 1);
            libc::madvise(huge, HUGE, libc::MADV_DONTNEED);
        }
        Ok(())
    });
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(map, len) };
    let (ops, elapsed) = run?;
    // Otherwise each op is an order-0 fault and the row would mislead.
    if thp_faults() - thp_before < ops / 2 {
        return Err(std::io::Error::other("no huge pages: transparent_hugepage is \"never\" or memory too fragmented"));
    }
    Ok((ops, elapsed))
}

/// Huge pages allocated at a fault, system-wide, from /proc/vmstat.
fn thp_faults() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    vmstat.lines().find_map(|l| l.strip_prefix("thp_fault_alloc ")?.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each workload runs, does some operations and returns (so its echo
    /// thread ended with it).
    #[test]
    fn every_workload_runs() {
        let disk = Disk::pick().unwrap();
        for w in [Workload::Getppid, Workload::PipePingPong, Workload::EpollPingPong, Workload::DirectWrite] {
            let ns = w.run(Duration::from_millis(300), &disk).unwrap().ns_per_op();
            println!("{}: {ns:.0} ns/op", w.op());
            assert!(ns > 0.0 && ns < 100_000_000.0, "{}: {ns}", w.op());
        }
    }

    /// Where THP is on (as on the development VM), each op is a huge page.
    #[test]
    fn thp_fault_makes_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        // Our machines have THP; a test that skipped itself would pass
        // without showing anything.
        assert!(!thp.is_empty() && !thp.contains("[never]"), "no transparent huge pages: {thp}");
        let ns = thp_fault(Duration::from_millis(300)).unwrap();
        assert!(ns.0 > 0, "{ns:?}");
    }
}

//! The epoll server epollwake's tests watch, and what epollwake must
//! report about it: two worker threads, each with its own epoll instance,
//! watch one listening socket without EPOLLEXCLUSIVE (a thundering herd on
//! purpose). Shared by the host tests (tests/host.rs: the tracepoint
//! backend) and the guest tests (tests/vmtest-guest: kprobe and fentry on
//! Debian kernels), so every backend is held to the same checks.
#![allow(dead_code)] // Each user takes what it needs.

use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

pub fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Called for every ready connection; the --uprobe test traces it by a
/// glob on its demangled name, so it must stay a real function.
#[inline(never)]
pub fn on_ready_connection(fd: i32, events: u32) -> u32 {
    std::hint::black_box(fd as u32 ^ events)
}

pub struct Worker {
    pub tid: u32,
    /// The fd this worker registered the listening socket under.
    pub listen_fd: i32,
    handle: Option<JoinHandle<()>>,
}

/// The epoll server under test.
pub struct Server {
    pub addr: SocketAddr,
    pub workers: Vec<Worker>,
    stop_fd: OwnedFd,
    /// fd of the connection accepted, and the tid that accepted it.
    pub accepted: Arc<(AtomicI32, AtomicI32)>,
    _listener: std::net::TcpListener,
}

fn worker_loop(listen_fd: i32, stop_fd: i32, accepted: Arc<(AtomicI32, AtomicI32)>, ready: mpsc::Sender<u32>) {
    // SAFETY: plain epoll and socket calls on fds this test owns; the event
    // buffer outlives every call that fills it.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        for fd in [listen_fd, stop_fd] {
            let mut ev = libc::epoll_event { events: EPOLLIN, u64: fd as u64 };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev), 0);
        }
        ready.send(gettid()).unwrap();
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        'outer: loop {
            let n = libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, -1);
            for ev in evs.iter().take(n.max(0) as usize) {
                let fd = ev.u64 as i32;
                let events = ev.events;
                if fd == stop_fd {
                    break 'outer;
                } else if fd == listen_fd {
                    // One accept per event, as many servers do: the worker
                    // that loses the race gets EAGAIN.
                    let c = libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK);
                    if c >= 0 {
                        accepted.0.store(c, Ordering::SeqCst);
                        accepted.1.store(gettid() as i32, Ordering::SeqCst);
                        let mut cev = libc::epoll_event { events: EPOLLIN | EPOLLRDHUP | EPOLLET, u64: c as u64 };
                        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut cev), 0);
                    }
                } else {
                    on_ready_connection(fd, events);
                    let mut buf = [0u8; 256];
                    loop {
                        let r = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                        if r == 0 {
                            libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
                            libc::close(fd);
                            break;
                        }
                        if r < 0 {
                            break;
                        }
                    }
                }
            }
        }
        libc::close(ep);
    }
}

impl Server {
    pub fn start(bind: &str) -> Server {
        let listener = std::net::TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        // SAFETY: eventfd returns a new fd that we own.
        let stop_fd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        let accepted = Arc::new((AtomicI32::new(-1), AtomicI32::new(-1)));
        let lfd = listener.as_raw_fd();
        // The second worker watches the same socket under another fd, as
        // the seed's Envoy workers did (fd 36 and fd 40).
        // SAFETY: dup of an fd we own.
        let lfd2 = unsafe { libc::fcntl(lfd, libc::F_DUPFD_CLOEXEC, 0) };
        let mut workers = Vec::new();
        for fd in [lfd, lfd2] {
            let (tx, rx) = mpsc::channel();
            let (sfd, acc) = (stop_fd.as_raw_fd(), accepted.clone());
            let handle = thread::Builder::new()
                .name(format!("worker_{}", workers.len()))
                .spawn(move || worker_loop(fd, sfd, acc, tx))
                .unwrap();
            let tid = rx.recv().unwrap();
            workers.push(Worker { tid, listen_fd: fd, handle: Some(handle) });
        }
        let s = Server { addr, workers, stop_fd, accepted, _listener: listener };
        s.wait_until_all_wait();
        s
    }

    /// Both workers asleep in an epoll wait: only then does a connection
    /// wake both.
    pub fn wait_until_all_wait(&self) {
        // Generous: guests run under software emulation.
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = std::process::id();
        loop {
            let all = self.workers.iter().all(|w| {
                let sc = std::fs::read_to_string(format!("/proc/{pid}/task/{}/syscall", w.tid)).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{}/stat", w.tid)).unwrap_or_default();
                let nr = sc.split_whitespace().next().unwrap_or("");
                ["232", "281", "441"].contains(&nr)
                    && stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('S'))
            });
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "workers never settled in epoll_wait");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn tid_args(&self) -> Vec<String> {
        self.workers.iter().flat_map(|w| ["-t".to_string(), w.tid.to_string()]).collect()
    }

    /// A client connects, waits, sends data, waits, closes.
    pub fn client_session(&self) -> SocketAddr {
        let mut c = TcpStream::connect(self.addr).unwrap();
        let local = c.local_addr().unwrap();
        thread::sleep(Duration::from_millis(300));
        self.wait_until_all_wait();
        c.write_all(b"hello").unwrap();
        thread::sleep(Duration::from_millis(300));
        self.wait_until_all_wait();
        drop(c);
        thread::sleep(Duration::from_millis(300));
        local
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for w in &mut self.workers {
            w.handle.take().map(|h| h.join());
            if w.listen_fd != self._listener.as_raw_fd() {
                // SAFETY: the dup made in start().
                unsafe { libc::close(w.listen_fd) };
            }
        }
    }
}

pub fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

pub fn tid(v: &Value) -> u32 {
    v["tid"].as_u64().unwrap() as u32
}

/// Check epollwake's JSON records (`lines`; `all` is the raw output, for
/// messages) of one `client_session` against `server`: the herd of the new
/// connection with one wasted wake-up, the accept, the data wake-up, the
/// FIN and the close, and a summary without losses. Panics at the first
/// mismatch; returns a one-line account otherwise.
pub fn verify(
    lines: &[Value],
    all: &str,
    server: &Server,
    client: SocketAddr,
    family: &str,
    local_ip: &str,
    backend: &str,
) -> String {
    let port = server.addr.port() as u64;
    let owner = server.accepted.1.load(Ordering::SeqCst) as u32;
    let conn_fd = server.accepted.0.load(Ordering::SeqCst) as i64;
    assert!(conn_fd >= 0, "the server accepted nothing");
    let worker_tids: Vec<u32> = server.workers.iter().map(|w| w.tid).collect();

    // 1. The new connection woke both workers: one herd, each wake-up
    // naming the listening socket under the fd that worker registered.
    let wakes = of_type(lines, "wake");
    let listen_wakes: Vec<&&Value> =
        wakes.iter().filter(|w| w["socket"]["state"] == "LISTEN" && w["socket"]["lport"] == port).collect();
    assert_eq!(listen_wakes.len(), 2, "{all}");
    let herd = listen_wakes[0]["herd"].as_u64().expect("flagged as a herd");
    let mut woken: Vec<u32> = listen_wakes.iter().map(|w| tid(w)).collect();
    woken.sort();
    let mut expected = worker_tids.clone();
    expected.sort();
    assert_eq!(woken, expected, "{all}");
    for w in &listen_wakes {
        assert_eq!(w["herd"], herd);
        assert_eq!(w["woken_by_event"], 2);
        assert_eq!(w["socket"]["family"], family);
        assert_eq!(w["socket"]["local"], local_ip);
        assert_eq!(w["waker"]["cause"], "epoll");
        assert_eq!(w["waker"]["via"], "sock_def_readable");
        let worker = server.workers.iter().find(|x| x.tid == tid(w)).unwrap();
        assert_eq!(w["fd"], worker.listen_fd as i64, "wrong fd for {}: {w}", worker.tid);
        // As the kernel keeps it: EPOLLERR and EPOLLHUP are always added.
        assert_eq!(w["registered"], serde_json::json!(["EPOLLIN", "EPOLLERR", "EPOLLHUP"]));
    }

    // 2. Exactly one of the two was wasted (0 events, slept again, or
    // accept EAGAIN), and it is not the one that accepted.
    let wasted: Vec<&Value> = lines.iter().filter(|l| l.get("wasted").is_some() && l["herd"] == herd).collect();
    assert_eq!(wasted.len(), 1, "{all}");
    assert_ne!(tid(wasted[0]), owner, "{all}");
    assert!(worker_tids.contains(&tid(wasted[0])));

    // 3. The accept: new fd, peer address and port.
    let accepts: Vec<&Value> = of_type(lines, "accept").into_iter().filter(|a| a.get("fd").is_some()).collect();
    assert_eq!(accepts.len(), 1, "{all}");
    let a = accepts[0];
    assert_eq!((tid(a), a["fd"].as_i64().unwrap()), (owner, conn_fd));
    assert_eq!(a["socket"]["local"], local_ip);
    assert_eq!(a["socket"]["lport"], port);
    assert_eq!(a["socket"]["remote"], client.ip().to_string());
    assert_eq!(a["socket"]["rport"], client.port() as u64);
    assert_eq!(a["socket"]["state"], "ESTABLISHED");

    // 4. The data woke the owner, through the accepted fd, ESTABLISHED,
    // with the mask it registered; its epoll_wait returned that fd.
    let conn_wakes: Vec<&&Value> =
        wakes.iter().filter(|w| w["fd"] == conn_fd && w["socket"]["rport"] == client.port() as u64).collect();
    let data = conn_wakes
        .iter()
        .find(|w| w["socket"]["state"] == "ESTABLISHED")
        .unwrap_or_else(|| panic!("no data wake-up: {all}"));
    assert_eq!(tid(data), owner);
    assert_eq!(data["waker"]["via"], "sock_def_readable");
    assert_eq!(data["socket"]["local"], local_ip);
    assert_eq!(data["socket"]["lport"], port);
    assert_eq!(data["socket"]["remote"], client.ip().to_string());
    assert_eq!(data["registered"], serde_json::json!(["EPOLLIN", "EPOLLERR", "EPOLLHUP", "EPOLLRDHUP", "EPOLLET"]));
    assert!(data.get("herd").is_none(), "{data}");
    let ret_after = |w: &Value| -> Value {
        let t = w["mono_ns"].as_u64().unwrap();
        (*of_type(lines, "return")
            .iter()
            .find(|r| tid(r) == tid(w) && r["mono_ns"].as_u64().unwrap() > t)
            .expect("a return"))
        .clone()
    };
    let ret = ret_after(data);
    assert_eq!(ret["ret"], 1, "{ret}");
    assert_eq!(ret["events"][0]["fd"], conn_fd);
    assert_eq!(ret["events"][0]["data"], format!("{conn_fd:#x}"));
    assert_eq!(ret["events"][0]["events"], serde_json::json!(["EPOLLIN"]));
    assert!(ret["wake_latency_us"].as_u64().is_some(), "{ret}");

    // 5. The peer's FIN: a state change wake-up, then EPOLLRDHUP returned,
    // then the server closed the fd.
    let fin = conn_wakes
        .iter()
        .find(|w| w["socket"]["state"] == "CLOSE_WAIT")
        .unwrap_or_else(|| panic!("no FIN wake-up: {all}"));
    assert_eq!(fin["waker"]["via"], "sock_def_wakeup");
    let ret = ret_after(fin);
    let evs = ret["events"][0]["events"].as_array().unwrap();
    assert!(evs.contains(&"EPOLLIN".into()) && evs.contains(&"EPOLLRDHUP".into()), "{ret}");
    let close =
        of_type(lines, "close").into_iter().find(|c| c["fd"] == conn_fd).unwrap_or_else(|| panic!("no close: {all}"));
    assert_eq!(tid(close), owner);
    assert_eq!(close["socket"]["state"], "CLOSE_WAIT");
    assert_eq!(close["socket"]["rport"], client.port() as u64);

    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["backend"], backend);
    assert!(summary["herds"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["wasted"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["stop_reason"], "SIGINT received");
    format!(
        "herd {herd:x} woke {woken:?}, {} wasted, data on fd {conn_fd} woke {owner}, FIN and close seen",
        tid(wasted[0])
    )
}

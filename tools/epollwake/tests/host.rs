//! epollwake on the running kernel: the real binary and real BPF programs
//! watching a real epoll server that this test runs in its own process,
//! two worker threads each with their own epoll instance watching one
//! listening socket (no EPOLLEXCLUSIVE: a thundering herd on purpose).

use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_testkit::{held_by, run, spawn, Held};
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_epollwake");
const BANNER: &str = "watching process";
const START: Duration = Duration::from_secs(30);

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;

/// The backend a run must use: the host can only do tracepoints; a guest
/// test runs this same file with EPOLLWAKE_TEST_BACKEND=kprobe or fentry.
fn backend() -> String {
    std::env::var("EPOLLWAKE_TEST_BACKEND").unwrap_or_else(|_| "tracepoint".into())
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Called for every ready connection; the --uprobe test traces it by a
/// glob on its demangled name, so it must stay a real function.
#[inline(never)]
fn on_ready_connection(fd: i32, events: u32) -> u32 {
    std::hint::black_box(fd as u32 ^ events)
}

struct Worker {
    tid: u32,
    /// The fd this worker registered the listening socket under.
    listen_fd: i32,
    handle: Option<JoinHandle<()>>,
}

/// The epoll server under test.
struct Server {
    addr: SocketAddr,
    workers: Vec<Worker>,
    stop_fd: OwnedFd,
    /// fd of the connection accepted, and the tid that accepted it.
    accepted: Arc<(AtomicI32, AtomicI32)>,
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
    fn start(bind: &str) -> Server {
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
    fn wait_until_all_wait(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = std::process::id();
        loop {
            let all = self.workers.iter().all(|w| {
                let sc = std::fs::read_to_string(format!("/proc/{pid}/task/{}/syscall", w.tid)).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{}/stat", w.tid)).unwrap_or_default();
                let nr = sc.split_whitespace().next().unwrap_or("");
                ["232", "281", "441"].contains(&nr) && stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('S'))
            });
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "workers never settled in epoll_wait");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn tid_args(&self) -> Vec<String> {
        self.workers.iter().flat_map(|w| ["-t".to_string(), w.tid.to_string()]).collect()
    }

    /// A client connects, waits, sends data, waits, closes.
    fn client_session(&self) -> SocketAddr {
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

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

fn tid(v: &Value) -> u32 {
    v["tid"].as_u64().unwrap() as u32
}

/// Run the whole scenario against a server bound to `bind` and check what
/// epollwake reports, record by record.
fn scenario(bind: &str, family: &str, local_ip: &str, extra: &[&str]) -> Vec<Value> {
    let server = Server::start(bind);
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--backend".into(), backend()];
    args.extend(server.tid_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = spawn(BIN, &argv);
    let banner = r.wait_for_stderr(BANNER, START);
    assert!(banner.contains("2 thread(s) already in epoll_wait"), "{banner}");
    let client = server.client_session();
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let all = out.stdout.clone();
    let port = server.addr.port() as u64;
    let owner = server.accepted.1.load(Ordering::SeqCst) as u32;
    let conn_fd = server.accepted.0.load(Ordering::SeqCst) as i64;
    assert!(conn_fd >= 0, "the server accepted nothing");
    let worker_tids: Vec<u32> = server.workers.iter().map(|w| w.tid).collect();

    // 1. The new connection woke both workers: one herd, each wake-up
    // naming the listening socket under the fd that worker registered.
    let wakes = of_type(&lines, "wake");
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
    let accepts: Vec<&Value> = of_type(&lines, "accept").into_iter().filter(|a| a.get("fd").is_some()).collect();
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
    let conn_wakes: Vec<&&Value> = wakes.iter().filter(|w| w["fd"] == conn_fd && w["socket"]["rport"] == client.port() as u64).collect();
    let data = conn_wakes.iter().find(|w| w["socket"]["state"] == "ESTABLISHED").unwrap_or_else(|| panic!("no data wake-up: {all}"));
    assert_eq!(tid(data), owner);
    assert_eq!(data["waker"]["via"], "sock_def_readable");
    assert_eq!(data["socket"]["local"], local_ip);
    assert_eq!(data["socket"]["lport"], port);
    assert_eq!(data["socket"]["remote"], client.ip().to_string());
    assert_eq!(data["registered"], serde_json::json!(["EPOLLIN", "EPOLLERR", "EPOLLHUP", "EPOLLRDHUP", "EPOLLET"]));
    assert!(data.get("herd").is_none(), "{data}");
    let ret_after = |w: &Value| -> Value {
        let t = w["mono_ns"].as_u64().unwrap();
        (*of_type(&lines, "return").iter().find(|r| tid(r) == tid(w) && r["mono_ns"].as_u64().unwrap() > t).expect("a return")).clone()
    };
    let ret = ret_after(data);
    assert_eq!(ret["ret"], 1, "{ret}");
    assert_eq!(ret["events"][0]["fd"], conn_fd);
    assert_eq!(ret["events"][0]["data"], format!("{conn_fd:#x}"));
    assert_eq!(ret["events"][0]["events"], serde_json::json!(["EPOLLIN"]));
    assert!(ret["wake_latency_us"].as_u64().is_some(), "{ret}");

    // 5. The peer's FIN: a state change wake-up, then EPOLLRDHUP returned,
    // then the server closed the fd.
    let fin = conn_wakes.iter().find(|w| w["socket"]["state"] == "CLOSE_WAIT").unwrap_or_else(|| panic!("no FIN wake-up: {all}"));
    assert_eq!(fin["waker"]["via"], "sock_def_wakeup");
    let ret = ret_after(fin);
    let evs = ret["events"][0]["events"].as_array().unwrap();
    assert!(evs.contains(&"EPOLLIN".into()) && evs.contains(&"EPOLLRDHUP".into()), "{ret}");
    let close = of_type(&lines, "close").into_iter().find(|c| c["fd"] == conn_fd).unwrap_or_else(|| panic!("no close: {all}"));
    assert_eq!(tid(close), owner);
    assert_eq!(close["socket"]["state"], "CLOSE_WAIT");
    assert_eq!(close["socket"]["rport"], client.port() as u64);

    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["backend"], backend());
    assert!(summary["herds"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["wasted"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["stop_reason"], "SIGINT received");
    drop(server);
    lines
}

#[test]
fn ipv4_herd_data_and_close() {
    scenario("127.0.0.1:0", "ipv4", "127.0.0.1", &[]);
}

#[test]
fn ipv6_herd_data_and_close() {
    scenario("[::1]:0", "ipv6", "::1", &[]);
}

/// The seed traced Envoy's event callback with a uprobe; here the server's
/// own callback, found by a glob on its demangled Rust name, shows up with
/// its arguments (fd, events) in the owner's timeline.
#[test]
fn uprobe_arguments_in_the_timeline() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let spec = format!("{}:*on_ready_connection", exe.display());
    let lines = scenario("127.0.0.1:0", "ipv4", "127.0.0.1", &["--uprobe", &spec]);
    let calls = of_type(&lines, "uprobe");
    assert!(!calls.is_empty(), "no uprobe records");
    let accept = of_type(&lines, "accept").into_iter().find(|a| a.get("fd").is_some()).unwrap().clone();
    for c in &calls {
        assert!(c["symbol"].as_str().unwrap().ends_with("on_ready_connection"), "{c}");
        assert_eq!(c["tid"], accept["tid"]);
        assert_eq!(c["args"][0], format!("{:#x}", accept["fd"].as_i64().unwrap()));
    }
    // The data and the FIN: EPOLLIN, then EPOLLIN|EPOLLRDHUP.
    let masks: Vec<&str> = calls.iter().map(|c| c["args"][1].as_str().unwrap()).collect();
    assert!(masks.contains(&format!("{EPOLLIN:#x}").as_str()), "{masks:?}");
    assert!(masks.contains(&format!("{:#x}", EPOLLIN | EPOLLRDHUP).as_str()), "{masks:?}");
}

/// Text output: a person sees the herd, the waste and the decoded masks.
#[test]
fn text_output_reads_like_the_seed() {
    let server = Server::start("127.0.0.1:0");
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--summary".into(), "--stacks".into()];
    args.extend(server.tid_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = spawn(BIN, &argv);
    r.wait_for_stderr(BANNER, START);
    server.client_session();
    r.signal(libc::SIGTERM);
    let out = r.wait();
    drop(server);
    assert!(out.status.success(), "{out:?}");
    let s = &out.stdout;
    assert!(s.starts_with("TIME            EVENT"), "{s}");
    assert!(s.contains("HERD #1: one event woke 2 threads"), "{s}");
    assert!(s.contains("WASTED: "), "{s}");
    assert!(s.contains("[EPOLLIN|EPOLLERR|EPOLLHUP|EPOLLRDHUP|EPOLLET]"), "{s}");
    assert!(s.contains("via sock_def_readable: fd "), "{s}");
    assert!(s.contains("ESTABLISHED"), "{s}");
    // --stacks: the waker's kernel stack, through the epoll callback.
    assert!(s.lines().any(|l| l.starts_with("    <0x") && l.contains("> ep_poll_callback")), "{s}");
    assert!(s.contains("epollwake: SIGTERM received after"), "{s}");
    assert!(s.contains("Wake-ups per socket") && s.contains("Wake-up to epoll_wait return:"), "{s}");
}

/// --port and --fd keep only what concerns them.
#[test]
fn filters() {
    let server = Server::start("127.0.0.1:0");
    let pid = std::process::id().to_string();
    let other_port = (server.addr.port() ^ 1).to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--port".into(), other_port];
    args.extend(server.tid_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = spawn(BIN, &argv);
    r.wait_for_stderr(BANNER, START);
    server.client_session();
    r.signal(libc::SIGINT);
    let out = r.wait();
    drop(server);
    let lines = out.json_lines();
    // Only the summary: nothing was about that port.
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["wakeups"], 0);
}

/// Run epollwake on a server, stop it with `stop` (None: the duration
/// ends), and prove everything it attached is released.
fn detaches_everything(stop: Option<i32>, reason: &str) {
    let server = Server::start("127.0.0.1:0");
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--backend".into(), backend()];
    args.extend(server.tid_args());
    if stop.is_none() {
        args.push("2".into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = spawn(BIN, &argv);
    r.wait_for_stderr(BANNER, START);
    let held: Held = held_by(r.pid());
    // 6 epoll syscalls, 2 softirq, waking, switch, 4 accept, close,
    // 2 epoll_ctl, and 2 for the socket: sk_data_ready and
    // inet_sock_set_state, or ep_poll_callback entry and exit. 19
    // programs, each with its link.
    assert_eq!(held.progs.len(), 19, "{held:?}");
    assert_eq!(held.links.len(), 19, "{held:?}");
    if let Some(sig) = stop {
        r.signal(sig);
    }
    let out = r.wait();
    drop(server);
    assert!(out.status.success(), "{out:?}");
    let summary = out.json_lines().pop().unwrap();
    assert_eq!(summary["stop_reason"], reason);
    kdiag_testkit::assert_released(&held, Duration::from_secs(5));
}

kdiag_testkit::detach_tests!(detaches_everything);

#[test]
fn a_process_without_epoll_gets_a_clear_message() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    // Until exec, the child still has this thread's name.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
        assert!(Instant::now() < deadline, "sleep never started");
        thread::sleep(Duration::from_millis(10));
    }
    let out = run(BIN, &["-p", &pid, "--json", "1"]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!("process {pid} (sleep) never waited in epoll_wait, epoll_pwait or epoll_pwait2")),
        "{}",
        out.stderr
    );
    let summary = out.json_lines().pop().unwrap();
    assert_eq!(summary["epoll_waits"], 0);
    assert_eq!(summary["wakeups"], 0);
}

#[test]
fn a_process_that_exits_ends_the_run() {
    let mut short = std::process::Command::new("sleep").arg("1").spawn().unwrap();
    let pid = short.id();
    // Reap it as soon as it exits, or it stays a zombie under this test.
    let reaper = thread::spawn(move || short.wait());
    let started = Instant::now();
    let out = run(BIN, &["-p", &pid.to_string(), "--json"]);
    reaper.join().unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let summary = out.json_lines().pop().unwrap();
    assert_eq!(summary["stop_reason"], format!("process {pid} exited"));
}

#[test]
fn bad_input_is_one_line() {
    let me = std::process::id().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&[], "missing -p PID"),
        (&["-p", "abc"], "invalid value 'abc'"),
        (&["-p", "999999999"], "no process with PID 999999999"),
        (&["-p", &me, "-t", "1"], "thread 1 is not a thread of process"),
        (&["-p", &me, "--backend", "perf"], "unknown backend 'perf' (this tool supports: fentry, kprobe, tracepoint)"),
        (&["-p", &me, "--uprobe", "nocolon"], "expected BINARY:SYMBOL"),
        (&["-p", &me, "--uprobe", "/nonexistent/bin:f"], "'/nonexistent/bin' is neither a file nor mapped"),
        (&["-p", &me, "--uprobe", "/proc/self/exe:no_such_fn_*"], "no function matching 'no_such_fn_*'"),
        (&["-p", &me, "soon"], "invalid duration 'soon'"),
    ];
    // Forcing a rung this kernel refuses (fentry on the host: EPERM at
    // load) is an error with the probe's reason, not a silent fallback.
    let refused: Vec<(Mechanism, String)> = [Mechanism::Fentry, Mechanism::Kprobe]
        .into_iter()
        .filter_map(|m| match kdiag_shared::probe::kernel_supports(m) {
            Err(ProbeError::Unavailable(why)) => Some((m, format!("backend {m} is not usable on this kernel: {why}"))),
            _ => None,
        })
        .collect();
    // Not an empty list by accident: a kernel without a kprobe PMU (the
    // host) must refuse the kprobe rung.
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert!(refused.iter().any(|(m, _)| *m == Mechanism::Kprobe), "{refused:?}");
    }
    let refused_args: Vec<[String; 4]> =
        refused.iter().map(|(m, _)| ["-p".into(), me.clone(), "--backend".into(), m.name().into()]).collect();
    let refused_cases: Vec<(Vec<&str>, &str)> = refused_args
        .iter()
        .zip(&refused)
        .map(|(a, (_, want))| (a.iter().map(String::as_str).collect(), want.as_str()))
        .collect();
    let all = cases.iter().map(|(a, w)| (a.to_vec(), *w)).chain(refused_cases);
    for (args, want) in all {
        let args = &args;
        let out = run(BIN, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("epollwake: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

//! epollwake on the running kernel: the real binary and real BPF programs
//! watching a real epoll server that this test runs in its own process,
//! two worker threads each with their own epoll instance watching one
//! listening socket (no EPOLLEXCLUSIVE: a thundering herd on purpose).

mod nginx;
mod scenario;

use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_testkit::{held_by, programs_held_by, run, spawn, Held};
use libbpf_rs::ProgramType;
use scenario::{of_type, verify, Server, EPOLLIN, EPOLLRDHUP};
use serde_json::Value;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_epollwake");
const BANNER: &str = "watching process";
const START: Duration = Duration::from_secs(30);

/// The backend a run must use: the host can only do tracepoints, typed by
/// its BTF (raw_tracepoints_herd_data_and_close holds the untyped rung to
/// the same checks; the guests the kprobe and fentry rungs).
const BACKEND: &str = "tp_btf";

/// Run the whole scenario against a server bound to `bind` and check what
/// epollwake reports, record by record.
fn scenario(bind: &str, family: &str, local_ip: &str, extra: &[&str]) -> Vec<Value> {
    scenario_on(BACKEND, bind, family, local_ip, extra)
}

fn scenario_on(backend: &str, bind: &str, family: &str, local_ip: &str, extra: &[&str]) -> Vec<Value> {
    let server = Server::start(bind);
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--backend".into(), backend.into()];
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
    verify(&lines, &out.stdout, &server, client, family, local_ip, backend);
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

/// The rung for kernels whose tracepoints BTF does not type (or BTF from
/// --btf): the same programs, untyped, held to the same checks.
#[test]
fn raw_tracepoints_herd_data_and_close() {
    scenario_on("raw_tp", "127.0.0.1:0", "ipv4", "127.0.0.1", &[]);
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
    assert!(s.contains("Wake-ups per listening socket") && s.contains("Wake-up to epoll_wait return:"), "{s}");
    assert!(s.contains("Wake-ups per endpoint and peer") && s.contains(" <- 127.0.0.1\n"), "{s}");
}

/// --port and --fd keep what concerns them and drop the rest, seen on one
/// client session that three runs watch at once: --port of the server
/// keeps the whole session (held to the scenario's full check); --port of
/// another drops all of it, though that run saw the same epoll_waits;
/// --fd of one worker's listening fd keeps that worker's wake-up and drops
/// the other worker's and the connection's.
#[test]
fn filters() {
    let server = Server::start("127.0.0.1:0");
    let pid = std::process::id().to_string();
    let port = server.addr.port().to_string();
    let other_port = (server.addr.port() ^ 1).to_string();
    let (w0, w1) = (&server.workers[0], &server.workers[1]);
    let fd = w0.listen_fd.to_string();
    let filters = [["--port", &port], ["--port", &other_port], ["--fd", &fd]];
    let mut runs: Vec<_> = filters
        .iter()
        .map(|f| {
            let mut args: Vec<String> =
                ["-p", &pid, "--json", "--backend", BACKEND, f[0], f[1]].map(String::from).to_vec();
            args.extend(server.tid_args());
            spawn(BIN, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    for r in &mut runs {
        r.wait_for_stderr(BANNER, START);
    }
    let client = server.client_session();
    for r in &runs {
        r.signal(libc::SIGINT);
    }
    let outs: Vec<_> = runs.into_iter().map(|r| r.wait()).collect();
    for (f, out) in filters.iter().zip(&outs) {
        assert!(out.status.success(), "{f:?}: {out:?}");
    }
    let [kept, dropped, by_fd] = [0, 1, 2].map(|i| outs[i].json_lines());

    verify(&kept, &outs[0].stdout, &server, client, "ipv4", "127.0.0.1", BACKEND);

    assert_eq!(dropped.len(), 1, "only the summary: {}", outs[1].stdout);
    assert_eq!(dropped[0]["wakeups"], 0);
    let waits = |lines: &[Value]| lines.last().unwrap()["epoll_waits"].as_u64().unwrap();
    assert!(waits(&kept) > 2, "{}", outs[0].stdout);
    assert_eq!(waits(&dropped), waits(&kept), "{}", outs[1].stdout);

    let wakes: Vec<(u32, i64)> =
        scenario::of_type(&by_fd, "wake").iter().map(|w| (scenario::tid(w), w["fd"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(wakes, [(w0.tid, w0.listen_fd as i64)], "{}", outs[2].stdout);
    assert_eq!(by_fd.last().unwrap()["wakeups"], 1);
    // What it dropped was there: the other worker's wake-up and the
    // connection's, in the run that kept them.
    let kept_wakes: Vec<i64> = scenario::of_type(&kept, "wake").iter().filter_map(|w| w["fd"].as_i64()).collect();
    let conn_fd = server.accepted.0.load(std::sync::atomic::Ordering::SeqCst) as i64;
    assert!(kept_wakes.contains(&(w1.listen_fd as i64)) && kept_wakes.contains(&conn_fd), "{kept_wakes:?}");
    drop(server);
}

/// Run epollwake on a server, stop it with `stop` (None: the duration
/// ends), and prove everything it attached is released.
fn detaches_everything(stop: Option<i32>, reason: &str) {
    let server = Server::start("127.0.0.1:0");
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--backend".into(), BACKEND.into()];
    args.extend(server.tid_args());
    if stop.is_none() {
        args.push("2".into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = spawn(BIN, &argv);
    r.wait_for_stderr(BANNER, START);
    let held: Held = held_by(r.pid());
    // Syscall entry and exit, 2 softirq, waking, switch, and the socket's
    // sk_data_ready and inet_sock_set_state: 8 programs, each with its
    // link, all raw tracepoints (no perf event: nothing waits for an RCU
    // grace period when they go).
    assert_eq!(held.progs.len(), 8, "{held:?}");
    assert_eq!(held.links.len(), 8, "{held:?}");
    assert_eq!(held.perf_events, 0, "{held:?}");
    // tp_btf programs are of the tracing type.
    for (name, ty) in programs_held_by(r.pid()) {
        assert_eq!(ty, ProgramType::Tracing, "{name}");
    }
    r.end_with(stop, reason);
    drop(server);
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
        (
            &["-p", &me, "--backend", "perf"],
            "unknown backend 'perf' (this tool supports: fentry, kprobe, tp_btf, raw_tp)",
        ),
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
        assert_eq!(out.status.code(), Some(2), "{args:?}: refused, exit 2");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("epollwake: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["-p", "1", "1"]);
}

/// A stop request at any moment of start-up or run ends it cleanly. The
/// test process itself is the target: it never waits in epoll, which is
/// said at the end and changes nothing about start-up.
#[test]
fn stops_cleanly_at_any_moment() {
    let me = std::process::id().to_string();
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &["-p", &me, "30"]);
}

/// `| head`: a reader that goes away ends the run quietly, exit 0; a gone
/// stderr is no reason to panic.
#[test]
fn survives_closed_outputs() {
    let me = std::process::id().to_string();
    kdiag_testkit::assert_survives_closed_outputs(BIN, &["-p", &me, "1"]);
}

/// What one epollwake run on one nginx worker said, checked against its own
/// timeline: every count in the summary is one a reader of the records
/// can recount. Returns the connections the worker accepted.
fn check_worker_summary(lines: &[Value], port: u16) -> u64 {
    let mut brief = lines.last().unwrap().clone();
    assert_eq!(brief["type"], "summary");
    // Thousands of sockets: messages show the rest.
    let all_sockets = brief.as_object_mut().unwrap().remove("per_socket").unwrap();
    let summary = &brief;
    assert_eq!(summary["lost"], 0, "{summary}");
    let u = |v: &Value| v.as_u64().unwrap();
    let wakes = scenario::of_type(lines, "wake");
    assert_eq!(u(&summary["wakeups"]), wakes.len() as u64);

    // Per listener, and what is outside any, add up to the total.
    let listeners = summary["per_listener"].as_array().unwrap();
    let outside = &summary["outside_listeners"];
    let sum = |f: &str| listeners.iter().map(|l| u(&l[f])).sum::<u64>();
    assert_eq!(sum("wakeups") + u(&outside["wakeups"]), u(&summary["wakeups"]), "{summary}");
    assert_eq!(sum("wasted") + u(&outside["wasted"]), u(&summary["wasted"]), "{summary}");
    let key = format!("TCP 127.0.0.1:{port}");
    let l = listeners.iter().find(|l| l["key"] == key.as_str()).unwrap_or_else(|| panic!("no {key}: {summary}"));
    let on_port = |w: &&&Value| w["socket"]["lport"] == port;
    let on_listener = wakes.iter().filter(on_port).filter(|w| w["socket"]["state"] == "LISTEN").count() as u64;
    assert_eq!(u(&l["listener_wakeups"]), on_listener, "{l}");
    assert_eq!(u(&l["wakeups"]), wakes.iter().filter(on_port).count() as u64, "{l}");
    // Its connections: the accepted ones and any other that woke the worker.
    // (On loopback a client port is soon used again: a set, as the tool keeps.)
    let mut conns: std::collections::BTreeSet<String> = scenario::of_type(lines, "accept")
        .iter()
        .filter(|a| a.get("fd").is_some())
        .map(|a| format!("{}:{}", a["socket"]["remote"], a["socket"]["rport"]))
        .collect();
    let accepted = scenario::of_type(lines, "accept").iter().filter(|a| a.get("fd").is_some()).count() as u64;
    for w in wakes.iter().filter(on_port).filter(|w| w["socket"]["state"] != "LISTEN") {
        conns.insert(format!("{}:{}", w["socket"]["remote"], w["socket"]["rport"]));
    }
    assert_eq!(u(&l["connections"]), conns.len() as u64, "{l}");

    // Wasted and herds, as the records mark them.
    let records = &lines[..lines.len() - 1];
    let marked = |kind: &str| records.iter().filter(|r| r["wasted"] == kind).count() as u64;
    assert_eq!(u(&summary["wasted_no_events"]), marked("no_events"));
    assert_eq!(u(&summary["wasted_slept_again"]), marked("slept_again"));
    assert_eq!(u(&summary["wasted_accept_eagain"]), marked("accept_eagain"));
    assert_eq!(u(&summary["wasted"]), records.iter().filter(|r| r.get("wasted").is_some()).count() as u64);
    let herd_wakes: Vec<&&Value> = wakes.iter().filter(|w| w.get("herd").is_some()).collect();
    let herds: std::collections::BTreeSet<u64> = herd_wakes.iter().map(|w| u(&w["herd"])).collect();
    assert_eq!(u(&summary["herds"]), herds.len() as u64, "{summary}");
    assert_eq!(u(&summary["herd_threads"]), herd_wakes.len() as u64, "{summary}");

    // Grouped, the thousands of connections from one client are one row;
    // the JSON still has every socket.
    let endpoints = summary["per_endpoint"].as_array().unwrap();
    let from_client = endpoints.iter().find(|r| r["key"] == format!("{key} <- 127.0.0.1").as_str());
    if let Some(r) = from_client {
        assert_eq!(u(&r["connections"]), u(&l["connections"]), "{r}");
    }
    assert!(endpoints.len() <= 3, "{endpoints:?}");
    assert!(all_sockets.as_array().unwrap().len() as u64 >= u(&l["connections"]));
    accepted
}

/// Debian's nginx with two workers (each its own process, watched by its
/// own epollwake) under `ab -n 3000 -c 4`: each summary agrees with its
/// timeline, and between them the two workers' accepts are exactly the
/// connections nginx itself counted (its stub_status; ab opens one or two
/// more than it sends requests), each under the listener it came from.
#[test]
fn nginx_under_ab_grouped_per_listener() {
    let server = nginx::Nginx::start(2);
    let mut runs: Vec<_> = server
        .workers
        .iter()
        .map(|w| spawn(BIN, &["-p", &w.to_string(), "--json", "--summary", "--backend", BACKEND]))
        .collect();
    for r in &mut runs {
        let banner = r.wait_for_stderr(BANNER, START);
        assert!(banner.contains("1 thread(s) already in epoll_wait"), "{banner}");
        // Ahead of the load and of whatever else runs on a shared box: a
        // tool short of CPU loses events, and these counts must be whole.
        // SAFETY: setpriority(2) on our own child.
        assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, r.pid(), -10) }, 0);
    }
    let before = server.accepts();
    let requests = 3000;
    assert_eq!(server.ab(requests, 4), requests);
    let after = server.accepts();
    thread::sleep(Duration::from_millis(500));
    let mut accepted = 0;
    for r in runs {
        r.signal(libc::SIGINT);
        let out = r.wait();
        assert!(out.status.success(), "{out:?}");
        accepted += check_worker_summary(&out.json_lines(), server.port);
    }
    // Each stub_status request is a connection too, counted in its own answer.
    assert!(after - before > requests as u64, "nginx counted {before} then {after}");
    assert_eq!(accepted, after - before + 1, "nginx counted {before} then {after}");
}

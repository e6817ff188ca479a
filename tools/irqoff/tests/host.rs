//! irqoff on the running kernel: the real binary, real BPF programs, and
//! real interrupts-off windows made by the test itself.

use kdiag_shared::perf::{EventSpec, PerfEvent};
use kdiag_testkit::consumers::{free_port, http_get, promtool_check, NodeExporter, Prometheus};
use kdiag_testkit::{held_by, run, run_watching_programs, spawn, Held};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde_json::Value;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod inject {
    include!(concat!(env!("OUT_DIR"), "/inject.skel.rs"));
}

const BIN: &str = env!("CARGO_BIN_EXE_irqoff");
const BANNER: &str = "watching CPUs";
const START: Duration = Duration::from_secs(20);

fn last_cpu() -> u32 {
    *kdiag_shared::cpus::online().unwrap().last().unwrap()
}

#[test]
fn software_mode_is_chosen_and_explained() {
    let out = run(BIN, &["1"]);
    assert!(out.status.success(), "{out:?}");
    // The host has no PMU: the banner must say so and say what is used instead.
    let banner = out.stderr.lines().next().unwrap();
    assert!(banner.contains("software cpu-clock mode"), "{banner}");
    assert!(banner.contains("cycles") && banner.contains("ENOENT") && banner.contains("no PMU"), "{banner}");
    assert!(out.stdout.starts_with("TIME(irqoff)"), "{}", out.stdout);
    assert!(out.stdout.contains("irqoff: duration ended after"), "{}", out.stdout);
}

#[test]
fn forced_hardware_fails_with_the_no_pmu_error() {
    let out = run(BIN, &["--backend", "hw", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("irqoff: backend hw is not usable on this kernel"), "{}", out.stderr);
    assert!(out.stderr.contains("ENOENT (no PMU"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_is_one_line_and_attaches_nothing() {
    let cases: &[(&[&str], &str)] = &[
        (&["-t", "-5"], "threshold must be at least 1 ms"),
        (&["-t", "x"], "threshold must be a whole number"),
        (&["-c", "4096"], "CPU 4096 is not online"),
        (&["-c", "1-"], "invalid CPU list"),
        (&["-f", "/nonexistent-dir/irqoff.log"], "cannot open log file /nonexistent-dir/irqoff.log"),
        (&["--backend", "fentry"], "unknown backend 'fentry' (this tool supports: hw, sw)"),
        (&["soon"], "invalid duration 'soon'"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("irqoff_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: refused, exit 2");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("irqoff: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["1"]);
}

#[test]
fn json_lines_parse_and_end_with_a_summary() {
    let out = run(BIN, &["-t", "10", "--json", "1"]);
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["mode"], "sw");
    assert_eq!(summary["threshold_us"], 10_000);
    assert_eq!(summary["stop_reason"], "duration ended");
    let cpus = summary["per_cpu"].as_array().unwrap();
    assert_eq!(cpus.len(), kdiag_shared::cpus::online().unwrap().len());
    // The sampler really ran: about 1000 samples per second on busy CPUs;
    // an idle vCPU may see fewer, so check the total.
    let samples: u64 = cpus.iter().map(|c| c["samples"].as_u64().unwrap()).sum();
    assert!(samples > 500, "{summary}");
    for l in &lines[..lines.len() - 1] {
        assert!(l["type"] == "window" || l["type"] == "ongoing", "{l}");
        assert!(l["lat_us"].as_u64().unwrap() >= 10_000, "{l}");
    }
}

#[test]
fn log_file_is_appended_not_truncated() {
    let path = std::env::temp_dir().join(format!("irqoff-test-{}.log", std::process::id()));
    std::fs::write(&path, "an earlier run's findings\n").unwrap();
    let p = path.to_str().unwrap();
    for _ in 0..2 {
        let out = run(BIN, &["-f", p, "1"]);
        assert!(out.status.success(), "{out:?}");
        // The engineer at the terminal still sees the summary.
        assert!(out.stdout.contains("irqoff: duration ended"), "{}", out.stdout);
        assert!(out.stderr.contains(&format!("appending to {p}")), "{}", out.stderr);
    }
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(log.starts_with("an earlier run's findings\nTIME(irqoff)"), "{log}");
    assert_eq!(log.matches("TIME(irqoff)").count(), 2, "{log}");
    assert_eq!(log.matches("irqoff: duration ended").count(), 2, "{log}");
}

/// Run irqoff, note the programs, links and perf fds it holds, stop it with
/// `stop` (None: let the duration end), and prove all of it was released.
fn detaches_everything(stop: Option<i32>, reason: &str) {
    let args: &[&str] = if stop.is_some() { &["--json"] } else { &["--json", "2"] };
    let mut r = spawn(BIN, args);
    r.wait_for_stderr(BANNER, START);
    let held: Held = held_by(r.pid());
    let cpus = kdiag_shared::cpus::online().unwrap().len();
    // The cpu-clock program on one perf event per CPU, and the idle
    // tracking program on power:cpu_idle (a link over one more perf event).
    assert_eq!(held.progs.len(), 2, "{held:?}");
    assert_eq!(held.links.len(), 1, "{held:?}");
    assert_eq!(held.perf_events, cpus + 1, "{held:?}");
    r.end_with(stop, reason);
    kdiag_testkit::assert_released(&held, Duration::from_secs(5));
}

kdiag_testkit::detach_tests!(detaches_everything);

/// Keeps a CPU busy so that it never idles (under a hypervisor an idle
/// vCPU's timers are served late, which is noise here), mostly in the
/// kernel, reading /dev/zero, so windows end with a kernel stack to show.
struct Spinner(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Spinner {
    fn on(cpu: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            // SAFETY: cpu_set_t is plain data; pins only this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu as usize, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            let mut zero = std::fs::File::open("/dev/zero").unwrap();
            let mut buf = vec![0u8; 4 << 20];
            while !s.load(Ordering::Relaxed) {
                std::io::Read::read_exact(&mut zero, &mut buf).unwrap();
            }
        });
        Spinner(stop, Some(h))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        self.1.take().map(|h| h.join());
    }
}

/// Real windows of 20 and 50 ms, and one of 5 ms, made by a BPF program
/// spinning in hrtimer context on one CPU. At -t 10: the 20 and 50 ms
/// windows are each reported once, on that CPU, within one sampling
/// period of the measured spin; the 5 ms window is not reported. Which
/// task a report names is not checked: software mode cannot promise it.
#[test]
fn detects_real_windows_of_known_length() {
    detects_injected_windows(&[], "ring buffer");
}

/// The same through the perf buffer, the transport of kernels before 5.8.
#[test]
fn detects_real_windows_through_the_perf_buffer() {
    detects_injected_windows(&[("KDIAG_TRANSPORT", "perf")], "perf buffer");
}

fn detects_injected_windows(env: &[(&str, &str)], transport: &str) {
    let cpu = last_cpu();
    let _busy = Spinner::on(cpu);
    let cpu_arg = cpu.to_string();
    let mut r = kdiag_testkit::spawn_with_env(BIN, &["-t", "10", "-c", &cpu_arg, "--json", "--max-rate", "0"], env);
    let banner = r.wait_for_stderr(BANNER, START);
    assert!(banner.contains(&format!("events via {transport}")), "{banner}");

    let wanted_ms = [20u64, 50, 5];
    let injected = inject(cpu, &wanted_ms);
    std::thread::sleep(Duration::from_millis(300));
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");

    let lines = out.json_lines();
    let windows: Vec<&Value> = lines.iter().filter(|l| l["type"] == "window").collect();
    let period_ns = 1_000_000u64;
    for (i, ms) in wanted_ms.iter().enumerate() {
        let (start, spun) = injected[i];
        assert!(spun >= ms * 1_000_000, "spin {i} was {spun} ns");
        // A record covers [end - lat, end]; it belongs to this injection if
        // it ends within a few periods after the spin ended.
        let matching: Vec<&&Value> = windows
            .iter()
            .filter(|w| {
                let end = w["mono_ns"].as_u64().unwrap();
                end >= start + spun && end <= start + spun + 3 * period_ns
            })
            .collect();
        if *ms < 10 {
            assert!(matching.is_empty(), "{ms} ms window reported at -t 10: {matching:?}");
            continue;
        }
        assert_eq!(matching.len(), 1, "{ms} ms window: {matching:?}\nall: {windows:?}");
        let w = matching[0];
        let lat_ns = w["lat_us"].as_u64().unwrap() * 1000;
        assert_eq!(w["cpu"].as_u64(), Some(cpu as u64));
        // Within one sampling period of the truth: the last tick before the
        // window came up to one period before it (report short by up to a
        // period); a tick lost to the hypervisor just before it makes the
        // report long by up to a period. The spin is timed by the guest
        // clock, which runs on while the host deschedules this vCPU: that
        // steal time is in `spun` and, rightly, not in `lat_us`.
        let steal_ns = w["steal_us"].as_u64().unwrap_or(0) * 1000;
        assert!((lat_ns + steal_ns).abs_diff(spun) <= period_ns + 10_000, "{ms} ms: spun {spun} ns, reported {w}");
        // Software mode promises the length and the CPU, and a stack of
        // wherever the CPU was when interrupts came back on: not whose it
        // is. The tick that ends the window interrupts whatever the
        // injector interrupted, usually the spinner but on a shared box
        // any task (once cc1, in exc_page_fault). So: a kernel stack whose
        // innermost frame is named, or user code as the saved registers
        // say, and nothing in between.
        assert_eq!(w["stack_of"], "reenabler");
        let stack = w["stack"].as_array().unwrap();
        match w["user_space"].as_bool() {
            Some(true) => assert!(stack.is_empty(), "{w}"),
            Some(false) => assert!(stack.first().is_some_and(|f| f["sym"].is_string()), "{w}"),
            None => panic!("no user_space field: {w}"),
        }
    }
    let summary = lines.last().unwrap();
    assert!(summary["windows"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["lost"], 0);
}

/// A stop request at any moment of start-up or run ends it cleanly. At its defaults: every CPU, 10 ms.
#[test]
fn stops_cleanly_at_any_moment() {
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &["30"]);
}

/// `| head`: a reader that goes away ends the run quietly, exit 0; a gone
/// stderr is no reason to panic.
#[test]
fn survives_closed_outputs() {
    kdiag_testkit::assert_survives_closed_outputs(BIN, &["1"]);
}

/// Steal time per CPU from /proc/stat's eighth column, in microseconds.
fn proc_stat_steal_us() -> Vec<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| l.split_whitespace().nth(8).unwrap().parse::<u64>().unwrap() * 1_000_000 / hz)
        .collect()
}

/// The host is a KVM guest whose host takes time from it. Over one run,
/// the steal time irqoff reads from the KVM steal clock must agree, CPU by
/// CPU, with the kernel's own accounting in /proc/stat. That accounting is
/// in clock ticks (10 ms) and lags by up to a scheduler tick (4 ms), so
/// agreement is to within 15 ms and 5 %. The run lasts until the kernel has counted
/// enough steal for a difference to mean something.
#[test]
fn steal_time_agrees_with_proc_stat() {
    let online = kdiag_shared::cpus::online().unwrap();
    // Busy CPUs tick regularly (an idle one accounts its steal late) and
    // give the host reason to make this VM wait.
    let _busy: Vec<Spinner> = online.iter().map(|&c| Spinner::on(c)).collect();
    let mut r = spawn(BIN, &["--json", "-t", "10000"]);
    let banner = r.wait_for_stderr(BANNER, START);
    assert!(r.stderr.iter().any(|l| l.contains("steal time: from the KVM steal clock")), "{banner}\n{:?}", r.stderr);
    let before = proc_stat_steal_us();
    let deadline = Instant::now() + Duration::from_secs(120);
    let enough_us = 100_000;
    let counted = |now: &[u64]| now.iter().zip(&before).map(|(a, b)| a - b).sum::<u64>();
    while counted(&proc_stat_steal_us()) < enough_us && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    r.signal(libc::SIGINT);
    let out = r.wait();
    let after = proc_stat_steal_us();
    assert!(out.status.success(), "{out:?}");
    assert!(counted(&after) >= enough_us, "the host took only {} us from this VM in 120 s", counted(&after));
    let summary = out.json_lines().pop().unwrap();
    assert_eq!(summary["steal"], "known", "{summary}");
    assert_eq!(summary["steal_failed"], 0, "{summary}");
    for c in summary["per_cpu"].as_array().unwrap() {
        let cpu = c["cpu"].as_u64().unwrap() as usize;
        let ours = c["steal_us"].as_u64().unwrap();
        let kernel = after[cpu] - before[cpu];
        let slack = 15_000 + kernel / 20;
        assert!(ours.abs_diff(kernel) <= slack, "CPU {cpu}: irqoff {ours} us, /proc/stat {kernel} us\n{summary}");
    }
}

/// Make interrupts-off windows of `ms` milliseconds each on `cpu` with the
/// BPF spinner; returns when and for how long (ns) each really spun.
fn inject(cpu: u32, ms: &[u64]) -> Vec<(u64, u64)> {
    let mut storage = MaybeUninit::uninit();
    let mut open = inject::InjectSkelBuilder::default().open(&mut storage).unwrap();
    let ro = open.maps.rodata_data.as_deref_mut().unwrap();
    for (i, ms) in ms.iter().enumerate() {
        ro.spins_ns[i] = ms * 1_000_000;
    }
    ro.nr_spins = ms.len() as u32;
    let skel = open.load().unwrap();
    let ev = PerfEvent::open(EventSpec::SwCpuClock { period_ns: 300_000_000 }, cpu).unwrap();
    ev.attach_bpf(skel.progs.inject_irqoff.as_fd().as_raw_fd()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while skel.maps.bss_data.as_ref().unwrap().done < ms.len() as u32 {
        assert!(Instant::now() < deadline, "injector did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(ev);
    let bss = skel.maps.bss_data.as_ref().unwrap();
    (0..ms.len()).map(|i| (bss.start_ns[i], bss.spun_ns[i])).collect()
}

fn per_cpu_samples(summary: &Value) -> u64 {
    summary["per_cpu"].as_array().unwrap().iter().map(|c| c["samples"].as_u64().unwrap()).sum()
}

/// A real Prometheus scrapes --metrics while real windows happen; what its
/// HTTP API then holds is exactly what irqoff's exit summary says, down to
/// the last sample, and promtool finds nothing to lint in what we serve.
#[test]
fn prometheus_holds_what_the_summary_says() {
    let cpu = last_cpu();
    let _busy = Spinner::on(cpu);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prom = Prometheus::start(addr);
    let (cpu_arg, addr_arg) = (cpu.to_string(), addr.to_string());
    let mut r = spawn(BIN, &["-t", "10", "-c", &cpu_arg, "--json", "--max-rate", "0", "--metrics", &addr_arg]);
    let banner = r.wait_for_stderr(BANNER, START);
    assert!(banner.contains(&format!("metrics on http://{addr}/metrics")), "{banner}");
    prom.wait_until_up();
    inject(cpu, &[20, 50]);
    let served = http_get(addr, "/metrics").unwrap();
    assert_eq!(promtool_check(&served), "", "{served}");
    std::thread::sleep(Duration::from_millis(1500));
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let summary = lines.last().unwrap();
    let last =
        |m: &str| prom.query(&format!("sum(last_over_time({m}[5m]))")).unwrap_or_else(|| panic!("{m}: {}", prom.log()));
    let windows = summary["windows"].as_u64().unwrap();
    assert!(windows >= 2, "{summary}");
    assert_eq!(last("kdiag_irqoff_window_seconds_count"), windows as f64, "{summary}");
    assert_eq!(last("kdiag_irqoff_samples_total"), per_cpu_samples(summary) as f64, "{summary}");
    // The 20 ms window is under 32.768 ms, the 50 ms one is not.
    let short = lines.iter().filter(|l| l["type"] == "window" && l["lat_us"].as_u64().unwrap() < 32_768).count();
    assert_eq!(last("kdiag_irqoff_window_seconds_bucket{le=\"0.032768\"}"), short as f64, "{lines:?}");
    assert_eq!(prom.query("max(last_over_time(kdiag_irqoff_info{mode=\"sw\"}[5m]))"), Some(1.0));
}

/// node_exporter's textfile collector serves --metrics-file; after the run
/// the file holds the summary's final counts.
#[test]
fn node_exporter_serves_the_metrics_file() {
    let dir = std::env::temp_dir().join(format!("irqoff-textfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = NodeExporter::start(&dir);
    let file = dir.join("irqoff.prom");
    let out = run(BIN, &["--json", "--metrics-file", file.to_str().unwrap(), "--metrics-interval", "1s", "3"]);
    assert!(out.status.success(), "{out:?}");
    let summary = out.json_lines().pop().unwrap();
    let served = node.metrics();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(served.lines().any(|l| l == "node_textfile_scrape_error 0"), "{served}");
    assert!(served.contains("node_textfile_mtime_seconds{file=\""), "{served}");
    let samples: u64 = served
        .lines()
        .filter(|l| l.starts_with("kdiag_irqoff_samples_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(samples, per_cpu_samples(&summary), "{served}");
    assert!(served.contains("# TYPE kdiag_irqoff_window_seconds histogram"), "{served}");
}

/// Metrics flags the user got wrong: one line, exit 2, nothing loaded.
#[test]
fn bad_metrics_flags_exit_2_and_load_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--metrics", "nowhere"], "is not an address to listen on"),
        (&["--metrics", &in_use], "cannot listen there"),
        (
            &["--metrics-file", "/nonexistent-dir/irqoff.prom"],
            "--metrics-file /nonexistent-dir/irqoff.prom: cannot write",
        ),
        (&["--metrics-file", "/tmp/irqoff.txt"], "must end in .prom"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("irqoff_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("irqoff: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
}

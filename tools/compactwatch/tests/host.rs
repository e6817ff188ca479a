//! compactwatch on the running kernel: the real binary, real BPF programs,
//! and allocations and compaction runs the test makes itself. Every live
//! run is filtered to this test process (-p), so other work on the box
//! cannot make a test pass.

use kdiag_testkit::consumers::{free_port, http_get, promtool_check, Prometheus};
use kdiag_testkit::{held_by, programs_held_by, run, run_watching_programs, spawn, Held};
use libbpf_rs::ProgramType;
use serde_json::Value;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_compactwatch");
const BANNER: &str = "watching allocations";
const START: Duration = Duration::from_secs(20);
const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed-004-centos7-order5-nofs.txt");
/// Printed by Debian's 6.12 in the guest tests (tests/vmtest-guest).
const DEBIAN_612: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/debian-6.12-order5-noio.txt");
/// One program and one link per tracepoint (see compactwatch.bpf.c).
const PROGRAMS: usize = 12;

fn me() -> String {
    std::process::id().to_string()
}

/// Fault in `mib` MiB of anonymous memory advised for huge pages (THP is
/// `madvise` on the host), so each 2 MiB extent is one order-9 allocation.
/// Returns how many extents were really backed by huge pages.
fn touch_huge_pages(mib: usize) -> usize {
    const HUGE: usize = 2 << 20;
    let len = mib << 20;
    // SAFETY: anonymous private mapping, unmapped below; all pointers come
    // from mmap and stay inside it.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(raw, libc::MAP_FAILED);
        let base = ((raw as usize + HUGE - 1) & !(HUGE - 1)) as *mut u8;
        assert_eq!(libc::madvise(base as *mut _, len, libc::MADV_HUGEPAGE), 0);
        for off in (0..len).step_by(4096) {
            base.add(off).write_volatile(1);
        }
        let huge = anon_huge_kb() / 2048;
        libc::munmap(raw, len + HUGE);
        huge
    }
}

fn anon_huge_kb() -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Leave `mib` of this process's pages scattered, every other 4 KiB page
/// freed, so that compaction has movable pages to migrate; unmapped when
/// the mapping is dropped.
struct Scattered(*mut libc::c_void, usize);

fn scatter_pages(mib: usize) -> Scattered {
    let len = mib << 20;
    // SAFETY: an anonymous private mapping of `len` bytes, only touched
    // inside; Drop unmaps it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::madvise(p, len, libc::MADV_NOHUGEPAGE), 0);
        for off in (0..len).step_by(4096) {
            (p as *mut u8).add(off).write_volatile(1);
        }
        for off in (0..len).step_by(8192) {
            libc::madvise((p as *mut u8).add(off) as *mut _, 4096, libc::MADV_DONTNEED);
        }
        Scattered(p, len)
    }
}

impl Drop for Scattered {
    fn drop(&mut self) {
        // SAFETY: the mapping scatter_pages made, unmapped once.
        unsafe { libc::munmap(self.0, self.1) };
    }
}

fn pgmigrate_success() -> u64 {
    let vm = std::fs::read_to_string("/proc/vmstat").unwrap();
    vm.lines().find_map(|l| l.strip_prefix("pgmigrate_success ")).unwrap().trim().parse().unwrap()
}

/// Zones with present pages: the ones compact_node() visits.
fn populated_zones() -> usize {
    let info = std::fs::read_to_string("/proc/zoneinfo").unwrap();
    info.lines()
        .filter_map(|l| l.trim().strip_prefix("present"))
        .filter(|v| v.trim().parse::<u64>().unwrap_or(0) > 0)
        .count()
}

#[test]
fn seed_report_gives_the_articles_conclusion() {
    let out = run(BIN, &["--from-dmesg", SEED]);
    assert!(out.status.success(), "{out:?}");
    let t = &out.stdout;
    assert!(t.contains("kworker/31:0 pid 635928: order 5 mode 0x104050, caller osdmap_set_max_osd [libceph]"), "{t}");
    assert!(
        t.contains("(GFP_NOFS|__GFP_COMP|__GFP_KMEMCG) on kernel 3.10 (version not in the report; pre-4.4 inferred"),
        "{t}"
    );
    assert!(t.contains("compaction not attempted: the mask lacks __GFP_FS (GFP_NOFS)"), "{t}");
    let node1 = t.split("Node 1 Normal").nth(1).unwrap();
    assert!(
        node1.contains("order-5 check (pre-4.4, at min): FAILS at step o=3: after taking away 7920 pages in order-3 blocks, 1673 pages left <= min>>4 = 3208"),
        "{t}"
    );
    assert!(t.contains("order-5 watermark check FAILS in every allowed zone"), "{t}");
    assert!(t.contains("advice: This allocation cannot compact for itself"), "{t}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let out = run(BIN, &["--from-dmesg", SEED, "--json"]);
    let v = &out.json_lines()[0];
    assert_eq!(v["type"], "verdict");
    assert_eq!(v["verdict"]["request"]["algo"], "pre44");
    let n1 = v["verdict"]["zones"].as_array().unwrap().iter().find(|z| z["zone"] == "Node 1 Normal").unwrap();
    let fail = n1["check"]["steps"].as_array().unwrap().iter().find(|s| s["ok"] == false).unwrap();
    assert_eq!((fail["step"].as_str(), fail["o"].as_u64()), (Some("lower"), Some(3)), "{fail}");

    // --algo modern asks a different question of the same numbers: the
    // cut report cannot answer it, and the tool says so.
    let out = run(BIN, &["--from-dmesg", SEED, "--algo", "modern"]);
    assert!(out.stdout.contains("order-5 check (modern, at min): cannot tell"), "{}", out.stdout);
}

#[test]
fn bad_input_is_one_line_and_attaches_nothing() {
    let junk = std::env::temp_dir().join(format!("compactwatch-junk-{}.txt", std::process::id()));
    std::fs::write(&junk, "nothing to see\n").unwrap();
    let junk_s = junk.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["--order", "99"], "order must be between 0 and 15".into()),
        (vec!["-p", "0"], "pid must be a positive number".into()),
        (vec!["-p", "4294967290"], "no process with pid 4294967290".into()),
        (vec!["--interval", "0"], "interval must be".into()),
        (vec!["--algo", "3.10"], "unknown algorithm '3.10'".into()),
        (vec!["soon"], "invalid duration 'soon'".into()),
        (vec!["--from-dmesg", "/nonexistent/messages"], "cannot read /nonexistent/messages".into()),
        (
            vec!["--from-dmesg", &junk_s],
            format!("{junk_s}: no page allocation failure report found (looked for a line"),
        ),
    ];
    for (args, want) in &cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("cw_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: refused, exit 2");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("compactwatch: ") && out.stderr.contains(want.as_str()),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    std::fs::remove_file(&junk).unwrap();
}

/// A file with nothing to analyse is the user's input at fault: exit 2,
/// as for a bad flag, in one line that says what was looked for.
#[test]
fn unusable_reports_exit_2() {
    let cut = std::env::temp_dir().join(format!("compactwatch-cut-{}.txt", std::process::id()));
    std::fs::write(&cut, "Oct  6 10:11:12 h kernel: x: page allocation failure: order:3, mode:0x20\n").unwrap();
    let cut_s = cut.to_str().unwrap().to_string();
    for (args, want) in [
        (vec!["--from-dmesg", "/nonexistent/messages"], "cannot read /nonexistent/messages".to_string()),
        (vec!["--from-dmesg", "/dev/null"], "/dev/null: no page allocation failure report found (looked for a line 'COMM: page allocation failure: order:N, mode:0x...' in dmesg, journalctl or syslog form)".into()),
        (vec!["--from-dmesg", &cut_s], format!("{cut_s}: the report has no Mem-Info zone lines")),
    ] {
        let out = run(BIN, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with(&format!("compactwatch: {want}")), "{args:?}: {}", out.stderr);
    }
    std::fs::remove_file(&cut).unwrap();
}

/// `--from-dmesg -` with the text on stdin.
fn from_stdin(args: &[&str], text: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .args(["--from-dmesg", "-"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The report a real 6.12 kernel printed for the test module's order-5
/// GFP_NOIO allocation, given the verdict the live tool gave in the guest.
#[test]
fn a_real_6_12_report_gives_the_live_verdict() {
    // Composite names such as GFP_NOIO are only in the format file's table.
    kdiag_testkit::needs_root("reads tracefs format files");
    let out = run(BIN, &["--from-dmesg", DEBIAN_612]);
    assert!(out.status.success(), "{out:?}");
    let t = &out.stdout;
    assert!(t.contains(", logged [37.707503]) init pid 1: order 5 mode 0xc00, caller alloc_set [kdiag_test]"), "{t}");
    assert!(t.contains("(GFP_NOIO) on kernel 6.12, modern watermark algorithm"), "{t}");
    assert!(
        t.contains("compaction not attempted: the mask lacks __GFP_IO (GFP_NOIO): kernel 6.12 never compacts"),
        "{t}"
    );
    assert!(t.contains("order-5 watermark check FAILS in every allowed zone"), "{t}");
    assert!(!t.contains("earlier report"), "{t}");
}

/// Several reports on stdin: the newest by default, each newest first with
/// --all; the same from a journalctl-style capture of them.
#[test]
fn several_reports_newest_first() {
    let both = std::fs::read_to_string(SEED).unwrap() + &std::fs::read_to_string(DEBIAN_612).unwrap();
    let (st, out, err) = from_stdin(&[], &both);
    assert!(st.success(), "{err}");
    assert_eq!(out.matches("FAIL (from stdin, report ").count(), 1, "{out}");
    assert!(out.contains("FAIL (from stdin, report 2 of 2, logged [37.707503]) init pid 1"), "{out}");
    assert!(out.contains("1 earlier report(s) in stdin not shown; --all analyses each, newest first"), "{out}");

    let (st, out, err) = from_stdin(&["--all"], &both);
    assert!(st.success(), "{err}");
    let init = out.find("report 2 of 2, logged [37.707503]) init pid 1").unwrap();
    let seed = out.find("report 1 of 2) kworker/31:0 pid 635928").unwrap();
    assert!(init < seed, "{out}");
    assert!(out.contains("compaction not attempted: the mask lacks __GFP_FS (GFP_NOFS)"), "{out}");

    let journal: String = both.lines().map(|l| format!("Oct 06 10:11:12.000042 ceph7 kernel: {l}\n")).collect();
    let (st, out, err) = from_stdin(&["--all", "--json"], &journal);
    assert!(st.success(), "{err}");
    let v: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let shown: Vec<(u64, &str)> =
        v.iter().map(|o| (o["report"].as_u64().unwrap(), o["comm"].as_str().unwrap())).collect();
    assert_eq!(shown, [(2, "init"), (1, "kworker/31:0")]);
    assert!(v.iter().all(|o| o["type"] == "verdict" && o["reports"] == 2), "{out}");
    assert_eq!(v[0]["mems_allowed"], "0");
}

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["1"]);
}

/// Order-9 allocations this process makes are counted, attributed to the
/// THP fault path and to this process, filtered in the kernel by -p.
#[test]
fn huge_page_allocations_are_counted_with_their_caller() {
    huge_page_allocations_counted(&[]);
}

/// The same through the classic records, the rung for tracepoints whose
/// raw arguments this tool does not know.
#[test]
fn huge_page_allocations_on_classic_tracepoints() {
    huge_page_allocations_counted(&["--backend", "tracepoint"]);
}

fn huge_page_allocations_counted(backend: &[&str]) {
    let pid = me();
    let mut args = vec!["--order", "9", "-p", &pid, "--json", "--stack"];
    args.extend(backend);
    let mut r = spawn(BIN, &args);
    r.wait_for_stderr(BANNER, START);
    let huge = touch_huge_pages(64);
    assert!(huge >= 8, "the kernel gave only {huge} huge pages; THP must be 'madvise' or 'always'");
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let sum = lines.last().unwrap();
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["stop_reason"], "SIGINT received");
    let o9 = sum["by_order"].as_array().unwrap().iter().find(|o| o["order"] == 9).expect("order 9 counted");
    assert!(o9["ok"].as_u64().unwrap() >= huge as u64, "{sum}");
    let top = &sum["top_callers"][0];
    assert_eq!(top["last_pid"].as_u64(), Some(std::process::id() as u64), "{sum}");
    let stack: Vec<&str> = top["stack"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(stack.iter().any(|f| f.starts_with("do_huge_pmd_anonymous_page")), "{stack:?}");
    assert!(top["caller"].as_str().unwrap().starts_with("do_huge_pmd_anonymous_page"), "{top}");
    // Nothing from other processes: -p is applied in the kernel. Every
    // record but the summary must name this process (a record without a
    // pid fails too), and so must every caller counted.
    let records: Vec<&Value> = lines.iter().filter(|l| l["type"] != "summary").collect();
    assert!(records.iter().all(|l| l["pid"] == std::process::id()), "{records:?}");
    let callers = sum["top_callers"].as_array().unwrap();
    assert!(callers.iter().all(|c| c["last_pid"] == std::process::id()), "{callers:?}");
}

/// A write to /proc/sys/vm/compact_memory runs compact_zone() on every zone
/// in the writer's context: each run is reported with the status name the
/// kernel's format file gives and a duration, and the interval verdict
/// sees the vmstat counters move.
#[test]
fn compaction_runs_are_reported_with_status_and_duration() {
    compaction_runs_reported(&[]);
}

/// Raw tracepoints without BTF types (kernels before 5.5, or --btf): the
/// same programs, untyped.
#[test]
fn compaction_runs_on_raw_tracepoints() {
    compaction_runs_reported(&["--backend", "raw_tp"]);
}

#[test]
fn compaction_runs_on_classic_tracepoints() {
    compaction_runs_reported(&["--backend", "tracepoint"]);
}

fn compaction_runs_reported(backend: &[&str]) {
    let pid = me();
    let mut args = vec!["--order", "9", "-p", &pid, "--json", "--interval", "1"];
    args.extend(backend);
    let mut r = spawn(BIN, &args);
    r.wait_for_stderr(BANNER, START);
    let scattered = scatter_pages(64);
    let migrated_before = pgmigrate_success();
    std::fs::write("/proc/sys/vm/compact_memory", "1").unwrap();
    let migrated_globally = pgmigrate_success() - migrated_before;
    drop(scattered);
    std::thread::sleep(Duration::from_millis(1500));
    r.signal(libc::SIGTERM);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    // Tests in this process run at once, each writing compact_memory: only
    // this thread's runs are this test's.
    let tid = unsafe { libc::gettid() } as u64;
    let runs: Vec<&Value> = lines.iter().filter(|l| l["type"] == "compact" && l["tid"] == tid).collect();
    let populated = populated_zones();
    assert_eq!(runs.len(), populated, "one run per populated zone: {runs:?}");
    let status_table =
        std::fs::read_to_string("/sys/kernel/tracing/events/compaction/mm_compaction_end/format").unwrap();
    for run in &runs {
        assert_eq!(run["pid"].as_u64(), Some(std::process::id() as u64));
        assert_eq!(run["mode"], "sync", "compact_memory compacts synchronously: {run}");
        let status = run["status"].as_str().unwrap();
        assert!(status_table.contains(&format!("\"{status}\"")), "{status} not a name of this kernel: {run}");
        assert!(run["zone"].as_str().unwrap().starts_with("Node 0 "), "{run}");
    }
    assert!(runs.iter().any(|r| r["duration_us"].as_u64().unwrap() > 0), "{runs:?}");
    // Pages migrated by our runs, summed in BPF from migratepages events,
    // cannot exceed what the whole system migrated meanwhile.
    let ours: u64 = runs.iter().map(|r| r["migrated"].as_u64().unwrap()).sum();
    assert!(ours <= migrated_globally, "runs say {ours} migrated, vmstat says {migrated_globally}");
    // The scattered pages give our runs work: when anything moved, ours
    // did (kcompactd moving pages in these milliseconds alone is unlikely).
    assert!(migrated_globally == 0 || ours > 0, "runs say none migrated, vmstat says {migrated_globally}");
    assert!(lines.iter().any(|l| l["type"] == "verdict"), "--interval 1 gave no verdict");
    let sum = lines.last().unwrap();
    assert_eq!(sum["stop_reason"], "SIGTERM received");
    assert_eq!(sum["backend"], backend.get(1).copied().unwrap_or("tp_btf"));
    assert!(!out.stderr.contains("as a classic tracepoint"), "{}", out.stderr);
    let every_run = lines.iter().filter(|l| l["type"] == "compact").count();
    assert_eq!(sum["compaction_runs"].as_u64(), Some(every_run as u64));
}

/// The interval verdict is computed from what /proc says now: same
/// watermarks, and a verdict per populated zone with a named algorithm.
#[test]
fn interval_verdict_matches_zoneinfo() {
    let out = run(BIN, &["--order", "9", "-p", &me(), "--interval", "1", "--json", "2"]);
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let v = lines.iter().find(|l| l["type"] == "verdict").expect("a verdict within 2 s");
    assert_eq!(v["verdict"]["request"]["algo"], "modern");
    assert_eq!(v["verdict"]["request"]["order"], 9);
    let zones = v["verdict"]["zones"].as_array().unwrap();
    let info = std::fs::read_to_string("/proc/zoneinfo").unwrap();
    for z in zones {
        let name = z["name"].as_str().unwrap();
        let block = info.split("Node 0, zone").find(|b| b.split_whitespace().next() == Some(name)).unwrap();
        let field = |k: &str| -> i64 {
            block.lines().find_map(|l| l.trim().strip_prefix(k)?.strip_prefix(' ')).unwrap().trim().parse().unwrap()
        };
        // The watermarks are set once; free pages move, but not by a tenth
        // of the zone between the tool's read and this one.
        for k in ["min", "low", "high"] {
            assert_eq!(z[k].as_i64(), Some(field(k)), "{k}: {z}");
        }
        let free = field("pages free");
        let spread = (field("managed") / 10).max(1024);
        assert!((z["free"].as_i64().unwrap() - free).abs() <= spread, "free {free} now: {z}");
        // The verdict is what its own steps say, measured against min.
        let steps = z["check"]["steps"].as_array().unwrap();
        let all_ok = steps.iter().all(|s| s["ok"] == true);
        assert_eq!(z["check"]["ok"], all_ok, "{z}");
        assert_eq!(steps[0]["min"], z["check"]["mark"], "{z}");
        assert_eq!(z["check"]["algo"], "modern");
        assert_eq!(z["other"]["algo"], "pre44");
    }
    assert!(zones.iter().any(|z| z["name"] == "Normal"));
}

fn detaches_everything(stop: Option<i32>, reason: &str) {
    let pid = me();
    let args: Vec<&str> = if stop.is_some() { vec!["-p", &pid, "--json"] } else { vec!["-p", &pid, "--json", "2"] };
    let mut r = spawn(BIN, &args);
    r.wait_for_stderr(BANNER, START);
    let held: Held = held_by(r.pid());
    assert_eq!(held.progs.len(), PROGRAMS, "{held:?}");
    assert_eq!(held.links.len(), PROGRAMS, "{held:?}");
    // All raw tracepoints, typed by this kernel's BTF: no perf event, so
    // nothing waits for an RCU grace period when they go.
    assert_eq!(held.perf_events, 0, "{held:?}");
    for (name, ty) in programs_held_by(r.pid()) {
        assert_eq!(ty, ProgramType::Tracing, "{name}");
    }
    r.end_with(stop, reason);
    kdiag_testkit::assert_released(&held, Duration::from_secs(5));
}

kdiag_testkit::detach_tests!(detaches_everything);

/// A stop request at any moment of start-up or run ends it cleanly. At its defaults: order 4 and up, every task.
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

/// A real Prometheus scrapes --metrics while this process faults in huge
/// pages and compacts memory: its HTTP API then holds exactly the exit
/// summary's counts, and the runs by status that the records name.
#[test]
fn prometheus_holds_what_the_summary_says() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prom = Prometheus::start(addr);
    let addr_arg = addr.to_string();
    let mut r = spawn(BIN, &["--order", "9", "-p", &me(), "--json", "--max-rate", "0", "--metrics", &addr_arg]);
    let banner = r.wait_for_stderr(BANNER, START);
    assert!(banner.contains(&format!("metrics on http://{addr}/metrics")), "{banner}");
    prom.wait_until_up();
    let huge = touch_huge_pages(64);
    assert!(huge >= 8, "the kernel gave only {huge} huge pages; THP must be 'madvise' or 'always'");
    std::fs::write("/proc/sys/vm/compact_memory", "1").unwrap();
    let served = http_get(addr, "/metrics").unwrap();
    assert_eq!(promtool_check(&served), "", "{served}");
    std::thread::sleep(Duration::from_millis(1500));
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    let lines = out.json_lines();
    let sum = lines.last().unwrap();
    let last = |m: &str| prom.query(&format!("sum(last_over_time({m}[5m]))")).unwrap_or(0.0) as u64;
    let o9 = sum["by_order"].as_array().unwrap().iter().find(|o| o["order"] == 9).expect("order 9 counted");
    assert!(o9["ok"].as_u64().unwrap() >= huge as u64, "{sum}");
    assert_eq!(last("kdiag_compactwatch_allocations_total{order=\"9\",outcome=\"ok\"}"), o9["ok"], "{sum}");
    assert_eq!(last("kdiag_compactwatch_allocations_total{outcome=\"failed\"}"), sum["failures"], "{sum}");
    assert_eq!(last("kdiag_compactwatch_stalls_total{outcome=\"ok\"}"), sum["stalls"], "{sum}");
    assert_eq!(last("kdiag_compactwatch_background_compaction_runs_total"), sum["compaction_runs"], "{sum}");
    assert_eq!(last("kdiag_compactwatch_lost_records_total"), sum["lost"], "{sum}");
    // Every run a record shows, alone or inside a stall or failure.
    let mut by_status = std::collections::BTreeMap::<String, u64>::new();
    for l in &lines {
        let runs = match l["type"].as_str() {
            Some("compact") => vec![l],
            Some("stall") => l["runs"].as_array().unwrap().iter().collect(),
            Some("fail") => l["stall"]["runs"].as_array().map(|r| r.iter().collect()).unwrap_or_default(),
            _ => vec![],
        };
        for run in runs {
            *by_status.entry(run["status"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    assert!(by_status.values().sum::<u64>() >= populated_zones() as u64, "{by_status:?}");
    for (status, n) in &by_status {
        assert_eq!(last(&format!("kdiag_compactwatch_compaction_runs_total{{status=\"{status}\"}}")), *n, "{status}");
    }
    assert_eq!(last("kdiag_compactwatch_compaction_runs_total"), by_status.values().sum::<u64>());
}

/// Metrics flags the user got wrong: one line, exit 2, nothing loaded.
#[test]
fn bad_metrics_flags_exit_2_and_load_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--metrics", "nowhere"], "is not an address to listen on"),
        (&["--metrics", &in_use], "cannot listen there"),
        (&["--metrics-file", "/nonexistent-dir/cw.prom"], "--metrics-file /nonexistent-dir/cw.prom: cannot write"),
        (&["--metrics", "127.0.0.1:0", "--from-dmesg", SEED], "watch a live run, not --from-dmesg"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("cw_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("compactwatch: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
}

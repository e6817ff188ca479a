//! funcstack on the running kernel: the real binary, real BPF programs or
//! a real ftrace instance, and workloads the test makes itself (tmpfs
//! mounts it unmounts, direct I/O it writes), filtered to this process so
//! that other tests on the same kernel cannot change the counts.

use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_testkit::consumers::pprof_raw;
use kdiag_testkit::{assert_released, held_by, run, run_watching_programs, spawn, Output};
use serde_json::Value;
use std::ffi::CString;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_funcstack");
const BANNER: &str = "counting stacks that reach";
const START: Duration = Duration::from_secs(30);
const UMOUNT: &str = "tracepoint:syscalls:sys_enter_umount";

fn tmp(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("funcstack-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// In a thread named `name`: mount a tmpfs and unmount it, `n` times.
/// Returns the thread's id.
fn umounts(name: &str, n: u32) -> u32 {
    let dir = tmp(name);
    let d = CString::new(dir.to_str().unwrap()).unwrap();
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for _ in 0..n {
                // SAFETY: valid NUL-terminated strings, null data.
                let rc = unsafe { libc::mount(c"none".as_ptr(), d.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
                assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
                // SAFETY: as above.
                let rc = unsafe { libc::umount2(d.as_ptr(), 0) };
                assert_eq!(rc, 0, "umount: {}", std::io::Error::last_os_error());
            }
            gettid()
        })
        .unwrap();
    let tid = h.join().unwrap();
    std::fs::remove_dir(&dir).unwrap();
    tid
}

/// In a thread named `name`: `n` direct 4 KiB overwrites of a file that
/// already has its blocks, each one bio and one request, with pwrite.
fn direct_writes(name: &str, n: u32) -> u32 {
    let path = tmp(name).join("data");
    std::fs::write(&path, vec![1u8; 4096 * n as usize]).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let p = path.clone();
    let tid = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&p).unwrap();
            let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: a non-zero layout; freed below.
            let buf = unsafe { std::alloc::alloc_zeroed(layout) };
            // SAFETY: buf holds 4096 initialised bytes.
            let slice = unsafe { std::slice::from_raw_parts(buf, 4096) };
            for i in 0..n {
                f.write_at(slice, 4096 * i as u64).unwrap();
            }
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(buf, layout) };
            gettid()
        })
        .unwrap()
        .join()
        .unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    tid
}

fn me() -> String {
    std::process::id().to_string()
}

/// Start funcstack with `args`, run `work` once it is counting, stop it
/// with SIGINT.
fn trace<T>(args: &[&str], work: impl FnOnce() -> T) -> (Output, T) {
    trace_paused(args, false, work)
}

/// As `trace`; with `paused`, funcstack is stopped while `work` runs, so it
/// reads the events only after the tasks behind them have exited.
fn trace_paused<T>(args: &[&str], paused: bool, work: impl FnOnce() -> T) -> (Output, T) {
    let mut r = spawn(BIN, args);
    r.wait_for_stderr(BANNER, START);
    if paused {
        r.signal(libc::SIGSTOP);
    }
    let t = work();
    if paused {
        r.signal(libc::SIGCONT);
    }
    r.signal(libc::SIGINT);
    let out = r.wait();
    assert!(out.status.success(), "{out:?}");
    (out, t)
}

fn json(out: &Output) -> (Vec<Value>, Value) {
    let mut lines = out.json_lines();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{summary}");
    (lines, summary)
}

fn syms(stack: &Value) -> Vec<String> {
    stack.as_array().map(|a| a.iter().filter_map(|f| f["sym"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Tests run one at a time and only funcstack names instances so.
fn no_instances_left() -> bool {
    let dir = kdiag_shared::precheck::tracefs().unwrap().join("instances");
    !std::fs::read_dir(dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("kdiag-funcstack-"))
}

fn instance_dir(pid: u32) -> PathBuf {
    kdiag_shared::precheck::tracefs().unwrap().join(format!("instances/kdiag-funcstack-{pid}"))
}

/// The umount tracepoint, through BPF and through ftrace: exactly our
/// umounts, from our thread, each with the syscall entry path below it.
fn umount_stacks(backend: &str) {
    let (out, tid) = trace(&["-p", &me(), "--json", "--backend", backend, UMOUNT], || umounts("fs-umounter", 3));
    let (stacks, summary) = json(&out);
    assert_eq!(summary["backend"], backend, "{summary}");
    assert!(out.stderr.contains(&format!("backend {backend} (")), "{}", out.stderr);
    assert_eq!(summary["count"], 3, "{stacks:#?}\n{summary}");
    // The records themselves, not only the summary, add up to our umounts.
    let n: u64 = stacks.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(n, 3, "{stacks:#?}");
    for s in &stacks {
        assert_eq!(s["target"], UMOUNT, "{s}");
        assert_eq!(s["comm"], "fs-umounter", "{s}");
        assert_eq!(s["pid"].as_u64().unwrap().to_string(), me(), "{s}");
        assert_eq!(s["tid"], tid, "{s}");
        assert!(!s["cpus"].as_array().unwrap().is_empty(), "{s}");
        let k = syms(&s["kernel_stack"]);
        // Innermost first: the syscall tracing hook, the syscall dispatcher,
        // the entry code; no tracer frames on top.
        let pos = |name: &str| k.iter().position(|f| f == name).unwrap_or_else(|| panic!("{name} not in {k:?}"));
        assert!(pos("syscall_trace_enter") < pos("do_syscall_64"), "{k:?}");
        assert!(k.last().unwrap().starts_with("entry_SYSCALL_64"), "{k:?}");
        assert!(
            !k.iter().any(|f| f.starts_with("perf_") || f.starts_with("ftrace_") || f.starts_with("bpf_")),
            "{k:?}"
        );
    }
    // The kernel side saw at least ours (others may unmount meanwhile).
    assert!(summary["hits"].as_u64().unwrap() >= 3, "{summary}");
}

#[test]
fn umount_tracepoint_stacks_by_bpf() {
    umount_stacks("tracepoint");
}

#[test]
fn umount_tracepoint_stacks_by_ftrace_without_bpf() {
    umount_stacks("ftrace");
}

/// Direct I/O reaches block_io_start inside pwrite64 in the writer's own
/// context: the whole path from the syscall down to the block layer.
fn block_io_stacks(backend: &str) {
    const N: u32 = 4;
    let args = ["-p", &me(), "-c", "fs-writer", "--json", "--backend", backend, "tracepoint:block:block_io_start"];
    let (out, tid) = trace(&args, || direct_writes("fs-writer", N));
    let (stacks, summary) = json(&out);
    let writes: Vec<&Value> =
        stacks.iter().filter(|s| syms(&s["kernel_stack"]).iter().any(|f| f.contains("pwrite64"))).collect();
    let n: u64 = writes.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(n, N as u64, "{stacks:#?}\n{summary}");
    for s in &writes {
        assert_eq!((s["comm"].as_str(), s["tid"].as_u64()), (Some("fs-writer"), Some(tid as u64)), "{s}");
        let k = syms(&s["kernel_stack"]);
        let pos = |name: &str| k.iter().position(|f| f == name).unwrap_or_else(|| panic!("{name} not in {k:?}"));
        assert!(pos("blk_mq_submit_bio") < pos("vfs_write"), "{k:?}");
        assert!(pos("vfs_write") < pos("do_syscall_64"), "{k:?}");
        assert!(k.iter().any(|f| f.contains("dio")), "direct I/O path expected: {k:?}");
    }
    // Every stack printed is the writer's: -p and -c both applied.
    assert!(stacks.iter().all(|s| s["comm"] == "fs-writer"), "{stacks:#?}");
}

#[test]
fn direct_io_stacks_reach_the_block_layer_by_bpf() {
    block_io_stacks("tracepoint");
}

#[test]
fn direct_io_stacks_reach_the_block_layer_by_ftrace() {
    block_io_stacks("ftrace");
}

#[test]
fn text_output_and_top_n() {
    let (out, (a, b)) = trace(&["-p", &me(), "-n", "1", UMOUNT], || (umounts("fs-um-two", 2), umounts("fs-um-one", 1)));
    let text = &out.stdout;
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| b.starts_with("  tracepoint:")).collect();
    // -n 1: only the most frequent stack, the thread that unmounted twice.
    assert_eq!(blocks.len(), 1, "{text}");
    let lines: Vec<&str> = blocks[0].lines().collect();
    assert_eq!(lines[0], format!("  {UMOUNT}"));
    assert_eq!(lines[1], "    syscall_trace_enter", "{text}");
    let n = lines.len();
    assert!(lines[n - 2].starts_with(&format!("    fs-um-two {}/{a} CPU ", me())), "{text}");
    assert_eq!(lines[n - 1], "      2", "{text}");
    assert!(!text.contains(&format!("/{b} ")), "{text}");
    assert!(
        text.contains("Total: 3 calls of tracepoint:syscalls:sys_enter_umount in 2 distinct stacks, 1 shown (-n)"),
        "{text}"
    );
    assert!(text.contains("funcstack: SIGINT received after "), "{text}");
}

#[test]
fn folded_output_and_svg() {
    let svg = tmp("svg").join("umount.svg");
    let svg_arg = svg.to_str().unwrap().to_string();
    let (out, _) = trace(&["-p", &me(), "-f", "--svg", &svg_arg, UMOUNT], || umounts("fs-folded", 3));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    let (stack, count) = lines[0].rsplit_once(' ').unwrap();
    assert_eq!(count, "3");
    let frames: Vec<&str> = stack.split(';').collect();
    assert_eq!(frames[0], "fs-folded");
    assert!(frames[1].starts_with("entry_SYSCALL_64"), "{frames:?}");
    assert_eq!(&frames[frames.len() - 3..], ["do_syscall_64", "syscall_trace_enter", UMOUNT]);
    // stdout is only folded lines; the summary went to stderr.
    assert!(out.stderr.contains("Total: 3 calls"), "{}", out.stderr);
    let doc = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_dir_all(svg.parent().unwrap()).unwrap();
    assert!(doc.starts_with("<?xml") && doc.trim_end().ends_with("</svg>"));
    assert!(doc.contains("syscall_trace_enter") && doc.contains("fs-folded"), "{}", &doc[..300]);
    assert!(out.stderr.contains("flame graph written to"), "{}", out.stderr);
}

#[test]
fn bad_targets_are_explained_in_one_line_and_attach_nothing() {
    let cases: &[(&[&str], &str)] = &[
        (&["no_such_function_kdiag"], "no function no_such_function_kdiag in this kernel"),
        (&["kdiag_nothing_matches_*"], "no kernel function matches 'kdiag_nothing_matches_*'"),
        // The kernel keeps tracers out of noinstr code; do_syscall_64 is
        // noinstr on x86-64.
        (&["do_syscall_64"], "do_syscall_64 is not traceable: the kernel keeps tracers out of noinstr code"),
        // Variables are in kallsyms only with KALLSYMS_ALL; section markers always.
        (&["__start_rodata"], "__start_rodata is not a function"),
        (&["tracepoint:syscalls:sys_enter_kdiag"], "no tracepoint syscalls:sys_enter_kdiag in this kernel"),
        (&["tracepoint:kdiag:x"], "no tracepoint group 'kdiag'"),
        (&["--ret", UMOUNT], "--ret needs a function: tracepoints have no return value"),
        (
            &["--backend", "fentry", UMOUNT],
            "backend fentry cannot trace tracepoint:syscalls:sys_enter_umount (use tracepoint or ftrace)",
        ),
        (&["--backend", "hw", UMOUNT], "unknown backend 'hw'"),
        (&["vfs read"], "'vfs read' is not a function name or glob"),
        (&["-p", "999999999", UMOUNT], "no such process: 999999999"),
    ];
    for (args, want) in cases {
        let (out, progs) = run_watching_programs(BIN, args);
        assert!(!progs.iter().any(|n| n.starts_with("fs_")), "{args:?} loaded {progs:?}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("funcstack: ") && out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    let out = run(BIN, &["-n", "0", UMOUNT]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(no_instances_left());
}

/// A real function: on this host no mechanism can reach it (no kprobes,
/// fentry refused, the function tracer refused), and the tool must say
/// what each rung answered; where something works (a guest kernel), it
/// must trace our fsync. Which case applies is decided by independent
/// witnesses, not by the tool.
#[test]
fn a_function_is_traced_or_each_refusal_is_explained() {
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let fentry = kdiag_shared::probe::kernel_supports(Mechanism::Fentry);
    let tracefs = kdiag_shared::precheck::tracefs().unwrap();
    let inst = kdiag_shared::ftrace::Instance::create(&tracefs, "witness").unwrap();
    let ftrace_ok = inst.write("set_ftrace_filter", "vfs_fsync_range").is_ok();
    drop(inst);
    if fentry.is_err() && !kprobe_pmu && !ftrace_ok {
        assert!(matches!(fentry, Err(ProbeError::Unavailable(_))), "{fentry:?}");
        let out = run(BIN, &["vfs_fsync_range", "1"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let e = out.stderr.trim();
        assert_eq!(out.stderr.lines().count(), 1, "{e}");
        assert!(e.starts_with("funcstack: cannot trace vfs_fsync_range: no usable backend on this kernel ("), "{e}");
        assert!(e.contains("fentry: EPERM at load"), "{e}");
        assert!(e.contains("kprobe: ENOENT at attach"), "{e}");
        assert!(
            e.contains(
                "ftrace: EPERM writing 'vfs_fsync_range' to set_ftrace_filter: this kernel refuses the function tracer"
            ),
            "{e}"
        );
        assert!(no_instances_left());
        return;
    }
    let path = tmp("fsync").join("f");
    let (out, _) = trace(&["-p", &me(), "--json", "vfs_fsync_range"], || {
        let f = std::fs::File::create(&path).unwrap();
        for _ in 0..3 {
            f.write_at(b"x", 0).unwrap();
            f.sync_all().unwrap();
        }
    });
    let (stacks, summary) = json(&out);
    let want = if fentry.is_ok() {
        "fentry"
    } else if kprobe_pmu {
        "kprobe"
    } else {
        "ftrace"
    };
    assert_eq!(summary["backend"], want, "{summary}");
    let n: u64 = stacks
        .iter()
        .filter(|s| syms(&s["kernel_stack"]).iter().any(|f| f == "do_fsync"))
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert_eq!(n, 3, "{stacks:#?}");
}

fn check_stop(out: Output, want_reason: &str) -> Output {
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&format!("funcstack: {want_reason} after ")), "{}", out.stdout);
    out
}

#[test]
fn bpf_programs_are_released_on_sigint_sigterm_and_duration() {
    for (how, reason) in [(Some(libc::SIGINT), "SIGINT received"), (Some(libc::SIGTERM), "SIGTERM received")] {
        let mut r = spawn(BIN, &["-p", &me(), UMOUNT]);
        r.wait_for_stderr(BANNER, START);
        let held = held_by(r.pid());
        assert_eq!(held.progs.len(), 1, "{held:?}");
        assert_eq!(held.links.len(), 1, "{held:?}");
        r.signal(how.unwrap());
        check_stop(r.wait(), reason);
        assert_released(&held, Duration::from_secs(10));
    }
    let mut r = spawn(BIN, &["-p", &me(), UMOUNT, "2"]);
    r.wait_for_stderr(BANNER, START);
    let held = held_by(r.pid());
    assert!(!held.progs.is_empty(), "{held:?}");
    check_stop(r.wait(), "duration ended");
    assert_released(&held, Duration::from_secs(10));
}

#[test]
fn ftrace_instance_is_removed_on_sigint_sigterm_and_duration() {
    let args = ["--backend", "ftrace", "-p", &me(), UMOUNT];
    for (sig, reason) in [(libc::SIGINT, "SIGINT received"), (libc::SIGTERM, "SIGTERM received")] {
        let mut r = spawn(BIN, &args);
        r.wait_for_stderr(BANNER, START);
        let dir = instance_dir(r.pid());
        assert!(dir.join("trace_pipe").exists(), "{dir:?}");
        // The event is on in our instance, and no BPF is used at all.
        let enabled = std::fs::read_to_string(dir.join("events/syscalls/sys_enter_umount/enable")).unwrap();
        assert_eq!(enabled.trim(), "1");
        assert!(held_by(r.pid()).progs.is_empty());
        r.signal(sig);
        check_stop(r.wait(), reason);
        assert!(!dir.exists(), "{dir:?} left behind");
    }
    let mut all = args.to_vec();
    all.push("1");
    let mut r = spawn(BIN, &all);
    r.wait_for_stderr(BANNER, START);
    let dir = instance_dir(r.pid());
    assert!(dir.exists());
    check_stop(r.wait(), "duration ended");
    assert!(!dir.exists(), "{dir:?} left behind");
}

/// SIGKILL leaves the instance behind; the next run removes it.
#[test]
fn an_instance_left_by_a_killed_run_is_removed_by_the_next() {
    let mut r = spawn(BIN, &["--backend", "ftrace", "-p", &me(), UMOUNT]);
    r.wait_for_stderr(BANNER, START);
    let dir = instance_dir(r.pid());
    r.signal(libc::SIGKILL);
    let _ = r.wait();
    assert!(dir.exists(), "a killed run cannot clean up; {dir:?} should still be there");
    let out = run(BIN, &["--backend", "ftrace", "-p", &me(), UMOUNT, "1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.exists(), "{dir:?} was not removed by the next run");
}

#[test]
fn help_explains_the_columns() {
    let out = run(BIN, &["--help"]);
    assert!(out.status.success());
    for want in
        ["COMM PID/TID CPU", "COUNT", "[Missed Kernel Stack: EEXIST]", "Backends, best first", "tracepoint:GROUP:NAME"]
    {
        assert!(out.stdout.contains(want), "{want} missing from --help");
    }
}

/// -U: the user stack's first frame is exact (the syscall instruction, not
/// a return address), so it names the libc wrapper this test called.
#[test]
fn user_stacks_name_the_libc_wrapper() {
    let (out, _) = trace(&["-p", &me(), "-U", "--json", UMOUNT], || umounts("fs-user", 2));
    let (stacks, summary) = json(&out);
    assert_eq!(summary["count"], 2, "{stacks:#?}");
    let counted = |stacks: &[Value]| stacks.iter().map(|s| s["count"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(counted(&stacks), 2, "{stacks:#?}");
    for s in &stacks {
        let user = syms(&s["user_stack"]);
        assert_eq!(user.first().map(String::as_str), Some("umount2"), "{s}");
        assert!(syms(&s["kernel_stack"]).iter().any(|f| f == "do_syscall_64"), "{s}");
    }
    // Without -U no user stack is taken at all.
    let (out, _) = trace(&["-p", &me(), "--json", UMOUNT], || umounts("fs-nouser", 1));
    let (stacks, _) = json(&out);
    assert_eq!(counted(&stacks), 1, "{stacks:#?}");
    assert!(stacks.iter().all(|s| s["user_stack"].is_null()), "{stacks:#?}");
}

#[test]
fn missing_privileges_is_one_clear_line() {
    kdiag_testkit::assert_refused_without_privileges(BIN, &["vfs_read", "1"]);
}

/// A stop request at any moment of start-up or run ends it cleanly: on the
/// BPF tracepoint rung, and on the ftrace rung, whose tracefs instance is
/// not bound to a file descriptor and must be removed by the tool itself.
#[test]
fn stops_cleanly_at_any_moment() {
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &[UMOUNT, "30"]);
    kdiag_testkit::assert_stops_cleanly_at_any_moment(BIN, &["--backend", "ftrace", UMOUNT, "30"]);
}

/// `| head`: a reader that goes away ends the run quietly, exit 0; a gone
/// stderr is no reason to panic.
#[test]
fn survives_closed_outputs() {
    kdiag_testkit::assert_survives_closed_outputs(BIN, &[UMOUNT, "1"]);
}

/// `go tool pprof -raw` reads --pprof written during the same run as the
/// text report: the same stacks, frames in the order printed (target,
/// kernel callers, user callers), the same counts and total; the task's
/// name is a label.
#[test]
fn go_tool_pprof_reads_what_the_text_says() {
    let path = tmp("pprof").join("umount.pb.gz");
    let arg = path.to_str().unwrap().to_string();
    let (out, _) =
        trace(&["-p", &me(), "-U", "--pprof", &arg, UMOUNT], || (umounts("fs-pprof-a", 3), umounts("fs-pprof-b", 1)));
    assert!(out.stderr.contains(&format!("pprof profile written to {arg}")), "{}", out.stderr);
    let prof = pprof_raw(&path);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert_eq!(prof.types, ["calls/count"]);
    let mut from_pprof: Vec<(String, Vec<String>, i64)> = prof
        .samples
        .iter()
        .map(|s| {
            let comm = s.labels.iter().find(|(k, _)| k == "comm").expect("a comm label").1.clone();
            (comm, s.frames.clone(), s.values[0])
        })
        .collect();
    from_pprof.sort();
    let mut from_text: Vec<(String, Vec<String>, i64)> = out
        .stdout
        .split("\n\n")
        .filter(|b| b.starts_with("  tracepoint:"))
        .map(|b| {
            let lines: Vec<&str> = b.lines().collect();
            let n = lines.len();
            let comm = lines[n - 2].split_whitespace().next().unwrap().to_string();
            let frames = lines[..n - 2].iter().map(|l| l.trim().to_string()).filter(|l| l != "--").collect();
            (comm, frames, lines[n - 1].trim().parse().unwrap())
        })
        .collect();
    from_text.sort();
    assert!(from_text.iter().any(|(c, f, n)| c == "fs-pprof-a" && *n == 3 && f[0] == UMOUNT), "{from_text:?}");
    assert!(from_text.iter().any(|(_, f, _)| f.len() > 3), "user frames too: {from_text:?}");
    assert_eq!(from_pprof, from_text);
    let total = out.stdout.lines().find_map(|l| l.strip_prefix("Total: ")).expect("a Total line");
    assert!(total.starts_with(&format!("{} calls", prof.total("calls/count"))), "{total}");
}

#[test]
fn an_unwritable_pprof_path_exits_2_and_attaches_nothing() {
    let (out, progs) = run_watching_programs(BIN, &["--pprof", "/nonexistent-dir/f.pb.gz", UMOUNT]);
    assert!(!progs.iter().any(|n| n.starts_with("fs_")), "{progs:?}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "funcstack: --pprof /nonexistent-dir/f.pb.gz: cannot write it: No such file or directory (os error 2)"
    );
}

//! compactwatch against order-5 allocations the test module makes from
//! this process (the module allocates in the context of the task writing
//! its `alloc` knob, so `-p` is our own pid) right after fragmenting
//! memory, once per GFP mode whose outcome the kernel fixes:
//!   GFP_NOFS: direct compaction is allowed (since 4.10), so a stall with
//!     compaction attempted and its runs, each with status and duration;
//!   GFP_NOIO: never compacted, so "lacks __GFP_IO" is said;
//!   GFP_KERNEL|__GFP_NORETRY: gives up once compaction has nothing left
//!     to give, so a fail record carrying its stall; about a thousand of
//!     them in two seconds, a flood --max-rate must hold back whole while
//!     the summary still counts every one, by order and by caller.
//! Every fail record must be followed by a verdict record, and in every
//! case the summary's order-5 failures are exactly the module's count and
//! no record is lost.
//! Then the same GFP_NOIO allocation without __GFP_NOWARN: the kernel
//! prints its own "page allocation failure" report, which is read back
//! from the kernel log, printed on the console (KDIAG-DMESG lines: the
//! host keeps it as a fixture) and given to `compactwatch --from-dmesg`.

use crate::kmod::with_low_min_free;
use crate::sys::Kmod;
use crate::tool::{run_tool, Run};
use crate::{Ctx, Reporter};
use serde_json::Value;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

const ORDER: u32 = 5;

/// Fragment, then `count` allocations of ORDER with `gfp`, all held until
/// the last, from this thread.
fn allocate(gfp: &str, count: u32) -> Result<(u64, u64), String> {
    let r = || -> std::io::Result<(u64, u64)> {
        Kmod::set("fragment", 1)?;
        Kmod::set("alloc_order", ORDER)?;
        Kmod::set("alloc_count", count)?;
        Kmod::set("alloc_gfp", gfp)?;
        Kmod::set("alloc", 1)?;
        let r = (Kmod::get("alloc_ok")?, Kmod::get("alloc_failed")?);
        // Give back the held pages now so the tool itself is not starved.
        Kmod::set("fragment", 0)?;
        // Let the tool read its ring before it is interrupted.
        thread::sleep(Duration::from_secs(1));
        Ok(r)
    };
    r().map_err(|e| format!("driving kdiag_test: {e}"))
}

fn brief(r: &Value) -> String {
    let s = stall_of(r);
    match r["type"].as_str() {
        Some(t @ ("stall" | "fail")) => format!(
            "{t} order {} {} attempted {} runs {} not_attempted {} outcome {}",
            r["order"], r["gfp_text"], s["compaction_attempted"], s["runs"], s["not_attempted"], s["outcome"]
        ),
        Some(t) => t.to_string(),
        None => "?".into(),
    }
}

/// Every fail record has a verdict record after it.
fn verdicts_follow(records: &[Value]) -> bool {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["type"] == "fail")
        .all(|(i, _)| records[i + 1..].iter().any(|r| r["type"] == "verdict"))
}

/// A stall record, or the stall a fail record carries.
fn stall_of(r: &Value) -> &Value {
    if r["type"] == "fail" {
        &r["stall"]
    } else {
        r
    }
}

fn summary(records: &[Value]) -> &Value {
    records.iter().rev().find(|r| r["type"] == "summary").unwrap_or(&Value::Null)
}

/// The summary's count of order-ORDER failures, and its top failing caller
/// of that order: both counted in the kernel, whatever was shown.
fn summary_failed(sum: &Value) -> (Option<u64>, Option<&Value>) {
    let failed = sum["by_order"]
        .as_array()
        .map(|b| b.iter().filter(|o| o["order"] == ORDER).filter_map(|o| o["failed"].as_u64()).sum());
    let top = sum["top_failing"].as_array().and_then(|t| t.iter().find(|c| c["order"] == ORDER));
    (failed, top)
}

/// The flood is reported exactly: rate-limited (not lost), and the top
/// failing caller is the module's NORETRY allocation.
fn flood_held_back(rs: &[Value]) -> bool {
    let sum = summary(rs);
    let (_, top) = summary_failed(sum);
    sum["rate_limited"].as_u64().is_some_and(|n| n > 0)
        && sum["rate_limited_events"].as_u64().is_some_and(|n| n > 0)
        && top.is_some_and(|c| {
            c["gfp_text"].as_str().is_some_and(|g| g.contains("__GFP_NORETRY"))
                && c["caller"].as_str().is_some_and(|c| c.contains("kdiag_test"))
        })
}

fn not_attempted(r: &Value) -> Option<&str> {
    stall_of(r)["not_attempted"].as_str()
}

/// Run a case up to `attempts` times until `judge` is satisfied. Whether
/// the kernel compacts or defers depends on what earlier tests left in its
/// per-zone deferral state; every try counts toward lifting a deferral, and
/// the record says how many it took.
fn case(rep: &mut Reporter, gfp: &str, count: u32, attempts: u32, judge: fn(&[Value]) -> bool) {
    let name = format!("compactwatch.{}", gfp.replace(',', "+"));
    case_as(rep, &name, "tp_btf", gfp, count, attempts, judge)
}

/// Up to `attempts` runs of [`try_case`] until one is good, reported as
/// `name`.
pub fn case_as(
    rep: &mut Reporter,
    name: &str,
    want: &str,
    gfp: &str,
    count: u32,
    attempts: u32,
    judge: fn(&[Value]) -> bool,
) {
    for attempt in 1..=attempts {
        let (good, detail) = try_case(gfp, count, want, judge);
        if good || attempt == attempts {
            return rep.result(name, good, format!("try {attempt} of {attempts}: {detail}"));
        }
    }
}

/// One run of compactwatch around `count` allocations with `gfp`, on the
/// raw tracepoints of backend `want` (tp_btf, or raw_tp without kernel BTF).
fn try_case(gfp: &str, count: u32, want: &str, judge: fn(&[Value]) -> bool) -> (bool, String) {
    let pid = std::process::id().to_string();
    let order = ORDER.to_string();
    let args = ["--order", &order, "--json", "-p", &pid, "20"];
    let t = Instant::now();
    let (run, alloc): (Run, _) =
        match run_tool("/bin/compactwatch", &args, true, Duration::from_secs(20), || allocate(gfp, count)) {
            Ok(r) => r,
            Err(e) => return (false, e),
        };
    let (ok_n, failed_n) = match alloc {
        Ok(r) => r,
        Err(e) => return (false, format!("{e}; tool: {}", run.why())),
    };
    if !run.ok() {
        return (false, format!("compactwatch {}: {}", args.join(" "), run.why()));
    }
    let records = run.json();
    let mine: Vec<Value> =
        records.iter().filter(|r| r["type"] != "fail" || r["order"].as_u64() == Some(ORDER as u64)).cloned().collect();
    // The module's allocations run in this task, the fragmenter's in
    // kworkers outside -p: every order-ORDER failure of ours is the module's.
    let sum = summary(&records);
    let exact = summary_failed(sum).0 == Some(failed_n) && sum["lost"].as_u64() == Some(0);
    // Raw tracepoints, each with the program for this kernel's arguments.
    let raw = sum["backend"] == want && !run.stderr.iter().any(|l| l.contains("as a classic tracepoint"));
    let good = judge(&mine) && verdicts_follow(&mine) && exact && raw;
    let detail = format!(
        "{count} x order {ORDER} {gfp}: {ok_n} allocated, {failed_n} failed; exact count and nothing lost: {exact}; \
         all raw tracepoints: {raw}; \
         {} records ({} fail, {} stall, {} verdict) in {:.1} s: [{}]; {}",
        records.len(),
        records.iter().filter(|r| r["type"] == "fail").count(),
        records.iter().filter(|r| r["type"] == "stall").count(),
        records.iter().filter(|r| r["type"] == "verdict").count(),
        t.elapsed().as_secs_f64(),
        records.iter().filter(|r| r["type"] != "verdict").take(4).map(brief).collect::<Vec<_>>().join("; "),
        records.iter().find(|r| r["type"] == "summary").map(|r| r.to_string()).unwrap_or_else(|| "no summary".into())
    );
    (good, detail)
}

/// A stall or failure that shows its compaction runs, each with a status
/// and a duration.
pub fn compacted(rs: &[Value]) -> bool {
    rs.iter().any(|r| {
        let s = stall_of(r);
        ["stall", "fail"].contains(&r["type"].as_str().unwrap_or(""))
            && s["compaction_attempted"] == true
            && s["runs"].as_array().is_some_and(|runs| {
                !runs.is_empty() && runs.iter().all(|x| x["status"].is_string() && x["duration_us"].is_u64())
            })
    })
}

/// The kernel log as `dmesg -r` prints it ("<4>[   12.345678] text").
fn kernel_log() -> std::io::Result<String> {
    const SYSLOG_ACTION_READ_ALL: i32 = 3;
    const SYSLOG_ACTION_SIZE_BUFFER: i32 = 10;
    // SAFETY: SIZE_BUFFER takes no buffer.
    let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf is valid for size bytes.
    let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), size) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The module's order-5 GFP_NOIO allocation, this time reported by the
/// kernel; compactwatch must reach the live path's conclusion from the
/// text alone: compaction not attempted for want of __GFP_IO, and the
/// order-5 check failing in every zone the allocation may use.
fn from_dmesg(rep: &mut Reporter) {
    let name = "compactwatch.from-dmesg";
    let failed = allocate("noio,warn", 1).map(|(_, failed)| failed);
    let log = match (failed, kernel_log()) {
        (Ok(1), Ok(log)) => log,
        (f, l) => return rep.fail(name, format!("allocation failures {f:?}, kernel log {:?}", l.map(|l| l.len()))),
    };
    let Some(start) = log.rfind(": page allocation failure: order:5") else {
        return rep.fail(name, "no page allocation failure report in the kernel log");
    };
    let start = log[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let report = &log[start..];
    {
        let mut out = std::io::stdout().lock();
        for l in report.lines() {
            let _ = writeln!(out, "KDIAG-DMESG {l}");
        }
    }
    let path = "/tmp/kdiag-dmesg.txt";
    if let Err(e) = std::fs::write(path, report) {
        return rep.fail(name, format!("writing {path}: {e}"));
    }
    let out = match std::process::Command::new("/bin/compactwatch").args(["--from-dmesg", path, "--json"]).output() {
        Ok(o) => o,
        Err(e) => return rep.fail(name, format!("cannot run compactwatch: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = stdout.lines().next().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    let verdict = &v["verdict"];
    let zones = verdict["zones"].as_array().cloned().unwrap_or_default();
    let good = out.status.success()
        && v["type"] == "verdict"
        && verdict["request"]["order"] == ORDER
        && verdict["request"]["gfp_text"].as_str().is_some_and(|g| g.contains("GFP_NOIO"))
        && verdict["compaction_forbidden"].as_str().is_some_and(|w| w.contains("lacks __GFP_IO"))
        && v["caller"].as_str().is_some_and(|c| c.contains("kdiag_test"))
        && !zones.is_empty()
        && zones.iter().all(|z| z["check"]["ok"] == false);
    rep.result(
        name,
        good,
        format!(
            "{} lines of report; exit {}; kernel {} gfp {} caller {} compaction {}; zones: [{}]; stderr: {}",
            report.lines().count(),
            out.status,
            verdict["request"]["kernel"],
            verdict["request"]["gfp_text"],
            v["caller"],
            verdict["compaction_forbidden"],
            zones.iter().map(|z| format!("{} ok {}", z["zone"], z["check"]["ok"])).collect::<Vec<_>>().join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    );
}

pub fn run(_: &Ctx, rep: &mut Reporter) {
    if !Kmod::loaded() {
        return rep.fail("compactwatch", "kdiag_test is not loaded");
    }
    // Leave memory as the other tests expect it, and fork() working.
    let released = match with_low_min_free(|| {
        cases(rep);
        Kmod::set("fragment", 0).and_then(|_| Kmod::get("frag_held"))
    }) {
        Ok(r) => r,
        Err(e) => return rep.fail("compactwatch", e.to_string()),
    };
    let fork = std::process::Command::new("/init").arg("noop").status().map(|s| s.success());
    rep.result(
        "compactwatch.restore",
        matches!(released, Ok(0)) && matches!(fork, Ok(true)),
        format!("{released:?} pages still held, fork: {fork:?}"),
    );
}

fn cases(rep: &mut Reporter) {
    // When even compaction cannot make the block, the stall comes inside
    // the fail record: either way it must show the compaction runs.
    // Reclaim, kcompactd or the tool's own exit-time frees can leave the
    // first few blocks to the fast path or find compaction "not needed";
    // with each one held, later ones must compact.
    case(rep, "nofs", 64, 3, compacted);
    case(rep, "noio", 1, 1, |rs| rs.iter().any(|r| not_attempted(r).is_some_and(|w| w.contains("lacks __GFP_IO"))));
    // Compaction can still free one block of ORDER (6.12 does): keep
    // asking while holding each, until it has nothing left to give.
    case(rep, "kernel,noretry", 1024, 1, |rs| {
        rs.iter().any(|r| r["type"] == "fail" && r["stall"].is_object()) && flood_held_back(rs)
    });
    from_dmesg(rep);
}

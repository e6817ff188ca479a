//! Checks that the fault injectors do what the tool tests rely on, measured
//! by the kernel's own counters rather than by the tools under test.

use crate::sys::{self, Kmod};
use crate::{Ctx, Reporter};
use std::time::Instant;

pub const HOLDER: &str = "kdiag_test_irqoff_holder";

/// The CPU the interrupts-off windows run on: the last one, so CPU 0 keeps
/// doing the guest's housekeeping.
pub fn window_cpu() -> u32 {
    kdiag_shared::cpus::online().ok().and_then(|c| c.last().copied()).unwrap_or(0)
}

/// Local timer interrupts taken so far on `cpu` (the LOC row).
fn local_timer_irqs(cpu: u32) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let header: Vec<&str> = text.lines().next()?.split_whitespace().collect();
    let col = header.iter().position(|c| *c == format!("CPU{cpu}"))?;
    let row = text.lines().find(|l| l.trim_start().starts_with("LOC:"))?;
    row.split_whitespace().nth(1 + col)?.parse().ok()
}

/// One window: the module's own measurement must match the request, the
/// CPU must have taken (almost) no timer interrupts meanwhile, and the
/// holder must be a symbol irqoff can resolve.
pub fn irqoff_window(_: &Ctx, rep: &mut Reporter) {
    let name = "kmod-irqoff";
    if !Kmod::loaded() {
        return rep.fail(name, "kdiag_test is not loaded");
    }
    let cpu = window_cpu();
    let ms = 100;
    let run = || -> std::io::Result<(u64, Option<u64>, f64)> {
        Kmod::set("irqoff_cpu", cpu)?;
        let before = local_timer_irqs(cpu);
        let t = Instant::now();
        Kmod::set("irqoff_ms", ms)?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let ticks = before.zip(local_timer_irqs(cpu)).map(|(a, b)| b - a);
        Ok((Kmod::get("irqoff_last_us")?, ticks, wall))
    };
    let (us, ticks, wall) = match run() {
        Ok(r) => r,
        Err(e) => return rep.fail(name, e.to_string()),
    };
    let in_kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map(|k| k.lines().any(|l| l.split_whitespace().nth(2) == Some(HOLDER)))
        .unwrap_or(false);
    // At HZ=250 a CPU with interrupts on takes ~25 ticks in 100 ms; the
    // few allowed here fall in the moments around the window.
    let detail = format!("cpu {cpu}: {us} us with interrupts off for {ms} ms asked ({wall:.1} ms wall), {ticks:?} local timer interrupts meanwhile, {HOLDER} in kallsyms: {in_kallsyms}");
    // The spin ends by the guest clock, which runs on while the host
    // preempts the emulator: a window can come out longer, never shorter.
    let ok = (ms * 1000..ms * 1500).contains(&us) && ticks.is_some_and(|t| t <= 5) && in_kallsyms;
    rep.result(name, ok, detail)
}

fn mem_free_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemFree:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(0)
}

/// Free blocks per order, by zone and migrate type, from
/// /proc/pagetypeinfo
/// ("Node    0, zone      DMA, type    Unmovable      0      1 ...").
fn free_blocks() -> Vec<(String, Vec<u64>)> {
    std::fs::read_to_string("/proc/pagetypeinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (head, counts) = l.split_once(", type")?;
            let zone = head.rsplit(' ').next()?;
            let mut w = counts.split_whitespace();
            let mtype = w.next()?;
            let counts: Vec<u64> = w.filter_map(|n| n.parse().ok()).collect();
            counts.iter().any(|&n| n > 0).then(|| (format!("{zone}/{mtype}"), counts))
        })
        .collect()
}

/// Free blocks of `order` or more that an ordinary allocation may use:
/// HighAtomic pageblocks are held back for atomic high-order requests.
fn usable_blocks_from(free: &[(String, Vec<u64>)], order: u32) -> u64 {
    free.iter()
        .filter(|(t, _)| ["Unmovable", "Movable", "Reclaimable"].iter().any(|m| t.ends_with(m)))
        .flat_map(|(_, n)| n.iter().skip(order as usize))
        .sum()
}

/// The order the memory checks allocate: a huge page. The module takes
/// every free block of order 2 or more right before it allocates, so only
/// compaction can satisfy it.
const ALLOC_ORDER: u32 = 9;
/// Memory under the min watermark is never taken by the fragmenter; at
/// this size it cannot hold a free block of ALLOC_ORDER (nor of the
/// compactwatch checks' order 5).
const MIN_FREE_KB: &str = "1024";

/// Run `f` with vm.min_free_kbytes at MIN_FREE_KB, so that fragmenting
/// leaves no free high-order block behind; the old value comes back after.
pub fn with_low_min_free<T>(f: impl FnOnce() -> T) -> std::io::Result<T> {
    let old = sys::read("/proc/sys/vm/min_free_kbytes");
    sys::sysctl("vm.min_free_kbytes", MIN_FREE_KB)?;
    let r = f();
    if let Ok(v) = &old {
        let _ = sys::sysctl("vm.min_free_kbytes", v);
    }
    Ok(r)
}

/// The kernel's own record of direct compaction tried by this thread: the
/// `mm_compaction_try_to_compact_pages` event fires past the check that
/// turns GFP_NOIO away (the global `compact_stall` counter does not tell:
/// 5.10 counts a stall for a skipped compaction too, and any task's stall
/// counts).
struct CompactionTries(kdiag_shared::ftrace::Instance);

impl CompactionTries {
    const EVENT: &'static str = "compaction/mm_compaction_try_to_compact_pages";

    /// Before memory is fragmented: the instance's buffers, and later the
    /// reader of its trace, need memory of their own (opening `trace` under
    /// fragmentation panicked 5.10 with an out-of-memory deadlock).
    fn new() -> Result<Self, String> {
        let inst = kdiag_shared::ftrace::Instance::create(std::path::Path::new("/sys/kernel/tracing"), "kmod")?;
        let tid = crate::offwaketime::gettid().to_string();
        inst.write("set_event_pid", &tid).map_err(|e| e.to_string())?;
        Ok(CompactionTries(inst))
    }

    fn arm(&self) -> std::io::Result<()> {
        self.0.write(&format!("events/{}/enable", Self::EVENT), "1").map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// How many tries the kernel recorded; only once memory is given back.
    fn count(self) -> Result<usize, String> {
        let text = self.0.read("trace").map_err(|e| format!("reading the trace: {e}"))?;
        Ok(text.lines().filter(|l| !l.starts_with('#') && l.contains("mm_compaction_try_to_compact_pages")).count())
    }
}

/// Fragment memory, then allocate with each GFP mode and check what the
/// kernel recorded: direct compaction needs __GFP_IO, so GFP_NOIO must
/// never try it and the others must. fork() must keep working.
pub fn memory(_: &Ctx, rep: &mut Reporter) {
    if !Kmod::loaded() {
        return rep.fail("kmod-memory", "kdiag_test is not loaded");
    }
    let free_before = mem_free_kb();
    let released = with_low_min_free(|| {
        memory_cases(rep);
        Kmod::set("fragment", 0).and_then(|_| Kmod::get("frag_held"))
    });
    let released = match released {
        Ok(r) => r,
        Err(e) => return rep.fail("kmod-memory", e.to_string()),
    };
    let free_after = mem_free_kb();
    let detail = format!("MemFree {free_before} kB before, {free_after} kB after release ({released:?} pages held)");
    // Everything taken must come back (tolerance for what the tests' own
    // processes and the kernel allocated meanwhile).
    let ok = matches!(released, Ok(0)) && free_after + free_before / 20 >= free_before;
    rep.result("kmod-memory.release", ok, detail);
}

fn memory_cases(rep: &mut Reporter) {
    let cases = [("kernel", true), ("nofs", true), ("noio", false), ("kernel,noretry", true)];
    for (gfp, compacts) in cases {
        let name = format!("kmod-memory.{}", gfp.replace(',', "+"));
        let case = || -> std::io::Result<String> {
            // Re-fragment each time: a successful compaction leaves a free
            // block of this order behind for the next case to find.
            let tries = CompactionTries::new().map_err(std::io::Error::other)?;
            let t = Instant::now();
            Kmod::set("fragment", 1)?;
            let frag_ms = t.elapsed().as_millis();
            let held = Kmod::get("frag_held")?;
            let free = usable_blocks_from(&free_blocks(), 2);
            let fork = std::process::Command::new("/init").arg("noop").status().map(|s| s.success());
            let stall0 = sys::vmstat("compact_stall")?;
            Kmod::set("alloc_order", ALLOC_ORDER)?;
            Kmod::set("alloc_count", 1)?;
            Kmod::set("alloc_gfp", gfp)?;
            tries.arm()?;
            let t = Instant::now();
            Kmod::set("alloc", 1)?;
            let alloc_ms = t.elapsed().as_millis();
            let stalls = sys::vmstat("compact_stall")? - stall0;
            Kmod::set("fragment", 0)?;
            let tries = tries.count().map_err(std::io::Error::other)?;
            let (ok, failed) = (Kmod::get("alloc_ok")?, Kmod::get("alloc_failed")?);
            let detail = format!(
                "order {ALLOC_ORDER}: {ok} allocated, {failed} failed in {alloc_ms} ms, {tries} direct compaction tries \
                 ({stalls} compaction stalls counted by the kernel); \
                 fragmented: {held} pages held in {frag_ms} ms, {free} free blocks of order 2+ left, fork: {fork:?}"
            );
            let good = (tries > 0) == compacts && matches!(fork, Ok(true));
            if good {
                Ok(detail)
            } else {
                Err(std::io::Error::other(detail))
            }
        };
        match case() {
            Ok(d) => rep.pass(&name, d),
            Err(e) => rep.fail(&name, e.to_string()),
        }
    }
}

/// The loop driver is a module on Debian kernels; block tools need it.
pub fn loop_device(_: &Ctx, rep: &mut Reporter) {
    const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
    let r = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").and_then(|f| {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is open; this ioctl takes no argument.
        let n = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n)
        }
    });
    match r {
        Ok(n) => rep.pass("loop", format!("loop module loaded, /dev/loop{n} free")),
        Err(e) => rep.fail("loop", format!("/dev/loop-control: {e}")),
    }
}

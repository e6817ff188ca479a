//! `/init` of the guest kernels that `cargo xtask vmtest` boots: mount the
//! pseudo filesystems, load the test module, run the tests the kernel
//! command line selects, print one line per result on the console and
//! power off.
//!
//! The host reads only these lines:
//!   KDIAG-TEST <name> PASS|FAIL <detail>
//!   KDIAG-DONE passed=<n> failed=<n>
//! A guest that stops without KDIAG-DONE crashed or hung, and the host
//! says so, so a test that cannot run always shows up as a failure.
//!
//! Kernel command line words read here (no dot in the name: the kernel
//! keeps `a.b=c` for module "a"):
//!   kdiag_filter=SUBSTRING  run only tests whose name contains it
//!   kdiag_expect=m1,m2      attach mechanisms this kernel must accept
//!   kdiag_absent=m1,m2      attach mechanisms this kernel must refuse
//!   kdiag_stress_rounds=N   run the stress tests, N rounds (the first
//!                           such word counts)

mod backends;
mod blkreq;
mod compactwatch;
mod epollwake;
mod funcstack;
mod irqoff;
mod kmod;
mod ladder;
mod nobtf;
mod offwaketime;
mod stress;
mod sys;
mod tool;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What the host asked for, from /proc/cmdline.
#[derive(Default)]
pub struct Ctx {
    pub filter: Option<String>,
    pub expect: Vec<String>,
    pub absent: Vec<String>,
    /// Rounds of the stress test; None: the host did not ask for it.
    pub stress_rounds: Option<u32>,
}

impl Ctx {
    fn from_cmdline(cmdline: &str) -> Ctx {
        let mut ctx = Ctx::default();
        let list = |v: &str| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("kdiag_filter=") {
                ctx.filter = Some(v.to_string());
            } else if let Some(v) = word.strip_prefix("kdiag_expect=") {
                ctx.expect = list(v);
            } else if let Some(v) = word.strip_prefix("kdiag_absent=") {
                ctx.absent = list(v);
            } else if let Some(v) = word.strip_prefix("kdiag_stress_rounds=") {
                ctx.stress_rounds = ctx.stress_rounds.or(v.parse().ok());
            }
        }
        ctx
    }
}

#[derive(Default)]
pub struct Reporter {
    passed: u32,
    failed: u32,
}

impl Reporter {
    pub fn result(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        let detail: String = detail.as_ref().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        // One write per line: the kernel's own console output can land
        // between two writes.
        let line = format!("KDIAG-TEST {name} {} {detail}\n", if ok { "PASS" } else { "FAIL" });
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    pub fn pass(&mut self, name: &str, detail: impl AsRef<str>) {
        self.result(name, true, detail)
    }

    pub fn fail(&mut self, name: &str, detail: impl AsRef<str>) {
        self.result(name, false, detail)
    }
}

/// What a caught panic said (an assertion's message), for its FAIL line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A named group of checks; it reports as `name` or `name.case`.
struct Test {
    name: &'static str,
    run: fn(&Ctx, &mut Reporter),
}

const TESTS: &[Test] = &[
    Test { name: "ladder", run: ladder::run },
    Test { name: "backend", run: backends::run },
    Test { name: "kmod-irqoff", run: kmod::irqoff_window },
    Test { name: "kmod-memory", run: kmod::memory },
    Test { name: "loop", run: kmod::loop_device },
    Test { name: "blkreq", run: blkreq::run },
    Test { name: "compactwatch", run: compactwatch::run },
    Test { name: "irqoff", run: irqoff::run },
    Test { name: "offwaketime", run: offwaketime::run },
    Test { name: "funcstack", run: funcstack::run },
    Test { name: "epollwake", run: epollwake::run },
    Test { name: "nobtf", run: nobtf::run },
    Test { name: "tracefs-toggle", run: stress::toggle_tracepoints },
    Test { name: "stress", run: stress::run },
];

fn setup(rep: &mut Reporter) {
    let mut problems = sys::mount_all();
    for (module, params) in [(sys::Kmod::PATH, ""), ("/lib/modules/loop.ko", "")] {
        if let Err(e) = sys::insmod(module, params) {
            problems.push(format!("insmod {module}: {e}"));
        }
    }
    // Keep the kernel from rebuilding free high-order blocks behind the
    // memory tests' backs.
    for (knob, value) in [("vm.compaction_proactiveness", "0"), ("vm.watermark_boost_factor", "0")] {
        if let Err(e) = sys::sysctl(knob, value) {
            problems.push(e.to_string());
        }
    }
    let release = sys::read("/proc/sys/kernel/osrelease").unwrap_or_default();
    if problems.is_empty() {
        rep.pass("setup", format!("kernel {release}"));
    } else {
        rep.fail("setup", format!("kernel {release}: {}", problems.join("; ")));
    }
}

fn main() {
    // The memory test forks this binary to prove fork() still works.
    if std::env::args().nth(1).as_deref() == Some("noop") {
        return;
    }
    let mut rep = Reporter::default();
    setup(&mut rep);
    let ctx = Ctx::from_cmdline(&sys::read("/proc/cmdline").unwrap_or_default());
    // Panics become FAIL lines; the default hook's message would only
    // clutter the console between them.
    std::panic::set_hook(Box::new(|_| {}));
    let mut ran = 0;
    for test in TESTS {
        if ctx.filter.as_deref().is_some_and(|f| !test.name.contains(f)) {
            continue;
        }
        ran += 1;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (test.run)(&ctx, &mut rep))) {
            rep.fail(test.name, format!("panicked: {}", panic_message(panic.as_ref())));
        }
    }
    if ran == 0 {
        rep.fail("filter", format!("no test matches {:?}", ctx.filter.unwrap_or_default()));
    }
    println!("KDIAG-DONE passed={} failed={}", rep.passed, rep.failed);
    sys::poweroff();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let c = Ctx::from_cmdline("console=ttyS0 quiet kdiag_filter=irq kdiag_expect=kprobe,fentry kdiag_absent=");
        assert_eq!(c.filter.as_deref(), Some("irq"));
        assert_eq!(c.stress_rounds, None);
        assert_eq!(c.expect, ["kprobe", "fentry"]);
        assert!(c.absent.is_empty());
        let c = Ctx::from_cmdline("kdiag_stress_rounds=5 kdiag_stress_rounds=2");
        assert_eq!(c.stress_rounds, Some(5));
    }
}

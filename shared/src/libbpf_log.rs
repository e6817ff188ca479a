//! libbpf's own messages, in one place. libbpf explains a refused load at
//! length (the verifier's whole log) on stderr, and a ladder probe is
//! refused on purpose: at 3 a.m. that is noise. Its messages are kept here
//! instead, printed as they come only with `--verbose`, and a failed load
//! is said in one line: what the kernel lacks and the first release that
//! has it, when the log shows it; else the verifier's own last word.

use libbpf_rs::PrintLevel;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Enough for the verifier log of any one of our programs.
const KEEP_LINES: usize = 4096;

struct Log {
    verbose: bool,
    lines: VecDeque<String>,
}

static LOG: Mutex<Log> = Mutex::new(Log { verbose: false, lines: VecDeque::new() });

fn callback(_level: PrintLevel, msg: String) {
    let Ok(mut log) = LOG.lock() else { return };
    if log.verbose {
        let _ = std::io::stderr().write_all(msg.as_bytes());
    }
    for line in msg.lines() {
        if log.lines.len() == KEEP_LINES {
            log.lines.pop_front();
        }
        log.lines.push_back(line.to_string());
    }
}

/// Take libbpf's messages over; with `verbose`, they are also printed.
pub fn install(verbose: bool) {
    if let Ok(mut log) = LOG.lock() {
        log.verbose = verbose;
    }
    let level = if verbose { PrintLevel::Debug } else { PrintLevel::Info };
    libbpf_rs::set_print(Some((level, callback)));
}

/// Forget what was said so far: the next failure is explained by its own
/// messages, not by a probe's expected refusal.
pub fn clear() {
    if let Ok(mut log) = LOG.lock() {
        log.lines.clear();
    }
}

fn lines() -> Vec<String> {
    LOG.lock().map(|l| l.lines.iter().cloned().collect()).unwrap_or_default()
}

/// Kernel features whose absence the verifier or libbpf names, with the
/// first mainline release that has them.
const MISSING: &[(&str, &str, &str)] = &[
    (
        "BPF_STX uses reserved fields",
        "BPF atomic operations that return a value (fetch-and-add, compare-and-swap)",
        "5.12",
    ),
    ("bpf_get_func_ip", "the bpf_get_func_ip() helper", "5.15"),
    ("bpf_get_attach_cookie", "BPF attach cookies", "5.15"),
    ("bpf_loop", "the bpf_loop() helper", "5.17"),
    ("bpf_ringbuf_", "the BPF ring buffer", "5.8"),
    ("bpf_per_cpu_ptr", "typed per-CPU kernel variables", "5.10"),
    ("bpf_this_cpu_ptr", "typed per-CPU kernel variables", "5.10"),
    ("bpf_get_task_stack", "the bpf_get_task_stack() helper", "5.9"),
    ("bpf_get_current_task_btf", "the bpf_get_current_task_btf() helper", "5.11"),
    ("kernel doesn't support global data", "BPF global data", "5.2"),
];

/// Helper numbers the verifier of older kernels prints as `unknown#N`
/// (their names came later): from the kernel's enum bpf_func_id.
const HELPER_IDS: &[(u32, &str)] = &[
    (130, "bpf_ringbuf_output"),
    (131, "bpf_ringbuf_reserve"),
    (132, "bpf_ringbuf_submit"),
    (141, "bpf_get_task_stack"),
    (153, "bpf_per_cpu_ptr"),
    (154, "bpf_this_cpu_ptr"),
    (158, "bpf_get_current_task_btf"),
    (173, "bpf_get_func_ip"),
    (174, "bpf_get_attach_cookie"),
    (181, "bpf_loop"),
];

fn helper_name(line: &str) -> Option<&'static str> {
    let n = line.split("unknown#").nth(1)?;
    let id: u32 = n.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()?;
    HELPER_IDS.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

/// What the kernel lacks, from libbpf's and the verifier's lines.
pub fn missing_feature(lines: &[String]) -> Option<String> {
    for line in lines {
        let named = helper_name(line);
        for (needle, what, since) in MISSING {
            if line.contains(needle) || named.is_some_and(|n| n.starts_with(needle)) {
                return Some(format!("this kernel lacks {what}, which first appeared in Linux {since}"));
            }
        }
    }
    None
}

/// The verifier's verdict: the last line of the load log that is not
/// bookkeeping ("processed N insns", "verification time").
fn verifier_verdict(lines: &[String]) -> Option<String> {
    let end = lines.iter().rposition(|l| l.contains("-- END PROG LOAD LOG --"))?;
    let begin = lines[..end].iter().rposition(|l| l.contains("-- BEGIN PROG LOAD LOG --"))?;
    lines[begin + 1..end]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .map(str::to_string)
}

/// One line for a failed load of `what` (e.g. "the BPF programs").
pub fn explain_load(what: &str, err: &libbpf_rs::Error) -> String {
    explain_from(what, err, &lines())
}

fn explain_from(what: &str, err: &libbpf_rs::Error, lines: &[String]) -> String {
    let errno = crate::Errno::of_libbpf(err).map(|e| e.to_string()).unwrap_or_else(|| err.to_string());
    if let Some(m) = missing_feature(lines) {
        return format!("cannot load {what}: {m} ({errno})");
    }
    match verifier_verdict(lines) {
        Some(v) => format!(
            "cannot load {what}: the kernel's verifier refused them: {v} ({errno}; --verbose shows libbpf's log)"
        ),
        None => format!("cannot load {what}: {errno} (--verbose shows libbpf's log)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    /// What Debian 11's 5.10 prints for blkreq's atomics.
    #[test]
    fn old_kernels_are_named() {
        let l = log("libbpf: prog 'x': BPF program load failed: Invalid argument\n\
                     libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n\
                     0: (b7) r1 = 1\n\
                     BPF_STX uses reserved fields\n\
                     processed 12 insns\n\
                     -- END PROG LOAD LOG --\n");
        assert_eq!(
            missing_feature(&l).unwrap(),
            "this kernel lacks BPF atomic operations that return a value (fetch-and-add, compare-and-swap), \
             which first appeared in Linux 5.12"
        );
        let l = log("invalid func unknown#173\n");
        assert!(missing_feature(&l).unwrap().contains("bpf_get_func_ip() helper, which first appeared in Linux 5.15"));
        assert_eq!(missing_feature(&log("R1 invalid mem access 'scalar'\n")), None);
    }

    #[test]
    fn otherwise_the_verifiers_last_word() {
        let l = log("libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n\
                     5: (61) r2 = *(u32 *)(r1 +0)\n\
                     R1 invalid mem access 'scalar'\n\
                     processed 6 insns (limit 1000000)\n\
                     -- END PROG LOAD LOG --\n");
        assert_eq!(verifier_verdict(&l).as_deref(), Some("R1 invalid mem access 'scalar'"));
        let err = libbpf_rs::Error::from(std::io::Error::from_raw_os_error(libc::EACCES));
        let one = explain_from("the BPF programs", &err, &l);
        assert!(
            one.starts_with("cannot load the BPF programs: the kernel's verifier refused them: R1 invalid"),
            "{one}"
        );
        assert!(!one.contains('\n'));
    }

    /// A real refusal on this kernel is kept, not printed.
    #[test]
    fn a_real_refusal_is_collected() {
        install(false);
        clear();
        let r = crate::probe::kernel_supports(crate::backend::Mechanism::Kprobe);
        if r.is_ok() {
            return; // a kernel that takes kprobes refuses nothing here
        }
        assert!(!lines().is_empty(), "libbpf said nothing about a refused kprobe");
    }
}

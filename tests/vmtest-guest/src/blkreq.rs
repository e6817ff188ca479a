//! blkreq on a loop device over a tmpfs file, with O_DIRECT I/O this
//! process makes on it: the guest has no other disk, so every request on
//! the device is ours. The function backends (kprobe-multi on 6.12, fentry
//! on 6.1, and the per-function kprobes) are exactly what the host cannot
//! run, so each must follow the requests through plain functions, not
//! only the block tracepoints.

use crate::tool::run_tool;
use crate::{Ctx, Reporter};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::thread;
use std::time::Duration;

const BACKING: &str = "/tmp/blkreq-backing";
const BACKING_BYTES: u64 = 4 << 20;
const COUNT: usize = 3;
/// Seconds the tool may run; it should stop well before, once COUNT
/// requests completed.
const DURATION: &str = "20";
/// A plain function every blk-mq request passes through.
const FUNC: &str = "blk_mq_start_request";
/// The loop driver's completion handler (mq_ops->complete), a function of
/// the module, not of vmlinux.
const MODULE_FUNC: &str = "lo_complete_rq";
/// More functions than the block tracepoints alone could account for: the
/// run must really have attached to the BTF-found functions.
const MIN_FUNCTIONS: u64 = 100;

const LOOP_SET_FD: libc::Ioctl = 0x4C00;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_DIRECT_IO: libc::Ioctl = 0x4C08;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;

fn ioctl(fd: &impl AsRawFd, req: libc::Ioctl, arg: libc::c_ulong) -> std::io::Result<i32> {
    // SAFETY: the fd is open; every request used here takes an integer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A loop device bound to a tmpfs file, unbound on drop.
pub struct LoopDev {
    dev: File,
    name: String,
}

impl LoopDev {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn attach() -> Result<LoopDev, String> {
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(BACKING)
            .map_err(|e| format!("create {BACKING}: {e}"))?;
        backing.set_len(BACKING_BYTES).map_err(|e| format!("size {BACKING}: {e}"))?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| format!("/dev/loop-control: {e}"))?;
        let n = ioctl(&ctl, LOOP_CTL_GET_FREE, 0).map_err(|e| format!("LOOP_CTL_GET_FREE: {e}"))?;
        let name = format!("loop{n}");
        let path = format!("/dev/{name}");
        let dev = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("{path}: {e}"))?;
        ioctl(&dev, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong).map_err(|e| format!("LOOP_SET_FD: {e}"))?;
        // tmpfs takes O_DIRECT only from 6.6 on; buffered backing I/O is as
        // good here, since only the loop device's own requests are traced.
        let _ = ioctl(&dev, LOOP_SET_DIRECT_IO, 1);
        Ok(LoopDev { dev, name })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = ioctl(&self.dev, LOOP_CLR_FD, 0);
        let _ = std::fs::remove_file(BACKING);
    }
}

/// O_DIRECT writes then reads of single 4 KiB blocks, each its own request,
/// from a thread of its own; more than COUNT so the tool can finish.
fn direct_io(path: String) -> Result<u32, String> {
    thread::spawn(move || {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("open {path} O_DIRECT: {e}"))?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: the layout is non-zero; freed below with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("no memory for an aligned buffer".to_string());
        }
        // SAFETY: ptr points to 4096 zeroed bytes that live until dealloc.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 4096) };
        let mut done = 0;
        let mut r = Ok(());
        for i in 0..(2 * COUNT as u64 + 2) {
            buf[0] = i as u8;
            let off = (i % 16) * 4096;
            r = f.write_at(buf, off).and_then(|_| f.read_at(buf, off)).map(|_| ());
            if r.is_err() {
                break;
            }
            done += 2;
            thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: allocated above with this layout; buf is not used again.
        unsafe { std::alloc::dealloc(ptr, layout) };
        r.map(|_| done).map_err(|e| format!("O_DIRECT I/O on {path}: {e}"))
    })
    .join()
    .map_err(|_| "the I/O thread panicked".to_string())?
}

pub fn check(rep: &mut Reporter, name: &str, dev: &LoopDev, forced: Option<&str>, want: &str) {
    let mut args: Vec<&str> = Vec::new();
    if let Some(b) = forced {
        args.extend(["--backend", b]);
    }
    let count = COUNT.to_string();
    args.extend(["--dev", &dev.name, "-n", &count, "--json", DURATION]);
    let path = format!("/dev/{}", dev.name);
    let (run, io) = match run_tool("/bin/blkreq", &args, false, Duration::from_secs(40), || direct_io(path)) {
        Ok(r) => r,
        Err(e) => return rep.fail(name, e),
    };
    let io = match io {
        Ok(n) => n,
        Err(e) => return rep.fail(name, format!("workload: {e}; tool: {}", run.why())),
    };
    if !run.ok() {
        return rep.fail(name, format!("blkreq {}: {}", args.join(" "), run.why()));
    }
    let records = run.json();
    let requests: Vec<&Value> = records.iter().filter(|r| r["type"] == "request").collect();
    let Some(summary) = records.iter().find(|r| r["type"] == "summary") else {
        return rep.fail(name, format!("no summary in {} lines; {}", run.stdout.len(), run.why()));
    };
    let banner = run.banner();
    let want_banner = format!("functions: backend {want}");
    let steps = |r: &Value| -> Vec<String> {
        r["steps"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["step"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let with_func = requests.iter().filter(|r| steps(r).iter().any(|s| s == FUNC)).count();
    // Lifecycle marks and tracepoints aside, what is left are the functions
    // only the backend under test can have seen.
    let plain = |r: &Value| {
        steps(r)
            .into_iter()
            .filter(|s| !s.starts_with("tracepoint:") && !["admit", "end", "after end"].contains(&s.as_str()))
            .count()
    };
    let all_plain = requests.iter().all(|r| plain(r) > 0);
    // Show a request that missed FUNC if there is one: on 6.1 a request can
    // be admitted only after it started.
    let shown = requests.iter().find(|r| !steps(r).iter().any(|s| s == FUNC)).or(requests.first());
    let first: Vec<String> = shown.map(|r| steps(r)).unwrap_or_default();
    let funcs = summary["functions_attached"].as_u64().unwrap_or(0);
    let tracked = summary["requests"].as_u64().unwrap_or(0);
    let detail = format!(
        "{io} O_DIRECT I/Os on {}; {tracked} tracked, {} request records, {with_func} through {FUNC}, \
         {funcs} functions attached, stop: {}, {:.1} s; steps of {}: [{}]; banner: {banner}",
        dev.name,
        requests.len(),
        summary["stop_reason"],
        run.secs,
        if with_func < requests.len() { "one without it" } else { "the first" },
        first.iter().take(12).cloned().collect::<Vec<_>>().join(" ")
    );
    // Every request is followed from before its issue: FUNC issues it, so
    // a request first seen at block_rq_issue was admitted too late (6.1
    // has no block_io_start; block_getrq marks the birth there).
    let libbpf_noise: Vec<&String> = run.stderr.iter().filter(|l| l.starts_with("libbpf:")).collect();
    // loop.ko's own completion handler, found in the module's split BTF.
    let module_steps = requests.iter().filter(|r| steps(r).iter().any(|s| s == MODULE_FUNC)).count();
    // Without module BTF (5.10) the module's functions cannot be found:
    // then the banner must say so instead.
    let module_btf = std::path::Path::new("/sys/kernel/btf/loop").exists();
    let modules_ok = if module_btf {
        module_steps == requests.len()
    } else {
        module_steps == 0 && banner.contains("functions of modules") && banner.contains("loop")
    };
    let ok = banner.contains(&want_banner)
        && tracked == COUNT as u64
        && requests.len() == COUNT
        && with_func == requests.len()
        && all_plain
        && funcs > MIN_FUNCTIONS
        && modules_ok
        && libbpf_noise.is_empty();
    let detail = format!("{module_steps} through {MODULE_FUNC} [loop] (module BTF: {module_btf}); {detail}");
    let detail = if libbpf_noise.is_empty() { detail } else { format!("libbpf printed {libbpf_noise:?}; {detail}") };
    rep.result(name, ok, detail)
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    let dev = match LoopDev::attach() {
        Ok(d) => d,
        Err(e) => return rep.fail("blkreq", format!("no loop device: {e}")),
    };
    // The best function rung this kernel has, as the host said.
    let best = if ctx.expect.iter().any(|m| m == "kprobe-multi") { "kprobe-multi" } else { "fentry" };
    check(rep, &format!("blkreq.{best}"), &dev, None, best);
    check(rep, "blkreq.kprobe", &dev, Some("kprobe"), "kprobe");
}

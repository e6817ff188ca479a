//! epollwake: explain every epoll wake-up of a process. See `epollwake
//! --help` and bpf/epollwake.bpf.c for how.

mod cli;
mod events;
mod fdmap;
mod herd;
mod kallsyms;
mod mask;
mod report;
mod socket;
mod target;
mod timeline;
mod uprobe;
mod waker;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/epollwake.skel.rs"));
}

use anyhow::{anyhow, bail, Context, Result};
use bpf::types::ew_stats;
use bpf::EpollwakeSkelBuilder;
use events::Event;
use kdiag_shared::backend::{self, Mechanism};
use kdiag_shared::output::Sink;
use kdiag_shared::runctl::{RunControl, StopReason};
use kdiag_shared::transport::{EventStream, Kind as Transport};
use kdiag_shared::{precheck, probe, Errno};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, UprobeOpts};
use report::Summary;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::Duration;
use timeline::{Filter, Options, Timeline};

const LADDER: [Mechanism; 3] = [Mechanism::Fentry, Mechanism::Kprobe, Mechanism::Tracepoint];
const KSYMS: [&str; 3] = ["ep_poll_callback", "sock_def_readable", "sock_def_wakeup"];

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("epollwake");
    if let Err(e) = run(cli) {
        eprintln!("epollwake: {e:#}");
        std::process::exit(1);
    }
}

fn libbpf_err(e: &libbpf_rs::Error) -> String {
    Errno::of_libbpf(e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
}

/// The `wait_state` the BPF side keeps per waiting thread.
fn seed_waiting(map: &libbpf_rs::MapMut, w: &target::Waiting) {
    let st = bpf::types::wait_state {
        events: w.events,
        epfd: w.epfd,
        maxevents: w.maxevents,
        syscall: w.syscall,
        ..Default::default()
    };
    // SAFETY: wait_state is plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(&st as *const _ as *const u8, std::mem::size_of::<bpf::types::wait_state>())
    };
    // NOEXIST: a thread that entered again since /proc was read is already
    // recorded, more exactly.
    let _ = map.update(&w.tid.to_ne_bytes(), bytes, MapFlags::NO_EXIST);
}

fn run(cli: cli::Cli) -> Result<()> {
    // Everything the user can get wrong is checked before anything loads.
    // Checked here rather than by clap, whose one-line error would not
    // name the missing option.
    let pid = cli.pid.ok_or_else(|| anyhow!("missing -p PID: the process whose epoll wake-ups to explain"))?;
    let comm = target::comm(pid).ok_or_else(|| anyhow!("no process with PID {pid}"))?;
    for tid in &cli.tids {
        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            bail!("thread {tid} is not a thread of process {pid} ({comm})");
        }
    }
    let forced = match &cli.backend {
        Some(b) => Some(backend::parse_backend(b, &LADDER).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let uprobes = match &cli.uprobe {
        Some(s) => {
            let spec = uprobe::parse_spec(s).map_err(|e| anyhow!(e))?;
            let path = uprobe::resolve_binary(pid, &spec.binary).map_err(|e| anyhow!(e))?;
            let found = uprobe::find_functions(&path, &spec.glob).map_err(|e| anyhow!(e))?;
            Some((path, found))
        }
        None => None,
    };
    precheck::check(precheck::Needs { btf: true, tracefs: true }).map_err(|e| anyhow!(e))?;
    let tracefs = precheck::tracefs().map_err(|e| anyhow!(e))?;

    let choice = backend::choose(&LADDER, forced, probe::kernel_supports).map_err(|e| anyhow!(e))?;
    let mech = choice.mechanism;
    let epitem = mech != Mechanism::Tracepoint;
    let mut notes: Vec<String> = Vec::new();

    let mut ranges = [[0u64; 2]; 3];
    let have_data_ready = tracefs.join("events/sock/sk_data_ready").is_dir();
    let k = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    // The socket callbacks that mark one event for herd grouping, where this
    // kernel has them as functions of their own; without one, its herds
    // are grouped by timing instead.
    let (mut readable_cb, mut wakeup_cb) = (false, false);
    // Without a kretprobe on ep_poll_callback (see
    // unwinds_through_kretprobes), its slot is believed only for wake-ups
    // whose stack passes through it.
    let by_stack = mech == Mechanism::Kprobe && !kallsyms::unwinds_through_kretprobes(&k);
    if epitem {
        let found = kallsyms::function_ranges(&k, &KSYMS).unwrap_or_default();
        readable_cb = found.contains_key("sock_def_readable");
        wakeup_cb = found.contains_key("sock_def_wakeup");
        if let Some(&(s, e)) = found.get(KSYMS[0]).filter(|_| by_stack) {
            ranges[0] = [s, e];
        }
    } else {
        match kallsyms::function_ranges(&k, &KSYMS) {
            Ok(r) => {
                for (i, name) in KSYMS.iter().enumerate() {
                    match r.get(*name) {
                        Some(&(s, e)) => ranges[i] = [s, e],
                        None => notes.push(format!("{name} is not in /proc/kallsyms")),
                    }
                }
            }
            Err(e) => notes.push(e),
        }
        if !have_data_ready {
            notes.push("this kernel has no sock:sk_data_ready tracepoint (added in 6.3)".into());
        }
    }

    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = EpollwakeSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.targ_tgid = pid;
    ro.filter_tids = !cli.tids.is_empty();
    ro.epitem_backend = epitem;
    ro.epitem_by_stack = by_stack;
    ro.ksym_range = ranges;
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).map_err(|e| anyhow!(e))?;
    let p = &mut open.progs;
    p.ew_fentry_epcb.set_autoload(mech == Mechanism::Fentry);
    p.ew_fexit_epcb.set_autoload(mech == Mechanism::Fentry);
    p.ew_kprobe_epcb.set_autoload(mech == Mechanism::Kprobe);
    p.ew_kretprobe_epcb.set_autoload(mech == Mechanism::Kprobe && !by_stack);
    let fentry = mech == Mechanism::Fentry;
    let kprobe = mech == Mechanism::Kprobe;
    p.ew_fentry_readable.set_autoload(fentry && readable_cb);
    p.ew_fexit_readable.set_autoload(fentry && readable_cb);
    p.ew_fentry_wakeup.set_autoload(fentry && wakeup_cb);
    p.ew_fexit_wakeup.set_autoload(fentry && wakeup_cb);
    p.ew_kprobe_readable.set_autoload(kprobe && readable_cb);
    p.ew_kretprobe_readable.set_autoload(kprobe && readable_cb);
    p.ew_kprobe_wakeup.set_autoload(kprobe && wakeup_cb);
    p.ew_kretprobe_wakeup.set_autoload(kprobe && wakeup_cb);
    if epitem {
        for (found, name) in [(readable_cb, "sock_def_readable"), (wakeup_cb, "sock_def_wakeup")] {
            if !found {
                notes.push(format!("{name} is not in /proc/kallsyms: its herds are grouped by timing"));
            }
        }
    }
    p.ew_data_ready.set_autoload(!epitem && have_data_ready);
    p.ew_set_state.set_autoload(!epitem);
    p.ew_enter_pwait2.set_autoload(tracefs.join("events/syscalls/sys_enter_epoll_pwait2").is_dir());
    p.ew_exit_pwait2.set_autoload(tracefs.join("events/syscalls/sys_exit_epoll_pwait2").is_dir());
    p.ew_uprobe.set_autoload(uprobes.is_some());
    let skel = open.load().context("loading the BPF programs")?;

    for tid in &cli.tids {
        skel.maps.tids.update(&tid.to_ne_bytes(), &[1u8], MapFlags::ANY).context("setting the thread filter")?;
    }
    let mut links: Vec<Link> = Vec::new();
    let p = &skel.progs;
    let all = [
        &p.ew_enter_wait,
        &p.ew_enter_pwait,
        &p.ew_enter_pwait2,
        &p.ew_exit_wait,
        &p.ew_exit_pwait,
        &p.ew_exit_pwait2,
        &p.ew_data_ready,
        &p.ew_set_state,
        &p.ew_fentry_epcb,
        &p.ew_fexit_epcb,
        &p.ew_kprobe_epcb,
        &p.ew_kretprobe_epcb,
        &p.ew_waking,
        &p.ew_switch,
        &p.ew_enter_accept,
        &p.ew_enter_accept4,
        &p.ew_exit_accept,
        &p.ew_exit_accept4,
        &p.ew_enter_close,
        &p.ew_enter_ctl,
        &p.ew_exit_ctl,
        &p.ew_softirq_entry,
        &p.ew_softirq_exit,
        &p.ew_fentry_readable,
        &p.ew_fexit_readable,
        &p.ew_fentry_wakeup,
        &p.ew_fexit_wakeup,
        &p.ew_kprobe_readable,
        &p.ew_kretprobe_readable,
        &p.ew_kprobe_wakeup,
        &p.ew_kretprobe_wakeup,
    ];
    for prog in all {
        if !prog.autoload() {
            continue;
        }
        let name = prog.name().to_string_lossy().into_owned();
        let link = prog.attach().map_err(|e| anyhow!("attaching {name}: {}", libbpf_err(&e)))?;
        links.push(link);
    }
    let mut uprobe_names = Vec::new();
    if let Some((path, found)) = &uprobes {
        for (i, t) in found.iter().enumerate() {
            let opts = UprobeOpts { cookie: i as u64, ..Default::default() };
            let link =
                skel.progs.ew_uprobe.attach_uprobe_with_opts(pid as i32, path, t.file_offset as usize, opts).map_err(
                    |e| anyhow!("--uprobe: attaching to {} in {}: {}", t.name, path.display(), libbpf_err(&e)),
                )?;
            links.push(link);
            uprobe_names.push(t.name.clone());
        }
    }
    // After the syscall programs are attached, so no thread falls between.
    let already: Vec<target::Waiting> =
        target::waiting_threads(pid).into_iter().filter(|w| cli.tids.is_empty() || cli.tids.contains(&w.tid)).collect();
    for w in &already {
        seed_waiting(&skel.maps.waiting, w);
    }

    // Signals are ours before the banner tells anyone we are running.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    let how = if epitem && notes.is_empty() {
        "ep_poll_callback's epitem names the file and fd".to_string()
    } else if epitem {
        format!("ep_poll_callback's epitem names the file and fd ({})", notes.join("; "))
    } else if notes.is_empty() {
        "sockets from sock:sk_data_ready and sock:inet_sock_set_state, tied to wake-ups through \
         ep_poll_callback in the waker's stack"
            .to_string()
    } else {
        format!("sockets cannot be identified ({}); wake-ups are still reported", notes.join("; "))
    };
    eprintln!("epollwake: {}", choice.explain());
    eprintln!(
        "epollwake: watching process {pid} ({comm}){}, {} thread(s) already in epoll_wait; {how}; \
         events via {}{}. Ctrl-C to end.",
        if cli.tids.is_empty() { String::new() } else { format!(" threads {:?}", cli.tids) },
        already.len(),
        transport.name(),
        if uprobe_names.is_empty() {
            String::new()
        } else {
            format!("; uprobes on {} function(s)", uprobe_names.len())
        },
    );

    let inbox: Rc<RefCell<Vec<Event>>> = Rc::default();
    let sink_inbox = inbox.clone();
    let stream =
        EventStream::open(transport, &[(&skel.maps.events_ring, &skel.maps.events_perf)], move |data: &[u8]| {
            if let Some(ev) = Event::decode(data) {
                sink_inbox.borrow_mut().push(ev);
            }
        })
        .map_err(|e| anyhow!(e))?;

    let opts = Options { json: cli.json, stacks: cli.stacks, filter: Filter { fd: cli.fd, port: cli.port } };
    let mut timeline = Timeline::new(pid, opts, uprobe_names);
    let mut sink = Sink::stdout();
    if !cli.json {
        sink.text(report::HEADER)?;
    }
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        if !target::alive(pid) {
            break StopReason::Other(format!("process {pid} exited"));
        }
        let max = if timeline.has_pending() { Duration::from_millis(5) } else { Duration::from_millis(200) };
        stream.poll(rc.poll_timeout(max)).map_err(|e| anyhow!(e))?;
        for ev in inbox.borrow_mut().drain(..) {
            timeline.push(ev);
        }
        timeline.flush(&mut sink, false)?;
    };
    // Events already in the buffer when the run ended still belong to it.
    stream.poll(Duration::ZERO).map_err(|e| anyhow!(e))?;
    for ev in inbox.borrow_mut().drain(..) {
        timeline.push(ev);
    }
    timeline.flush(&mut sink, true)?;

    let stats = read_stats(&skel.maps.stats)?;
    let base = Summary {
        kind: "summary",
        pid,
        backend: mech.name().to_string(),
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        epoll_waits: stats.waits + already.len() as u64,
        lost: stats.lost + stream.lost(),
        stack_failed: stats.stack_failed,
        ..Default::default()
    };
    let summary = timeline.summary(base);
    if cli.json {
        sink.json(&summary)?;
    } else {
        sink.text(&summary.line())?;
        if cli.summary {
            sink.text(&summary.tables())?;
        }
    }
    if summary.epoll_waits == 0 {
        let who = if cli.tids.is_empty() { String::new() } else { format!(" (threads {:?})", cli.tids) };
        eprintln!(
            "epollwake: process {pid} ({comm}){who} never waited in epoll_wait, epoll_pwait or epoll_pwait2 \
             during the {:.1}s run: nothing to explain. It may use poll/select or io_uring, busy-poll, or \
             have been idle in another call.",
            summary.duration_s
        );
    }
    // Dropping the links detaches; dropping the skeleton unloads.
    drop(stream);
    drop(links);
    Ok(())
}

/// The per-CPU counters, summed.
fn read_stats(map: &libbpf_rs::MapMut) -> Result<ew_stats> {
    kdiag_shared::maps::sum_counters(map).context("reading statistics")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kprobe rung cannot attach on the host (no kprobes), but its
    /// programs load: the verifier accepts the epitem path, and the CO-RE
    /// container_of from ep_poll_callback's wait entry to the epitem
    /// resolves against this kernel's BTF. (fentry is refused before the
    /// verifier runs here; guest kernels exercise both for real.)
    #[test]
    fn the_epitem_backend_passes_the_verifier() {
        let mut storage = MaybeUninit::uninit();
        let mut open = EpollwakeSkelBuilder::default().open(&mut storage).unwrap();
        let ro = open.maps.rodata_data.as_deref_mut().unwrap();
        ro.kd_use_ringbuf = true;
        ro.targ_tgid = std::process::id();
        ro.epitem_backend = true;
        Transport::RingBuf.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).unwrap();
        let p = &mut open.progs;
        p.ew_fentry_epcb.set_autoload(false);
        p.ew_fexit_epcb.set_autoload(false);
        for prog in
            [&mut p.ew_fentry_readable, &mut p.ew_fexit_readable, &mut p.ew_fentry_wakeup, &mut p.ew_fexit_wakeup]
        {
            prog.set_autoload(false);
        }
        p.ew_data_ready.set_autoload(false);
        p.ew_set_state.set_autoload(false);
        let skel = open.load().expect("the kprobe backend's programs load");
        assert!(skel.progs.ew_kprobe_epcb.autoload() && skel.progs.ew_kprobe_readable.autoload());
        assert!(skel.progs.ew_waking.autoload());
    }
}

//! epollwake: explain every epoll wake-up of a process. See `epollwake
//! --help` and bpf/epollwake.bpf.c for how.

mod attach;
mod cli;
mod events;
mod fdmap;
mod groups;
mod herd;
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
use attach::{Plan, LADDER};
use bpf::types::{ew_ksym_ranges, ew_stats};
use bpf::EpollwakeSkelBuilder;
use events::Event;
use kdiag_shared::lifecycle::Session;
use kdiag_shared::output::Sink;
use kdiag_shared::runctl::StopReason;
use kdiag_shared::transport::{Inbox, Kind as Transport};
use kdiag_shared::{precheck, probe, say};
use libbpf_rs::{MapCore, MapFlags};
use report::Summary;
use std::mem::MaybeUninit;
use std::time::Duration;
use timeline::{Filter, Options, Timeline};

kdiag_shared::plain_data!(ew_stats, ew_ksym_ranges);

fn main() {
    kdiag_shared::lifecycle::main("epollwake", run)
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
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
    let uprobes = cli.uprobe.as_deref().map(|s| uprobe::resolve(pid, s)).transpose().map_err(anyhow::Error::msg)?;
    precheck::check(precheck::Needs { btf: true, tracefs: true })?;
    let tracefs = precheck::tracefs().map_err(anyhow::Error::msg)?;
    let ksyms = attach::lookup_ksyms();

    let choice = s.choose(&LADDER, cli.backend.as_deref(), probe::kernel_supports)?;
    let mut plan = Plan::new(choice.mechanism, &tracefs, ksyms);
    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = kdiag_shared::skel::open(EpollwakeSkelBuilder::default(), &mut storage)?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.targ_tgid = pid;
    ro.filter_tids = !cli.tids.is_empty();
    ro.epitem_backend = plan.epitem;
    ro.epitem_by_stack = plan.by_stack;
    ro.has_pwait2 = plan.pwait2;
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf)?;
    plan.select(&mut open.progs, uprobes.is_some())?;
    let skel = s.load(open)?;
    plan.fill_ranges(&skel.maps.ksym_ranges)?;

    for tid in &cli.tids {
        skel.maps.tids.update(&tid.to_ne_bytes(), &[1u8], MapFlags::ANY).context("setting the thread filter")?;
    }
    let attached = attach::attach(&skel.progs, pid, uprobes.as_ref())?;
    // After the syscall programs are attached, so no thread falls between.
    let already: Vec<target::Waiting> =
        target::waiting_threads(pid).into_iter().filter(|w| cli.tids.is_empty() || cli.tids.contains(&w.tid)).collect();
    for w in &already {
        target::seed_waiting(&skel.maps.waiting, w);
    }
    let inbox = Inbox::open(transport, &[(&skel.maps.events_ring, &skel.maps.events_perf)], Event::decode)?;
    s.checkpoint()?;

    s.start(cli.duration);
    say!("{}", choice.explain());
    say!(
        "watching process {pid} ({comm}){}, {} thread(s) already in epoll_wait; {}; events via {}{}. Ctrl-C to end.",
        if cli.tids.is_empty() { String::new() } else { format!(" threads {:?}", cli.tids) },
        already.len(),
        plan.how(),
        transport.name(),
        match attached.uprobe_names.len() {
            0 => String::new(),
            n => format!("; uprobes on {n} function(s)"),
        },
    );

    let opts = Options { json: cli.json, stacks: cli.stacks, filter: Filter { fd: cli.fd, port: cli.port } };
    let mut timeline = Timeline::new(pid, opts, attached.uprobe_names.clone());
    let mut sink = Sink::stdout();
    if !cli.json {
        sink.text(report::HEADER)?;
    }
    let reason = s.event_loop(Duration::from_millis(200), |wait| {
        if !target::alive(pid) {
            return Ok(Some(StopReason::Other(format!("process {pid} exited"))));
        }
        let wait = if timeline.has_pending() { wait.min(Duration::from_millis(5)) } else { wait };
        for ev in inbox.poll(wait)? {
            timeline.push(ev);
        }
        timeline.flush(&mut sink, false)?;
        Ok(None)
    })?;
    // Events already in the buffer when the run ended still belong to it.
    for ev in inbox.poll(Duration::ZERO)? {
        timeline.push(ev);
    }
    timeline.flush(&mut sink, true)?;

    let stats: ew_stats = kdiag_shared::maps::sum_counters(&skel.maps.stats).context("reading statistics")?;
    let base = Summary {
        kind: "summary",
        pid,
        backend: choice.mechanism.name().to_string(),
        duration_s: s.run().elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        epoll_waits: stats.waits + already.len() as u64,
        lost: stats.lost + inbox.lost(),
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
        say!(
            "process {pid} ({comm}){who} never waited in epoll_wait, epoll_pwait or epoll_pwait2 during the {:.1}s \
             run: nothing to explain. It may use poll/select or io_uring, busy-poll, or have been idle in another \
             call.",
            summary.duration_s
        );
    }
    // Dropping the links detaches; dropping the skeleton unloads.
    drop(inbox);
    drop(attached);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_shared::ksyms;
    use libbpf_rs::skel::OpenSkel;
    use libbpf_rs::skel::SkelBuilder;

    /// The functions the tracepoint backend recognises in wakers' stacks
    /// are in this kernel, each a range of plausible size.
    #[test]
    fn this_kernel_has_the_epoll_callbacks() {
        kdiag_testkit::needs_root("reads kernel addresses from /proc/kallsyms");
        let k = ksyms::require().unwrap();
        for name in attach::KSYMS {
            let f = k.function(name).unwrap_or_else(|| panic!("{name} not in kallsyms"));
            assert!(f.addr < f.end && f.end - f.addr < 64 * 1024, "{f:?}");
        }
    }

    /// The kprobe rung cannot attach on the host (no kprobes), but its
    /// programs load: the verifier accepts the epitem path, and the CO-RE
    /// container_of from ep_poll_callback's wait entry to the epitem
    /// resolves against this kernel's BTF. (fentry is refused before the
    /// verifier runs here; guest kernels exercise both for real.)
    #[test]
    fn the_epitem_backend_passes_the_verifier() {
        kdiag_testkit::needs_root("loads BPF programs");
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

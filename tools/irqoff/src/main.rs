//! irqoff: report long interrupts-off windows with the stack of the code
//! that held them. See `irqoff --help` and bpf/irqoff.bpf.c for how.

mod cli;
mod collect;
mod metrics;
mod params;
mod report;
mod steal;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/irqoff.skel.rs"));
}

use anyhow::{Context, Result};
use bpf::types::{irqoff_event, irqoff_stats};
use bpf::IrqoffSkelBuilder;
use kdiag_shared::backend::Mechanism;
use kdiag_shared::lifecycle::Session;
use kdiag_shared::metrics::Exporter;
use kdiag_shared::output::{Sink, WallClock};
use kdiag_shared::perf::{self, EventSpec, PerfEvent};
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::transport::{self, Inbox, Kind as Transport};
use kdiag_shared::{cpus, precheck, say, warning, Errno};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

const LADDER: [Mechanism; 2] = [Mechanism::PerfHw, Mechanism::PerfSw];

kdiag_shared::plain_data!(irqoff_event, irqoff_stats);

fn main() {
    kdiag_shared::lifecycle::main("irqoff", run)
}

/// Perf events opened while choosing the backend; the hardware ones are the
/// probe and the real thing at once, so nothing is opened twice.
#[derive(Default)]
struct Events {
    clock: Vec<PerfEvent>,
    nmi: Vec<PerfEvent>,
}

fn run(cli: cli::Cli, s: &mut Session) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // opened or loaded, so a bad command line leaves no trace.
    let threshold = Duration::from_millis(cli.threshold_ms);
    let period = params::sampling_period(threshold);
    let cpus = cpus::select(cli.cpus.as_deref(), &cpus::online()?)?;
    let mut sink = Sink::from_option(cli.log.as_deref())?;
    precheck::check(precheck::Needs { btf: true, tracefs: false })?;
    let mut exporter = Exporter::start(&cli.metrics)?;

    let clock_spec = EventSpec::SwCpuClock { period_ns: period.as_nanos() as u64 };
    let mut events = Events::default();
    let choice = s.choose(&LADDER, cli.backend.as_deref(), |m| {
        // Whatever a failed rung opened is closed before the next one tries.
        events = Events::default();
        if m == Mechanism::PerfHw {
            let khz = params::cpu_khz(cpus[0]).unwrap_or(1_000_000);
            let spec = EventSpec::HwCycles { period_cycles: params::cycles_for(params::nmi_interval(threshold), khz) };
            events.nmi = perf::open_on_cpus(&cpus, |c| PerfEvent::open(spec, c))?;
        }
        events.clock = perf::open_on_cpus(&cpus, |c| PerfEvent::open(clock_spec, c))?;
        Ok(())
    })?;
    let hw = choice.mechanism == Mechanism::PerfHw;

    let steal = steal::Steal::locate();
    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = kdiag_shared::skel::open(IrqoffSkelBuilder::default(), &mut storage)?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.period_ns = period.as_nanos() as u64;
    ro.threshold_ns = threshold.as_nanos() as u64;
    ro.ongoing_ns = params::ongoing_after(threshold).as_nanos() as u64;
    ro.max_per_sec = cli.max_rate;
    ro.hw_mode = hw;
    ro.steal_on = steal.readable();
    ro.steal_rq_delta = steal.rq_delta();
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf)?;
    transport.configure(&mut open.maps.nmi_events_ring, &mut open.maps.nmi_events_perf)?;
    open.progs.irqoff_nmi.set_autoload(hw);
    let skel = s.load(open)?;
    steal.fill(&skel.maps.steal_at).context("giving the BPF side the steal clocks")?;

    let attach = |evs: &[PerfEvent], prog: &libbpf_rs::ProgramMut| -> Result<()> {
        for ev in evs {
            ev.attach_bpf(prog.as_fd().as_raw_fd())
                .map_err(|e| anyhow::anyhow!("attaching to perf event on CPU {}: {e}", ev.cpu))?;
        }
        Ok(())
    };
    // Idle tracking first, so the first gaps are already corrected. A kernel
    // without power:cpu_idle still works, with idle time left in the gaps.
    let idle_link = skel.progs.irqoff_idle.attach();
    attach(&events.clock, &skel.progs.irqoff_tick)?;
    attach(&events.nmi, &skel.progs.irqoff_nmi)?;
    let inbox: Inbox<irqoff_event> = Inbox::open(
        transport,
        &[(&skel.maps.events_ring, &skel.maps.events_perf), (&skel.maps.nmi_events_ring, &skel.maps.nmi_events_perf)],
        transport::record,
    )?;
    s.checkpoint()?;

    s.start(cli.duration);
    let mode = if hw { "hardware NMI" } else { "software cpu-clock" };
    say!("{mode} mode, resolution {} us: {}", period.as_micros(), choice.explain());
    say!("{}", steal.explain());
    if let Err(e) = &idle_link {
        warning!(
            "cannot follow idle time (power:cpu_idle: {}); late timers on idle CPUs, common in VMs, may be \
             reported as windows",
            Errno::of_libbpf(e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
        );
    }
    say!(
        "watching CPUs {} for interrupts off >= {} ms, events via {}{}{}. Ctrl-C to end.",
        cpus::format_list(&cpus),
        cli.threshold_ms,
        transport.name(),
        cli.log.as_ref().map(|p| format!(", appending to {}", p.display())).unwrap_or_default(),
        exporter.describe()
    );
    let setup = metrics::Setup { mode: if hw { "hw" } else { "sw" }, threshold, period };
    let stats = || collect::per_cpu_stats(&skel.maps.stats, &cpus);

    let wall = WallClock::new();
    let mut symbolizer = Symbolizer::new();
    if !cli.json {
        sink.text(report::HEADER)?;
    }
    let mut reported = 0u64;
    let reason = s.event_loop(Duration::from_millis(200), |wait| {
        reported += collect::flush(inbox.poll(wait)?, &wall, &mut symbolizer, &mut sink, cli.json, &steal)?;
        exporter.update(|| Ok(metrics::render(&stats()?, &cpus, &setup)))?;
        Ok(None)
    })?;
    // Events already in the buffer when the run ended still belong to it.
    reported += collect::flush(inbox.poll(Duration::ZERO)?, &wall, &mut symbolizer, &mut sink, cli.json, &steal)?;

    let stats = stats()?;
    let final_metrics = metrics::render(&stats, &cpus, &setup);
    let mut summary =
        collect::summarize(&stats, &cpus, mode, s.run(), reason.to_string(), threshold, period, reported, inbox.lost());
    summary.steal = steal.state();
    if cli.json {
        sink.json(&summary)?;
    } else {
        sink.text(&summary.text())?;
    }
    if sink.is_file() {
        kdiag_shared::output::stdout_text(&summary.text())?;
    }
    // Dropping the perf events detaches the programs; dropping the
    // skeleton unloads them and frees the maps.
    drop(inbox);
    drop(events);
    drop(idle_link);
    exporter.finish(final_metrics);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::skel::OpenSkel;
    use libbpf_rs::skel::SkelBuilder;

    /// No machine here has a PMU, so the NMI program never runs in tests;
    /// it must at least pass the verifier of this kernel, with both
    /// transports, exactly as hardware mode loads it: then this process
    /// holds both as perf_event programs.
    #[test]
    fn hardware_mode_programs_pass_the_verifier() {
        kdiag_testkit::needs_root("loads BPF programs");
        for transport in [Transport::RingBuf, Transport::PerfBuf] {
            let mut storage = MaybeUninit::uninit();
            let mut open = IrqoffSkelBuilder::default().open(&mut storage).unwrap();
            let ro = open.maps.rodata_data.as_deref_mut().unwrap();
            ro.hw_mode = true;
            // The steal clock's code too: pruned unless switched on.
            ro.steal_on = true;
            ro.steal_rq_delta = -1;
            ro.kd_use_ringbuf = transport == Transport::RingBuf;
            transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).unwrap();
            transport.configure(&mut open.maps.nmi_events_ring, &mut open.maps.nmi_events_perf).unwrap();
            let _skel = open.load().unwrap_or_else(|e| panic!("{transport:?}: {e:#}"));
            let held = kdiag_testkit::programs_held_by(std::process::id());
            for name in ["irqoff_nmi", "irqoff_tick"] {
                assert!(
                    held.iter().any(|(n, t)| n == name && *t == libbpf_rs::ProgramType::PerfEvent),
                    "{transport:?}: {name} not loaded as a perf_event program: {held:?}"
                );
            }
        }
    }
}

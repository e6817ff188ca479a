//! irqoff: report long interrupts-off windows with the stack of the code
//! that held them. See `irqoff --help` and bpf/irqoff.bpf.c for how.

mod cli;
mod metrics;
mod params;
mod report;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/irqoff.skel.rs"));
}

use anyhow::{anyhow, Context, Result};
use bpf::types::{irqoff_event, irqoff_stats};
use bpf::IrqoffSkelBuilder;
use kdiag_shared::backend::{self, Mechanism};
use kdiag_shared::histogram::Log2Hist;
use kdiag_shared::metrics::Exporter;
use kdiag_shared::output::{Sink, WallClock};
use kdiag_shared::perf::{self, EventSpec, PerfEvent};
use kdiag_shared::runctl::RunControl;
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::transport::{EventStream, Kind as Transport};
use kdiag_shared::{cpus, precheck, Errno};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use report::{CpuSummary, Kind, Record, StackOf, Summary};
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::time::Duration;

const LADDER: [Mechanism; 2] = [Mechanism::PerfHw, Mechanism::PerfSw];

fn main() {
    let cli: cli::Cli = kdiag_shared::args::parse("irqoff");
    if let Err(e) = run(cli) {
        eprintln!("irqoff: {e:#}");
        std::process::exit(kdiag_shared::args::exit_code(&e));
    }
}

/// Perf events opened while choosing the backend; the hardware ones are the
/// probe and the real thing at once, so nothing is opened twice.
#[derive(Default)]
struct Events {
    clock: Vec<PerfEvent>,
    nmi: Vec<PerfEvent>,
}

fn run(cli: cli::Cli) -> Result<()> {
    // Everything the user can get wrong is checked before anything is
    // opened or loaded, so a bad command line leaves no trace.
    let threshold = Duration::from_millis(cli.threshold_ms);
    let period = params::sampling_period(threshold);
    let online = cpus::online().map_err(|e| anyhow!(e))?;
    let cpus = cpus::select(cli.cpus.as_deref(), &online).map_err(|e| anyhow!(e))?;
    let forced = match &cli.backend {
        Some(b) => Some(backend::parse_backend(b, &LADDER).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let mut sink = Sink::from_option(cli.log.as_deref()).map_err(|e| anyhow!(e))?;
    let mut exporter = Exporter::start("irqoff", &cli.metrics)?;
    precheck::check(precheck::Needs::default()).map_err(|e| anyhow!(e))?;

    let clock_spec = EventSpec::SwCpuClock { period_ns: period.as_nanos() as u64 };
    let mut events = Events::default();
    let choice = backend::choose(&LADDER, forced, |m| {
        // Whatever a failed rung opened is closed before the next one tries.
        events = Events::default();
        if m == Mechanism::PerfHw {
            let khz = params::cpu_khz(cpus[0]).unwrap_or(1_000_000);
            let spec = EventSpec::HwCycles { period_cycles: params::cycles_for(params::nmi_interval(threshold), khz) };
            events.nmi = perf::open_on_cpus(&cpus, |c| PerfEvent::open(spec, c))?;
        }
        events.clock = perf::open_on_cpus(&cpus, |c| PerfEvent::open(clock_spec, c))?;
        Ok(())
    })
    .map_err(|e| anyhow!(e))?;
    let hw = choice.mechanism == Mechanism::PerfHw;

    let transport = Transport::detect();
    let mut storage = MaybeUninit::uninit();
    let mut open = IrqoffSkelBuilder::default().open(&mut storage).context("opening the BPF object")?;
    let ro = open.maps.rodata_data.as_deref_mut().context("BPF object has no rodata")?;
    ro.kd_use_ringbuf = transport == Transport::RingBuf;
    ro.period_ns = period.as_nanos() as u64;
    ro.threshold_ns = threshold.as_nanos() as u64;
    ro.ongoing_ns = params::ongoing_after(threshold).as_nanos() as u64;
    ro.max_per_sec = cli.max_rate;
    ro.hw_mode = hw;
    transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).map_err(|e| anyhow!(e))?;
    transport.configure(&mut open.maps.nmi_events_ring, &mut open.maps.nmi_events_perf).map_err(|e| anyhow!(e))?;
    if !hw {
        open.progs.irqoff_nmi.set_autoload(false);
    }
    let skel = open.load().context("loading the BPF programs")?;

    let attach = |evs: &[PerfEvent], prog: &libbpf_rs::ProgramMut| -> Result<()> {
        for ev in evs {
            ev.attach_bpf(prog.as_fd().as_raw_fd())
                .map_err(|e| anyhow!("attaching to perf event on CPU {}: {e}", ev.cpu))?;
        }
        Ok(())
    };
    // Idle tracking first, so the first gaps are already corrected. A kernel
    // without power:cpu_idle still works, with idle time left in the gaps.
    let idle_link = skel.progs.irqoff_idle.attach();
    attach(&events.clock, &skel.progs.irqoff_tick)?;
    attach(&events.nmi, &skel.progs.irqoff_nmi)?;

    // Signals are ours from here on, before the banner tells anyone (or any
    // test) that the run has started.
    let rc = RunControl::start(cli.duration).context("installing signal handlers")?;
    let mode = if hw { "hardware NMI" } else { "software cpu-clock" };
    eprintln!("irqoff: {mode} mode, resolution {} us: {}", period.as_micros(), choice.explain());
    if let Err(e) = &idle_link {
        eprintln!(
            "irqoff: warning: cannot follow idle time (power:cpu_idle: {}); late timers on idle \
             CPUs, common in VMs, may be reported as windows",
            Errno::of_libbpf(e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
        );
    }
    eprintln!(
        "irqoff: watching CPUs {} for interrupts off >= {} ms, events via {}{}{}. Ctrl-C to end.",
        cpus::format_list(&cpus),
        cli.threshold_ms,
        transport.name(),
        cli.log.as_ref().map(|p| format!(", appending to {}", p.display())).unwrap_or_default(),
        exporter.describe()
    );
    let setup = metrics::Setup { mode: if hw { "hw" } else { "sw" }, threshold, period };

    let pending: Rc<RefCell<Vec<irqoff_event>>> = Rc::default();
    let sink_pending = pending.clone();
    let stream = EventStream::open(
        transport,
        &[(&skel.maps.events_ring, &skel.maps.events_perf), (&skel.maps.nmi_events_ring, &skel.maps.nmi_events_perf)],
        move |data: &[u8]| {
            if data.len() >= std::mem::size_of::<irqoff_event>() {
                // SAFETY: irqoff_event is plain data and the length was checked.
                let ev = unsafe { std::ptr::read_unaligned(data.as_ptr() as *const irqoff_event) };
                sink_pending.borrow_mut().push(ev);
            }
        },
    )
    .map_err(|e| anyhow!(e))?;

    let wall = WallClock::new();
    let mut symbolizer = Symbolizer::new();
    if !cli.json {
        sink.text(report::HEADER)?;
    }
    let mut reported = 0u64;
    let reason = loop {
        if let Some(r) = rc.stop_reason() {
            break r;
        }
        stream.poll(rc.poll_timeout(Duration::from_millis(200))).map_err(|e| anyhow!(e))?;
        reported += flush(&pending, &wall, &mut symbolizer, &mut sink, cli.json)?;
        exporter.update(|| Ok(metrics::render(&read_stats(&skel.maps.stats, &cpus)?, &cpus, &setup)))?;
    };
    // Events already in the buffer when the run ended still belong to it.
    stream.poll(Duration::ZERO).map_err(|e| anyhow!(e))?;
    reported += flush(&pending, &wall, &mut symbolizer, &mut sink, cli.json)?;

    let stats = read_stats(&skel.maps.stats, &cpus)?;
    let final_metrics = metrics::render(&stats, &cpus, &setup);
    let summary = summarize(&stats, &cpus, mode, &rc, reason.to_string(), threshold, period, reported, stream.lost());
    if cli.json {
        sink.json(&summary)?;
    } else {
        sink.text(&summary.text())?;
    }
    if sink.is_file() {
        print!("{}", summary.text());
    }
    // Dropping the perf events detaches the programs; dropping the
    // skeleton unloads them and frees the maps.
    drop(stream);
    drop(events);
    drop(idle_link);
    exporter.finish(final_metrics);
    Ok(())
}

fn flush(
    pending: &RefCell<Vec<irqoff_event>>,
    wall: &WallClock,
    symbolizer: &mut Symbolizer,
    sink: &mut Sink,
    json: bool,
) -> Result<u64> {
    let batch = std::mem::take(&mut *pending.borrow_mut());
    for ev in &batch {
        let rec = to_record(ev, wall, symbolizer);
        if json {
            sink.json(&rec)?;
        } else {
            sink.text(&rec.text())?;
        }
    }
    Ok(batch.iter().filter(|e| e.kind == 0).count() as u64)
}

fn to_record(ev: &irqoff_event, wall: &WallClock, symbolizer: &mut Symbolizer) -> Record {
    let (frames, stack_error) = if ev.stack_sz < 0 {
        (vec![], Some(Errno(-ev.stack_sz)))
    } else {
        let n = (ev.stack_sz as usize / 8).min(ev.stack.len());
        (symbolizer.kernel_stack(&ev.stack[..n]), None)
    };
    let comm: Vec<u8> = ev.comm.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Record {
        kind: if ev.kind == 1 { Kind::Ongoing } else { Kind::Window },
        time: wall.to_system_time(ev.ts_ns),
        mono_ns: ev.ts_ns,
        cpu: ev.cpu,
        comm: String::from_utf8_lossy(&comm).into_owned(),
        pid: ev.pid,
        tid: ev.tid,
        lat_us: ev.lat_ns / 1000,
        stack_of: if ev.stack_of == 1 { StackOf::Holder } else { StackOf::Reenabler },
        stack: frames,
        stack_error,
    }
}

/// Per-CPU counters of the CPUs we watched, indexed like `cpus`.
fn read_stats(map: &libbpf_rs::Map, cpus: &[u32]) -> Result<Vec<irqoff_stats>> {
    let per_cpu =
        map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY).context("reading statistics")?.unwrap_or_default();
    Ok(cpus
        .iter()
        .map(|&c| {
            per_cpu
                .get(c as usize)
                .filter(|v| v.len() >= std::mem::size_of::<irqoff_stats>())
                // SAFETY: irqoff_stats is plain data and the length was checked.
                .map(|v| unsafe { std::ptr::read_unaligned(v.as_ptr() as *const irqoff_stats) })
                .unwrap_or_default()
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    stats: &[irqoff_stats],
    cpus: &[u32],
    mode: &'static str,
    rc: &RunControl,
    stop_reason: String,
    threshold: Duration,
    period: Duration,
    reported: u64,
    transport_lost: u64,
) -> Summary {
    let sum = |f: fn(&irqoff_stats) -> u64| stats.iter().map(f).sum::<u64>();
    let mut hist = Log2Hist::default();
    for s in stats {
        hist.merge(&Log2Hist::from_slots(&s.hist));
    }
    Summary {
        kind: "summary",
        mode: if mode.starts_with("hardware") { "hw" } else { "sw" },
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason,
        threshold_us: threshold.as_micros() as u64,
        period_us: period.as_micros() as u64,
        windows: sum(|s| s.windows),
        reported,
        ongoing: sum(|s| s.ongoing),
        rate_limited: sum(|s| s.rate_limited),
        lost: sum(|s| s.lost + s.nmi_lost) + transport_lost,
        stack_failed: sum(|s| s.stack_failed + s.nmi_stack_failed),
        per_cpu: stats
            .iter()
            .zip(cpus)
            .map(|(s, &cpu)| CpuSummary {
                cpu,
                samples: s.samples,
                windows: s.windows,
                max_us: s.lat_max_ns / 1000,
                avg_us: if s.windows > 0 { s.lat_sum_ns / s.windows / 1000 } else { 0 },
            })
            .collect(),
        hist_us: hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No machine here has a PMU, so the NMI program never runs in tests;
    /// it must at least pass the verifier of this kernel, with both
    /// transports, exactly as hardware mode loads it.
    #[test]
    fn hardware_mode_programs_pass_the_verifier() {
        for transport in [Transport::RingBuf, Transport::PerfBuf] {
            let mut storage = MaybeUninit::uninit();
            let mut open = IrqoffSkelBuilder::default().open(&mut storage).unwrap();
            let ro = open.maps.rodata_data.as_deref_mut().unwrap();
            ro.hw_mode = true;
            ro.kd_use_ringbuf = transport == Transport::RingBuf;
            transport.configure(&mut open.maps.events_ring, &mut open.maps.events_perf).unwrap();
            transport.configure(&mut open.maps.nmi_events_ring, &mut open.maps.nmi_events_perf).unwrap();
            let skel = open.load().unwrap_or_else(|e| panic!("{transport:?}: {e:#}"));
            assert!(skel.progs.irqoff_nmi.as_fd().as_raw_fd() >= 0);
            assert!(skel.progs.irqoff_tick.as_fd().as_raw_fd() >= 0);
        }
    }
}

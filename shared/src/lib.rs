//! The library every kdiag tool is built on. Each module holds one concern,
//! in the order data flows through a tool:
//!
//! - [`lifecycle`]: the life of every tool, exec to exit: start-up, run,
//!   stop requests at any moment, exit status.
//! - [`args`]: one-line command-line errors.
//! - [`libbpf_log`]: libbpf's messages, kept, and a refused load in one line.
//! - [`btf`]: the kernel's BTF, or the file of `--btf`.
//! - [`precheck`]: privileges, BTF, tracefs, checked before anything loads.
//! - [`backend`]: the ladder of attach mechanisms and the choice among them;
//!   [`probe`] loads tiny programs to learn what this kernel really allows.
//! - [`perf`]: perf_event_open per CPU with hardware-to-software fallback,
//!   and attaching BPF programs with `PERF_EVENT_IOC_SET_BPF`.
//! - [`transport`]: ring buffer, or perf buffer on kernels without one,
//!   with lost-event counting.
//! - [`rawtp`]: raw tracepoints, run as tp_btf where the kernel allows:
//!   attached and detached without the classic ones' grace periods.
//! - [`links`]: attached programs, detached in parallel.
//! - [`ftrace`]: a private tracefs instance for the ftrace rung, removed
//!   on exit.
//! - [`ksyms`]: the kernel's symbols, read once, lean.
//! - [`symbolize`]: kernel and user addresses to names (user: blazesym).
//! - [`output`]: text, JSON Lines and log-file sinks, wall-clock time.
//! - [`flame`]: flame graph SVGs from folded stacks (inferno).
//! - [`pprof`]: pprof profiles for go tool pprof, Pyroscope and Parca.
//! - [`histogram`]: log2 histograms as bcc prints them.
//! - [`maps`]: map values and records as the skeleton's plain-data types.
//! - [`stacks`]: stack ids to named frames, tracer frames cut, merging,
//!   failed captures.
//! - [`metrics`]: Prometheus metrics over HTTP and in node_exporter's
//!   textfile directory.
//! - [`cpus`]: CPU lists (`0-3,7`) and the online set.
//! - [`runctl`]: duration, stop signals, and why a run stopped.
//! - [`skel`]: storage for the tools that open several BPF objects.
//! - [`softirq`]: the kernel's softirq vector names, from BTF.

pub mod args;
pub mod backend;
pub mod btf;
pub mod cpus;
pub mod flame;
pub mod ftrace;
pub mod histogram;
pub mod ksyms;
pub mod libbpf_log;
pub mod lifecycle;
pub mod links;
pub mod maps;
pub mod metrics;
pub mod output;
pub mod perf;
pub mod pprof;
pub mod precheck;
pub mod probe;
pub mod rawtp;
pub mod runctl;
pub mod skel;
pub mod softirq;
pub mod stacks;
pub mod symbolize;
pub mod transport;

mod errno;
pub use errno::{errno_name, Errno};

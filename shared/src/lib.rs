//! The library every kdiag tool is built on. Each module holds one concern,
//! in the order data flows through a tool:
//!
//! - [`args`]: one-line command-line errors.
//! - [`precheck`]: privileges, BTF, tracefs, checked before anything loads.
//! - [`backend`]: the ladder of attach mechanisms and the choice among them;
//!   [`probe`] loads tiny programs to learn what this kernel really allows.
//! - [`perf`]: perf_event_open per CPU with hardware-to-software fallback,
//!   and attaching BPF programs with `PERF_EVENT_IOC_SET_BPF`.
//! - [`transport`]: ring buffer, or perf buffer on kernels without one,
//!   with lost-event counting.
//! - [`ftrace`]: a private tracefs instance for the ftrace rung, removed
//!   on exit.
//! - [`symbolize`]: kernel and user addresses to names (blazesym).
//! - [`output`]: text, JSON Lines and log-file sinks, wall-clock time.
//! - [`flame`]: flame graph SVGs from folded stacks (inferno).
//! - [`pprof`]: pprof profiles for go tool pprof, Pyroscope and Parca.
//! - [`histogram`]: log2 histograms as bcc prints them.
//! - [`metrics`]: Prometheus metrics over HTTP and in node_exporter's
//!   textfile directory.
//! - [`maps`]: reading maps: plain values, stack maps, failed captures.
//! - [`cpus`]: CPU lists (`0-3,7`) and the online set.
//! - [`runctl`]: duration, Ctrl-C and SIGTERM, and why a run stopped.
//! - [`softirq`]: the kernel's softirq vector names, from BTF.

pub mod args;
pub mod backend;
pub mod cpus;
pub mod flame;
pub mod ftrace;
pub mod histogram;
pub mod maps;
pub mod metrics;
pub mod output;
pub mod perf;
pub mod pprof;
pub mod precheck;
pub mod probe;
pub mod runctl;
pub mod softirq;
pub mod symbolize;
pub mod transport;

mod errno;
pub use errno::{errno_name, Errno};

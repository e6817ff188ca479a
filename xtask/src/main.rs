//! kdiag's task runner: `cargo xtask <task>`. Every task installs what it
//! needs first, so each works on a fresh Debian 12 machine as root.

mod bench;
mod package;
mod setup;
mod tasks;
mod vmtest;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test kdiag")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install build dependencies (apt packages, the musl target).
    Setup,
    /// Build the static tool binaries (all, or the ones named).
    Build { tools: Vec<String> },
    /// Build one tool and run it with the given arguments, e.g.
    /// `cargo xtask run irqoff -- -t 10 30`.
    Run {
        tool: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite: unit tests, then tests that load real BPF
    /// programs on this kernel (one at a time: they share the kernel),
    /// then the packages are built and checked.
    Test,
    /// Measure each tool: binary size, start-up time, BPF time per traced
    /// event and CPU share, peak RSS; then side by side with the peers
    /// (libbpf-tools, bpftrace) in the same run, and the time per BPF
    /// program. `--only table|peers`, `--reps N`, `--secs N`.
    Bench(bench::Args),
    /// Build the kdiag .deb and .rpm into target/package/.
    Package {
        /// Also run the package checks of the test suite.
        #[arg(long)]
        check: bool,
    },
    /// Tests inside Debian 6.1 and 6.12 guests under qemu (kprobes, fentry,
    /// a fault-injecting test module): `--kernel 6.1|6.12|all`, `--filter NAME`.
    Vmtest(vmtest::Args),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::ensure(),
        Task::Build { tools } => {
            setup::ensure()?;
            tasks::build(&tools)
        }
        Task::Run { tool, args } => {
            setup::ensure()?;
            tasks::run(&tool, &args)
        }
        Task::Test => {
            setup::ensure()?;
            tasks::test()
        }
        Task::Bench(args) => {
            setup::ensure()?;
            bench::bench(&args)
        }
        Task::Package { check } => {
            setup::ensure()?;
            let built = package::package()?;
            if check {
                package::check::run_checks(&built, &mut tasks::Tally::default())?;
            }
            Ok(())
        }
        Task::Vmtest(args) => {
            setup::ensure()?;
            vmtest::run(&args)
        }
    }
}

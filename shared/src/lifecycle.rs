//! The life of a tool, from exec to exit, in one place: every tool's
//! `main` is [`main`], and its steps go through the [`Session`] it is
//! handed.
//!
//! 1. The stop signals are taken over before anything else (runctl), so a
//!    stop request at any moment ends the run cleanly, never by the
//!    signal's default action half way through an attach.
//! 2. The command line is parsed (a usage error is one line, exit 2), and
//!    libbpf's messages are collected (libbpf_log), printed only with
//!    `--verbose`.
//! 3. Start-up: the tool checks its input and the machine, chooses its
//!    backend, opens, loads and attaches, calling [`Session::checkpoint`]
//!    between steps; the session's own steps check it too. A stop request
//!    during start-up drops whatever was attached and ends with the one
//!    line "stopped during start-up", exit 0.
//! 4. [`Session::start`]: attached. The banner is printed after it; from
//!    here a stop request ends the loop, and the tool prints its summary.
//! 5. Exit: 0 when the run ended as asked (duration, signal, the traced
//!    process gone, the reader of stdout gone: that last one silently);
//!    2 when the tool refused to start (bad input, privileges, BTF, a
//!    kernel without what it needs); 1 when a started run failed.
//!    Every error is one line on stderr.

use crate::backend::{self, Choice, Mechanism, ProbeError};
use crate::libbpf_log;
use crate::runctl::{RunControl, Stop, StopReason};
use anyhow::{anyhow, Result};
use libbpf_rs::skel::OpenSkel;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

/// The flags every tool has.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// Print libbpf's messages (the verifier's log of a refused load).
    #[arg(long)]
    pub verbose: bool,
}

/// A tool's command line, with the flags every tool has.
pub trait ToolArgs: clap::Parser {
    fn common(&self) -> &CommonArgs;
    /// `--btf`, for the tools that need BTF.
    fn btf(&self) -> Option<&std::path::Path> {
        None
    }
}

/// `impl ToolArgs` for a command line whose [`CommonArgs`] are the
/// flattened field `common`.
#[macro_export]
macro_rules! tool_args {
    ($cli:ty) => {
        impl $crate::lifecycle::ToolArgs for $cli {
            fn common(&self) -> &$crate::lifecycle::CommonArgs {
                &self.common
            }
        }
    };
    ($cli:ty, btf) => {
        impl $crate::lifecycle::ToolArgs for $cli {
            fn common(&self) -> &$crate::lifecycle::CommonArgs {
                &self.common
            }
            fn btf(&self) -> Option<&std::path::Path> {
                self.btf.file.as_deref()
            }
        }
    };
}

/// A stop request arrived during start-up: not a failure.
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped during start-up")
    }
}

impl std::error::Error for Stopped {}

static TOOL: OnceLock<&'static str> = OnceLock::new();

fn tool() -> &'static str {
    TOOL.get().copied().unwrap_or("kdiag")
}

/// One line on stderr, `tool: msg`. A closed or broken stderr is no
/// reason to fail, or to panic as `eprintln!` would.
pub fn say_line(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}: {msg}", tool());
}

/// Text on stderr as it is (a summary kept off a folded stdout).
pub fn say_text(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `tool: ...` on stderr.
#[macro_export]
macro_rules! say {
    ($($a:tt)*) => { $crate::lifecycle::say_line(&format!($($a)*)) };
}

/// `tool: warning: ...` on stderr.
#[macro_export]
macro_rules! warning {
    ($($a:tt)*) => { $crate::lifecycle::say_line(&format!("warning: {}", format!($($a)*))) };
}

pub struct Session {
    stop: Stop,
    run: Option<RunControl>,
}

/// Run `tool`: `body` gets the parsed command line and the session. Never
/// returns.
pub fn main<C: ToolArgs>(name: &'static str, body: impl FnOnce(C, &mut Session) -> Result<()>) -> ! {
    let stop = match Stop::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: cannot take over the stop signals: {e}");
            std::process::exit(1);
        }
    };
    let _ = TOOL.set(name);
    let cli: C = crate::args::parse(name);
    libbpf_log::install(cli.common().verbose);
    let mut session = Session { stop, run: None };
    let result = crate::btf::use_file(cli.btf()).and_then(|()| body(cli, &mut session));
    std::process::exit(exit_code(&result, session.run.is_some()))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The exit status for how `body` ended, saying what there is to say.
fn exit_code(result: &Result<()>, started: bool) -> i32 {
    let Err(e) = result else { return 0 };
    if e.downcast_ref::<Stopped>().is_some() {
        say_line("stopped during start-up");
        return 0;
    }
    if is_broken_pipe(e) {
        return 0;
    }
    say_line(&one_line(&format!("{e:#}")));
    if started {
        1
    } else {
        2
    }
}

/// Messages from the kernel or libbpf may span lines; the error is one.
fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

impl Session {
    /// Between start-up steps: a stop request ends start-up here, and
    /// everything attached so far is dropped on the way out.
    pub fn checkpoint(&self) -> Result<()> {
        match self.stop.signal() {
            Some(_) if self.run.is_none() => Err(Stopped.into()),
            _ => Ok(()),
        }
    }

    /// Walk `ladder` (or only the `--backend` the user named) with
    /// `probe`; between rungs, a stop request ends start-up.
    pub fn choose(
        &self,
        ladder: &[Mechanism],
        forced: Option<&str>,
        mut probe: impl FnMut(Mechanism) -> Result<(), ProbeError>,
    ) -> Result<Choice> {
        let forced = forced.map(|b| backend::parse_backend(b, ladder)).transpose().map_err(|e| anyhow!(e))?;
        self.checkpoint()?;
        let mut stopped = false;
        let choice = backend::choose(ladder, forced, |m| {
            if self.stop.signal().is_some() {
                stopped = true;
                return Err(ProbeError::Fatal(Stopped.to_string()));
            }
            probe(m)
        });
        if stopped {
            return Err(Stopped.into());
        }
        choice.map_err(|e| anyhow!(e))
    }

    /// Load an opened skeleton; a refusal is one line saying what the
    /// kernel lacks, when its log shows it.
    pub fn load<'obj, O: OpenSkel<'obj>>(&self, open: O) -> Result<O::Output> {
        self.checkpoint()?;
        libbpf_log::clear();
        let skel = open.load().map_err(|e| anyhow!(libbpf_log::explain_load("the BPF programs", &e)))?;
        self.checkpoint()?;
        Ok(skel)
    }

    /// Everything is attached: start the run's clock. Print the banner
    /// after this, not before.
    pub fn start(&mut self, duration: Option<Duration>) -> &RunControl {
        self.run.insert(RunControl::start(&self.stop, duration))
    }

    /// The started run.
    pub fn run(&self) -> &RunControl {
        self.run.as_ref().expect("Session::start comes before the run")
    }

    /// The run's loop: until a stop request, the duration's end or the
    /// reader's departure, call `step` with how long it may wait; a step
    /// may end the run with a reason of its own.
    pub fn event_loop(
        &self,
        max_wait: Duration,
        mut step: impl FnMut(Duration) -> Result<Option<StopReason>>,
    ) -> Result<StopReason> {
        let rc = self.run();
        loop {
            if let Some(r) = rc.stop_reason() {
                return Ok(r);
            }
            if let Some(r) = step(rc.poll_timeout(max_wait))? {
                return Ok(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Ok(()), true), 0);
        assert_eq!(exit_code(&Err(Stopped.into()), false), 0);
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("writing");
        assert_eq!(exit_code(&Err(pipe), true), 0);
        assert_eq!(exit_code(&Err(anyhow!("no such process: 1234")), false), 2);
        assert_eq!(exit_code(&Err(anyhow!("reading events: EIO")), true), 1);
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("cannot load: x\n  libbpf: y\n\n"), "cannot load: x; libbpf: y");
    }
}

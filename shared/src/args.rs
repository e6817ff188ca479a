//! Command-line conventions every tool shares: errors are one line on
//! stderr and exit code 2, so a script or an ops engineer at 3 a.m. sees
//! what is wrong without scrolling past usage text. Man pages and shell
//! completions come from the same clap definition, so they cannot drift
//! from the real flags.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// The flags of the tools that count stacks (offwaketime, funcstack), with
/// bcc's names; `#[command(flatten)]` them into a tool's command line.
#[derive(clap::Args, Clone, Debug)]
pub struct StackArgs {
    /// Also write an interactive flame graph to FILE.
    #[arg(long = "svg", value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Also write a gzipped pprof profile to FILE, for go tool pprof,
    /// Grafana Pyroscope or Parca.
    #[arg(long = "pprof", value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// Entries of the stack map; raise it when the summary reports EEXIST.
    #[arg(long = "stack-storage-size", value_name = "N", default_value = "16384",
          value_parser = clap::value_parser!(u32).range(64..=1 << 22))]
    pub stack_storage_size: u32,
}

impl StackArgs {
    /// The --svg file, created before anything is attached: an unwritable
    /// path must fail at once, not after a long run.
    pub fn create_svg(&self) -> anyhow::Result<Option<File>> {
        self.svg
            .as_ref()
            .map(|p| File::create(p).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display())))
            .transpose()
    }
}

impl StackArgs {
    /// The --pprof file, created before anything is attached; a path that
    /// cannot be written fails at once, not after a long run.
    pub fn create_pprof(&self) -> anyhow::Result<Option<File>> {
        self.pprof
            .as_ref()
            .map(|p| File::create(p).map_err(|e| anyhow::anyhow!("--pprof {}: cannot write it: {e}", p.display())))
            .transpose()
    }
}

/// Set to `man`, `bash`, `zsh` or `fish` to make a tool print its man page
/// or completion script instead of running (packaging uses it).
pub const GENERATE_ENV: &str = "KDIAG_GENERATE";

/// Parse the command line; on a usage error print `tool: what is wrong`
/// and exit 2. `--help` and `--version` print as usual and exit 0.
pub fn parse<T: Parser>(tool: &str) -> T {
    if let Some(what) = std::env::var_os(GENERATE_ENV) {
        let mut out = std::io::stdout().lock();
        let res = generate::<T>(tool, &what.to_string_lossy(), &mut out).and_then(|()| out.flush());
        if let Err(e) = res {
            eprintln!("{tool}: {GENERATE_ENV}: {e}");
            std::process::exit(2);
        }
        std::process::exit(0);
    }
    match T::try_parse() {
        Ok(v) => v,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            eprintln!("{tool}: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
    }
}

/// Write the man page (section 8: system administration) or a completion
/// script for `T`.
pub fn generate<T: CommandFactory>(tool: &str, what: &str, out: &mut dyn Write) -> std::io::Result<()> {
    use clap_complete::Shell;
    let mut cmd = T::command();
    let shell = match what {
        "man" => return clap_mangen::Man::new(cmd).section("8").render(out),
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => {
            return Err(std::io::Error::other(format!("unknown output '{other}' (man, bash, zsh, fish)")));
        }
    };
    clap_complete::generate(shell, &mut cmd, tool, out);
    Ok(())
}

/// The first line of a clap error, without its "error: " prefix. When that
/// line ends in a colon ("the following required arguments were not
/// provided:"), what it announces is on the next line and belongs to it.
fn one_line(msg: &str) -> String {
    let mut lines = msg.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or(msg).trim_start_matches("error: ");
    match (first.strip_suffix(':'), lines.next()) {
        (Some(head), Some(next)) => format!("{head}: {next}"),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_colon_announces_stays() {
        let msg = "error: the following required arguments were not provided:\n  --pid <PID>\n\n\
                   Usage: epollwake --pid <PID>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(msg), "the following required arguments were not provided: --pid <PID>");
    }

    /// A stand-in tool with the flags of the real ones.
    #[derive(Parser)]
    #[command(name = "demo", about = "Report things", after_help = "OUTPUT COLUMNS explained here")]
    struct Demo {
        /// Threshold in ms.
        #[arg(short = 't')]
        threshold: Option<u64>,
    }

    fn render(what: &str) -> String {
        let mut out = Vec::new();
        generate::<Demo>("demo", what, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn man_page_carries_flags_and_column_help() {
        let man = render("man");
        assert!(man.starts_with(".ie \\n(.g .ds Aq"), "{}", &man[..60]);
        assert!(man.contains(".TH demo 8"), "{man}");
        assert!(man.contains("Threshold in ms") && man.contains("OUTPUT COLUMNS"), "{man}");
    }

    #[test]
    fn completions_for_each_shell() {
        assert!(render("bash").contains("complete -F _demo"));
        assert!(render("zsh").starts_with("#compdef demo"));
        assert!(render("fish").contains("complete -c demo"));
        let mut out = Vec::new();
        assert!(generate::<Demo>("demo", "tcsh", &mut out).is_err());
    }

    #[test]
    fn keeps_only_what_is_wrong() {
        let msg = "error: invalid value '-5' for '--threshold <MS>': threshold must be at least 1 ms\n\n\
                   For more information, try '--help'.\n";
        assert_eq!(one_line(msg), "invalid value '-5' for '--threshold <MS>': threshold must be at least 1 ms");
    }
}

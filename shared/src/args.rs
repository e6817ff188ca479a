//! Command-line conventions every tool shares: errors are one line on
//! stderr and exit code 2, so a script or an ops engineer at 3 a.m. sees
//! what is wrong without scrolling past usage text.

use clap::error::ErrorKind;
use clap::Parser;

/// Parse the command line; on a usage error print `tool: what is wrong`
/// and exit 2. `--help` and `--version` print as usual and exit 0.
pub fn parse<T: Parser>(tool: &str) -> T {
    match T::try_parse() {
        Ok(v) => v,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            eprintln!("{tool}: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
    }
}

/// The first line of a clap error, without its "error: " prefix.
fn one_line(msg: &str) -> String {
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg);
    first.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_is_wrong() {
        let msg = "error: invalid value '-5' for '--threshold <MS>': threshold must be at least 1 ms\n\n\
                   For more information, try '--help'.\n";
        assert_eq!(
            one_line(msg),
            "invalid value '-5' for '--threshold <MS>': threshold must be at least 1 ms"
        );
    }
}

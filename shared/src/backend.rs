//! The backend ladder: a tool lists the attach mechanisms it can use, best
//! first; the first one this kernel really accepts wins, unless the user
//! forced one with `--backend`. The choice and the reasons for passing over
//! better rungs go into the tool's banner, so a report from the field says
//! how it was collected.

use std::fmt;

/// An attach mechanism, from the most capable to the most widely available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    KprobeMulti,
    Fentry,
    Kprobe,
    TpBtf,
    RawTp,
    Tracepoint,
    /// The ftrace function tracer (or event tracer) in a private tracefs
    /// instance: no BPF at all, so it also serves kernels without it.
    Ftrace,
    PerfHw,
    PerfSw,
}

impl Mechanism {
    pub const ALL: [Mechanism; 9] = [
        Mechanism::KprobeMulti,
        Mechanism::Fentry,
        Mechanism::Kprobe,
        Mechanism::TpBtf,
        Mechanism::RawTp,
        Mechanism::Tracepoint,
        Mechanism::Ftrace,
        Mechanism::PerfHw,
        Mechanism::PerfSw,
    ];

    /// The name `--backend` takes and the banner prints.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::KprobeMulti => "kprobe-multi",
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::RawTp => "raw_tp",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::Ftrace => "ftrace",
            Mechanism::PerfHw => "hw",
            Mechanism::PerfSw => "sw",
        }
    }

    /// A few words for people who do not know the kernel's names.
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::KprobeMulti => "multi-function kprobes",
            Mechanism::Fentry => "BPF trampolines",
            Mechanism::Kprobe => "kprobes",
            Mechanism::TpBtf => "BTF-typed raw tracepoints",
            Mechanism::RawTp => "raw tracepoints",
            Mechanism::Tracepoint => "classic tracepoints",
            Mechanism::Ftrace => "ftrace in a tracefs instance, no BPF",
            Mechanism::PerfHw => "hardware cycles NMI",
            Mechanism::PerfSw => "software cpu-clock",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Mechanism::ALL.into_iter().find(|m| m.name().replace('_', "-") == n).or(match n.as_str() {
            "kprobe.multi" | "kprobemulti" => Some(Mechanism::KprobeMulti),
            "fexit" => Some(Mechanism::Fentry),
            "tp" => Some(Mechanism::Tracepoint),
            "perf-hw" => Some(Mechanism::PerfHw),
            "perf-sw" => Some(Mechanism::PerfSw),
            _ => None,
        })
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse a `--backend` value against the mechanisms a tool supports.
pub fn parse_backend(name: &str, ladder: &[Mechanism]) -> Result<Mechanism, String> {
    let names = ladder.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ");
    match Mechanism::parse(name) {
        Some(m) if ladder.contains(&m) => Ok(m),
        _ => Err(format!("unknown backend '{name}' (this tool supports: {names})")),
    }
}

/// Why a probe did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// This kernel lacks the mechanism: try the next rung.
    Unavailable(String),
    /// Something the user must fix (privileges...): stop here.
    Fatal(String),
}

/// The mechanism in use and the rungs passed over on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mechanism: Mechanism,
    pub forced: bool,
    pub passed_over: Vec<(Mechanism, String)>,
}

impl Choice {
    /// One line for the banner: "backend sw (software cpu-clock); hw: ...".
    pub fn explain(&self) -> String {
        let mut s = format!("backend {} ({})", self.mechanism, self.mechanism.describe());
        if self.forced {
            s.push_str(", forced by --backend");
        }
        for (m, why) in &self.passed_over {
            s.push_str(&format!("; {m} unavailable: {why}"));
        }
        s
    }
}

/// Walk `ladder` and return the first mechanism `probe` accepts. With
/// `forced`, only that one is probed and its failure is an error.
pub fn choose<F>(ladder: &[Mechanism], forced: Option<Mechanism>, mut probe: F) -> Result<Choice, String>
where
    F: FnMut(Mechanism) -> Result<(), ProbeError>,
{
    if let Some(m) = forced {
        return match probe(m) {
            Ok(()) => Ok(Choice { mechanism: m, forced: true, passed_over: vec![] }),
            Err(ProbeError::Unavailable(why)) => Err(format!("backend {m} is not usable on this kernel: {why}")),
            Err(ProbeError::Fatal(why)) => Err(why),
        };
    }
    let mut passed_over = Vec::new();
    for &m in ladder {
        match probe(m) {
            Ok(()) => return Ok(Choice { mechanism: m, forced: false, passed_over }),
            Err(ProbeError::Unavailable(why)) => passed_over.push((m, why)),
            Err(ProbeError::Fatal(why)) => return Err(why),
        }
    }
    let tried = passed_over.iter().map(|(m, why)| format!("{m}: {why}")).collect::<Vec<_>>().join("; ");
    Err(format!("no usable backend on this kernel ({tried})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mechanism::*;

    const LADDER: [Mechanism; 4] = [Fentry, Kprobe, TpBtf, Tracepoint];

    fn host_like(m: Mechanism) -> Result<(), ProbeError> {
        match m {
            Fentry => Err(ProbeError::Unavailable("EPERM at load".into())),
            Kprobe => Err(ProbeError::Unavailable("ENOENT at attach".into())),
            _ => Ok(()),
        }
    }

    #[test]
    fn first_working_rung_wins_and_the_rest_are_explained() {
        let c = choose(&LADDER, None, host_like).unwrap();
        assert_eq!(c.mechanism, TpBtf);
        assert_eq!(
            c.explain(),
            "backend tp_btf (BTF-typed raw tracepoints); fentry unavailable: EPERM at load; \
             kprobe unavailable: ENOENT at attach"
        );
    }

    #[test]
    fn probing_stops_at_the_winner() {
        let mut probed = vec![];
        choose(&LADDER, None, |m| {
            probed.push(m);
            Ok(())
        })
        .unwrap();
        assert_eq!(probed, vec![Fentry]);
    }

    #[test]
    fn forced_backend_is_probed_alone_and_its_failure_is_an_error() {
        let e = choose(&LADDER, Some(Fentry), host_like).unwrap_err();
        assert_eq!(e, "backend fentry is not usable on this kernel: EPERM at load");
        let c = choose(&LADDER, Some(Tracepoint), host_like).unwrap();
        assert!(c.forced && c.passed_over.is_empty());
        assert!(c.explain().contains("forced by --backend"));
    }

    #[test]
    fn fatal_probe_stops_the_ladder() {
        let e = choose(&LADDER, None, |_| Err(ProbeError::Fatal("need root".into()))).unwrap_err();
        assert_eq!(e, "need root");
    }

    #[test]
    fn nothing_works() {
        let e = choose(&[Fentry, Kprobe], None, host_like).unwrap_err();
        assert!(e.starts_with("no usable backend") && e.contains("fentry: EPERM"), "{e}");
    }

    #[test]
    fn backend_names() {
        assert_eq!(parse_backend("hw", &[PerfHw, PerfSw]), Ok(PerfHw));
        assert_eq!(parse_backend("SW", &[PerfHw, PerfSw]), Ok(PerfSw));
        assert_eq!(parse_backend("kprobe.multi", &[KprobeMulti]), Ok(KprobeMulti));
        assert_eq!(parse_backend("tp-btf", &LADDER), Ok(TpBtf));
        assert_eq!(
            parse_backend("fentry", &[PerfHw, PerfSw]).unwrap_err(),
            "unknown backend 'fentry' (this tool supports: hw, sw)"
        );
        assert!(parse_backend("bogus", &LADDER).is_err());
    }
}

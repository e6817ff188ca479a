//! Each tool's backend choice on a kernel that has kprobes and fentry: by
//! default it must take the best rung this kernel offers, forced it must
//! take the rung asked for, and either way its banner must say which. The
//! host only ever sees the lower rungs, so the kprobe and fentry rungs are
//! forced here.

use crate::{Ctx, Reporter};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Tool {
    name: &'static str,
    /// The tool's ladder, best first, as its --help lists it.
    ladder: &'static [&'static str],
    /// A short run that needs nothing else in the guest.
    args: &'static [&'static str],
}

const TOOLS: &[Tool] = &[
    Tool { name: "epollwake", ladder: &["fentry", "kprobe", "tracepoint"], args: &["-p", "1", "1"] },
    Tool { name: "offwaketime", ladder: &["tp_btf", "raw_tp", "tracepoint", "kprobe"], args: &["1"] },
];

/// Rungs the host cannot exercise, so each is forced once here.
const GUEST_ONLY: &[&str] = &["kprobe-multi", "fentry", "kprobe"];

fn check(rep: &mut Reporter, name: &str, tool: &Tool, forced: Option<&str>, want: &str) {
    let mut cmd = Command::new(format!("/bin/{}", tool.name));
    if let Some(b) = forced {
        cmd.args(["--backend", b]);
    }
    let t = Instant::now();
    let out = match cmd.args(tool.args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => return rep.fail(name, format!("cannot run /bin/{}: {e}", tool.name)),
    };
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let banner = stderr.lines().find(|l| l.contains(" backend ")).unwrap_or("").to_string();
    // Choice::explain: "backend fentry (BPF trampolines)...".
    let says = banner.contains(&format!("backend {want} ("));
    let detail = format!("{} in {secs:.1} s; banner: {banner}", out.status);
    if out.status.success() && says {
        rep.pass(name, detail)
    } else {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        rep.fail(name, format!("wanted backend {want}; {detail}; stderr tail: {}", tail.join(" | ")))
    }
}

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    let works = |m: &str| ctx.expect.iter().any(|e| e == m);
    for tool in TOOLS {
        let best = tool.ladder.iter().find(|m| works(m));
        match best {
            Some(best) => check(rep, &format!("backend.{}", tool.name), tool, None, best),
            None => rep.fail(&format!("backend.{}", tool.name), "no rung of its ladder is expected to work here"),
        }
        for rung in tool.ladder.iter().filter(|m| works(m) && GUEST_ONLY.contains(m) && Some(*m) != best) {
            check(rep, &format!("backend.{}.{rung}", tool.name), tool, Some(rung), rung);
        }
    }
}

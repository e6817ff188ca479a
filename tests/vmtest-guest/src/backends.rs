//! Each tool's backend choice on a kernel that has kprobes and fentry: by
//! default it must take the best rung this kernel offers, forced it must
//! take the rung asked for, and either way its banner must say which. The
//! host only ever sees the lower rungs, so the kprobe and fentry rungs are
//! forced here.

use crate::{Ctx, Reporter};
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

struct Tool {
    /// The test's name; the binary is its first word.
    name: &'static str,
    /// The tool's ladder, best first, as its --help lists it.
    ladder: &'static [&'static str],
    /// A short run that needs nothing else in the guest.
    args: &'static [&'static str],
}

const TOOLS: &[Tool] = &[
    Tool { name: "epollwake", ladder: &["fentry", "kprobe", "tp_btf", "raw_tp"], args: &["-p", "1", "1"] },
    Tool { name: "offwaketime", ladder: &["tp_btf", "raw_tp", "tracepoint", "kprobe"], args: &["1"] },
    // funcstack has one ladder for a single function and one for a glob.
    Tool { name: "funcstack", ladder: &["fentry", "kprobe", "ftrace"], args: &["vfs_read", "1"] },
    Tool { name: "funcstack-glob", ladder: &["kprobe-multi", "kprobe", "ftrace"], args: &["vfs_read*", "1"] },
];

/// Rungs the host cannot exercise (no kprobes, no fentry, a function
/// tracer it may not use), so each is forced once here.
const FORCED: &[&str] = &["kprobe-multi", "fentry", "kprobe", "ftrace"];

/// Every run asks for 1 s; one still going after this has ignored its
/// duration and is killed (and fails).
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn check(rep: &mut Reporter, name: &str, tool: &Tool, forced: Option<&str>, want: &str) {
    let bin = tool.name.split('-').next().unwrap_or(tool.name);
    let mut cmd = Command::new(format!("/bin/{bin}"));
    if let Some(b) = forced {
        cmd.args(["--backend", b]);
    }
    let t = Instant::now();
    // Only the banner on stderr matters; stdout could be large.
    let spawned = cmd.args(tool.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return rep.fail(name, format!("cannot run /bin/{bin}: {e}")),
    };
    let mut err_pipe = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if t.elapsed() > RUN_LIMIT => {
                killed = true;
                let _ = child.kill();
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e),
        }
    };
    let secs = t.elapsed().as_secs_f64();
    let stderr = reader.join().unwrap_or_default();
    let banner = stderr.lines().find(|l| l.contains(" backend ")).unwrap_or("").to_string();
    // Choice::explain: "backend fentry (BPF trampolines)...".
    let says = banner.contains(&format!("backend {want} ("));
    let how = match &status {
        _ if killed => format!("still running after {} s, killed", RUN_LIMIT.as_secs()),
        Ok(st) => st.to_string(),
        Err(e) => format!("wait: {e}"),
    };
    let detail = format!("{how} in {secs:.1} s; banner: {banner}");
    if matches!(&status, Ok(st) if st.success()) && !killed && says {
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
        for rung in tool.ladder.iter().filter(|m| works(m) && FORCED.contains(m) && Some(*m) != best) {
            check(rep, &format!("backend.{}.{rung}", tool.name), tool, Some(rung), rung);
        }
    }
}

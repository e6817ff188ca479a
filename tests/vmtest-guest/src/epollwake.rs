//! epollwake's kprobe and fentry rungs, held to the very checks the host
//! holds the tracepoint rung to: the same epoll server and the same
//! `verify` (tools/epollwake/tests/scenario), over IPv4 and IPv6.

#[path = "../../../tools/epollwake/tests/scenario/mod.rs"]
mod scenario;

use crate::tool::run_tool;
use crate::{Ctx, Reporter};
use scenario::{verify, Server};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// The guest boots with loopback down; up, it also gets ::1.
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: a plain socket for the ioctls; ifreq is zeroed and given a
    // NUL-terminated name shorter than IFNAMSIZ.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr);
        }
        let e = std::io::Error::last_os_error();
        libc::close(s);
        if r != 0 {
            return Err(format!("bringing lo up: {e}"));
        }
    }
    Ok(())
}

pub fn case(backend: &str, bind: &str, family: &str, local_ip: &str) -> Result<String, String> {
    let server = Server::start(bind);
    let pid = std::process::id().to_string();
    let mut args: Vec<String> = vec!["-p".into(), pid, "--json".into(), "--backend".into(), backend.into()];
    args.extend(server.tid_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (run, client) = run_tool("/bin/epollwake", &argv, true, Duration::from_secs(30), || server.client_session())?;
    if !run.ok() {
        return Err(format!("epollwake {}: {}", argv.join(" "), run.why()));
    }
    let banner = run.banner();
    if !banner.contains(&format!("backend {backend}")) || !banner.contains("2 thread(s) already in epoll_wait") {
        return Err(format!("banner: {banner}"));
    }
    let account = verify(&run.json(), &run.stdout.join("\n"), &server, client, family, local_ip, backend);
    Ok(format!("{account}; {:.1} s", run.secs))
}

pub fn run(_: &Ctx, rep: &mut Reporter) {
    if let Err(e) = loopback_up() {
        return rep.fail("epollwake", e);
    }
    for backend in ["kprobe", "fentry"] {
        for (bind, family, ip) in [("127.0.0.1:0", "ipv4", "127.0.0.1"), ("[::1]:0", "ipv6", "::1")] {
            let name = format!("epollwake.{backend}-{family}");
            match catch_unwind(AssertUnwindSafe(|| case(backend, bind, family, ip))) {
                Ok(Ok(detail)) => rep.pass(&name, detail),
                Ok(Err(e)) => rep.fail(&name, e),
                Err(panic) => {
                    // The checks print all of epollwake's output: keep the
                    // console line readable.
                    let msg: String = crate::panic_message(panic.as_ref()).chars().take(4000).collect();
                    rep.fail(&name, format!("panicked: {msg}"));
                }
            }
        }
    }
}

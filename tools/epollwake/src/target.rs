//! The traced process, as /proc shows it: its name, whether it still
//! lives, and which of its threads are already inside epoll_wait when the
//! run starts (those would otherwise go unseen until they next enter).

use crate::bpf::types::wait_state;
use libbpf_rs::MapCore;

/// x86-64 syscall numbers of epoll_wait, epoll_pwait, epoll_pwait2, in the
/// order of enum ew_syscall.
const EPOLL_WAITS: [u64; 3] = [232, 281, 441];

pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" closing the command name.
        Ok(s) => {
            s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|st| st != "Z" && st != "X")
        }
        Err(_) => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub tid: u32,
    pub syscall: u32,
    pub epfd: i32,
    pub events: u64,
    pub maxevents: i32,
}

/// Parse /proc/TID/syscall: "NR ARG0 .. ARG5 SP PC" while in a syscall.
pub fn parse_syscall(tid: u32, text: &str) -> Option<Waiting> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let nr: u64 = f.first()?.parse().ok()?;
    let sc = EPOLL_WAITS.iter().position(|&n| n == nr)? as u32;
    let arg = |i: usize| f.get(1 + i).and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    Some(Waiting { tid, syscall: sc, epfd: arg(0)? as i32, events: arg(1)?, maxevents: arg(2)? as i32 })
}

/// Threads of `pid` blocked in an epoll wait right now.
pub fn waiting_threads(pid: u32) -> Vec<Waiting> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("syscall")).ok()?;
            parse_syscall(tid, &text)
        })
        .collect()
}

kdiag_shared::plain_data!(wait_state);

/// The `wait_state` the BPF side keeps per waiting thread.
pub fn seed_waiting(map: &libbpf_rs::MapMut<'_>, w: &Waiting) {
    let st =
        wait_state { events: w.events, epfd: w.epfd, maxevents: w.maxevents, syscall: w.syscall, ..Default::default() };
    // NOEXIST: a thread that entered again since /proc was read is already
    // recorded, more exactly.
    let _ = map.update(&w.tid.to_ne_bytes(), kdiag_shared::maps::bytes_of(&st), libbpf_rs::MapFlags::NO_EXIST);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        let w = parse_syscall(7, "232 0x5 0x7ffd1000 0x40 0xffffffff 0x0 0x0 0x7ffd0ff8 0x7f12345678").unwrap();
        assert_eq!(w, Waiting { tid: 7, syscall: 0, epfd: 5, events: 0x7ffd1000, maxevents: 64 });
        assert_eq!(parse_syscall(7, "441 0x3 0x10 0x1 0x0 0x0 0x8 0x1 0x2").unwrap().syscall, 2);
        assert_eq!(parse_syscall(7, "0 0x3 0x10 0x1 0x0 0x0 0x8 0x1 0x2"), None);
        assert_eq!(parse_syscall(7, "running"), None);
    }

    #[test]
    fn this_process_lives() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}

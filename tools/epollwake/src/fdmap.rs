//! Which fd of the target a socket is, as each epoll instance knows it.
//! The kernel's epitem holds (file, fd); without kprobes we only see the
//! socket, so we keep the target's registrations: a snapshot of
//! /proc/PID/fdinfo/EPFD at start ("tfd: 5 events: 19 data: 5 ... ino:1a2b"),
//! then every successful epoll_ctl the BPF side reports, and a fresh read of
//! fdinfo when a socket is not found (the fd was added before the snapshot
//! was taken, or an event was lost).

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    pub ino: u64,
}

/// Parse the epoll part of an fdinfo file.
pub fn parse_fdinfo(text: &str) -> Vec<Reg> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tfd:") else { continue };
        let toks: Vec<&str> = rest.split_whitespace().collect();
        let field = |key: &str| {
            toks.iter().position(|t| t.trim_end_matches(':') == key && t.ends_with(':')).and_then(|i| toks.get(i + 1))
        };
        let (Some(fd), Some(ev), Some(data)) = (toks.first(), field("events"), field("data")) else { continue };
        let ino = toks.iter().find_map(|t| t.strip_prefix("ino:")).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Ok(fd), Ok(events), Ok(data)) =
            (fd.parse::<i32>(), u32::from_str_radix(ev, 16), u64::from_str_radix(data, 16))
        else {
            continue;
        };
        out.push(Reg { fd, events, data, ino: ino.unwrap_or(0) });
    }
    out
}

pub struct FdMap {
    pid: u32,
    by_epfd: HashMap<i32, Vec<Reg>>,
}

impl FdMap {
    pub fn new(pid: u32) -> Self {
        FdMap { pid, by_epfd: HashMap::new() }
    }

    /// Read every epoll instance the process has open now.
    pub fn snapshot(&mut self) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) else { return };
        for e in dir.flatten() {
            let is_epoll = std::fs::read_link(e.path()).map(|t| t.to_string_lossy().contains("eventpoll"));
            if let (Ok(true), Ok(fd)) = (is_epoll, e.file_name().to_string_lossy().parse::<i32>()) {
                self.reread(fd);
            }
        }
    }

    fn reread(&mut self, epfd: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/fdinfo/{epfd}", self.pid)) {
            Ok(t) => {
                self.by_epfd.insert(epfd, parse_fdinfo(&t));
                true
            }
            Err(_) => false,
        }
    }

    /// epoll_ctl ADD or MOD succeeded.
    pub fn set(&mut self, epfd: i32, reg: Reg) {
        let regs = self.by_epfd.entry(epfd).or_default();
        regs.retain(|r| r.fd != reg.fd);
        regs.push(reg);
    }

    /// epoll_ctl DEL succeeded.
    pub fn remove(&mut self, epfd: i32, fd: i32) {
        if let Some(regs) = self.by_epfd.get_mut(&epfd) {
            regs.retain(|r| r.fd != fd);
        }
    }

    fn find(&self, epfd: i32, f: impl Fn(&Reg) -> bool) -> Option<Reg> {
        self.by_epfd.get(&epfd)?.iter().filter(|r| f(r)).min_by_key(|r| r.fd).copied()
    }

    /// The registration of the socket with inode `ino` in `epfd`.
    pub fn by_ino(&mut self, epfd: i32, ino: u64) -> Option<Reg> {
        if ino == 0 {
            return None;
        }
        self.find(epfd, |r| r.ino == ino).or_else(|| {
            self.reread(epfd);
            self.find(epfd, |r| r.ino == ino)
        })
    }

    /// The registration whose data is `data` (what epoll_wait hands back).
    pub fn by_data(&self, epfd: i32, data: u64) -> Option<Reg> {
        self.find(epfd, |r| r.data == data)
    }

    /// The registration of fd in epfd (the kprobe path knows the fd).
    pub fn by_fd(&self, epfd: i32, fd: i32) -> Option<Reg> {
        self.find(epfd, |r| r.fd == fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of fs/eventpoll.c's ep_show_fdinfo.
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
        tfd:        5 events:       19 data:                5  pos:0 ino:2a3f sdev:8\n\
        tfd:        9 events: 80002001 data:     7f00dead0001  pos:0 ino:2a40 sdev:8\n";

    #[test]
    fn parses_ep_show_fdinfo() {
        let r = parse_fdinfo(FDINFO);
        assert_eq!(
            r,
            vec![
                Reg { fd: 5, events: 0x19, data: 5, ino: 0x2a3f },
                Reg { fd: 9, events: 0x8000_2001, data: 0x7f00_dead_0001, ino: 0x2a40 },
            ]
        );
    }

    #[test]
    fn ctl_updates_and_lookups() {
        let mut m = FdMap::new(u32::MAX);
        m.by_epfd.insert(3, parse_fdinfo(FDINFO));
        assert_eq!(m.by_ino(3, 0x2a40).unwrap().fd, 9);
        assert_eq!(m.by_data(3, 5).unwrap().fd, 5);
        m.set(3, Reg { fd: 12, events: 1, data: 12, ino: 0x99 });
        assert_eq!(m.by_ino(3, 0x99).unwrap().fd, 12);
        m.set(3, Reg { fd: 12, events: 5, data: 12, ino: 0x99 });
        assert_eq!(m.by_fd(3, 12).unwrap().events, 5);
        m.remove(3, 12);
        assert_eq!(m.by_ino(3, 0x99), None);
        assert_eq!(m.by_ino(3, 0), None);
    }
}

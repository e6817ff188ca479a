//! Raw events from the BPF side (epollwake.h), read out of the transport's
//! bytes by their leading `kind`.

use crate::bpf::types::{ew_fd_event, ew_return, ew_sock, ew_uprobe, ew_wake};
use crate::socket::RawSock;
use kdiag_shared::maps::decode as read;

pub const EW_WAKE: u32 = 1;
pub const EW_RETURN: u32 = 2;
pub const EW_RESLEEP: u32 = 3;
pub const EW_ACCEPT: u32 = 4;
pub const EW_CLOSE: u32 = 5;
pub const EW_CTL: u32 = 6;
pub const EW_UPROBE: u32 = 7;

pub const SRC_NONE: u32 = 0;

pub enum Event {
    Wake(Box<ew_wake>),
    Return(Box<ew_return>),
    Resleep(Box<ew_return>),
    Accept(ew_fd_event),
    Close(ew_fd_event),
    Ctl(ew_fd_event),
    Uprobe(ew_uprobe),
}

kdiag_shared::plain_data!(ew_wake, ew_return, ew_fd_event, ew_uprobe);

impl Event {
    pub fn decode(data: &[u8]) -> Option<Event> {
        let kind = u32::from_ne_bytes(data.get(..4)?.try_into().ok()?);
        Some(match kind {
            EW_WAKE => Event::Wake(Box::new(read(data)?)),
            EW_RETURN => Event::Return(Box::new(read(data)?)),
            EW_RESLEEP => Event::Resleep(Box::new(read(data)?)),
            EW_ACCEPT => Event::Accept(read(data)?),
            EW_CLOSE => Event::Close(read(data)?),
            EW_CTL => Event::Ctl(read(data)?),
            EW_UPROBE => Event::Uprobe(read(data)?),
            _ => return None,
        })
    }
}

pub fn raw_sock(s: &ew_sock) -> RawSock {
    RawSock {
        skaddr: s.skaddr,
        ino: s.ino,
        family: s.family,
        protocol: s.protocol,
        lport: s.lport,
        rport: s.rport,
        state: s.state,
        laddr: s.laddr,
        raddr: s.raddr,
    }
}

pub fn comm(c: &[i8]) -> String {
    let b: Vec<u8> = c.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

pub fn syscall_name(sc: u32) -> &'static str {
    match sc {
        0 => "epoll_wait",
        1 => "epoll_pwait",
        _ => "epoll_pwait2",
    }
}

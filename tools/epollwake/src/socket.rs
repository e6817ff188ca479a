//! Sockets as the BPF side saw them (`struct ew_sock`): family, protocol,
//! addresses, ports and TCP state, for people and for JSON.

use serde::Serialize;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

/// TCP states of include/net/tcp_states.h. They are user-visible ABI (the
/// sock:inet_sock_set_state tracepoint prints them by these numbers and
/// /proc/net/tcp shows them) and have not changed since 2.6.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// A socket, decoded. Addresses are strings in JSON so that IPv4 and IPv6
/// read the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub family: &'static str,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    pub lport: u16,
    pub rport: u16,
    /// TCP state name; for other protocols the raw state number.
    pub state: String,
    /// Inode of the socket file, as in /proc/PID/fd ("socket:[INO]").
    pub ino: u64,
}

/// The raw fields of `struct ew_sock`, independent of the skeleton's type
/// so the decoding can be tested.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawSock {
    pub skaddr: u64,
    pub ino: u64,
    pub family: u16,
    pub protocol: u16,
    pub lport: u16,
    pub rport: u16,
    pub state: u8,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

fn addr(family: u16, raw: &[u8; 16]) -> Option<String> {
    match family {
        AF_INET => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).to_string()),
        AF_INET6 => Some(Ipv6Addr::from(*raw).to_string()),
        _ => None,
    }
}

impl Socket {
    /// None when the BPF side found no socket.
    pub fn decode(r: &RawSock) -> Option<Socket> {
        if r.skaddr == 0 {
            return None;
        }
        let family = match r.family {
            AF_INET => "ipv4",
            AF_INET6 => "ipv6",
            AF_UNIX => "unix",
            _ => "other",
        };
        let protocol = match r.protocol {
            IPPROTO_TCP => "tcp".to_string(),
            IPPROTO_UDP => "udp".to_string(),
            0 if r.family == AF_UNIX => "unix".to_string(),
            p => p.to_string(),
        };
        let state = if r.protocol == IPPROTO_TCP { tcp_state_name(r.state).to_string() } else { r.state.to_string() };
        Some(Socket {
            family,
            protocol,
            local: addr(r.family, &r.laddr),
            remote: addr(r.family, &r.raddr),
            lport: r.lport,
            rport: r.rport,
            state,
            ino: r.ino,
        })
    }

    /// `127.0.0.1:8080` or `[::1]:8080`.
    fn endpoint(&self, a: &Option<String>, port: u16) -> String {
        match a {
            Some(a) if self.family == "ipv6" => format!("[{a}]:{port}"),
            Some(a) => format!("{a}:{port}"),
            None => "-".to_string(),
        }
    }

    pub fn local_endpoint(&self) -> String {
        self.endpoint(&self.local, self.lport)
    }

    pub fn remote_endpoint(&self) -> String {
        self.endpoint(&self.remote, self.rport)
    }

    /// What identifies the connection across state changes: the summary's
    /// per-socket key.
    pub fn key(&self) -> String {
        if self.local.is_none() {
            return format!("{} socket:[{}]", self.protocol.to_uppercase(), self.ino);
        }
        if self.rport == 0 {
            return format!("{} {} (listening or unconnected)", self.protocol.to_uppercase(), self.local_endpoint());
        }
        format!("{} {} {}", self.protocol.to_uppercase(), self.local_endpoint(), self.remote_endpoint())
    }

    pub fn has_port(&self, port: u16) -> bool {
        self.local.is_some() && (self.lport == port || self.rport == port)
    }
}

impl fmt::Display for Socket {
    /// `TCP 127.0.0.1:8080 <- 127.0.0.1:45678 ESTABLISHED`, the remote side
    /// left out for a listener.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local.is_none() {
            return write!(f, "{} socket:[{}]", self.protocol.to_uppercase(), self.ino);
        }
        write!(f, "{} {}", self.protocol.to_uppercase(), self.local_endpoint())?;
        if self.rport != 0 {
            write!(f, " <- {}", self.remote_endpoint())?;
        }
        write!(f, " {}", self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(family: u16, l: &[u8], r: &[u8]) -> RawSock {
        let mut s = RawSock { skaddr: 0xffff_8880_0000_1000, ino: 4242, family, protocol: 6, ..Default::default() };
        s.laddr[..l.len()].copy_from_slice(l);
        s.raddr[..r.len()].copy_from_slice(r);
        s
    }

    #[test]
    fn ipv4_established() {
        let mut r = raw(AF_INET, &[127, 0, 0, 1], &[10, 1, 2, 3]);
        r.lport = 15006;
        r.rport = 38590;
        r.state = 1;
        let s = Socket::decode(&r).unwrap();
        assert_eq!(s.to_string(), "TCP 127.0.0.1:15006 <- 10.1.2.3:38590 ESTABLISHED");
        assert_eq!(s.key(), "TCP 127.0.0.1:15006 10.1.2.3:38590");
        assert!(s.has_port(38590) && s.has_port(15006) && !s.has_port(80));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["local"], "127.0.0.1");
        assert_eq!(v["state"], "ESTABLISHED");
        assert_eq!(v["ino"], 4242);
    }

    #[test]
    fn ipv6_listener_has_no_remote_side() {
        let mut l = [0u8; 16];
        l[15] = 1;
        let mut r = raw(AF_INET6, &l, &[0; 16]);
        r.lport = 8080;
        r.state = 10;
        let s = Socket::decode(&r).unwrap();
        assert_eq!(s.to_string(), "TCP [::1]:8080 LISTEN");
        assert_eq!(s.local.as_deref(), Some("::1"));
    }

    #[test]
    fn no_socket_and_unix() {
        assert_eq!(Socket::decode(&RawSock::default()), None);
        let r = RawSock { skaddr: 1, ino: 77, family: AF_UNIX, protocol: 0, ..Default::default() };
        let s = Socket::decode(&r).unwrap();
        assert_eq!(s.to_string(), "UNIX socket:[77]");
        assert!(!s.has_port(0));
    }

    #[test]
    fn tcp_states() {
        assert_eq!(tcp_state_name(8), "CLOSE_WAIT");
        assert_eq!(tcp_state_name(12), "NEW_SYN_RECV");
        assert_eq!(tcp_state_name(99), "UNKNOWN");
    }
}

//! The summary's sockets, grouped the way an operator thinks of a server:
//! per listening socket, with the connections accepted from it counted
//! under it; and per service endpoint and peer address, so that the
//! thousands of connections a busy server sees in seconds from a few
//! clients make a few rows. Every socket stays in the JSON summary.

use crate::socket::Socket;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The text tables show this many rows, then how many more there are.
pub const TOP: usize = 20;

/// One socket (or, for wake-ups without one, one callback or cause).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SocketCount {
    pub key: String,
    pub wakeups: u64,
    pub wasted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<Socket>,
    /// The listening socket it was accepted from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ListenerCount {
    /// `TCP 127.0.0.1:8080`.
    pub key: String,
    /// On the listening socket and on its connections.
    pub wakeups: u64,
    pub wasted: u64,
    /// On the listening socket itself: new connections to accept.
    pub listener_wakeups: u64,
    /// Connections accepted from it that woke the process or were accepted
    /// during the run.
    pub connections: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerCount {
    /// `TCP 127.0.0.1:8080 <- 127.0.0.1` (accepted), `TCP 10.0.0.1 ->
    /// 10.0.0.5:5432` (connected out), a listening socket, or a callback.
    pub key: String,
    pub wakeups: u64,
    pub wasted: u64,
    pub connections: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Outside {
    pub wakeups: u64,
    pub wasted: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Grouped {
    pub per_socket: Vec<SocketCount>,
    pub per_listener: Vec<ListenerCount>,
    /// Wake-ups on nothing under a listening socket: per_listener's rows
    /// and this add up to all wake-ups.
    pub outside_listeners: Outside,
    pub per_endpoint: Vec<PeerCount>,
}

#[derive(Default)]
struct Entry {
    socket: Option<Socket>,
    wakeups: u64,
    wasted: u64,
}

/// What the timeline counts, by socket key.
#[derive(Default)]
pub struct SocketTotals {
    by_key: BTreeMap<String, Entry>,
}

impl SocketTotals {
    pub fn wake(&mut self, key: &str, socket: Option<&Socket>) {
        let e = self.entry(key, socket);
        e.wakeups += 1;
    }

    pub fn wasted(&mut self, key: &str) {
        self.entry(key, None).wasted += 1;
    }

    /// A connection accepted during the run, woken or not.
    pub fn accepted(&mut self, socket: &Socket) {
        self.entry(&socket.key(), Some(socket));
    }

    fn entry(&mut self, key: &str, socket: Option<&Socket>) -> &mut Entry {
        let e = self.by_key.entry(key.to_string()).or_default();
        if e.socket.is_none() {
            e.socket = socket.cloned();
        }
        e
    }

    /// Group, with `listening` the process's listening sockets besides
    /// those seen in wake-ups (a quiet listener still owns connections).
    pub fn group(&self, listening: &[Socket]) -> Grouped {
        let mut listeners: Vec<Socket> =
            self.by_key.values().filter_map(|e| e.socket.clone()).filter(is_listener).collect();
        for l in listening {
            if !listeners.iter().any(|k| k.key() == l.key()) {
                listeners.push(l.clone());
            }
        }
        let mut g = Grouped::default();
        let mut per_listener: BTreeMap<String, (ListenerCount, BTreeSet<String>)> = BTreeMap::new();
        let mut per_endpoint: BTreeMap<String, (PeerCount, HashSet<String>)> = BTreeMap::new();
        for (key, e) in &self.by_key {
            let owner = e.socket.as_ref().and_then(|s| listeners.iter().find(|l| owns(l, s)));
            let listener = owner.map(|l| format!("{} {}", l.protocol.to_uppercase(), l.local_endpoint()));
            let on_listener = e.socket.as_ref().is_some_and(is_listener);
            let under = if on_listener { e.socket.as_ref().map(listener_key) } else { listener.clone() };
            match under {
                Some(lk) => {
                    let (row, conns) = per_listener
                        .entry(lk.clone())
                        .or_insert_with(|| (ListenerCount { key: lk, ..Default::default() }, BTreeSet::new()));
                    row.wakeups += e.wakeups;
                    row.wasted += e.wasted;
                    if on_listener {
                        row.listener_wakeups += e.wakeups;
                    } else {
                        conns.insert(key.clone());
                    }
                }
                None => {
                    g.outside_listeners.wakeups += e.wakeups;
                    g.outside_listeners.wasted += e.wasted;
                }
            }
            let (pk, conn) = match &e.socket {
                Some(s) if on_listener => (format!("{} (listening)", listener_key(s)), false),
                Some(s) if s.rport != 0 && s.local.is_some() => (peer_key(s, owner.is_some()), true),
                _ => (key.clone(), false),
            };
            let (row, conns) = per_endpoint
                .entry(pk.clone())
                .or_insert_with(|| (PeerCount { key: pk, ..Default::default() }, HashSet::new()));
            row.wakeups += e.wakeups;
            row.wasted += e.wasted;
            if conn {
                conns.insert(key.clone());
            }
            g.per_socket.push(SocketCount {
                key: key.clone(),
                wakeups: e.wakeups,
                wasted: e.wasted,
                socket: e.socket.clone(),
                listener: if on_listener { None } else { listener },
            });
        }
        g.per_listener = per_listener
            .into_values()
            .map(|(mut row, conns)| {
                row.connections = conns.len() as u64;
                row
            })
            .collect();
        g.per_endpoint = per_endpoint
            .into_values()
            .map(|(mut row, conns)| {
                row.connections = conns.len() as u64;
                row
            })
            .collect();
        // Most wake-ups first; equal counts by key, so runs compare.
        g.per_socket.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.key.cmp(&b.key)));
        g.per_listener.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.key.cmp(&b.key)));
        g.per_endpoint.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.key.cmp(&b.key)));
        g
    }
}

fn is_listener(s: &Socket) -> bool {
    s.state == "LISTEN"
}

fn listener_key(s: &Socket) -> String {
    format!("{} {}", s.protocol.to_uppercase(), s.local_endpoint())
}

/// Whether connection `c` was accepted from listener `l`: same protocol and
/// port, and the listener bound to its local address or to every address
/// (an IPv6 wildcard also takes IPv4 clients, as ::ffff:a.b.c.d).
fn owns(l: &Socket, c: &Socket) -> bool {
    let wildcard = matches!(l.local.as_deref(), Some("0.0.0.0") | Some("::"));
    !is_listener(c)
        && c.rport != 0
        && l.protocol == c.protocol
        && l.lport == c.lport
        && ((l.local == c.local && l.family == c.family) || (wildcard && (l.family == c.family || l.family == "ipv6")))
}

/// The service side with its port, the other side by address only: an
/// accepted connection's peer port, or a connected one's local port, is
/// ephemeral and would make every connection a row of its own.
fn peer_key(s: &Socket, accepted: bool) -> String {
    let p = s.protocol.to_uppercase();
    let addr = |a: &Option<String>| a.clone().unwrap_or_else(|| "-".into());
    if accepted {
        format!("{p} {} <- {}", s.local_endpoint(), addr(&s.remote))
    } else {
        format!("{p} {} -> {}", addr(&s.local), s.remote_endpoint())
    }
}

/// The listening TCP sockets process `pid` holds now, from
/// /proc/PID/net/tcp{,6} and the socket inodes of its fds.
pub fn listening(pid: u32) -> Vec<Socket> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return vec![] };
    let inodes: HashSet<u64> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|t| parse_proc_net_tcp(&t))
        .filter(|s| is_listener(s) && inodes.contains(&s.ino))
        .collect()
}

/// `/proc/net/tcp` rows: "sl local_address rem_address st ... inode":
/// addresses are the kernel's 32-bit words in hex, in host order.
fn parse_proc_net_tcp(text: &str) -> Vec<Socket> {
    let endpoint = |s: &str| -> Option<(&'static str, String, u16)> {
        let (a, p) = s.split_once(':')?;
        let port = u16::from_str_radix(p, 16).ok()?;
        let words: Vec<u32> =
            (0..a.len() / 8).map(|i| u32::from_str_radix(&a[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        match bytes.len() {
            4 => Some(("ipv4", std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(), port)),
            16 => Some(("ipv6", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string(), port)),
            _ => None,
        }
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (family, local, lport) = endpoint(f.get(1)?)?;
            let (_, remote, rport) = endpoint(f.get(2)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            Some(Socket {
                family,
                protocol: "tcp".into(),
                local: Some(local),
                remote: Some(remote),
                lport,
                rport,
                state: crate::socket::tcp_state_name(state).to_string(),
                ino: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(local: &str, lport: u16, remote: &str, rport: u16, state: &str, ino: u64) -> Socket {
        Socket {
            family: if local.contains(':') { "ipv6" } else { "ipv4" },
            protocol: "tcp".into(),
            local: Some(local.into()),
            remote: Some(remote.into()),
            lport,
            rport,
            state: state.into(),
            ino,
        }
    }

    /// A server's run: its listener, 300 connections from two clients,
    /// an outgoing connection to a database, and timeouts.
    fn server() -> SocketTotals {
        let mut t = SocketTotals::default();
        let l = tcp("127.0.0.1", 8080, "0.0.0.0", 0, "LISTEN", 1);
        for _ in 0..300 {
            t.wake(&l.key(), Some(&l));
        }
        t.wasted(&l.key());
        for i in 0..300u16 {
            let client = if i % 3 == 0 { "10.0.0.7" } else { "10.0.0.8" };
            let c = tcp("127.0.0.1", 8080, client, 40000 + i, "ESTABLISHED", 100 + i as u64);
            t.accepted(&c);
            if i % 2 == 0 {
                t.wake(&c.key(), Some(&c));
            }
        }
        let db = tcp("127.0.0.1", 51000, "10.0.0.9", 5432, "ESTABLISHED", 9);
        for _ in 0..5 {
            t.wake(&db.key(), Some(&db));
        }
        for _ in 0..7 {
            t.wake("timeout", None);
        }
        t
    }

    #[test]
    fn connections_count_under_their_listener() {
        let g = server().group(&[]);
        assert_eq!(g.per_listener.len(), 1);
        let l = &g.per_listener[0];
        assert_eq!(l.key, "TCP 127.0.0.1:8080");
        assert_eq!((l.wakeups, l.wasted, l.listener_wakeups, l.connections), (450, 1, 300, 300));
        assert_eq!((g.outside_listeners.wakeups, g.outside_listeners.wasted), (12, 0));
        let total: u64 = g.per_socket.iter().map(|s| s.wakeups).sum();
        assert_eq!(total, 462);
        assert_eq!(g.per_listener.iter().map(|l| l.wakeups).sum::<u64>() + g.outside_listeners.wakeups, total);
    }

    #[test]
    fn endpoints_by_service_side_and_peer_address() {
        let g = server().group(&[]);
        let rows: Vec<(&str, u64, u64)> =
            g.per_endpoint.iter().map(|r| (r.key.as_str(), r.wakeups, r.connections)).collect();
        assert_eq!(
            rows,
            [
                ("TCP 127.0.0.1:8080 (listening)", 300, 0),
                ("TCP 127.0.0.1:8080 <- 10.0.0.8", 100, 200),
                ("TCP 127.0.0.1:8080 <- 10.0.0.7", 50, 100),
                ("timeout", 7, 0),
                ("TCP 127.0.0.1 -> 10.0.0.9:5432", 5, 1),
            ]
        );
        // JSON keeps every socket, and says which listener each came from.
        assert_eq!(g.per_socket.len(), 1 + 300 + 1 + 1);
        let c = g.per_socket.iter().find(|s| s.key == "TCP 127.0.0.1:8080 10.0.0.7:40000").unwrap();
        assert_eq!(c.listener.as_deref(), Some("TCP 127.0.0.1:8080"));
        assert!(c.socket.is_some());
    }

    #[test]
    fn wildcard_and_quiet_listeners_own_connections() {
        let mut t = SocketTotals::default();
        let v4 = tcp("192.168.1.5", 443, "10.0.0.7", 50000, "ESTABLISHED", 5);
        let mapped = tcp("::ffff:192.168.1.5", 443, "::ffff:10.0.0.7", 50001, "ESTABLISHED", 6);
        t.wake(&v4.key(), Some(&v4));
        t.wake(&mapped.key(), Some(&mapped));
        // No wake-up on the listeners: known only from /proc.
        let g = t.group(&[tcp("0.0.0.0", 443, "0.0.0.0", 0, "LISTEN", 1), tcp("::", 443, "::", 0, "LISTEN", 2)]);
        let rows: Vec<(&str, u64, u64)> =
            g.per_listener.iter().map(|l| (l.key.as_str(), l.wakeups, l.connections)).collect();
        assert_eq!(rows, [("TCP 0.0.0.0:443", 1, 1), ("TCP [::]:443", 1, 1)]);
        assert_eq!(g.outside_listeners.wakeups, 0);
    }

    #[test]
    fn proc_net_tcp_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                    \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
                    \x20  1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1\n";
        let v = parse_proc_net_tcp(text);
        assert_eq!(v[0].to_string(), "TCP 127.0.0.1:8080 LISTEN");
        assert_eq!(v[0].ino, 4242);
        assert_eq!(v[1].to_string(), "TCP 127.0.0.1:8080 <- 127.0.0.1:40000 ESTABLISHED");
        let v6 = "h\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 77 1\n";
        assert_eq!(parse_proc_net_tcp(v6)[0].to_string(), "TCP [::1]:8080 LISTEN");
    }

    /// This process's own listener, as /proc shows it.
    #[test]
    fn listening_sockets_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listening(std::process::id());
        assert!(found.iter().any(|s| s.lport == port && s.local.as_deref() == Some("127.0.0.1")), "{found:?}");
    }
}

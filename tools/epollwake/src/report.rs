//! What epollwake prints: one record per event of the timeline (text or
//! JSON Lines), and the end-of-run summary.

use crate::groups::{ListenerCount, Outside, PeerCount, SocketCount, TOP};
use crate::herd::Wasted;
use crate::socket::Socket;
use crate::waker::Waker;
use kdiag_shared::histogram::Log2Hist;
use kdiag_shared::output::json_time;
use kdiag_shared::symbolize::Frame;
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

pub const HEADER: &str = "TIME            EVENT   THREAD(TID)           DETAILS\n";

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    #[serde(serialize_with = "time_json")]
    pub time: SystemTime,
    /// CLOCK_MONOTONIC ns, to line records up with other tracers.
    pub mono_ns: u64,
    pub tid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub body: Body,
}

fn time_json<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&json_time(*t))
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

fn hex_vec<S: serde::Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|a| format!("{a:#x}")))
}

#[derive(Clone, Debug, Serialize)]
pub struct WakerInfo {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cpu: u32,
    #[serde(flatten)]
    pub how: Waker,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpollEvent {
    #[serde(serialize_with = "hex")]
    pub data: u64,
    /// The fd registered with this data, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    pub events: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Wake {
        epfd: i32,
        waker: WakerInfo,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<Socket>,
        /// The fd of that file in the woken thread's epoll set.
        #[serde(skip_serializing_if = "Option::is_none")]
        fd: Option<i32>,
        /// Its registered mask (epoll_ctl), EPOLLET and friends included.
        #[serde(skip_serializing_if = "Option::is_none")]
        registered: Option<Vec<String>>,
        /// Threads woken by the same event (1 unless a herd).
        woken_by_event: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        herd: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stack: Option<Vec<Frame>>,
        #[serde(skip)]
        group: u64,
    },
    Return {
        syscall: &'static str,
        epfd: i32,
        ret: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        events: Vec<EpollEvent>,
        /// From the wake-up to the return.
        #[serde(skip_serializing_if = "Option::is_none")]
        wake_latency_us: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        wasted: Option<Wasted>,
        #[serde(skip_serializing_if = "Option::is_none")]
        herd: Option<u32>,
        #[serde(skip)]
        group: u64,
    },
    /// Woken, and asleep again inside the same epoll_wait.
    Resleep {
        syscall: &'static str,
        epfd: i32,
        after_us: u64,
        wasted: Wasted,
        #[serde(skip_serializing_if = "Option::is_none")]
        herd: Option<u32>,
        #[serde(skip)]
        group: u64,
    },
    Accept {
        listen_fd: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        fd: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<Socket>,
        #[serde(skip_serializing_if = "Option::is_none")]
        wasted: Option<Wasted>,
        #[serde(skip_serializing_if = "Option::is_none")]
        herd: Option<u32>,
        #[serde(skip)]
        group: u64,
    },
    Close {
        fd: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<Socket>,
    },
    EpollCtl {
        epfd: i32,
        op: &'static str,
        fd: i32,
        events: Vec<String>,
        #[serde(serialize_with = "hex")]
        data: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<Socket>,
    },
    Uprobe {
        symbol: String,
        cpu: u32,
        #[serde(serialize_with = "hex_vec")]
        args: Vec<u64>,
    },
}

/// `14:03:01.123456`, local time.
pub fn clock(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as _;
    // SAFETY: tm is plain data; localtime_r fills it from secs.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!("{:02}:{:02}:{:02}.{:06}", tm.tm_hour, tm.tm_min, tm.tm_sec, d.subsec_micros())
}

fn herd_text(herd: Option<u32>) -> String {
    herd.map(|h| format!(" (herd #{h})")).unwrap_or_default()
}

fn wasted_text(w: Option<Wasted>, herd: Option<u32>) -> String {
    w.map(|w| format!("  WASTED: {}{}", w.text(), herd_text(herd))).unwrap_or_default()
}

/// An argument as a person reads it: small numbers (fds, flags) in
/// decimal, pointers in hex.
fn arg_text(v: u64) -> String {
    if v < 65536 {
        v.to_string()
    } else {
        format!("{v:#x}")
    }
}

impl Record {
    pub fn text(&self) -> String {
        let who = format!("{}({})", self.comm, self.tid);
        let what = match &self.body {
            Body::Wake { epfd, waker, socket, fd, registered, woken_by_event, herd, stack, .. } => {
                let ctx = waker.how.context_text();
                let mut s = if ctx.is_empty() {
                    format!("<- {}({}) on CPU {}", waker.comm, waker.tid, waker.cpu)
                } else {
                    format!("<- {ctx} on CPU {} (interrupted {}({}))", waker.cpu, waker.comm, waker.tid)
                };
                use crate::waker::Cause;
                match waker.how.cause {
                    Cause::Timeout => s.push_str(&format!(": epoll_wait(epfd {epfd}) timed out")),
                    Cause::Signal => s.push_str(": signal"),
                    Cause::Epoll | Cause::Other => {
                        if let Some(v) = &waker.how.via {
                            s.push_str(&format!(" via {v}"));
                        }
                        s.push(':');
                        if let Some(fd) = fd {
                            s.push_str(&format!(" fd {fd}"));
                        }
                        match socket {
                            Some(sock) => s.push_str(&format!(" {sock}")),
                            None if waker.how.cause == Cause::Epoll => s.push_str(" (file not identified)"),
                            None => s.push_str(" not an epoll event"),
                        }
                        if let Some(r) = registered {
                            s.push_str(&format!(" [{}]", r.join("|")));
                        }
                        s.push_str(&format!(" epfd {epfd}"));
                    }
                }
                if let Some(h) = herd {
                    s.push_str(&format!("  HERD #{h}: one event woke {woken_by_event} threads"));
                }
                let mut line = format!("WAKE    {who:<21} {s}");
                for f in stack.iter().flatten() {
                    line.push_str(&format!("\n    <{:#018x}> {}", f.addr, f.label()));
                }
                return format!("{} {line}\n", clock(self.time));
            }
            Body::Return { syscall, epfd, ret, error, events, wake_latency_us, wasted, herd, .. } => {
                let mut s = match error {
                    Some(e) => format!("RETURN  {who:<21} {syscall}(epfd {epfd}) = {e}"),
                    None => format!("RETURN  {who:<21} {syscall}(epfd {epfd}) = {ret}"),
                };
                if let Some(l) = wake_latency_us {
                    s.push_str(&format!(" {l} us after the wake-up"));
                }
                if !events.is_empty() {
                    let evs: Vec<String> = events
                        .iter()
                        .map(|e| {
                            let fd = e.fd.map(|f| format!("fd {f} ")).unwrap_or_default();
                            format!("{fd}data={} {}", arg_text(e.data), e.events.join("|"))
                        })
                        .collect();
                    s.push_str(&format!(": [{}]", evs.join(", ")));
                }
                s.push_str(&wasted_text(*wasted, *herd));
                s
            }
            Body::Resleep { syscall, epfd, after_us, wasted, herd, .. } => format!(
                "RESLEEP {who:<21} woken for nothing: asleep again in {syscall}(epfd {epfd}) {after_us} us later{}",
                wasted_text(Some(*wasted), *herd)
            ),
            Body::Accept { listen_fd, fd, error, socket, wasted, herd, .. } => {
                let mut s = match (fd, error) {
                    (Some(fd), _) => format!("ACCEPT  {who:<21} fd {fd} = accept({listen_fd})"),
                    (None, e) => format!("ACCEPT  {who:<21} accept({listen_fd}) = {}", e.as_deref().unwrap_or("?")),
                };
                if let Some(sock) = socket {
                    s.push_str(&format!(": {sock}"));
                }
                s.push_str(&wasted_text(*wasted, *herd));
                s
            }
            Body::Close { fd, socket } => match socket {
                Some(sock) => format!("CLOSE   {who:<21} fd {fd}: {sock}"),
                None => format!("CLOSE   {who:<21} fd {fd}"),
            },
            Body::EpollCtl { epfd, op, fd, events, data, socket } => {
                let mut s = format!("CTL     {who:<21} epoll_ctl(epfd {epfd}, {op}, fd {fd}");
                if *op != "DEL" {
                    s.push_str(&format!(", {}, data={}", events.join("|"), arg_text(*data)));
                }
                s.push(')');
                if let Some(sock) = socket {
                    s.push_str(&format!(": {sock}"));
                }
                s
            }
            Body::Uprobe { symbol, args, .. } => {
                let a: Vec<String> = args.iter().enumerate().map(|(i, v)| format!("arg{i}={}", arg_text(*v))).collect();
                format!("UPROBE  {who:<21} {symbol} {}", a.join(" "))
            }
        };
        format!("{} {what}\n", clock(self.time))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Count {
    pub key: String,
    pub wakeups: u64,
    pub wasted: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub pid: u32,
    pub backend: String,
    pub duration_s: f64,
    pub stop_reason: String,
    /// epoll_wait calls entered (plus threads found already waiting).
    pub epoll_waits: u64,
    pub wakeups: u64,
    pub herds: u64,
    pub herd_threads: u64,
    pub wasted: u64,
    pub wasted_no_events: u64,
    pub wasted_slept_again: u64,
    pub wasted_accept_eagain: u64,
    pub lost: u64,
    pub stack_failed: u64,
    /// Every socket seen, most wake-ups first.
    pub per_socket: Vec<SocketCount>,
    /// Listening sockets, their accepted connections counted under them;
    /// with outside_listeners they add up to all wake-ups.
    pub per_listener: Vec<ListenerCount>,
    pub outside_listeners: Outside,
    pub per_endpoint: Vec<PeerCount>,
    pub per_waker: Vec<Count>,
    /// Wake-up to epoll_wait return, in microseconds.
    pub latency_us: Log2Hist,
}

impl Summary {
    /// The line every run ends with.
    pub fn line(&self) -> String {
        format!(
            "epollwake: {} after {:.1}s: {} wake-ups, {} herds ({} threads), {} wasted, {} lost\n",
            self.stop_reason, self.duration_s, self.wakeups, self.herds, self.herd_threads, self.wasted, self.lost
        )
    }

    /// The `--summary` tables, each its TOP rows and how many more.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        let more = |out: &mut String, n: usize| {
            if n > TOP {
                out.push_str(&format!(
                    "{:>8} {:>8} {:>6}  ... {} more (--json lists every one)\n",
                    "",
                    "",
                    "",
                    n - TOP
                ));
            }
        };
        out.push_str(&format!(
            "\nWake-ups per listening socket (accepted connections counted under it):\n{:>8} {:>8} {:>6}  {}\n",
            "WAKEUPS", "WASTED", "CONNS", "LISTENER"
        ));
        for l in self.per_listener.iter().take(TOP) {
            out.push_str(&format!(
                "{:>8} {:>8} {:>6}  {} ({} on the listener, {} on its connections)\n",
                l.wakeups,
                l.wasted,
                l.connections,
                l.key,
                l.listener_wakeups,
                l.wakeups - l.listener_wakeups
            ));
        }
        more(&mut out, self.per_listener.len());
        let o = &self.outside_listeners;
        if o.wakeups > 0 || o.wasted > 0 {
            out.push_str(&format!("{:>8} {:>8} {:>6}  not under a listening socket\n", o.wakeups, o.wasted, "-"));
        }
        out.push_str(&format!(
            "\nWake-ups per endpoint and peer (service side with its port, the other by address):\n{:>8} {:>8} {:>6}  {}\n",
            "WAKEUPS", "WASTED", "CONNS", "KEY"
        ));
        for r in self.per_endpoint.iter().take(TOP) {
            let conns = if r.connections > 0 { r.connections.to_string() } else { "-".into() };
            out.push_str(&format!("{:>8} {:>8} {:>6}  {}\n", r.wakeups, r.wasted, conns, r.key));
        }
        more(&mut out, self.per_endpoint.len());
        out.push_str(&format!("\nWake-ups per waker:\n{:>8} {:>8}  {}\n", "WAKEUPS", "WASTED", "KEY"));
        for r in self.per_waker.iter().take(TOP) {
            out.push_str(&format!("{:>8} {:>8}  {}\n", r.wakeups, r.wasted, r.key));
        }
        if self.per_waker.len() > TOP {
            out.push_str(&format!(
                "{:>8} {:>8}  ... {} more (--json lists every one)\n",
                "",
                "",
                self.per_waker.len() - TOP
            ));
        }
        out.push_str(&format!(
            "\nWasted wake-ups: {} (returned 0 events: {}, slept again without returning: {}, accept EAGAIN: {})\n",
            self.wasted, self.wasted_no_events, self.wasted_slept_again, self.wasted_accept_eagain
        ));
        if self.latency_us.total() > 0 {
            out.push_str("\nWake-up to epoll_wait return:\n");
            out.push_str(&self.latency_us.render("usecs"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waker::{Cause, Context};
    use std::time::Duration;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_651_751_119)
    }

    fn sock() -> Socket {
        Socket {
            family: "ipv4",
            protocol: "tcp".into(),
            local: Some("0.0.0.0".into()),
            remote: Some("0.0.0.0".into()),
            lport: 15006,
            rport: 0,
            state: "LISTEN".into(),
            ino: 99,
        }
    }

    fn wake() -> Record {
        Record {
            time: at(),
            mono_ns: 1,
            tid: 4450,
            comm: "wrk:worker_1".into(),
            body: Body::Wake {
                epfd: 7,
                waker: WakerInfo {
                    pid: 0,
                    tid: 0,
                    comm: "swapper/0".into(),
                    cpu: 0,
                    how: Waker {
                        context: Context::Softirq,
                        irq: Some("NET_RX".into()),
                        cause: Cause::Epoll,
                        via: Some("sock_def_readable".into()),
                    },
                },
                socket: Some(sock()),
                fd: Some(40),
                registered: Some(vec!["EPOLLIN".into()]),
                woken_by_event: 2,
                herd: Some(1),
                stack: None,
                group: 5,
            },
        }
    }

    #[test]
    fn wake_text_names_interrupt_socket_and_herd() {
        let t = wake().text();
        assert!(t.contains("WAKE    wrk:worker_1(4450)"), "{t}");
        assert!(t.contains("<- softirq NET_RX on CPU 0 (interrupted swapper/0(0)) via sock_def_readable: fd 40 TCP 0.0.0.0:15006 LISTEN [EPOLLIN] epfd 7"), "{t}");
        assert!(t.contains("HERD #1: one event woke 2 threads"), "{t}");
    }

    #[test]
    fn json_fields() {
        let v = serde_json::to_value(wake()).unwrap();
        assert_eq!(v["type"], "wake");
        assert_eq!(v["time"], "2022-05-05T11:45:19.000000Z");
        assert_eq!(v["waker"]["context"], "softirq");
        assert_eq!(v["waker"]["irq"], "NET_RX");
        assert_eq!(v["waker"]["cause"], "epoll");
        assert_eq!(v["socket"]["state"], "LISTEN");
        assert_eq!(v["fd"], 40);
        assert_eq!(v["herd"], 1);
        assert!(v.get("group").is_none());
        let r = Record {
            body: Body::Return {
                syscall: "epoll_wait",
                epfd: 7,
                ret: 0,
                error: None,
                events: vec![],
                wake_latency_us: Some(12),
                wasted: Some(Wasted::NoEvents),
                herd: Some(1),
                group: 5,
            },
            ..wake()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "return");
        assert_eq!(v["wasted"], "no_events");
        assert!(r.text().contains("= 0 12 us after the wake-up  WASTED: 0 events (herd #1)"), "{}", r.text());
    }

    #[test]
    fn return_events_and_uprobe_args() {
        let r = Record {
            body: Body::Return {
                syscall: "epoll_pwait",
                epfd: 5,
                ret: 1,
                error: None,
                events: vec![EpollEvent {
                    data: 42,
                    fd: Some(42),
                    events: vec!["EPOLLIN".into(), "EPOLLRDHUP".into()],
                }],
                wake_latency_us: None,
                wasted: None,
                herd: None,
                group: 0,
            },
            ..wake()
        };
        assert!(r.text().ends_with("epoll_pwait(epfd 5) = 1: [fd 42 data=42 EPOLLIN|EPOLLRDHUP]\n"), "{}", r.text());
        let u = Record { body: Body::Uprobe { symbol: "f".into(), cpu: 1, args: vec![36, 0x55af6486fea0] }, ..wake() };
        assert!(u.text().contains("UPROBE  wrk:worker_1(4450)"), "{}", u.text());
        assert!(u.text().ends_with(" f arg0=36 arg1=0x55af6486fea0\n"), "{}", u.text());
        assert_eq!(serde_json::to_value(&u).unwrap()["args"][1], "0x55af6486fea0");
    }

    /// 676 connections make one listener row and a few endpoint rows; a
    /// table longer than TOP says how many rows it left out.
    #[test]
    fn tables_group_and_cut_at_top() {
        use crate::groups::{ListenerCount, Outside, PeerCount};
        let peers: Vec<PeerCount> = (0..25)
            .map(|i| PeerCount {
                key: format!("TCP 127.0.0.1:80 <- 10.0.0.{i}"),
                wakeups: 100 - i,
                wasted: 0,
                connections: 27,
            })
            .collect();
        let s = Summary {
            per_listener: vec![ListenerCount {
                key: "TCP 127.0.0.1:80".into(),
                wakeups: 2300,
                wasted: 7,
                listener_wakeups: 676,
                connections: 676,
            }],
            outside_listeners: Outside { wakeups: 3, wasted: 0 },
            per_endpoint: peers,
            ..Default::default()
        };
        let t = s.tables();
        assert!(
            t.contains("    2300        7    676  TCP 127.0.0.1:80 (676 on the listener, 1624 on its connections)\n"),
            "{t}"
        );
        assert!(t.contains("       3        0      -  not under a listening socket\n"), "{t}");
        let endpoint_rows = t.lines().filter(|l| l.contains("<- 10.0.0.")).count();
        assert_eq!(endpoint_rows, 20, "{t}");
        assert!(t.contains("<- 10.0.0.19\n") && !t.contains("<- 10.0.0.20\n"), "{t}");
        assert!(t.contains("... 5 more (--json lists every one)"), "{t}");
    }
}

//! From raw events to printed records: enrich each event (waker stack
//! classified, socket decoded, fd found in the woken thread's epoll set),
//! hold it briefly so that every wake-up of one socket event has arrived
//! before any of them is printed (that is how a herd is known when its
//! first line goes out), then filter, print, and count for the summary.

use crate::events::{self, Event};
use crate::fdmap::{FdMap, Reg};
use crate::groups::{self, SocketTotals};
use crate::herd::{Charge, Herds, Wasted};
use crate::mask;
use crate::report::{Body, Count, EpollEvent, Record, Summary, WakerInfo};
use crate::socket::Socket;
use crate::waker::{self, Cause};
use kdiag_shared::histogram::Log2Hist;
use kdiag_shared::output::{Sink, WallClock};
use kdiag_shared::symbolize::Symbolizer;
use kdiag_shared::Errno;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How long a record waits for the rest of its group before it is
/// printed. Wake-ups of one event come from one loop over a wait queue,
/// microseconds apart on hardware but milliseconds apart under emulation
/// or on a box that is struggling; a person does not notice 50 ms.
pub const HOLD_NS: u64 = 50_000_000;

/// How long a socket event's group is remembered after its last wake-up.
const GROUP_TTL_NS: u64 = 2_000_000_000;

#[derive(Default)]
pub struct Filter {
    pub fd: Option<i32>,
    pub port: Option<u16>,
}

impl Filter {
    fn active(&self) -> bool {
        self.fd.is_some() || self.port.is_some()
    }

    fn matches(&self, fds: &[i32], socket: Option<&Socket>) -> bool {
        self.fd.is_none_or(|f| fds.contains(&f)) && self.port.is_none_or(|p| socket.is_some_and(|s| s.has_port(p)))
    }
}

pub struct Options {
    pub json: bool,
    pub stacks: bool,
    pub filter: Filter,
}

#[derive(Default)]
struct Totals {
    wakeups: u64,
    wasted: [u64; 3],
    sockets: SocketTotals,
    per_waker: BTreeMap<String, (u64, u64)>,
    latency: Log2Hist,
}

pub struct Timeline {
    pid: u32,
    opts: Options,
    wall: WallClock,
    symbolizer: Symbolizer,
    pub fdmap: FdMap,
    herds: Herds,
    uprobe_names: Vec<String>,
    softirqs: Vec<String>,
    comms: HashMap<u32, String>,
    pending: Vec<(Record, Option<Charge>)>,
    /// Per tid: was its latest wake-up shown (filters apply to what follows).
    shown: HashMap<u32, bool>,
    /// Wasted charges by group, to charge the waker of that event too.
    group_waker: HashMap<u64, String>,
    last_prune_ns: u64,
    wake_keys: HashMap<u32, String>,
    totals: Totals,
    pub threads_woken: HashSet<u32>,
}

impl Timeline {
    pub fn new(pid: u32, opts: Options, uprobe_names: Vec<String>) -> Self {
        let mut fdmap = FdMap::new(pid);
        fdmap.snapshot();
        Timeline {
            pid,
            opts,
            wall: WallClock::new(),
            symbolizer: Symbolizer::new(),
            fdmap,
            herds: Herds::default(),
            uprobe_names,
            softirqs: kdiag_shared::softirq::this_kernel(),
            comms: HashMap::new(),
            pending: Vec::new(),
            shown: HashMap::new(),
            group_waker: HashMap::new(),
            last_prune_ns: 0,
            wake_keys: HashMap::new(),
            totals: Totals::default(),
            threads_woken: HashSet::new(),
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn comm(&mut self, tid: u32) -> String {
        let pid = self.pid;
        self.comms
            .entry(tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default()
            })
            .clone()
    }

    fn record(&mut self, ts: u64, tid: u32, body: Body) -> Record {
        let comm = self.comm(tid);
        Record { time: self.wall.to_system_time(ts), mono_ns: ts, tid, comm, body }
    }

    /// Enrich one event now, while the process and its fds still exist.
    pub fn push(&mut self, ev: Event) {
        let rec = match ev {
            Event::Wake(w) => {
                let woken = events::comm(&w.woken_comm);
                if !woken.is_empty() {
                    self.comms.insert(w.tid, woken);
                }
                let n = if w.stack_sz > 0 { (w.stack_sz as usize / 8).min(w.stack.len()) } else { 0 };
                let frames = self.symbolizer.kernel_stack(&w.stack[..n]);
                let syms: Vec<&str> = frames.iter().map(|f| f.sym.as_deref().unwrap_or("")).collect();
                let vec = (w.softirq != 0).then(|| {
                    self.softirqs
                        .get(w.softirq as usize - 1)
                        .cloned()
                        .unwrap_or_else(|| format!("vec {}", w.softirq - 1))
                });
                let how = waker::classify(&syms, vec.as_deref());
                let socket = Socket::decode(&events::raw_sock(&w.sock));
                let reg: Option<Reg> = if w.ep_fd >= 0 {
                    Some(self.fdmap.by_fd(w.epfd, w.ep_fd).unwrap_or(Reg {
                        fd: w.ep_fd,
                        events: w.ep_events,
                        data: w.ep_data,
                        ino: socket.as_ref().map_or(0, |s| s.ino),
                    }))
                } else {
                    socket.as_ref().and_then(|s| self.fdmap.by_ino(w.epfd, s.ino))
                };
                let epoll = how.cause == Cause::Epoll || w.source != events::SRC_NONE;
                let key = match (&socket, &how.via) {
                    (Some(s), _) => s.key(),
                    (None, Some(v)) => format!("{:?} via {v}", how.cause).to_lowercase(),
                    (None, None) => format!("{:?}", how.cause).to_lowercase(),
                };
                self.herds.on_wake(w.tid, w.group, epoll, key, w.ts);
                self.threads_woken.insert(w.tid);
                let waker = WakerInfo {
                    pid: w.waker_pid,
                    tid: w.waker_tid,
                    comm: events::comm(&w.waker_comm),
                    cpu: w.cpu,
                    how,
                };
                let body = Body::Wake {
                    epfd: w.epfd,
                    waker,
                    socket,
                    fd: reg.map(|r| r.fd),
                    registered: reg.map(|r| mask::names(r.events)),
                    woken_by_event: 1,
                    herd: None,
                    stack: self.opts.stacks.then_some(frames),
                    group: w.group,
                };
                self.record(w.ts, w.tid, body)
            }
            Event::Return(r) => {
                let woken = r.woken_ts != 0;
                let charge = self.herds.on_return(r.tid, woken, r.ret);
                let events = r.ev[..(r.nr as usize).min(r.ev.len())]
                    .iter()
                    .map(|e| EpollEvent {
                        data: e.data,
                        fd: self.fdmap.by_data(r.epfd, e.data).map(|reg| reg.fd),
                        events: mask::names(e.events),
                    })
                    .collect();
                let body = Body::Return {
                    syscall: events::syscall_name(r.syscall),
                    epfd: r.epfd,
                    ret: r.ret,
                    error: (r.ret < 0).then(|| Errno(-r.ret).to_string()),
                    events,
                    wake_latency_us: woken.then(|| r.ts.saturating_sub(r.woken_ts) / 1000),
                    wasted: charge.as_ref().map(|c| c.kind),
                    herd: None,
                    group: r.group,
                };
                let rec = self.record(r.ts, r.tid, body);
                self.pending.push((rec, charge));
                return;
            }
            Event::Resleep(r) => {
                let Some(charge) = self.herds.on_resleep(r.tid) else { return };
                let body = Body::Resleep {
                    syscall: events::syscall_name(r.syscall),
                    epfd: r.epfd,
                    after_us: r.ts.saturating_sub(r.woken_ts) / 1000,
                    wasted: charge.kind,
                    herd: None,
                    group: charge.group,
                };
                let rec = self.record(r.ts, r.tid, body);
                self.pending.push((rec, Some(charge)));
                return;
            }
            Event::Accept(a) => {
                let eagain = a.ret == -libc::EAGAIN;
                let charge = self.herds.on_accept(a.tid, eagain);
                let body = Body::Accept {
                    listen_fd: a.other_fd,
                    fd: (a.ret >= 0).then_some(a.ret),
                    error: (a.ret < 0).then(|| Errno(-a.ret).to_string()),
                    socket: Socket::decode(&events::raw_sock(&a.sock)),
                    wasted: charge.as_ref().map(|c| c.kind),
                    herd: None,
                    group: charge.as_ref().map_or(0, |c| c.group),
                };
                let rec = self.record(a.ts, a.tid, body);
                self.pending.push((rec, charge));
                return;
            }
            Event::Close(c) => {
                let body = Body::Close { fd: c.fd, socket: Socket::decode(&events::raw_sock(&c.sock)) };
                self.record(c.ts, c.tid, body)
            }
            Event::Ctl(c) => {
                let (epfd, op, fd) = (c.other_fd, c.op, c.fd);
                if mask::ctl_op(op) == "DEL" {
                    self.fdmap.remove(epfd, fd);
                } else {
                    // As the kernel stores it: ADD and MOD always add these two.
                    let events = c.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32;
                    self.fdmap.set(epfd, Reg { fd, events, data: c.data, ino: c.sock.ino });
                }
                let body = Body::EpollCtl {
                    epfd,
                    op: mask::ctl_op(op),
                    fd,
                    events: mask::names(c.events),
                    data: c.data,
                    socket: Socket::decode(&events::raw_sock(&c.sock)),
                };
                self.record(c.ts, c.tid, body)
            }
            Event::Uprobe(u) => {
                let symbol = self.uprobe_names.get(u.cookie as usize).cloned().unwrap_or_else(|| "?".into());
                let body = Body::Uprobe { symbol, cpu: u.cpu, args: u.args.to_vec() };
                self.record(u.ts, u.tid, body)
            }
        };
        self.pending.push((rec, None));
    }

    /// Print what has waited long enough (everything with `all`), oldest
    /// first.
    pub fn flush(&mut self, sink: &mut Sink, all: bool) -> std::io::Result<()> {
        let now = WallClock::monotonic_now();
        self.pending.sort_by_key(|(r, _)| r.mono_ns);
        let n =
            if all { self.pending.len() } else { self.pending.partition_point(|(r, _)| r.mono_ns + HOLD_NS <= now) };
        let ready: Vec<_> = self.pending.drain(..n).collect();
        for (mut rec, charge) in ready {
            if self.finish(&mut rec, charge) {
                if self.opts.json {
                    sink.json(&rec)?;
                } else {
                    sink.text(&rec.text())?;
                }
            }
        }
        // What refers to a group (the woken threads' returns, re-sleeps and
        // accepts) comes within milliseconds; two seconds is plenty. A scan
        // every half second keeps the cost flat at high event rates.
        if now >= self.last_prune_ns + 500_000_000 {
            self.last_prune_ns = now;
            for group in self.herds.prune(now.saturating_sub(GROUP_TTL_NS)) {
                self.group_waker.remove(&group);
            }
        }
        Ok(())
    }

    /// Fill in what only the whole group knows, apply filters, count.
    /// Returns whether to print.
    fn finish(&mut self, rec: &mut Record, charge: Option<Charge>) -> bool {
        let tid = rec.tid;
        let filter_on = self.opts.filter.active();
        match &mut rec.body {
            Body::Wake { waker, socket, fd, woken_by_event, herd, group, .. } => {
                *woken_by_event = self.herds.size(*group).max(1);
                *herd = self.herds.herd_id(*group);
                let show = self.opts.filter.matches(&fd.iter().copied().collect::<Vec<_>>(), socket.as_ref());
                self.shown.insert(tid, show);
                if !show {
                    return false;
                }
                let key = socket.as_ref().map(|s| s.key()).unwrap_or_else(|| {
                    format!("{:?}", waker.how.cause).to_lowercase()
                        + &waker.how.via.as_ref().map(|v| format!(" via {v}")).unwrap_or_default()
                });
                let ctx = waker.how.context_text();
                let wkey = if ctx.is_empty() { waker.comm.clone() } else { ctx };
                self.totals.wakeups += 1;
                self.totals.sockets.wake(&key, socket.as_ref());
                self.totals.per_waker.entry(wkey.clone()).or_default().0 += 1;
                self.wake_keys.insert(tid, key);
                if *group != 0 {
                    self.group_waker.insert(*group, wkey);
                }
                true
            }
            Body::Return { herd, group, events, wake_latency_us, .. } => {
                *herd = self.herds.herd_id(*group);
                let mut show = self.shown.get(&tid).copied().unwrap_or(!filter_on);
                if let Some(f) = self.opts.filter.fd {
                    show |= events.iter().any(|e| e.fd == Some(f));
                }
                if show {
                    if let Some(l) = wake_latency_us {
                        self.totals.latency.add(*l);
                    }
                    self.count_wasted(tid, charge);
                }
                show
            }
            Body::Resleep { herd, group, .. } => {
                *herd = self.herds.herd_id(*group);
                let show = self.shown.get(&tid).copied().unwrap_or(!filter_on);
                if show {
                    self.count_wasted(tid, charge);
                }
                show
            }
            Body::Accept { herd, group, fd, listen_fd, socket, .. } => {
                *herd = self.herds.herd_id(*group);
                let fds: Vec<i32> = fd.iter().copied().chain([*listen_fd]).collect();
                let show = self.opts.filter.matches(&fds, socket.as_ref())
                    || (charge.is_some() && self.shown.get(&tid).copied().unwrap_or(false));
                if show {
                    self.count_wasted(tid, charge);
                    if let (Some(_), Some(s)) = (fd, socket.as_ref()) {
                        self.totals.sockets.accepted(s);
                    }
                }
                show
            }
            Body::Close { fd, socket } => self.opts.filter.matches(&[*fd], socket.as_ref()),
            Body::EpollCtl { fd, socket, .. } => self.opts.filter.matches(&[*fd], socket.as_ref()),
            Body::Uprobe { .. } => self.shown.get(&tid).copied().unwrap_or(!filter_on),
        }
    }

    fn count_wasted(&mut self, tid: u32, charge: Option<Charge>) {
        let Some(c) = charge else { return };
        let i = match c.kind {
            Wasted::NoEvents => 0,
            Wasted::SleptAgain => 1,
            Wasted::AcceptEagain => 2,
        };
        self.totals.wasted[i] += 1;
        let key = self.wake_keys.get(&tid).cloned().unwrap_or(c.key);
        self.totals.sockets.wasted(&key);
        if let Some(w) = self.group_waker.get(&c.group).cloned() {
            self.totals.per_waker.entry(w).or_default().1 += 1;
        }
    }

    pub fn summary(&self, mut base: Summary) -> Summary {
        let t = &self.totals;
        let rows = |m: &BTreeMap<String, (u64, u64)>| {
            let mut v: Vec<Count> =
                m.iter().map(|(k, (w, x))| Count { key: k.clone(), wakeups: *w, wasted: *x }).collect();
            v.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.key.cmp(&b.key)));
            v
        };
        let (herds, herd_threads) = self.herds.herds();
        base.wakeups = t.wakeups;
        base.herds = herds;
        base.herd_threads = herd_threads;
        base.wasted_no_events = t.wasted[0];
        base.wasted_slept_again = t.wasted[1];
        base.wasted_accept_eagain = t.wasted[2];
        base.wasted = t.wasted.iter().sum();
        let g = t.sockets.group(&groups::listening(self.pid));
        base.per_socket = g.per_socket;
        base.per_listener = g.per_listener;
        base.outside_listeners = g.outside_listeners;
        base.per_endpoint = g.per_endpoint;
        base.per_waker = rows(&t.per_waker);
        base.latency_us = t.latency.clone();
        base
    }
}

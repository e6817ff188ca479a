//! Thundering herds and wasted wake-ups. Wake-ups that one socket event
//! caused share a group (the BPF side numbers them); a group that woke more
//! than one thread is a herd. A woken thread whose wake-up turned out to
//! be for nothing is wasted: its epoll_wait returned 0 events, or it went
//! back to sleep inside epoll_wait without returning (the kernel re-checks
//! readiness and another thread had taken the event), or the first accept
//! after it returned failed with EAGAIN.

use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wasted {
    NoEvents,
    SleptAgain,
    AcceptEagain,
}

impl Wasted {
    pub fn text(self) -> &'static str {
        match self {
            Wasted::NoEvents => "0 events",
            Wasted::SleptAgain => "slept again",
            Wasted::AcceptEagain => "accept EAGAIN",
        }
    }
}

#[derive(Default)]
struct Group {
    tids: BTreeSet<u32>,
    herd_id: Option<u32>,
    /// Monotonic time of its latest wake-up, for pruning.
    last_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct LastWake {
    group: u64,
    /// Woken through ep_poll_callback: readiness was promised.
    epoll: bool,
    /// What the summary charges a wasted wake-up to (socket or callback).
    key: String,
}

#[derive(Default)]
struct AfterReturn {
    epoll_woken: bool,
    accepted: bool,
    wake: LastWake,
}

#[derive(Default)]
pub struct Herds {
    groups: HashMap<u64, Group>,
    /// Herds (and the threads they woke) already pruned from `groups`.
    retired: (u64, u64),
    next_id: u32,
    last_wake: HashMap<u32, LastWake>,
    after_return: HashMap<u32, AfterReturn>,
}

/// What a wasted wake-up is charged to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub kind: Wasted,
    pub group: u64,
    pub key: String,
}

impl Herds {
    pub fn on_wake(&mut self, tid: u32, group: u64, epoll: bool, key: String, ts_ns: u64) {
        if group != 0 {
            let g = self.groups.entry(group).or_default();
            g.tids.insert(tid);
            g.last_ns = g.last_ns.max(ts_ns);
        }
        self.last_wake.insert(tid, LastWake { group, epoll, key });
    }

    /// Threads the event of `group` woke so far.
    pub fn size(&self, group: u64) -> usize {
        self.groups.get(&group).map_or(0, |g| g.tids.len())
    }

    /// The herd number of `group`, given when it is first asked for and the
    /// group woke more than one thread.
    pub fn herd_id(&mut self, group: u64) -> Option<u32> {
        let g = self.groups.get_mut(&group)?;
        if g.tids.len() < 2 {
            return None;
        }
        if g.herd_id.is_none() {
            self.next_id += 1;
            g.herd_id = Some(self.next_id);
        }
        g.herd_id
    }

    pub fn herds(&self) -> (u64, u64) {
        let herds = self.groups.values().filter(|g| g.tids.len() > 1);
        let n = herds.clone().count() as u64;
        (self.retired.0 + n, self.retired.1 + herds.map(|g| g.tids.len() as u64).sum::<u64>())
    }

    /// Forget groups with no wake-up since `before_ns`, keeping their herds
    /// in the totals: one group per socket event would otherwise grow
    /// without bound over a long run. Returns the groups forgotten.
    pub fn prune(&mut self, before_ns: u64) -> Vec<u64> {
        let old: Vec<u64> = self.groups.iter().filter(|(_, g)| g.last_ns < before_ns).map(|(&id, _)| id).collect();
        for id in &old {
            if let Some(g) = self.groups.remove(id) {
                if g.tids.len() > 1 {
                    self.retired.0 += 1;
                    self.retired.1 += g.tids.len() as u64;
                }
            }
        }
        old
    }

    /// epoll_wait returned `ret`; `woken` when a wake-up was seen while it
    /// waited.
    pub fn on_return(&mut self, tid: u32, woken: bool, ret: i32) -> Option<Charge> {
        let wake = if woken { self.last_wake.remove(&tid) } else { None };
        let epoll_woken = wake.as_ref().is_some_and(|w| w.epoll);
        let wake = wake.unwrap_or_default();
        self.after_return.insert(tid, AfterReturn { epoll_woken, accepted: false, wake: wake.clone() });
        (epoll_woken && ret == 0).then_some(Charge { kind: Wasted::NoEvents, group: wake.group, key: wake.key })
    }

    /// Woken, then asleep again in the same epoll_wait.
    pub fn on_resleep(&mut self, tid: u32) -> Option<Charge> {
        let w = self.last_wake.remove(&tid)?;
        w.epoll.then_some(Charge { kind: Wasted::SleptAgain, group: w.group, key: w.key })
    }

    /// accept returned; only the first accept after a return judges it.
    pub fn on_accept(&mut self, tid: u32, eagain: bool) -> Option<Charge> {
        let a = self.after_return.get_mut(&tid)?;
        if a.accepted {
            return None;
        }
        a.accepted = true;
        (eagain && a.epoll_woken).then(|| Charge {
            kind: Wasted::AcceptEagain,
            group: a.wake.group,
            key: a.wake.key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long run keeps only recent groups, and the totals lose nothing.
    #[test]
    fn old_groups_are_pruned_into_the_totals() {
        let mut h = Herds::default();
        h.on_wake(1, 10, true, "a".into(), 1_000);
        h.on_wake(2, 10, true, "a".into(), 1_500);
        h.on_wake(1, 11, true, "a".into(), 2_000);
        h.on_wake(3, 12, true, "a".into(), 9_000);
        h.on_wake(4, 12, true, "a".into(), 9_000);
        assert_eq!(h.herds(), (2, 4));
        let mut gone = h.prune(5_000);
        gone.sort();
        assert_eq!(gone, vec![10, 11]);
        assert_eq!(h.groups.len(), 1);
        assert_eq!(h.herds(), (2, 4));
        assert_eq!(h.size(12), 2);
        assert_eq!(h.size(10), 0);
    }

    #[test]
    fn one_connection_two_workers_one_wasted() {
        let mut h = Herds::default();
        h.on_wake(101, 7, true, "TCP 0.0.0.0:80".into(), 0);
        h.on_wake(102, 7, true, "TCP 0.0.0.0:80".into(), 0);
        assert_eq!(h.size(7), 2);
        assert_eq!(h.herd_id(7), Some(1));
        assert_eq!(h.herd_id(7), Some(1));
        assert_eq!(h.on_return(101, true, 1), None);
        assert_eq!(h.on_accept(101, false), None);
        let c = h.on_resleep(102).unwrap();
        assert_eq!((c.kind, c.group), (Wasted::SleptAgain, 7));
        assert_eq!(h.herds(), (1, 2));
    }

    #[test]
    fn accept_eagain_after_an_epoll_wake_is_wasted_once() {
        let mut h = Herds::default();
        h.on_wake(5, 9, true, "k".into(), 0);
        assert_eq!(h.on_return(5, true, 1), None);
        assert_eq!(h.on_accept(5, true).unwrap().kind, Wasted::AcceptEagain);
        // A second EAGAIN is the accept loop draining the queue, not waste.
        assert_eq!(h.on_accept(5, true), None);
        // A successful accept first, then EAGAIN: not wasted either.
        h.on_wake(5, 10, true, "k".into(), 0);
        h.on_return(5, true, 1);
        assert_eq!(h.on_accept(5, false), None);
        assert_eq!(h.on_accept(5, true), None);
    }

    #[test]
    fn timeouts_are_not_waste_and_singletons_are_not_herds() {
        let mut h = Herds::default();
        h.on_wake(5, 0, false, "timeout".into(), 0);
        assert_eq!(h.on_return(5, true, 0), None);
        h.on_wake(6, 3, true, "k".into(), 0);
        assert_eq!(h.herd_id(3), None);
        assert_eq!(h.on_return(6, true, 0).unwrap().kind, Wasted::NoEvents);
        assert_eq!(h.herds(), (0, 0));
    }
}

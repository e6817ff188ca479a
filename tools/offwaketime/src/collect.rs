//! From the BPF maps to report entries: each (sleeper, waker) key with its
//! times and count, stacks named, waker context decoded, and the summary.

use crate::bpf::types::{owt_key, owt_stats, owt_val};
use crate::report::{user_stack_complete, Context, Entry, Side, Stack, Summary, Waker};
use kdiag_shared::backend::Mechanism;
use kdiag_shared::maps::{self, c_string};
use kdiag_shared::runctl::{RunControl, StopReason};
use kdiag_shared::stacks::Stacks;
use std::collections::HashMap;

const CTX_TASK: u32 = 0;
const CTX_SOFTIRQ: u32 = 1;
const CTX_HARDIRQ: u32 = 2;
const CTX_NMI: u32 = 3;
const CTX_PREEMPTED: u32 = 4;

kdiag_shared::plain_data!(owt_key, owt_val, owt_stats);

/// Every key's user stacks, for naming them while their processes live.
pub fn user_stacks(counts: &libbpf_rs::Map) -> Vec<(u32, i32)> {
    maps::keys::<owt_key>(counts).into_iter().flat_map(|k| [(k.t_tgid, k.t_ustack), (k.w_tgid, k.w_ustack)]).collect()
}

pub fn entries(counts: &libbpf_rs::Map, stacks: &mut Stacks, softirq_names: &[String]) -> anyhow::Result<Vec<Entry>> {
    let groups = maps::entries::<owt_key, owt_val>(counts)?;
    Ok(groups.iter().map(|(k, v)| entry(k, v, stacks, softirq_names)).collect())
}

fn side(stacks: &mut Stacks, comm: &[i8], pid: u32, tgid: u32, kstack: i32, ustack: i32) -> Side {
    let user_stack = stacks.user(tgid, ustack);
    let user_stack_truncated = matches!(&user_stack, Stack::Frames(f) if !user_stack_complete(f));
    Side { comm: c_string(comm), pid, tgid, kernel_stack: stacks.kernel(kstack), user_stack, user_stack_truncated }
}

fn entry(k: &owt_key, v: &owt_val, stacks: &mut Stacks, softirq_names: &[String]) -> Entry {
    let context = match k.w_ctx {
        CTX_TASK => Context::Task,
        CTX_SOFTIRQ => Context::Softirq,
        CTX_HARDIRQ => Context::Hardirq,
        CTX_NMI => Context::Nmi,
        CTX_PREEMPTED => Context::Preempted,
        _ => Context::Unseen,
    };
    let softirq = (context == Context::Softirq).then(|| {
        softirq_names.get(k.w_softirq as usize).cloned().unwrap_or_else(|| format!("vector {}", k.w_softirq as i32))
    });
    let mut waker = side(stacks, &k.w_comm, k.w_pid, k.w_tgid, k.w_kstack, k.w_ustack);
    if matches!(context, Context::Hardirq | Context::Softirq | Context::Nmi) {
        if let Stack::Frames(f) = waker.kernel_stack {
            waker.kernel_stack = Stack::Frames(crate::report::cut_at_interrupt_entry(f));
        }
    }
    Entry {
        kind: "wakeup",
        blocked_ns: v.blocked_ns,
        runq_ns: v.runq_ns,
        count: v.count,
        sleeper: side(stacks, &k.t_comm, k.t_pid, k.t_tgid, k.t_kstack, k.t_ustack),
        waker: Waker { context, softirq, side: waker },
    }
}

pub fn summarize(entries: &[Entry], s: &owt_stats, mech: Mechanism, rc: &RunControl, reason: &StopReason) -> Summary {
    // Distinct user stacks, so one busy stack is not counted per waker.
    let mut user: HashMap<(u32, String), bool> = HashMap::new();
    for e in entries {
        for side in [&e.sleeper, &e.waker.side] {
            if let Stack::Frames(f) = &side.user_stack {
                let id = f.iter().map(|f| format!("{:x}", f.addr)).collect::<Vec<_>>().join(",");
                user.insert((side.tgid, id), side.user_stack_truncated);
            }
        }
    }
    Summary {
        kind: "summary",
        backend: mech.name().to_string(),
        duration_s: rc.elapsed().as_secs_f64(),
        stop_reason: reason.to_string(),
        groups: entries.len(),
        blocked_ns: entries.iter().map(|e| e.blocked_ns).sum(),
        runq_ns: entries.iter().map(|e| e.runq_ns).sum(),
        count: entries.iter().map(|e| e.count).sum(),
        sleeps: s.sleeps,
        wakeups: s.wakeups,
        outside_min_max: s.filtered_time,
        unseen_wakeups: s.unseen_wakeups,
        stack_failures: kdiag_shared::stack_failures!(s),
        groups_dropped: s.keys_dropped,
        sleeps_dropped: s.sleeps_dropped,
        wakeups_dropped: s.wakeups_dropped,
        user_stacks: user.len() as u64,
        user_stacks_truncated: user.values().filter(|&&t| t).count() as u64,
    }
}

//! Who woke a thread and how, from the waker's kernel stack and the
//! softirq it was serving (tracked by the BPF side). When the waker is an interrupt or a softirq, the task
//! that was running is only the one interrupted: say so instead of blaming
//! it (the seed's "swapper/0 woke worker_0" was the NET_RX softirq).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Task,
    Softirq,
    Hardirq,
}

/// Why the thread was woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Through ep_poll_callback: a file in its epoll set became ready.
    Epoll,
    /// The epoll_wait timeout expired (hrtimer_wakeup).
    Timeout,
    /// A signal.
    Signal,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waker {
    pub context: Context,
    /// Softirq vector (NET_RX...) or hardirq vector (apic_timer...) when
    /// the waker is an interrupt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irq: Option<String>,
    pub cause: Cause,
    /// The function that signalled the file (sock_def_readable,
    /// sock_def_wakeup, sk_stream_write_space, eventfd_write...), or for
    /// other causes the function that called the wake-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// Frames of the wake-up machinery itself, skipped when looking for the
/// function that caused a wake-up.
fn is_plumbing(sym: &str) -> bool {
    kdiag_shared::symbolize::is_tracer_frame(sym)
        || sym.starts_with("__traceiter_")
        || sym.starts_with("__wake_up")
        || sym.starts_with("wake_up")
        || sym.starts_with("_raw_spin")
        || sym.starts_with("try_to_wake_up")
        || sym.ends_with("wake_function")
        || sym.starts_with("ttwu_")
        || sym == "ep_poll_callback"
}

fn softirq_of(syms: &[&str]) -> Option<&'static str> {
    const VECS: [(&str, &str); 9] = [
        ("net_rx_action", "NET_RX"),
        ("net_tx_action", "NET_TX"),
        ("run_timer_softirq", "TIMER"),
        ("hrtimer_run_softirq", "HRTIMER"),
        ("tasklet_action", "TASKLET"),
        ("tasklet_hi_action", "HI"),
        ("blk_done_softirq", "BLOCK"),
        ("run_rebalance_domains", "SCHED"),
        ("rcu_core", "RCU"),
    ];
    syms.iter().find_map(|s| VECS.iter().find(|(f, _)| s.starts_with(f)).map(|(_, v)| *v))
}

fn hardirq_of(syms: &[&str]) -> Option<String> {
    syms.iter().find_map(|s| {
        let s = s.strip_prefix("asm_").unwrap_or(s);
        if let Some(v) = s.strip_prefix("sysvec_") {
            Some(v.trim_end_matches("_interrupt").to_string())
        } else if s == "common_interrupt" {
            Some("device".to_string())
        } else {
            None
        }
    })
}

/// Classify one wake-up. `syms` is the waker's kernel stack, innermost
/// frame first; `softirq` the vector the waker was serving, if any.
pub fn classify(syms: &[&str], softirq: Option<&str>) -> Waker {
    let (context, irq) = if let Some(v) = softirq {
        (Context::Softirq, Some(v.to_string()))
    } else if let Some(h) = hardirq_of(syms).filter(|_| softirq_of(syms).is_none()) {
        (Context::Hardirq, Some(h))
    } else if syms.iter().any(|s| *s == "handle_softirqs" || *s == "__do_softirq") {
        // The tracking missed the softirq's start (it began before the run).
        (Context::Softirq, softirq_of(syms).map(str::to_string))
    } else {
        (Context::Task, None)
    };
    let ep = syms.iter().position(|s| *s == "ep_poll_callback");
    let (cause, via) = if let Some(i) = ep {
        (Cause::Epoll, syms[i + 1..].iter().find(|s| !is_plumbing(s)).map(|s| s.to_string()))
    } else if syms.contains(&"hrtimer_wakeup") {
        (Cause::Timeout, Some("hrtimer_wakeup".to_string()))
    } else if syms.iter().any(|s| s.starts_with("signal_wake_up") || *s == "complete_signal") {
        (
            Cause::Signal,
            syms.iter().find(|s| !is_plumbing(s) && !s.starts_with("signal_wake_up")).map(|s| s.to_string()),
        )
    } else {
        (Cause::Other, syms.iter().find(|s| !is_plumbing(s)).map(|s| s.to_string()))
    };
    Waker { context, irq, cause, via }
}

impl Waker {
    /// `softirq NET_RX`, `hardirq apic_timer`, or empty for a task.
    pub fn context_text(&self) -> String {
        match (self.context, &self.irq) {
            (Context::Task, _) => String::new(),
            (c, Some(v)) => format!("{} {v}", serde_json::to_value(c).unwrap().as_str().unwrap_or("")),
            (c, None) => serde_json::to_value(c).unwrap().as_str().unwrap_or("").to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's second stack: ksoftirqd delivering data to Envoy.
    const SOFTIRQ_DATA: [&str; 14] = [
        "bpf_trace_run1",
        "try_to_wake_up",
        "ep_autoremove_wake_function",
        "__wake_up_common",
        "__wake_up",
        "ep_poll_callback",
        "__wake_up_common",
        "__wake_up_sync_key",
        "sock_def_readable",
        "tcp_data_ready",
        "tcp_rcv_established",
        "ip_local_deliver_finish",
        "net_rx_action",
        "handle_softirqs",
    ];

    #[test]
    fn data_from_a_softirq() {
        let w = classify(&SOFTIRQ_DATA, Some("NET_RX"));
        assert_eq!(w.context, Context::Softirq);
        assert_eq!(w.irq.as_deref(), Some("NET_RX"));
        assert_eq!(w.cause, Cause::Epoll);
        assert_eq!(w.via.as_deref(), Some("sock_def_readable"));
        assert_eq!(w.context_text(), "softirq NET_RX");
        // Without the tracking the stack still tells.
        let w = classify(&SOFTIRQ_DATA, None);
        assert_eq!((w.context, w.irq.as_deref()), (Context::Softirq, Some("NET_RX")));
    }

    #[test]
    fn task_waker() {
        let w = classify(&["try_to_wake_up", "ep_poll_callback", "__wake_up_common", "sock_def_wakeup"], None);
        assert_eq!(w.context, Context::Task);
        assert_eq!(w.via.as_deref(), Some("sock_def_wakeup"));
        assert_eq!(w.context_text(), "");
    }

    #[test]
    fn timeout_and_signal() {
        let t = classify(
            &[
                "try_to_wake_up",
                "hrtimer_wakeup",
                "__hrtimer_run_queues",
                "hrtimer_interrupt",
                "__sysvec_apic_timer_interrupt",
                "sysvec_apic_timer_interrupt",
            ],
            None,
        );
        assert_eq!((t.context, t.cause), (Context::Hardirq, Cause::Timeout));
        assert_eq!(t.irq.as_deref(), Some("apic_timer"));
        let s = classify(
            &["try_to_wake_up", "signal_wake_up_state", "complete_signal", "__send_signal_locked", "do_send_sig_info"],
            None,
        );
        assert_eq!(s.cause, Cause::Signal);
        assert_eq!(s.via.as_deref(), Some("complete_signal"));
        let o = classify(&["try_to_wake_up", "futex_wake"], None);
        assert_eq!((o.cause, o.via.as_deref()), (Cause::Other, Some("futex_wake")));
    }
}

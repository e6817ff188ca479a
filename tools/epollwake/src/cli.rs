//! epollwake's command line.

use clap::Parser;
use kdiag_shared::runctl::parse_duration;
use std::time::Duration;

const AFTER_HELP: &str = "\
Output (text): one line per event, oldest first, held back 50 ms so that
all wake-ups of one socket event are known before the first is printed:
  TIME     local time (HH:MM:SS.microseconds)
  EVENT    WAKE     a thread waiting in epoll_wait was woken
           RETURN   its epoll_wait returned
           RESLEEP  it was woken, found nothing, and slept again inside
                    epoll_wait (the kernel hides this; another thread took
                    the event)
           ACCEPT   accept/accept4 returned: the new fd and its peer
           CLOSE    close(fd), with the socket it closed
           CTL      epoll_ctl added, changed or removed an fd
           UPROBE   the --uprobe function was called, with its arguments
  THREAD(TID)  the target's thread
WAKE lines read: '<- WAKER on CPU n via FUNCTION: fd N SOCKET [MASK] epfd E'.
  WAKER is the task that woke the thread, or, when the wake-up came from an
  interrupt, 'softirq NET_RX' or 'hardirq ...' and the task it interrupted
  (which did not cause it). FUNCTION is what signalled the file:
  sock_def_readable (data, or a new connection on a listener),
  sock_def_wakeup (state change, e.g. the peer's FIN), sk_stream_write_space
  (room to write), eventfd_write, pipe_write... fd N is that file's fd in
  the woken thread's epoll set, MASK what it registered (EPOLLIN|EPOLLET...).
  SOCKET is 'TCP local <- remote STATE'. 'timed out' is the epoll timeout.
  'HERD #n: one event woke k threads' marks a thundering herd.
RETURN lines: the result, the time since the wake-up, and each returned
  event as 'fd N data=D MASK' (fd when the data matches a registration).
WASTED marks a wake-up that was for nothing: epoll_wait returned 0 events,
  the thread slept again without returning, or its first accept got EAGAIN.
At exit: one line with totals; with --summary, wake-ups and wasted ones
per listening socket (the connections accepted from it counted under it,
CONNS how many; the rows and 'not under a listening socket' add up to all
wake-ups), per endpoint and peer (the service side with its port, the other
side by address: 'TCP 127.0.0.1:80 <- 10.0.0.7' for connections accepted
from clients on 10.0.0.7, 'TCP 10.0.0.1 -> 10.0.0.5:5432' for connections
out), per waker, each the top 20 by wake-ups and how many more; then a log2
histogram of wake-up to return (us).
A process that never waits in epoll gets a message saying so.

--json prints one object per line: {\"type\": \"wake\"|\"return\"|\"resleep\"|
\"accept\"|\"close\"|\"epoll_ctl\"|\"uprobe\", \"time\", \"mono_ns\", \"tid\", \"comm\",
...}, and a last {\"type\": \"summary\", ...}: its per_listener,
outside_listeners and per_endpoint are the tables in full, and per_socket
lists every socket seen, with its listener.

Backends: fentry or kprobe on ep_poll_callback where the kernel allows it
(the epitem gives the exact fd); otherwise tracepoints (tp_btf, or raw_tp
where the kernel's BTF does not type them): the socket from
sock:sk_data_ready / sock:inet_sock_set_state, tied to the wake-up by
ep_poll_callback in the waker's stack. The banner says which is used.
A herd is every wake-up made inside one call of the socket's callback
(sock_def_readable, sock_def_wakeup) on one CPU.

Examples:
  epollwake -p $(pidof envoy) 30          30 s of every worker wake-up
  epollwake -p 4182 -t 4449 -t 4450 --port 15006 --summary
  epollwake -p 4182 --uprobe 'envoy:*FileEventImpl*assignEvents*'";

/// Explain every epoll wake-up of a process: who woke which thread through
/// which socket, and what epoll_wait then returned.
#[derive(Parser, Debug)]
#[command(name = "epollwake", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The process to watch (required).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,

    /// Only these threads (repeat for more).
    #[arg(short = 't', long = "tid", value_name = "TID")]
    pub tids: Vec<u32>,

    /// Only events about this fd of the process.
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,

    /// Only sockets with this local or remote port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    /// At exit, print wake-ups per listening socket, per endpoint and peer
    /// and per waker, wasted wake-ups, and a latency histogram.
    #[arg(long)]
    pub summary: bool,

    /// Print each waker's kernel stack.
    #[arg(long)]
    pub stacks: bool,

    /// Also trace calls of user functions matching SYMBOL (a glob on
    /// demangled names) in BINARY (a path, or the name of a file the
    /// process has mapped), with their first six arguments.
    #[arg(long, value_name = "BINARY:SYMBOL")]
    pub uprobe: Option<String>,

    /// fentry, kprobe, tp_btf or raw_tp; default: the first this kernel allows.
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,

    /// How long to run (60, 90s, 5m); default until Ctrl-C or the process exits.
    #[arg(value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub btf: kdiag_shared::btf::BtfArgs,

    #[command(flatten)]
    pub common: kdiag_shared::lifecycle::CommonArgs,
}

kdiag_shared::tool_args!(Cli, btf);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("epollwake").chain(args.iter().copied()))
    }

    #[test]
    fn full_call() {
        let c =
            parse(&["-p", "4182", "-t", "4449", "-t", "4450", "--port", "15006", "--summary", "--json", "5m"]).unwrap();
        assert_eq!(c.pid, Some(4182));
        assert_eq!(c.tids, vec![4449, 4450]);
        assert_eq!(c.port, Some(15006));
        assert!(c.summary && c.json);
        assert_eq!(c.duration, Some(Duration::from_secs(300)));
    }

    #[test]
    fn pid_is_checked() {
        // Its absence is reported by main, in words that name it.
        assert_eq!(parse(&[]).unwrap().pid, None);
        assert!(parse(&["-p", "x"]).is_err());
        assert!(parse(&["-p", "1", "--port", "70000"]).is_err());
    }
}

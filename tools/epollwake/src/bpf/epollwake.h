/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by epollwake.bpf.c and the Rust side (via the skeleton). */
#ifndef EPOLLWAKE_H
#define EPOLLWAKE_H

#define EW_MAX_STACK 48
#define EW_MAX_EVENTS 16
#define EW_COMM_LEN 16
#define EW_MAX_UPROBE_ARGS 6

/* Kernel functions whose address ranges (from /proc/kallsyms) the
 * tracepoint backend looks for in a waker's stack. */
enum ew_ksym {
	EW_KSYM_EP_POLL_CALLBACK = 0,
	EW_KSYM_SOCK_DEF_READABLE = 1,
	EW_KSYM_SOCK_DEF_WAKEUP = 2,
	EW_NR_KSYMS = 3,
};

/* [start, end) of each enum ew_ksym function; [0, 0) when not found. */
struct ew_ksym_ranges {
	__u64 r[EW_NR_KSYMS][2];
};

enum ew_kind {
	EW_WAKE = 1,     /* a thread waiting in epoll_wait was woken */
	EW_RETURN = 2,   /* epoll_wait returned */
	EW_RESLEEP = 3,  /* woken, then slept again inside the same epoll_wait */
	EW_ACCEPT = 4,   /* accept/accept4 returned (fd or -errno) */
	EW_CLOSE = 5,    /* close(fd) entered */
	EW_CTL = 6,      /* epoll_ctl succeeded */
	EW_UPROBE = 7,   /* the user function of --uprobe was called */
};

/* How a wake-up was tied to the file that caused it. */
enum ew_source {
	EW_SRC_NONE = 0,         /* not through a socket callback we know */
	EW_SRC_DATA_READY = 1,   /* sock:sk_data_ready + sock_def_readable in the stack */
	EW_SRC_STATE_CHANGE = 2, /* sock:inet_sock_set_state + sock_def_wakeup in the stack */
	EW_SRC_EPITEM = 3,       /* kprobe/fentry on ep_poll_callback: the epitem itself */
};

enum ew_syscall {
	EW_SYS_EPOLL_WAIT = 0,
	EW_SYS_EPOLL_PWAIT = 1,
	EW_SYS_EPOLL_PWAIT2 = 2,
};

struct ew_sock {
	__u64 skaddr;  /* struct sock *, 0 when there is no socket */
	__u64 ino;     /* inode of the socket's file: the key to fds */
	__u16 family;
	__u16 protocol;
	__u16 type;
	__u16 lport;   /* host order */
	__u16 rport;   /* host order */
	__u8 state;
	__u8 pad[5];
	__u8 laddr[16]; /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
};

struct ew_wake {
	__u32 kind;
	__u32 tid;          /* the woken thread */
	__u64 ts;
	__u64 group;        /* wake-ups from one socket event share it; 0: none */
	__u64 file;         /* struct file * of the source (epitem path) */
	__u64 ep_data;      /* the epitem's data (epitem path) */
	__u32 waker_pid;
	__u32 waker_tid;
	__u32 cpu;
	__u32 softirq;      /* 1 + softirq vector when the waker is a softirq */
	__u32 pad;
	__u32 source;       /* enum ew_source */
	__s32 epfd;         /* the epoll fd the woken thread waits on */
	__s32 ep_fd;        /* the fd of the epitem (epitem path), else -1 */
	__u32 ep_events;    /* its registered mask (epitem path) */
	__s32 stack_sz;     /* bytes of stack[], or a negative errno */
	char waker_comm[EW_COMM_LEN];
	char woken_comm[EW_COMM_LEN];
	struct ew_sock sock;
	__u64 stack[EW_MAX_STACK];
};

struct ew_epoll_event {
	__u32 events;
	__u32 pad;
	__u64 data;
};

struct ew_return {
	__u32 kind;         /* EW_RETURN or EW_RESLEEP */
	__u32 tid;
	__u64 ts;
	__u64 enter_ts;
	__u64 woken_ts;     /* last wake-up while waiting, 0 if none seen */
	__u64 group;        /* group of that wake-up */
	__s32 ret;          /* events, or -errno */
	__s32 epfd;
	__s32 maxevents;
	__u32 syscall;      /* enum ew_syscall */
	__u32 nr;           /* entries of ev[] filled */
	__u32 pad;
	struct ew_epoll_event ev[EW_MAX_EVENTS];
};

/* accept, close and epoll_ctl: something happened to an fd. */
struct ew_fd_event {
	__u32 kind;
	__u32 tid;
	__u64 ts;
	__s32 fd;           /* the new fd (accept), the fd closed, the fd added */
	__s32 ret;          /* accept/epoll_ctl result */
	__s32 other_fd;     /* accept: listening fd; epoll_ctl: epfd */
	__u32 op;           /* epoll_ctl op */
	__u32 events;       /* epoll_ctl mask */
	__u32 is_sock;
	__u64 data;         /* epoll_ctl data */
	char comm[EW_COMM_LEN];
	struct ew_sock sock;
};

struct ew_uprobe {
	__u32 kind;
	__u32 tid;
	__u64 ts;
	__u64 cookie;       /* which matched symbol */
	__u64 args[EW_MAX_UPROBE_ARGS];
	__u32 cpu;
	__u32 pad;
	char comm[EW_COMM_LEN];
};

struct ew_stats {
	__u64 waits;         /* epoll_wait entries of the target */
	__u64 wakes;         /* wake-ups of threads waiting in epoll_wait */
	__u64 lost;          /* events dropped: output buffer full */
	__u64 stack_failed;
	__u64 data_ready;    /* sock:sk_data_ready seen (all sockets) */
	__u64 epitems;       /* ep_poll_callback calls seen (kprobe/fentry) */
};

#endif

//! epoll event masks (include/uapi/linux/eventpoll.h): what epoll_wait
//! returned, and what epoll_ctl registered (the flags above bit 27 only
//! appear in registrations).

const FLAGS: [(u32, &str); 16] = [
    (0x001, "EPOLLIN"),
    (0x002, "EPOLLPRI"),
    (0x004, "EPOLLOUT"),
    (0x008, "EPOLLERR"),
    (0x010, "EPOLLHUP"),
    (0x020, "EPOLLNVAL"),
    (0x040, "EPOLLRDNORM"),
    (0x080, "EPOLLRDBAND"),
    (0x100, "EPOLLWRNORM"),
    (0x200, "EPOLLWRBAND"),
    (0x400, "EPOLLMSG"),
    (0x2000, "EPOLLRDHUP"),
    (1 << 28, "EPOLLEXCLUSIVE"),
    (1 << 29, "EPOLLWAKEUP"),
    (1 << 30, "EPOLLONESHOT"),
    (1 << 31, "EPOLLET"),
];

/// Flag names, lowest bit first; bits without a name as one hex value.
pub fn names(mask: u32) -> Vec<String> {
    let mut out: Vec<String> = FLAGS.iter().filter(|(b, _)| mask & b != 0).map(|(_, n)| n.to_string()).collect();
    let known = FLAGS.iter().fold(0, |a, (b, _)| a | b);
    if mask & !known != 0 {
        out.push(format!("{:#x}", mask & !known));
    }
    out
}

/// epoll_ctl operations.
pub fn ctl_op(op: u32) -> &'static str {
    match op {
        1 => "ADD",
        2 => "DEL",
        3 => "MOD",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(mask: u32) -> String {
        names(mask).join("|")
    }

    #[test]
    fn decodes_returned_and_registered_masks() {
        assert_eq!(text(0x1), "EPOLLIN");
        assert_eq!(text(0x2011), "EPOLLIN|EPOLLHUP|EPOLLRDHUP");
        assert_eq!(text(0x8000_2005), "EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET");
        assert!(names(0).is_empty());
        assert_eq!(text(0x4000_0001 | 0x1000_0000), "EPOLLIN|EPOLLEXCLUSIVE|EPOLLONESHOT");
        assert_eq!(names(0x800_0001), vec!["EPOLLIN".to_string(), "0x8000000".to_string()]);
        assert_eq!(ctl_op(1), "ADD");
        assert_eq!(ctl_op(3), "MOD");
    }
}

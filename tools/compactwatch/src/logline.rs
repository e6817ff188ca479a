//! The forms a saved kernel log takes, down to the kernel's own message:
//! `dmesg` (`[  12.345678] `, with `-T` `[Tue Oct  6 10:11:12 2020] `, with
//! `-r` a `<4>` level first, with `-x` `kern  :warn  : `, a caller id such
//! as `[ T1234]` after the time), `journalctl -k` in its output modes and
//! syslog files (`Oct  6 10:11:12 host kernel: `), rsyslog's `#012` and
//! `#011` for the newlines and tabs inside one message, and a listing
//! pasted from a web page or a ticket with a number in front of every line.

/// One line of the kernel's output and the time its log put on it
/// (dmesg's in its brackets).
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub stamp: Option<String>,
    pub msg: String,
}

pub fn lines(text: &str) -> Vec<Line> {
    let numbered = is_numbered_listing(text);
    let mut out = Vec::new();
    for raw in text.lines() {
        let raw = if numbered { line_number(raw).map(|(_, rest)| rest).unwrap_or(raw) } else { raw };
        // rsyslog keeps one message per line: the first part carries the
        // prefix, what follows an escaped newline carries none.
        let mut parts = raw.split("#012");
        let (stamp, first) = strip(parts.next().unwrap_or_default());
        out.push(Line { stamp: stamp.clone(), msg: untab(first) });
        out.extend(parts.map(|p| Line { stamp: stamp.clone(), msg: untab(p.trim_start()) }));
    }
    out
}

fn untab(s: &str) -> String {
    s.replace("#011", " ").replace('\t', " ")
}

/// "12 text", "12: text", "12. text", "12| text", "  12\ttext" (cat -n).
fn line_number(l: &str) -> Option<(u64, &str)> {
    let t = l.trim_start();
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 7 {
        return None;
    }
    let (n, rest) = t.split_at(digits);
    let rest = rest.strip_prefix([':', '.', '|', ')']).unwrap_or(rest);
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some((n.parse().ok()?, rest.strip_prefix([' ', '\t']).unwrap_or(rest)))
}

/// A listing whose lines (nearly all of them: a copy may lose a number or
/// wrap a long line) carry numbers counting up by one. A kernel log's own
/// lines never start with a number and a space.
fn is_numbered_listing(text: &str) -> bool {
    let nonempty: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let numbers: Vec<u64> = nonempty.iter().filter_map(|l| line_number(l)).map(|(n, _)| n).collect();
    if nonempty.len() < 2 || numbers.len() * 5 < nonempty.len() * 4 {
        return false;
    }
    let steps = numbers.windows(2).filter(|w| w[1] == w[0] + 1).count();
    steps * 5 >= (numbers.len() - 1) * 4
}

/// Everything the log put in front of the message, and its time.
fn strip(line: &str) -> (Option<String>, &str) {
    let mut stamp = None;
    let mut l = line;
    if let Some(i) = l.find(" kernel: ") {
        // "Oct  6 10:11:12 host kernel: ", "2020-10-06T10:11:12+0800 host
        // kernel: ", "[12345.678901] host kernel: ": the time, a host name.
        let head = l[..i].trim();
        stamp = head.rsplit_once(' ').map(|(t, _)| t.trim().to_string()).filter(|t| !t.is_empty());
        l = &l[i + 9..];
    }
    let mut t = l.trim_start();
    // dmesg -r: "<4>".
    if let Some(rest) = t.strip_prefix('<') {
        if let Some((lvl, rest)) = rest.split_once('>') {
            if !lvl.is_empty() && lvl.chars().all(|c| c.is_ascii_digit()) {
                t = rest;
            }
        }
    }
    // dmesg -x: "kern  :warn  : ".
    if let Some((fac, rest)) = t.split_once(':') {
        if let Some((lvl, rest)) = rest.split_once(':') {
            let word = |s: &str| !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_lowercase());
            if word(fac) && word(lvl) && fac.ends_with(' ') && lvl.ends_with(' ') {
                t = rest.trim_start();
            }
        }
    }
    // "[  12.345678] ", "[Tue Oct  6 10:11:12 2020] ", then perhaps a
    // caller id "[ T1234] " or "[    C1] "; never a call trace's "[<ffff...>]".
    for _ in 0..2 {
        let Some(rest) = t.strip_prefix('[') else { break };
        let Some((inner, after)) = rest.split_once(']') else { break };
        if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_alphanumeric() || " .:+-,".contains(c)) {
            break;
        }
        let caller = inner.trim().strip_prefix(['T', 'C']).is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
        if !caller {
            stamp = Some(format!("[{}]", inner.trim()));
        }
        t = after.trim_start();
    }
    (stamp, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(l: &str) -> (Option<String>, String) {
        let v = lines(l);
        assert_eq!(v.len(), 1, "{v:?}");
        (v[0].stamp.clone(), v[0].msg.clone())
    }

    const MSG: &str = "nfsd: page allocation failure: order:5, mode:0x40c40(GFP_NOFS|__GFP_COMP)";

    #[test]
    fn every_prefix_comes_off() {
        let s = |x: &str| Some(x.to_string());
        let cases = [
            (format!("[81234.567890] {MSG}"), s("[81234.567890]")),
            (format!("[    5.012345] {MSG}"), s("[5.012345]")),
            (format!("[Tue Oct  6 10:11:12 2020] {MSG}"), s("[Tue Oct  6 10:11:12 2020]")),
            (format!("<4>[   12.000001] {MSG}"), s("[12.000001]")),
            (format!("kern  :warn  : [   12.000001] {MSG}"), s("[12.000001]")),
            (format!("[   12.000001][ T1234] {MSG}"), s("[12.000001]")),
            (format!("Oct 06 10:11:12 db7 kernel: {MSG}"), s("Oct 06 10:11:12")),
            (format!("Oct 06 10:11:12.123456 db7 kernel: {MSG}"), s("Oct 06 10:11:12.123456")),
            (format!("2020-10-06T10:11:12+0800 db7 kernel: {MSG}"), s("2020-10-06T10:11:12+0800")),
            (format!("Mar  3 03:12:01 db7 kernel: [81234.567890] {MSG}"), s("[81234.567890]")),
            (MSG.to_string(), None),
        ];
        for (line, stamp) in cases {
            assert_eq!(one(&line), (stamp, MSG.to_string()), "{line}");
        }
    }

    #[test]
    fn call_trace_brackets_stay() {
        assert_eq!(one("[<ffffffff81686b13>] dump_stack+0x19/0x1b").1, "[<ffffffff81686b13>] dump_stack+0x19/0x1b");
        let (stamp, msg) = one("[   3.1] [<ffffffff81686b13>] dump_stack+0x19/0x1b");
        assert_eq!((stamp.as_deref(), msg.as_str()), (Some("[3.1]"), "[<ffffffff81686b13>] dump_stack+0x19/0x1b"));
    }

    #[test]
    fn rsyslog_escapes_are_lines_and_tabs() {
        let v = lines("Mar  3 03:12:01 db7 kernel: Mem-Info:#012active_anon:1#011inactive_anon:2");
        let msgs: Vec<&str> = v.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs, ["Mem-Info:", "active_anon:1 inactive_anon:2"]);
        assert!(v.iter().all(|l| l.stamp.as_deref() == Some("Mar  3 03:12:01")));
    }

    #[test]
    fn numbered_listings_lose_their_numbers() {
        let text = "1 kworker/31:0: page allocation failure: order:5, mode:0x104050\n\
                    2 CPU: 31 PID: 635928 Comm: kworker/31:0 Tainted: G\n\
                    3 000000000104050 000000009a44a60e ffff882016b93808 ffffffff81686b13\n\
                    4 Call Trace:\n\
                    5 [<fffffff81686b13>] dump_stack+0x19/0x1b\n";
        let msgs: Vec<String> = lines(text).into_iter().map(|l| l.msg).collect();
        assert_eq!(msgs[0], "kworker/31:0: page allocation failure: order:5, mode:0x104050");
        assert_eq!(msgs[2], "000000000104050 000000009a44a60e ffff882016b93808 ffffffff81686b13");
        assert_eq!(msgs[4], "[<fffffff81686b13>] dump_stack+0x19/0x1b");
        let cat_n = "     9\t[  1.0] x: page allocation failure: order:5, mode:0x0\n    10\t[  1.0] CPU: 0 PID: 1\n";
        assert_eq!(lines(cat_n)[0].msg, "x: page allocation failure: order:5, mode:0x0");
        for sep in [":", ".", "|"] {
            let t = format!("7{sep} Node 0 DMA: 1*4kB\n8{sep} Node 0 DMA32: 2*4kB\n");
            assert_eq!(lines(&t)[1].msg, "Node 0 DMA32: 2*4kB", "{sep}");
        }
    }

    /// Lines that merely start with digits are not a listing.
    #[test]
    fn a_log_is_not_a_listing() {
        let text = "2020-10-06T10:11:12+0800 db7 kernel: a\n2020-10-06T10:11:13+0800 db7 kernel: b\n\
                    000000000104050 000000009a44a60e\n";
        assert!(!is_numbered_listing(text));
        assert!(!is_numbered_listing("5 a\n9 b\n2 c\n"));
    }
}

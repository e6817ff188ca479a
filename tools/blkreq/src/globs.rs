//! Shell-style globs for `-i` and `-x`: `*`, `?` and `[...]` classes
//! (`[!...]` negated, `a-z` ranges), matched against whole names.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
    Class { neg: bool, ranges: Vec<(char, char)> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pub text: String,
    toks: Vec<Tok>,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let bad = |why: &str| format!("bad glob '{text}': {why}");
        if text.is_empty() {
            return Err(bad("empty"));
        }
        let mut toks = Vec::new();
        let mut it = text.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::Any),
                '\\' => toks.push(Tok::Lit(it.next().ok_or_else(|| bad("trailing backslash"))?)),
                '[' => {
                    let neg = matches!(it.peek(), Some('!') | Some('^'));
                    if neg {
                        it.next();
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = it.next().ok_or_else(|| bad("unclosed '['"))?;
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if it.peek() == Some(&'-') {
                            let mut look = it.clone();
                            look.next();
                            match look.peek() {
                                Some(&hi) if hi != ']' => {
                                    it.next();
                                    it.next();
                                    if hi < c {
                                        return Err(bad(&format!("range '{c}-{hi}' is backwards")));
                                    }
                                    ranges.push((c, hi));
                                    continue;
                                }
                                _ => {}
                            }
                        }
                        ranges.push((c, c));
                    }
                    toks.push(Tok::Class { neg, ranges });
                }
                c if c.is_whitespace() || c.is_control() => {
                    return Err(bad("function names have no whitespace"));
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Glob { text: text.to_string(), toks })
    }

    pub fn matches(&self, name: &str) -> bool {
        let s: Vec<char> = name.chars().collect();
        // Classic two-pointer match with backtracking to the last star.
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            let ok = match self.toks.get(p) {
                Some(Tok::Lit(c)) => *c == s[i],
                Some(Tok::Any) => true,
                Some(Tok::Class { neg, ranges }) => ranges.iter().any(|&(lo, hi)| lo <= s[i] && s[i] <= hi) != *neg,
                Some(Tok::Star) => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                None => false,
            };
            if ok {
                p += 1;
                i += 1;
            } else if let Some((sp, si)) = star {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            } else {
                return false;
            }
        }
        self.toks[p..].iter().all(|t| *t == Tok::Star)
    }
}

/// Tracer plumbing that the tracepoint macros generate for every event,
/// each handed the same request: probing them only repeats the event.
pub const PLUMBING: [&str; 6] =
    ["__traceiter_*", "__probestub_*", "perf_trace_*", "trace_event_raw_*", "__bpf_trace_*", "trace_raw_output_*"];

pub fn is_plumbing(name: &str) -> bool {
    PLUMBING.iter().any(|g| Glob::new(g).is_ok_and(|g| g.matches(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str, s: &str) -> bool {
        Glob::new(g).unwrap().matches(s)
    }

    #[test]
    fn stars_and_questions() {
        assert!(m("blk_*", "blk_mq_free_request"));
        assert!(!m("blk_*", "__blk_mq_free_request"));
        assert!(m("*free*", "__blk_mq_free_request"));
        assert!(m("blk_mq_free_request", "blk_mq_free_request"));
        assert!(!m("blk_mq_free_request", "blk_mq_free_requests"));
        assert!(m("blk_mq_?ree_request", "blk_mq_free_request"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("*_request", "blk_mq_start_request"));
    }

    #[test]
    fn classes() {
        assert!(m("blk_mq_[fs]*", "blk_mq_free_request"));
        assert!(m("blk_mq_[fs]*", "blk_mq_start_request"));
        assert!(!m("blk_mq_[!fs]*", "blk_mq_start_request"));
        assert!(m("loop[0-9]", "loop7"));
        assert!(m("a[]]b", "a]b"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
    }

    #[test]
    fn bad_globs_say_why() {
        assert_eq!(Glob::new("blk_[mq").unwrap_err(), "bad glob 'blk_[mq': unclosed '['");
        assert!(Glob::new("").unwrap_err().contains("empty"));
        assert!(Glob::new("a[z-a]").unwrap_err().contains("backwards"));
        assert!(Glob::new("blk mq").unwrap_err().contains("whitespace"));
    }

    #[test]
    fn plumbing() {
        assert!(is_plumbing("__traceiter_block_rq_issue"));
        assert!(is_plumbing("__bpf_trace_block_rq"));
        assert!(is_plumbing("trace_event_raw_event_block_rq"));
        assert!(!is_plumbing("blk_mq_start_request"));
    }
}

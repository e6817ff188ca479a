//! Tracepoint format files (`events/<group>/<name>/format`): the running
//! kernel's own description of its GFP flag names, compaction status names
//! and zone names. Reading them is what keeps the decoding right on every
//! kernel version; the tables inside are C expressions after macro
//! expansion (`(( gfp_t)((((1UL))) << (10)))` on 6.x, `(__force unsigned
//! long)0x400000u`-style literals on older kernels), so a small evaluator
//! turns them back into numbers.

use std::path::Path;

/// One `{value, "name"}` entry of a `__print_flags` / `__print_symbolic` table.
pub type Table = Vec<(u64, String)>;

/// The print-format tables of one event.
#[derive(Debug, Default, Clone)]
pub struct Format {
    pub print_fmt: String,
}

impl Format {
    pub fn read(tracefs: &Path, event: &str) -> Result<Format, String> {
        let path = tracefs.join("events").join(event).join("format");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Format::parse(&text))
    }

    pub fn parse(text: &str) -> Format {
        let print_fmt = text.lines().find_map(|l| l.strip_prefix("print fmt:")).unwrap_or("").trim().to_string();
        Format { print_fmt }
    }

    /// The `__print_flags(REC->field, "|", ...)` table for `field`.
    pub fn flags_table(&self, field: &str) -> Option<Table> {
        self.table("__print_flags(", field, true)
    }

    /// The `__print_symbolic(REC->field, ...)` table for `field`.
    pub fn symbolic_table(&self, field: &str) -> Option<Table> {
        self.table("__print_symbolic(", field, false)
    }

    fn table(&self, func: &str, field: &str, has_delim: bool) -> Option<Table> {
        let needle = format!("{func}REC->{field},");
        let start = self.print_fmt.find(&needle)? + needle.len();
        let mut rest = &self.print_fmt[start..];
        if has_delim {
            // Skip the delimiter string argument.
            let q1 = rest.find('"')?;
            let q2 = rest[q1 + 1..].find('"')? + q1 + 1;
            rest = &rest[q2 + 1..];
        }
        let mut table = Vec::new();
        let bytes = rest.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b',') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] != b'{' {
                break;
            }
            let mut depth = 0;
            let mut j = i;
            while j < bytes.len() {
                match bytes[j] {
                    b'{' | b'(' => depth += 1,
                    b'}' | b')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            let entry = &rest[i + 1..j.min(rest.len())];
            i = j + 1;
            let comma = entry.rfind(',')?;
            let name = entry[comma + 1..].trim();
            // The terminating `{ 0, ((void *)0) }` / `{ -1, NULL }`.
            let Some(name) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) else { break };
            let value = eval(&entry[..comma])?;
            table.push((value, name.to_string()));
        }
        (!table.is_empty()).then_some(table)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(u64),
    Ident(String),
    Op(&'static str),
}

fn lex(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            let lit = s[st..i].trim_end_matches(['u', 'U', 'l', 'L']);
            let v = if let Some(h) = lit.strip_prefix("0x").or_else(|| lit.strip_prefix("0X")) {
                u64::from_str_radix(h, 16).ok()?
            } else {
                lit.parse().ok()?
            };
            out.push(Tok::Num(v));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_string()));
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let op: &'static str = match two {
                "<<" => "<<",
                ">>" => ">>",
                _ => match c {
                    b'|' => "|",
                    b'&' => "&",
                    b'~' => "~",
                    b'(' => "(",
                    b')' => ")",
                    b'+' => "+",
                    b'-' => "-",
                    b'*' => "*",
                    b'^' => "^",
                    _ => return None,
                },
            };
            i += op.len();
            out.push(Tok::Op(op));
        }
    }
    Some(out)
}

/// Evaluate a constant C expression as found in format-file tables.
pub fn eval(s: &str) -> Option<u64> {
    let toks = lex(s)?;
    let mut p = Parser { t: &toks, i: 0 };
    let v = p.binary(0)?;
    (p.i == toks.len()).then_some(v)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
}

const LEVELS: [&[&str]; 5] = [&["|"], &["^"], &["&"], &["<<", ">>"], &["+", "-"]];

impl Parser<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.t.get(self.i) {
            Some(Tok::Op(o)) => Some(o),
            _ => None,
        }
    }

    fn binary(&mut self, level: usize) -> Option<u64> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut v = self.binary(level + 1)?;
        while let Some(op) = self.peek_op().filter(|o| LEVELS[level].contains(o)) {
            self.i += 1;
            let r = self.binary(level + 1)?;
            v = match op {
                "|" => v | r,
                "^" => v ^ r,
                "&" => v & r,
                "<<" => v.checked_shl(r as u32)?,
                ">>" => v.checked_shr(r as u32)?,
                "+" => v.wrapping_add(r),
                _ => v.wrapping_sub(r),
            };
        }
        Some(v)
    }

    /// A parenthesised list of type words (`( gfp_t)`, `(__force unsigned long)`).
    fn cast_len(&self) -> Option<usize> {
        let mut j = self.i + 1;
        while let Some(Tok::Ident(_)) = self.t.get(j) {
            j += 1;
        }
        (j > self.i + 1 && self.t.get(j) == Some(&Tok::Op(")"))).then_some(j + 1 - self.i)
    }

    fn unary(&mut self) -> Option<u64> {
        match self.t.get(self.i)? {
            Tok::Op("~") => {
                self.i += 1;
                Some(!self.unary()?)
            }
            Tok::Op("-") => {
                self.i += 1;
                Some(self.unary()?.wrapping_neg())
            }
            Tok::Op("(") => {
                if let Some(n) = self.cast_len() {
                    self.i += n;
                    return self.unary();
                }
                self.i += 1;
                let v = self.binary(0)?;
                (self.t.get(self.i) == Some(&Tok::Op(")"))).then_some(())?;
                self.i += 1;
                Some(v)
            }
            Tok::Num(n) => {
                self.i += 1;
                Some(*n)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_of_6x_and_4x_tables() {
        assert_eq!(eval("( unsigned long)(( gfp_t)((((1UL))) << (10)))"), Some(1 << 10));
        assert_eq!(
            eval(
                "( unsigned long)((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))))"
            ),
            Some(0x440 | 0x800)
        );
        assert_eq!(eval("(unsigned long)((gfp_t)0x400000u)"), Some(0x400000));
        assert_eq!(eval("((1UL << 3) | 4) & ~(1UL << 3)"), Some(4));
        assert_eq!(eval("(void *)0"), None);
    }

    #[test]
    fn tables_from_this_hosts_format_text() {
        let text = "name: mm_compaction_end\nprint fmt: \"zone_start=0x%lx status=%s\", REC->zone_start, \
                    __print_symbolic(REC->status, {1, \"skipped\"}, {2, \"deferred\"}, {8, \"success\"})\n";
        let f = Format::parse(text);
        assert_eq!(
            f.symbolic_table("status").unwrap(),
            vec![(1, "skipped".into()), (2, "deferred".into()), (8, "success".into())]
        );
        let g = Format::parse(
            "print fmt: \"gfp=%s\", (REC->gfp) ? __print_flags(REC->gfp, \"|\", \
             {( unsigned long)(( gfp_t)((((1UL))) << (6))), \"__GFP_IO\"}, \
             {( unsigned long)(( gfp_t)((((1UL))) << (7))), \"__GFP_FS\"}, { 0, ((void *)0) } ) : \"none\"",
        );
        assert_eq!(g.flags_table("gfp").unwrap(), vec![(0x40, "__GFP_IO".into()), (0x80, "__GFP_FS".into())]);
        assert!(g.flags_table("other").is_none());
    }

    /// The live kernel's tables parse, and agree with BTF where both exist.
    #[test]
    fn live_format_files_parse() {
        kdiag_testkit::needs_root("reads tracefs format files");
        let tfs = kdiag_shared::precheck::tracefs().unwrap();
        let f = Format::read(&tfs, "compaction/mm_compaction_end").unwrap();
        let st = f.symbolic_table("status").unwrap();
        assert!(st.iter().any(|(_, n)| n == "success") && st.iter().any(|(_, n)| n == "skipped"), "{st:?}");
        let a = Format::read(&tfs, "kmem/mm_page_alloc").unwrap();
        let t = a.flags_table("gfp_flags").unwrap();
        let io = t.iter().find(|(_, n)| n == "__GFP_IO").unwrap().0;
        assert_eq!(io.count_ones(), 1, "{t:?}");
        let z = Format::read(&tfs, "compaction/mm_compaction_suitable").unwrap().symbolic_table("idx").unwrap();
        assert!(z.iter().any(|(_, n)| n == "Normal"), "{z:?}");
    }
}

//! The kernel's symbols, from /proc/kallsyms: read once per process, under
//! one set of rules, into a table small enough for a production box.
//!
//! Everything a tool asks of kallsyms goes through here: naming the frames
//! of kernel stacks, "is this a function, and may a tracer enter it",
//! a function's address range (epollwake recognises a waker's stack by
//! return addresses), which functions a glob matches. A general symbolizer
//! (blazesym) keeps every symbol with its metadata, about 10 MB on a 6.18
//! kernel; this table keeps what those questions need, about 3 MB.
//!
//! The rules: a function is a text symbol (types `t`, `T`, `w`, `W`) with
//! a non-zero address, except the patchable-function padding and CFI stubs
//! the compiler puts before functions (`__pfx_*`, `__cfi_*`), which are
//! not entry points. Where several names share an address, the first one
//! kallsyms lists is that address's name. Reading kallsyms costs the
//! kernel about 50 ms on a 6.18 kernel, so a tool that knows it will need
//! the table starts reading it early, on another thread ([`prefetch`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::sync::OnceLock;

const KALLSYMS: &str = "/proc/kallsyms";
const MODULES: &str = "/proc/modules";

/// No kernel function is this long: beyond it an address belongs to no
/// symbol we know (kallsyms gives no sizes).
const MAX_FUNC: u64 = 1 << 20;

/// One function, 16 bytes: its name lives in the shared arena.
#[derive(Clone, Copy, Debug)]
struct Func {
    addr: u64,
    name_off: u32,
    name_len: u16,
    /// 0: the kernel image; i: modules[i - 1].
    module: u16,
}

/// A function as the queries return it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function<'a> {
    pub name: &'a str,
    pub addr: u64,
    /// Where the next function starts: the end of this one's code.
    pub end: u64,
    /// The module it belongs to, None for the kernel image.
    pub module: Option<&'a str>,
}

/// What an address in a kernel stack is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// Inside a function of the kernel or a module.
    Function {
        name: &'a str,
        off: u64,
        module: Option<&'a str>,
    },
    /// Outside kernel text and every module: a BPF program or trampoline
    /// (kallsyms may not list it, and the symbol before it would be a lie).
    Bpf,
    Unknown,
}

pub struct KernelSymbols {
    funcs: Vec<Func>,
    names: String,
    modules: Vec<String>,
    /// Load address ranges of modules, from /proc/modules.
    module_ranges: Vec<(u64, u64)>,
    /// Names of non-text symbols, hashed, with their kallsyms type: enough
    /// to say "that is a variable" without keeping their names.
    others: Vec<(u64, u8)>,
    /// The kernel image's text: `_stext`.. `_etext`, `_sinittext`..`_einittext`.
    text: Vec<(u64, u64)>,
    /// Indices into `funcs`, sorted by name (address order among equal
    /// names): built on the first question by name.
    by_name: OnceLock<Vec<u32>>,
    /// Why the table is empty, when it is.
    error: Option<String>,
}

fn hash(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

fn is_text(kind: u8) -> bool {
    matches!(kind, b't' | b'T' | b'w' | b'W')
}

/// Compiler-made pieces before functions: text, but not entry points.
fn is_stub(name: &str) -> bool {
    name.starts_with("__pfx_") || name.starts_with("__cfi_")
}

/// One kallsyms line: address, type, name, optional `[module]`.
fn parse_line(l: &str) -> Option<(u64, u8, &str, Option<&str>)> {
    let mut f = l.split_ascii_whitespace();
    let addr = u64::from_str_radix(f.next()?, 16).ok()?;
    let kind = *f.next()?.as_bytes().first()?;
    let name = f.next()?;
    let module = f.next().map(|m| m.trim_start_matches('[').trim_end_matches(']'));
    Some((addr, kind, name, module))
}

fn parse_modules(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = f.get(1)?.parse::<u64>().ok()?;
            let start = u64::from_str_radix(f.get(5)?.trim_start_matches("0x"), 16).ok()?;
            (start != 0).then_some((start, start + size))
        })
        .collect()
}

static TABLE: OnceLock<KernelSymbols> = OnceLock::new();

/// The running kernel's table, read on first use. Never fails: a kernel
/// whose kallsyms cannot be read gives an empty table whose
/// [`KernelSymbols::error`] says why.
pub fn get() -> &'static KernelSymbols {
    TABLE.get_or_init(KernelSymbols::read)
}

/// The table, or why there is none, for the tools that cannot do without.
pub fn require() -> anyhow::Result<&'static KernelSymbols> {
    let k = get();
    match &k.error {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(k),
    }
}

/// Start reading the table on another thread, so that the kernel's time
/// generating kallsyms overlaps whatever the tool does next.
pub fn prefetch() {
    if TABLE.get().is_none() {
        std::thread::spawn(get);
    }
}

/// `[start, end)` of a function, as [`KernelSymbols::function`] gives it.
pub type Range = (u64, u64);

/// The ranges of a few functions, for a tool that needs them to start and
/// needs no table: kallsyms lists the kernel image in address order, so
/// reading stops at the function after the last of them (for epollwake's
/// three, three quarters of the way, about 35 ms of the kernel's time
/// against 50), and nothing is kept. From the table when it is read
/// already, or when kallsyms is not in order after all.
pub fn function_ranges(names: &[&str]) -> anyhow::Result<Vec<Option<Range>>> {
    let from_table = || require().map(|k| names.iter().map(|n| k.function(n).map(|f| (f.addr, f.end))).collect());
    if TABLE.get().is_some() {
        return from_table();
    }
    let Ok(f) = std::fs::File::open(KALLSYMS) else { return from_table() };
    scan_ranges(std::io::BufReader::with_capacity(1 << 16, f), names).map_or_else(from_table, Ok)
}

/// [`function_ranges`] from kallsyms text: None when the text is not in
/// address order up to the last name, or hides its addresses.
fn scan_ranges(mut r: impl BufRead, names: &[&str]) -> Option<Vec<Option<Range>>> {
    // Per name: its start, then its end once a later function is seen.
    let mut found: Vec<Option<(u64, Option<u64>)>> = vec![None; names.len()];
    let mut last = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            break;
        }
        let Some((addr, kind, name, _)) = parse_line(&line) else { continue };
        if !is_text(kind) || addr == 0 || is_stub(name) {
            continue;
        }
        if addr < last {
            return None;
        }
        last = addr;
        for (start, end) in found.iter_mut().flatten() {
            if end.is_none() && addr > *start {
                *end = Some(addr);
            }
        }
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert((addr, None));
        }
        if found.iter().all(|f| matches!(f, Some((_, Some(_))))) {
            break;
        }
    }
    // No address at all: hidden (kptr_restrict), which the table explains.
    (last != 0).then(|| found.into_iter().map(|f| f.map(|(s, e)| (s, e.unwrap_or(s + 1)))).collect())
}

impl KernelSymbols {
    fn read() -> Self {
        let modules = std::fs::read_to_string(MODULES).unwrap_or_default();
        match std::fs::File::open(KALLSYMS) {
            Ok(f) => Self::parse(std::io::BufReader::with_capacity(1 << 16, f), &modules),
            Err(e) => Self::empty(format!("cannot read {KALLSYMS}: {e}")),
        }
    }

    fn empty(error: String) -> Self {
        KernelSymbols {
            funcs: vec![],
            names: String::new(),
            modules: vec![],
            module_ranges: vec![],
            others: vec![],
            text: vec![],
            by_name: OnceLock::new(),
            error: Some(error),
        }
    }

    /// Build the table from kallsyms text and /proc/modules text.
    pub fn parse(mut r: impl BufRead, modules_text: &str) -> Self {
        let mut k = Self::empty(String::new());
        k.error = None;
        k.module_ranges = parse_modules(modules_text);
        let mut marks = [0u64; 4];
        let mut line = String::new();
        let mut any_addr = false;
        let mut any = false;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Some((addr, kind, name, module)) = parse_line(&line) else { continue };
            any = true;
            any_addr |= addr != 0;
            if !is_text(kind) {
                k.others.push((hash(name), kind));
                continue;
            }
            if module.is_none() {
                if let Some(i) = ["_stext", "_etext", "_sinittext", "_einittext"].iter().position(|m| *m == name) {
                    marks[i] = addr;
                }
            }
            if addr == 0 || is_stub(name) {
                continue;
            }
            let module = match module {
                None => 0,
                Some(m) => match k.modules.iter().position(|x| x == m) {
                    Some(i) => i + 1,
                    None => {
                        k.modules.push(m.to_string());
                        k.modules.len()
                    }
                },
            };
            let name_off = k.names.len() as u32;
            k.names.push_str(name);
            k.funcs.push(Func { addr, name_off, name_len: name.len() as u16, module: module as u16 });
        }
        if any && !any_addr {
            return Self::empty(format!(
                "kernel addresses are hidden in {KALLSYMS} (kernel.kptr_restrict): run as root, \
                 or set kernel.kptr_restrict=0"
            ));
        }
        if !any {
            return Self::empty(format!("{KALLSYMS} lists no symbols"));
        }
        // Stable: of names at one address, the first listed stays first.
        k.funcs.sort_by_key(|f| f.addr);
        k.funcs.shrink_to_fit();
        k.names.shrink_to_fit();
        k.others.sort_unstable();
        k.others.shrink_to_fit();
        k.text = [(marks[0], marks[1]), (marks[2], marks[3])].into_iter().filter(|(s, e)| s < e).collect();
        k
    }

    /// Why the table is empty, if it is.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn name(&self, f: &Func) -> &str {
        &self.names[f.name_off as usize..f.name_off as usize + f.name_len as usize]
    }

    fn module(&self, f: &Func) -> Option<&str> {
        (f.module > 0).then(|| self.modules[f.module as usize - 1].as_str())
    }

    fn function_at_index(&self, i: usize) -> Function<'_> {
        let f = &self.funcs[i];
        let end = self.funcs[i + 1..].iter().find(|n| n.addr > f.addr).map_or(f.addr + 1, |n| n.addr);
        Function { name: self.name(f), addr: f.addr, end, module: self.module(f) }
    }

    /// Every function, in address order.
    pub fn functions(&self) -> impl Iterator<Item = Function<'_>> + '_ {
        (0..self.funcs.len()).map(|i| self.function_at_index(i))
    }

    fn by_name(&self) -> &[u32] {
        self.by_name.get_or_init(|| {
            let mut idx: Vec<u32> = (0..self.funcs.len() as u32).collect();
            idx.sort_by(|&a, &b| self.name(&self.funcs[a as usize]).cmp(self.name(&self.funcs[b as usize])));
            idx
        })
    }

    /// The function called `name` (of several, the lowest address).
    pub fn function(&self, name: &str) -> Option<Function<'_>> {
        let idx = self.by_name();
        let i = idx.partition_point(|&j| self.name(&self.funcs[j as usize]) < name);
        let &j = idx.get(i)?;
        (self.name(&self.funcs[j as usize]) == name).then(|| self.function_at_index(j as usize))
    }

    /// The functions whose names start with `prefix`, in name order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Function<'a>> + 'a {
        let idx = self.by_name();
        let i = idx.partition_point(|&j| self.name(&self.funcs[j as usize]) < prefix);
        idx[i..]
            .iter()
            .take_while(move |&&j| self.name(&self.funcs[j as usize]).starts_with(prefix))
            .map(move |&j| self.function_at_index(j as usize))
    }

    /// The kallsyms type of a symbol that is not a function (`d`, `b`...).
    pub fn other_kind(&self, name: &str) -> Option<char> {
        let h = hash(name);
        let i = self.others.partition_point(|&(x, _)| x < h);
        self.others.get(i).filter(|(x, _)| *x == h).map(|&(_, k)| k as char)
    }

    /// The address of a symbol of the kernel image, functions and markers
    /// such as `__entry_text_start` alike.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.funcs.iter().find(|f| f.module == 0 && self.name(f) == name).map(|f| f.addr)
    }

    fn in_module(&self, addr: u64) -> bool {
        self.module_ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// Inside the kernel image's text. Unknown bounds count as inside:
    /// never call real code BPF.
    pub fn in_kernel_text(&self, addr: u64) -> bool {
        self.text.is_empty() || self.text.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// What `addr` is.
    pub fn place(&self, addr: u64) -> Place<'_> {
        if self.funcs.is_empty() {
            return Place::Unknown;
        }
        if !self.in_kernel_text(addr) && !self.in_module(addr) {
            return Place::Bpf;
        }
        let i = self.funcs.partition_point(|f| f.addr <= addr);
        if i == 0 {
            return Place::Unknown;
        }
        // The first of the names at that address.
        let start = self.funcs[i - 1].addr;
        let first = self.funcs[..i].partition_point(|f| f.addr < start);
        let f = &self.funcs[first];
        if addr - f.addr >= MAX_FUNC {
            return Place::Unknown;
        }
        Place::Function { name: self.name(f), off: addr - f.addr, module: self.module(f) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff813a4370 t __pfx_finish_task_switch.isra.0
ffffffff813a4380 t finish_task_switch.isra.0
ffffffff813a4600 T schedule
ffffffff813a4600 T schedule_alias
ffffffff813a4700 W arch_weak_fn
ffffffff81400000 T _etext
ffffffff82000000 d some_data
ffffffffc0a00000 t loop_queue_rq\t[loop]
ffffffffc0a00100 t lo_complete_rq\t[loop]
";
    const MODULES_TEXT: &str = "loop 40960 0 - Live 0xffffffffc0a00000\n";

    fn table() -> KernelSymbols {
        KernelSymbols::parse(std::io::Cursor::new(TEXT), MODULES_TEXT)
    }

    #[test]
    fn addresses_name_functions_modules_and_bpf() {
        let k = table();
        assert_eq!(
            k.place(0xffffffff813a4385),
            Place::Function { name: "finish_task_switch.isra.0", off: 5, module: None }
        );
        // Of two names at one address, the first listed.
        assert_eq!(k.place(0xffffffff813a4601), Place::Function { name: "schedule", off: 1, module: None });
        assert_eq!(
            k.place(0xffffffffc0a00011),
            Place::Function { name: "loop_queue_rq", off: 0x11, module: Some("loop") }
        );
        // Outside kernel text and modules: a BPF program or trampoline.
        assert_eq!(k.place(0xffffffffa0001234), Place::Bpf);
        // Padding before a function is not a function of its own, and the
        // function before it (_stext) is too far away to be its owner.
        assert_eq!(k.place(0xffffffff813a4372), Place::Unknown);
    }

    #[test]
    fn functions_by_name_with_their_ranges() {
        let k = table();
        let f = k.function("schedule").unwrap();
        assert_eq!((f.addr, f.end, f.module), (0xffffffff813a4600, 0xffffffff813a4700, None));
        assert_eq!(k.function("lo_complete_rq").unwrap().module, Some("loop"));
        // Weak functions are functions.
        assert!(k.function("arch_weak_fn").is_some());
        assert!(k.function("__pfx_finish_task_switch.isra.0").is_none());
        assert!(k.function("some_data").is_none());
        assert_eq!(k.other_kind("some_data"), Some('d'));
        assert_eq!(k.other_kind("nothing_at_all"), None);
        assert_eq!(k.address("_stext"), Some(0xffffffff81000000));
        let clones: Vec<&str> = k.with_prefix("finish_task_switch").map(|f| f.name).collect();
        assert_eq!(clones, ["finish_task_switch.isra.0"]);
        assert_eq!(k.with_prefix("sched").map(|f| f.name).collect::<Vec<_>>(), ["schedule", "schedule_alias"]);
    }

    #[test]
    fn ranges_of_a_few_functions_without_the_table() {
        let names = ["finish_task_switch.isra.0", "schedule", "lo_complete_rq", "nothing_at_all"];
        let scanned = scan_ranges(std::io::Cursor::new(TEXT), &names).unwrap();
        let k = table();
        let expected: Vec<Option<Range>> = names.iter().map(|n| k.function(n).map(|f| (f.addr, f.end))).collect();
        assert_eq!(scanned, expected);
        assert_eq!(scanned[1], Some((0xffffffff813a4600, 0xffffffff813a4700)));
        // Out of address order, or hidden: the table decides.
        let unordered = "ffffffff81000010 T b\nffffffff81000000 T a\n";
        assert_eq!(scan_ranges(std::io::Cursor::new(unordered), &["a"]), None);
        assert_eq!(scan_ranges(std::io::Cursor::new("0000000000000000 T schedule\n"), &["schedule"]), None);
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let k = KernelSymbols::parse(std::io::Cursor::new("0000000000000000 T schedule\n"), "");
        assert!(k.error().unwrap().contains("kptr_restrict"), "{:?}", k.error());
        assert_eq!(k.place(0xffffffff81000000), Place::Unknown);
        let k = KernelSymbols::parse(std::io::Cursor::new(""), "");
        assert!(k.error().is_some());
    }

    /// This kernel's own table: a function everyone has, its range
    /// bounded by the next function, and text bounds known.
    #[test]
    fn this_kernel() {
        kdiag_testkit::needs_root("reads kernel addresses from /proc/kallsyms");
        let k = require().unwrap();
        let f = k.function("schedule").expect("schedule in kallsyms");
        assert!(f.end > f.addr && f.end - f.addr < MAX_FUNC, "{f:?}");
        assert_eq!(k.place(f.addr + 4), Place::Function { name: "schedule", off: 4, module: None });
        assert_eq!(k.text.len(), 2, "{:?}", k.text);
        let names = ["schedule", "ep_poll_callback", "sock_def_readable"];
        let scanned = scan_ranges(std::io::BufReader::new(std::fs::File::open(KALLSYMS).unwrap()), &names);
        let expected: Vec<Option<Range>> = names.iter().map(|n| k.function(n).map(|f| (f.addr, f.end))).collect();
        assert_eq!(scanned, Some(expected));
    }
}

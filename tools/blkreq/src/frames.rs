//! Frame names for the tree. BPF programs and trampolines live outside
//! kernel text; when kallsyms does not list them, a symbolizer resolves
//! them to whatever symbol precedes them (on the host, a rodata marker,
//! `__stop_runtime_ptr_USER_PTR_MAX`). Anything outside kernel text and
//! modules is named `[bpf]`, a tracer frame, instead.

use kdiag_shared::symbolize::Frame;

pub const BPF: &str = "[bpf]";

#[derive(Debug, Default)]
pub struct KernelText {
    ranges: Vec<(u64, u64)>,
}

impl KernelText {
    pub fn from_kallsyms(text: &str) -> Self {
        let find = |name: &str| {
            text.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                let (a, _, n) = (f.next()?, f.next()?, f.next()?);
                (n == name).then(|| u64::from_str_radix(a, 16).ok()).flatten()
            })
        };
        let mut ranges = vec![];
        for (s, e) in [("_stext", "_etext"), ("_sinittext", "_einittext")] {
            if let (Some(s), Some(e)) = (find(s), find(e)) {
                if s < e {
                    ranges.push((s, e));
                }
            }
        }
        KernelText { ranges }
    }

    pub fn load() -> Self {
        Self::from_kallsyms(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default())
    }

    /// The name the tree shows for a frame.
    pub fn name(&self, f: &Frame) -> String {
        let in_text = self.ranges.is_empty() || self.ranges.iter().any(|&(s, e)| f.addr >= s && f.addr < e);
        if !in_text && f.module.is_none() {
            return BPF.to_string();
        }
        f.sym.clone().unwrap_or_else(|| format!("{:#x}", f.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_and_modules_is_bpf() {
        let k = KernelText::from_kallsyms(
            "ffffffff81000000 T _stext\nffffffff8220bb08 T _etext\nffffffff83b26734 R __stop_runtime_ptr_USER_PTR_MAX\n",
        );
        let f = |addr, sym: &str, module: Option<&str>| Frame {
            addr,
            sym: Some(sym.into()),
            off: 0,
            module: module.map(String::from),
        };
        assert_eq!(k.name(&f(0xffffffff81234567, "blk_mq_submit_bio", None)), "blk_mq_submit_bio");
        assert_eq!(k.name(&f(0xffffffffa0001234, "__stop_runtime_ptr_USER_PTR_MAX", None)), BPF);
        assert_eq!(k.name(&f(0xffffffffc0a01234, "lo_rw_aio", Some("loop"))), "lo_rw_aio");
    }

    #[test]
    fn this_kernel_has_text_bounds() {
        assert_eq!(KernelText::load().ranges.len(), 2);
    }
}

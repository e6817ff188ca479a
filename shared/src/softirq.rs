//! Softirq vector names of the running kernel (TIMER, NET_RX...), for tools
//! that say which softirq woke a task instead of blaming the task it
//! interrupted. Read from BTF, never from a table for one version only.

use libbpf_rs::btf::{types, Btf, BtfType};

/// Softirq vector names (TIMER, NET_RX...), from the kernel's enum
/// (`HI_SOFTIRQ` = 0 ...), with the long-stable order as a fallback.
pub fn vector_names(btf: Option<&Btf>) -> Vec<String> {
    let from_btf = btf.and_then(|btf| {
        let t = btf.type_by_name::<BtfType>("HI_SOFTIRQ").or_else(|| find_enum_with(btf, "HI_SOFTIRQ"))?;
        let e = types::Enum::try_from(t).ok()?;
        let mut named: Vec<(i64, String)> = e
            .iter()
            .filter_map(|m| {
                let name = m.name?.to_str()?;
                let short = name.strip_suffix("_SOFTIRQ")?;
                Some((m.value, short.to_string()))
            })
            .collect();
        named.sort();
        (!named.is_empty() && named.iter().enumerate().all(|(i, (v, _))| *v == i as i64))
            .then(|| named.into_iter().map(|(_, n)| n).collect())
    });
    from_btf.unwrap_or_else(|| {
        ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    })
}

/// The anonymous enum holding `member`: enumerators are not types, so walk
/// the enums.
fn find_enum_with<'b>(btf: &'b Btf, member: &str) -> Option<BtfType<'b>> {
    (1..)
        .map_while(|id| btf.type_by_id::<BtfType>(libbpf_rs::btf::TypeId::from(id)))
        .filter_map(|t| types::Enum::try_from(t).ok().map(|e| (t, e)))
        .find(|(_, e)| e.iter().any(|m| m.name.and_then(|n| n.to_str()) == Some(member)))
        .map(|(t, _)| t)
}

/// The names for this kernel, reading its BTF.
pub fn this_kernel() -> Vec<String> {
    vector_names(crate::btf::vmlinux().ok().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_vectors() {
        let names = this_kernel();
        assert_eq!(names[1], "TIMER");
        assert_eq!(names[3], "NET_RX");
        assert!(names.len() >= 10, "{names:?}");
    }

    #[test]
    fn without_btf_the_stable_order() {
        let names = vector_names(None);
        assert_eq!(names[0], "HI");
        assert_eq!(names[9], "RCU");
    }
}

//! The kernel's BTF, from one place: `/sys/kernel/btf/vmlinux`, or the
//! file given with `--btf` (or `KDIAG_BTF`) on kernels built without it.
//! The same file serves CO-RE relocation (libbpf's `btf_custom_path`) and
//! every question a tool asks of BTF, so a tool never mixes two kernels'
//! types.

use anyhow::{anyhow, Result};
use libbpf_rs::btf::Btf;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const SYSFS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

static CUSTOM: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The flag of the tools that need BTF.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BtfArgs {
    /// BTF of the running kernel, for kernels without
    /// /sys/kernel/btf/vmlinux (from `pahole -J`, or a BTF archive such as
    /// BTFHub for distribution kernels).
    #[arg(long = "btf", value_name = "FILE", env = "KDIAG_BTF")]
    pub file: Option<PathBuf>,
}

/// Use `file` instead of the kernel's own BTF, for the rest of the run.
/// A file that cannot be read as BTF is a one-line error now, not a
/// verifier failure later.
pub fn use_file(file: Option<&Path>) -> Result<()> {
    if let Some(f) = file {
        std::fs::metadata(f).map_err(|e| anyhow!("--btf {}: {e}", f.display()))?;
        Btf::from_path(f).map_err(|e| anyhow!("--btf {}: not a readable BTF file: {e}", f.display()))?;
    }
    let _ = CUSTOM.set(file.map(Path::to_path_buf));
    Ok(())
}

/// The file given with `--btf`, if any.
pub fn custom() -> Option<&'static Path> {
    CUSTOM.get().and_then(|p| p.as_deref())
}

/// Is there BTF to work with (the kernel's, or a file)?
pub fn available() -> bool {
    custom().is_some() || Path::new(SYSFS_VMLINUX).exists()
}

/// The one-line refusal for a kernel without BTF and no `--btf`.
pub fn missing() -> anyhow::Error {
    anyhow!(
        "this kernel has no BTF ({SYSFS_VMLINUX} is missing; it needs CONFIG_DEBUG_INFO_BTF=y): give one with \
         --btf FILE (made with pahole -J from the kernel's debug info, or taken from a BTF archive such as BTFHub \
         for distribution kernels)"
    )
}

/// The kernel's types. libbpf maps the sysfs file rather than copying it.
pub fn vmlinux() -> Result<Btf<'static>> {
    match custom() {
        Some(f) => Btf::from_path(f).map_err(|e| anyhow!("reading BTF {}: {e}", f.display())),
        None => Btf::from_vmlinux().map_err(|e| anyhow!("reading the kernel's BTF: {e}")),
    }
}

/// Where the kernel's types are, as a path (for readers other than libbpf).
pub fn vmlinux_path() -> &'static Path {
    custom().unwrap_or(Path::new(SYSFS_VMLINUX))
}

/// The arguments tracepoint `name` passes its raw programs, from its
/// `btf_trace_<name>` prototype (after the leading `void *`), each type
/// written with typedefs and qualifiers resolved: `u32`, `s64`, `bool`,
/// `struct zone *`, `enum migrate_mode`. None where this BTF does not type
/// the tracepoint. What a raw program may read is decided from these, not
/// from the kernel's version: distributions backport.
pub fn tracepoint_args(btf: &Btf, name: &str) -> Option<Vec<String>> {
    use libbpf_rs::btf::{types, BtfKind, BtfType};
    let t = btf.type_by_name::<BtfType>(&format!("btf_trace_{name}"))?;
    let proto = types::FuncProto::try_from(t.skip_mods_and_typedefs().next_type()?.skip_mods_and_typedefs()).ok()?;
    let spell = |t: BtfType| -> String {
        let t = t.skip_mods_and_typedefs();
        let name = || t.name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match t.kind() {
            BtfKind::Int => match types::Int::try_from(t) {
                Ok(i) if matches!(i.encoding, types::IntEncoding::Bool) => "bool".into(),
                Ok(i) if matches!(i.encoding, types::IntEncoding::Signed) => format!("s{}", i.bits),
                Ok(i) => format!("u{}", i.bits),
                Err(_) => "int".into(),
            },
            BtfKind::Ptr => match t.next_type().map(|p| p.skip_mods_and_typedefs()) {
                Some(p) if matches!(p.kind(), BtfKind::Struct | BtfKind::Union | BtfKind::Fwd) => {
                    format!("struct {} *", p.name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
                }
                _ => "void *".into(),
            },
            BtfKind::Enum | BtfKind::Enum64 => format!("enum {}", name()),
            k => format!("{k:?}"),
        }
    };
    Some(proto.iter().skip(1).filter_map(|p| btf.type_by_id::<BtfType>(p.ty)).map(spell).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's own prototypes, as /sys/kernel/btf/vmlinux types them
    /// (6.18): typedefs (gfp_t), bools, struct pointers.
    #[test]
    fn tracepoint_arguments_of_this_kernel() {
        let btf = vmlinux().unwrap();
        let args = |n| tracepoint_args(&btf, n);
        assert_eq!(args("mm_page_alloc").unwrap(), ["struct page *", "u32", "u32", "s32"]);
        assert_eq!(args("sched_switch").unwrap()[..3], ["bool", "struct task_struct *", "struct task_struct *"]);
        assert_eq!(args("mm_vmscan_direct_reclaim_end").unwrap(), ["u64"]);
        assert_eq!(args("no_such_tracepoint"), None);
    }
}

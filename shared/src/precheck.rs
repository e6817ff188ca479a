//! Preconditions, checked before anything is loaded so that a missing
//! privilege or kernel feature gives one clear line instead of a verifier
//! dump or a libbpf errno.

use std::path::{Path, PathBuf};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What a tool needs from the machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Kernel BTF, for CO-RE and BTF-typed attach points.
    pub btf: bool,
    /// tracefs, for tracepoint formats and IDs.
    pub tracefs: bool,
}

/// Check privileges and `needs`; mount tracefs if it is needed and absent.
pub fn check(needs: Needs) -> anyhow::Result<()> {
    privileges(effective_caps()?)?;
    if needs.btf && !crate::btf::available() {
        return Err(crate::btf::missing());
    }
    if needs.tracefs {
        tracefs().map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

fn effective_caps() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| anyhow::anyhow!("cannot find CapEff in /proc/self/status"))
}

/// CAP_SYS_ADMIN alone is enough (and the only way before 5.8); otherwise
/// both CAP_BPF and CAP_PERFMON are needed for tracing programs.
fn privileges(cap_eff: u64) -> anyhow::Result<()> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    anyhow::bail!("insufficient privileges: run as root (or with CAP_BPF and CAP_PERFMON)")
}

/// Where tracefs is, mounting it at /sys/kernel/tracing if nothing is.
pub fn tracefs() -> Result<PathBuf, String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {err}"));
    }
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_rules() {
        assert!(privileges(1 << CAP_SYS_ADMIN).is_ok());
        assert!(privileges((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        assert!(privileges(1 << CAP_BPF).is_err());
        assert!(privileges(1 << CAP_PERFMON).is_err());
        let e = privileges(0).unwrap_err().to_string();
        assert!(e.contains("run as root"), "{e}");
    }

    /// The capabilities read from /proc agree with capget(2), the kernel's
    /// other account of them, whoever runs the test.
    #[test]
    fn effective_caps_are_the_kernels() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [Data::default(); 2];
        // SAFETY: version 3 takes one header and two data structs, both ours.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let witness = u64::from(data[0].effective) | u64::from(data[1].effective) << 32;
        assert_eq!(effective_caps().unwrap(), witness);
    }

    #[test]
    fn tracefs_is_found_or_mounted() {
        kdiag_testkit::needs_root("reads tracefs, or mounts it");
        let dir = tracefs().unwrap();
        assert!(dir.join("events/sched/sched_switch").is_dir());
    }
}

//! The little of a Linux userland that a test guest needs: mounts, module
//! loading, sysfs/procfs knobs. PID 1 has no shell and no busybox, so this
//! is done with syscalls.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let src = CString::new(fstype).unwrap();
    let tgt = CString::new(target).unwrap();
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mount what tools and tests expect. Each failure is returned by name so
/// the first result line can say what is missing.
pub fn mount_all() -> Vec<String> {
    let mut failed = Vec::new();
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
        ("tracefs", "/sys/kernel/tracing"),
        ("debugfs", "/sys/kernel/debug"),
        ("bpf", "/sys/fs/bpf"),
    ] {
        if let Err(e) = mount(fstype, target) {
            failed.push(format!("{fstype} on {target}: {e}"));
        }
    }
    failed
}

/// Load a module from a file, as insmod does (finit_module).
pub fn insmod(path: &str, params: &str) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let params = CString::new(params).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: fd is open for the duration of the call; params is NUL-terminated.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn write(path: impl AsRef<Path>, value: &str) -> io::Result<()> {
    let path = path.as_ref();
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

pub fn read(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

pub fn read_u64(path: impl AsRef<Path>) -> io::Result<u64> {
    let s = read(&path)?;
    s.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {s:?}")))
}

pub fn sysctl(name: &str, value: &str) -> io::Result<()> {
    write(format!("/proc/sys/{}", name.replace('.', "/")), value)
}

/// One counter from /proc/vmstat.
pub fn vmstat(name: &str) -> io::Result<u64> {
    let text = fs::read_to_string("/proc/vmstat")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not in /proc/vmstat")))
}

pub fn poweroff() -> ! {
    // SAFETY: plain syscalls; reboot() does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // If power-off failed, exiting PID 1 panics the kernel, and the host
    // runs qemu with -no-reboot and panic=-1, so the guest stops either way.
    std::process::exit(1);
}

/// Parameters of the test module.
pub struct Kmod;

impl Kmod {
    pub const PATH: &'static str = "/lib/modules/kdiag_test.ko";
    const PARAMS: &'static str = "/sys/module/kdiag_test/parameters";

    pub fn set(name: &str, value: impl ToString) -> io::Result<()> {
        write(format!("{}/{name}", Self::PARAMS), &value.to_string())
    }

    pub fn get(name: &str) -> io::Result<u64> {
        read_u64(format!("{}/{name}", Self::PARAMS))
    }

    pub fn loaded() -> bool {
        Path::new(Self::PARAMS).exists()
    }
}

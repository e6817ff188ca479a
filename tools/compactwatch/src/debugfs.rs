//! /sys/kernel/debug/extfrag: the kernel's own fragmentation and unusable
//! indices, read to cross-check ours. debugfs is often not mounted on
//! production boxes; the tool never mounts it itself (a 3 a.m. diagnosis
//! should leave the box as it found it) and reads it only when present.

use std::path::Path;

pub const EXTFRAG: &str = "/sys/kernel/debug/extfrag";

/// The kernel's "Node 0, zone Normal" -> index strings per order, for one file.
pub fn read_index(file: &str) -> Option<Vec<(u32, String, Vec<String>)>> {
    let text = std::fs::read_to_string(Path::new(EXTFRAG).join(file)).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (head, vals) = l.split_once(", zone")?;
                let node = head.trim().strip_prefix("Node")?.trim().parse().ok()?;
                let mut f = vals.split_whitespace();
                let zone = f.next()?.to_string();
                Some((node, zone, f.map(str::to_string).collect()))
            })
            .collect(),
    )
}

/// Run `f` with debugfs mounted, restoring the mount state afterwards.
#[cfg(test)]
pub fn with_mounted<T>(f: impl FnOnce() -> T) -> T {
    let mounted_here = if Path::new(EXTFRAG).exists() {
        false
    } else {
        // SAFETY: valid NUL-terminated strings, null data.
        let rc = unsafe {
            libc::mount(c"none".as_ptr(), c"/sys/kernel/debug".as_ptr(), c"debugfs".as_ptr(), 0, std::ptr::null())
        };
        assert_eq!(rc, 0, "mounting debugfs: {}", std::io::Error::last_os_error());
        true
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    if mounted_here {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c"/sys/kernel/debug".as_ptr(), libc::MNT_DETACH) };
    }
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

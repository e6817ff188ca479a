//! The admission filters, resolved to what the BPF side compares:
//! a kernel dev_t, an op number from this kernel's `enum req_op`, a comm.

use std::path::Path;

/// The kernel's internal dev_t layout (MINORBITS = 20), as `disk_dev()`
/// in the BPF program builds it; not the userspace one.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

pub fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// `vda`, `/dev/loop0` or `7:0` to (major, minor), checked against sysfs
/// so a typo is an error, not a filter that never matches.
pub fn parse_dev(s: &str) -> Result<(u32, u32), String> {
    let unknown = || format!("unknown block device '{s}' (not in /sys/class/block)");
    if let Some((ma, mi)) = s.split_once(':') {
        if let (Ok(ma), Ok(mi)) = (ma.trim().parse::<u32>(), mi.trim().parse::<u32>()) {
            if Path::new(&format!("/sys/dev/block/{ma}:{mi}")).exists() {
                return Ok((ma, mi));
            }
            return Err(format!("unknown block device '{s}' (no {ma}:{mi} in /sys/dev/block)"));
        }
    }
    let name = s.trim().strip_prefix("/dev/").unwrap_or(s.trim());
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(unknown());
    }
    let text = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).map_err(|_| unknown())?;
    let (ma, mi) = text.trim().split_once(':').ok_or_else(unknown)?;
    Ok((ma.parse().map_err(|_| unknown())?, mi.parse().map_err(|_| unknown())?))
}

/// `loop0`, or `7:0` when sysfs does not know the device (any more).
pub fn dev_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("DEVNAME=").map(String::from)))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

pub fn parse_op(s: &str, ops: &[(String, u32)]) -> Result<u32, String> {
    let want = s.trim().to_ascii_lowercase().replace('-', "_");
    ops.iter().find(|(n, _)| *n == want).map(|&(_, v)| v).ok_or_else(|| {
        let names: Vec<&str> = ops.iter().map(|(n, _)| n.as_str()).collect();
        format!("unknown --op '{s}' (this kernel has: {})", names.join(", "))
    })
}

/// The op of a request's cmd_flags (REQ_OP_BITS = 8), named.
pub fn op_name(cmd_flags: u32, ops: &[(String, u32)]) -> String {
    let op = cmd_flags & 0xff;
    ops.iter().find(|(_, v)| *v == op).map(|(n, _)| n.to_ascii_uppercase()).unwrap_or_else(|| format!("OP{op}"))
}

/// A comm as the kernel keeps it: at most 15 bytes and a NUL.
pub fn comm_bytes(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(s.as_bytes().iter().take(15)) {
        *o = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<(String, u32)> {
        vec![("read".into(), 0), ("write".into(), 1), ("flush".into(), 2), ("write_zeroes".into(), 9)]
    }

    #[test]
    fn devices() {
        // The virtio disk every machine here has, by name and by number.
        let vda = parse_dev("vda").unwrap();
        assert_eq!(parse_dev("/dev/vda").unwrap(), vda);
        assert_eq!(parse_dev(&format!("{}:{}", vda.0, vda.1)).unwrap(), vda);
        assert_eq!(dev_name(vda.0, vda.1), "vda");
        assert_eq!(parse_dev("nosuchdisk").unwrap_err(), "unknown block device 'nosuchdisk' (not in /sys/class/block)");
        assert!(parse_dev("250:250").unwrap_err().contains("no 250:250"));
        assert!(parse_dev("../../etc").is_err());
        assert_eq!(split_kernel_dev(kernel_dev(7, 3)), (7, 3));
        assert_eq!(kernel_dev(253, 0), 253 << 20);
    }

    #[test]
    fn ops_by_name() {
        assert_eq!(parse_op("WRITE", &ops()), Ok(1));
        assert_eq!(parse_op("write-zeroes", &ops()), Ok(9));
        assert_eq!(
            parse_op("wirte", &ops()).unwrap_err(),
            "unknown --op 'wirte' (this kernel has: read, write, flush, write_zeroes)"
        );
        assert_eq!(op_name(1 | (1 << 11), &ops()), "WRITE");
        assert_eq!(op_name(42, &ops()), "OP42");
    }

    #[test]
    fn comms_are_cut_like_the_kernel_does() {
        assert_eq!(&comm_bytes("dd")[..3], b"dd\0");
        let long = comm_bytes("a_very_long_process_name");
        assert_eq!(&long[..15], b"a_very_long_pro");
        assert_eq!(long[15], 0);
    }
}

//! errno values with their symbolic names, because "ENOENT" in a banner
//! tells an ops engineer more than "No such file or directory".

use std::fmt;

/// A raw errno value that prints as its symbolic name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn last() -> Self {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The errno behind a libbpf-rs error. libbpf-rs keeps the io::Error
    /// private, but its message always ends in "(os error N)".
    pub fn of_libbpf(err: &libbpf_rs::Error) -> Option<Self> {
        let text = format!("{err:#}");
        let start = text.rfind("(os error ")? + "(os error ".len();
        let end = start + text[start..].find(')')?;
        text[start..end].parse().ok().map(Errno)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match errno_name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// Symbolic name of the errno values kernel interfaces give tracers.
pub fn errno_name(e: i32) -> Option<&'static str> {
    Some(match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        // The kernel-internal ENOTSUPP leaks out of some BPF paths.
        524 => "ENOTSUPP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown() {
        assert_eq!(Errno(libc::ENOENT).to_string(), "ENOENT");
        assert_eq!(Errno(4242).to_string(), "errno 4242");
    }

    #[test]
    fn errno_from_libbpf_error() {
        let e = libbpf_rs::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(Errno::of_libbpf(&e), Some(Errno(libc::EPERM)));
    }
}

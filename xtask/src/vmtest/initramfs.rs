//! A newc cpio archive, the format the kernel unpacks as its initramfs.
//! Written here rather than with cpio(1) so /dev/console can be a device
//! node without mknod on the host: without it the kernel starts /init
//! with no console, and every result line would be lost.

use anyhow::{Context, Result};
use std::path::Path;

#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: reproducible archives
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    pub fn file_from(&mut self, name: &str, mode: u32, src: &Path) -> Result<()> {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.file(name, mode, &data);
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks, as cpio wrote it.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::default();
        c.file("/init", 0o755, b"hi");
        let b = c.finish();
        assert_eq!(&b[..6], b"070701");
        // mode field, then the name right after the 110-byte header
        assert_eq!(&b[14..22], b"000081ed");
        assert_eq!(&b[110..115], b"init\0");
        // header + "init\0" = 115, padded to 116, then the data
        assert_eq!(&b[116..118], b"hi");
        assert_eq!(b.len() % 512, 0);
        let trailer = b.windows(10).position(|w| w == b"TRAILER!!!").unwrap();
        assert_eq!(trailer, 120 + 110);
    }
}

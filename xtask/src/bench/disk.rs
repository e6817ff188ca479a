//! Where blkreq's workload writes: a real block device, so that every
//! write is a block request blkreq can follow. /var/tmp or the working
//! directory when it is on a disk with a request queue (ext4 on vda, xfs
//! on nvme0n1p2); otherwise (tmpfs, overlay, btrfs's anonymous device) a
//! loop device of our own over a sparse file.
//!
//! Nothing is left behind, even if xtask is killed: the file written to is
//! unlinked as soon as it is open, and the loop device's backing file as
//! soon as it is attached, with the device set to detach itself when its
//! last opener (this Disk) closes it.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Disk {
    /// What `blkreq --dev` is given: MAJ:MIN of the disk or partition.
    pub dev: String,
    to: WriteTo,
    /// Keeps the auto-clearing loop device attached while we run.
    _loop: Option<File>,
}

enum WriteTo {
    /// A new file in this directory.
    Dir(PathBuf),
    /// The block device itself (our loop device).
    Device(PathBuf),
}

const LOOP_SIZE: u64 = 64 << 20;

impl Disk {
    pub fn pick() -> Result<Disk> {
        let dirs = [PathBuf::from("/var/tmp"), std::env::current_dir()?];
        for dir in dirs {
            if let Some(dev) = request_queue_dev(&dir) {
                return Ok(Disk { dev, to: WriteTo::Dir(dir), _loop: None });
            }
        }
        Disk::new_loop()
    }

    /// What the writes go to, for the table's caption.
    pub fn describe(&self) -> String {
        match &self.to {
            WriteTo::Dir(d) => format!("a file in {} ({})", d.display(), self.dev),
            WriteTo::Device(d) => format!("{} ({})", d.display(), self.dev),
        }
    }

    /// Open for O_DIRECT writes of at least LOOP_SIZE bytes. A file in a
    /// directory is unlinked at once: it lives only as long as the fd.
    pub fn open_direct(&self) -> std::io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.write(true).custom_flags(libc::O_DIRECT);
        match &self.to {
            WriteTo::Device(path) => opts.open(path),
            WriteTo::Dir(dir) => {
                let path = dir.join(format!("kdiag-bench-{}", std::process::id()));
                let f = opts.create_new(true).open(&path)?;
                std::fs::remove_file(&path)?;
                Ok(f)
            }
        }
    }

    fn new_loop() -> Result<Disk> {
        let file = std::env::temp_dir().join(format!("kdiag-bench-{}.img", std::process::id()));
        File::create(&file)?.set_len(LOOP_SIZE)?;
        let out = Command::new("losetup").args(["-f", "--show", "--direct-io=on"]).arg(&file).output();
        // The device holds the file open; the name is not needed any more.
        let _ = std::fs::remove_file(&file);
        let out = out.context("losetup (util-linux)")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        let held = OpenOptions::new().read(true).write(true).open(&path)?;
        if let Err(e) = set_autoclear(&held) {
            let _ = Command::new("losetup").arg("-d").arg(&path).status();
            return Err(e).context("setting autoclear on the loop device");
        }
        let rdev = held.metadata()?.rdev();
        let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        Ok(Disk { dev, to: WriteTo::Device(path), _loop: Some(held) })
    }
}

/// MAJ:MIN of the filesystem under `dir` if that is a disk or partition
/// whose disk has a blk-mq request queue (what blkreq follows), else None.
fn request_queue_dev(dir: &Path) -> Option<String> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let id = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{id}")).ok()?;
    let disk = if sys.join("partition").exists() { sys.parent()? } else { &sys };
    disk.join("mq").is_dir().then_some(id)
}

/// struct loop_info64 from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

// The request is c_ulong on glibc and c_int on musl: `as _` at the call.
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Make the loop device detach itself at its last close, so that it goes
/// away with this process however that ends.
fn set_autoclear(dev: &File) -> Result<()> {
    // SAFETY: LoopInfo64 is plain data; the ioctls read and write exactly it.
    unsafe {
        let mut info: LoopInfo64 = std::mem::zeroed();
        if libc::ioctl(dev.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        info.flags |= LO_FLAGS_AUTOCLEAR;
        if libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback works and leaves nothing: the loop device detaches when
    /// the Disk is dropped (needs root, like the bench itself).
    #[test]
    fn loop_disk_detaches_itself() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root: sets up a loop device");
        let disk = Disk::new_loop().unwrap();
        let WriteTo::Device(path) = &disk.to else { unreachable!() };
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let backing = format!("/sys/block/{name}/loop/backing_file");
        assert!(Path::new(&backing).exists(), "{backing}");
        assert!(disk.open_direct().is_ok());
        drop(disk);
        // The detach is done by the last close; give udev's probe a moment.
        let gone = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            !Path::new(&backing).exists()
        });
        assert!(gone, "{name} still attached");
    }
}

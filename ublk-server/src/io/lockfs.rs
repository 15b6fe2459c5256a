//! dm's lockfs for a suspend: the file system mounted on the device is
//! frozen (FIFREEZE: its dirty data and journal written, new writes
//! blocked) before the device holds I/O, and thawed after it resumes.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::ioctl::{ioctl, opcode, Updater};

// FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int).
const FIFREEZE: rustix::ioctl::Opcode = opcode::read_write::<libc::c_int>(b'X', 119);
const FITHAW: rustix::ioctl::Opcode = opcode::read_write::<libc::c_int>(b'X', 120);

/// A frozen file system; thawed when dropped.
#[derive(Debug)]
pub struct Frozen {
    dir: File,
    pub mount: PathBuf,
}

/// Freezes the file system mounted on `bdev`, if one is. `Ok(None)`: no
/// mount, or a file system that cannot freeze (nothing to wait for then).
pub fn freeze(bdev: &Path) -> io::Result<Option<Frozen>> {
    let rdev = std::fs::metadata(bdev)?.rdev();
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some(mount) = mount_point(&info, &want) else {
        return Ok(None);
    };
    let dir = File::open(&mount)?;
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE takes (and ignores) one int, which Updater provides.
    match unsafe { ioctl(&dir, Updater::<FIFREEZE, libc::c_int>::new(&mut arg)) } {
        Ok(()) => {
            tracing::info!(mount = %mount.display(), "file system frozen");
            Ok(Some(Frozen { dir, mount }))
        }
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(None),
        Err(e) => Err(io::Error::other(format!(
            "freezing the file system on {}: {e}",
            mount.display()
        ))),
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut arg: libc::c_int = 0;
        // SAFETY: as for FIFREEZE.
        match unsafe { ioctl(&self.dir, Updater::<FITHAW, libc::c_int>::new(&mut arg)) } {
            Ok(()) => tracing::info!(mount = %self.mount.display(), "file system thawed"),
            Err(e) => tracing::error!(mount = %self.mount.display(), "thawing failed: {e}"),
        }
    }
}

/// The first mount point of device `major:minor` in a mountinfo text.
fn mount_point(mountinfo: &str, dev: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split(' ');
        let (_, _, d, _, point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        (d == dev).then(|| PathBuf::from(unescape(point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_of_a_device() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 259:3 / /mnt/with\\040space rw shared:9 - ext4 /dev/ublkb0 rw\n";
        assert_eq!(
            mount_point(info, "259:3"),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(mount_point(info, "8:1"), Some(PathBuf::from("/")));
        assert_eq!(mount_point(info, "7:0"), None);
    }
}

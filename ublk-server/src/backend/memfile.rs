//! Backing files that live in memory (tmpfs, `/dev/shm`): their reads and
//! writes never wait for a device, yet io_uring hands every one of them to
//! an io-wq worker (tmpfs cannot promise not to block). A zero-copy
//! request's piece on such a file is instead moved at once, in the queue
//! thread, by one `pread`/`pwrite` on `/dev/ublkcN` whose buffer is a
//! shared mapping of the file: one kernel copy between the request's pages
//! and the file's, no worker, no second wake-up.
//!
//! Only pieces up to [`MAX_PIECE`]: the kernel's copy to or from user
//! memory costs more per byte than io-wq's page-cache copy, and from about
//! 28 KiB the worker's hop is the cheaper (measured: `docs/perf.md`).
//!
//! Reading a hole through a shared mapping would allocate a page (tmpfs
//! fills holes on fault), which a buffered read does not: a read goes
//! through the mapping only where the file's pages are known to exist
//! (written through it, or found resident by `mincore`); elsewhere, and on
//! any failure (a full tmpfs, a file that shrank), the piece takes the
//! io_uring path, whose errors are the file system's own.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mm::{MapFlags, ProtFlags};

use crate::backend::buffer::cdev_copy;

/// The largest piece moved through the mapping.
pub const MAX_PIECE: u64 = 16 << 10;
const PAGE: u64 = 4096;
/// `mincore` is asked about at most this many pages at once.
const MAX_PAGES: usize = (MAX_PIECE / PAGE) as usize + 1;

/// A shared mapping of the first `len` bytes of a memory file, with a bit
/// per page that says its page exists.
#[derive(Debug)]
pub struct MemFile {
    ptr: *mut u8,
    len: u64,
    writable: bool,
    populated: Vec<AtomicU64>,
}

// SAFETY: the mapping is plain shared memory; every access goes through the
// kernel (pread/pwrite/mincore), and the bitmap is atomic.
unsafe impl Send for MemFile {}
// SAFETY: see above.
unsafe impl Sync for MemFile {}

impl MemFile {
    /// Maps `f` when it is a tmpfs file; `None` for any other file or when
    /// the mapping fails (the io_uring path serves it as before).
    pub fn map(f: &File, len: u64, writable: bool) -> Option<Self> {
        let st = rustix::fs::fstatfs(f).ok()?;
        if st.f_type != libc::TMPFS_MAGIC || len == 0 {
            return None;
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh shared mapping of a file we hold open; nothing in
        // userspace dereferences it (the kernel copies through it).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                MapFlags::SHARED,
                f,
                0,
            )
        }
        .ok()?;
        let pages = len.div_ceil(PAGE);
        let populated = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Some(MemFile {
            ptr: ptr.cast(),
            len,
            writable,
            populated,
        })
    }

    fn pages(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / PAGE..(offset + len).div_ceil(PAGE)
    }

    fn all_populated(&self, pages: std::ops::Range<u64>) -> bool {
        pages.into_iter().all(|p| {
            self.populated[(p / 64) as usize].load(Ordering::Relaxed) & (1 << (p % 64)) != 0
        })
    }

    fn set_populated(&self, pages: std::ops::Range<u64>, on: bool) {
        for p in pages {
            let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
            if on {
                self.populated[w].fetch_or(b, Ordering::Relaxed);
            } else {
                self.populated[w].fetch_and(!b, Ordering::Relaxed);
            }
        }
    }

    /// Whether every page of the range exists in the file (so reading it
    /// through the mapping allocates nothing).
    fn resident(&self, offset: u64, len: u64) -> bool {
        let pages = Self::pages(offset, len);
        if self.all_populated(pages.clone()) {
            return true;
        }
        let start = pages.start * PAGE;
        let span = (pages.end * PAGE).min(self.len) - start;
        let mut vec = [0u8; MAX_PAGES];
        let n = span.div_ceil(PAGE) as usize;
        if n > vec.len() {
            return false;
        }
        // SAFETY: the range lies inside the mapping; `vec` has a byte per
        // page of it.
        let r = unsafe {
            libc::mincore(
                self.ptr.add(start as usize).cast(),
                span as usize,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 || vec[..n].iter().any(|v| v & 1 == 0) {
            return false;
        }
        self.set_populated(pages, true);
        true
    }

    /// After a discard or write-zeroes punched the range: its pages may be
    /// holes again.
    pub fn forget(&self, offset: u64, len: u64) {
        if offset < self.len {
            self.set_populated(Self::pages(offset, len.min(self.len - offset)), false);
        }
    }

    /// Moves `len` bytes between the file at `offset` and the request
    /// (queue `q_id`, tag `tag`, byte `buf_offset`) with one syscall on
    /// `/dev/ublkcN` (`cdev`): `None` when the piece must take the ring.
    pub fn transfer(
        &self,
        cdev: i32,
        (q_id, tag, buf_offset): (u16, u16, u64),
        offset: u64,
        len: u64,
        write: bool,
    ) -> Option<()> {
        let end = offset.checked_add(len)?;
        if len > MAX_PIECE || end > self.len || (write && !self.writable) {
            return None;
        }
        if !write && !self.resident(offset, len) {
            return None;
        }
        let n = len as usize;
        // SAFETY: the queue's /dev/ublkcN is open while it serves; the range
        // is inside the mapping (checked above, writable for writes), and
        // the kernel copies through it: a fault it cannot serve is an
        // error, not a signal.
        let r = unsafe {
            cdev_copy(
                cdev,
                (q_id, tag, buf_offset),
                self.ptr.add(offset as usize),
                n,
                write,
            )
        };
        match r {
            Ok(done) if done == n => {
                if write {
                    self.set_populated(Self::pages(offset, len), true);
                }
                Some(())
            }
            // A fault the kernel could not serve (a full tmpfs, a file that
            // shrank) is EFAULT or a short copy here: the ring gets the file
            // system's own error.
            _ => None,
        }
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length, used by nothing now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;

    /// A file in /dev/shm (tmpfs) of `len` bytes, sparse; `None` where
    /// /dev/shm is not tmpfs.
    fn shm_file(tag: &str, len: u64) -> Option<(File, std::path::PathBuf)> {
        let p =
            std::path::PathBuf::from(format!("/dev/shm/rdm-memfile-{tag}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .ok()?;
        f.set_len(len).unwrap();
        let st = rustix::fs::fstatfs(&f).unwrap();
        (st.f_type == libc::TMPFS_MAGIC).then_some((f, p))
    }

    /// Stands in for /dev/ublkcN: a sparse file written and read at the
    /// request's user-copy positions.
    fn request_file() -> File {
        tempfile::tempfile().unwrap()
    }

    #[test]
    fn only_tmpfs_files_are_mapped() {
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        assert!(MemFile::map(f.as_file(), 1 << 20, true).is_none());
    }

    #[test]
    fn holes_take_the_ring_and_stay_holes() {
        let Some((f, p)) = shm_file("holes", 1 << 20) else {
            return;
        };
        let m = MemFile::map(&f, 1 << 20, true).unwrap();
        let req = request_file();
        let cdev = std::os::fd::AsRawFd::as_raw_fd(&req);
        assert!(m.transfer(cdev, (0, 1, 0), 65536, 4096, false).is_none());
        assert_eq!(f.metadata().unwrap().blocks(), 0, "a hole was filled");

        // Written through the file: now the mapping serves it.
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        f.write_all_at(&data, 65536).unwrap();
        assert!(m.transfer(cdev, (0, 1, 512), 65536, 8192, false).is_some());
        let pos = libublk::io::UblkIOCtx::ublk_user_copy_pos(0, 1, 512);
        let mut got = vec![0u8; 8192];
        req.read_exact_at(&mut got, pos).unwrap();
        assert_eq!(got, data);

        // A WRITE request: from the request into the file.
        let new: Vec<u8> = (0..4096u32).map(|i| (i * 3 + 1) as u8).collect();
        let pos = libublk::io::UblkIOCtx::ublk_user_copy_pos(0, 2, 0);
        req.write_all_at(&new, pos).unwrap();
        assert!(m.transfer(cdev, (0, 2, 0), 200 << 10, 4096, true).is_some());
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 200 << 10).unwrap();
        assert_eq!(back, new);

        // Punched: a hole again, and the mapping no longer reads it.
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            65536,
            8192,
        )
        .unwrap();
        m.forget(65536, 8192);
        assert!(m.transfer(cdev, (0, 1, 0), 65536, 4096, false).is_none());

        // Too large, past the mapping, or read-only: the ring.
        assert!(m
            .transfer(cdev, (0, 1, 0), 0, MAX_PIECE + 4096, true)
            .is_none());
        assert!(m
            .transfer(cdev, (0, 1, 0), (1 << 20) - 4096, 8192, true)
            .is_none());
        let ro = MemFile::map(&f, 1 << 20, false).unwrap();
        assert!(ro.transfer(cdev, (0, 2, 0), 0, 4096, true).is_none());
        std::fs::remove_file(p).unwrap();
    }
}

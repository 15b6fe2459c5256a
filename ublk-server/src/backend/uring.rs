//! Backing files on the queue's io_uring: each device is a fixed file, and
//! every piece one READ_FIXED/WRITE_FIXED (or fsync/fallocate) on it.

use std::alloc::Layout;

use io_uring::{opcode, types};
use rdm_targets::DevIdx;

use super::memfile::MemFile;
use super::{Backend, Transfer};
use crate::backend::buffer::Buffer;
use crate::backend::ring::{transfer_all, Ring};

/// A backing device as the rings see it.
#[derive(Debug, Clone, Copy)]
pub struct Backing {
    /// Fixed-file index on every queue ring.
    pub fixed: u32,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

#[derive(Debug)]
pub struct UringBackend {
    pub files: Vec<Backing>,
    /// Per device: its mapping when it is a memory file.
    pub mem: Vec<Option<MemFile>>,
}

const EIO: i32 = -libc::EIO;
/// Read-modify-write unit of [`Backend::set_byte`]: O_DIRECT needs whole,
/// aligned logical blocks.
const BLOCK: usize = 4096;

impl UringBackend {
    /// Files only: no memory-file mappings.
    pub fn new(files: Vec<Backing>) -> Self {
        let mem = files.iter().map(|_| None).collect();
        UringBackend { files, mem }
    }

    fn fd(&self, dev: DevIdx) -> types::Fixed {
        types::Fixed(self.files[dev].fixed)
    }
}

impl Backend for UringBackend {
    /// A small zero-copy piece on a memory file, moved in this thread
    /// ([`MemFile`]); FUA writes take the ring, which syncs them.
    fn transfer_now(&self, t: Transfer, buf: Buffer) -> Option<Result<(), i32>> {
        let Buffer::Kernel { index, cdev, q_id } = buf else {
            return None;
        };
        let m = self.mem.get(t.dev)?.as_ref()?;
        if cdev < 0 || t.fua {
            return None;
        }
        m.transfer(
            cdev,
            (q_id, index, t.buf_offset),
            t.dev_offset,
            t.len,
            t.write,
        )
        .map(Ok)
    }

    /// End of file is an error: the table was checked against the file
    /// size, so the file shrank.
    async fn transfer<R: Ring>(&self, ring: &R, t: Transfer, buf: Buffer) -> Result<(), i32> {
        if matches!(buf, Buffer::UserCopy { .. }) {
            return Err(EIO);
        }
        let fd = self.fd(t.dev);
        transfer_all(ring, t.len, |done| {
            let addr = buf.addr(t.buf_offset + done);
            let len = (t.len - done) as u32;
            let dsync = if t.fua { libc::RWF_DSYNC } else { 0 };
            if !buf.is_fixed() {
                // A target's own memory.
                return if t.write {
                    opcode::Write::new(fd, addr as *const u8, len)
                        .offset(t.dev_offset + done)
                        .rw_flags(dsync)
                        .build()
                } else {
                    opcode::Read::new(fd, addr as *mut u8, len)
                        .offset(t.dev_offset + done)
                        .build()
                };
            }
            if t.write {
                opcode::WriteFixed::new(fd, addr as *const u8, len, buf.index())
                    .offset(t.dev_offset + done)
                    .rw_flags(dsync)
                    .build()
            } else {
                opcode::ReadFixed::new(fd, addr as *mut u8, len, buf.index())
                    .offset(t.dev_offset + done)
                    .build()
            }
        })
        .await
    }

    async fn flush<R: Ring>(&self, ring: &R, dev: DevIdx) -> Result<(), i32> {
        let sqe = opcode::Fsync::new(self.fd(dev))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        match ring.submit(sqe).await {
            r if r < 0 => Err(r),
            _ => Ok(()),
        }
    }

    /// DISCARD punches holes; WRITE_ZEROES zeroes the range, punching
    /// instead where the file system refuses ZERO_RANGE (tmpfs).
    async fn zero_range<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<(), i32> {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let fallocate = |mode| {
            opcode::Fallocate::new(self.fd(dev), len)
                .offset(offset)
                .mode(mode)
                .build()
        };
        let mut r = ring
            .submit(fallocate(if discard { punch } else { zero }))
            .await;
        if !discard && (r == -libc::EOPNOTSUPP || r == -libc::EINVAL) {
            r = ring.submit(fallocate(punch)).await;
        }
        if r < 0 {
            return Err(r);
        }
        if let Some(Some(m)) = self.mem.get(dev) {
            m.forget(offset, len);
        }
        Ok(())
    }

    /// Read-modify-write of the aligned block holding the byte, written
    /// with RWF_DSYNC.
    async fn set_byte<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        value: u8,
    ) -> Result<(), i32> {
        let block = AlignedBlock::new().ok_or(-libc::ENOMEM)?;
        let start = offset & !(BLOCK as u64 - 1);
        let fd = self.fd(dev);
        transfer_all(ring, BLOCK as u64, |done| {
            // SAFETY: `done < BLOCK`; the block outlives the SQE.
            let at = unsafe { block.ptr.add(done as usize) };
            opcode::Read::new(fd, at, (BLOCK as u64 - done) as u32)
                .offset(start + done)
                .build()
        })
        .await?;
        // SAFETY: `offset - start < BLOCK`; no SQE uses the block now.
        unsafe { *block.ptr.add((offset - start) as usize) = value };
        transfer_all(ring, BLOCK as u64, |done| {
            // SAFETY: as above.
            let at = unsafe { block.ptr.add(done as usize) };
            opcode::Write::new(fd, at, (BLOCK as u64 - done) as u32)
                .offset(start + done)
                .rw_flags(libc::RWF_DSYNC)
                .build()
        })
        .await
    }

    fn access(&self, dev: DevIdx) -> &'static str {
        if matches!(self.mem.get(dev), Some(Some(_))) {
            "mapped"
        } else if self.files[dev].direct {
            "o_direct"
        } else {
            "buffered"
        }
    }
}

/// One O_DIRECT-aligned block, freed on drop.
struct AlignedBlock {
    ptr: *mut u8,
}

impl AlignedBlock {
    fn layout() -> Layout {
        Layout::from_size_align(BLOCK, BLOCK).expect("valid layout")
    }

    fn new() -> Option<Self> {
        // SAFETY: a non-zero-sized layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        (!ptr.is_null()).then_some(AlignedBlock { ptr })
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout()) };
    }
}

//! Where a request's data lives, and the two things the handler itself does
//! to it: fill a range with zeros (reads of `zero` pieces) and replace one
//! byte (dm-flakey's read corruption).

use io_uring::{opcode, types};

use crate::backend::ring::{transfer_all, Ring};

#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    /// Copy mode: our per-tag buffer at `base`, registered as io_uring
    /// fixed buffer `index`, addressed by virtual address.
    User { base: *mut u8, index: u16 },
    /// Zero copy: the request's own pages, registered by the kernel as
    /// fixed buffer `index`; addressed by byte offset from 0. Not mapped in
    /// userspace: only I/O can fill it, or a `pread`/`pwrite` on the
    /// queue's `/dev/ublkcN` (`cdev`, -1 if none) at
    /// `ublk_user_copy_pos(q_id, index, offset)`.
    Kernel { index: u16, cdev: i32, q_id: u16 },
    /// `UBLK_F_USER_COPY`: the data moves by READ/WRITE on the
    /// `/dev/ublkcN` fixed file `cdev_fixed` at
    /// `ublk_user_copy_pos(q_id, tag, offset)`, or by `pread`/`pwrite` on
    /// its descriptor `cdev` (-1: only the ring).
    UserCopy {
        cdev_fixed: u32,
        cdev: i32,
        q_id: u16,
        tag: u16,
    },
    /// A serving target's own memory (not a registered buffer: plain
    /// READ/WRITE), valid until its I/O completes.
    Mem { base: *mut u8 },
}

/// Fixed files that fill kernel buffers: `/dev/zero`, and a file whose
/// byte `i` is `i` (one byte of it sets one byte of a buffer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Aux {
    pub zero: Option<u32>,
    pub bytes: Option<u32>,
}

/// Byte `i` is `i`: the source of single-byte writes into buffers.
pub static BYTES: [u8; 256] = {
    let mut a = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// Zeros written out for zero pieces in USER_COPY mode.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

const EIO: i32 = -libc::EIO;

impl Buffer {
    /// The SQE address of byte `offset` (fixed-buffer I/O).
    pub fn addr(&self, offset: u64) -> u64 {
        match *self {
            Buffer::User { base, .. } | Buffer::Mem { base } => base as u64 + offset,
            _ => offset,
        }
    }

    /// The fixed-buffer index (`None`: not a registered buffer).
    pub fn index(&self) -> u16 {
        match *self {
            Buffer::User { index, .. } | Buffer::Kernel { index, .. } => index,
            Buffer::UserCopy { tag, .. } => tag,
            Buffer::Mem { .. } => u16::MAX,
        }
    }

    /// Whether I/O reaches it as a registered (fixed) buffer.
    pub fn is_fixed(&self) -> bool {
        matches!(self, Buffer::User { .. } | Buffer::Kernel { .. })
    }

    fn user_copy_pos(q_id: u16, tag: u16, offset: u64) -> u64 {
        libublk::io::UblkIOCtx::ublk_user_copy_pos(q_id, tag, offset as u32)
    }

    /// Zeros in `len` bytes at `offset`.
    pub async fn fill_zero<R: Ring>(
        &self,
        ring: &R,
        aux: Aux,
        offset: u64,
        len: u64,
    ) -> Result<(), i32> {
        match *self {
            Buffer::User { base, .. } | Buffer::Mem { base } => {
                // SAFETY: the range lies inside the request, and the request
                // fits the tag's buffer (max_sectors ≤ buffer size).
                unsafe { std::ptr::write_bytes(base.add(offset as usize), 0, len as usize) };
                Ok(())
            }
            // Kernel pages: let /dev/zero's read fill them.
            Buffer::Kernel { index, .. } => {
                let zero = aux.zero.ok_or(EIO)?;
                transfer_all(ring, len, |done| {
                    opcode::ReadFixed::new(
                        types::Fixed(zero),
                        (offset + done) as *mut u8,
                        (len - done) as u32,
                        index,
                    )
                    .build()
                })
                .await
            }
            Buffer::UserCopy {
                cdev_fixed,
                q_id,
                tag,
                ..
            } => {
                transfer_all(ring, len, |done| {
                    let n = (len - done).min(ZEROS.len() as u64) as u32;
                    opcode::Write::new(types::Fixed(cdev_fixed), ZEROS.as_ptr(), n)
                        .offset(Self::user_copy_pos(q_id, tag, offset + done))
                        .build()
                })
                .await
            }
        }
    }

    /// Sets byte `offset` to `value`.
    pub async fn set_byte<R: Ring>(
        &self,
        ring: &R,
        aux: Aux,
        offset: u64,
        value: u8,
    ) -> Result<(), i32> {
        match *self {
            Buffer::User { base, .. } | Buffer::Mem { base } => {
                // SAFETY: as in fill_zero.
                unsafe { *base.add(offset as usize) = value };
                Ok(())
            }
            Buffer::Kernel { index, .. } => {
                let bytes = aux.bytes.ok_or(EIO)?;
                transfer_all(ring, 1, |_| {
                    opcode::ReadFixed::new(types::Fixed(bytes), offset as *mut u8, 1, index)
                        .offset(u64::from(value))
                        .build()
                })
                .await
            }
            Buffer::UserCopy {
                cdev_fixed,
                q_id,
                tag,
                ..
            } => {
                transfer_all(ring, 1, |_| {
                    opcode::Write::new(types::Fixed(cdev_fixed), &BYTES[value as usize], 1)
                        .offset(Self::user_copy_pos(q_id, tag, offset))
                        .build()
                })
                .await
            }
        }
    }
}

/// One copy by `pread`/`pwrite` on a queue's `/dev/ublkcN` (`cdev`) between
/// the pages of request `(q_id, tag)`, from byte `buf_offset`, and `n`
/// bytes of our memory at `at`: a WRITE request's data into memory
/// (`into_mem`, a `pread`), or memory into a READ request (a `pwrite`).
/// Returns what the syscall did: a short count or an error is the
/// caller's to handle.
///
/// # Safety
/// `cdev` must be open for the call, and `at..at + n` mapped (writable
/// when `into_mem`) and touched by nothing else meanwhile.
pub(crate) unsafe fn cdev_copy(
    cdev: i32,
    (q_id, tag, buf_offset): (u16, u16, u64),
    at: *mut u8,
    n: usize,
    into_mem: bool,
) -> rustix::io::Result<usize> {
    // SAFETY: the caller's contract.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(cdev) };
    let pos = Buffer::user_copy_pos(q_id, tag, buf_offset);
    if into_mem {
        // SAFETY: the caller's contract.
        rustix::io::pread(fd, unsafe { std::slice::from_raw_parts_mut(at, n) }, pos)
    } else {
        // SAFETY: the caller's contract.
        rustix::io::pwrite(fd, unsafe { std::slice::from_raw_parts(at, n) }, pos)
    }
}

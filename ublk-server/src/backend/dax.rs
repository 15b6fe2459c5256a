//! Persistent-memory mappings as the backend: READ copies out of the
//! mapping, WRITE copies in and makes the stores durable (cache-line
//! write-back + fence) before completing, FLUSH fences (MAP_SYNC already
//! made the metadata of written blocks durable) and syncs files whose
//! metadata a discard changed, DISCARD / WRITE_ZEROES punch the range
//! (fs-dax) or zero it (device-dax).
//!
//! Request data moves either through the per-tag buffer the ublk driver
//! copies into ([`Buffer::User`], one extra copy) or, with
//! `UBLK_F_USER_COPY`, directly between the request's pages and the mapping
//! by one READ/WRITE on `/dev/ublkcN` whose buffer *is* the mapped range
//! ([`Buffer::UserCopy`]).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{opcode, types};
use rdm_dax::{DaxError, DaxKind, DaxMapping};
use rdm_targets::{DevIdx, Table};

use super::{needed_bytes, Backend, Transfer};
use crate::backend::buffer::{cdev_copy, Buffer};
use crate::backend::dax_path::{DaxDecision, DaxDecisionError};
use crate::backend::ring::{transfer_all, Ring};

const EIO: i32 = -libc::EIO;

/// Serves pieces from persistent-memory mappings; shared by all queues.
#[derive(Debug)]
pub struct DaxBackend {
    /// One mapping per [`Table::devices`] entry.
    pub maps: Vec<DaxMapping>,
    /// Per device: a discard changed file metadata that the next FLUSH must
    /// make durable (fdatasync).
    dirty_meta: Vec<AtomicBool>,
}

impl DaxBackend {
    /// Maps every device of an active decision (`decision` must come from
    /// [`crate::backend::dax_path::decide`] on this `table`).
    pub fn open(table: &Table, decision: &DaxDecision) -> Result<Self, DaxDecisionError> {
        if !decision.active || decision.devices.len() != table.devices().len() {
            return Err(DaxDecisionError::NotActive);
        }
        let mut maps = Vec::with_capacity(decision.devices.len());
        for d in &decision.devices {
            let info = d.info.as_ref().ok_or(DaxDecisionError::NotActive)?;
            maps.push(DaxMapping::map(info).map_err(DaxDecisionError::Probe)?);
        }
        for ((m, need), p) in maps.iter().zip(needed_bytes(table)).zip(table.devices()) {
            if m.len() < need {
                return Err(DaxDecisionError::TooSmall {
                    path: p.clone(),
                    have: m.len(),
                    need,
                });
            }
        }
        Ok(Self::from_mappings(maps))
    }

    /// A backend over ready mappings (tests and benchmarks: e.g.
    /// [`DaxMapping::map_plain_for_tests`]), one per table device.
    pub fn from_mappings(maps: Vec<DaxMapping>) -> Self {
        let dirty_meta = maps.iter().map(|_| AtomicBool::new(false)).collect();
        DaxBackend { maps, dirty_meta }
    }
}

impl DaxBackend {
    /// Outside any request (a suspend): a fence, and an fdatasync of every
    /// fs-dax file whose metadata a discard changed.
    pub fn sync(&self) -> Result<(), (DevIdx, std::io::Error)> {
        for (i, m) in self.maps.iter().enumerate() {
            m.fence();
            if self.dirty_meta[i].swap(false, Ordering::AcqRel) {
                if let Err(e) = rustix::fs::fdatasync(m) {
                    self.dirty_meta[i].store(true, Ordering::Release);
                    return Err((i, e.into()));
                }
            }
        }
        Ok(())
    }
}

impl Backend for DaxBackend {
    fn transfer_now(&self, t: Transfer, buf: Buffer) -> Option<Result<(), i32>> {
        match buf {
            Buffer::User { base, .. } | Buffer::Mem { base } => {
                Some(copy_user(&self.maps[t.dev], t, base))
            }
            Buffer::UserCopy {
                cdev, q_id, tag, ..
            } if cdev >= 0 => Some(user_copy_now(&self.maps[t.dev], t, (cdev, q_id, tag))),
            _ => None,
        }
    }

    async fn transfer<R: Ring>(&self, ring: &R, t: Transfer, buf: Buffer) -> Result<(), i32> {
        let m = &self.maps[t.dev];
        match buf {
            // Plain memory copies: nothing to wait for.
            Buffer::User { base, .. } | Buffer::Mem { base } => copy_user(m, t, base),
            Buffer::UserCopy {
                cdev_fixed,
                q_id,
                tag,
                ..
            } => user_copy(ring, m, t, (cdev_fixed, q_id, tag)).await,
            // The DAX path always runs in copy or USER_COPY mode.
            Buffer::Kernel { .. } => Err(EIO),
        }
    }

    /// Every store was already written back and fenced when its request
    /// completed, and MAP_SYNC made the metadata of the blocks it touched
    /// durable at fault time. What remains: a fence, and an fdatasync of
    /// fs-dax files whose metadata a discard changed since.
    async fn flush<R: Ring>(&self, ring: &R, dev: DevIdx) -> Result<(), i32> {
        let m = &self.maps[dev];
        m.fence();
        if self.dirty_meta[dev].swap(false, Ordering::AcqRel) {
            let sqe = opcode::Fsync::new(types::Fd(m.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            let r = ring.submit(sqe).await;
            if r < 0 {
                self.dirty_meta[dev].store(true, Ordering::Release);
                return Err(r);
            }
        }
        Ok(())
    }

    /// After either the range reads zeros. On fs-dax (and plain test files)
    /// the range is punched on the ring (`PUNCH_HOLE | KEEP_SIZE`; the
    /// kernel unmaps the pages from our mapping) and the next FLUSH syncs
    /// the metadata; on device-dax, or where punching is refused, the bytes
    /// are zeroed durably.
    async fn zero_range<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        off: u64,
        len: u64,
        _discard: bool,
    ) -> Result<(), i32> {
        let m = &self.maps[dev];
        let in_range = off.checked_add(len).is_some_and(|e| e <= m.len());
        if !in_range || !m.is_writable() {
            return Err(EIO);
        }
        if m.kind() != Some(DaxKind::DevDax) {
            let sqe = opcode::Fallocate::new(types::Fd(m.as_raw_fd()), len)
                .offset(off)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build();
            let r = ring.submit(sqe).await;
            if r == 0 {
                self.dirty_meta[dev].store(true, Ordering::Release);
                return Ok(());
            }
            if r != -libc::EOPNOTSUPP {
                return Err(r);
            }
        }
        m.fill_zero(off, len).map_err(dax_errno)
    }

    async fn set_byte<R: Ring>(
        &self,
        _ring: &R,
        dev: DevIdx,
        offset: u64,
        value: u8,
    ) -> Result<(), i32> {
        self.maps[dev].write_at(offset, &[value]).map_err(dax_errno)
    }

    fn access(&self, _dev: DevIdx) -> &'static str {
        "dax"
    }
}

fn dax_errno(e: DaxError) -> i32 {
    match e {
        DaxError::Io { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
        DaxError::ReadOnly { .. } => -libc::EROFS,
        _ => EIO,
    }
}

/// Copy mode: one piece between the per-tag buffer and the mapping.
fn copy_user(m: &DaxMapping, t: Transfer, base: *mut u8) -> Result<(), i32> {
    let len = t.len as usize;
    // SAFETY: the piece lies inside the request, and `base` is valid for the
    // request's bytes with nothing else touching it while it is served
    // (Buffer::User's contract); the slices live only for this call.
    let at = unsafe { base.add(t.buf_offset as usize) };
    if t.write {
        // SAFETY: see above.
        let src = unsafe { std::slice::from_raw_parts(at, len) };
        m.write_at(t.dev_offset, src).map_err(dax_errno)
    } else {
        // SAFETY: see above.
        let dst = unsafe { std::slice::from_raw_parts_mut(at, len) };
        m.read_at(t.dev_offset, dst).map_err(dax_errno)
    }
}

/// USER_COPY without the ring: one `pread`/`pwrite` on /dev/ublkcN whose
/// buffer is the mapped range itself, so the kernel's one copy moves the
/// data between the request's pages and persistent memory.
fn user_copy_now(
    m: &DaxMapping,
    t: Transfer,
    (cdev, q_id, tag): (i32, u16, u16),
) -> Result<(), i32> {
    let len = t.len as usize;
    // SAFETY: as in `user_copy`; the syscalls complete before returning.
    let base = unsafe { piece_ptr(m, t) }?;
    let mut done = 0usize;
    let mut retries = 0;
    while done < len {
        // SAFETY: the queue's /dev/ublkcN is open while it serves; `done <
        // len`, inside the checked range (writable for writes).
        let r = unsafe {
            cdev_copy(
                cdev,
                (q_id, tag, t.buf_offset + done as u64),
                base.add(done),
                len - done,
                t.write,
            )
        };
        match r {
            Ok(0) => return Err(EIO),
            Ok(n) => done += n,
            Err(e)
                if (e == rustix::io::Errno::INTR || e == rustix::io::Errno::AGAIN)
                    && retries < 8 =>
            {
                retries += 1
            }
            Err(e) => return Err(-e.raw_os_error()),
        }
    }
    if t.write {
        m.persist(t.dev_offset, len as u64).map_err(dax_errno)?;
    }
    Ok(())
}

/// The mapped bytes of piece `t`, bounds checked (and, for a write,
/// writability).
///
/// # Safety
/// The pointer is valid only while `m` is alive and unchanged; the caller
/// persists what the kernel stores through it before completing.
unsafe fn piece_ptr(m: &DaxMapping, t: Transfer) -> Result<*mut u8, i32> {
    let len = t.len as usize;
    // SAFETY: the caller's contract.
    unsafe {
        if t.write {
            m.as_mut_ptr_range(t.dev_offset, len)
        } else {
            m.as_ptr_range(t.dev_offset, len).map(|p| p as *mut u8)
        }
    }
    .map_err(dax_errno)
}

/// USER_COPY: one piece between the request (through /dev/ublkcN) and the
/// mapped range itself. A WRITE request is a READ from the cdev into the
/// mapping followed by a persist; a READ request a WRITE from the mapping.
async fn user_copy<R: Ring>(
    ring: &R,
    m: &DaxMapping,
    t: Transfer,
    (cdev, q_id, tag): (u32, u16, u16),
) -> Result<(), i32> {
    let len = t.len as usize;
    // Bounds (and, for writes, writability) checked once for the piece.
    // SAFETY: the pointer is used only by the SQEs below, which complete
    // before this function returns, while `m` (owned by the backend, which
    // outlives every request) is alive; the kernel's stores are persisted
    // below before the request completes.
    let base = unsafe { piece_ptr(m, t) }?;
    transfer_all(ring, t.len, |done| {
        let pos =
            libublk::io::UblkIOCtx::ublk_user_copy_pos(q_id, tag, (t.buf_offset + done) as u32);
        let n = (t.len - done) as u32;
        // SAFETY: `done < len`, inside the checked range.
        let at = unsafe { base.add(done as usize) };
        if t.write {
            opcode::Read::new(types::Fixed(cdev), at, n)
                .offset(pos)
                .build()
        } else {
            opcode::Write::new(types::Fixed(cdev), at, n)
                .offset(pos)
                .build()
        }
    })
    .await?;
    if t.write {
        m.persist(t.dev_offset, len as u64).map_err(dax_errno)?;
    }
    Ok(())
}

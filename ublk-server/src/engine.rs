//! The I/O core: one ublk request → the table's pieces → one SQE per piece
//! on the queue's ring → one result once every piece has completed.
//!
//! Read top to bottom: [`Engine::handle`] decodes the operation,
//! `rdm_targets::Table::map` splits it, and each piece becomes a
//! READ_FIXED/WRITE_FIXED (or fsync/fallocate) on a fixed backing file.

use io_uring::{opcode, types};
use rdm_targets::{Piece, PieceKind, Table};

use crate::ring::{first_error, join_all, transfer_all, Ring};
use crate::stats::{Counters, Stats};

/// ublk operation codes (`UBLK_IO_OP_*` in ublk_cmd.h).
pub mod op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const FLUSH: u32 = 2;
    pub const DISCARD: u32 = 3;
    pub const WRITE_ZEROES: u32 = 5;
    /// `UBLK_IO_F_FUA`: the write must be durable before completion.
    pub const F_FUA: u32 = 1 << 13;
}

/// One request as the ublk driver describes it (`ublksrv_io_desc`).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub op_flags: u32,
    pub sector: u64,
    pub nr_sectors: u32,
}

impl Request {
    pub fn op(&self) -> u32 {
        self.op_flags & 0xff
    }

    /// The ublk result of serving this request: bytes for READ/WRITE, 0 for
    /// the others, or the -errno.
    pub fn outcome(&self, res: Result<(), i32>) -> i32 {
        match res {
            Ok(()) if matches!(self.op(), op::READ | op::WRITE) => {
                (u64::from(self.nr_sectors) << 9) as i32
            }
            Ok(()) => 0,
            Err(e) => {
                tracing::debug!(req = ?self, err = e, "request failed");
                e
            }
        }
    }

    /// Maps the request through `table` (`ranges`: merged per device, for
    /// DISCARD/WRITE_ZEROES). A request beyond the device or touching an
    /// error segment fails with EIO before anything of it is done.
    pub fn pieces(&self, table: &Table, stats: &Stats, ranges: bool) -> Result<Vec<Piece>, i32> {
        let mut pieces = Vec::with_capacity(4);
        let (sector, nr) = (self.sector, u64::from(self.nr_sectors));
        let mapped = if ranges {
            table.map_range(sector, nr, &mut pieces)
        } else {
            table.map(sector, nr, &mut pieces)
        };
        mapped.map_err(|_| EIO)?;
        if let Some(p) = pieces.iter().find(|p| p.kind == PieceKind::Error) {
            Counters::add(&stats.segments[p.segment].errors, 1);
            return Err(EIO);
        }
        Ok(pieces)
    }
}

/// Where a request's data lives, as an io_uring fixed buffer.
#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    /// Copy mode: our per-tag buffer at `base`, registered as `index`.
    /// Fixed-buffer I/O addresses it by virtual address.
    User { base: *mut u8, index: u16 },
    /// Zero copy: the request's own pages, registered by the kernel as
    /// `index`; addressed by byte offset from 0.
    Kernel { index: u16 },
}

impl Buffer {
    fn addr(&self, offset: u64) -> u64 {
        match *self {
            Buffer::User { base, .. } => base as u64 + offset,
            Buffer::Kernel { .. } => offset,
        }
    }

    fn index(&self) -> u16 {
        match *self {
            Buffer::User { index, .. } | Buffer::Kernel { index } => index,
        }
    }
}

/// A backing device as the rings see it.
#[derive(Debug, Clone, Copy)]
pub struct Backing {
    /// Fixed-file index on every queue ring.
    pub fixed: u32,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

/// Everything a queue needs to serve requests; shared by all queues.
#[derive(Debug)]
pub struct Engine {
    pub table: Table,
    pub backing: Vec<Backing>,
    /// Fixed-file index of /dev/zero, used to zero-fill kernel buffers in
    /// zero-copy mode (they are not mapped in userspace).
    pub zero_file: Option<u32>,
    pub stats: Stats,
}

const EIO: i32 = -libc::EIO;

impl Engine {
    pub fn new(table: Table, backing: Vec<Backing>, zero_file: Option<u32>) -> Self {
        let stats = Stats::new(table.segments().len(), table.devices().len());
        Engine {
            table,
            backing,
            zero_file,
            stats,
        }
    }

    /// Serves one request; returns the ublk result (bytes for read/write,
    /// 0 for the others, or -errno). Never a silent partial success: the
    /// result is the first error of any piece.
    pub async fn handle<R: Ring>(&self, ring: &R, req: Request, buf: Buffer) -> i32 {
        let res = match req.op() {
            op::READ | op::WRITE => self.read_write(ring, req, buf).await,
            op::FLUSH => self.flush(ring).await,
            op::DISCARD | op::WRITE_ZEROES => self.range_op(ring, req).await,
            _ => Err(-libc::EOPNOTSUPP),
        };
        req.outcome(res)
    }

    async fn read_write<R: Ring>(&self, ring: &R, req: Request, buf: Buffer) -> Result<(), i32> {
        let write = req.op() == op::WRITE;
        let fua = write && req.op_flags & op::F_FUA != 0;
        let pieces = req.pieces(&self.table, &self.stats, false)?;
        // Most requests are one piece: no join, no boxed futures.
        if let [p] = pieces.as_slice() {
            return self.rw_piece(ring, p, write, fua, buf).await;
        }
        let results = join_all(
            pieces
                .iter()
                .map(|p| self.rw_piece(ring, p, write, fua, buf))
                .collect(),
        )
        .await;
        first_error(results)
    }

    async fn rw_piece<R: Ring>(
        &self,
        ring: &R,
        p: &Piece,
        write: bool,
        fua: bool,
        buf: Buffer,
    ) -> Result<(), i32> {
        let seg = &self.stats.segments[p.segment];
        let (c_ops, c_bytes) = if write {
            (&seg.writes, &seg.write_bytes)
        } else {
            (&seg.reads, &seg.read_bytes)
        };
        Counters::add(c_ops, 1);
        Counters::add(c_bytes, p.len);
        let res = match p.kind {
            PieceKind::Io { dev, dev_offset } => {
                let d = &self.stats.devices[dev];
                Counters::add(if write { &d.writes } else { &d.reads }, 1);
                Counters::add(if write { &d.write_bytes } else { &d.read_bytes }, p.len);
                let fd = types::Fixed(self.backing[dev].fixed);
                let r = transfer(ring, fd, dev_offset, p, write, fua, buf).await;
                if r.is_err() {
                    Counters::add(&d.errors, 1);
                }
                r
            }
            PieceKind::Zero if write => Ok(()),
            PieceKind::Zero => self.zero_fill(ring, p, buf).await,
            PieceKind::Error => Err(EIO),
        };
        if res.is_err() {
            Counters::add(&seg.errors, 1);
        }
        res
    }

    /// Zeros for a read of a zero segment.
    async fn zero_fill<R: Ring>(&self, ring: &R, p: &Piece, buf: Buffer) -> Result<(), i32> {
        match (buf, self.zero_file) {
            (Buffer::User { base, .. }, _) => {
                // SAFETY: the piece lies inside the request, and the request
                // fits the tag's buffer (max_sectors ≤ buffer size).
                unsafe {
                    std::ptr::write_bytes(base.add(p.buf_offset as usize), 0, p.len as usize)
                };
                Ok(())
            }
            // Kernel pages: let /dev/zero's read fill them.
            (Buffer::Kernel { .. }, Some(z)) => {
                transfer(ring, types::Fixed(z), 0, p, false, false, buf).await
            }
            (Buffer::Kernel { .. }, None) => Err(EIO),
        }
    }

    /// FLUSH: fdatasync every backing file, all at once.
    async fn flush<R: Ring>(&self, ring: &R) -> Result<(), i32> {
        let results = join_all(
            self.backing
                .iter()
                .enumerate()
                .map(|(i, b)| async move {
                    let d = &self.stats.devices[i];
                    Counters::add(&d.flushes, 1);
                    let sqe = opcode::Fsync::new(types::Fixed(b.fixed))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build();
                    let r = ring.submit(sqe).await;
                    if r < 0 {
                        Counters::add(&d.errors, 1);
                        return Err(r);
                    }
                    Ok(())
                })
                .collect(),
        )
        .await;
        first_error(results)
    }

    /// DISCARD punches holes; WRITE_ZEROES zeroes the range, punching
    /// instead where the file system refuses ZERO_RANGE (tmpfs).
    async fn range_op<R: Ring>(&self, ring: &R, req: Request) -> Result<(), i32> {
        let discard = req.op() == op::DISCARD;
        let pieces = req.pieces(&self.table, &self.stats, true)?;
        let results = join_all(
            pieces
                .iter()
                .map(|p| async move {
                    let seg = &self.stats.segments[p.segment];
                    seg.count_range_op(discard);
                    // Zero segments have nothing to discard (error
                    // segments were refused before anything was done).
                    let PieceKind::Io { dev, dev_offset } = p.kind else {
                        return Ok(());
                    };
                    let d = &self.stats.devices[dev];
                    d.count_range_op(discard);
                    let fd = types::Fixed(self.backing[dev].fixed);
                    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
                    let fallocate = |mode| {
                        opcode::Fallocate::new(fd, p.len)
                            .offset(dev_offset)
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
                        Counters::add(&d.errors, 1);
                        Counters::add(&seg.errors, 1);
                        return Err(r);
                    }
                    Ok(())
                })
                .collect(),
        )
        .await;
        first_error(results)
    }
}

/// Moves one piece between the request buffer and a fixed file; end of
/// file is an error (the table was checked against the file size, so the
/// file shrank).
async fn transfer<R: Ring>(
    ring: &R,
    fd: types::Fixed,
    dev_offset: u64,
    p: &Piece,
    write: bool,
    fua: bool,
    buf: Buffer,
) -> Result<(), i32> {
    transfer_all(ring, p.len, |done| {
        let addr = buf.addr(p.buf_offset + done);
        let len = (p.len - done) as u32;
        if write {
            opcode::WriteFixed::new(fd, addr as *const u8, len, buf.index())
                .offset(dev_offset + done)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build()
        } else {
            opcode::ReadFixed::new(fd, addr as *mut u8, len, buf.index())
                .offset(dev_offset + done)
                .build()
        }
    })
    .await
}

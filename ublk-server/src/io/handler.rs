//! The request handler: one ublk request → the table's pieces → each piece
//! served by the backend (a remap) or by its target itself (through a
//! [`TargetIo`]) → one result once every piece has completed.
//!
//! Read top to bottom: [`Handler::handle`] decodes the operation,
//! `rdm_targets::Table::map` splits it, and each piece goes to the
//! [`Backend`] (io_uring files or DAX mappings) on the queue's ring, or to
//! its target's `serve`.

use std::future::Future;
use std::pin::Pin;

use rdm_targets::{IoCtx, Op, Piece, PieceKind, Table};

use crate::backend::buffer::{Aux, Buffer};
use crate::backend::ring::{first_error, join_all, Ring};
use crate::backend::{Backend, Transfer};
use crate::io::request::{Request, EIO};
use crate::services::stats::{Counters, Stats};
use crate::services::target_io::TargetIo;

/// Everything a queue needs to serve requests; shared by all queues.
#[derive(Debug)]
pub struct Handler<B> {
    pub table: Table,
    pub backend: B,
    pub stats: Stats,
    pub aux: Aux,
    /// The device's logical block size, for serving targets.
    pub block_size: u32,
    /// Each backing device's size in bytes, for serving targets.
    pub device_bytes: Vec<u64>,
}

impl<B: Backend> Handler<B> {
    pub fn new(table: Table, backend: B, aux: Aux) -> Self {
        let stats = Stats::new(table.segments().len(), table.devices().len());
        let device_bytes = vec![0; table.devices().len()];
        Handler {
            table,
            backend,
            stats,
            aux,
            block_size: 512,
            device_bytes,
        }
    }

    /// The I/O context a target gets on `ring`: for a request (`buf`), or
    /// for a job (`None`; `current`: whether its table is still the ring's).
    pub(crate) fn target_io<'h, R: Ring>(
        &'h self,
        ring: &'h R,
        buf: Option<Buffer>,
        current: Option<&'h dyn Fn() -> bool>,
    ) -> TargetIo<'h, B, R> {
        TargetIo {
            backend: &self.backend,
            stats: &self.stats,
            aux: self.aux,
            block_size: self.block_size,
            device_bytes: &self.device_bytes,
            ring,
            buf,
            current,
        }
    }

    /// Serves one request; returns the ublk result (bytes for read/write,
    /// 0 for the others, or -errno). Never a silent partial success: the
    /// result is the first error of any piece.
    pub async fn handle<R: Ring>(&self, ring: &R, req: Request, buf: Buffer) -> i32 {
        let res = match req.target_op() {
            Some(o @ (Op::Read | Op::Write)) => self.read_write(ring, req, o, buf).await,
            Some(Op::Flush) => self.flush(ring, req).await,
            Some(o @ (Op::Discard | Op::WriteZeroes)) => self.range_op(ring, req, o).await,
            None => Err(-libc::EOPNOTSUPP),
        };
        req.outcome(res)
    }

    async fn read_write<R: Ring>(
        &self,
        ring: &R,
        req: Request,
        o: Op,
        buf: Buffer,
    ) -> Result<(), i32> {
        let pieces = req.pieces(o, &self.table, &self.stats)?;
        let (write, fua) = (o == Op::Write, req.fua());
        // Most requests are one piece: no join, no boxed futures.
        if let [p] = &pieces[..] {
            if let Some(r) = self.piece_now(p, write, fua, buf) {
                return r;
            }
            return self.rw_piece(ring, req, p, buf).await;
        }
        let results = join_all(
            pieces
                .iter()
                .map(|p| async move {
                    match self.piece_now(p, write, fua, buf) {
                        Some(r) => r,
                        None => self.rw_piece(ring, req, p, buf).await,
                    }
                })
                .collect(),
        )
        .await;
        first_error(results)
    }

    /// Serves a remapped piece at once when the backend can (a memory
    /// copy: DAX, or a memory file); `None` (nothing done) otherwise.
    fn piece_now(&self, p: &Piece, write: bool, fua: bool, buf: Buffer) -> Option<Result<(), i32>> {
        let PieceKind::Io { dev, dev_offset } = p.kind else {
            return None;
        };
        let t = Transfer::of(p, dev, dev_offset, write, fua);
        let r = self.backend.transfer_now(t, buf)?;
        let (seg, d) = (&self.stats.segments[p.segment], &self.stats.devices[dev]);
        seg.count_rw(write, p.len);
        d.count_rw(write, p.len);
        if r.is_err() {
            Counters::add(&seg.errors, 1);
            Counters::add(&d.errors, 1);
        }
        Some(r)
    }

    async fn rw_piece<R: Ring>(
        &self,
        ring: &R,
        req: Request,
        p: &Piece,
        buf: Buffer,
    ) -> Result<(), i32> {
        let (write, fua) = (req.op() == crate::io::request::op::WRITE, req.fua());
        let seg = &self.stats.segments[p.segment];
        seg.count_rw(write, p.len);
        let res = match p.kind {
            PieceKind::Io { dev, dev_offset } => {
                let d = &self.stats.devices[dev];
                d.count_rw(write, p.len);
                let t = Transfer::of(p, dev, dev_offset, write, fua);
                let r = self.backend.transfer(ring, t, buf).await;
                if r.is_err() {
                    Counters::add(&d.errors, 1);
                }
                r
            }
            PieceKind::Zero if !write => buf.fill_zero(ring, self.aux, p.buf_offset, p.len).await,
            PieceKind::Zero | PieceKind::Drop => Ok(()),
            PieceKind::Error => Err(EIO),
            PieceKind::Serve { .. } => self.serve(ring, req, p, Some(buf)).await,
        };
        if res.is_err() {
            Counters::add(&seg.errors, 1);
        }
        res
    }

    /// A piece its target serves itself (`DM_MAPIO_SUBMITTED`): the
    /// target's future, with an I/O context on this ring.
    async fn serve<R: Ring>(
        &self,
        ring: &R,
        req: Request,
        p: &Piece,
        buf: Option<Buffer>,
    ) -> Result<(), i32> {
        let o = req.target_op().ok_or(EIO)?;
        let (target, io) = self.table.served(p, o, req.opf(o)).ok_or(EIO)?;
        let ctx = self.target_io(ring, buf, None);
        target.serve(io, &ctx).await
    }

    /// FLUSH: each segment's target says what to flush (by default every
    /// device it uses): every device named is flushed once, all at once,
    /// beside the flushes that targets serve themselves.
    async fn flush<R: Ring>(&self, ring: &R, req: Request) -> Result<(), i32> {
        let mut pieces = Vec::new();
        self.table.flush(&mut pieces);
        if let Some(p) = pieces.iter().find(|p| p.kind == PieceKind::Error) {
            Counters::add(&self.stats.segments[p.segment].errors, 1);
            return Err(EIO);
        }
        let mut devs: Vec<usize> = Vec::with_capacity(self.table.devices().len());
        for p in &pieces {
            if let PieceKind::Io { dev, .. } = p.kind {
                if !devs.contains(&dev) {
                    devs.push(dev);
                }
            }
        }
        let served = pieces
            .iter()
            .filter(|p| matches!(p.kind, PieceKind::Serve { .. }));
        // The targets' own flush, counted as theirs is.
        let ctx = self.target_io(ring, None, None);
        let flushes = devs.iter().map(|&dev| ctx.flush(dev));
        let results = join_all(
            flushes
                .chain(served.map(|p| -> Pin<Box<dyn Future<Output = _> + '_>> {
                    Box::pin(self.serve(ring, req, p, None))
                }))
                .collect(),
        )
        .await;
        first_error(results)
    }

    /// DISCARD and WRITE_ZEROES: the merged ranges of each device.
    async fn range_op<R: Ring>(&self, ring: &R, req: Request, o: Op) -> Result<(), i32> {
        let discard = o == Op::Discard;
        let pieces = req.pieces(o, &self.table, &self.stats)?;
        let results = join_all(
            pieces
                .iter()
                .map(|p| async move {
                    let seg = &self.stats.segments[p.segment];
                    seg.count_range_op(discard);
                    if let PieceKind::Serve { .. } = p.kind {
                        let r = self.serve(ring, req, p, None).await;
                        if r.is_err() {
                            Counters::add(&seg.errors, 1);
                        }
                        return r;
                    }
                    // Zero segments have nothing to discard, dropped writes
                    // nothing to do (error pieces were refused up front).
                    let PieceKind::Io { dev, dev_offset } = p.kind else {
                        return Ok(());
                    };
                    let d = &self.stats.devices[dev];
                    d.count_range_op(discard);
                    let r = self
                        .backend
                        .zero_range(ring, dev, dev_offset, p.len, discard)
                        .await;
                    if r.is_err() {
                        Counters::add(&d.errors, 1);
                        Counters::add(&seg.errors, 1);
                    }
                    r
                })
                .collect(),
        )
        .await;
        first_error(results)
    }
}

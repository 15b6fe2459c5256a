//! The request handler: one ublk request → the table's pieces → each piece
//! held (dm-delay), served by the backend, corrupted if its target says so
//! (dm-flakey) → one result once every piece has completed.
//!
//! Read top to bottom: [`Handler::handle`] decodes the operation,
//! `rdm_targets::Table::map` splits it, and each piece goes to the
//! [`Backend`] (io_uring files or DAX mappings) on the queue's ring.

use io_uring::types;
use rdm_targets::{Op, Piece, PieceKind, Table};

use crate::backend::{Backend, Transfer};
use crate::buffer::{Aux, Buffer};
use crate::request::{Request, EIO};
use crate::ring::{first_error, join_all, Ring};
use crate::stats::{Counters, Stats};

/// Everything a queue needs to serve requests; shared by all queues.
#[derive(Debug)]
pub struct Handler<B> {
    pub table: Table,
    pub backend: B,
    pub stats: Stats,
    pub aux: Aux,
}

impl<B: Backend> Handler<B> {
    pub fn new(table: Table, backend: B, aux: Aux) -> Self {
        let stats = Stats::new(table.segments().len(), table.devices().len());
        Handler {
            table,
            backend,
            stats,
            aux,
        }
    }

    /// Serves one request; returns the ublk result (bytes for read/write,
    /// 0 for the others, or -errno). Never a silent partial success: the
    /// result is the first error of any piece.
    pub async fn handle<R: Ring>(&self, ring: &R, req: Request, buf: Buffer) -> i32 {
        let res = match req.target_op() {
            Some(o @ (Op::Read | Op::Write)) => self.read_write(ring, req, o, buf).await,
            Some(Op::Flush) => self.flush(ring).await,
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
            return self.rw_piece(ring, p, write, fua, buf).await;
        }
        let results = join_all(
            pieces
                .iter()
                .map(|p| async move {
                    match self.piece_now(p, write, fua, buf) {
                        Some(r) => r,
                        None => self.rw_piece(ring, p, write, fua, buf).await,
                    }
                })
                .collect(),
        )
        .await;
        first_error(results)
    }

    /// Serves a piece at once when the backend can (a memory copy: DAX, or
    /// a memory file) and it needs no holding or corrupting; `None`
    /// (nothing done) otherwise.
    fn piece_now(&self, p: &Piece, write: bool, fua: bool, buf: Buffer) -> Option<Result<(), i32>> {
        let PieceKind::Io { dev, dev_offset } = p.kind else {
            return None;
        };
        if p.delay_ms != 0 || p.corrupt != [None, None] {
            return None;
        }
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
        p: &Piece,
        write: bool,
        fua: bool,
        buf: Buffer,
    ) -> Result<(), i32> {
        if p.delay_ms > 0 {
            self.hold(ring, p).await;
        }
        let seg = &self.stats.segments[p.segment];
        seg.count_rw(write, p.len);
        let res = match p.kind {
            PieceKind::Io { dev, dev_offset } => {
                let d = &self.stats.devices[dev];
                d.count_rw(write, p.len);
                let t = Transfer::of(p, dev, dev_offset, write, fua);
                let mut r = self.backend.transfer(ring, t, buf).await;
                if r.is_ok() && p.corrupt[0].is_some() {
                    r = self.corrupt(ring, p, t, buf).await;
                }
                if r.is_err() {
                    Counters::add(&d.errors, 1);
                }
                r
            }
            PieceKind::Zero if !write => buf.fill_zero(ring, self.aux, p.buf_offset, p.len).await,
            PieceKind::Zero | PieceKind::Drop => Ok(()),
            PieceKind::Error => Err(EIO),
        };
        if res.is_err() {
            Counters::add(&seg.errors, 1);
        }
        res
    }

    /// dm-flakey's corruption of a served piece: a written byte on the
    /// device (the caller's data stays intact), a read byte in the buffer.
    async fn corrupt<R: Ring>(
        &self,
        ring: &R,
        p: &Piece,
        t: Transfer,
        buf: Buffer,
    ) -> Result<(), i32> {
        for c in p.corrupt.iter().flatten() {
            if t.write {
                let at = t.dev_offset + c.at;
                self.backend.set_byte(ring, t.dev, at, c.value).await?;
            } else {
                let at = p.buf_offset + c.at;
                buf.set_byte(ring, self.aux, at, c.value).await?;
            }
        }
        Ok(())
    }

    /// dm-delay: waits out the piece's delay on the ring (an io_uring
    /// timeout), so the queue keeps serving everything else meanwhile.
    async fn hold<R: Ring>(&self, ring: &R, p: &Piece) {
        let target = &self.table.segments()[p.segment].target;
        target.held(p.delay_class, true);
        let ts = types::Timespec::new()
            .sec(u64::from(p.delay_ms / 1000))
            .nsec((p.delay_ms % 1000) * 1_000_000);
        // -ETIME is the timeout expiring, as it should.
        let _ = ring
            .submit(io_uring::opcode::Timeout::new(&ts).build())
            .await;
        target.held(p.delay_class, false);
    }

    /// FLUSH: each segment's target says what to flush (by default every
    /// device it uses); held pieces wait first, then every device named is
    /// flushed once, all at once.
    async fn flush<R: Ring>(&self, ring: &R) -> Result<(), i32> {
        let mut pieces = Vec::new();
        self.table.flush(&mut pieces);
        if let Some(p) = pieces.iter().find(|p| p.kind == PieceKind::Error) {
            Counters::add(&self.stats.segments[p.segment].errors, 1);
            return Err(EIO);
        }
        let held: Vec<_> = pieces.iter().filter(|p| p.delay_ms > 0).collect();
        join_all(held.iter().map(|p| self.hold(ring, p)).collect()).await;
        let mut devs: Vec<usize> = Vec::with_capacity(self.table.devices().len());
        for p in &pieces {
            if let PieceKind::Io { dev, .. } = p.kind {
                if !devs.contains(&dev) {
                    devs.push(dev);
                }
            }
        }
        let results = join_all(
            devs.iter()
                .map(|&dev| async move {
                    let d = &self.stats.devices[dev];
                    Counters::add(&d.flushes, 1);
                    let r = self.backend.flush(ring, dev).await;
                    if r.is_err() {
                        Counters::add(&d.errors, 1);
                    }
                    r
                })
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
                    if p.delay_ms > 0 {
                        self.hold(ring, p).await;
                    }
                    let seg = &self.stats.segments[p.segment];
                    seg.count_range_op(discard);
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

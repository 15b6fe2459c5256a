//! One ublk request as the driver describes it (`ublksrv_io_desc`), what it
//! asks the table for, and the result the driver gets back.

use libublk::sys;
use std::cell::RefCell;

use rdm_targets::{Op, Piece, PieceKind, Table};

use crate::services::stats::{Counters, Stats};

/// ublk operation codes and flags (libublk's `UBLK_IO_OP_*`, `UBLK_IO_F_*`).
pub mod op {
    use libublk::sys;
    pub const READ: u32 = sys::UBLK_IO_OP_READ;
    pub const WRITE: u32 = sys::UBLK_IO_OP_WRITE;
    pub const FLUSH: u32 = sys::UBLK_IO_OP_FLUSH;
    pub const DISCARD: u32 = sys::UBLK_IO_OP_DISCARD;
    pub const WRITE_ZEROES: u32 = sys::UBLK_IO_OP_WRITE_ZEROES;
    /// The write must be durable before completion.
    pub const F_FUA: u32 = sys::UBLK_IO_F_FUA;
}

pub(crate) const EIO: i32 = -libc::EIO;

#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub op_flags: u32,
    pub sector: u64,
    pub nr_sectors: u32,
}

/// The kernel's `REQ_*` bits for the ublk flags a server sees (for
/// dm-flakey's `corrupt_bio_byte` flag matching). Bits ublk does not pass
/// on (REQ_SYNC, REQ_IDLE…) never match.
const REQ_BITS: [(u32, u32); 5] = [
    (sys::UBLK_IO_F_FAILFAST_DEV, 1 << 8),
    (sys::UBLK_IO_F_FAILFAST_TRANSPORT, 1 << 9),
    (sys::UBLK_IO_F_FAILFAST_DRIVER, 1 << 10),
    (sys::UBLK_IO_F_META, 1 << 12),
    (sys::UBLK_IO_F_FUA, 1 << 17),
];

impl Request {
    pub fn op(&self) -> u32 {
        self.op_flags & 0xff
    }

    /// The operation as targets see it; `None` for what rdm does not serve.
    pub fn target_op(&self) -> Option<Op> {
        Some(match self.op() {
            op::READ => Op::Read,
            op::WRITE => Op::Write,
            op::FLUSH => Op::Flush,
            op::DISCARD => Op::Discard,
            op::WRITE_ZEROES => Op::WriteZeroes,
            _ => return None,
        })
    }

    pub fn fua(&self) -> bool {
        self.op() == op::WRITE && self.op_flags & op::F_FUA != 0
    }

    /// The request as the kernel's `bi_opf`.
    pub fn opf(&self, o: Op) -> u32 {
        REQ_BITS
            .iter()
            .filter(|(ublk, _)| self.op_flags & ublk != 0)
            .fold(o.req_op(), |acc, (_, req)| acc | req)
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
    /// DISCARD/WRITE_ZEROES). A request beyond the device, or with a piece
    /// that fails, fails with EIO before anything of it is done.
    pub fn pieces(&self, o: Op, table: &Table, stats: &Stats) -> Result<PieceBuf, i32> {
        let mut pieces = PieceBuf::take();
        let (sector, nr, opf) = (self.sector, u64::from(self.nr_sectors), self.opf(o));
        let mapped = if matches!(o, Op::Discard | Op::WriteZeroes) {
            table.map_range(o, opf, sector, nr, &mut pieces.0)
        } else {
            table.map(o, opf, sector, nr, &mut pieces.0)
        };
        mapped.map_err(|_| EIO)?;
        if let Some(p) = pieces.iter().find(|p| p.kind == PieceKind::Error) {
            Counters::add(&stats.segments[p.segment].errors, 1);
            return Err(EIO);
        }
        Ok(pieces)
    }
}

thread_local! {
    /// Piece vectors of finished requests, for the next ones on this queue
    /// thread: mapping a request allocates nothing once the queue is warm.
    static POOL: RefCell<Vec<Vec<Piece>>> = const { RefCell::new(Vec::new()) };
}

/// A request's pieces, in a vector that goes back to this thread's pool.
#[derive(Debug)]
pub struct PieceBuf(Vec<Piece>);

impl PieceBuf {
    fn take() -> PieceBuf {
        let v = POOL.with(|p| p.borrow_mut().pop());
        PieceBuf(v.unwrap_or_else(|| Vec::with_capacity(8)))
    }
}

impl std::ops::Deref for PieceBuf {
    type Target = [Piece];
    fn deref(&self) -> &[Piece] {
        &self.0
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        v.clear();
        // Bounded by the requests a thread has in flight at once.
        POOL.with(|p| p.borrow_mut().push(v));
    }
}

//! What every target type provides, as the kernel's `struct target_type`
//! does (`ctr`, `map`, `status`, `iterate_devices`, `io_hints`,
//! `direct_access`). The table parser, validator and mapper call only this
//! trait; each target lives in its own file under `targets/`.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::serve::{ready, IoCtx, IoFuture, EIO};

/// Index of a backing device in [`crate::Table::devices`].
pub type DevIdx = usize;

/// What a request does, as a target sees it (`bio_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Op {
    /// `bio_data_dir() == WRITE`: everything but a read.
    pub fn is_write(self) -> bool {
        self != Op::Read
    }

    /// The kernel's `REQ_OP_*` number, the low bits of `bi_opf`.
    pub fn req_op(self) -> u32 {
        match self {
            Op::Read => 0,
            Op::Write => 1,
            Op::Flush => 2,
            Op::Discard => 3,
            Op::WriteZeroes => 9,
        }
    }
}

/// The part of a request that falls inside one segment, handed to that
/// segment's target.
#[derive(Debug, Clone, Copy)]
pub struct Io {
    pub op: Op,
    /// The request as the kernel's `bi_opf` (operation and the flags a ublk
    /// server can see: FUA, META, FAILFAST_*), for flag matching.
    pub opf: u32,
    /// Index of the segment.
    pub segment: usize,
    /// First sector, relative to the segment's start.
    pub offset: u64,
    /// Sectors.
    pub len: u64,
    /// Byte offset of this part inside the request's data buffer.
    pub buf_offset: u64,
}

impl Io {
    /// A piece covering this whole part.
    pub fn piece(&self, kind: PieceKind) -> Piece {
        Piece {
            segment: self.segment,
            buf_offset: self.buf_offset,
            len: self.len << crate::SECTOR_SHIFT,
            kind,
        }
    }

    /// A piece this segment's target serves itself.
    pub fn served(&self) -> Piece {
        self.piece(PieceKind::Serve {
            offset: self.offset,
        })
    }
}

/// A contiguous part of a request served by one target in one way.
///
/// Pieces come out in request order and together cover the request exactly
/// once: piece `k+1` starts at `buf_offset + len` of piece `k`. (FLUSH
/// pieces have no data: `len` 0.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Piece {
    /// Index of the segment (table line) this piece belongs to.
    pub segment: usize,
    /// Byte offset of this piece inside the request's data buffer.
    pub buf_offset: u64,
    /// Length in bytes (a multiple of 512).
    pub len: u64,
    pub kind: PieceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PieceKind {
    /// The request's operation on `len` bytes of backing device `dev` at
    /// byte `dev_offset` (for FLUSH: flush `dev`).
    Io { dev: DevIdx, dev_offset: u64 },
    /// Reads see zeros, writes are dropped.
    Zero,
    /// Completes successfully without doing anything (a dropped write).
    Drop,
    /// The piece fails with EIO.
    Error,
    /// `DM_MAPIO_SUBMITTED`: the segment's target serves this part itself
    /// ([`Target::serve`]), from sector `offset` of the segment (for a
    /// FLUSH: the segment's flush, `len` 0).
    Serve { offset: u64 },
}

/// A range of a backing device that a segment uses (`iterate_devices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub segment: usize,
    pub dev: DevIdx,
    /// First backing sector.
    pub start: u64,
    /// Sectors.
    pub len: u64,
    /// Whether writes to the segment land here (the overlap check only
    /// concerns written ranges).
    pub written: bool,
}

/// Facts for a target's status line (`STATUSTYPE_INFO`).
pub struct StatusCtx<'a> {
    /// Display name of each device, indexed by [`DevIdx`].
    pub names: &'a [String],
    /// I/O errors seen on each device so far, indexed by [`DevIdx`].
    pub dev_errors: &'a [u64],
}

/// One target instance: the context its constructor built from the table
/// arguments, with whatever state it needs at run time.
pub trait Target: fmt::Debug + Send + Sync {
    /// The word a table names it with.
    fn name(&self) -> &'static str;

    /// Maps one part of a request (READ, WRITE, DISCARD or WRITE_ZEROES),
    /// appending its pieces to `out`.
    fn map(&self, io: &Io, out: &mut Vec<Piece>);

    /// FLUSH: what a flush does to this segment. By default every device it
    /// uses is flushed at once.
    fn flush(&self, segment: usize, out: &mut Vec<Piece>) {
        let mut seen: Vec<DevIdx> = Vec::new();
        for e in self.extents(segment) {
            if !seen.contains(&e.dev) {
                seen.push(e.dev);
                out.push(flush_piece(segment, e.dev));
            }
        }
    }

    /// Serves a part that [`Target::map`] or [`Target::flush`] returned as
    /// [`PieceKind::Serve`], through the queue's I/O context; the request
    /// completes when every piece's future has (dm's `map` returning
    /// `DM_MAPIO_SUBMITTED`, then `bio_endio`).
    fn serve<'a>(&'a self, _io: Io, _ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        ready(Err(EIO))
    }

    /// Whether [`Target::map`] may return [`PieceKind::Serve`] pieces, or the
    /// target has hooks or messages: the daemon then runs the hooks
    /// around suspend and resume.
    fn serves(&self) -> bool {
        false
    }

    /// `dmsetup message <sector> <argv…>` addressed to this segment: the
    /// target's answer (printed, may be empty), or its refusal.
    fn message<'a>(&'a self, _argv: &'a [String], _ctx: &'a dyn IoCtx) -> MessageFuture<'a> {
        Box::pin(std::future::ready(Err(
            "Target type does not support messages".to_string(),
        )))
    }

    /// Before new I/O is held for a suspend (dm's `presuspend`): a target
    /// flushes or stops what it does in the background. Runs on a queue
    /// thread, as a job.
    fn presuspend<'a>(&'a self, _ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        ready(Ok(()))
    }

    /// After the I/O in flight has finished (dm's `postsuspend`).
    fn postsuspend<'a>(&'a self, _ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        ready(Ok(()))
    }

    /// Once the device serves again after a resume, a create or a
    /// recovery (dm's `resume`): a target restarts its background work
    /// from what is on its devices.
    fn resume<'a>(&'a self, _ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        ready(Ok(()))
    }

    /// The last I/O before the table goes away (a remove, or a resume that
    /// swaps in another table): what dm targets do in `dtr`.
    fn stop<'a>(&'a self, _ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        ready(Ok(()))
    }

    /// The arguments after the type word, as `dmsetup table` prints them
    /// (`STATUSTYPE_TABLE`), with `devs[i]` for device `i`.
    fn table_args(&self, devs: &[String]) -> String;

    /// The status after the type word, as `dmsetup status` prints it
    /// (`STATUSTYPE_INFO`).
    fn status(&self, _ctx: &StatusCtx<'_>) -> String {
        String::new()
    }

    /// The backing ranges this segment uses.
    fn extents(&self, segment: usize) -> Vec<Extent>;

    /// `io_hints`: (io_min, io_opt) in sectors, if the target has a layout.
    fn io_hints(&self) -> Option<(u64, u64)> {
        None
    }

    /// Whether the target can pass DAX through (has `direct_access`).
    fn supports_dax(&self) -> bool;

    /// Values (sectors) that must be multiples of the logical block size.
    fn aligned(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A FLUSH piece for `dev`.
pub fn flush_piece(segment: usize, dev: DevIdx) -> Piece {
    flush_as(segment, PieceKind::Io { dev, dev_offset: 0 })
}

/// A FLUSH piece of kind `kind` (a target's own flush: [`PieceKind::Serve`]).
pub fn flush_as(segment: usize, kind: PieceKind) -> Piece {
    Piece {
        segment,
        buf_offset: 0,
        len: 0,
        kind,
    }
}

/// A message's answer or refusal (the kernel's `DMEMIT` text or its
/// `DMWARN`/`-EINVAL`).
pub type MessageFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + 'a>>;

/// What a constructor gets: the segment length and its arguments, and the
/// table's device list (`dm_get_device`).
pub struct Ctr<'a> {
    /// Segment length in sectors.
    pub len: u64,
    pub args: &'a [String],
    pub(crate) devices: &'a mut Vec<PathBuf>,
}

impl Ctr<'_> {
    /// Index of a backing path, adding it on first use (dm_get_device shares
    /// one reference per device across a table).
    pub fn device(&mut self, path: &str) -> Result<DevIdx, String> {
        if path.is_empty() {
            return Err("an empty device path".into());
        }
        let path = PathBuf::from(path);
        if let Some(i) = self.devices.iter().position(|p| *p == path) {
            return Ok(i);
        }
        self.devices.push(path);
        Ok(self.devices.len() - 1)
    }
}

/// A constructor's refusal: the kernel's `ti->error` (or ours, worded the
/// same way).
pub type CtrResult = Result<Arc<dyn Target>, String>;

/// One registered target type.
pub struct TargetType {
    pub name: &'static str,
    pub ctr: fn(&mut Ctr<'_>) -> CtrResult,
}

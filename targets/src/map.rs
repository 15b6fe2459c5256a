//! The hot path: a request `(sector, nr_sectors)` → the pieces that serve it.

use serde::Serialize;

use crate::error::MapError;
use crate::table::{DevIdx, Table, Target};
use crate::SECTOR_SHIFT;

/// A contiguous part of a request served by one target in one way.
///
/// Pieces come out in request order and together cover the request exactly
/// once: piece `k+1` starts at `buf_offset + len` of piece `k`.
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
    /// Read or write `len` bytes of backing device `dev` at byte `dev_offset`.
    Io { dev: DevIdx, dev_offset: u64 },
    /// Reads see zeros, writes are dropped.
    Zero,
    /// The piece fails with EIO.
    Error,
}

impl Table {
    /// Maps a request onto backing extents, appending to `out` (which the
    /// caller reuses across requests to keep the hot path allocation-free).
    ///
    /// A request that reaches past the device end is refused whole, so that
    /// nothing of it is carried out. A zero-length request maps to nothing.
    pub fn map(&self, sector: u64, nr_sectors: u64, out: &mut Vec<Piece>) -> Result<(), MapError> {
        let end = sector
            .checked_add(nr_sectors)
            .filter(|&e| e <= self.total_sectors)
            .ok_or(MapError {
                sector,
                nr_sectors,
                total_sectors: self.total_sectors,
            })?;
        if nr_sectors == 0 {
            return Ok(());
        }
        // The last segment starting at or before `sector`.
        let mut idx = self.segments.partition_point(|s| s.start <= sector) - 1;
        let mut cur = sector;
        while cur < end {
            let seg = &self.segments[idx];
            let seg_end = (seg.start + seg.len).min(end);
            let buf_offset = |at: u64| (at - sector) << SECTOR_SHIFT;
            match &seg.target {
                Target::Linear { dev, offset } => out.push(Piece {
                    segment: idx,
                    buf_offset: buf_offset(cur),
                    len: (seg_end - cur) << SECTOR_SHIFT,
                    kind: PieceKind::Io {
                        dev: *dev,
                        dev_offset: (offset + (cur - seg.start)) << SECTOR_SHIFT,
                    },
                }),
                Target::Striped { chunk, stripes } => {
                    let n = stripes.len() as u64;
                    let mut at = cur;
                    while at < seg_end {
                        // dm-stripe's stripe_map_sector.
                        let off = at - seg.start;
                        let (chunk_nr, in_chunk) = (off / chunk, off % chunk);
                        let stripe = &stripes[(chunk_nr % n) as usize];
                        let dev_sector = (chunk_nr / n) * chunk + in_chunk + stripe.offset;
                        let take = (chunk - in_chunk).min(seg_end - at);
                        out.push(Piece {
                            segment: idx,
                            buf_offset: buf_offset(at),
                            len: take << SECTOR_SHIFT,
                            kind: PieceKind::Io {
                                dev: stripe.dev,
                                dev_offset: dev_sector << SECTOR_SHIFT,
                            },
                        });
                        at += take;
                    }
                }
                Target::Zero | Target::Error => out.push(Piece {
                    segment: idx,
                    buf_offset: buf_offset(cur),
                    len: (seg_end - cur) << SECTOR_SHIFT,
                    kind: if matches!(seg.target, Target::Zero) {
                        PieceKind::Zero
                    } else {
                        PieceKind::Error
                    },
                }),
            }
            cur = seg_end;
            idx += 1;
        }
        Ok(())
    }

    /// Like [`Table::map`] for requests whose data buffer does not matter
    /// (discard, write-zeroes): pieces on the same device that continue each
    /// other are merged, so a striped range becomes one range per stripe
    /// run instead of one per chunk, as dm-stripe's `stripe_map_range` does.
    pub fn map_range(
        &self,
        sector: u64,
        nr_sectors: u64,
        out: &mut Vec<Piece>,
    ) -> Result<(), MapError> {
        let first = out.len();
        self.map(sector, nr_sectors, out)?;
        let mut merged: Vec<Piece> = Vec::with_capacity(out.len() - first);
        for p in out.drain(first..) {
            let joined = merged
                .iter_mut()
                .rev()
                .find_map(|m| match (m.kind, p.kind) {
                    (
                        PieceKind::Io {
                            dev: d1,
                            dev_offset: o1,
                        },
                        PieceKind::Io {
                            dev: d2,
                            dev_offset: o2,
                        },
                    ) if d1 == d2 && m.segment == p.segment && o1 + m.len == o2 => Some(m),
                    _ => None,
                });
            match joined {
                Some(m) => m.len += p.len,
                None => merged.push(p),
            }
        }
        out.extend(merged);
        Ok(())
    }
}

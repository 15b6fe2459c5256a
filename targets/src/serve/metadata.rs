//! A target's metadata on one of its devices, committed crash-safely: the
//! area holds two copies, each a header (magic, sequence number, length,
//! CRC32C of the payload) and the payload. A commit writes the copy not
//! holding the newest state, with the next sequence number, and flushes
//! the device before it returns; loading takes the valid copy with the
//! highest sequence. A crash at any point therefore leaves the old state
//! or the new one, never a mix: a torn copy fails its checksum and the
//! other one stands.

use super::{Data, IoCtx, IoMem};
use crate::target::DevIdx;

/// magic, seq, len, crc32c (of the payload), then the header's own crc.
const HEADER: usize = 32;

/// Where the metadata lives: `copy_bytes` bytes (header included, a
/// multiple of 4096) at byte `offset` of `dev`, twice.
#[derive(Debug, Clone, Copy)]
pub struct MetaArea {
    pub dev: DevIdx,
    pub offset: u64,
    pub copy_bytes: u64,
    /// Tells this target's metadata from anything else on the device.
    pub magic: u64,
}

/// The state a load found.
#[derive(Debug, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl MetaArea {
    /// The largest payload a copy holds.
    pub fn capacity(&self) -> usize {
        self.copy_bytes as usize - HEADER
    }

    fn copy_offset(&self, seq: u64) -> u64 {
        self.offset + (seq % 2) * self.copy_bytes
    }

    /// The newest valid state, or `None` if neither copy is valid (a new
    /// device).
    pub async fn load(&self, ctx: &dyn IoCtx) -> Result<Option<Committed>, i32> {
        let mut best: Option<Committed> = None;
        for slot in 0..2 {
            let mut mem = IoMem::new(self.copy_bytes as usize);
            let off = self.copy_offset(slot);
            ctx.read(self.dev, off, self.copy_bytes, Data::Into(&mut mem))
                .await?;
            if let Some(c) = self.parse(&mem, slot) {
                if best.as_ref().is_none_or(|b| c.seq > b.seq) {
                    best = Some(c);
                }
            }
        }
        Ok(best)
    }

    fn parse(&self, mem: &[u8], slot: u64) -> Option<Committed> {
        let word = |i: usize| u64::from_le_bytes(mem[8 * i..8 * i + 8].try_into().unwrap());
        let (magic, seq, len, sums) = (word(0), word(1), word(2) as usize, word(3));
        let (crc, head_crc) = (sums as u32, (sums >> 32) as u32);
        if magic != self.magic || seq % 2 != slot || len > self.capacity() {
            return None;
        }
        if crc32c::crc32c(&mem[..24]) != head_crc {
            return None;
        }
        let payload = &mem[HEADER..HEADER + len];
        (crc32c::crc32c(payload) == crc).then(|| Committed {
            seq,
            payload: payload.to_vec(),
        })
    }

    /// Writes `payload` as state `seq` (the last one loaded or committed
    /// plus one) into the other copy, then flushes: durable on return.
    pub async fn commit(&self, ctx: &dyn IoCtx, seq: u64, payload: &[u8]) -> Result<(), i32> {
        if payload.len() > self.capacity() {
            return Err(super::EINVAL);
        }
        let mut mem = IoMem::new(self.copy_bytes as usize);
        let crc = crc32c::crc32c(payload);
        mem[0..8].copy_from_slice(&self.magic.to_le_bytes());
        mem[8..16].copy_from_slice(&seq.to_le_bytes());
        mem[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        let head_crc = crc32c::crc32c(&mem[..24]);
        let sums = u64::from(crc) | u64::from(head_crc) << 32;
        mem[24..32].copy_from_slice(&sums.to_le_bytes());
        mem[HEADER..HEADER + payload.len()].copy_from_slice(payload);
        let off = self.copy_offset(seq);
        ctx.write(self.dev, off, self.copy_bytes, Data::From(&mem), false)
            .await?;
        // The flush is the commit point: before it the other copy stands.
        ctx.flush(self.dev).await
    }
}

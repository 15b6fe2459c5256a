//! Backends: how a piece touches a backing device. One trait, one
//! implementation per way of reaching the devices (as cloud-hypervisor's
//! `AsyncIo`): io_uring on files ([`uring`], with [`memfile`] mappings),
//! persistent-memory mappings ([`dax`], chosen by [`dax_path`]), NBD
//! exports ([`nbd`], its protocol inside). Below them: the ring they
//! submit to ([`ring`]), where a request's data lives ([`buffer`]), and
//! opening and inspecting the devices ([`backing`]). The request handler
//! and the target services are written once against the trait.

pub mod backing;
pub mod buffer;
pub mod dax;
pub mod dax_path;
pub mod memfile;
pub mod nbd;
pub mod ring;
pub mod uring;

use rdm_targets::{DevIdx, Table};

use crate::backend::buffer::Buffer;
use crate::backend::ring::Ring;

/// One piece's data transfer.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub dev: DevIdx,
    /// Byte offset on the device.
    pub dev_offset: u64,
    /// Byte offset in the request buffer.
    pub buf_offset: u64,
    pub len: u64,
    pub write: bool,
    /// Durable before completion.
    pub fua: bool,
}

impl Transfer {
    /// The transfer of I/O piece `p`, at `dev_offset` on `dev`.
    pub fn of(
        p: &rdm_targets::Piece,
        dev: DevIdx,
        dev_offset: u64,
        write: bool,
        fua: bool,
    ) -> Self {
        Transfer {
            dev,
            dev_offset,
            buf_offset: p.buf_offset,
            len: p.len,
            write,
            fua,
        }
    }
}

// The queue executor is single-threaded: the futures need not be Send.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Moves one piece between the request buffer and a device.
    async fn transfer<R: Ring>(&self, ring: &R, t: Transfer, buf: Buffer) -> Result<(), i32>;

    /// The same, when it completes without waiting (a memory copy):
    /// `None` when it needs the ring.
    fn transfer_now(&self, _t: Transfer, _buf: Buffer) -> Option<Result<(), i32>> {
        None
    }

    /// Makes everything written to `dev` durable.
    async fn flush<R: Ring>(&self, ring: &R, dev: DevIdx) -> Result<(), i32>;

    /// DISCARD (`discard`) or WRITE_ZEROES of a byte range: afterwards it
    /// reads as zeros.
    async fn zero_range<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<(), i32>;

    /// Sets one byte on the device, durably (dm-flakey's write corruption).
    async fn set_byte<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        value: u8,
    ) -> Result<(), i32>;

    /// How `dev` is accessed, for status: `o_direct`, `buffered`, `mapped`
    /// (a memory file: small pieces through its mapping), `dax` or `nbd`.
    fn access(&self, dev: DevIdx) -> &'static str;
}

/// Bytes of each device the table maps: what a mapping of it must cover.
pub(crate) fn needed_bytes(table: &Table) -> Vec<u64> {
    let mut need = vec![0u64; table.devices().len()];
    for e in table.extents() {
        need[e.dev] = need[e.dev].max((e.start + e.len) << rdm_targets::SECTOR_SHIFT);
    }
    need
}

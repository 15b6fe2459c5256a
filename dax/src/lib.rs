//! DAX (direct access) probing and persistent-memory mappings for rdm.
//!
//! This crate answers one question — "can this path be used as directly
//! mapped persistent memory, and how must stores to it be made durable?" —
//! and provides the mapping that does so. [`probe`] classifies a path as an
//! fs-dax file (a regular file with `STATX_ATTR_DAX` whose filesystem accepts
//! `MAP_SYNC`) or a device-dax character device (`/dev/daxX.Y`), finds the
//! nd region behind it and its persistence domain, and otherwise reports a
//! typed [`Unsupported`] reason. [`DaxMapping`] maps such a file or device and
//! offers bounds-checked `read_at` / `write_at` / `persist` / `fill_zero`,
//! doing the cache-line write-back (`clwb` / `clflushopt` / `clflush`) and
//! `sfence` the persistence domain requires, with non-temporal stores for
//! large writes. Following the kernel's rule for `alloc_dax()`, DAX is an
//! optional capability: only "unsupported" is a fallback the caller may
//! choose to take, while real failures (`ENOENT`, `EACCES`, `EIO`, ...) are
//! always returned as [`DaxError`]. What does *not* belong here: anything
//! about ublk, device-mapper tables, targets or command-line handling; those
//! crates consume this one. All `unsafe` code of rdm's DAX support lives in
//! this crate, each block with a `SAFETY:` justification.

mod arch;
mod error;
mod mapping;
mod probe;
mod sysfs;

pub use arch::{cpu_dcache_is_aliasing, dcache_is_aliasing_for_arch, FlushInstr};
pub use error::DaxError;
pub use mapping::{DaxMapping, WriteStrategy, NT_THRESHOLD_EADR, NT_THRESHOLD_FLUSH};
pub use probe::{
    probe, Dax, DaxInfo, DaxKind, FileKind, PersistenceDomain, Unsupported, UnsupportedReason,
};

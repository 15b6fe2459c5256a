//! Pure mapping logic for rdm: the dmsetup table syntax, its validation and
//! the sector → backing-extent map of every target.
//!
//! A [`Table`] is parsed from text exactly as `dmsetup create` and the kernel's
//! target constructors read it (`<start> <length> <type> <args...>`, lengths in
//! 512-byte sectors), validated with the kernel's rules, and then answers one
//! question on the hot path: which pieces of which backing devices does a
//! request `(sector, nr_sectors)` touch ([`Table::map`]).
//!
//! Each target type is one file under `targets/` implementing [`Target`]
//! (as the kernel's `dm-linear.c`, `dm-stripe.c`…), registered by its table
//! word in `targets/mod.rs`. The parser, validator and mapper name none.
//!
//! A target either remaps (a pure function, as above) or serves the parts
//! it takes itself through the [`IoCtx`] the daemon lends it ([`serve`]).
//!
//! What does *not* belong here: any I/O of its own. Facts about backing files (their size,
//! whether they are read-only, which inode they are, whether they can do DAX)
//! are gathered by the caller and handed in as [`DeviceInfo`] values, so that
//! everything in this crate is deterministic and testable on any host.

mod args;
mod error;
pub mod serve;
mod table;
mod target;
mod targets;
mod validate;

pub use error::{MapError, TableError, TableErrorKind};
pub use serve::{Data, IoCtx, IoFuture, IoMem, Job};
pub use table::{Segment, Table, MAX_TABLE_BYTES};
pub use target::{
    flush_as, flush_piece, Ctr, CtrResult, DevIdx, Extent, Io, MessageFuture, Op, Piece, PieceKind,
    StatusCtx, Target, TargetType,
};
pub use targets::REGISTRY;
pub use validate::DeviceInfo;

/// Size of a device-mapper sector in bytes; table numbers are in these units.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// The kernel's `REQ_FUA` bit of [`Io::opf`].
pub const REQ_FUA: u32 = 1 << 17;
/// The kernel's `REQ_PREFLUSH` bit of [`Io::opf`] (ublk never sets it: a
/// FLUSH arrives as its own request).
pub const REQ_PREFLUSH: u32 = 1 << 18;

//! Pure mapping logic for rdm: the dmsetup table syntax, its validation and
//! the sector → backing-extent map of every target.
//!
//! A [`Table`] is parsed from text exactly as `dmsetup create` and the kernel's
//! target constructors read it (`<start> <length> <type> <args...>`, lengths in
//! 512-byte sectors), validated with the kernel's rules, and then answers one
//! question on the hot path: which pieces of which backing devices does a
//! request `(sector, nr_sectors)` touch ([`Table::map`]).
//!
//! What does *not* belong here: any I/O. Facts about backing files (their size,
//! whether they are read-only, which inode they are, whether they can do DAX)
//! are gathered by the caller and handed in as [`DeviceInfo`] values, so that
//! everything in this crate is deterministic and testable on any host.

mod error;
mod map;
mod parse;
mod table;
mod validate;

pub use error::{MapError, TableError, TableErrorKind};
pub use map::{Piece, PieceKind};
pub use table::{DevIdx, Segment, Stripe, Table, Target, TargetKind};
pub use validate::{DeviceInfo, Extent};

/// Size of a device-mapper sector in bytes; table numbers are in these units.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

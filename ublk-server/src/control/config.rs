//! What a server is asked to serve ([`Config`]), what it reports once
//! live ([`Live`]), and everything that can go wrong on the way
//! ([`ServerError`]: each names the device, the path and the cause).

use crate::backend::backing::BackingError;
use crate::backend::dax_path::{DaxDecisionError, DaxPolicy};
use crate::control::claims;
use crate::control::recovery::Recovery;
use crate::control::state::ControlError;
use crate::io::features::{DataMode, ZeroCopy};
use rdm_targets::Table;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub table: Table,
    pub queues: u16,
    pub depth: u16,
    pub zero_copy: ZeroCopy,
    pub block_size: u32,
    pub read_only: bool,
    pub dax: DaxPolicy,
    pub recovery: Recovery,
    /// Re-attach to the waiting device of this name (`rdm recover`)
    /// instead of creating one.
    pub recover: bool,
    /// How long a request to an NBD export may wait for its reply
    /// (reconnects included) before it fails.
    pub nbd_timeout: Duration,
    /// Copy mode with UBLK_F_BATCH_IO (`--batch-io`).
    pub batch_io: bool,
    /// Server threads per queue (`--io-threads`), each with its own ring
    /// and its share of the queue's tags (UBLK_F_PER_IO_DAEMON).
    pub io_threads: u16,
    /// The I/O scheduler the block device gets once live (`None`: the
    /// kernel's choice).
    pub scheduler: Option<String>,
}

impl Config {
    /// How many rings serve the device: one per queue and io thread.
    pub fn rings(&self) -> usize {
        usize::from(self.queues) * usize::from(self.io_threads)
    }
}

/// The default of `--nbd-timeout`, as the kernel's nbd driver.
pub const NBD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{name}: {}", crate::control::lifecycle::no_ublk_reason())]
    NoUblk { name: String },
    #[error("{name}: {msg}")]
    Unsupported { name: String, msg: String },
    #[error("{name}: {source}")]
    Backing { name: String, source: BackingError },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{name}: {source}")]
    Dax {
        name: String,
        source: DaxDecisionError,
    },
    #[error("{name}: {path} is a device-dax character device, which only the DAX path can serve, and the DAX path is not used: {why}")]
    DevDaxNeedsDax {
        name: String,
        path: String,
        why: String,
    },
    #[error("{name}: too many backing devices ({count}); at most {max}")]
    TooManyDevices {
        name: String,
        count: usize,
        max: usize,
    },
    #[error("{name}: {msg}")]
    Recovery { name: String, msg: String },
    #[error("{name}: {source}")]
    Claimed { name: String, source: claims::Clash },
    #[error("{name}: cannot set the I/O scheduler {scheduler:?} in {path}: {cause} (the device was removed; `--scheduler kernel` keeps the kernel's)")]
    Scheduler {
        name: String,
        scheduler: String,
        path: String,
        cause: std::io::Error,
    },
    #[error("{name}: {source} (the device was removed)")]
    NotLive { name: String, source: ControlError },
    #[error("{name}: ublk {op} failed: {cause}")]
    Ublk {
        name: String,
        op: &'static str,
        cause: String,
    },
}

/// A device that reached LIVE.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub dev_id: u32,
    pub bdev: String,
    pub mode: DataMode,
    /// With `--dax auto` on a table that cannot: which device and why.
    pub dax_note: Option<String>,
}

//! The copier (dm-kcopyd): copies a range of one device to one or more
//! others in chunks — resync, writeback, a segment moved — throttled so
//! that requests keep their latency, with progress a status line can show,
//! and cancellable between chunks through its job's [`Background`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::background::{Background, Stopped};
use super::{Data, IoCtx, IoMem};
use crate::target::DevIdx;

/// One copy: `len` bytes of `from` at byte `from_offset` to each of `to`
/// (device, byte offset).
#[derive(Debug, Clone)]
pub struct Copy {
    pub from: DevIdx,
    pub from_offset: u64,
    pub to: Vec<(DevIdx, u64)>,
    pub len: u64,
}

/// Bytes copied so far of how many.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Progress {
    /// (done, total) in bytes.
    pub fn get(&self) -> (u64, u64) {
        (self.done.load(Relaxed), self.total.load(Relaxed))
    }
}

/// Why a copy ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyError {
    /// A read or write failed (the -errno), at this byte of the copy;
    /// `dest`: which of [`Copy::to`] failed (`None`: the read).
    Io {
        errno: i32,
        at: u64,
        dest: Option<usize>,
    },
    /// Its job was stopped.
    Stopped,
}

impl From<Stopped> for CopyError {
    fn from(_: Stopped) -> Self {
        CopyError::Stopped
    }
}

/// How a copier moves data.
#[derive(Debug, Clone, Copy)]
pub struct Copier {
    /// Bytes per chunk (one read, then one write to each destination).
    pub chunk: u64,
    /// Pause after each chunk: the throttle (kcopyd's `io_throttle`).
    pub pause: Duration,
}

impl Default for Copier {
    fn default() -> Self {
        Copier {
            chunk: 64 << 10,
            pause: Duration::ZERO,
        }
    }
}

impl Copier {
    /// Copies `c` chunk by chunk, adding each chunk to `progress`; stops
    /// between chunks when `bg` says so.
    pub async fn copy(
        &self,
        ctx: &dyn IoCtx,
        c: &Copy,
        progress: &Progress,
        bg: Option<&Background>,
    ) -> Result<(), CopyError> {
        progress.total.fetch_add(c.len, Relaxed);
        let chunk = self.chunk.max(512);
        let mut mem = IoMem::new(chunk.min(c.len) as usize);
        let mut at = 0;
        while at < c.len {
            if let Some(bg) = bg {
                bg.checkpoint(ctx).await?;
            }
            let n = chunk.min(c.len - at);
            let io = |dest| move |errno| CopyError::Io { errno, at, dest };
            ctx.read(c.from, c.from_offset + at, n, Data::Into(&mut mem))
                .await
                .map_err(io(None))?;
            for (i, &(dev, off)) in c.to.iter().enumerate() {
                ctx.write(dev, off + at, n, Data::From(&mem), false)
                    .await
                    .map_err(io(Some(i)))?;
            }
            at += n;
            progress.done.fetch_add(n, Relaxed);
            if !self.pause.is_zero() && at < c.len {
                let _ = ctx.sleep(self.pause).await;
            }
        }
        Ok(())
    }
}

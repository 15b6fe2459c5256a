//! What a target that serves requests itself (`DM_MAPIO_SUBMITTED`) gets
//! from the daemon: an I/O context on the queue's ring ([`IoCtx`], the
//! userspace dm-io), memory for I/O of its own ([`IoMem`]), and the
//! services built on them, as dm's core lends them to its targets: a
//! copier ([`copier`], dm-kcopyd), crash-safe metadata on a device
//! ([`metadata`], dm-bufio plus a transaction), and background jobs
//! ([`background`]: resync, writeback) that suspend pauses and remove
//! stops.
//!
//! A remapping target never sees any of this: its `map` stays a pure
//! function. A serving target's `map` returns [`crate::PieceKind::Serve`]
//! for the parts it takes, and the handler calls its
//! [`crate::Target::serve`] with an `IoCtx` for that request: I/O to any of
//! the table's devices, into or out of the request's own buffer (zero copy)
//! or memory the target owns, completed when the target's future is.

pub mod background;
pub mod copier;
pub mod dirty_log;
pub mod metadata;

use std::alloc::Layout;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::target::DevIdx;

/// `-EIO`, the error a target reports for a failed request.
pub const EIO: i32 = -5;
/// `-EINVAL`.
pub const EINVAL: i32 = -22;
/// `-EOPNOTSUPP`.
pub const EOPNOTSUPP: i32 = -95;

/// A target's future: `Err(-errno)` fails the request (or the job).
/// Not `Send`: it runs on the queue thread that started it.
pub type IoFuture<'a, T = ()> = Pin<Box<dyn Future<Output = Result<T, i32>> + 'a>>;

/// Where the data of one device I/O lives.
#[derive(Debug)]
pub enum Data<'a> {
    /// The request's own buffer, from this byte of it: zero copy where the
    /// daemon has it. Jobs (no request) get EIO.
    Request(u64),
    /// Memory of the target's, read into.
    Into(&'a mut [u8]),
    /// Memory of the target's, written from.
    From(&'a [u8]),
}

impl Data<'_> {
    /// Bytes the memory holds (`None` for the request's buffer).
    pub fn mem_len(&self) -> Option<u64> {
        match self {
            Data::Request(_) => None,
            Data::Into(m) => Some(m.len() as u64),
            Data::From(m) => Some(m.len() as u64),
        }
    }
}

/// The I/O a serving target (or a job of its) does, on the ring of the
/// queue thread it runs on. Every call counts in the device's statistics
/// and errors as the handler's own I/O does. Memory handed in must be
/// aligned as [`IoMem`] is when the device may be opened `O_DIRECT`.
pub trait IoCtx {
    /// The ublk device's logical block size in bytes (what the kernel's
    /// `bdev_logical_block_size` answers for a dm device's devices).
    fn block_size(&self) -> u32;

    /// Size of device `dev` in bytes, as checked when the table was loaded.
    fn device_bytes(&self, dev: DevIdx) -> u64;

    /// Reads `len` bytes of device `dev` at byte `offset` into `data`.
    fn read<'a>(&'a self, dev: DevIdx, offset: u64, len: u64, data: Data<'a>) -> IoFuture<'a>;

    /// Writes `len` bytes of `data` at byte `offset` of `dev`; durable
    /// before completion when `fua`.
    fn write<'a>(
        &'a self,
        dev: DevIdx,
        offset: u64,
        len: u64,
        data: Data<'a>,
        fua: bool,
    ) -> IoFuture<'a>;

    /// Makes everything written to `dev` durable.
    fn flush(&self, dev: DevIdx) -> IoFuture<'_>;

    /// DISCARD (`discard`) or WRITE_ZEROES of a byte range.
    fn zero_range(&self, dev: DevIdx, offset: u64, len: u64, discard: bool) -> IoFuture<'_>;

    /// Waits `d` on the ring (an io_uring timeout): the queue serves
    /// everything else meanwhile.
    fn sleep(&self, d: Duration) -> IoFuture<'_>;

    /// Zeros `len` bytes of the request's buffer at `buf_offset`.
    fn fill_zero(&self, buf_offset: u64, len: u64) -> IoFuture<'_>;

    /// Sets byte `buf_offset` of the request's buffer.
    fn set_request_byte(&self, buf_offset: u64, value: u8) -> IoFuture<'_>;

    /// Sets one byte of `dev`, durably.
    fn set_device_byte(&self, dev: DevIdx, offset: u64, value: u8) -> IoFuture<'_>;

    /// Copies the request's buffer from `buf_offset` into `into` (a write's
    /// data, for a target that transforms or logs it).
    fn copy_from_request<'a>(&'a self, buf_offset: u64, into: &'a mut [u8]) -> IoFuture<'a>;

    /// Copies `from` into the request's buffer at `buf_offset` (a read's
    /// data, transformed).
    fn copy_to_request<'a>(&'a self, buf_offset: u64, from: &'a [u8]) -> IoFuture<'a>;

    /// Starts `job` in the background on the device's first queue ring,
    /// with an I/O context of its own (no request buffer); it runs beside
    /// the requests until it returns. See [`background::Background`] for
    /// pausing and stopping it.
    fn spawn(&self, job: Job);

    /// Reports something an operator must hear of (dm's `dm_table_event`
    /// with its `DMWARN`: a leg failed, a log device died): the daemon
    /// logs it with the device's name and keeps it for `rdm ls`/`status`.
    fn event(&self, _what: &str) {}
}

/// A background job: given its I/O context, the work it does.
pub type Job = Box<dyn for<'a> FnOnce(&'a dyn IoCtx) -> IoFuture<'a> + Send>;

/// A finished future, for targets that answer without I/O.
pub fn ready<'a, T: 'a>(r: Result<T, i32>) -> IoFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

/// The unit [`IoMem`] aligns to: enough for `O_DIRECT` on any logical
/// block size a device may have.
pub const IO_ALIGN: usize = 4096;

/// Zeroed memory aligned for `O_DIRECT` I/O of a target's own (log
/// entries, metadata blocks, a cipher's output), freed on drop.
pub struct IoMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: IoMem owns its allocation exclusively, as a Box<[u8]> would.
unsafe impl Send for IoMem {}
// SAFETY: shared references only read.
unsafe impl Sync for IoMem {}

impl IoMem {
    /// `len` zeroed bytes (at least one aligned unit is allocated).
    pub fn new(len: usize) -> IoMem {
        let layout = Self::layout(len);
        // SAFETY: the layout is not zero-sized.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        IoMem { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let size = len.max(1).div_ceil(IO_ALIGN) * IO_ALIGN;
        Layout::from_size_align(size, IO_ALIGN).expect("a valid layout")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for IoMem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes allocated and initialised in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for IoMem {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for IoMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

impl std::fmt::Debug for IoMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoMem({} bytes)", self.len)
    }
}

/// Runs `futs` at once (dm-io's parallel regions: a write to every leg)
/// and gives each one's result, in order.
pub async fn join_all<'a, T>(futs: Vec<IoFuture<'a, T>>) -> Vec<Result<T, i32>> {
    use std::task::Poll;
    let mut futs: Vec<Option<IoFuture<'a, T>>> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<Result<T, i32>>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *o = Some(r);
                        *f = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => Poll::Pending,
            false => Poll::Ready(()),
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

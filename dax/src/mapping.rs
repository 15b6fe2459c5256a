//! [`DaxMapping`]: a whole fs-dax file or device-dax device mapped into the
//! process, with durable, bounds-checked stores.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;
use rustix::mm::{MapFlags, ProtFlags};
use serde::Serialize;

use crate::arch::{self, FlushInstr};
use crate::error::DaxError;
use crate::probe::{
    self, Dax, DaxInfo, DaxKind, PersistenceDomain, Unsupported, UnsupportedReason,
};

/// Under [`WriteStrategy::Auto`], writes of at least this many bytes use
/// non-temporal stores when cache lines must be flushed (ADR,
/// `memory_controller` / unknown domain).
///
/// Chosen by measurement (`cargo run --release -p rdm-dax --example
/// nt_bench`; 2-core x86-64 VM with clwb, DRAM-backed tmpfs mapping, GB/s
/// of `write_at` including its flush + sfence):
///
/// | write size | copy + clwb | non-temporal |
/// |-----------:|------------:|-------------:|
/// |      256 B |   1.3       |   2.2        |
/// |      512 B |   2.4–2.6   |   4.2–4.4    |
/// |     4 KiB  |   7.7–9.5   |  17.5–20.3   |
/// |    64 KiB  |  11.6–16.2  |  28.3–28.8   |
/// |     1 MiB  |  11.7–13.8  |  24.3–33.2   |
///
/// Non-temporal stores win at every size that contains a whole cache line:
/// they avoid the read-for-ownership of the destination line and the second
/// pass that writes each line back. On real pmem the gap should only widen.
pub const NT_THRESHOLD_FLUSH: usize = 256;

/// Under [`WriteStrategy::Auto`], writes of at least this many bytes use
/// non-temporal stores when no flush is needed (eADR, `cpu_cache` domain).
///
/// Measured as above with only an sfence after cached stores: cached stores
/// win up to 4 KiB (256 B: 20 vs 2.2 GB/s; 4 KiB: 19–22 vs 18–20 GB/s) and
/// non-temporal stores win from 16 KiB (21–26 vs 25–32 GB/s; 64 KiB: 20–27
/// vs 26–39 GB/s), where not polluting the cache starts to pay.
pub const NT_THRESHOLD_EADR: usize = 16 * 1024;

/// How [`DaxMapping::write_at`] stores data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStrategy {
    /// Non-temporal stores for writes of at least [`NT_THRESHOLD_FLUSH`]
    /// bytes (or [`NT_THRESHOLD_EADR`] on eADR), cached stores below.
    Auto,
    /// Always cached stores followed by a cache-line flush.
    Cached,
    /// Always non-temporal stores for the whole cache lines of a write
    /// (the partial lines at either end use cached stores + flush).
    NonTemporal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    FsDax,
    DevDax,
    Plain,
}

/// A mapping of a whole fs-dax file (`MAP_SHARED_VALIDATE | MAP_SYNC`) or
/// device-dax device (`MAP_SHARED`), or — for tests — a plain `MAP_SHARED`
/// mapping of an ordinary file.
///
/// Every access is bounds-checked and returns [`DaxError::OutOfRange`]
/// instead of touching memory outside the mapping. Methods take `&self` so a
/// mapping can be shared by I/O queues; like a disk, concurrent overlapping
/// writes (or a read overlapping a write) leave unspecified bytes, and the
/// memory may also be changed by other processes mapping the same file, so
/// no Rust reference to the mapped bytes is ever handed out — all accesses
/// are raw copies.
///
/// Limitations: a memory error (poisoned pmem line) or truncation of an
/// fs-dax file by someone else while mapped raises `SIGBUS` on access; this
/// crate installs no `SIGBUS` handler.
#[derive(Debug)]
pub struct DaxMapping {
    ptr: *mut u8,
    len: usize,
    /// The mapped file or device, kept open for `fallocate` (hole punching
    /// on fs-dax) and `fdatasync`.
    file: File,
    path: PathBuf,
    mode: Mode,
    writable: bool,
    domain: PersistenceDomain,
    flush: FlushInstr,
    strategy: WriteStrategy,
}

// SAFETY: the mapping is plain shared memory owned by this value; it holds no
// thread-affine state. All accesses copy through raw pointers after bounds
// checks, so sharing `&DaxMapping` between threads cannot produce a dangling
// or out-of-bounds access (overlapping concurrent writes give unspecified
// bytes, as documented, exactly as another process writing the file would).
unsafe impl Send for DaxMapping {}
// SAFETY: see `Send` above.
unsafe impl Sync for DaxMapping {}

fn mmap(file: &File, len: usize, writable: bool, flags: MapFlags) -> Result<*mut u8, io::Error> {
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a new mapping at a kernel-chosen address; it overlaps no
    // existing Rust object. The fd is valid for the duration of the call.
    let p = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, file, 0) }?;
    Ok(p.cast())
}

fn to_usize(path: &Path, size: u64) -> Result<usize, DaxError> {
    usize::try_from(size)
        .map_err(|_| DaxError::invalid(path, format!("size {size} does not fit the address space")))
}

impl DaxMapping {
    /// Probe `path` and map it; DAX is required, so an unsupported path is
    /// [`DaxError::Unsupported`].
    pub fn open(path: &Path) -> Result<Self, DaxError> {
        match probe::probe(path)? {
            Dax::Supported(info) => Self::map(&info),
            Dax::Unsupported(u) => Err(DaxError::Unsupported(u)),
        }
    }

    /// Map what [`crate::probe`] found supported. The file is reopened (read-
    /// write if `info.writable`); an fs-dax file is mapped at its current
    /// size, a device-dax device at its sysfs size.
    pub fn map(info: &DaxInfo) -> Result<Self, DaxError> {
        let path = &info.path;
        let (file, writable) = probe::open_rw_or_ro(path)?;
        let writable = writable && info.writable;
        let (len, flags, mode) = match info.kind {
            DaxKind::FsDax => {
                let m = file.metadata().map_err(|e| DaxError::io(path, "stat", e))?;
                (
                    m.len(),
                    MapFlags::SHARED_VALIDATE | MapFlags::SYNC,
                    Mode::FsDax,
                )
            }
            DaxKind::DevDax => (info.size, MapFlags::SHARED, Mode::DevDax),
        };
        if len == 0 {
            return Err(DaxError::Empty { path: path.clone() });
        }
        let len = to_usize(path, len)?;
        let ptr = match mmap(&file, len, writable, flags) {
            Ok(p) => p,
            Err(e) if mode == Mode::FsDax && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The file stopped being DAX between probe and map.
                return Err(DaxError::Unsupported(Unsupported {
                    path: path.clone(),
                    reason: UnsupportedReason::MapSyncRefused {
                        errno: libc::EOPNOTSUPP,
                    },
                }));
            }
            Err(e) => return Err(DaxError::io(path, "mmap", e)),
        };
        let m = DaxMapping {
            ptr,
            len,
            file,
            path: path.clone(),
            mode,
            writable,
            domain: info.persistence_domain,
            flush: if info.persistence_domain.needs_flush() {
                arch::best_flush_instr()
            } else {
                FlushInstr::FenceOnly
            },
            strategy: WriteStrategy::Auto,
        };
        if mode == Mode::DevDax
            && info.align.is_power_of_two()
            && (ptr as usize as u64) & (info.align - 1) != 0
        {
            // `m` unmaps on drop.
            return Err(DaxError::invalid(
                path,
                format!(
                    "kernel returned a mapping at {ptr:p}, not aligned to {}",
                    info.align
                ),
            ));
        }
        Ok(m)
    }

    /// Map an ordinary file with a plain `MAP_SHARED` mapping, for testing
    /// and benchmarking the copy / flush logic on hosts without pmem. The
    /// flushes and fences are executed as for real pmem in `domain`, but
    /// durability is only that of the page cache (use `fsync`).
    pub fn map_plain_for_tests(path: &Path, domain: PersistenceDomain) -> Result<Self, DaxError> {
        let (file, writable) = probe::open_rw_or_ro(path)?;
        let m = file.metadata().map_err(|e| DaxError::io(path, "stat", e))?;
        if m.len() == 0 {
            return Err(DaxError::Empty {
                path: path.to_owned(),
            });
        }
        let len = to_usize(path, m.len())?;
        let ptr = mmap(&file, len, writable, MapFlags::SHARED)
            .map_err(|e| DaxError::io(path, "mmap", e))?;
        Ok(DaxMapping {
            ptr,
            len,
            file,
            path: path.to_owned(),
            mode: Mode::Plain,
            writable,
            domain,
            flush: if domain.needs_flush() {
                arch::best_flush_instr()
            } else {
                FlushInstr::FenceOnly
            },
            strategy: WriteStrategy::Auto,
        })
    }

    /// Mapped size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false (empty files are refused), provided for API hygiene.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// fs-dax, device-dax or `None` for a plain test mapping.
    pub fn kind(&self) -> Option<DaxKind> {
        match self.mode {
            Mode::FsDax => Some(DaxKind::FsDax),
            Mode::DevDax => Some(DaxKind::DevDax),
            Mode::Plain => None,
        }
    }

    /// The persistence domain the flushes are chosen for.
    pub fn persistence_domain(&self) -> PersistenceDomain {
        self.domain
    }

    /// The cache write-back instruction in use (`FenceOnly` on eADR).
    pub fn flush_instr(&self) -> FlushInstr {
        self.flush
    }

    /// Current write strategy (default [`WriteStrategy::Auto`]).
    pub fn write_strategy(&self) -> WriteStrategy {
        self.strategy
    }

    /// Change the write strategy.
    pub fn set_write_strategy(&mut self, s: WriteStrategy) {
        self.strategy = s;
    }

    /// Bounds check: `offset..offset+len` inside the mapping.
    fn check(&self, offset: u64, len: usize) -> Result<usize, DaxError> {
        let oor = || DaxError::OutOfRange {
            path: self.path.clone(),
            offset,
            len: len as u64,
            size: self.len as u64,
        };
        let off = usize::try_from(offset).map_err(|_| oor())?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(off),
            _ => Err(oor()),
        }
    }

    fn check_write(&self, offset: u64, len: usize) -> Result<usize, DaxError> {
        let off = self.check(offset, len)?;
        if !self.writable {
            return Err(DaxError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(off)
    }

    /// Copy `buf.len()` bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DaxError> {
        let off = self.check(offset, buf.len())?;
        // SAFETY: `off + buf.len() <= self.len` (checked), so the source lies
        // inside the live mapping; `buf` is a distinct Rust allocation, so
        // the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Store `buf` at `offset` and make it durable (flush + fence, or only a
    /// fence on eADR) before returning.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DaxError> {
        self.write_at_with(offset, buf, self.strategy)
    }

    /// [`Self::write_at`] with an explicit strategy.
    pub fn write_at_with(
        &self,
        offset: u64,
        buf: &[u8],
        strategy: WriteStrategy,
    ) -> Result<(), DaxError> {
        let off = self.check_write(offset, buf.len())?;
        // SAFETY: range checked against the live, writable mapping; `buf`
        // is a separate allocation (not overlapping).
        unsafe { self.store(off, Some(buf.as_ptr()), buf.len(), strategy) };
        Ok(())
    }

    /// `len` as a `usize`, or the out-of-range error a too-long range gets.
    fn len_usize(&self, offset: u64, len: u64) -> Result<usize, DaxError> {
        usize::try_from(len).map_err(|_| DaxError::OutOfRange {
            path: self.path.clone(),
            offset,
            len,
            size: self.len as u64,
        })
    }

    /// Zero `len` bytes at `offset` durably (discard / write-zeroes).
    pub fn fill_zero(&self, offset: u64, len: u64) -> Result<(), DaxError> {
        let l = self.len_usize(offset, len)?;
        let off = self.check_write(offset, l)?;
        // SAFETY: range checked against the live, writable mapping.
        unsafe { self.store(off, None, l, self.strategy) };
        Ok(())
    }

    /// Make `len` bytes at `offset`, already stored by other means, durable:
    /// write back their cache lines (unless eADR) and fence.
    pub fn persist(&self, offset: u64, len: u64) -> Result<(), DaxError> {
        let l = self.len_usize(offset, len)?;
        let off = self.check(offset, l)?;
        // SAFETY: range checked against the live mapping.
        unsafe { arch::flush_range(self.ptr.add(off), l, self.flush) };
        arch::store_fence();
        Ok(())
    }

    /// Store fence: order (and, after flushes, complete) all earlier stores.
    pub fn fence(&self) {
        arch::store_fence();
    }

    /// A raw pointer to `len` bytes at `offset`, bounds-checked, for handing
    /// the mapped range itself to the kernel as an I/O buffer (e.g. the
    /// source of a `write(2)` / io_uring WRITE, which reads it).
    ///
    /// # Safety
    /// The pointer is valid only while `self` lives: the caller must not use
    /// it (nor let an in-flight I/O use it) after the mapping is dropped, and
    /// must only read through it. Bytes may change concurrently (another
    /// queue or process writing the same range), as with any shared mapping.
    pub unsafe fn as_ptr_range(&self, offset: u64, len: usize) -> Result<*const u8, DaxError> {
        let off = self.check(offset, len)?;
        // SAFETY: `off + len <= self.len` (checked), inside the mapping.
        Ok(unsafe { self.ptr.add(off) })
    }

    /// A raw pointer to `len` writable bytes at `offset`, bounds-checked
    /// (and refused on a read-only mapping), for letting the kernel store
    /// into the mapped range directly (the destination of a `read(2)` /
    /// io_uring READ). Stores made that way are *not* durable until
    /// [`Self::persist`] is called on the range.
    ///
    /// # Safety
    /// As [`Self::as_ptr_range`]: valid only while `self` lives. The caller
    /// must call [`Self::persist`] for the range after the stores completed
    /// before reporting them durable, and must not create Rust references
    /// into the range (it is shared memory; only raw copies are sound).
    pub unsafe fn as_mut_ptr_range(&self, offset: u64, len: usize) -> Result<*mut u8, DaxError> {
        let off = self.check_write(offset, len)?;
        // SAFETY: `off + len <= self.len` (checked), inside the mapping.
        Ok(unsafe { self.ptr.add(off) })
    }

    /// Discard `len` bytes at `offset` so that they read back as zeros,
    /// durably: on an fs-dax (or plain test) file the range is punched
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`, which also drops the pages
    /// from this mapping) and the metadata change synced with `fdatasync`;
    /// on device-dax, or where the filesystem cannot punch (`EOPNOTSUPP`),
    /// the bytes are zeroed with [`Self::fill_zero`].
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), DaxError> {
        let l = self.len_usize(offset, len)?;
        self.check_write(offset, l)?;
        if len == 0 {
            return Ok(());
        }
        if self.mode == Mode::DevDax {
            return self.fill_zero(offset, len);
        }
        // The range is inside the file (checked against the mapping, which
        // covers the file).
        let punched = rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        if let Err(e) = punched {
            if e == rustix::io::Errno::OPNOTSUPP {
                return self.fill_zero(offset, len);
            }
            return Err(DaxError::io(&self.path, "punch a hole in", e.into()));
        }
        self.file
            .sync_data()
            .map_err(|e| DaxError::io(&self.path, "fdatasync", e))
    }

    /// The mapped file or device (open read-write if the mapping is
    /// writable), e.g. for an asynchronous `fallocate` on an io_uring.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Cached copy (or zero fill) plus write-back of the covered lines.
    ///
    /// # Safety
    /// `[ptr+off, ptr+off+len)` is inside the mapping; `src`, if given, is
    /// readable for `len` bytes and does not overlap it.
    unsafe fn store_cached(&self, off: usize, src: Option<*const u8>, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: per this function's contract.
        unsafe {
            let dst = self.ptr.add(off);
            match src {
                Some(s) => std::ptr::copy_nonoverlapping(s, dst, len),
                None => std::ptr::write_bytes(dst, 0, len),
            }
            arch::flush_range(dst, len, self.flush);
        }
    }

    /// # Safety
    /// As [`Self::store_cached`].
    unsafe fn store(
        &self,
        off: usize,
        src: Option<*const u8>,
        len: usize,
        strategy: WriteStrategy,
    ) {
        let nt = match strategy {
            WriteStrategy::Cached => false,
            WriteStrategy::NonTemporal => true,
            WriteStrategy::Auto => {
                len >= if self.flush == FlushInstr::FenceOnly {
                    NT_THRESHOLD_EADR
                } else {
                    NT_THRESHOLD_FLUSH
                }
            }
        };
        #[cfg(target_arch = "x86_64")]
        if nt {
            let dst = self.ptr as usize + off;
            let head = ((dst + 63) & !63) - dst;
            if len >= head + 64 {
                let body = (len - head) & !63;
                let tail = len - head - body;
                // SAFETY: head, body and tail partition the caller's range;
                // the body starts 64-byte aligned and is a multiple of 64.
                unsafe {
                    self.store_cached(off, src, head);
                    arch::nt_copy_lines(self.ptr.add(off + head), src.map(|s| s.add(head)), body);
                    self.store_cached(off + head + body, src.map(|s| s.add(head + body)), tail);
                }
                arch::store_fence();
                return;
            }
        }
        let _ = nt;
        // SAFETY: per this function's contract.
        unsafe { self.store_cached(off, src, len) };
        arch::store_fence();
    }
}

impl AsRawFd for DaxMapping {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for DaxMapping {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for DaxMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping created in the
        // constructor, and no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZE: usize = 64 * 1024 + 37;

    fn plain(domain: PersistenceDomain) -> (tempfile::TempDir, DaxMapping) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, vec![0xAAu8; SIZE]).unwrap();
        let m = DaxMapping::map_plain_for_tests(&p, domain).unwrap();
        (d, m)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn round_trips_unaligned() {
        for domain in [
            PersistenceDomain::MemoryController,
            PersistenceDomain::CpuCache,
        ] {
            for strat in [
                WriteStrategy::Auto,
                WriteStrategy::Cached,
                WriteStrategy::NonTemporal,
            ] {
                let (_d, m) = plain(domain);
                let mut shadow = vec![0xAAu8; SIZE];
                let cases: &[(usize, usize)] = &[
                    (0, 0),
                    (1, 1),
                    (3, 61),
                    (60, 8),
                    (63, 130),
                    (64, 64),
                    (100, 5000),
                    (777, 20000),
                    (SIZE - 1, 1),
                    (SIZE - 300, 300),
                    (SIZE, 0),
                ];
                for (i, &(off, len)) in cases.iter().enumerate() {
                    let data = pattern(len, i as u8);
                    m.write_at_with(off as u64, &data, strat).unwrap();
                    shadow[off..off + len].copy_from_slice(&data);
                    let mut back = vec![0u8; len];
                    m.read_at(off as u64, &mut back).unwrap();
                    assert_eq!(back, data, "{strat:?} {off}+{len}");
                    m.persist(off as u64, len as u64).unwrap();
                }
                m.fill_zero(5, 70).unwrap();
                shadow[5..75].fill(0);
                m.fill_zero(1000, 40_000).unwrap();
                shadow[1000..41_000].fill(0);
                m.fill_zero(SIZE as u64, 0).unwrap();
                m.fence();
                let mut all = vec![0u8; SIZE];
                m.read_at(0, &mut all).unwrap();
                assert!(all == shadow, "{strat:?} {domain:?}: whole image differs");
            }
        }
    }

    #[test]
    fn writes_reach_the_file() {
        let (d, m) = plain(PersistenceDomain::MemoryController);
        m.write_at(10, b"hello").unwrap();
        drop(m);
        let f = std::fs::read(d.path().join("img")).unwrap();
        assert_eq!(&f[10..15], b"hello");
        assert_eq!(f[9], 0xAA);
        assert_eq!(f[15], 0xAA);
    }

    #[test]
    fn out_of_range_is_error() {
        let (_d, m) = plain(PersistenceDomain::Unknown);
        let mut b = [0u8; 2];
        let size = SIZE as u64;
        for (off, len) in [
            (size - 1, 2usize),
            (size + 1, 0),
            (u64::MAX, 1),
            (u64::MAX - 1, 2),
        ] {
            let e = m.read_at(off, &mut b[..len]).unwrap_err();
            assert!(matches!(e, DaxError::OutOfRange { .. }), "{e}");
            assert!(e.to_string().contains("img"));
            assert!(matches!(
                m.write_at(off, &b[..len]),
                Err(DaxError::OutOfRange { .. })
            ));
        }
        assert!(matches!(
            m.fill_zero(1, size),
            Err(DaxError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.fill_zero(0, u64::MAX),
            Err(DaxError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.persist(size, 1),
            Err(DaxError::OutOfRange { .. })
        ));
        m.persist(0, size).unwrap();
        m.persist(size, 0).unwrap();
    }

    #[test]
    fn empty_and_readonly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e");
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            DaxMapping::map_plain_for_tests(&p, PersistenceDomain::Unknown),
            Err(DaxError::Empty { .. })
        ));
        assert!(matches!(
            DaxMapping::map_plain_for_tests(&d.path().join("missing"), PersistenceDomain::Unknown),
            Err(DaxError::Io { op: "open", .. })
        ));
        // DaxMapping::open on a non-DAX file: Unsupported, as an error.
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(
            DaxMapping::open(&p),
            Err(DaxError::Unsupported(_))
        ));
    }

    #[test]
    fn raw_ranges_are_bounds_checked() {
        let (_d, m) = plain(PersistenceDomain::MemoryController);
        let size = SIZE as u64;
        // SAFETY (test): pointers are used only while `m` lives.
        unsafe {
            let p = m.as_mut_ptr_range(100, 5).unwrap();
            std::ptr::copy_nonoverlapping(b"raw!!".as_ptr(), p, 5);
            m.persist(100, 5).unwrap();
            let q = m.as_ptr_range(100, 5).unwrap();
            assert_eq!(std::slice::from_raw_parts(q, 5), b"raw!!");
            assert_eq!(m.as_ptr_range(size, 0).unwrap(), p.add(SIZE - 100));
            for (off, len) in [(size - 1, 2usize), (size + 1, 0), (u64::MAX, 1)] {
                assert!(matches!(
                    m.as_ptr_range(off, len),
                    Err(DaxError::OutOfRange { .. })
                ));
                assert!(matches!(
                    m.as_mut_ptr_range(off, len),
                    Err(DaxError::OutOfRange { .. })
                ));
            }
        }
        let mut b = [0u8; 5];
        m.read_at(100, &mut b).unwrap();
        assert_eq!(&b, b"raw!!");
    }

    #[test]
    fn punch_hole_reads_zeros_and_frees_blocks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, vec![0x55u8; 1 << 20]).unwrap();
        let m = DaxMapping::map_plain_for_tests(&p, PersistenceDomain::MemoryController).unwrap();
        m.punch_hole(4096, 64 * 1024).unwrap();
        // A range not on block boundaries: the partial blocks are zeroed.
        m.punch_hole(200_000, 333).unwrap();
        let mut all = vec![0u8; 1 << 20];
        m.read_at(0, &mut all).unwrap();
        let mut want = vec![0x55u8; 1 << 20];
        want[4096..4096 + 64 * 1024].fill(0);
        want[200_000..200_333].fill(0);
        assert!(all == want);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        assert!(matches!(
            m.punch_hole(1 << 20, 1),
            Err(DaxError::OutOfRange { .. })
        ));
        m.punch_hole(1 << 20, 0).unwrap();
        assert_eq!(m.file().metadata().unwrap().len(), 1 << 20);
        assert!(m.as_raw_fd() >= 0);
    }

    #[test]
    fn read_only_mapping_refuses_mut_ptr_and_punch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ro");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&p, perms).unwrap();
        let m = DaxMapping::map_plain_for_tests(&p, PersistenceDomain::Unknown).unwrap();
        if m.is_writable() {
            eprintln!("running as root: read-only permissions do not apply; skipping");
            return;
        }
        // SAFETY (test): the pointer is not used.
        assert!(matches!(
            unsafe { m.as_mut_ptr_range(0, 1) },
            Err(DaxError::ReadOnly { .. })
        ));
        assert!(matches!(
            m.punch_hole(0, 4096),
            Err(DaxError::ReadOnly { .. })
        ));
    }

    #[test]
    fn flush_choice_follows_domain() {
        let (_d, m) = plain(PersistenceDomain::CpuCache);
        assert_eq!(m.flush_instr(), FlushInstr::FenceOnly);
        let (_d2, m2) = plain(PersistenceDomain::MemoryController);
        #[cfg(target_arch = "x86_64")]
        assert_ne!(m2.flush_instr(), FlushInstr::FenceOnly);
        assert_eq!(m2.kind(), None);
        assert_eq!(m2.len(), SIZE as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn nt_and_cached_identical(
            ops in proptest::collection::vec((0usize..SIZE, 0usize..30_000, any::<u8>(), any::<bool>()), 1..12)
        ) {
            let (_d1, mut a) = plain(PersistenceDomain::MemoryController);
            let (_d2, mut b) = plain(PersistenceDomain::MemoryController);
            a.set_write_strategy(WriteStrategy::Cached);
            b.set_write_strategy(WriteStrategy::NonTemporal);
            for (off, len, seed, zero) in ops {
                let len = len.min(SIZE - off);
                if zero {
                    a.fill_zero(off as u64, len as u64).unwrap();
                    b.fill_zero(off as u64, len as u64).unwrap();
                } else {
                    let data = pattern(len, seed);
                    a.write_at(off as u64, &data).unwrap();
                    b.write_at(off as u64, &data).unwrap();
                }
            }
            let mut x = vec![0u8; SIZE];
            let mut y = vec![0u8; SIZE];
            a.read_at(0, &mut x).unwrap();
            b.read_at(0, &mut y).unwrap();
            prop_assert!(x == y);
        }
    }
}

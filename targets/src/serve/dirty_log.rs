//! The dirty region log (dm-log): which regions of a replicated device
//! may differ between its legs. `core` keeps it in memory only; `disk`
//! keeps it on a log device in the kernel's on-disk format, so that a log
//! kernel dm-mirror wrote is read here and the other way round.
//!
//! The format (dm-log.c): at byte 0 a header `{le32 magic, le32 version,
//! le64 nr_regions}`, at byte 1024 (`LOG_OFFSET`, 2 sectors) the clean
//! bitmap, one bit per region in little-endian bit order (bit set: the
//! region is clean), its size rounded up to 64 regions; the whole buffer
//! rounded up to the log device's logical block size is read and written
//! back at once, the bytes between kept as they were.
//!
//! This file holds the log's state and its rules; the I/O is the target's.

use crate::args::scan_u32;
use crate::target::{Ctr, DevIdx};

const MIRROR_MAGIC: u32 = 0x4D69_5272;
const DISK_VERSION: u32 = 2;
/// Where the bitmap starts, in bytes.
const LOG_OFFSET: usize = 1024;
/// `BITS_PER_LONG`: the bitmap is sized in longs.
const LONG_BITS: u64 = 64;

/// The log's `[no]sync` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Resync what the log says is out of sync (all of it for `core`).
    Default,
    /// `nosync`: the legs are known to be the same.
    NoSync,
    /// `sync`: resync everything.
    ForceSync,
}

/// What a log's table arguments say.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// The log device of a `disk` log.
    pub disk: Option<DevIdx>,
    /// Region size in sectors (a power of two).
    pub region_size: u64,
    pub sync: SyncMode,
    pub regions: u64,
}

impl LogSpec {
    /// `<type> <args…>` as `dm_dirty_log_create` reads them for a target of
    /// `len` sectors; the refusal is the log's `DMWARN` text.
    pub fn parse(c: &mut Ctr<'_>, kind: &str, args: &[String]) -> Result<LogSpec, String> {
        let (disk, rest) = match kind {
            "core" => (None, args),
            "disk" => {
                if !(2..=3).contains(&args.len()) {
                    return Err("wrong number of arguments to disk dirty region log".into());
                }
                (Some(c.device(&args[0])?), &args[1..])
            }
            other => return Err(format!("unknown dirty log type {other:?}")),
        };
        if !(1..=2).contains(&rest.len()) {
            return Err("wrong number of arguments to dirty region log".into());
        }
        let sync = match rest.get(1).map(String::as_str) {
            None => SyncMode::Default,
            Some("sync") => SyncMode::ForceSync,
            Some("nosync") => SyncMode::NoSync,
            Some(s) => {
                return Err(format!(
                    "unrecognised sync argument to dirty region log: {s}"
                ))
            }
        };
        let region_size = scan_u32(&rest[0])
            .map(u64::from)
            .filter(|&r| r >= 2 && r <= c.len && r.is_power_of_two())
            .ok_or_else(|| format!("invalid region size {}", rest[0]))?;
        let regions = c.len.div_ceil(region_size);
        if regions > u64::from(u32::MAX) {
            return Err(format!("region count exceeds limit of {}", u32::MAX));
        }
        Ok(LogSpec {
            disk,
            region_size,
            sync,
            regions,
        })
    }

    /// Bytes of one bitmap.
    pub fn bitset_bytes(&self) -> usize {
        (self.regions.div_ceil(LONG_BITS) * LONG_BITS / 8) as usize
    }

    /// Bytes of the disk buffer for a log device of logical block `block`.
    pub fn buf_bytes(&self, block: u64) -> usize {
        let b = block.max(512) as usize;
        (LOG_OFFSET + self.bitset_bytes()).div_ceil(b) * b
    }

    /// `STATUSTYPE_TABLE` of the log (with the kernel's trailing space).
    pub fn table_args(&self, devs: &[String]) -> String {
        let n = usize::from(self.sync != SyncMode::Default);
        let mut s = match self.disk {
            None => format!("core {} {} ", 1 + n, self.region_size),
            Some(d) => format!("disk {} {} {} ", 2 + n, devs[d], self.region_size),
        };
        match self.sync {
            SyncMode::Default => {}
            SyncMode::NoSync => s.push_str("nosync "),
            SyncMode::ForceSync => s.push_str("sync "),
        }
        s
    }
}

/// A bitmap in the kernel's byte layout (little-endian bit order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bits(Vec<u8>);

impl Bits {
    pub fn new(bytes: usize, ones: bool) -> Bits {
        Bits(vec![if ones { 0xff } else { 0 }; bytes])
    }

    pub fn get(&self, i: u64) -> bool {
        self.0[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i` to `v`; whether it changed.
    pub fn set(&mut self, i: u64, v: bool) -> bool {
        let (byte, bit) = ((i / 8) as usize, 1u8 << (i % 8));
        let was = self.0[byte] & bit != 0;
        match v {
            true => self.0[byte] |= bit,
            false => self.0[byte] &= !bit,
        }
        was != v
    }

    pub fn count_ones(&self) -> u64 {
        self.0.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// How the log device is doing (the `A`/`D`/`F` of the log's status).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogHealth {
    pub failed: bool,
    pub flush_failed: bool,
}

impl LogHealth {
    fn char(self) -> char {
        match (self.flush_failed, self.failed) {
            (true, _) => 'F',
            (_, true) => 'D',
            _ => 'A',
        }
    }
}

/// One log's state: the clean bits (what the log device says), the
/// in-sync bits, and the disk buffer they are written back in.
#[derive(Debug)]
pub struct DirtyLog {
    pub spec: LogSpec,
    clean: Bits,
    sync: Bits,
    sync_count: u64,
    /// Regions cleaned or dirtied since the log was last written.
    pub touched: bool,
    /// The disk buffer as last read (empty for `core`).
    buf: Vec<u8>,
    pub health: LogHealth,
}

impl DirtyLog {
    /// The state a constructor leaves: everything clean; in sync only
    /// with `nosync`.
    pub fn new(spec: LogSpec) -> DirtyLog {
        let n = spec.bitset_bytes();
        let nosync = spec.sync == SyncMode::NoSync;
        DirtyLog {
            clean: Bits::new(n, true),
            sync: Bits::new(n, nosync),
            sync_count: if nosync { spec.regions } else { 0 },
            spec,
            touched: false,
            buf: Vec::new(),
            health: LogHealth::default(),
        }
    }

    /// `disk_resume`: takes the buffer read from the log device (`None`:
    /// the read failed), applies the kernel's rules (a new log unless the
    /// magic matches and `[no]sync` was not given, new regions clean only
    /// with `nosync`, bits past the end cleared), copies clean to in-sync,
    /// and returns the buffer to write back and flush.
    pub fn resume_disk(&mut self, read: Option<Vec<u8>>, block: u64) -> Vec<u8> {
        let size = self.spec.buf_bytes(block);
        let mut nr_regions = 0;
        match read {
            Some(b) if b.len() >= size => {
                let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
                let mut version = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
                let fresh = self.spec.sync != SyncMode::Default || magic != MIRROR_MAGIC;
                if fresh {
                    version = DISK_VERSION;
                } else {
                    nr_regions = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                }
                if version == 1 {
                    version = DISK_VERSION;
                }
                if version != DISK_VERSION {
                    self.health.failed = true;
                    nr_regions = 0;
                }
                self.buf = b;
                self.clean =
                    Bits(self.buf[LOG_OFFSET..LOG_OFFSET + self.spec.bitset_bytes()].to_vec());
            }
            _ => {
                self.health.failed = true;
                self.buf = vec![0; size];
            }
        }
        let nosync = self.spec.sync == SyncMode::NoSync;
        for i in nr_regions.min(self.spec.regions)..self.spec.regions {
            self.clean.set(i, nosync);
        }
        let end = self.spec.regions.div_ceil(LONG_BITS) * LONG_BITS;
        for i in self.spec.regions..end {
            self.clean.set(i, false);
        }
        self.sync = self.clean.clone();
        self.sync_count = self.sync.count_ones();
        self.touched = true;
        self.to_disk()
    }

    /// The disk buffer with the current header and clean bits.
    pub fn to_disk(&self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b[0..4].copy_from_slice(&MIRROR_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&DISK_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.spec.regions.to_le_bytes());
        let bits = self.clean.bytes();
        b[LOG_OFFSET..LOG_OFFSET + bits.len()].copy_from_slice(bits);
        b
    }

    pub fn is_clean(&self, r: u64) -> bool {
        self.clean.get(r)
    }

    /// `mark_region`: the region may differ from now on; whether the log
    /// changed (and must be written and flushed before the write).
    pub fn mark(&mut self, r: u64) -> bool {
        let changed = self.clean.set(r, false);
        self.touched |= changed;
        changed
    }

    /// `clear_region`: every leg has the region.
    pub fn clear(&mut self, r: u64) {
        self.touched |= self.clean.set(r, true);
    }

    pub fn in_sync(&self, r: u64) -> bool {
        self.sync.get(r)
    }

    /// `set_region_sync`.
    pub fn set_sync(&mut self, r: u64, in_sync: bool) {
        if self.sync.set(r, in_sync) {
            match in_sync {
                true => self.sync_count += 1,
                false => self.sync_count -= 1,
            }
        }
    }

    pub fn sync_count(&self) -> u64 {
        self.sync_count
    }

    /// `get_resync_work`: the first region out of sync at or after `from`.
    pub fn next_out_of_sync(&self, from: u64) -> Option<u64> {
        (from..self.spec.regions).find(|&r| !self.sync.get(r))
    }

    /// The log's part of `STATUSTYPE_INFO`.
    pub fn status(&self, devs: &[String]) -> String {
        match self.spec.disk {
            None => "1 core".into(),
            Some(d) => format!("3 disk {} {}", devs[d], self.health.char()),
        }
    }
}

//! Counters for `rdm status`: per segment and per backing device, like
//! dm-stripe's per-device error counts (its A/D state).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub errors: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts one READ (or WRITE, `write`) piece of `len` bytes.
    pub fn count_rw(&self, write: bool, len: u64) {
        let (ops, bytes) = if write {
            (&self.writes, &self.write_bytes)
        } else {
            (&self.reads, &self.read_bytes)
        };
        Self::add(ops, 1);
        Self::add(bytes, len);
    }

    /// Counts one DISCARD (`discard`) or WRITE_ZEROES piece.
    pub fn count_range_op(&self, discard: bool) {
        Self::add(
            if discard {
                &self.discards
            } else {
                &self.write_zeroes
            },
            1,
        );
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            write_bytes: self.write_bytes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            discards: self.discards.load(Relaxed),
            write_zeroes: self.write_zeroes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// All counters of one device.
#[derive(Debug)]
pub struct Stats {
    pub segments: Vec<Counters>,
    pub devices: Vec<Counters>,
}

impl Stats {
    pub fn new(segments: usize, devices: usize) -> Self {
        Stats {
            segments: (0..segments).map(|_| Counters::default()).collect(),
            devices: (0..devices).map(|_| Counters::default()).collect(),
        }
    }
}

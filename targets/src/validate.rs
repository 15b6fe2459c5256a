//! Rules that need facts about the backing devices, handed in by the caller.

use serde::Serialize;

use crate::error::{TableError, TableErrorKind as K};
use crate::table::Table;
use crate::target::Extent;
use crate::{SECTOR_SHIFT, SECTOR_SIZE};

/// What the caller found out about one backing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Usable size in bytes (file length, or block device size).
    pub size_bytes: u64,
    /// The device cannot be opened for writing.
    pub read_only: bool,
    /// Identifies the underlying object (st_dev/st_ino, or st_rdev for a
    /// block device), so two paths to one file are recognised as one.
    pub identity: (u64, u64),
}

impl Table {
    /// Checks the table against its backing devices (`infos` indexed like
    /// [`Table::devices`]): every range fits inside its device, a writable
    /// table has no read-only device, and no byte of one device is mapped
    /// writable twice (the same file reached by two paths counts as one).
    pub fn check_devices(&self, infos: &[DeviceInfo], writable: bool) -> Result<(), TableError> {
        assert_eq!(infos.len(), self.devices.len(), "one DeviceInfo per device");
        let err = |seg: usize, kind| {
            let s = &self.segments[seg];
            TableError::new(s.line, &self.line_text(seg), kind)
        };
        let extents = self.extents();
        for e in &extents {
            let info = &infos[e.dev];
            let dev_sectors = info.size_bytes / SECTOR_SIZE;
            let end = e.start.checked_add(e.len);
            if end.is_none_or(|end| end > dev_sectors) {
                return Err(err(
                    e.segment,
                    K::DeviceTooSmall {
                        path: self.devices[e.dev].clone(),
                        dev_sectors,
                        start: e.start,
                        end: e.start.saturating_add(e.len),
                    },
                ));
            }
            if writable && info.read_only {
                return Err(err(
                    e.segment,
                    K::ReadOnlyDevice {
                        path: self.devices[e.dev].clone(),
                    },
                ));
            }
        }
        if writable {
            let mut by_object: Vec<(&(u64, u64), &Extent)> = extents
                .iter()
                .filter(|e| e.written)
                .map(|e| (&infos[e.dev].identity, e))
                .collect();
            by_object.sort_by_key(|(id, e)| (**id, e.start));
            for w in by_object.windows(2) {
                let ((id_a, a), (id_b, b)) = (w[0], w[1]);
                if id_a == id_b && b.start < a.start + a.len {
                    let (later, earlier) = if a.segment >= b.segment {
                        (a, b)
                    } else {
                        (b, a)
                    };
                    return Err(err(
                        later.segment,
                        K::Overlap {
                            path: self.devices[later.dev].clone(),
                            start: b.start,
                            end: (a.start + a.len).min(b.start + b.len),
                            other_line: self.segments[earlier.segment].line,
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that the table can be served with the given logical block
    /// size: every segment boundary, backing offset and chunk must be a
    /// multiple of it, or requests would be split off block boundaries (the
    /// kernel's `validate_hardware_logical_block_alignment`).
    pub fn check_block_size(&self, block_size: u32) -> Result<(), TableError> {
        let mask = (u64::from(block_size) >> SECTOR_SHIFT).max(1) - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            let mis = |what, value: u64| {
                (value & mask != 0).then(|| {
                    TableError::new(
                        seg.line,
                        &self.line_text(i),
                        K::Misaligned {
                            what,
                            value,
                            block_size,
                        },
                    )
                })
            };
            let mut checks = vec![("start sector", seg.start), ("length", seg.len)];
            checks.extend(seg.target.aligned());
            if let Some(e) = checks.into_iter().find_map(|(w, v)| mis(w, v)) {
                return Err(e);
            }
        }
        Ok(())
    }
}

//! A validated table: contiguous segments from sector 0, each served by its
//! target. Parsing, printing and mapping go through the [`Target`] trait and
//! the registry; nothing here names a target.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::Serialize;

use crate::args::{digits, escape_path, split_args};
use crate::error::{MapError, TableError, TableErrorKind as K};
use crate::target::{Ctr, DevIdx, Extent, Io, Op, Piece, PieceKind, StatusCtx, Target};
use crate::{targets, SECTOR_SHIFT, SECTOR_SIZE};

/// The longest table text [`Table::parse`] reads (1 MiB: tens of
/// thousands of segments; the control socket's limit too).
pub const MAX_TABLE_BYTES: usize = 1 << 20;

/// A validated table. Cloning shares the targets (and their run-time state).
#[derive(Debug, Clone)]
pub struct Table {
    pub(crate) segments: Vec<Segment>,
    /// Distinct backing paths, in order of first appearance.
    pub(crate) devices: Vec<PathBuf>,
    pub(crate) total_sectors: u64,
}

/// One table line: `len` sectors from `start` served by `target`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub start: u64,
    pub len: u64,
    pub target: Arc<dyn Target>,
    /// 1-based line of the source text, for error messages.
    pub line: usize,
}

impl Table {
    /// Parses and validates a table: one `<start> <length> <type> <args...>`
    /// line per segment, blank lines and lines starting with `#` ignored.
    ///
    /// Checks everything that needs no I/O, with the kernel's rules: known
    /// target types, non-empty segments that start at 0 and adjoin, then
    /// each target's own constructor. Backing files are checked separately
    /// by [`Table::check_devices`].
    pub fn parse(text: &str) -> Result<Table, TableError> {
        if text.len() > MAX_TABLE_BYTES {
            let kind = K::TooLong {
                bytes: text.len(),
                max: MAX_TABLE_BYTES,
            };
            return Err(TableError::new(0, "", kind));
        }
        let mut table = Table {
            segments: Vec::new(),
            devices: Vec::new(),
            total_sectors: 0,
        };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |kind| TableError::new(line, raw, kind);
            let words = split_args(trimmed);
            if words.len() < 3 {
                return Err(err(K::Syntax));
            }
            let start = sectors("start", &words[0]).map_err(err)?;
            let len = sectors("length", &words[1]).map_err(err)?;
            // dm_table_add_target's order: zero length, unknown type, gap,
            // then the target's own constructor.
            if len == 0 {
                return Err(err(K::ZeroLength));
            }
            let Some(ty) = targets::lookup(&words[2]) else {
                return Err(err(K::UnknownTarget {
                    name: words[2].clone(),
                    known: targets::names(),
                }));
            };
            if start != table.total_sectors {
                return Err(err(K::Gap {
                    start,
                    expected: table.total_sectors,
                }));
            }
            let mut ctr = Ctr {
                len,
                args: &words[3..],
                devices: &mut table.devices,
            };
            let target = (ty.ctr)(&mut ctr).map_err(|msg| {
                err(K::Target {
                    target: ty.name,
                    msg,
                })
            })?;
            table.total_sectors = start
                .checked_add(len)
                .filter(|end| end.checked_mul(SECTOR_SIZE).is_some())
                .ok_or_else(|| err(K::TooLarge))?;
            // The target maps inside its extents: each must end within
            // 2^64 bytes for the backing byte offsets to fit.
            let beyond = target.extents(table.segments.len()).into_iter().find(|e| {
                e.start
                    .checked_add(e.len)
                    .and_then(|end| end.checked_mul(SECTOR_SIZE))
                    .is_none()
            });
            if let Some(e) = beyond {
                return Err(err(K::BackingTooLarge {
                    path: table.devices[e.dev].clone(),
                    start: e.start,
                }));
            }
            table.segments.push(Segment {
                start,
                len,
                target,
                line,
            });
        }
        if table.segments.is_empty() {
            return Err(TableError::new(0, "", K::Empty));
        }
        Ok(table)
    }

    /// All segments, in sector order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Distinct backing device paths; [`DevIdx`] values index this slice.
    pub fn devices(&self) -> &[PathBuf] {
        &self.devices
    }

    pub fn device_path(&self, dev: DevIdx) -> &Path {
        &self.devices[dev]
    }

    /// Rewrites every backing path (e.g. to make relative paths absolute
    /// before a daemon changes directory). Paths that become equal merge
    /// into one device, as if the table had named them alike.
    pub fn rewrite_paths(&self, mut f: impl FnMut(&Path) -> PathBuf) -> Table {
        let names: Vec<String> = self.devices.iter().map(|p| escape_path(&f(p))).collect();
        Table::parse(&self.text_with(&names)).expect("a valid table stays valid with other paths")
    }

    /// Device size in 512-byte sectors.
    pub fn total_sectors(&self) -> u64 {
        self.total_sectors
    }

    /// Device size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors << SECTOR_SHIFT
    }

    /// Every backing range the table uses, segment by segment.
    pub fn extents(&self) -> Vec<Extent> {
        (self.segments.iter().enumerate())
            .flat_map(|(i, s)| s.target.extents(i))
            .collect()
    }

    /// I/O hints for the block device, as dm's `io_hints`: those of the
    /// first segment whose target has any (io_min, io_opt in sectors).
    pub fn io_hints(&self) -> Option<(u64, u64)> {
        self.segments.iter().find_map(|s| s.target.io_hints())
    }

    /// The first segment whose target cannot pass DAX through, if any.
    pub fn non_dax_segment(&self) -> Option<&Segment> {
        self.segments.iter().find(|s| !s.target.supports_dax())
    }

    /// Whether the table can pass DAX through, given each device's answer
    /// (indexed like [`Table::devices`]). Mirrors `dm_table_supports_dax`:
    /// every target must implement direct access and every device must be
    /// DAX-capable.
    pub fn supports_dax(&self, device_dax: &[bool]) -> bool {
        assert_eq!(
            device_dax.len(),
            self.devices.len(),
            "one answer per device"
        );
        self.non_dax_segment().is_none() && device_dax.iter().all(|&d| d)
    }

    /// `dmsetup status`: one `<start> <len> <type> <status>` line per
    /// segment, with `dev_errors` per device for the targets that report
    /// device health.
    pub fn status_lines(&self, dev_errors: &[u64]) -> Vec<String> {
        let names = self.device_names();
        let ctx = StatusCtx {
            names: &names,
            dev_errors,
        };
        self.segments
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} {}",
                    s.start,
                    s.len,
                    s.target.name(),
                    s.target.status(&ctx)
                )
            })
            .collect()
    }

    fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|p| escape_path(p)).collect()
    }

    /// The table as text with `names[i]` for device `i`.
    fn text_with(&self, names: &[String]) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push_str(&segment_line(s, names));
            out.push('\n');
        }
        out
    }

    /// The normalized text of one segment, for error messages.
    pub(crate) fn line_text(&self, seg: usize) -> String {
        segment_line(&self.segments[seg], &self.device_names())
    }

    /// Maps a request onto its targets' pieces, appending to `out` (which a
    /// caller may reuse across requests).
    ///
    /// A request that reaches past the device end is refused whole, so that
    /// nothing of it is carried out. A zero-length request maps to nothing.
    pub fn map(
        &self,
        op: Op,
        opf: u32,
        sector: u64,
        nr_sectors: u64,
        out: &mut Vec<Piece>,
    ) -> Result<(), MapError> {
        let end = sector
            .checked_add(nr_sectors)
            .filter(|&e| e <= self.total_sectors)
            .ok_or(MapError {
                sector,
                nr_sectors,
                total_sectors: self.total_sectors,
            })?;
        if nr_sectors == 0 {
            return Ok(());
        }
        // The last segment starting at or before `sector`.
        let mut idx = self.segments.partition_point(|s| s.start <= sector) - 1;
        let mut cur = sector;
        while cur < end {
            let seg = &self.segments[idx];
            let seg_end = (seg.start + seg.len).min(end);
            let io = Io {
                op,
                opf,
                segment: idx,
                offset: cur - seg.start,
                len: seg_end - cur,
                buf_offset: (cur - sector) << SECTOR_SHIFT,
            };
            seg.target.map(&io, out);
            cur = seg_end;
            idx += 1;
        }
        Ok(())
    }

    /// Like [`Table::map`] for requests whose data buffer does not matter
    /// (discard, write-zeroes): pieces on the same device that continue each
    /// other are merged, so a striped range becomes one range per stripe
    /// run instead of one per chunk, as dm-stripe's `stripe_map_range` does.
    pub fn map_range(
        &self,
        op: Op,
        opf: u32,
        sector: u64,
        nr_sectors: u64,
        out: &mut Vec<Piece>,
    ) -> Result<(), MapError> {
        let first = out.len();
        self.map(op, opf, sector, nr_sectors, out)?;
        let mut merged: Vec<Piece> = Vec::with_capacity(out.len() - first);
        for p in out.drain(first..) {
            let joined = merged.iter_mut().rev().find(|m| continues(m, &p));
            match joined {
                Some(m) => m.len += p.len,
                None => merged.push(p),
            }
        }
        out.extend(merged);
        Ok(())
    }

    /// FLUSH: what each segment's target does with a flush (by default,
    /// flush every device it uses).
    /// The target of a [`PieceKind::Serve`] piece and the part of the
    /// request it stands for, as that target's `serve` gets it.
    pub fn served(&self, p: &Piece, op: Op, opf: u32) -> Option<(&dyn Target, Io)> {
        let PieceKind::Serve { offset } = p.kind else {
            return None;
        };
        let seg = self.segments.get(p.segment)?;
        let io = Io {
            op,
            opf,
            segment: p.segment,
            offset,
            len: p.len >> SECTOR_SHIFT,
            buf_offset: p.buf_offset,
        };
        Some((&*seg.target, io))
    }

    /// Whether any segment's target serves requests or has hooks.
    pub fn has_serving_targets(&self) -> bool {
        self.segments.iter().any(|s| s.target.serves())
    }

    /// The segment holding `sector`, for messages (`dmsetup message`
    /// addresses a target by a sector inside it).
    pub fn segment_at(&self, sector: u64) -> Option<usize> {
        if sector >= self.total_sectors {
            return None;
        }
        Some(self.segments.partition_point(|s| s.start <= sector) - 1)
    }

    pub fn flush(&self, out: &mut Vec<Piece>) {
        for (i, s) in self.segments.iter().enumerate() {
            s.target.flush(i, out);
        }
    }
}

/// Whether `p` continues `m` on the same device, in the same way.
fn continues(m: &Piece, p: &Piece) -> bool {
    match (m.kind, p.kind) {
        (
            PieceKind::Io {
                dev: d1,
                dev_offset: o1,
            },
            PieceKind::Io {
                dev: d2,
                dev_offset: o2,
            },
        ) => d1 == d2 && m.segment == p.segment && o1 + m.len == o2,
        _ => false,
    }
}

fn segment_line(s: &Segment, names: &[String]) -> String {
    let args = s.target.table_args(names);
    let mut line = format!("{} {} {}", s.start, s.len, s.target.name());
    if !args.is_empty() {
        line.push(' ');
        line.push_str(&args);
    }
    line
}

fn sectors(what: &'static str, s: &str) -> Result<u64, K> {
    digits(s).ok_or_else(|| K::BadNumber {
        what,
        value: s.to_string(),
    })
}

/// The normalized table, one line per segment, as `dmsetup table` prints it
/// (with backing paths where the kernel prints major:minor).
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text_with(&self.device_names()))
    }
}

/// Two tables are equal when they print the same.
impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Table {}

/// `{segments: [{start, len, line, target: {type, args}}], devices,
/// total_sectors}`, with `args` as `dmsetup table` prints them.
impl Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tgt {
            #[serde(rename = "type")]
            kind: &'static str,
            args: String,
        }
        #[derive(Serialize)]
        struct Seg {
            start: u64,
            len: u64,
            line: usize,
            target: Tgt,
        }
        let names = self.device_names();
        let segs: Vec<Seg> = self
            .segments
            .iter()
            .map(|x| Seg {
                start: x.start,
                len: x.len,
                line: x.line,
                target: Tgt {
                    kind: x.target.name(),
                    args: x.target.table_args(&names),
                },
            })
            .collect();
        let mut st = s.serialize_struct("Table", 3)?;
        st.serialize_field("segments", &segs)?;
        st.serialize_field("devices", &self.devices)?;
        st.serialize_field("total_sectors", &self.total_sectors)?;
        st.end()
    }
}

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Index of a backing device in [`Table::devices`].
pub type DevIdx = usize;

/// A validated table: contiguous segments from sector 0, each with its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub(crate) segments: Vec<Segment>,
    /// Distinct backing paths, in order of first appearance.
    pub(crate) devices: Vec<PathBuf>,
    pub(crate) total_sectors: u64,
}

/// One table line: `len` sectors from `start` handled by `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub start: u64,
    pub len: u64,
    pub target: Target,
    /// 1-based line of the source text, for error messages.
    pub line: usize,
}

/// What a segment does with its sectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    /// `linear <dev> <offset>`: sectors map 1:1 onto `dev` from `offset`.
    Linear { dev: DevIdx, offset: u64 },
    /// `striped <#stripes> <chunk> (<dev> <offset>)+`: chunk `c` of the
    /// segment lives on stripe `c % #stripes`, as in dm-stripe.
    Striped { chunk: u64, stripes: Vec<Stripe> },
    /// Reads return zeros, writes are discarded.
    Zero,
    /// Every I/O fails with EIO.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stripe {
    pub dev: DevIdx,
    pub offset: u64,
}

/// The name of a target type as written in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Linear,
    Striped,
    Zero,
    Error,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Linear => "linear",
            TargetKind::Striped => "striped",
            TargetKind::Zero => "zero",
            TargetKind::Error => "error",
        }
    }
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Linear { .. } => TargetKind::Linear,
            Target::Striped { .. } => TargetKind::Striped,
            Target::Zero => TargetKind::Zero,
            Target::Error => TargetKind::Error,
        }
    }
}

impl Table {
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
        let text = Table {
            segments: self.segments.clone(),
            devices: self.devices.iter().map(|p| f(p)).collect(),
            total_sectors: self.total_sectors,
        }
        .to_string();
        Table::parse(&text).expect("a valid table stays valid with other paths")
    }

    /// Device size in 512-byte sectors.
    pub fn total_sectors(&self) -> u64 {
        self.total_sectors
    }

    /// Device size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors << crate::SECTOR_SHIFT
    }

    /// The devices used by one segment, each once, in table order.
    pub fn segment_devices(&self, seg: &Segment) -> Vec<DevIdx> {
        let mut out = Vec::new();
        match &seg.target {
            Target::Linear { dev, .. } => out.push(*dev),
            Target::Striped { stripes, .. } => {
                for s in stripes {
                    if !out.contains(&s.dev) {
                        out.push(s.dev);
                    }
                }
            }
            Target::Zero | Target::Error => {}
        }
        out
    }

    /// I/O hints for the block device, as dm-stripe's `io_hints`: for a table
    /// with striped segments, the chunk (io_min) and a full stripe (io_opt)
    /// of the first striped segment; `None` otherwise.
    pub fn stripe_hints(&self) -> Option<(u64, u64)> {
        self.segments.iter().find_map(|s| match &s.target {
            Target::Striped { chunk, stripes } => Some((*chunk, *chunk * stripes.len() as u64)),
            _ => None,
        })
    }

    /// Whether the table can pass DAX through, given each device's answer
    /// (indexed like [`Table::devices`]). Mirrors `dm_table_supports_dax`:
    /// every target must implement direct access and every device must be
    /// DAX-capable. `zero` has no direct access in the kernel, so a table with
    /// a zero segment is not DAX-capable; `error` does (it fails the access).
    pub fn supports_dax(&self, device_dax: &[bool]) -> bool {
        assert_eq!(
            device_dax.len(),
            self.devices.len(),
            "one answer per device"
        );
        self.segments
            .iter()
            .all(|s| !matches!(s.target, Target::Zero))
            && device_dax.iter().all(|&d| d)
    }
}

/// Escapes a path the way `dm_split_args` reads it back: backslash before
/// white space and before a backslash.
fn write_path(f: &mut fmt::Formatter<'_>, p: &Path) -> fmt::Result {
    for c in p.to_string_lossy().chars() {
        if c.is_whitespace() || c == '\\' {
            write!(f, "\\")?;
        }
        write!(f, "{c}")?;
    }
    Ok(())
}

/// The normalized table, one line per segment, as `dmsetup table` prints it
/// (with backing paths where the kernel prints major:minor).
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.segments {
            write!(f, "{} {} {}", seg.start, seg.len, seg.target.kind().name())?;
            match &seg.target {
                Target::Linear { dev, offset } => {
                    write!(f, " ")?;
                    write_path(f, &self.devices[*dev])?;
                    write!(f, " {offset}")?;
                }
                Target::Striped { chunk, stripes } => {
                    write!(f, " {} {chunk}", stripes.len())?;
                    for s in stripes {
                        write!(f, " ")?;
                        write_path(f, &self.devices[s.dev])?;
                        write!(f, " {}", s.offset)?;
                    }
                }
                Target::Zero | Target::Error => {}
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

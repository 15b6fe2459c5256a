use std::path::PathBuf;

/// A table that cannot be used, with the line it came from.
///
/// `line` is 1-based and refers to the text given to [`crate::Table::parse`];
/// `text` is that line as written so a user sees what was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", line_prefix(*line))]
pub struct TableError {
    pub line: usize,
    pub text: String,
    pub kind: TableErrorKind,
}

/// The rule a table broke. Messages follow the kernel's `ti->error` strings
/// where the kernel has one, so users of dmsetup recognise them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableErrorKind {
    #[error("the table is empty: it needs at least one `<start> <length> <type> <args...>` line")]
    Empty,
    #[error("expected `<start> <length> <type> <args...>`")]
    Syntax,
    /// Bounded like dm's ioctl buffer: a table this long is a mistake or
    /// an attack, not a device.
    #[error("the table is {bytes} bytes long; at most {max} are accepted")]
    TooLong { bytes: usize, max: usize },
    #[error("invalid {what} {value:?}: expected a decimal number of 512-byte sectors")]
    BadNumber { what: &'static str, value: String },
    #[error("unknown target type {name:?} (known: {known})")]
    UnknownTarget { name: String, known: String },
    #[error("zero-length target")]
    ZeroLength,
    #[error("gap in table: this segment starts at sector {start} but the previous one ends at {expected}")]
    Gap { start: u64, expected: u64 },
    #[error("the table is larger than 2^64 bytes")]
    TooLarge,
    /// A backing range (offset + length) past 2^64 bytes: no device is
    /// that large, and its byte offsets would not fit in 64 bits.
    #[error("{path}: the table uses sectors {start}.. of it, past 2^64 bytes")]
    BackingTooLarge { path: PathBuf, start: u64 },
    /// A target's constructor refused its arguments: the kernel's
    /// `ti->error`, or ours worded the same way.
    #[error("{target}: {msg}")]
    Target { target: &'static str, msg: String },
    #[error("{path}: too small for target: it is {dev_sectors} sectors, the table uses sectors {start}..{end}")]
    DeviceTooSmall {
        path: PathBuf,
        dev_sectors: u64,
        start: u64,
        end: u64,
    },
    #[error("{path}: the device is read-only but the table is writable (use --read-only)")]
    ReadOnlyDevice { path: PathBuf },
    #[error(
        "{path}: sectors {start}..{end} are mapped writable twice (also on line {other_line})"
    )]
    Overlap {
        path: PathBuf,
        start: u64,
        end: u64,
        other_line: usize,
    },
    #[error("{what} {value} is not aligned to the {block_size}-byte logical block size")]
    Misaligned {
        what: &'static str,
        value: u64,
        block_size: u32,
    },
}

/// `line N: `, or nothing for what is about the whole table (line 0).
fn line_prefix(line: usize) -> String {
    match line {
        0 => String::new(),
        n => format!("line {n}: "),
    }
}

impl TableError {
    pub(crate) fn new(line: usize, text: &str, kind: TableErrorKind) -> Self {
        Self {
            line,
            text: text.trim().to_string(),
            kind,
        }
    }
}

/// A request that does not fit the device (the server answers it with -EIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request of {nr_sectors} sectors at sector {sector} is beyond the device end ({total_sectors} sectors)")]
pub struct MapError {
    pub sector: u64,
    pub nr_sectors: u64,
    pub total_sectors: u64,
}

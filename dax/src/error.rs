//! The crate's error type: real failures, never "DAX is unsupported" in
//! disguise (that is [`crate::Dax::Unsupported`], except where an operation
//! that *requires* DAX — [`crate::DaxMapping::open`] — is asked of a path
//! that lacks it).

use std::io;
use std::path::PathBuf;

use crate::probe::Unsupported;

/// A failure of probing or of a mapping operation.
#[derive(Debug, thiserror::Error)]
pub enum DaxError {
    /// A system call or sysfs read on `path` failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The file, device or sysfs attribute concerned.
        path: PathBuf,
        /// What was being done ("open", "stat", "mmap", "read" ...).
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// DAX was required (e.g. by [`crate::DaxMapping::open`]) but the path
    /// does not support it.
    #[error("{0}")]
    Unsupported(Unsupported),
    /// A zero-length file cannot be mapped.
    #[error("cannot map {}: the file is empty", path.display())]
    Empty {
        /// The file concerned.
        path: PathBuf,
    },
    /// An access outside the mapping.
    #[error(
        "range {offset}+{len} is outside the {size}-byte mapping of {}",
        path.display()
    )]
    OutOfRange {
        /// The mapped path.
        path: PathBuf,
        /// Requested start offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Size of the mapping.
        size: u64,
    },
    /// A write to a mapping that was opened read-only.
    #[error("cannot write to {}: it is mapped read-only", path.display())]
    ReadOnly {
        /// The mapped path.
        path: PathBuf,
    },
    /// Something the kernel reported made no sense (unparsable sysfs value,
    /// a size that does not fit the address space, a misaligned mapping).
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The path or sysfs attribute concerned.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

impl DaxError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        DaxError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DaxError::Invalid {
            path: path.into(),
            what: what.into(),
        }
    }
}

//! Backing devices: what they are, how big, whether they can be written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::os::fd::OwnedFd;
use std::time::Duration;

use rdm_targets::{DeviceInfo, Table, TableError};
use serde::{Deserialize, Serialize};

use crate::backend::nbd;
use crate::backend::nbd::proto::ExportInfo;
use crate::backend::nbd::socket::Addr;
use crate::backend::nbd::uri::Uri;

/// A backing device that cannot be used, naming its path and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a regular file, block device or device-dax character device")]
    WrongType { path: PathBuf },
    #[error("{path}: {cause}")]
    Nbd { path: PathBuf, cause: String },
    #[error(transparent)]
    Table(#[from] TableError),
}

/// What kind of object a backing path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackingKind {
    File,
    BlockDevice,
    /// `/dev/daxX.Y`: only mmap works on it, so only the DAX path serves it.
    DaxDevice,
    /// An NBD export (`nbd://…`, `nbd+unix://…`).
    NbdExport,
}

/// Facts about one backing path, gathered without changing it.
#[derive(Debug, Clone, Serialize)]
pub struct BackingInfo {
    pub path: PathBuf,
    pub kind: BackingKind,
    #[serde(flatten)]
    pub info: DeviceInfo,
}

/// Looks at a backing path: type, size, identity and writability.
///
/// A file counts as read-only when it has no write permission bit at all
/// (root could still write it, but `chmod a-w` says the owner means it) or
/// when opening it for writing is refused (read-only mount, immutable file,
/// `blockdev --setro`).
pub fn inspect(path: &Path) -> Result<BackingInfo, BackingError> {
    if nbd::uri::is_nbd(path) {
        return inspect_export(path);
    }
    let io_err = |cause| BackingError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    let (kind, identity) =
        kind_and_identity(path, &meta).ok_or_else(|| BackingError::WrongType {
            path: path.to_path_buf(),
        })?;
    let no_write_bits = meta.mode() & 0o222 == 0;
    let (file, read_only) = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => (f, no_write_bits),
        Err(e) if is_read_only_error(&e) => (File::open(path).map_err(io_err)?, true),
        Err(e) => return Err(io_err(e)),
    };
    let size_bytes = match kind {
        BackingKind::File => meta.len(),
        BackingKind::BlockDevice => block_device_size(&file).map_err(io_err)?,
        BackingKind::DaxDevice => dax_device_size(path).unwrap_or(0),
        BackingKind::NbdExport => unreachable!("exports are inspected by inspect_export"),
    };
    Ok(BackingInfo {
        path: path.to_path_buf(),
        kind,
        info: DeviceInfo {
            size_bytes,
            read_only,
            identity,
        },
    })
}

/// What a backing path is and which object: (st_dev, st_ino) for a file,
/// the device number for a block or device-dax device.
fn kind_and_identity(path: &Path, meta: &std::fs::Metadata) -> Option<(BackingKind, (u64, u64))> {
    let ft = meta.file_type();
    if ft.is_file() {
        Some((BackingKind::File, (meta.dev(), meta.ino())))
    } else if ft.is_block_device() {
        Some((BackingKind::BlockDevice, (u64::MAX, meta.rdev())))
    } else if ft.is_char_device() && dax_device_size(path).is_some() {
        Some((BackingKind::DaxDevice, (u64::MAX - 1, meta.rdev())))
    } else {
        None
    }
}

/// The identity [`inspect`] gives `path`, without opening the object or
/// connecting to an export; None if it cannot be looked at.
pub fn identity_of(path: &Path) -> Option<(u64, u64)> {
    if nbd::uri::is_nbd(path) {
        return Uri::parse(&path.to_string_lossy())
            .ok()
            .map(|u| u.identity());
    }
    let meta = std::fs::metadata(path).ok()?;
    kind_and_identity(path, &meta).map(|(_, id)| id)
}

/// How long checking an export may take (connect and handshake).
pub const NBD_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// An NBD export's size and whether it is read-only, from a handshake
/// (the connection is closed again, politely).
fn inspect_export(path: &Path) -> Result<BackingInfo, BackingError> {
    let (uri, _, info, fd) = connect_export(path, NBD_CHECK_TIMEOUT)?;
    nbd::socket::disconnect(&fd);
    Ok(BackingInfo {
        path: path.to_path_buf(),
        kind: BackingKind::NbdExport,
        info: DeviceInfo {
            size_bytes: info.size,
            read_only: info.read_only(),
            identity: uri.identity(),
        },
    })
}

/// Parses, resolves, connects to and negotiates with the export a table
/// names; every failure names the export and says why.
pub fn connect_export(
    path: &Path,
    timeout: Duration,
) -> Result<(Uri, Addr, ExportInfo, OwnedFd), BackingError> {
    let err = |cause: String| BackingError::Nbd {
        path: path.to_path_buf(),
        cause,
    };
    let uri = Uri::parse(&path.to_string_lossy()).map_err(err)?;
    let addr = Addr::resolve(&uri).map_err(|e| err(format!("cannot resolve the server: {e}")))?;
    let (fd, info) = nbd::socket::connect_blocking(&uri, &addr, timeout).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ECONNREFUSED | libc::ENOENT) => {
                " (is the server running, and does it serve more than one connection: qemu-nbd -t, nbdkit?)"
            }
            _ => "",
        };
        err(format!("{e}{hint}"))
    })?;
    Ok((uri, addr, info, fd))
}

/// The size of a device-dax character device, or None if `path` is not one.
fn dax_device_size(path: &Path) -> Option<u64> {
    match rdm_dax::probe(path).ok()? {
        rdm_dax::Dax::Supported(info) if info.kind == rdm_dax::DaxKind::DevDax => Some(info.size),
        _ => None,
    }
}

fn is_read_only_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
    )
}

fn block_device_size(f: &File) -> io::Result<u64> {
    use rustix::ioctl::{ioctl, opcode, Getter};
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: rustix::ioctl::Opcode = opcode::read::<u64>(0x12, 114);
    // SAFETY: BLKGETSIZE64 writes exactly one u64, which Getter provides.
    Ok(unsafe { ioctl(f, Getter::<BLKGETSIZE64, u64>::new()) }?)
}

/// Inspects every device of a table and checks the table against them.
pub fn check_table(table: &Table, writable: bool) -> Result<Vec<BackingInfo>, BackingError> {
    let infos = inspect_all(table)?;
    check_against(table, &infos, writable)?;
    Ok(infos)
}

/// Inspects every device of a table, in [`Table::devices`] order.
pub fn inspect_all(table: &Table) -> Result<Vec<BackingInfo>, BackingError> {
    table.devices().iter().map(|p| inspect(p)).collect()
}

/// Checks a table against what [`inspect_all`] found.
pub fn check_against(
    table: &Table,
    infos: &[BackingInfo],
    writable: bool,
) -> Result<(), BackingError> {
    let facts: Vec<DeviceInfo> = infos.iter().map(|b| b.info).collect();
    Ok(table.check_devices(&facts, writable)?)
}

/// Opens a backing device for I/O: `O_DIRECT` when the file system takes it
/// (tmpfs does not), else buffered. Returns the file and whether it is direct.
pub fn open(path: &Path, writable: bool) -> Result<(File, bool), BackingError> {
    let io_err = |cause| BackingError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(writable);
    match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((opts.open(path).map_err(io_err)?, false))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Whether discards can be passed down: a block device that advertises
/// discard, or a file system that can punch holes. Files are probed by
/// punching beyond their end (KEEP_SIZE), which touches no data.
pub fn supports_discard(f: &File) -> bool {
    let Ok(meta) = f.metadata() else { return false };
    if meta.file_type().is_block_device() {
        let rdev = meta.rdev();
        let path = format!(
            "/sys/dev/block/{}:{}/queue/discard_max_bytes",
            libc::major(rdev),
            libc::minor(rdev)
        );
        return std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    }
    let beyond = (meta.len() + 8191) & !4095;
    let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(f, punch, beyond, 4096).is_ok()
}

/// One backing device's identity, recorded for recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub path: PathBuf,
    /// (st_dev, st_ino), or the device number of a block device.
    pub identity: (u64, u64),
    pub size_bytes: u64,
}

impl DeviceRecord {
    /// The record of a backing device as inspected.
    pub fn of(b: &BackingInfo) -> DeviceRecord {
        DeviceRecord {
            path: b.path.clone(),
            identity: b.info.identity,
            size_bytes: b.info.size_bytes,
        }
    }
}

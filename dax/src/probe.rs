//! [`probe`]: is a path usable as direct-mapped persistent memory?

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::arch::{self, FlushInstr};
use crate::error::DaxError;
use crate::sysfs;

/// Result of [`probe`]: DAX is an optional capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "dax", rename_all = "snake_case")]
pub enum Dax {
    /// The path can be mapped as persistent memory.
    Supported(DaxInfo),
    /// It cannot; the caller may fall back to ordinary I/O.
    Unsupported(Unsupported),
}

impl fmt::Display for Dax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dax::Supported(i) => i.fmt(f),
            Dax::Unsupported(u) => u.fmt(f),
        }
    }
}

/// Which kind of DAX a supported path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaxKind {
    /// A regular file on a DAX-mounted filesystem, mapped with `MAP_SYNC`.
    FsDax,
    /// A device-dax character device (`/dev/daxX.Y`).
    DevDax,
}

/// The region's `persistence_domain`: what must be done for a store to be
/// durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceDomain {
    /// `cpu_cache` (eADR): CPU caches are flushed on power loss, a store
    /// fence is enough.
    CpuCache,
    /// `memory_controller` (ADR): cache lines must be written back.
    MemoryController,
    /// The region reports no domain (empty attribute): flushes needed.
    None,
    /// No nd region found, or an old kernel without the attribute: assume
    /// flushes are needed.
    Unknown,
}

impl PersistenceDomain {
    pub(crate) fn from_sysfs(s: &str) -> Self {
        match s.trim() {
            "cpu_cache" => PersistenceDomain::CpuCache,
            "memory_controller" => PersistenceDomain::MemoryController,
            "" => PersistenceDomain::None,
            _ => PersistenceDomain::Unknown,
        }
    }

    /// Whether cache lines must be written back (everything but eADR).
    pub fn needs_flush(self) -> bool {
        self != PersistenceDomain::CpuCache
    }
}

impl fmt::Display for PersistenceDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PersistenceDomain::CpuCache => "cpu_cache",
            PersistenceDomain::MemoryController => "memory_controller",
            PersistenceDomain::None => "none",
            PersistenceDomain::Unknown => "unknown",
        })
    }
}

/// What a supported path is and how to make stores to it durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaxInfo {
    /// The probed path.
    pub path: PathBuf,
    /// fs-dax file or device-dax.
    pub kind: DaxKind,
    /// Size in bytes at probe time (file size, or the devdax `size`).
    pub size: u64,
    /// Required mapping alignment (page size for fs-dax, the devdax `align`,
    /// often 2 MiB).
    pub align: u64,
    /// Whether it could be opened read-write (else it is mapped read-only).
    pub writable: bool,
    /// The nd region behind it (`regionN`), if found.
    pub region: Option<String>,
    /// The region's persistence domain.
    pub persistence_domain: PersistenceDomain,
    /// The flush [`crate::DaxMapping`] will use (`FenceOnly` on eADR).
    pub flush: FlushInstr,
}

impl fmt::Display for DaxInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DaxKind::FsDax => "an fs-dax file",
            DaxKind::DevDax => "a device-dax device",
        };
        write!(
            f,
            "{} supports DAX: {kind} of {} bytes (align {}, {}{}, persistence domain {}, flush: {}).",
            self.path.display(),
            self.size,
            self.align,
            if self.writable { "read-write" } else { "read-only" },
            match &self.region {
                Some(r) => format!(", on {r}"),
                None => String::new(),
            },
            self.persistence_domain,
            self.flush
        )
    }
}

/// A path on which DAX is not available, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    /// The probed path.
    pub path: PathBuf,
    /// Why.
    pub reason: UnsupportedReason,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} does not support DAX: {}.",
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for Unsupported {}

/// File types that are neither regular files nor character devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A block device (use the filesystem on it, or its devdax namespace).
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// Anything else.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::Other => "a special file",
        })
    }
}

/// Why DAX is unavailable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnsupportedReason {
    /// A regular file whose inode is not DAX (`STATX_ATTR_DAX` clear): the
    /// filesystem is not mounted with `-o dax` / the file lacks the per-file
    /// DAX flag.
    NotDax,
    /// The filesystem refused `mmap(MAP_SHARED_VALIDATE | MAP_SYNC)`
    /// (`EOPNOTSUPP`, or `EINVAL` from kernels older than 4.15).
    MapSyncRefused {
        /// The errno returned by mmap.
        errno: i32,
    },
    /// DAX on a region with asynchronous flush (virtio-pmem): the host must
    /// be asked to flush (fsync), so direct stores are never durable by
    /// themselves.
    AsynchronousDax {
        /// The `regionN` concerned.
        region: String,
    },
    /// The CPU's data cache may alias (the kernel disables DAX there).
    CacheAliasing {
        /// `target_arch`.
        arch: String,
    },
    /// rdm has no cache-flush implementation for this architecture yet.
    FlushNotImplemented {
        /// `target_arch`.
        arch: String,
    },
    /// A character device that is not a device-dax device.
    NotDaxDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
        /// Its sysfs subsystem, if it has one (e.g. "mem" for /dev/null).
        subsystem: Option<String>,
    },
    /// Neither a regular file nor a character device.
    NotFileOrDaxDevice {
        /// What it is.
        file_kind: FileKind,
    },
}

impl fmt::Display for UnsupportedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsupportedReason::NotDax => f.write_str(
                "the file is not a DAX file (STATX_ATTR_DAX is not set; is the filesystem mounted with -o dax?)",
            ),
            UnsupportedReason::MapSyncRefused { errno } => write!(
                f,
                "the filesystem refused a MAP_SYNC mapping ({})",
                io::Error::from_raw_os_error(*errno)
            ),
            UnsupportedReason::AsynchronousDax { region } => write!(
                f,
                "{region} is asynchronous DAX (virtio-pmem), where stores are not durable without a host flush"
            ),
            UnsupportedReason::CacheAliasing { arch } => {
                write!(f, "the {arch} CPU data cache may alias, so the kernel disables DAX")
            }
            UnsupportedReason::FlushNotImplemented { arch } => {
                write!(f, "cache flushing for persistent memory is not implemented on {arch}")
            }
            UnsupportedReason::NotDaxDevice {
                major,
                minor,
                subsystem,
            } => match subsystem {
                Some(s) => write!(
                    f,
                    "character device {major}:{minor} belongs to the {s:?} subsystem, not dax"
                ),
                None => write!(f, "character device {major}:{minor} is not a device-dax device"),
            },
            UnsupportedReason::NotFileOrDaxDevice { file_kind } => write!(
                f,
                "it is {file_kind}, not a regular file or a device-dax character device"
            ),
        }
    }
}

/// What statx told us.
struct StatInfo {
    is_file: bool,
    is_char: bool,
    file_kind: FileKind,
    size: u64,
    dev: (u32, u32),
    rdev: (u32, u32),
    /// `Some(is_dax)` when the kernel reports the DAX attribute at all
    /// (`stx_attributes_mask`), `None` otherwise (kernel < 5.8).
    dax_attr: Option<bool>,
}

fn file_kind_of(mode: u32) -> (bool, bool, FileKind) {
    match mode & libc::S_IFMT {
        libc::S_IFREG => (true, false, FileKind::Other),
        libc::S_IFCHR => (false, true, FileKind::Other),
        libc::S_IFDIR => (false, false, FileKind::Directory),
        libc::S_IFBLK => (false, false, FileKind::BlockDevice),
        libc::S_IFIFO => (false, false, FileKind::Fifo),
        libc::S_IFSOCK => (false, false, FileKind::Socket),
        _ => (false, false, FileKind::Other),
    }
}

fn stat_path(path: &Path) -> Result<StatInfo, DaxError> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    let got = statx(
        CWD,
        path,
        AtFlags::STATX_SYNC_AS_STAT,
        StatxFlags::BASIC_STATS,
    );
    let stx = match got {
        Ok(stx) => stx,
        Err(e) => return stat_fallback(path, e.into()),
    };
    let (is_file, is_char, file_kind) = file_kind_of(u32::from(stx.stx_mode));
    let dax = StatxAttributes::DAX;
    Ok(StatInfo {
        is_file,
        is_char,
        file_kind,
        size: stx.stx_size,
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        rdev: (stx.stx_rdev_major, stx.stx_rdev_minor),
        dax_attr: stx
            .stx_attributes_mask
            .contains(dax)
            .then_some(stx.stx_attributes.contains(dax)),
    })
}

/// Without statx (very old kernel or a seccomp filter): plain stat, and let
/// the MAP_SYNC probe decide. Any other statx error is an error.
fn stat_fallback(path: &Path, e: io::Error) -> Result<StatInfo, DaxError> {
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(DaxError::io(path, "stat", e));
    }
    let m = std::fs::metadata(path).map_err(|e| DaxError::io(path, "stat", e))?;
    let ft = m.file_type();
    let (is_file, is_char, file_kind) = file_kind_of(if ft.is_file() {
        libc::S_IFREG
    } else if ft.is_char_device() {
        libc::S_IFCHR
    } else if ft.is_dir() {
        libc::S_IFDIR
    } else if ft.is_block_device() {
        libc::S_IFBLK
    } else if ft.is_fifo() {
        libc::S_IFIFO
    } else if ft.is_socket() {
        libc::S_IFSOCK
    } else {
        0
    });
    Ok(StatInfo {
        is_file,
        is_char,
        file_kind,
        size: m.len(),
        dev: (libc::major(m.dev()), libc::minor(m.dev())),
        rdev: (libc::major(m.rdev()), libc::minor(m.rdev())),
        dax_attr: None,
    })
}

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Open read-write, falling back to read-only on a permission or read-only
/// filesystem error. Returns the file and whether it is writable.
pub(crate) fn open_rw_or_ro(path: &Path) -> Result<(File, bool), DaxError> {
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path);
    match rw {
        Ok(f) => Ok((f, true)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
            ) =>
        {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| DaxError::io(path, "open", e))?;
            Ok((f, false))
        }
        Err(e) => Err(DaxError::io(path, "open", e)),
    }
}

/// Outcome of a `MAP_SYNC` trial mapping.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MapSync {
    Accepted,
    Refused(i32),
}

/// Try `mmap(len, MAP_SHARED_VALIDATE | MAP_SYNC)` of `file` at offset 0 and
/// unmap it again; the memory is never touched, so mapping one page of a
/// shorter (even empty) file is fine. The kernel checks `MAP_SYNC` against
/// the file (`daxdev_mapping_supported()`: `IS_DAX(inode)` and a synchronous
/// dax device) regardless of `PROT_WRITE`, so a read-only file is probed
/// with `PROT_READ`. `EOPNOTSUPP` (and `EINVAL`, from kernels that predate
/// `MAP_SHARED_VALIDATE`; our other arguments are valid) mean refused; any
/// other errno is a real error.
pub(crate) fn try_map_sync(
    path: &Path,
    file: &File,
    len: usize,
    writable: bool,
) -> Result<MapSync, DaxError> {
    use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh mapping at a kernel-chosen address of a valid fd; it
    // aliases no Rust object and is unmapped below without being accessed.
    let mapped = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            prot,
            MapFlags::SHARED_VALIDATE | MapFlags::SYNC,
            file,
            0,
        )
    };
    let p = match mapped {
        Ok(p) => p,
        Err(e) => {
            return match e.raw_os_error() {
                errno @ (libc::EOPNOTSUPP | libc::EINVAL) => Ok(MapSync::Refused(errno)),
                _ => Err(DaxError::io(path, "mmap", e.into())),
            };
        }
    };
    // SAFETY: `p` and `len` are exactly the mapping created above.
    let _ = unsafe { munmap(p, len) };
    Ok(MapSync::Accepted)
}

fn unsupported(path: &Path, reason: UnsupportedReason) -> Result<Dax, DaxError> {
    Ok(Dax::Unsupported(Unsupported {
        path: path.to_owned(),
        reason,
    }))
}

fn flush_for(domain: PersistenceDomain) -> FlushInstr {
    if domain.needs_flush() {
        arch::best_flush_instr()
    } else {
        FlushInstr::FenceOnly
    }
}

/// Probe whether `path` (followed through symlinks) can be used as
/// direct-mapped persistent memory.
///
/// Order of checks: stat (a missing path is an error), CPU cache aliasing,
/// flush support on this architecture, file type; then for regular files
/// `STATX_ATTR_DAX` and a `MAP_SYNC` trial mapping, for character devices the
/// sysfs `dax` subsystem and a trial mapping of one `align` unit. Only the
/// conditions listed in [`UnsupportedReason`] yield `Ok(Dax::Unsupported)`;
/// open/stat/mmap/sysfs failures are `Err`.
pub fn probe(path: &Path) -> Result<Dax, DaxError> {
    probe_in(path, Path::new(sysfs::SYSFS))
}

pub(crate) fn probe_in(path: &Path, sys: &Path) -> Result<Dax, DaxError> {
    let st = stat_path(path)?;
    let arch = std::env::consts::ARCH;
    if arch::cpu_dcache_is_aliasing() {
        return unsupported(path, UnsupportedReason::CacheAliasing { arch: arch.into() });
    }
    if !arch::FLUSH_IMPLEMENTED {
        return unsupported(
            path,
            UnsupportedReason::FlushNotImplemented { arch: arch.into() },
        );
    }
    if st.is_file {
        probe_fsdax(path, sys, &st)
    } else if st.is_char {
        probe_devdax(path, sys, &st)
    } else {
        unsupported(
            path,
            UnsupportedReason::NotFileOrDaxDevice {
                file_kind: st.file_kind,
            },
        )
    }
}

fn probe_fsdax(path: &Path, sys: &Path, st: &StatInfo) -> Result<Dax, DaxError> {
    if st.dax_attr == Some(false) {
        return unsupported(path, UnsupportedReason::NotDax);
    }
    let (file, writable) = open_rw_or_ro(path)?;
    // The filesystem's block device -> nd region. Anonymous devices (major
    // 0: virtiofs, tmpfs ...) and stacked dm devices have no region.
    let region = match sysfs::dev_dir(sys, "block", st.dev.0, st.dev.1)? {
        Some(dir) => sysfs::region_of(&dir)?,
        None => None,
    };
    let page = page_size() as usize;
    match try_map_sync(path, &file, page, writable)? {
        MapSync::Accepted => {}
        MapSync::Refused(errno) => {
            return match region {
                Some(r) if r.virtio => {
                    unsupported(path, UnsupportedReason::AsynchronousDax { region: r.name })
                }
                _ => unsupported(path, UnsupportedReason::MapSyncRefused { errno }),
            };
        }
    }
    let domain = region
        .as_ref()
        .map_or(PersistenceDomain::Unknown, |r| r.domain);
    Ok(Dax::Supported(DaxInfo {
        path: path.to_owned(),
        kind: DaxKind::FsDax,
        size: st.size,
        align: page as u64,
        writable,
        region: region.map(|r| r.name),
        persistence_domain: domain,
        flush: flush_for(domain),
    }))
}

/// sysfs facts about a device-dax device.
pub(crate) struct DevDaxSysfs {
    pub size: u64,
    pub align: u64,
    pub region: Option<sysfs::Region>,
}

/// `Ok(None)` when `major:minor` is not a dax-subsystem char device (with
/// its subsystem name, if any).
pub(crate) fn devdax_sysfs(
    sys: &Path,
    major: u32,
    minor: u32,
) -> Result<Result<DevDaxSysfs, Option<String>>, DaxError> {
    let Some(dir) = sysfs::dev_dir(sys, "char", major, minor)? else {
        return Ok(Err(None));
    };
    let subsystem = sysfs::link_name(&dir, "subsystem")?;
    if subsystem.as_deref() != Some("dax") {
        return Ok(Err(subsystem));
    }
    let size_attr = dir.join("size");
    let size = sysfs::read_u64(&size_attr)?.ok_or_else(|| {
        DaxError::io(
            &size_attr,
            "read",
            io::Error::from_raw_os_error(libc::ENOENT),
        )
    })?;
    // Per-device `align` (kernel >= 5.10), else the region-wide
    // `dax_region/align` of the parent, else the page size.
    let mut align = sysfs::read_u64(&dir.join("align"))?;
    if align.is_none() {
        if let Some(parent) = dir.parent() {
            align = sysfs::read_u64(&parent.join("dax_region/align"))?;
        }
    }
    let align = align.filter(|a| *a > 0).unwrap_or_else(page_size);
    Ok(Ok(DevDaxSysfs {
        size,
        align,
        region: sysfs::region_of(&dir)?,
    }))
}

fn probe_devdax(path: &Path, sys: &Path, st: &StatInfo) -> Result<Dax, DaxError> {
    let (major, minor) = st.rdev;
    let d = match devdax_sysfs(sys, major, minor)? {
        Ok(d) => d,
        Err(subsystem) => {
            return unsupported(
                path,
                UnsupportedReason::NotDaxDevice {
                    major,
                    minor,
                    subsystem,
                },
            )
        }
    };
    if let Some(r) = &d.region {
        if r.virtio {
            return unsupported(
                path,
                UnsupportedReason::AsynchronousDax {
                    region: r.name.clone(),
                },
            );
        }
    }
    let (file, writable) = open_rw_or_ro(path)?;
    // A trial mapping of one alignment unit: device-dax requires the mapping
    // start and end to be aligned to `align` (its get_unmapped_area aligns
    // the start). Device-dax accepts MAP_SYNC; refusing it is not a
    // capability question here, so any failure is a real error.
    let probe_len = usize::try_from(d.align.min(d.size.max(1)))
        .map_err(|_| DaxError::invalid(path, format!("alignment {} too large", d.align)))?;
    if d.size > 0 {
        match try_map_sync(path, &file, probe_len, writable)? {
            MapSync::Accepted => {}
            MapSync::Refused(errno) => {
                return Err(DaxError::io(
                    path,
                    "mmap",
                    io::Error::from_raw_os_error(errno),
                ))
            }
        }
    }
    let domain = d
        .region
        .as_ref()
        .map_or(PersistenceDomain::Unknown, |r| r.domain);
    Ok(Dax::Supported(DaxInfo {
        path: path.to_owned(),
        kind: DaxKind::DevDax,
        size: d.size,
        align: d.align,
        writable,
        region: d.region.map(|r| r.name),
        persistence_domain: domain,
        flush: flush_for(domain),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(d: Dax) -> UnsupportedReason {
        match d {
            Dax::Unsupported(u) => u.reason,
            Dax::Supported(i) => panic!("unexpectedly supported: {i}"),
        }
    }

    #[test]
    fn regular_file_is_not_dax() {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [("empty", 0usize), ("small", 100), ("big", 1 << 20)] {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![7u8; len]).unwrap();
            let d = probe(&p).unwrap();
            let text = d.to_string();
            assert!(text.contains(p.to_str().unwrap()), "{text}");
            match reason(d) {
                UnsupportedReason::NotDax => {}
                UnsupportedReason::MapSyncRefused { errno } => {
                    assert!(errno == libc::EOPNOTSUPP || errno == libc::EINVAL)
                }
                r => panic!("{name}: unexpected reason {r:?}"),
            }
        }
    }

    #[test]
    fn map_sync_refused_on_host_files() {
        // The MAP_SYNC trial itself, bypassing the statx shortcut: host
        // filesystems (and tmpfs) are not DAX and refuse it.
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        for dir in &dirs {
            let p = dir.path().join("f");
            std::fs::write(&p, b"").unwrap();
            let (f, w) = open_rw_or_ro(&p).unwrap();
            assert!(w);
            assert_eq!(
                try_map_sync(&p, &f, page_size() as usize, true).unwrap(),
                MapSync::Refused(libc::EOPNOTSUPP)
            );
            let ro = File::open(&p).unwrap();
            assert_eq!(
                try_map_sync(&p, &ro, page_size() as usize, false).unwrap(),
                MapSync::Refused(libc::EOPNOTSUPP)
            );
        }
    }

    #[test]
    fn map_sync_real_error_is_error() {
        // PROT_WRITE on an O_RDONLY fd is EACCES: a real error, not "refused".
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let ro = File::open(&p).unwrap();
        let e = try_map_sync(&p, &ro, 4096, true).unwrap_err();
        assert!(
            matches!(&e, DaxError::Io { op: "mmap", source, .. } if source.raw_os_error() == Some(libc::EACCES)),
            "{e}"
        );
        assert!(e.to_string().contains(p.to_str().unwrap()));
    }

    #[test]
    fn directory_is_not_dax() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            reason(probe(dir.path()).unwrap()),
            UnsupportedReason::NotFileOrDaxDevice {
                file_kind: FileKind::Directory
            }
        );
    }

    #[test]
    fn dev_null_is_not_dax_device() {
        let d = probe(Path::new("/dev/null")).unwrap();
        assert!(d.to_string().contains("/dev/null"));
        match reason(d) {
            UnsupportedReason::NotDaxDevice {
                major: 1,
                minor: 3,
                subsystem,
            } => assert_eq!(subsystem.as_deref(), Some("mem")),
            r => panic!("unexpected {r:?}"),
        }
    }

    #[test]
    fn block_device_is_not_dax() {
        let Some(blk) = ["/dev/loop0", "/dev/vda", "/dev/sda", "/dev/nvme0n1"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.metadata().is_ok_and(|m| m.file_type().is_block_device()))
        else {
            eprintln!("no block device node found; skipping");
            return;
        };
        assert_eq!(
            reason(probe(blk).unwrap()),
            UnsupportedReason::NotFileOrDaxDevice {
                file_kind: FileKind::BlockDevice
            }
        );
    }

    #[test]
    fn missing_path_is_error_naming_path() {
        let p = Path::new("/nonexistent/rdm-dax-probe-test");
        let e = probe(p).unwrap_err();
        assert!(
            matches!(&e, DaxError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(
            e.to_string().contains("/nonexistent/rdm-dax-probe-test"),
            "{e}"
        );
    }

    #[test]
    fn fake_devdax_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let region = sys.join("devices/LNXSYSTM:00/ACPI0012:00/ndbus0/region0");
        let dev = region.join("dax0.1/dax0.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(sys.join("bus/dax")).unwrap();
        std::os::unix::fs::symlink(sys.join("bus/dax"), dev.join("subsystem")).unwrap();
        std::fs::write(dev.join("size"), "1073741824\n").unwrap();
        std::fs::write(region.join("persistence_domain"), "cpu_cache\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/char")).unwrap();
        std::os::unix::fs::symlink(&dev, sys.join("dev/char/252:0")).unwrap();
        // No align anywhere: page size.
        let d = devdax_sysfs(sys, 252, 0).unwrap().ok().unwrap();
        assert_eq!(d.size, 1 << 30);
        assert_eq!(d.align, page_size());
        assert_eq!(
            d.region.as_ref().unwrap().domain,
            PersistenceDomain::CpuCache
        );
        // Region-wide align (old kernels).
        std::fs::create_dir_all(region.join("dax0.1/dax_region")).unwrap();
        std::fs::write(region.join("dax0.1/dax_region/align"), "2097152\n").unwrap();
        assert_eq!(
            devdax_sysfs(sys, 252, 0).unwrap().ok().unwrap().align,
            2 << 20
        );
        // Per-device align wins.
        std::fs::write(dev.join("align"), "1073741824\n").unwrap();
        assert_eq!(
            devdax_sysfs(sys, 252, 0).unwrap().ok().unwrap().align,
            1 << 30
        );
        // Unknown device.
        assert!(matches!(devdax_sysfs(sys, 252, 1).unwrap(), Err(None)));
    }

    #[test]
    fn json_shapes() {
        let u = Dax::Unsupported(Unsupported {
            path: "/x".into(),
            reason: UnsupportedReason::MapSyncRefused { errno: 95 },
        });
        let v: serde_json::Value = serde_json::to_value(&u).unwrap();
        assert_eq!(v["dax"], "unsupported");
        assert_eq!(v["path"], "/x");
        assert_eq!(v["reason"]["kind"], "map_sync_refused");
        assert_eq!(v["reason"]["errno"], 95);
        let s = Dax::Supported(DaxInfo {
            path: "/dev/dax0.0".into(),
            kind: DaxKind::DevDax,
            size: 1 << 30,
            align: 2 << 20,
            writable: true,
            region: Some("region0".into()),
            persistence_domain: PersistenceDomain::MemoryController,
            flush: FlushInstr::Clwb,
        });
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["dax"], "supported");
        assert_eq!(v["kind"], "dev_dax");
        assert_eq!(v["persistence_domain"], "memory_controller");
        assert_eq!(v["flush"], "clwb");
        assert!(s.to_string().starts_with("/dev/dax0.0 supports DAX"));
    }

    #[test]
    fn domain_parsing() {
        assert_eq!(
            PersistenceDomain::from_sysfs("cpu_cache\n"),
            PersistenceDomain::CpuCache
        );
        assert!(!PersistenceDomain::CpuCache.needs_flush());
        for d in [
            PersistenceDomain::MemoryController,
            PersistenceDomain::None,
            PersistenceDomain::Unknown,
        ] {
            assert!(d.needs_flush());
        }
        assert_eq!(
            PersistenceDomain::from_sysfs("weird"),
            PersistenceDomain::Unknown
        );
    }
}

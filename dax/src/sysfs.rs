//! sysfs lookups: device-dax identification and the nd region (with its
//! persistence domain) behind a block or character device.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::DaxError;
use crate::probe::PersistenceDomain;

/// Root of sysfs; a parameter so tests can point it at a fake tree.
pub(crate) const SYSFS: &str = "/sys";

/// The nd region a device sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Region {
    /// `regionN`.
    pub name: String,
    /// Its `persistence_domain`.
    pub domain: PersistenceDomain,
    /// The region belongs to an nd bus provided by virtio-pmem (an
    /// asynchronous-flush region: DAX without `MAP_SYNC` guarantees).
    pub virtio: bool,
}

/// Canonical sysfs directory of device `major:minor` of `class` ("block" or
/// "char"), or `None` when the kernel has no such device registered.
pub(crate) fn dev_dir(
    sys: &Path,
    class: &str,
    major: u32,
    minor: u32,
) -> Result<Option<PathBuf>, DaxError> {
    let link = sys.join("dev").join(class).join(format!("{major}:{minor}"));
    match fs::canonicalize(&link) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DaxError::io(link, "resolve", e)),
    }
}

/// Base name of the symlink `dir/name` (e.g. `subsystem` -> "dax"), `None`
/// if absent.
pub(crate) fn link_name(dir: &Path, name: &str) -> Result<Option<String>, DaxError> {
    let p = dir.join(name);
    match fs::read_link(&p) {
        Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DaxError::io(p, "read link", e)),
    }
}

/// Trimmed contents of a sysfs attribute, `None` if it does not exist.
pub(crate) fn read_attr(path: &Path) -> Result<Option<String>, DaxError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DaxError::io(path, "read", e)),
    }
}

/// A decimal (or `0x` hex) integer attribute, `None` if it does not exist.
pub(crate) fn read_u64(path: &Path) -> Result<Option<u64>, DaxError> {
    let Some(s) = read_attr(path)? else {
        return Ok(None);
    };
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    parsed
        .map(Some)
        .map_err(|_| DaxError::invalid(path, format!("expected an integer, found {s:?}")))
}

fn is_region_name(n: &str) -> bool {
    n.strip_prefix("region")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_virtio_name(n: &str) -> bool {
    n.strip_prefix("virtio")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Walk up from the canonical sysfs directory `dev` to the `regionN`
/// ancestor (an nd region) and read its persistence domain. `None` when the
/// device is not on an nd region (e.g. a dm device stacked on pmem, or an
/// anonymous device of a network/virtual filesystem).
///
/// Asynchronous DAX (virtio-pmem) is recognised by a `virtioN` component
/// above the region: virtio-pmem registers its nd bus with the virtio device
/// as parent, e.g. `/sys/devices/pci0000:00/0000:00:04.0/virtio1/ndbus0/
/// region0`. The kernel exposes no "synchronous" attribute on the region.
pub(crate) fn region_of(dev: &Path) -> Result<Option<Region>, DaxError> {
    let Some(region_dir) = dev.ancestors().find(|a| {
        a.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_region_name)
    }) else {
        return Ok(None);
    };
    let name = region_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let domain = match read_attr(&region_dir.join("persistence_domain"))? {
        None => PersistenceDomain::Unknown,
        Some(s) => PersistenceDomain::from_sysfs(&s),
    };
    let virtio = region_dir.ancestors().skip(1).any(|a| {
        a.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_virtio_name)
    });
    Ok(Some(Region {
        name,
        domain,
        virtio,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_walk_on_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let region = t
            .path()
            .join("devices/LNXSYSTM:00/ACPI0012:00/ndbus0/region0");
        let blk = region.join("namespace0.0/block/pmem0");
        fs::create_dir_all(&blk).unwrap();
        assert_eq!(
            region_of(&blk).unwrap(),
            Some(Region {
                name: "region0".into(),
                domain: PersistenceDomain::Unknown,
                virtio: false
            })
        );
        fs::write(region.join("persistence_domain"), "cpu_cache\n").unwrap();
        assert_eq!(
            region_of(&blk).unwrap().unwrap().domain,
            PersistenceDomain::CpuCache
        );
        fs::write(region.join("persistence_domain"), "memory_controller\n").unwrap();
        assert_eq!(
            region_of(&blk).unwrap().unwrap().domain,
            PersistenceDomain::MemoryController
        );
        fs::write(region.join("persistence_domain"), "\n").unwrap();
        assert_eq!(
            region_of(&blk).unwrap().unwrap().domain,
            PersistenceDomain::None
        );

        let vregion = t
            .path()
            .join("devices/pci0000:00/0000:00:04.0/virtio1/ndbus1/region1");
        let vdax = vregion.join("dax1.1/dax1.0");
        fs::create_dir_all(&vdax).unwrap();
        let r = region_of(&vdax).unwrap().unwrap();
        assert_eq!(r.name, "region1");
        assert!(r.virtio);

        let none = t.path().join("devices/virtual/block/dm-0");
        fs::create_dir_all(&none).unwrap();
        assert_eq!(region_of(&none).unwrap(), None);
    }

    #[test]
    fn integer_attrs() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("size");
        assert_eq!(read_u64(&p).unwrap(), None);
        fs::write(&p, "2097152\n").unwrap();
        assert_eq!(read_u64(&p).unwrap(), Some(2 << 20));
        fs::write(&p, "0x200000\n").unwrap();
        assert_eq!(read_u64(&p).unwrap(), Some(2 << 20));
        fs::write(&p, "junk\n").unwrap();
        assert!(matches!(read_u64(&p), Err(DaxError::Invalid { .. })));
    }

    #[test]
    fn dev_null_is_mem_subsystem() {
        let d = dev_dir(Path::new(SYSFS), "char", 1, 3).unwrap();
        if let Some(d) = d {
            assert_eq!(link_name(&d, "subsystem").unwrap().as_deref(), Some("mem"));
        }
        assert_eq!(
            dev_dir(Path::new(SYSFS), "char", 4095, 1_000_000).unwrap(),
            None
        );
    }
}

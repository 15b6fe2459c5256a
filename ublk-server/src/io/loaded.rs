//! One table, ready to serve ([`Loaded`]): its request handler over the
//! backend chosen for it ([`Core`]), and the flags that tell every queue
//! thread the server is stopping.

use crate::backend::backing::DeviceRecord;
use crate::backend::buffer::Buffer;
use crate::backend::dax::DaxBackend;
use crate::backend::dax_path::DaxDecision;
use crate::backend::nbd::conn::Export;
use crate::backend::nbd::NbdBackend;
use crate::backend::uring::UringBackend;
use crate::backend::Backend;
use crate::io::features::{self, DataMode};
use crate::io::handler::Handler;
use crate::io::request::Request;
use crate::services::jobs::JobKind;
use crate::services::stats::Stats;
use libublk::io::UblkQueue;
use rdm_targets::Table;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// What serves the requests: the handler over io_uring on the backing
/// files, or over the DAX mappings. Chosen per table, before it is served.
#[derive(Debug)]
pub(crate) enum Core {
    Uring(Handler<UringBackend>),
    Dax(Handler<DaxBackend>),
    /// A table with NBD exports (and perhaps files).
    Nbd(Handler<NbdBackend>),
}

impl Core {
    pub(crate) fn table(&self) -> &Table {
        match self {
            Core::Uring(h) => &h.table,
            Core::Dax(h) => &h.table,
            Core::Nbd(h) => &h.table,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        match self {
            Core::Uring(h) => &h.stats,
            Core::Dax(h) => &h.stats,
            Core::Nbd(h) => &h.stats,
        }
    }

    /// Drops the memory files' mappings unless the device (data mode
    /// `mode`, flags `granted`) reaches its requests through /dev/ublkcN:
    /// zero copy with USER_COPY granted (not, e.g., a device an older rdm
    /// created, now recovered).
    pub(crate) fn fit_mappings(&mut self, mode: DataMode, granted: u64) {
        if mappings_usable(mode, granted) {
            return;
        }
        let files = match self {
            Core::Uring(h) => &mut h.backend,
            Core::Nbd(h) => &mut h.backend.files,
            Core::Dax(_) => return,
        };
        files.mem.iter_mut().for_each(|m| *m = None);
    }

    /// How each backing device is accessed, for status.
    pub(crate) fn access(&self, dev: usize) -> &'static str {
        match self {
            Core::Uring(h) => h.backend.access(dev),
            Core::Dax(h) => h.backend.access(dev),
            Core::Nbd(h) => h.backend.access(dev),
        }
    }

    /// The export behind device `dev`, if it is one.
    pub(crate) fn export(&self, dev: usize) -> Option<&Export> {
        match self {
            Core::Nbd(h) => h.backend.exports[dev].as_ref(),
            _ => None,
        }
    }

    pub(crate) async fn run_job(
        &self,
        q: &UblkQueue<'_>,
        kind: &JobKind,
    ) -> Result<String, String> {
        match self {
            Core::Uring(h) => h.run_job(q, kind).await,
            Core::Dax(h) => h.run_job(q, kind).await,
            Core::Nbd(h) => h.run_job(q, kind).await,
        }
    }

    pub(crate) async fn run_background(
        &self,
        q: &UblkQueue<'_>,
        job: rdm_targets::Job,
        current: &dyn Fn() -> bool,
    ) {
        match self {
            Core::Uring(h) => h.run_background(q, job, current).await,
            Core::Dax(h) => h.run_background(q, job, current).await,
            Core::Nbd(h) => h.run_background(q, job, current).await,
        }
    }

    /// Tells the handler what serving targets ask of the device: its
    /// block size and each backing device's size.
    pub(crate) fn set_geometry(&mut self, block_size: u32, records: &[DeviceRecord]) {
        let sizes = records.iter().map(|r| r.size_bytes).collect();
        let (b, d) = match self {
            Core::Uring(h) => (&mut h.block_size, &mut h.device_bytes),
            Core::Dax(h) => (&mut h.block_size, &mut h.device_bytes),
            Core::Nbd(h) => (&mut h.block_size, &mut h.device_bytes),
        };
        *b = block_size;
        *d = sizes;
    }

    pub(crate) async fn handle(&self, q: &UblkQueue<'_>, req: Request, buf: Buffer) -> i32 {
        match self {
            Core::Uring(h) => h.handle(q, req, buf).await,
            Core::Dax(h) => h.handle(q, req, buf).await,
            Core::Nbd(h) => h.handle(q, req, buf).await,
        }
    }
}

/// One table, ready to serve: its request handler and what is behind it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) core: Core,
    /// The io_uring path's backing files: fixed files
    /// [`FIRST_BACKING_SLOT`].. on every queue ring (`None` for exports).
    pub(crate) files: Vec<Option<File>>,
    /// `Dax` when the DAX mappings serve, else the ublk mode chosen.
    pub(crate) mode: DataMode,
    pub(crate) dax: DaxDecision,
    /// Whether every backing device can discard.
    pub(crate) discard: bool,
    /// The backing devices as inspected, for recovery's checks.
    pub(crate) records: Vec<DeviceRecord>,
}

impl Loaded {
    /// The descriptors of the fixed-file slots from [`FIRST_BACKING_SLOT`].
    pub(crate) fn fixed_fds(&self) -> Vec<RawFd> {
        self.files
            .iter()
            .map(|f| f.as_ref().map_or(-1, |f| f.as_raw_fd()))
            .collect()
    }

    /// Makes every write that completed durable: fdatasync of each backing
    /// file, NBD_CMD_FLUSH on each export, or the DAX backend's own sync.
    /// Only with no request in flight (suspended and drained, or stopped).
    pub(crate) fn sync(&self) -> Result<(), (PathBuf, std::io::Error)> {
        let paths = self.core.table().devices();
        if let Core::Dax(h) = &self.core {
            return h.backend.sync().map_err(|(i, e)| (paths[i].clone(), e));
        }
        for (i, (f, p)) in self.files.iter().zip(paths).enumerate() {
            if let Some(f) = f {
                f.sync_data().map_err(|e| (p.clone(), e))?;
            }
            if let Some(e) = self.core.export(i) {
                e.flush_idle().map_err(|e| (p.clone(), e))?;
            }
        }
        Ok(())
    }
}

/// Set when queue threads must give up even with I/O tasks unfinished
/// (start failed, or a stop that never delivers the abort).
pub(crate) static FORCE_EXIT: AtomicBool = AtomicBool::new(false);
pub(crate) static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether memory files can be served through their mappings on a device
/// in `mode` with `flags` (the kernel's offer before ADD_DEV, the grant
/// after): only zero copy with USER_COPY reaches the request's pages
/// through /dev/ublkcN.
pub(crate) fn mappings_usable(mode: DataMode, flags: u64) -> bool {
    mode == DataMode::ZeroCopy && flags & features::F_USER_COPY != 0
}

/// Whether the DAX path moves request data with USER_COPY (one kernel copy
/// between the request and the mapping) rather than through the per-tag
/// buffers the driver copies into (`RDM_DAX_COPY=buffer`, for measuring).
pub(crate) fn dax_user_copy() -> bool {
    std::env::var("RDM_DAX_COPY").map_or(true, |v| v != "buffer")
}

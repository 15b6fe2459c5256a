//! Before any device exists: [`probe`] the kernel and the backing devices
//! (checked against the table, and for a recovery against what was
//! recorded), then [`open_data_path`]: the DAX mappings or the files for
//! io_uring, ready to serve as a [`Loaded`] table.

use crate::backend::backing::{self, BackingError};
use crate::backend::buffer::{Aux, BYTES};
use crate::backend::dax::DaxBackend;
use crate::backend::dax_path::{self, DaxDecision};
use crate::backend::memfile::MemFile;
use crate::backend::nbd::uri::is_nbd;
use crate::backend::nbd::{open_export, ExportOptions, NbdBackend};
use crate::backend::uring::{Backing, UringBackend};
use crate::control::claims;
use crate::control::config::{Config, ServerError};
use crate::control::state::{self as control, DeviceRecord, DeviceState, StateGuard};
use crate::io::features::{self, DataMode};
use crate::io::gate::{BYTES_SLOT, FIRST_BACKING_SLOT, FIXED_SLOTS, ZERO_SLOT};
use crate::io::handler::Handler;
use crate::io::loaded::{mappings_usable, Core, Loaded};
use libublk::ctrl::UblkCtrl;
use std::fs::File;
use std::path::PathBuf;

/// A new record (create), or the record of a device waiting for recovery
/// taken over (recover), with that record as it was.
pub(crate) fn claim_or_adopt(
    cfg: &Config,
) -> Result<(StateGuard, DeviceState, Option<DeviceState>), ServerError> {
    let me = std::process::id();
    if cfg.recover {
        let (guard, old) = StateGuard::adopt(&cfg.name)?;
        let mut state = old.clone();
        state.pid = me;
        state.pid_start = control::process_start(me).unwrap_or(0);
        state.state = "recovering".into();
        // A new server starts resumed, with no inactive table (that one's
        // files were the old server's).
        state.suspended = false;
        state.inactive_table = None;
        guard.update(&state)?;
        return Ok((guard, state, Some(old)));
    }
    let state = DeviceState {
        name: cfg.name.clone(),
        pid: me,
        pid_start: control::process_start(me).unwrap_or(0),
        state: "starting".into(),
        dev_id: None,
        bdev: None,
        mode: None,
        queues: cfg.queues,
        depth: cfg.depth,
        block_size: cfg.block_size,
        read_only: cfg.read_only,
        size_bytes: cfg.table.total_bytes(),
        table: cfg.table.to_string(),
        recovery: cfg.recovery,
        zero_copy: Some(cfg.zero_copy),
        dax: Some(cfg.dax),
        devices: Vec::new(),
        suspended: false,
        inactive_table: None,
        nbd_timeout: Some(cfg.nbd_timeout.as_secs()),
        batch_io: cfg.batch_io,
        io_threads: Some(cfg.io_threads),
    };
    Ok((StateGuard::claim(&state)?, state, None))
}

/// What [`probe`] found out before anything exists.
pub(crate) struct Probed {
    pub(crate) features: u64,
    pub(crate) mode: DataMode,
    pub(crate) dax: DaxDecision,
    pub(crate) records: Vec<DeviceRecord>,
}

/// Step 1: the kernel's ublk features and the data-path mode they allow;
/// the backing devices checked against the table (and, for a recovery,
/// against what was recorded: the same objects, not smaller); DAX decided
/// (`required` fails here, before any device exists).
pub(crate) fn probe(cfg: &Config, waiting: Option<&DeviceState>) -> Result<Probed, ServerError> {
    let name = &cfg.name;
    let features =
        UblkCtrl::get_features().ok_or_else(|| ServerError::NoUblk { name: name.clone() })?;
    let unsupported = |msg| ServerError::Unsupported {
        name: name.clone(),
        msg,
    };
    let mode = features::choose_mode(cfg.zero_copy, cfg.batch_io, features).map_err(unsupported)?;
    if cfg.io_threads > 1 {
        features::check_io_threads(cfg.io_threads, cfg.batch_io, features).map_err(unsupported)?;
    }
    let backing_err = |source| ServerError::Backing {
        name: name.clone(),
        source,
    };
    // Each device is inspected once; for a recovery, what changed
    // underneath is said before any table rule: it serves the same objects
    // or nothing.
    let infos = backing::inspect_all(&cfg.table).map_err(backing_err)?;
    let records: Vec<DeviceRecord> = infos.iter().map(DeviceRecord::of).collect();
    match waiting {
        Some(old) => check_same_devices(name, &old.devices, &records)?,
        None => {
            cfg.recovery
                .ctrl_flags(features)
                .map_err(|msg| ServerError::Unsupported {
                    name: name.clone(),
                    msg,
                })?;
        }
    }
    backing::check_against(&cfg.table, &infos, !cfg.read_only).map_err(backing_err)?;
    if !cfg.read_only {
        claims::check(name, &cfg.table, &infos).map_err(|source| ServerError::Claimed {
            name: name.clone(),
            source,
        })?;
    }
    let dax = dax_path::decide(&cfg.table, cfg.dax).map_err(|source| ServerError::Dax {
        name: name.clone(),
        source,
    })?;
    if let Some(note) = &dax.note {
        tracing::warn!("{note}");
    }
    if !dax.active {
        if let Some(b) = infos
            .iter()
            .find(|b| b.kind == backing::BackingKind::DaxDevice)
        {
            return Err(ServerError::DevDaxNeedsDax {
                name: name.clone(),
                path: b.path.display().to_string(),
                why: dax.reason.clone().unwrap_or_default(),
            });
        }
    }
    Ok(Probed {
        features,
        mode,
        dax,
        records,
    })
}

/// A recovery serves the same objects as before: each backing device must
/// be the same file (or block device) and at least as large.
fn check_same_devices(
    name: &str,
    was: &[DeviceRecord],
    now: &[DeviceRecord],
) -> Result<(), ServerError> {
    let refuse = |msg: String| {
        Err(ServerError::Recovery {
            name: name.to_string(),
            msg: format!("{msg}; the device is left waiting, nothing was changed"),
        })
    };
    for w in was {
        let Some(n) = now.iter().find(|n| n.path == w.path) else {
            return refuse(format!("{} is no longer in the table", w.path.display()));
        };
        if n.identity != w.identity {
            return refuse(format!(
                "{} was replaced by another file since the device was created",
                w.path.display()
            ));
        }
        if n.size_bytes < w.size_bytes {
            return refuse(format!(
                "{} shrank from {} to {} bytes since the device was created",
                w.path.display(),
                w.size_bytes,
                n.size_bytes
            ));
        }
    }
    Ok(())
}

/// Step 2: opens the backing devices of `cfg.table` for the chosen path:
/// the DAX mappings when DAX is active and `allow_dax` (a device serving
/// zero copy cannot take DAX later), else the files for io_uring, which
/// become fixed files [`FIRST_BACKING_SLOT`].. on every queue ring.
pub(crate) fn open_data_path(
    cfg: &Config,
    probed: Probed,
    allow_dax: bool,
) -> Result<Loaded, ServerError> {
    let name = &cfg.name;
    let ndev = cfg.table.devices().len();
    let max = FIXED_SLOTS - FIRST_BACKING_SLOT as usize;
    if ndev > max {
        return Err(ServerError::TooManyDevices {
            name: name.clone(),
            count: ndev,
            max,
        });
    }
    let Probed {
        features,
        mut mode,
        mut dax,
        records,
    } = probed;
    tracing::debug!(features = format!("{features:#x}"), "ublk features");
    if dax.active && !allow_dax {
        let why = "the device serves zero copy, which the DAX path cannot".to_string();
        if let Some(p) = cfg.table.devices().iter().find(|p| is_char_device(p)) {
            return Err(ServerError::DevDaxNeedsDax {
                name: name.clone(),
                path: p.display().to_string(),
                why,
            });
        }
        dax.active = false;
        dax.reason = Some(why);
    }
    let aux = Aux {
        zero: Some(ZERO_SLOT),
        bytes: Some(BYTES_SLOT),
    };
    let (mut core, files, discard) = if dax.active {
        // Copy mode: the driver copies request data into our buffers and
        // the DAX backend copies it into pmem. Measured faster than
        // USER_COPY for 4 KiB (one memcpy + flush beats an extra SQE round
        // trip).
        mode = DataMode::Dax;
        let backend = DaxBackend::open(&cfg.table, &dax).map_err(|source| ServerError::Dax {
            name: name.clone(),
            source,
        })?;
        let core = Core::Dax(Handler::new(cfg.table.clone(), backend, aux));
        (core, Vec::new(), true)
    } else {
        open_uring(cfg, mode, features, aux)?
    };
    core.set_geometry(cfg.block_size, &records);
    Ok(Loaded {
        core,
        files,
        mode,
        dax,
        discard,
        records,
    })
}

/// The io_uring path: each device opened as a file (a fixed file of every
/// queue ring, mapped where it is a memory file the device may reach by
/// USER_COPY) or connected as an NBD export. Returns the handler, the
/// files, and whether every device can discard.
fn open_uring(
    cfg: &Config,
    mode: DataMode,
    features: u64,
    aux: Aux,
) -> Result<(Core, Vec<Option<File>>, bool), ServerError> {
    let backing_err = |source| ServerError::Backing {
        name: cfg.name.clone(),
        source,
    };
    let (mut files, mut back, mut mem, mut exports) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut discard = true;
    let need = crate::backend::needed_bytes(&cfg.table);
    for (i, p) in cfg.table.devices().iter().enumerate() {
        let fixed = FIRST_BACKING_SLOT + i as u32;
        if is_nbd(p) {
            let opts = ExportOptions {
                rings: cfg.rings(),
                writable: !cfg.read_only,
                block_size: cfg.block_size,
                timeout: cfg.nbd_timeout,
            };
            let e = open_export(p, opts, aux).map_err(backing_err)?;
            discard &= e.info.has(crate::backend::nbd::proto::flags::SEND_TRIM);
            exports.push(Some(e));
            back.push(Backing {
                fixed,
                direct: false,
            });
            mem.push(None);
            files.push(None);
            continue;
        }
        let (f, direct) = backing::open(p, !cfg.read_only).map_err(backing_err)?;
        discard &= backing::supports_discard(&f);
        back.push(Backing { fixed, direct });
        // Mapped only where the device may get USER_COPY; whether it
        // did is known after ADD_DEV (`fit_mappings`).
        mem.push(if mappings_usable(mode, features) {
            MemFile::map(&f, need[i], !cfg.read_only)
        } else {
            None
        });
        files.push(Some(f));
        exports.push(None);
    }
    let files_backend = UringBackend { files: back, mem };
    let core = if exports.iter().any(Option::is_some) {
        let backend = NbdBackend {
            exports,
            files: files_backend,
        };
        Core::Nbd(Handler::new(cfg.table.clone(), backend, aux))
    } else {
        Core::Uring(Handler::new(cfg.table.clone(), files_backend, aux))
    };
    Ok((core, files, discard))
}

fn is_char_device(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
}

/// `/dev/zero` and a file of bytes 0..=255: fixed files [`ZERO_SLOT`] and
/// [`BYTES_SLOT`], which fill zero-copy buffers that userspace cannot
/// touch.
pub(crate) fn aux_files(name: &str) -> Result<[File; 2], ServerError> {
    let err = |path: &str| {
        let path = PathBuf::from(path);
        move |cause| ServerError::Backing {
            name: name.to_string(),
            source: BackingError::Io { path, cause },
        }
    };
    let zero = File::open("/dev/zero").map_err(err("/dev/zero"))?;
    let bytes = bytes_file().map_err(err("memfd:rdm-bytes"))?;
    Ok([zero, bytes])
}

/// A memory file whose byte `i` is `i`: reading one byte of it into a
/// kernel-registered buffer sets one byte of the request's data.
fn bytes_file() -> std::io::Result<File> {
    use std::io::Write;
    let fd = rustix::fs::memfd_create(c"rdm-bytes", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = File::from(fd);
    f.write_all(&BYTES)?;
    Ok(f)
}

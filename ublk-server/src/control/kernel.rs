//! The device as the kernel sees it: ADD_DEV with its parameters (sizes,
//! hints, cache and discard from the table; buffers sized for the caller),
//! START_USER_RECOVERY for a device waiting for a new server, the block
//! device's I/O scheduler, and the per-thread control ring libublk needs.

use crate::control::config::{Config, ServerError};
use crate::control::ctrl_cmd;
use crate::control::recovery::Recovery;
use crate::control::state::DeviceState;
use crate::io::features::{self, DataMode, ZeroCopy};
use crate::io::loaded::dax_user_copy;
use io_uring::{squeue, IoUring};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::{sys, UblkError, UblkFlags};
use rdm_targets::Table;
use std::sync::Arc;

/// Largest request, and the size of each copy-mode buffer (root; a user's
/// buffers must fit their RLIMIT_MEMLOCK, see [`io_buf_bytes`]).
const IO_BUF_BYTES: u32 = 512 << 10;

/// A device a user (not root) creates is an unprivileged ublk device: the
/// kernel refuses zero copy and recovery for it, so it is served in copy
/// mode and dies with its server.
pub(crate) fn as_user(mut cfg: Config) -> Result<Config, ServerError> {
    if rustix::process::geteuid().is_root() {
        return Ok(cfg);
    }
    if cfg.zero_copy == ZeroCopy::On {
        return Err(ServerError::Unsupported {
            name: cfg.name.clone(),
            msg: "the kernel refuses zero copy for a device created by a user (UBLK_F_UNPRIVILEGED_DEV); use --zero-copy auto or off".into(),
        });
    }
    cfg.zero_copy = ZeroCopy::Off;
    if cfg.recovery != Recovery::Off {
        tracing::info!("recovery off: the kernel has none for a device created by a user");
        cfg.recovery = Recovery::Off;
    }
    Ok(cfg)
}

/// Each tag's copy buffer. A user's registered buffers count against
/// their RLIMIT_MEMLOCK (io_uring accounts them for callers without
/// CAP_IPC_LOCK): then the buffers shrink to fit half of it, and larger
/// requests are split by the kernel.
pub(crate) fn io_buf_bytes(cfg: &Config) -> Result<u32, ServerError> {
    if rustix::process::geteuid().is_root() {
        return Ok(IO_BUF_BYTES);
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock)
        .current
        .unwrap_or(u64::MAX);
    // Each io thread has a buffer for every tag of its queue.
    let tags = cfg.rings() as u64 * u64::from(cfg.depth);
    let per_tag = (limit / 2 / tags.max(1)).min(u64::from(IO_BUF_BYTES));
    if per_tag < 4096 {
        return Err(ServerError::Unsupported {
            name: cfg.name.clone(),
            msg: format!(
                "RLIMIT_MEMLOCK ({limit} bytes) is too small for {tags} copy buffers of at least 4 KiB; lower --depth or --queues, or raise the limit (ulimit -l)"
            ),
        });
    }
    Ok(1 << (63 - per_tag.leading_zeros()))
}

pub(crate) fn ublk_err(name: &str, op: &'static str, e: UblkError) -> ServerError {
    ServerError::Ublk {
        name: name.to_string(),
        op,
        cause: format!("{e:?}"),
    }
}

/// The control flags ADD_DEV asks for: recovery, the data mode's, and
/// UNPRIVILEGED_DEV for a user's device.
fn ctrl_flags(cfg: &Config, mode: DataMode, features: u64) -> Result<u64, ServerError> {
    let mut ctrl_flags =
        cfg.recovery
            .ctrl_flags(features)
            .map_err(|msg| ServerError::Unsupported {
                name: cfg.name.clone(),
                msg,
            })?;
    if mode == DataMode::ZeroCopy {
        ctrl_flags |= features::F_AUTO_BUF_REG | features::F_SUPPORT_ZERO_COPY;
        // USER_COPY as well: the request's pages are then also reachable
        // by pread/pwrite on /dev/ublkcN, which moves small pieces of memory
        // files without an io-wq worker (backend::memfile).
        if features & features::F_USER_COPY != 0 {
            ctrl_flags |= features::F_USER_COPY;
        }
    }
    if mode == DataMode::Batch {
        ctrl_flags |= features::F_BATCH_IO;
    }
    if mode == DataMode::Dax && dax_user_copy() {
        ctrl_flags |= features::F_USER_COPY;
    }
    if !rustix::process::geteuid().is_root() {
        // The kernel makes the creator the device's owner; udev gives the
        // nodes to the owner (tools/udev/98-rdm-unprivileged.rules).
        if features & u64::from(sys::UBLK_F_UNPRIVILEGED_DEV) == 0 {
            return Err(ServerError::Unsupported {
                name: cfg.name.clone(),
                msg: "this kernel does not let users create ublk devices (UBLK_F_UNPRIVILEGED_DEV, Linux 6.3+); run as root".into(),
            });
        }
        ctrl_flags |= u64::from(sys::UBLK_F_UNPRIVILEGED_DEV);
    }
    Ok(ctrl_flags)
}

/// Step 3: ADD_DEV. From here the device exists and `UblkCtrl`'s `Drop`
/// deletes it. Returns the mode the kernel actually granted.
pub(crate) fn add_device(
    cfg: &Config,
    mut mode: DataMode,
    features: u64,
) -> Result<(Arc<UblkCtrl>, DataMode, Option<ctrl_cmd::DeleteOnDrop>), ServerError> {
    let ctrl_flags = ctrl_flags(cfg, mode, features)?;
    let io_buf = io_buf_bytes(cfg)?;
    let mut raw = None;
    let ctrl = if ctrl_flags & u64::from(sys::UBLK_F_USER_RECOVERY_FAIL_IO) != 0 {
        // libublk 0.4.8 refuses this flag: ADD_DEV by hand, then let
        // libublk take the device over as an existing one.
        let info = sys::ublksrv_ctrl_dev_info {
            nr_hw_queues: cfg.queues,
            queue_depth: cfg.depth,
            max_io_buf_bytes: io_buf,
            flags: ctrl_flags | u64::from(sys::UBLK_F_CMD_IOCTL_ENCODE),
            ..Default::default()
        };
        let id = ctrl_cmd::add_dev(info).map_err(|e| ublk_err(&cfg.name, "ADD_DEV", e))?;
        let guard = ctrl_cmd::DeleteOnDrop::new(id);
        let ctrl = UblkCtrlBuilder::default()
            .name("rdm")
            .id(id as i32)
            .nr_queues(cfg.queues)
            .depth(cfg.depth)
            .io_threads_per_queue(cfg.io_threads)
            .io_buf_bytes(io_buf)
            .build()
            .map_err(|e| ublk_err(&cfg.name, "GET_DEV_INFO", e))?;
        raw = Some(guard);
        Arc::new(ctrl)
    } else {
        Arc::new(
            UblkCtrlBuilder::default()
                .name("rdm")
                .nr_queues(cfg.queues)
                .depth(cfg.depth)
                .io_threads_per_queue(cfg.io_threads)
                .io_buf_bytes(io_buf)
                .ctrl_flags(ctrl_flags)
                .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
                .build()
                .map_err(|e| ublk_err(&cfg.name, "ADD_DEV", e))?,
        )
    };
    // Older kernels drop flags they do not know without an error.
    let granted = ctrl.dev_info().flags;
    if mode == DataMode::ZeroCopy && granted & features::F_AUTO_BUF_REG == 0 {
        if cfg.zero_copy == ZeroCopy::On {
            return Err(ServerError::Unsupported {
                name: cfg.name.clone(),
                msg: format!("the kernel did not grant UBLK_F_AUTO_BUF_REG (granted {granted:#x})"),
            });
        }
        mode = DataMode::Copy;
    }
    tracing::info!(
        dev_id = ctrl.dev_info().dev_id,
        granted = format!("{granted:#x}"),
        mode = mode.name(),
        "device added"
    );
    Ok((ctrl, mode, raw))
}

/// Gives device `dev`'s block device `bdev` the I/O scheduler `scheduler`.
/// A one-queue blk-mq device gets mq-deadline from the kernel, which cost
/// 4 KiB random I/O at QD32 40 % of its IOPS here (the server queues for
/// itself). An unprivileged server may not change it: that is logged, and
/// the device keeps the kernel's. A name the kernel refuses is an error.
pub(crate) fn set_scheduler(dev: &str, bdev: &str, scheduler: &str) -> Result<(), ServerError> {
    let node = bdev.rsplit('/').next().unwrap_or(bdev);
    let path = format!("/sys/block/{node}/queue/scheduler");
    match std::fs::write(&path, scheduler) {
        Ok(()) => tracing::debug!(%path, scheduler, "I/O scheduler set"),
        // Only root may write it: a user's device keeps the kernel's.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(%path, scheduler, "cannot set the I/O scheduler: {e}");
        }
        Err(cause) => {
            return Err(ServerError::Scheduler {
                name: dev.to_string(),
                scheduler: scheduler.to_string(),
                path,
                cause,
            })
        }
    }
    Ok(())
}

/// Step 3, recovering: START_USER_RECOVERY on the waiting device (the
/// queues' FETCH and END_USER_RECOVERY follow in [`run_queues`]). A failure
/// here leaves the device waiting: `UblkCtrl` deletes only what it added.
/// The data path is the one the device was created with.
pub(crate) fn recover_device(
    cfg: &Config,
    old: &DeviceState,
    mode: DataMode,
) -> Result<(Arc<UblkCtrl>, DataMode), ServerError> {
    let id = old.dev_id.ok_or_else(|| ServerError::Recovery {
        name: cfg.name.clone(),
        msg: "no device id was recorded".into(),
    })?;
    let ctrl = Arc::new(
        UblkCtrlBuilder::default()
            .name("rdm")
            .id(id as i32)
            .nr_queues(cfg.queues)
            .depth(cfg.depth)
            .io_threads_per_queue(cfg.io_threads)
            .io_buf_bytes(IO_BUF_BYTES)
            .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
            .build()
            .map_err(|e| ublk_err(&cfg.name, "GET_DEV_INFO", e))?,
    );
    match ctrl.start_user_recover() {
        Ok(r) if r >= 0 => {}
        Ok(r) => {
            return Err(ublk_err(
                &cfg.name,
                "START_USER_RECOVERY",
                UblkError::OtherError(r),
            ))
        }
        Err(e) => return Err(ublk_err(&cfg.name, "START_USER_RECOVERY", e)),
    }
    let granted = ctrl.dev_info().flags;
    let mode = match mode {
        DataMode::Dax => DataMode::Dax,
        _ if granted & features::F_BATCH_IO != 0 => DataMode::Batch,
        _ if granted & features::F_AUTO_BUF_REG != 0 => DataMode::ZeroCopy,
        _ => DataMode::Copy,
    };
    tracing::info!(dev_id = id, mode = mode.name(), "recovering the device");
    Ok((ctrl, mode))
}

/// libublk's control ring is per thread: makes one for this thread.
pub(crate) fn ctrl_ring() {
    let _ = libublk::ublk_init_ctrl_task_ring(|r| {
        if r.is_none() {
            *r = Some(
                IoUring::<squeue::Entry128>::builder()
                    .build(16)
                    .map_err(UblkError::IOError)?,
            );
        }
        Ok(())
    });
}

/// Block-device parameters from the table: size, block sizes, dm-stripe's
/// io_min/io_opt hints (where they are powers of two, which is all ublk can
/// express), volatile cache + FUA, and discard when every file can punch.
pub(crate) fn params(
    table: &Table,
    block_size: u32,
    read_only: bool,
    discard: bool,
    max_io: u32,
) -> sys::ublk_params {
    let lbs = block_size.trailing_zeros() as u8;
    let pbs = lbs.max(12);
    let shift = |bytes: u64| {
        bytes
            .is_power_of_two()
            .then(|| bytes.trailing_zeros() as u8)
    };
    let (io_min, io_opt) = match table.io_hints() {
        Some((chunk, full)) => {
            let min = shift(chunk << 9).unwrap_or(pbs).max(lbs);
            (min, shift(full << 9).unwrap_or(min))
        }
        None => (pbs, pbs),
    };
    let mut attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    if read_only {
        attrs |= sys::UBLK_ATTR_READ_ONLY;
    }
    let mut p = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs,
            logical_bs_shift: lbs,
            physical_bs_shift: pbs,
            io_min_shift: io_min,
            io_opt_shift: io_opt,
            max_sectors: max_io >> 9,
            dev_sectors: table.total_sectors(),
            ..Default::default()
        },
        ..Default::default()
    };
    if discard && !read_only {
        p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        p.discard = sys::ublk_param_discard {
            discard_granularity: 1 << pbs,
            max_discard_sectors: u32::MAX >> 9,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_discard_segments: 1,
            ..Default::default()
        };
    }
    p
}

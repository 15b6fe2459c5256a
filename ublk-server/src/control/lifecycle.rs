//! One device, served: ADD_DEV → queue threads → LIVE → serve until asked
//! to stop → drain, fdatasync, DEL_DEV.
//!
//! [`serve`] runs named steps: [`probe`] the kernel and the backing devices,
//! [`open_data_path`] (io_uring files or DAX mappings), [`add_device`],
//! then [`run_queues`] (one thread and one io_uring each, carrying both the
//! ublk commands and the backing I/O of the request handler) while the
//! control socket answers requests. Anything that fails after ADD_DEV
//! unwinds through `UblkCtrl`'s `Drop`, which deletes the device, and
//! [`StateGuard`]'s, which removes the state file: nothing is left
//! half-created.

pub use crate::control::config::{Config, Live, ServerError, NBD_TIMEOUT};
use crate::control::open::{aux_files, claim_or_adopt};
pub(crate) use crate::control::open::{open_data_path, probe};
pub(crate) use crate::io::loaded::{dax_user_copy, Loaded, FORCE_EXIT, STOPPING};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{squeue, IoUring};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};
use rdm_targets::Table;

use crate::control::claims;
use crate::control::ctrl_cmd;
use crate::control::recovery::Recovery;
use crate::control::state::{self as control, DeviceState};
use crate::control::verbs::Device;
use crate::io::features::{self, DataMode, ZeroCopy};
use crate::io::gate::{Gate, BYTES_SLOT, FIRST_BACKING_SLOT, FIXED_SLOTS, ZERO_SLOT};
use crate::io::queue;
use crate::services::jobs::Hook;

/// Largest request, and the size of each copy-mode buffer (root; a user's
/// buffers must fit their RLIMIT_MEMLOCK, see [`io_buf_bytes`]).
const IO_BUF_BYTES: u32 = 512 << 10;

/// Serves `cfg` until SIGINT/SIGTERM or a `remove` request. Calls `on_live`
/// once the block device exists. Must be called before any other thread is
/// started, so that the termination signals can be routed to one thread.
pub fn serve(
    cfg: Config,
    on_live: impl FnOnce(&Live) + Send + Sync + 'static,
) -> Result<(), ServerError> {
    let sigset = block_term_signals();
    let cfg = as_user(cfg)?;
    let (guard, mut state, waiting) = claim_or_adopt(&cfg)?;
    let guard = Arc::new(guard);
    // Held until the objects this table writes are recorded.
    let claims = claims::lock()?;
    let probed = probe(&cfg, waiting.as_ref())?;
    // Everything a recovery needs is recorded before the device exists.
    state.devices = probed.records.clone();
    guard.update(&state)?;
    drop(claims);
    let features = probed.features;
    let mut loaded = open_data_path(&cfg, probed, true)?;
    let aux = aux_files(&cfg.name)?;
    // A device rdm added by hand is deleted on the way out of a failed
    // start, as libublk does for its own (see ctrl_cmd).
    let (ctrl, mode, added) = match &waiting {
        Some(old) => {
            let (c, m) = recover_device(&cfg, old, loaded.mode)?;
            (c, m, None)
        }
        None => add_device(&cfg, loaded.mode, features)?,
    };
    loaded.core.fit_mappings(mode, ctrl.dev_info().flags);
    // Record the id before the block device appears, so that udev's
    // `rdm udev-name ublkbN` can name it as soon as it does.
    state.dev_id = Some(ctrl.dev_info().dev_id);
    state.mode = Some(mode);
    guard.update(&state)?;
    let gate = Gate::new(loaded, cfg.rings())
        .map_err(|e| ublk_err(&cfg.name, "eventfd", UblkError::IOError(e)))?;
    let gate = Arc::new(gate);
    let stopper = Arc::new(Stopper {
        ctrl: ctrl.clone(),
        gate: gate.clone(),
    });
    stop_on_signal(sigset, stopper.clone(), &cfg.name)?;
    let device = Device::new(
        cfg.clone(),
        features,
        mode,
        state,
        guard.clone(),
        gate.clone(),
        stopper,
    );
    let served = run_queues(&cfg, device, aux, mode, on_live);
    // run_queues cleaned up after a failed start; from here rdm deletes
    // the device itself (and must not once it is gone: ids are reused).
    if let Some(a) = &added {
        a.disarm();
    }
    // A device that started but could not go live (its scheduler refused,
    // its state or control socket not written) stopped like any other: it
    // is deleted below, and the create fails after.
    let not_live = served?;
    // Stopped: the block device is gone and in-flight I/O has drained.
    if let Err((p, e)) = gate.active().sync() {
        tracing::error!(path = %p.display(), "fdatasync after stop failed: {e}");
    }
    ctrl.del_dev()
        .map_err(|e| ublk_err(&cfg.name, "DEL_DEV", e))?;
    tracing::info!("device removed");
    drop(guard);
    not_live.map_or(Ok(()), Err)
}

/// A device a user (not root) creates is an unprivileged ublk device: the
/// kernel refuses zero copy and recovery for it, so it is served in copy
/// mode and dies with its server.
fn as_user(mut cfg: Config) -> Result<Config, ServerError> {
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
fn io_buf_bytes(cfg: &Config) -> Result<u32, ServerError> {
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

/// Why `/dev/ublk-control` cannot be used, as one sentence.
pub fn no_ublk_reason() -> String {
    let path = "/dev/ublk-control";
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "{path} is not open to uid {}: a user needs the udev rule tools/udev/98-rdm-unprivileged.rules (or run as root)",
            rustix::process::geteuid().as_raw()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "this kernel has no ublk (/dev/ublk-control is missing); load the ublk_drv module".into()
        }
        _ => "GET_FEATURES on /dev/ublk-control failed; is ublk_drv loaded?".into(),
    }
}

fn ublk_err(name: &str, op: &'static str, e: UblkError) -> ServerError {
    ServerError::Ublk {
        name: name.to_string(),
        op,
        cause: format!("{e:?}"),
    }
}

/// Step 3: ADD_DEV. From here the device exists and `UblkCtrl`'s `Drop`
/// deletes it. Returns the mode the kernel actually granted.
fn add_device(
    cfg: &Config,
    mut mode: DataMode,
    features: u64,
) -> Result<(Arc<UblkCtrl>, DataMode, Option<ctrl_cmd::DeleteOnDrop>), ServerError> {
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
fn set_scheduler(dev: &str, bdev: &str, scheduler: &str) -> Result<(), ServerError> {
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
fn recover_device(
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

/// SIGINT/SIGTERM stop the device, from a thread of their own.
fn stop_on_signal(
    sigset: libc::sigset_t,
    stopper: Arc<Stopper>,
    name: &str,
) -> Result<(), ServerError> {
    std::thread::Builder::new()
        .name("rdm-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigset is a valid, initialised set.
            unsafe { libc::sigwait(&sigset, &mut sig) };
            tracing::info!(signal = sig, "stopping on signal");
            stopper.stop();
        })
        .map(|_| ())
        .map_err(|e| ublk_err(name, "signal thread", UblkError::IOError(e)))
}

/// Step 4: starts the queues (START_DEV); once the block device is live,
/// serves control requests and calls `on_live`; returns when the device
/// has stopped.
fn run_queues(
    cfg: &Config,
    device: Device,
    aux: [File; 2],
    mode: DataMode,
    on_live: impl FnOnce(&Live) + Send + Sync + 'static,
) -> Result<Option<ServerError>, ServerError> {
    let gate = device.gate.clone();
    let active = gate.active();
    // Every slot registered, the unused ones empty (-1): a reloaded table
    // may bring more devices.
    let mut fds = [-1; FIXED_SLOTS];
    fds[ZERO_SLOT as usize] = aux[0].as_raw_fd();
    fds[BYTES_SLOT as usize] = aux[1].as_raw_fd();
    for (i, fd) in active.fixed_fds().into_iter().enumerate() {
        fds[FIRST_BACKING_SLOT as usize + i] = fd;
    }
    let table = active.core.table().clone();
    let (discard, dax_note) = (active.discard, active.dax.note.clone());
    drop(active);
    let (block_size, read_only, depth) = (cfg.block_size, cfg.read_only, cfg.depth);
    let tgt_init = move |dev: &mut UblkDev| -> Result<(), UblkError> {
        let t = &mut dev.tgt;
        // Slot 0 is libublk's /dev/ublkcN.
        t.fds[1..].copy_from_slice(&fds[1..]);
        t.nr_fds = FIXED_SLOTS as i32;
        // Each tag can have a ublk command and several backing ops in flight.
        t.sq_depth = depth.saturating_mul(4);
        t.cq_depth = depth.saturating_mul(8);
        t.dev_size = table.total_bytes();
        t.params = params(
            &table,
            block_size,
            read_only,
            discard,
            dev.dev_info.max_io_buf_bytes,
        );
        Ok(())
    };
    let q_gate = gate.clone();
    let queue_fn = move |ring: queue::RingId, dev: &UblkDev| queue::run(ring, dev, &q_gate, mode);
    let ctrl = device.stopper.ctrl.clone();
    let device = Arc::new(device);
    // Held until the device has stopped; the control socket has a Weak.
    let served = device.clone();
    // device_fn runs on this thread, before run_target returns.
    let not_live = std::rc::Rc::new(std::cell::Cell::new(None));
    let why_not_live = not_live.clone();
    let device_fn = move |c: &UblkCtrl| {
        let live = Live {
            dev_id: c.dev_info().dev_id,
            bdev: c.get_bdev_path(),
            mode,
            dax_note,
        };
        // Anything that keeps the started device from going live fails the
        // create: the device is stopped and removed, as for a bad argument.
        match go_live(&device, &live) {
            Ok(()) => {
                device.guard.settle();
                tracing::info!(bdev = %live.bdev, "device is live");
                on_live(&live);
            }
            Err(e) => {
                tracing::error!("{e}");
                why_not_live.set(Some(e));
                device.stopper.stop();
            }
        }
    };
    if let Err(e) = run_target(&ctrl, cfg.recover, tgt_init, queue_fn, device_fn) {
        // Queue threads of a failed start are not joined; make them drop
        // their rings so that the device can be deleted (a new one) or
        // go back to waiting (a recovery: never deleted here).
        FORCE_EXIT.store(true, Ordering::SeqCst);
        gate.ring_all();
        if !cfg.recover {
            let _ = ctrl.kill_dev();
            let _ = ctrl.del_dev();
        }
        return Err(ublk_err(&cfg.name, "START_DEV", e));
    }
    drop(served);
    drop(aux);
    Ok(not_live.take())
}

/// What a started device needs before it is live: its scheduler, its
/// state recorded as live, and its control socket.
fn go_live(device: &Arc<Device>, live: &Live) -> Result<(), ServerError> {
    let name = &device.cfg.name;
    if let Some(s) = &device.cfg.scheduler {
        set_scheduler(name, &live.bdev, s)?;
    }
    let not_live = |source| ServerError::NotLive {
        name: name.clone(),
        source,
    };
    // Targets start (or restart, after a recovery) from their devices.
    device.gate.run_hook(Hook::Resume);
    device.went_live(live).map_err(not_live)?;
    // Weak: the socket thread outlives the device, whose drop (with the
    // state guard's) is the end of a stop.
    let d = Arc::downgrade(device);
    control::serve_socket(name, move |req| match d.upgrade() {
        Some(d) => d.answer(req),
        None => serde_json::json!({ "error": "the device is being removed" }),
    })
    .map_err(not_live)
}

/// libublk's `run_target`, except for one case: a device recovered from
/// `FAIL_IO` ends its recovery with END_USER_RECOVERY, where libublk's
/// `start_dev` knows only `QUIESCED` and would send START_DEV, which the
/// kernel refuses for a device that was started before.
fn run_target<T, Q, W>(
    ctrl: &UblkCtrl,
    recovering: bool,
    tgt_init: T,
    queue_fn: Q,
    device_fn: W,
) -> Result<(), UblkError>
where
    T: FnOnce(&mut UblkDev) -> Result<(), UblkError>,
    Q: FnOnce(queue::RingId, &UblkDev) + Send + Clone + 'static,
    W: FnOnce(&UblkCtrl),
{
    let dev = Arc::new(UblkDev::new(ctrl.get_name(), tgt_init, ctrl)?);
    let nr = dev.dev_info.nr_hw_queues;
    let threads = dev.io_threads_per_queue();
    let handles: Vec<_> = (0..nr)
        .flat_map(|q| (0..threads).map(move |t| (q, t)))
        .map(|(qid, thread)| {
            let (dev, f) = (dev.clone(), queue_fn.clone());
            let ring = queue::RingId {
                qid,
                thread,
                slot: usize::from(qid) * usize::from(threads) + usize::from(thread),
            };
            std::thread::Builder::new()
                .name(format!("rdm-queue-{qid}.{thread}"))
                .spawn(move || f(ring, &dev))
                .map_err(UblkError::IOError)
        })
        .collect::<Result<_, _>>()?;
    ctrl.read_dev_info()?;
    if recovering && u32::from(ctrl.dev_info().state) == sys::UBLK_S_DEV_FAIL_IO {
        dev.wait_for_buffer_registration(usize::from(nr))?;
        ctrl_cmd::end_user_recovery(ctrl.dev_info().dev_id)?;
    } else {
        ctrl.start_dev(&dev)?;
    }
    device_fn(ctrl);
    for h in handles {
        let _ = h.join();
    }
    // The device may be gone already (deleted elsewhere): fine.
    let _ = ctrl.stop_dev();
    Ok(())
}

pub(crate) struct Stopper {
    pub(crate) ctrl: Arc<UblkCtrl>,
    gate: Arc<Gate>,
}

impl Stopper {
    pub(crate) fn stop(&self) {
        if STOPPING.load(Ordering::SeqCst) {
            return;
        }
        // Targets' last I/O (dm's dtr), while the queues still serve.
        self.gate.run_hook(Hook::Stop);
        if STOPPING.swap(true, Ordering::SeqCst) {
            return;
        }
        // Requests held by a suspend must run for the device to drain, and
        // the queues' doorbell tasks must see the stop.
        self.gate.release();
        self.gate.thaw();
        ctrl_ring();
        if let Err(e) = self.ctrl.kill_dev() {
            tracing::error!("STOP_DEV failed: {e:?}");
        }
    }
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
fn params(
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

fn block_term_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

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
pub(crate) use crate::control::kernel::ctrl_ring;
use crate::control::kernel::{
    add_device, as_user, params, recover_device, set_scheduler, ublk_err,
};
use crate::control::open::{aux_files, claim_or_adopt};
pub(crate) use crate::control::open::{open_data_path, probe};
pub(crate) use crate::io::loaded::{Loaded, FORCE_EXIT, STOPPING};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use libublk::{sys, UblkError};

use crate::control::claims;
use crate::control::ctrl_cmd;
use crate::control::verbs::Device;
use crate::io::features::DataMode;
use crate::io::gate::{Gate, BYTES_SLOT, FIRST_BACKING_SLOT, FIXED_SLOTS, ZERO_SLOT};
use crate::io::queue;
use crate::services::jobs::Hook;

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
/// Every queue ring's fixed files: the aux files, then the backing
/// devices; every slot registered, the unused ones empty (-1), so that a
/// reloaded table may bring more devices.
fn fixed_files(aux: &[File; 2], active: &Loaded) -> [RawFd; FIXED_SLOTS] {
    let mut fds = [-1; FIXED_SLOTS];
    fds[ZERO_SLOT as usize] = aux[0].as_raw_fd();
    fds[BYTES_SLOT as usize] = aux[1].as_raw_fd();
    for (i, fd) in active.fixed_fds().into_iter().enumerate() {
        fds[FIRST_BACKING_SLOT as usize + i] = fd;
    }
    fds
}

fn run_queues(
    cfg: &Config,
    device: Device,
    aux: [File; 2],
    mode: DataMode,
    on_live: impl FnOnce(&Live) + Send + Sync + 'static,
) -> Result<Option<ServerError>, ServerError> {
    let gate = device.gate.clone();
    let active = gate.active();
    let fds = fixed_files(&aux, &active);
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
    crate::control::socket::serve_socket(name, move |req| match d.upgrade() {
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

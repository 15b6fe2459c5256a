//! The verbs on a live device, as its control socket receives them:
//! `status`, `remove`, and dm's own — `reload` (dmsetup load), `clear`,
//! `suspend`, `resume` and `message`.
//!
//! A reload opens and checks the new table's backing devices beside the
//! live ones and changes nothing else. Suspend freezes the file system on
//! the device (dm's lockfs), holds new requests at the [`Gate`], waits for
//! the ones in flight and flushes the backing devices. Resume swaps the
//! inactive table in for every queue at once, resizes the device when the
//! size changed (UPDATE_SIZE), lets the held requests run and thaws.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use libublk::sys;
use rdm_targets::Table;
use serde::Serialize;
use serde_json::{json, Value};

use crate::backend::dax_path::DaxDecision;
use crate::backend::nbd::status::ExportStatus;
use crate::control::lifecycle::{ctrl_ring, open_data_path, probe, Config, Live, Loaded, Stopper};
use crate::control::socket::Request;
use crate::control::state::{ControlError, DeviceState, StateGuard};
use crate::io::features::DataMode;
use crate::io::gate::Gate;
use crate::io::lockfs;
use crate::services::jobs::{Hook, JobKind};
use crate::services::stats::Snapshot;

/// One served device and what its verbs act on.
pub(crate) struct Device {
    pub(crate) cfg: Config,
    features: u64,
    /// The ublk data mode the device was started with.
    mode: DataMode,
    state: Mutex<DeviceState>,
    pub(crate) guard: Arc<StateGuard>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) stopper: Arc<Stopper>,
    inactive: Mutex<Option<Arc<Loaded>>>,
    /// When the current suspend began holding I/O.
    held_since: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Device {
    pub(crate) fn new(
        cfg: Config,
        features: u64,
        mode: DataMode,
        state: DeviceState,
        guard: Arc<StateGuard>,
        gate: Arc<Gate>,
        stopper: Arc<Stopper>,
    ) -> Self {
        Device {
            cfg,
            features,
            mode,
            state: Mutex::new(state),
            guard,
            gate,
            stopper,
            inactive: Mutex::new(None),
            held_since: Mutex::new(None),
        }
    }

    /// Records the live block device.
    pub(crate) fn went_live(&self, live: &Live) -> Result<(), ControlError> {
        self.edit_state(|s| {
            s.state = "live".into();
            s.dev_id = Some(live.dev_id);
            s.bdev = Some(live.bdev.clone());
            s.mode = Some(live.mode);
        })
    }

    fn edit_state(&self, f: impl FnOnce(&mut DeviceState)) -> Result<(), ControlError> {
        let mut s = lock(&self.state);
        f(&mut s);
        self.guard.update(&s)
    }

    /// Answers one control request line with one JSON value: the verb's
    /// answer, or `{"error": ...}` (logged).
    pub(crate) fn answer(&self, line: &str) -> Value {
        let res = Request::parse(line).and_then(|req| match req {
            Request::Status => Ok(serde_json::to_value(self.status()).expect("plain data")),
            Request::Remove => {
                std::thread::spawn({
                    let s = self.stopper.clone();
                    move || s.stop()
                });
                Ok(json!({ "ok": true }))
            }
            Request::Reload { table } => self.reload(&table),
            Request::Clear => self.clear(),
            Request::Suspend { nolockfs, noflush } => self.suspend(!nolockfs, !noflush),
            Request::Resume => self.resume(),
            Request::Message { sector, argv } => self.message(sector, argv),
        });
        res.unwrap_or_else(|e| {
            tracing::warn!("control request failed: {e}");
            json!({ "error": e })
        })
    }

    /// dmsetup load: the table is parsed, checked against the real backing
    /// devices with `create`'s rules, and its devices opened, beside the
    /// live table. A bad table changes nothing.
    fn reload(&self, text: &str) -> Result<Value, String> {
        let name = &self.cfg.name;
        let table = Table::parse(text)
            .and_then(|t| t.check_block_size(self.cfg.block_size).map(|()| t))
            .map_err(|e| match e.text.is_empty() {
                true => format!("{name}: bad table: {e}"),
                false => format!("{name}: bad table: {e}: {}", e.text),
            })?;
        let (now, next) = (self.size_bytes(), table.total_bytes());
        if now != next && self.features & u64::from(sys::UBLK_F_UPDATE_SIZE) == 0 {
            return Err(format!(
                "{name}: the new table is {next} bytes and the device {now}: changing the size of a live device needs UBLK_U_CMD_UPDATE_SIZE (Linux 6.16+), which this kernel lacks; nothing was loaded"
            ));
        }
        let cfg = Config {
            table,
            recover: false,
            ..self.cfg.clone()
        };
        // Held until the loaded table is recorded: its writable ranges are
        // claimed from then on.
        let claims = crate::control::claims::lock().map_err(|e| e.to_string())?;
        let probed = probe(&cfg, None).map_err(|e| e.to_string())?;
        let mut loaded = open_data_path(&cfg, probed, self.mode != DataMode::ZeroCopy)
            .map_err(|e| e.to_string())?;
        loaded
            .core
            .fit_mappings(self.mode, self.stopper.ctrl.dev_info().flags);
        let text = cfg.table.to_string();
        let mode = loaded.mode;
        *lock(&self.inactive) = Some(Arc::new(loaded));
        self.edit_state(|s| s.inactive_table = Some(text))
            .map_err(|e| e.to_string())?;
        drop(claims);
        tracing::info!(
            size_bytes = next,
            mode = mode.name(),
            "inactive table loaded"
        );
        Ok(json!({ "ok": true, "size_bytes": next, "mode": mode }))
    }

    /// dmsetup message: the target holding `sector` answers, on the
    /// first queue's ring (it may do I/O), or refuses with its message.
    fn message(&self, sector: u64, argv: Vec<String>) -> Result<Value, String> {
        let name = &self.cfg.name;
        if argv.is_empty() {
            return Err(format!("{name}: Empty message received."));
        }
        let kind = JobKind::Message { sector, argv };
        match self.gate.run_job(kind) {
            Ok(answer) => Ok(json!({ "ok": true, "answer": answer })),
            Err(e) => Err(format!("{name}: message refused: {e}")),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.gate.active().core.table().total_bytes()
    }

    /// dmsetup clear: drops the inactive table (and closes its files).
    fn clear(&self) -> Result<Value, String> {
        let had = lock(&self.inactive).take().is_some();
        self.edit_state(|s| s.inactive_table = None)
            .map_err(|e| e.to_string())?;
        Ok(json!({ "ok": true, "cleared": had }))
    }

    /// dmsetup suspend: freeze the file system (unless `!lockfs`), hold
    /// new requests, let the ones in flight finish, flush the backing
    /// devices (unless `!flush`). Suspending a suspended device does
    /// nothing.
    fn suspend(&self, lockfs: bool, flush: bool) -> Result<Value, String> {
        let name = &self.cfg.name;
        if self.gate.is_held() {
            return Ok(json!({ "ok": true, "already": true }));
        }
        if lockfs {
            let bdev = lock(&self.state).bdev.clone();
            if let Some(bdev) = bdev {
                match lockfs::freeze(bdev.as_ref()) {
                    Ok(Some(f)) => self.gate.set_frozen(f),
                    Ok(None) => {}
                    Err(e) => return Err(format!("{name}: {e}; the device was not suspended")),
                }
            }
        }
        let t0 = Instant::now();
        // Targets stop their background work before I/O is held, and see
        // the drained device after (dm's presuspend and postsuspend).
        self.gate.run_hook(Hook::Presuspend);
        self.gate.hold();
        *lock(&self.held_since) = Some(t0);
        self.gate.drain();
        self.gate.run_hook(Hook::Postsuspend);
        let drained = t0.elapsed();
        let mut flushed = Ok(());
        if flush {
            flushed = self.gate.active().sync();
        }
        self.edit_state(|s| s.suspended = true)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            drain_us = drained.as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "suspended"
        );
        match flushed {
            Ok(()) => Ok(json!({ "ok": true, "drain_us": drained.as_micros() as u64 })),
            Err((p, e)) => Err(format!(
                "{name}: suspended, but flushing {} failed: {e}",
                p.display()
            )),
        }
    }

    /// dmsetup resume: swaps in the inactive table if one is loaded
    /// (suspending first, as dm does, if the device runs), resizes the
    /// device to it, lets the held requests run, thaws.
    fn resume(&self) -> Result<Value, String> {
        let name = &self.cfg.name;
        let next = lock(&self.inactive).take();
        if next.is_some() && !self.gate.is_held() {
            if let Err(e) = self.suspend(true, true) {
                *lock(&self.inactive) = next;
                return Err(e);
            }
        }
        let mut swapped = None;
        if let Some(next) = next {
            let (was, now) = (self.size_bytes(), next.core.table().total_bytes());
            // The old table's targets say their last (dm's dtr of the
            // table a resume replaces), on the rings that still have its
            // files.
            self.gate.run_hook(Hook::Stop);
            let old = self.gate.swap(next.clone());
            if was != now {
                ctrl_ring();
                if let Err(e) = self.stopper.ctrl.update_size(now) {
                    // Never half-applied: the old table goes back and stays
                    // loaded as the inactive one.
                    self.gate.swap(old);
                    *lock(&self.inactive) = Some(next);
                    return Err(format!(
                        "{name}: UPDATE_SIZE to {now} bytes failed ({e:?}); the old table stays active and the device suspended"
                    ));
                }
                tracing::info!(from = was, to = now, "device resized");
            }
            self.edit_state(|s| {
                s.table = next.core.table().to_string();
                s.size_bytes = now;
                s.devices = next.records.clone();
                s.inactive_table = None;
                if s.mode != Some(DataMode::ZeroCopy) {
                    s.mode = Some(next.mode);
                }
            })
            .map_err(|e| e.to_string())?;
            swapped = Some(now);
            drop(old);
        }
        let held = lock(&self.held_since).take().map(|t| t.elapsed());
        self.gate.release();
        self.gate.thaw();
        self.gate.run_hook(Hook::Resume);
        self.edit_state(|s| s.suspended = false)
            .map_err(|e| e.to_string())?;
        let held_us = held.map(|d| d.as_micros() as u64);
        tracing::info!(?held_us, swapped = swapped.is_some(), "resumed");
        Ok(
            json!({ "ok": true, "swapped": swapped.is_some(), "size_bytes": swapped, "held_us": held_us }),
        )
    }

    fn status(&self) -> Status {
        let active = self.gate.active();
        let state = lock(&self.state).clone();
        let (table, stats) = (active.core.table(), active.core.stats());
        let dev_errors: Vec<u64> = stats.devices.iter().map(|c| c.snapshot().errors).collect();
        Status {
            dm_status: table.status_lines(&dev_errors),
            segments: table
                .segments()
                .iter()
                .zip(&stats.segments)
                .map(|(s, c)| SegmentStatus {
                    line: s.line,
                    start: s.start,
                    len: s.len,
                    target: s.target.name(),
                    stats: c.snapshot(),
                })
                .collect(),
            devices: table
                .devices()
                .iter()
                .zip(&stats.devices)
                .enumerate()
                .map(|(i, (p, c))| {
                    let stats = c.snapshot();
                    let access = active.core.access(i);
                    DeviceStatus {
                        path: p.display().to_string(),
                        direct: access == "o_direct",
                        access,
                        health: if stats.errors == 0 { "A" } else { "D" },
                        stats,
                        nbd: active.core.export(i).map(|e| e.status()),
                    }
                })
                .collect(),
            dax: active.dax.clone(),
            state,
        }
    }
}

#[derive(Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub state: DeviceState,
    /// Each segment's status line as `dmsetup status` prints it.
    pub dm_status: Vec<String>,
    pub segments: Vec<SegmentStatus>,
    pub devices: Vec<DeviceStatus>,
    pub dax: DaxDecision,
}

#[derive(Serialize)]
pub struct SegmentStatus {
    pub line: usize,
    pub start: u64,
    pub len: u64,
    pub target: &'static str,
    pub stats: Snapshot,
}

#[derive(Serialize)]
pub struct DeviceStatus {
    pub path: String,
    /// Opened with O_DIRECT (io_uring path).
    pub direct: bool,
    /// `o_direct`, `buffered`, `mapped`, `dax` or `nbd`.
    pub access: &'static str,
    /// dm-stripe's A (alive) / D (dead: has seen errors).
    pub health: &'static str,
    pub stats: Snapshot,
    /// An NBD export's connections and counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd: Option<ExportStatus>,
}

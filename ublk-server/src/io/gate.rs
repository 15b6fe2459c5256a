//! Suspend and resume: the gate every request passes on its way to the
//! request handler, and the active table behind it.
//!
//! The control side [`Gate::hold`]s new requests (they wait in their queue
//! task; nothing is failed), [`Gate::drain`]s the ones in flight,
//! [`Gate::swap`]s in another table, and [`Gate::release`]s. The queue side
//! ([`QueueGate`]) counts each request in and out and picks up a new table
//! on its own thread: the backing files are fixed files of each queue's
//! ring, and a ring's file table is updated by the thread that owns it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;

use crate::io::loaded::{Loaded, STOPPING};
use crate::io::lockfs::Frozen;
use crate::services::jobs::{JobKind, Jobs, JOB_TIMEOUT};

/// Fixed-file slots on every queue ring: 0 is /dev/ublkcN (libublk's),
/// then `/dev/zero` and the bytes file, then the backing devices. All
/// [`FIXED_SLOTS`] are registered (unused ones empty) so that a new table
/// with more devices fits.
pub(crate) const ZERO_SLOT: u32 = 1;
pub(crate) const BYTES_SLOT: u32 = 2;
pub(crate) const FIRST_BACKING_SLOT: u32 = 3;
pub(crate) const FIXED_SLOTS: usize = 32;

/// Shared by the control thread and every queue.
pub(crate) struct Gate {
    held: AtomicBool,
    /// Requests between [`QueueGate::enter`] and the drop of their
    /// [`Pass`], per queue (no shared cache line on the hot path).
    inflight: Vec<AtomicUsize>,
    /// Bumped by every [`Gate::swap`]; queues compare it per request.
    generation: AtomicU64,
    active: Mutex<Arc<Loaded>>,
    /// One eventfd per queue, polled on that queue's ring: writing it
    /// wakes a queue thread that sleeps in `io_uring_enter`.
    doorbells: Vec<OwnedFd>,
    /// The file system a suspend froze, thawed by resume or a stop.
    frozen: Mutex<Option<Frozen>>,
    /// Targets' work outside requests, run by the first queue.
    jobs: Jobs,
}

impl Gate {
    /// A gate for `rings` queue rings (one per queue and io thread).
    pub(crate) fn new(active: Loaded, rings: usize) -> std::io::Result<Gate> {
        let doorbells: Vec<OwnedFd> = (0..rings)
            .map(|_| {
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
                )
                .map_err(std::io::Error::from)
            })
            .collect::<Result<_, _>>()?;
        if let Some(fd) = doorbells.first() {
            crate::services::jobs::set_first_doorbell(fd.as_raw_fd());
        }
        Ok(Gate {
            held: AtomicBool::new(false),
            inflight: (0..rings).map(|_| AtomicUsize::new(0)).collect(),
            generation: AtomicU64::new(0),
            active: Mutex::new(Arc::new(active)),
            doorbells,
            frozen: Mutex::new(None),
            jobs: Jobs::default(),
        })
    }

    /// Runs a job on the first queue's ring against the active table and
    /// returns its answer. Held requests stay held meanwhile.
    pub(crate) fn run_job(&self, kind: JobKind) -> Result<String, String> {
        if STOPPING.load(SeqCst) {
            return Err("the device is being removed".into());
        }
        let rx = self.jobs.post(kind);
        crate::services::jobs::ring_first();
        rx.recv_timeout(JOB_TIMEOUT).unwrap_or_else(|_| {
            Err(format!(
                "no answer from the device's first queue within {} s",
                JOB_TIMEOUT.as_secs()
            ))
        })
    }

    /// Runs a hook job when the active table has targets with hooks;
    /// logs a failure (a hook cannot undo a suspend or a remove).
    pub(crate) fn run_hook(&self, hook: crate::services::jobs::Hook) {
        if !self.active().core.table().has_serving_targets() {
            return;
        }
        if let Err(e) = self.run_job(JobKind::Hook(hook)) {
            tracing::error!("{hook:?} hook failed: {e}");
        }
    }

    /// The table being served.
    pub(crate) fn active(&self) -> Arc<Loaded> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held.load(SeqCst)
    }

    /// New requests wait from now on. Returns false if they already did.
    pub(crate) fn hold(&self) -> bool {
        !self.held.swap(true, SeqCst)
    }

    /// Waits until no request is in flight (all of them wait at the gate
    /// or have completed). Only meaningful while held.
    pub(crate) fn drain(&self) {
        let t0 = Instant::now();
        let mut pause = Duration::from_micros(50);
        let mut warned = false;
        while self.inflight.iter().any(|n| n.load(SeqCst) != 0) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
            if !warned && t0.elapsed() > Duration::from_secs(10) {
                tracing::warn!("suspend: still waiting for the requests in flight");
                warned = true;
            }
        }
    }

    /// Makes `next` the table every request is served by; returns the old
    /// one. Only while held and drained: no request uses the old one.
    pub(crate) fn swap(&self, next: Arc<Loaded>) -> Arc<Loaded> {
        let old = std::mem::replace(
            &mut *self.active.lock().unwrap_or_else(|p| p.into_inner()),
            next,
        );
        self.generation.fetch_add(1, SeqCst);
        // Queues take the new table's files now, not at their next request:
        // the old files close once every ring has let go of them.
        self.ring_all();
        old
    }

    /// Lets the waiting requests run, on whatever table is active now.
    pub(crate) fn release(&self) {
        self.held.store(false, SeqCst);
        self.ring_all();
    }

    pub(crate) fn set_frozen(&self, f: Frozen) {
        *self.frozen.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Thaws what a suspend froze (dropping [`Frozen`] thaws).
    pub(crate) fn thaw(&self) {
        self.frozen.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Wakes every queue thread (also used to let them see a stop).
    pub(crate) fn ring_all(&self) {
        for fd in &self.doorbells {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// One queue's side of the gate; lives on the queue thread.
pub(crate) struct QueueGate<'a> {
    gate: &'a Gate,
    qid: usize,
    seen: Cell<u64>,
    // Rc around the Arc: each request clones it without an atomic on a
    // cache line every queue shares.
    #[allow(clippy::redundant_allocation)]
    active: RefCell<Rc<Arc<Loaded>>>,
    /// Wakes this queue's waiting requests (same thread).
    opened: Event,
    /// Wakes this queue's jobs task (the first queue's only).
    jobs_posted: Event,
}

/// A request's permission to run, with the table it runs on; counts it in
/// flight until dropped.
pub(crate) struct Pass<'a> {
    inflight: &'a AtomicUsize,
    #[allow(clippy::redundant_allocation)]
    pub loaded: Rc<Arc<Loaded>>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, SeqCst);
    }
}

impl<'a> QueueGate<'a> {
    pub(crate) fn new(gate: &'a Gate, slot: usize) -> Self {
        QueueGate {
            gate,
            qid: slot,
            seen: Cell::new(gate.generation.load(SeqCst)),
            active: RefCell::new(Rc::new(gate.active())),
            opened: Event::new(),
            jobs_posted: Event::new(),
        }
    }

    /// The first queue's jobs task: runs every posted job (a message, a
    /// hook) and every background job a target spawned, side by side and
    /// beside the requests, each on the table active when it started.
    /// Ends with the stop.
    pub(crate) async fn serve_jobs(&self, q: &libublk::io::UblkQueue<'_>) {
        let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
        while !STOPPING.load(SeqCst) {
            let mut listener = Box::pin(self.jobs_posted.listen());
            for job in self.gate.jobs.take() {
                tasks.push(Box::pin(async move {
                    self.refresh();
                    let loaded = self.active.borrow().clone();
                    let r = loaded.core.run_job(q, &job.kind).await;
                    job.answer(r);
                }));
            }
            for job in crate::services::jobs::take_spawned() {
                self.refresh();
                let (loaded, generation) = (self.active.borrow().clone(), self.seen.get());
                tasks.push(Box::pin(async move {
                    let current = || self.seen.get() == generation;
                    loaded.core.run_background(q, job, &current).await;
                }));
            }
            // Until new jobs come: every task runs as far as it can.
            std::future::poll_fn(|cx| {
                tasks.retain_mut(|t| t.as_mut().poll(cx).is_pending());
                listener.as_mut().poll(cx)
            })
            .await;
        }
        for job in self.gate.jobs.take() {
            job.answer(Err("the device is being removed".into()));
        }
    }

    /// Waits while the device is suspended, then counts the request in.
    pub(crate) async fn enter(&self) -> Pass<'a> {
        let inflight = &self.gate.inflight[self.qid];
        loop {
            // Counted in before looking: `hold` then `drain` on the control
            // side sees either this count or this request waiting.
            inflight.fetch_add(1, SeqCst);
            if !self.gate.held.load(SeqCst) {
                break;
            }
            inflight.fetch_sub(1, SeqCst);
            let listener = self.opened.listen();
            if self.gate.held.load(SeqCst) {
                listener.await;
            }
        }
        self.refresh();
        Pass {
            inflight,
            loaded: self.active.borrow().clone(),
        }
    }

    /// Picks up a swapped table: its backing files replace the old ones in
    /// this ring's fixed-file table.
    fn refresh(&self) {
        let generation = self.gate.generation.load(SeqCst);
        if generation == self.seen.get() {
            return;
        }
        let next = self.gate.active();
        let mut fds: Vec<RawFd> = next.fixed_fds();
        fds.resize(FIXED_SLOTS - FIRST_BACKING_SLOT as usize, -1);
        let r = libublk::io::with_task_io_ring(|ring| {
            ring.submitter()
                .register_files_update(FIRST_BACKING_SLOT, &fds)
        });
        if let Err(e) = r {
            // Nothing runs on a ring with the wrong files: every request
            // of this queue fails until the files are in place.
            tracing::error!(
                qid = self.qid,
                "updating the ring's backing files failed: {e}"
            );
            return;
        }
        *self.active.borrow_mut() = Rc::new(next);
        self.seen.set(generation);
    }

    /// Whether the queue's files are those of the active table (false
    /// only after a failed file update).
    pub(crate) fn current(&self) -> bool {
        self.seen.get() == self.gate.generation.load(SeqCst)
    }

    /// The queue's doorbell task: sleeps on the eventfd in the ring, and on
    /// each ring takes a swapped table and wakes the waiting requests.
    /// Ends when the server stops.
    pub(crate) async fn doorbell(&self) {
        let fd = self.gate.doorbells[self.qid].as_raw_fd();
        while !STOPPING.load(SeqCst) {
            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
            let r = ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
                .await
                .unwrap_or(-libc::EIO);
            let mut v = [0u8; 8];
            let _ = rustix::io::read(&self.gate.doorbells[self.qid], &mut v);
            if r < 0 && r != -libc::EINTR {
                tracing::error!(qid = self.qid, "doorbell poll failed: {r}");
                break;
            }
            self.refresh();
            if !self.gate.held.load(SeqCst) {
                self.opened.notify(usize::MAX);
            }
            if self.qid == 0 {
                self.jobs_posted.notify(usize::MAX);
            }
        }
        self.opened.notify(usize::MAX);
        self.jobs_posted.notify(usize::MAX);
    }
}

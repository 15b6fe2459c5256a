//! One queue thread in `UBLK_F_BATCH_IO` mode (Linux 7.0+, copy mode):
//! the kernel hands over fetched tags in batches through multishot
//! `FETCH_IO_CMDS` and takes results back in batches (`COMMIT_IO_CMDS`),
//! instead of one `COMMIT_AND_FETCH_REQ` round trip per request.
//!
//! The request path is the per-tag one's: a task per tag serves each
//! request it is given through the gate and the active table's handler
//! ([`crate::io::queue::serve`]); the loop below delivers fetched tags to
//! their tasks and commits the results every task produced since the last
//! turn, all at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use libublk::io::{
    UblkBatchBuffers, UblkBatchCompletion, UblkBatchConfig, UblkBatchQueue, UblkDev, UblkQueue,
};
use libublk::uring_async::ublk_wake_task;

use crate::backend::buffer::Buffer;
use crate::io::features::DataMode;
use crate::io::gate::{Gate, QueueGate};
use crate::io::loaded::{FORCE_EXIT, STOPPING};
use crate::io::queue::{init_ring, register_bufs, serve, RingId};

/// Fetched tags waiting for their task, and the tasks' results waiting
/// for the next commit.
struct Inbox {
    ready: Vec<Cell<bool>>,
    wakers: Vec<Cell<Option<Waker>>>,
    busy: Cell<usize>,
    stop: Cell<bool>,
    done: RefCell<Vec<UblkBatchCompletion>>,
}

impl Inbox {
    fn deliver(&self, tag: u16) {
        let t = usize::from(tag);
        self.ready[t].set(true);
        self.busy.set(self.busy.get() + 1);
        if let Some(w) = self.wakers[t].take() {
            w.wake();
        }
    }

    /// The next request for `tag`; `false` once the queue stops.
    async fn next(&self, tag: u16) -> bool {
        let t = usize::from(tag);
        std::future::poll_fn(|cx| {
            if self.ready[t].replace(false) {
                return Poll::Ready(true);
            }
            if self.stop.get() {
                return Poll::Ready(false);
            }
            self.wakers[t].set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn finish(&self, tag: u16, res: i32) {
        self.done
            .borrow_mut()
            .push(UblkBatchCompletion::new(tag, res));
        self.busy.set(self.busy.get() - 1);
    }

    fn stop_all(&self) {
        self.stop.set(true);
        for w in &self.wakers {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }
}

pub(crate) fn run(ring: RingId, dev: &UblkDev, gate: &Arc<Gate>) {
    let qid = ring.qid;
    init_ring(dev, DataMode::Batch);
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(qid, "queue setup failed: {e:?}");
            dev.notify_buffer_registration_complete(true);
            return;
        }
    };
    let bufs = dev.alloc_queue_io_bufs();
    if let Err(e) = register_bufs(&bufs) {
        tracing::error!(qid, "registering buffers failed: {e}");
        dev.notify_buffer_registration_complete(true);
        return;
    }
    // The batch queue owns the buffers; they do not move.
    let bases: Vec<*mut u8> = bufs.iter().map(|b| b.as_mut_ptr()).collect();
    let config = UblkBatchConfig::new();
    // Its setup tells start_dev when the queue is ready (or failed).
    let mut batch = match UblkBatchQueue::new(&q, UblkBatchBuffers::IoBufs(bufs), config) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(qid, "batch queue setup failed: {e:?}");
            return;
        }
    };
    let depth = usize::from(dev.dev_info.queue_depth);
    let inbox = Rc::new(Inbox {
        ready: (0..depth).map(|_| Cell::new(false)).collect(),
        wakers: (0..depth).map(|_| Cell::new(None)).collect(),
        busy: Cell::new(0),
        stop: Cell::new(false),
        done: RefCell::new(Vec::with_capacity(depth)),
    });
    let qgate = Rc::new(QueueGate::new(gate, ring.slot));
    let exe = smol::LocalExecutor::new();
    let _doorbell = exe.spawn({
        let qgate = qgate.clone();
        async move { qgate.doorbell().await }
    });
    let q = &q;
    // Targets' jobs run on the first ring.
    let _jobs = (ring.slot == 0).then(|| {
        let qgate = qgate.clone();
        exe.spawn(async move { qgate.serve_jobs(q).await })
    });
    let tasks: Vec<_> = (0..depth as u16)
        .map(|tag| {
            let (inbox, qgate) = (inbox.clone(), qgate.clone());
            let buffer = Buffer::User {
                base: bases[usize::from(tag)],
                index: tag,
            };
            exe.spawn(async move {
                while inbox.next(tag).await {
                    let res = serve(q, tag, DataMode::Batch, buffer, None, &qgate).await;
                    inbox.finish(tag, res);
                }
            })
        })
        .collect();

    event_loop(qid, q, &mut batch, &inbox, &exe, depth);
    inbox.stop_all();
    while exe.try_tick() {}
    drop(tasks);
}

/// The batch queue's event loop: reap completions (the batch transport's
/// fetched tags go to their tasks, the rest wake our operations), run the
/// tasks, commit their results in one batch, until stopped and drained.
fn event_loop(
    qid: u16,
    q: &UblkQueue<'_>,
    batch: &mut UblkBatchQueue<'_, '_>,
    inbox: &Inbox,
    exe: &smol::LocalExecutor<'_>,
    depth: usize,
) {
    let mut pending: Vec<UblkBatchCompletion> = Vec::with_capacity(depth);
    let mut stopping_since: Option<Instant> = None;
    while exe.try_tick() {}
    loop {
        let mut failed = None;
        let polled = q.flush_and_wake_io_tasks(
            |user_data, cqe, _| match batch.handle_cqe(cqe, |_, tags| {
                for &t in tags {
                    inbox.deliver(t);
                }
                Ok(())
            }) {
                Ok(true) => {}
                // Not the batch transport's: one of our operations.
                Ok(false) => ublk_wake_task(user_data, cqe),
                Err(e) => failed = Some(e),
            },
            1,
        );
        while exe.try_tick() {}
        pending.append(&mut inbox.done.borrow_mut());
        if !pending.is_empty() {
            match batch.try_submit_completions(&pending) {
                Ok(true) => pending.clear(),
                Ok(false) => {} // every commit slot busy: next turn
                Err(e) => {
                    tracing::error!(qid, "committing results failed: {e:?}");
                    break;
                }
            }
        }
        if let Some(e) = failed {
            tracing::error!(qid, "batch queue: {e:?}");
        }
        let down = polled.is_err() || STOPPING.load(Ordering::Relaxed);
        if down && inbox.busy.get() == 0 && pending.is_empty() {
            match batch.try_begin_shutdown() {
                Ok(true) if batch.is_shutdown_complete() => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(qid, "batch queue shutdown: {e:?}");
                    break;
                }
            }
        }
        if down {
            let t0 = *stopping_since.get_or_insert_with(Instant::now);
            if t0.elapsed() > Duration::from_secs(10) {
                tracing::warn!(qid, "giving up on stuck I/O after stop");
                break;
            }
        }
        if FORCE_EXIT.load(Ordering::Relaxed) {
            break;
        }
    }
}

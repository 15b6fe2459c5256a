//! Background jobs' controls (resync, writeback): a target starts a job
//! with [`Background::start`] (usually from its `resume` hook, so that it
//! restarts after a recovery from what is on its devices), the job calls
//! [`Background::checkpoint`] between units of work, and the target's
//! hooks pause it for a suspend and stop it before the table goes away.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use super::{IoCtx, IoFuture, Job};

/// How often a paused job, or a hook waiting for a job, looks again.
const POLL: Duration = Duration::from_millis(1);

/// The controls one target's background jobs share with it.
#[derive(Debug, Default)]
pub struct Background {
    paused: AtomicBool,
    stopped: AtomicBool,
    running: AtomicUsize,
    /// Whether any job parked at a checkpoint is paused right now.
    parked: AtomicUsize,
}

/// A job's [`Background::checkpoint`] answer: stop now.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

/// Counts a job as running until it ends, however it ends.
struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Background {
    pub fn new() -> Arc<Background> {
        Arc::new(Background::default())
    }

    /// Spawns `job` through `ctx`, counted as running until it returns.
    /// A stopped `Background` starts nothing until [`Background::restart`].
    pub fn start(
        self: &Arc<Self>,
        ctx: &dyn IoCtx,
        job: impl for<'a> FnOnce(&'a dyn IoCtx) -> IoFuture<'a> + Send + 'static,
    ) {
        if self.stopped.load(SeqCst) {
            return;
        }
        self.running.fetch_add(1, SeqCst);
        let guard = Running(self.clone());
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let _guard = guard;
                job(ctx).await
            })
        });
        ctx.spawn(job);
    }

    /// Between units of work: waits while paused; `Err(Stopped)` once the
    /// job must end.
    pub async fn checkpoint(&self, ctx: &dyn IoCtx) -> Result<(), Stopped> {
        if self.paused.load(SeqCst) && !self.stopped.load(SeqCst) {
            self.parked.fetch_add(1, SeqCst);
            while self.paused.load(SeqCst) && !self.stopped.load(SeqCst) {
                let _ = ctx.sleep(POLL).await;
            }
            self.parked.fetch_sub(1, SeqCst);
        }
        match self.stopped.load(SeqCst) {
            true => Err(Stopped),
            false => Ok(()),
        }
    }

    pub fn running(&self) -> usize {
        self.running.load(SeqCst)
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(SeqCst)
    }

    /// For `presuspend`: jobs park at their next checkpoint; returns once
    /// every running job has parked or ended.
    pub async fn pause(&self, ctx: &dyn IoCtx) {
        self.paused.store(true, SeqCst);
        while self.parked.load(SeqCst) < self.running.load(SeqCst) {
            let _ = ctx.sleep(POLL).await;
        }
    }

    /// For `resume`: parked jobs go on.
    pub fn unpause(&self) {
        self.paused.store(false, SeqCst);
    }

    /// For `stop` (and `presuspend` of a target that restarts its jobs on
    /// resume): every job ends at its next checkpoint; returns once none
    /// runs.
    pub async fn stop(&self, ctx: &dyn IoCtx) {
        self.stopped.store(true, SeqCst);
        while self.running.load(SeqCst) > 0 {
            let _ = ctx.sleep(POLL).await;
        }
    }

    /// Lets [`Background::start`] start jobs again after a stop.
    pub fn restart(&self) {
        self.stopped.store(false, SeqCst);
        self.paused.store(false, SeqCst);
    }
}

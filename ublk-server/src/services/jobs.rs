//! Work a target does outside any request — a message's I/O (`dmsetup
//! message`), its suspend/resume hooks, its last words when the device
//! goes away — run on the first queue's ring, beside the requests, with the
//! same I/O context a request gets (without a request buffer).
//!
//! The control side posts a [`Job`] to the device's [`Jobs`] and rings the
//! first queue's doorbell; that queue's jobs task runs it on the active
//! table and sends the answer back.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

pub(crate) use rdm_targets::Job as BackgroundJob;

/// The hooks dm calls on a table's targets (`presuspend`, `postsuspend`,
/// `resume`, and `dtr`'s I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Presuspend,
    Postsuspend,
    Resume,
    /// The device (or this table) is going away.
    Stop,
}

#[derive(Debug, Clone)]
pub(crate) enum JobKind {
    /// `dmsetup message <sector> <argv…>`.
    Message { sector: u64, argv: Vec<String> },
    /// One hook on every target of the table that has them.
    Hook(Hook),
}

pub(crate) struct Job {
    pub kind: JobKind,
    reply: mpsc::Sender<Result<String, String>>,
}

impl Job {
    pub(crate) fn answer(self, r: Result<String, String>) {
        // The poster may have given up waiting: nothing to tell then.
        let _ = self.reply.send(r);
    }
}

/// A device's posted jobs, taken by its first queue.
#[derive(Default)]
pub(crate) struct Jobs {
    posted: Mutex<Vec<Job>>,
}

impl Jobs {
    /// Posts `kind`; the caller rings the first queue and waits on the
    /// receiver.
    pub(crate) fn post(&self, kind: JobKind) -> mpsc::Receiver<Result<String, String>> {
        let (reply, rx) = mpsc::channel();
        self.lock().push(Job { kind, reply });
        rx
    }

    pub(crate) fn take(&self) -> Vec<Job> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.posted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Background jobs targets spawned (from any queue thread), waiting for
/// the first queue to start them. One device per server process: one list.
static SPAWNED: Mutex<Vec<BackgroundJob>> = Mutex::new(Vec::new());
/// The first queue's doorbell (-1 before a device has one).
static FIRST_DOORBELL: AtomicI32 = AtomicI32::new(-1);

pub(crate) fn set_first_doorbell(fd: RawFd) {
    FIRST_DOORBELL.store(fd, SeqCst);
}

/// Rings the first queue's doorbell: it takes posted and spawned jobs.
pub(crate) fn ring_first() {
    let fd = FIRST_DOORBELL.load(SeqCst);
    if fd >= 0 {
        // SAFETY: the gate keeps its doorbells open while it serves.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }
}

/// A target's `IoCtx::spawn`: queued for the first queue.
pub(crate) fn spawn(job: BackgroundJob) {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner()).push(job);
    ring_first();
}

pub(crate) fn take_spawned() -> Vec<BackgroundJob> {
    std::mem::take(&mut *SPAWNED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// How long the control side waits for a job's answer.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel's text for an errno a hook returned.
pub(crate) fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(-e).to_string()
}

//! The one thing the I/O core needs from an io_uring: submit an SQE and
//! await its result. In the daemon that is the queue's own ring (shared with
//! the ublk commands, through libublk); in host tests and benchmarks it is a
//! plain ring driven by [`HostRing::block_on`].

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{squeue, IoUring};
use slab::Slab;

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread's ring slot `n` (a queue thread's, at its start).
pub(crate) fn set_slot(n: usize) {
    SLOT.with(|s| s.set(n));
}

/// The slot of this thread's ring (0 outside queue threads).
pub(crate) fn slot() -> usize {
    SLOT.with(|s| s.get())
}

pub trait Ring {
    /// Queues one SQE; the future resolves to its CQE's `res`.
    fn submit(&self, sqe: squeue::Entry) -> impl Future<Output = i32>;

    /// Which of the device's rings this is (one per queue and io thread):
    /// per-ring state, such as an NBD export's connection, is indexed by it.
    fn slot(&self) -> usize;
}

impl Ring for libublk::io::UblkQueue<'_> {
    fn submit(&self, sqe: squeue::Entry) -> impl Future<Output = i32> {
        // libublk tags it as target I/O and owns user_data.
        self.ublk_submit_sqe(sqe)
    }

    fn slot(&self) -> usize {
        slot()
    }
}

/// Moves `len` bytes with as many SQEs as it takes: `sqe(done)` builds the
/// SQE for the rest, from byte `done` on. A short transfer is resubmitted
/// for the rest, EAGAIN/EINTR are retried (8 times at most), and a transfer
/// of nothing (end of file) is EIO: never a silent partial success.
pub async fn transfer_all<R: Ring>(
    ring: &R,
    len: u64,
    mut sqe: impl FnMut(u64) -> squeue::Entry,
) -> Result<(), i32> {
    let mut done = 0u64;
    let mut retries = 0;
    while done < len {
        match ring.submit(sqe(done)).await {
            r if r > 0 => done += r as u64,
            r if (r == -libc::EAGAIN || r == -libc::EINTR) && retries < 8 => retries += 1,
            0 => return Err(-libc::EIO),
            r => return Err(r),
        }
    }
    Ok(())
}

/// The first error of a set of piece results, or success.
pub fn first_error(results: Vec<Result<(), i32>>) -> Result<(), i32> {
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

/// Polls all futures concurrently and returns their outputs in order: every
/// piece of a request is in flight at once, none waits for another.
pub async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("all ready")).collect()
}

/// A self-contained ring for host tests and benchmarks, no ublk involved,
/// built the way libublk drives a queue ring: each operation a slot with
/// its waker, completions reaped in batches and wake exactly their task.
pub struct HostRing {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<Op>>,
}

struct Op {
    result: Option<i32>,
    waker: Option<Waker>,
}

impl HostRing {
    pub fn new(entries: u32) -> io::Result<Rc<Self>> {
        Ok(Rc::new(HostRing {
            ring: RefCell::new(IoUring::new(entries)?),
            ops: RefCell::new(Slab::with_capacity(entries as usize)),
        }))
    }

    /// Registers files as fixed files 0..n, the way the daemon's queue
    /// rings see the backing files.
    pub fn register_files(&self, fds: &[RawFd]) -> io::Result<()> {
        self.ring.borrow().submitter().register_files(fds)
    }

    /// Registers buffers as fixed buffers 0..n.
    ///
    /// # Safety
    /// The buffers must stay valid and unmoved while the ring uses them.
    pub unsafe fn register_buffers(&self, bufs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.ring.borrow().submitter().register_buffers(bufs) }
    }

    /// Submits what is queued, waits for one completion, and wakes the
    /// task of every completion there is.
    fn wait_and_reap(&self) {
        let mut ring = self.ring.borrow_mut();
        ring.submit_and_wait(1).expect("io_uring_enter");
        let mut ops = self.ops.borrow_mut();
        for cqe in ring.completion() {
            if let Some(op) = ops.get_mut(cqe.user_data() as usize) {
                op.result = Some(cqe.result());
                if let Some(w) = op.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Runs a future to completion, waiting on the ring whenever it stalls.
    /// The future is polled again only when woken, as an executor does: a
    /// lost wakeup hangs here instead of going unnoticed.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let flag = std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if flag.0.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            self.wait_and_reap();
        }
    }

    /// Runs `exe`'s tasks (one per in-flight request, as a queue's tags)
    /// until `done`, as the daemon's queue loop does: run what is ready,
    /// then submit and wait once.
    pub fn run(&self, exe: &smol::LocalExecutor<'_>, done: impl Fn() -> bool) {
        loop {
            while exe.try_tick() {}
            if done() {
                return;
            }
            self.wait_and_reap();
        }
    }
}

impl Ring for Rc<HostRing> {
    fn submit(&self, sqe: squeue::Entry) -> impl Future<Output = i32> {
        let key = self.ops.borrow_mut().insert(Op {
            result: None,
            waker: None,
        });
        let sqe = sqe.user_data(key as u64);
        {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the SQE's buffers belong to the caller's request, which
            // stays alive until this future resolves.
            while unsafe { ring.submission().push(&sqe) }.is_err() {
                ring.submit().expect("io_uring_enter");
            }
        }
        let me = self.clone();
        std::future::poll_fn(move |cx| {
            let mut ops = me.ops.borrow_mut();
            match ops[key].result {
                Some(res) => {
                    ops.remove(key);
                    Poll::Ready(res)
                }
                None => {
                    ops[key].waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    fn slot(&self) -> usize {
        0
    }
}

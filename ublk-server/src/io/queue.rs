//! One queue thread: its io_uring (libublk's per-queue ring, carrying both
//! the ublk commands and the backing I/O), its buffers, one task per tag
//! that FETCHes a request, passes the gate (held while suspended), hands
//! it to the request handler of the active table and COMMITs the result,
//! the doorbell task that wakes the queue for a resume or a table swap,
//! and the event loop that drives them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use libublk::helpers::IoBuf;
use libublk::io::{BufDesc, UblkDev, UblkQueue};
use libublk::uring_async::{
    ublk_reap_io_events_with_update_queue, ublk_submit_sqe_async, ublk_wake_task, uring_poll_io_fn,
};
use libublk::{sys, UblkError, UblkUringData};

use crate::backend::buffer::Buffer;
use crate::io::features::DataMode;
use crate::io::gate::{Gate, QueueGate};
use crate::io::loaded::{Core, FORCE_EXIT, STOPPING};
use crate::io::request::Request;

/// `UBLK_IO_F_NEED_REG_BUF`: auto registration failed, register by hand.
const IO_F_NEED_REG_BUF: u32 = sys::UBLK_IO_F_NEED_REG_BUF;

/// One queue: its ring, its buffers, one task per tag, and the event loop.
pub(crate) fn run(ring: RingId, dev: &UblkDev, gate: &Arc<Gate>, mode: DataMode) {
    let qid = ring.qid;
    enter(ring);
    if mode == DataMode::Batch {
        return crate::io::queue_batch::run(ring, dev, gate);
    }
    init_ring(dev, mode);
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(qid, "queue setup failed: {e:?}");
            // start_dev waits for every queue's buffers; release it.
            dev.notify_buffer_registration_complete(true);
            return;
        }
    };
    // Copy mode: one buffer per tag, registered as fixed buffer `tag`.
    let copy = mode.copies();
    let bufs: Rc<Vec<IoBuf<u8>>> = Rc::new(if copy {
        dev.alloc_queue_io_bufs()
    } else {
        Vec::new()
    });
    if copy {
        if let Err(e) = register_bufs(&bufs) {
            tracing::error!(qid, "registering buffers failed: {e}");
            dev.notify_buffer_registration_complete(true);
            return;
        }
    }

    let qgate = Rc::new(QueueGate::new(gate, ring.slot));
    let exe = smol::LocalExecutor::new();
    let mut tasks = Vec::new();
    // Not among `tasks`: it ends with the stop, not with the queue.
    let _doorbell = exe.spawn({
        let qgate = qgate.clone();
        async move { qgate.doorbell().await }
    });
    // Targets' jobs run on the first ring.
    let _jobs = (ring.slot == 0).then(|| {
        let (q, qgate) = (q.clone(), qgate.clone());
        exe.spawn(async move { qgate.serve_jobs(&q).await })
    });
    for tag in q.tags() {
        let q = q.clone();
        let bufs = bufs.clone();
        let qgate = qgate.clone();
        tasks.push(exe.spawn(async move {
            match io_task(&q, tag, mode, bufs.get(tag as usize), &qgate).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(qid = q.get_qid(), tag, "io task: {e:?}"),
            }
        }));
    }

    event_loop(qid, &q, &exe, &tasks);
}

/// Which of the device's rings a queue thread runs: queue `qid`, its io
/// thread `thread` (`--io-threads`), and `slot`, the ring's index among all
/// of them (per-ring state — the gate's counters, an NBD export's
/// connections — is indexed by it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingId {
    pub qid: u16,
    pub thread: u16,
    pub slot: usize,
}

/// Makes this thread ring `r`'s: libublk picks the io thread's share of
/// the tags from it, and [`slot`] answers it.
fn enter(r: RingId) {
    libublk::io::set_io_thread_idx(r.thread);
    crate::backend::ring::set_slot(r.slot);
}

/// This thread's queue ring (libublk's per-queue ring, which it then uses
/// for the ublk commands too).
///
/// Room for every tag's ublk command plus an operation and its linked
/// timeout (NBD), so that a pair is never split by a full submission
/// queue; only this thread submits (SINGLE_ISSUER). How completions' task
/// work runs is chosen per mode, as measured (docs/perf.md, same-boot
/// A/B): zero copy and batch mode run it when the thread waits
/// (DEFER_TASKRUN, as ublksrv does; 8-10 % more 4 KiB IOPS at QD32), copy
/// mode and DAX at the next kernel entry (COOP_TASKRUN; DEFER_TASKRUN cost
/// copy mode 4-13 %). TASKRUN_FLAG makes a submit that does not wait still
/// run what is pending (libublk's stop).
pub(crate) fn init_ring(dev: &UblkDev, mode: DataMode) {
    let depth = u32::from(dev.dev_info.queue_depth);
    let _ = libublk::io::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let mut b = IoUring::builder();
            b.setup_cqsize(depth * 8).setup_single_issuer();
            if matches!(mode, DataMode::ZeroCopy | DataMode::Batch) {
                b.setup_defer_taskrun().setup_taskrun_flag();
            } else {
                b.setup_coop_taskrun();
            }
            let ring = b.build(depth * 4).map_err(UblkError::IOError)?;
            cell.set(RefCell::new(ring))
                .map_err(|_| UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    });
}

/// Registers a queue's copy buffers as the ring's fixed buffers 0..depth
/// (buffer `tag` for tag `tag`).
pub(crate) fn register_bufs(bufs: &[IoBuf<u8>]) -> std::io::Result<usize> {
    let iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: the caller keeps the buffers until this thread ends, after
    // the ring's last use.
    libublk::io::with_task_io_ring(|ring| unsafe { ring.submitter().register_buffers(&iovs) })
        .map(|()| iovs.len())
}

/// Serves one fetched request through the gate (waiting while the device
/// is suspended) and the active table's handler; returns the ublk result.
pub(crate) async fn serve(
    q: &UblkQueue<'_>,
    tag: u16,
    mode: DataMode,
    buffer: Buffer,
    bounce: Option<Buffer>,
    gate: &QueueGate<'_>,
) -> i32 {
    // Copy the descriptor out of the shared mapping before awaiting.
    let iod = *q.get_iod(tag);
    let req = Request {
        op_flags: iod.op_flags,
        sector: iod.start_sector,
        nr_sectors: iod.nr_sectors,
    };
    let manual = mode == DataMode::ZeroCopy && iod.op_flags & IO_F_NEED_REG_BUF != 0;
    // Waits here while the device is suspended.
    let pass = gate.enter().await;
    let core = &pass.loaded.core;
    if !gate.current() {
        // This ring could not take the active table's files.
        return -libc::EIO;
    }
    // A USER_COPY device (DAX) serving a table the DAX path cannot: the
    // data goes through the per-tag buffer, as in copy mode.
    if let (Buffer::UserCopy { cdev, q_id, .. }, Some(b)) = (buffer, bounce) {
        if !matches!(core, Core::Dax(_)) {
            return through_buffer(q, core, req, b, (cdev, q_id, tag)).await;
        }
    }
    if !manual {
        return core.handle(q, req, buffer).await;
    }
    // The kernel could not register the buffer for us.
    match reg_io_buf(q, tag, true).await {
        r if r < 0 => r,
        _ => {
            let r = core.handle(q, req, buffer).await;
            // It must be unregistered before COMMIT, or the request never
            // completes.
            let _ = reg_io_buf(q, tag, false).await;
            r
        }
    }
}

/// Serves a USER_COPY request through the per-tag buffer `b`: a WRITE's
/// data is read from /dev/ublkcN into it first, a READ's written back to
/// it after.
async fn through_buffer(
    q: &UblkQueue<'_>,
    core: &Core,
    req: Request,
    b: Buffer,
    (cdev, q_id, tag): (i32, u16, u16),
) -> i32 {
    let Buffer::User { base, .. } = b else {
        return -libc::EIO;
    };
    let len = (u64::from(req.nr_sectors) << 9) as usize;
    // SAFETY: the per-tag buffer holds the largest request; the queue's
    // /dev/ublkcN is open while it serves.
    let (mem, fd) = unsafe {
        (
            std::slice::from_raw_parts_mut(base, len),
            std::os::fd::BorrowedFd::borrow_raw(cdev),
        )
    };
    let pos = libublk::io::UblkIOCtx::ublk_user_copy_pos(q_id, tag, 0);
    let copy = |write_to_cdev: bool, mem: &mut [u8]| -> Result<(), i32> {
        let mut done = 0;
        while done < mem.len() {
            let at = pos + done as u64;
            let r = if write_to_cdev {
                rustix::io::pwrite(fd, &mem[done..], at)
            } else {
                rustix::io::pread(fd, &mut mem[done..], at)
            };
            match r {
                Ok(0) => return Err(-libc::EIO),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(-e.raw_os_error()),
            }
        }
        Ok(())
    };
    let op = req.op();
    if op == crate::io::request::op::WRITE {
        if let Err(e) = copy(false, mem) {
            return e;
        }
    }
    let r = core.handle(q, req, b).await;
    if op == crate::io::request::op::READ && r > 0 {
        if let Err(e) = copy(true, mem) {
            return e;
        }
    }
    r
}

/// One tag: FETCH, then serve and COMMIT_AND_FETCH until the queue is down.
async fn io_task(
    q: &UblkQueue<'_>,
    tag: u16,
    mode: DataMode,
    buf: Option<&IoBuf<u8>>,
    gate: &QueueGate<'_>,
) -> Result<(), UblkError> {
    // Zero copy may have USER_COPY too: then the request's pages are also
    // reachable through /dev/ublkcN (memory files use it).
    let user_copy = q.dev.dev_info.flags & crate::io::features::F_USER_COPY != 0;
    if user_copy && mode != DataMode::ZeroCopy {
        // The data moves by pread/pwrite on /dev/ublkcN (fixed file 0).
        let buffer = Buffer::UserCopy {
            cdev_fixed: 0,
            cdev: q.dev.tgt.fds[0],
            q_id: q.get_qid(),
            tag,
        };
        let bounce = buf.map(|b| Buffer::User {
            base: b.as_mut_ptr(),
            index: tag,
        });
        let desc = BufDesc::Slice(&[]);
        q.submit_io_prep_cmd(tag, desc.clone(), -1, None).await?;
        loop {
            let res = serve(q, tag, mode, buffer, bounce, gate).await;
            q.submit_io_commit_cmd(tag, desc.clone(), res).await?;
        }
    }
    let desc = match (mode, buf) {
        (DataMode::Copy | DataMode::Dax, Some(b)) => BufDesc::Slice(b.as_slice()),
        _ => BufDesc::AutoReg(sys::ublk_auto_buf_reg {
            index: tag,
            flags: sys::UBLK_AUTO_BUF_REG_FALLBACK as u8,
            ..Default::default()
        }),
    };
    let buffer = match (mode, buf) {
        (DataMode::Copy | DataMode::Dax, Some(b)) => Buffer::User {
            base: b.as_mut_ptr(),
            index: tag,
        },
        _ => Buffer::Kernel {
            index: tag,
            cdev: if user_copy { q.dev.tgt.fds[0] } else { -1 },
            q_id: q.get_qid(),
        },
    };
    let io_buf = if mode == DataMode::ZeroCopy {
        None
    } else {
        buf
    };
    q.submit_io_prep_cmd(tag, desc.clone(), -1, io_buf).await?;
    loop {
        let res = serve(q, tag, mode, buffer, None, gate).await;
        q.submit_io_commit_cmd(tag, desc.clone(), res).await?;
    }
}

/// UBLK_U_IO_(UN)REGISTER_IO_BUF on the queue ring, marked as target I/O so
/// that libublk does not count its completion as a ublk command.
async fn reg_io_buf(q: &UblkQueue<'_>, tag: u16, register: bool) -> i32 {
    let cmd = sys::ublksrv_io_cmd {
        q_id: q.get_qid(),
        tag,
        result: 0,
        addr: u64::from(tag),
    };
    let op = if register {
        sys::UBLK_U_IO_REGISTER_IO_BUF
    } else {
        sys::UBLK_U_IO_UNREGISTER_IO_BUF
    };
    // SAFETY: ublksrv_io_cmd is a 16-byte plain-old-data struct.
    let raw: [u8; 16] = unsafe { std::mem::transmute(cmd) };
    let sqe = opcode::UringCmd16::new(types::Fixed(0), op)
        .cmd(raw)
        .build();
    ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
        .await
        .unwrap_or(-libc::EIO)
}

/// libublk's event loop, driving a queue's tasks until the queue is down
/// and they have finished.
fn event_loop(
    qid: u16,
    q: &UblkQueue<'_>,
    exe: &smol::LocalExecutor<'_>,
    tasks: &[smol::Task<()>],
) {
    // libublk's event loop. It waits for completions only: whatever else
    // must wake it (a stop, a failed start, a resume, a table swap) rings
    // the doorbell.
    // Once stopping it ticks every second, so that a stop which never
    // delivers the abort cannot hang the thread. (A timeout on every wait
    // arms and cancels an hrtimer per sleep: 2-2.5 % of 4 KiB QD1 IOPS.)
    let mut stopping_since: Option<Instant> = None;
    while exe.try_tick() {}
    loop {
        let stopping = STOPPING.load(Ordering::SeqCst) || FORCE_EXIT.load(Ordering::SeqCst);
        let ts = stopping.then(|| types::Timespec::new().sec(1));
        let (timed_out, down) = match uring_poll_io_fn::<squeue::Entry>(q, ts, 1) {
            Ok(t) => (t, false),
            Err(_) => (false, true),
        };
        let aborted = ublk_reap_io_events_with_update_queue(q, timed_out, None, |cqe| {
            ublk_wake_task(cqe.user_data(), cqe)
        })
        .unwrap_or(true);
        while exe.try_tick() {}
        let done = tasks.iter().all(|t| t.is_finished());
        if (aborted || down) && done {
            break;
        }
        if down || STOPPING.load(Ordering::Relaxed) {
            let t0 = *stopping_since.get_or_insert_with(Instant::now);
            if t0.elapsed() > Duration::from_secs(10) {
                tracing::warn!(qid, "giving up on stuck I/O tasks after stop");
                break;
            }
        }
        if FORCE_EXIT.load(Ordering::Relaxed) {
            break;
        }
    }
}

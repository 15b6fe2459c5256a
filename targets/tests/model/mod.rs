//! An in-memory [`IoCtx`] for host tests of serving targets: devices and
//! the request buffer are byte vectors; a sleep yields once (so a test can
//! look at a target mid-request) and is recorded.

#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rdm_targets::serve::{ready, EIO};
use rdm_targets::{Data, DevIdx, IoCtx, IoFuture, Job, Op, PieceKind, Table};

pub struct MemCtx {
    pub devs: RefCell<Vec<Vec<u8>>>,
    pub req: RefCell<Vec<u8>>,
    pub slept: RefCell<Vec<Duration>>,
    pub flushes: RefCell<Vec<DevIdx>>,
    /// (dev, offset, len, fua) of every write, in order.
    pub writes: RefCell<Vec<(DevIdx, u64, u64, bool)>>,
    pub block_size: u32,
    /// Whether the request's buffer can be copied from (copy mode or
    /// USER_COPY), or only moved by I/O.
    pub copyable: bool,
    /// Background jobs spawned, for the test to run.
    pub spawned: RefCell<Vec<Job>>,
    /// Devices whose every I/O fails with EIO.
    pub failing: RefCell<Vec<DevIdx>>,
    /// What targets reported through `event`.
    pub events: RefCell<Vec<String>>,
}

impl MemCtx {
    pub fn new(dev_sizes: &[usize], req: Vec<u8>) -> MemCtx {
        MemCtx {
            devs: RefCell::new(dev_sizes.iter().map(|&n| vec![0; n]).collect()),
            req: RefCell::new(req),
            slept: RefCell::new(Vec::new()),
            flushes: RefCell::new(Vec::new()),
            writes: RefCell::new(Vec::new()),
            block_size: 512,
            copyable: true,
            spawned: RefCell::new(Vec::new()),
            failing: RefCell::new(Vec::new()),
            events: RefCell::new(Vec::new()),
        }
    }

    pub fn dev(&self, i: DevIdx) -> Vec<u8> {
        self.devs.borrow()[i].clone()
    }

    fn fails(&self, dev: DevIdx) -> bool {
        self.failing.borrow().contains(&dev)
    }
}

fn range(off: u64, len: u64, size: usize) -> Result<std::ops::Range<usize>, i32> {
    let end = off.checked_add(len).ok_or(EIO)?;
    if end as usize > size {
        return Err(EIO);
    }
    Ok(off as usize..end as usize)
}

impl IoCtx for MemCtx {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn device_bytes(&self, dev: DevIdx) -> u64 {
        self.devs.borrow()[dev].len() as u64
    }

    fn read<'a>(&'a self, dev: DevIdx, offset: u64, len: u64, data: Data<'a>) -> IoFuture<'a> {
        if self.fails(dev) {
            return ready(Err(EIO));
        }
        let r = (|| {
            let devs = self.devs.borrow();
            let src = &devs[dev][range(offset, len, devs[dev].len())?];
            match data {
                Data::Request(at) => {
                    let mut req = self.req.borrow_mut();
                    let n = req.len();
                    req[range(at, len, n)?].copy_from_slice(src);
                }
                Data::Into(m) => m[..len as usize].copy_from_slice(src),
                Data::From(_) => return Err(EIO),
            }
            Ok(())
        })();
        ready(r)
    }

    fn write<'a>(
        &'a self,
        dev: DevIdx,
        offset: u64,
        len: u64,
        data: Data<'a>,
        fua: bool,
    ) -> IoFuture<'a> {
        if self.fails(dev) {
            return ready(Err(EIO));
        }
        let r = (|| {
            let mut devs = self.devs.borrow_mut();
            let n = devs[dev].len();
            let dst = &mut devs[dev][range(offset, len, n)?];
            match data {
                Data::Request(at) => {
                    let req = self.req.borrow();
                    dst.copy_from_slice(&req[range(at, len, req.len())?]);
                }
                Data::From(m) => dst.copy_from_slice(&m[..len as usize]),
                Data::Into(_) => return Err(EIO),
            }
            self.writes.borrow_mut().push((dev, offset, len, fua));
            Ok(())
        })();
        ready(r)
    }

    fn flush(&self, dev: DevIdx) -> IoFuture<'_> {
        if self.fails(dev) {
            return ready(Err(EIO));
        }
        self.flushes.borrow_mut().push(dev);
        ready(Ok(()))
    }

    fn zero_range(&self, dev: DevIdx, offset: u64, len: u64, _discard: bool) -> IoFuture<'_> {
        let r = (|| {
            let mut devs = self.devs.borrow_mut();
            let n = devs[dev].len();
            devs[dev][range(offset, len, n)?].fill(0);
            Ok(())
        })();
        ready(r)
    }

    fn sleep(&self, d: Duration) -> IoFuture<'_> {
        self.slept.borrow_mut().push(d);
        Box::pin(YieldOnce(false))
    }

    fn fill_zero(&self, buf_offset: u64, len: u64) -> IoFuture<'_> {
        let mut req = self.req.borrow_mut();
        let n = req.len();
        ready(range(buf_offset, len, n).map(|r| req[r].fill(0)))
    }

    fn set_request_byte(&self, buf_offset: u64, value: u8) -> IoFuture<'_> {
        self.req.borrow_mut()[buf_offset as usize] = value;
        ready(Ok(()))
    }

    fn set_device_byte(&self, dev: DevIdx, offset: u64, value: u8) -> IoFuture<'_> {
        self.devs.borrow_mut()[dev][offset as usize] = value;
        ready(Ok(()))
    }

    fn copy_from_request<'a>(&'a self, buf_offset: u64, into: &'a mut [u8]) -> IoFuture<'a> {
        if !self.copyable {
            return ready(Err(rdm_targets::serve::EOPNOTSUPP));
        }
        let req = self.req.borrow();
        let n = into.len() as u64;
        ready(range(buf_offset, n, req.len()).map(|r| into.copy_from_slice(&req[r])))
    }

    fn copy_to_request<'a>(&'a self, buf_offset: u64, from: &'a [u8]) -> IoFuture<'a> {
        let mut req = self.req.borrow_mut();
        let n = req.len();
        ready(range(buf_offset, from.len() as u64, n).map(|r| req[r].copy_from_slice(from)))
    }

    fn spawn(&self, job: Job) {
        self.spawned.borrow_mut().push(job);
    }

    fn event(&self, what: &str) {
        self.events.borrow_mut().push(what.to_string());
    }
}

impl MemCtx {
    pub fn take_spawned(&self) -> Vec<Job> {
        std::mem::take(&mut *self.spawned.borrow_mut())
    }
}

/// Pending on the first poll, ready on the second.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = Result<(), i32>;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Ready(Ok(()))
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// Polls a future to the end (every future here is ready or yields once).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the future never finished");
}

/// Polls once: `Some` if it finished.
pub fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match f.poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Serves one request (or, for `Op::Flush`, a flush) through the table on
/// the model: remapped pieces as the handler moves them, served ones
/// through their target.
pub fn request(t: &Table, ctx: &MemCtx, op: Op, opf: u32, sector: u64, nr: u64) -> Result<(), i32> {
    let mut pieces = Vec::new();
    if op == Op::Flush {
        t.flush(&mut pieces);
    } else {
        t.map(op, opf, sector, nr, &mut pieces).unwrap();
    }
    for p in pieces {
        match p.kind {
            PieceKind::Io { dev, dev_offset } => {
                let d = Data::Request(p.buf_offset);
                block_on(match op {
                    Op::Read => ctx.read(dev, dev_offset, p.len, d),
                    Op::Flush => ctx.flush(dev),
                    _ => ctx.write(dev, dev_offset, p.len, d, false),
                })?;
            }
            PieceKind::Serve { .. } => {
                let (target, io) = t.served(&p, op, opf).expect("a served piece");
                block_on(target.serve(io, ctx))?;
            }
            k => panic!("unexpected piece {k:?}"),
        }
    }
    Ok(())
}

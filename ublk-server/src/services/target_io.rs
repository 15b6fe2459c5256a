//! The I/O context a serving target gets ([`rdm_targets::IoCtx`]): rdm's
//! dm-io. Each call is one backend operation on the queue's ring, counted
//! in the device's statistics as the handler's own I/O is; the request's
//! buffer is reached as the handler reaches it (zero copy included), and a
//! target's own memory through [`Buffer::Mem`].

use std::time::Duration;

use io_uring::{opcode, types};
use rdm_targets::serve::{ready, EIO, EOPNOTSUPP};
use rdm_targets::{Data, DevIdx, IoCtx, IoFuture};

use crate::backend::buffer::{cdev_copy, Aux, Buffer};
use crate::backend::ring::Ring;
use crate::backend::{Backend, Transfer};
use crate::services::stats::{Counters, Stats};

/// A target's view of one request (or of a job: no request buffer) on one
/// queue ring.
pub(crate) struct TargetIo<'h, B, R> {
    pub backend: &'h B,
    pub stats: &'h Stats,
    pub aux: Aux,
    /// The device's logical block size, and each backing device's size.
    pub block_size: u32,
    pub device_bytes: &'h [u64],
    pub ring: &'h R,
    /// The request's data; `None` for a job.
    pub buf: Option<Buffer>,
    /// For a background job: whether its table is still the ring's (its
    /// devices' fixed files are those of the table it started on).
    pub current: Option<&'h dyn Fn() -> bool>,
}

impl<'h, B: Backend, R: Ring> TargetIo<'h, B, R> {
    /// EIO for a background job whose table was swapped out.
    fn stale(&self) -> Result<(), i32> {
        match self.current {
            Some(f) if !f() => Err(EIO),
            _ => Ok(()),
        }
    }

    /// The buffer and offset `data` stands for, checked to hold `len`.
    fn locate(&self, data: &Data<'_>, len: u64) -> Result<(Buffer, u64), i32> {
        match data {
            Data::Request(at) => Ok((self.buf.ok_or(EIO)?, *at)),
            Data::Into(m) if m.len() as u64 >= len => Ok((mem(m.as_ptr()), 0)),
            Data::From(m) if m.len() as u64 >= len => Ok((mem(m.as_ptr()), 0)),
            _ => Err(-libc::EINVAL),
        }
    }

    async fn transfer(&self, t: Transfer, buf: Buffer) -> Result<(), i32> {
        self.stale()?;
        let d = &self.stats.devices[t.dev];
        d.count_rw(t.write, t.len);
        let r = match self.backend.transfer_now(t, buf) {
            Some(r) => r,
            None => self.backend.transfer(self.ring, t, buf).await,
        };
        if r.is_err() {
            Counters::add(&d.errors, 1);
        }
        r
    }

    fn rw<'a>(
        &'a self,
        dev: DevIdx,
        offset: u64,
        len: u64,
        data: Data<'a>,
        write: bool,
        fua: bool,
    ) -> IoFuture<'a> {
        let (buf, buf_offset) = match self.locate(&data, len) {
            Ok(x) => x,
            Err(e) => return ready(Err(e)),
        };
        let t = Transfer {
            dev,
            dev_offset: offset,
            buf_offset,
            len,
            write,
            fua,
        };
        // `data` is borrowed by the future: the memory outlives the I/O.
        Box::pin(async move {
            let _data = data;
            self.transfer(t, buf).await
        })
    }

    /// One copy between the request's pages and memory at `at` (`n` bytes
    /// from request byte `buf_offset`; into memory when `into_mem`).
    fn copy(&self, buf_offset: u64, at: *mut u8, n: usize, into_mem: bool) -> Result<(), i32> {
        match self.buf.ok_or(EIO)? {
            Buffer::User { base, .. } | Buffer::Mem { base } => {
                // SAFETY: the range lies inside the request's buffer (the
                // handler maps only what the request covers) and `at` is
                // the caller's `n` bytes.
                unsafe {
                    let req = base.add(buf_offset as usize);
                    if into_mem {
                        std::ptr::copy_nonoverlapping(req, at, n);
                    } else {
                        std::ptr::copy_nonoverlapping(at, req, n);
                    }
                }
                Ok(())
            }
            Buffer::Kernel {
                cdev,
                q_id,
                index: tag,
            }
            | Buffer::UserCopy {
                cdev, q_id, tag, ..
            } if cdev >= 0 => {
                let mut done = 0;
                while done < n {
                    let pos = (q_id, tag, buf_offset + done as u64);
                    // SAFETY: the queue's cdev is open while it serves; the
                    // memory is the caller's, untouched meanwhile.
                    match unsafe { cdev_copy(cdev, pos, at.add(done), n - done, into_mem) } {
                        Ok(0) => return Err(EIO),
                        Ok(k) => done += k,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(-e.raw_os_error()),
                    }
                }
                Ok(())
            }
            // Zero copy without USER_COPY: the pages are reachable only by
            // I/O, so the data cannot be transformed in memory.
            _ => Err(EOPNOTSUPP),
        }
    }
}

fn mem(p: *const u8) -> Buffer {
    Buffer::Mem { base: p.cast_mut() }
}

impl<B: Backend, R: Ring> IoCtx for TargetIo<'_, B, R> {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn device_bytes(&self, dev: DevIdx) -> u64 {
        self.device_bytes.get(dev).copied().unwrap_or(0)
    }

    fn read<'a>(&'a self, dev: DevIdx, offset: u64, len: u64, data: Data<'a>) -> IoFuture<'a> {
        if matches!(data, Data::From(_)) {
            return ready(Err(-libc::EINVAL));
        }
        self.rw(dev, offset, len, data, false, false)
    }

    fn write<'a>(
        &'a self,
        dev: DevIdx,
        offset: u64,
        len: u64,
        data: Data<'a>,
        fua: bool,
    ) -> IoFuture<'a> {
        self.rw(dev, offset, len, data, true, fua)
    }

    fn flush(&self, dev: DevIdx) -> IoFuture<'_> {
        Box::pin(async move {
            self.stale()?;
            let d = &self.stats.devices[dev];
            Counters::add(&d.flushes, 1);
            let r = self.backend.flush(self.ring, dev).await;
            if r.is_err() {
                Counters::add(&d.errors, 1);
            }
            r
        })
    }

    fn zero_range(&self, dev: DevIdx, offset: u64, len: u64, discard: bool) -> IoFuture<'_> {
        Box::pin(async move {
            self.stale()?;
            let d = &self.stats.devices[dev];
            d.count_range_op(discard);
            let backend = &self.backend;
            let r = backend
                .zero_range(self.ring, dev, offset, len, discard)
                .await;
            if r.is_err() {
                Counters::add(&d.errors, 1);
            }
            r
        })
    }

    fn sleep(&self, d: Duration) -> IoFuture<'_> {
        Box::pin(async move {
            let ts = types::Timespec::new()
                .sec(d.as_secs())
                .nsec(d.subsec_nanos());
            // -ETIME is the timeout expiring, as it should.
            let _ = self.ring.submit(opcode::Timeout::new(&ts).build()).await;
            Ok(())
        })
    }

    fn fill_zero(&self, buf_offset: u64, len: u64) -> IoFuture<'_> {
        Box::pin(async move {
            let buf = self.buf.ok_or(EIO)?;
            buf.fill_zero(self.ring, self.aux, buf_offset, len).await
        })
    }

    fn set_request_byte(&self, buf_offset: u64, value: u8) -> IoFuture<'_> {
        Box::pin(async move {
            let buf = self.buf.ok_or(EIO)?;
            buf.set_byte(self.ring, self.aux, buf_offset, value).await
        })
    }

    fn set_device_byte(&self, dev: DevIdx, offset: u64, value: u8) -> IoFuture<'_> {
        Box::pin(async move {
            let r = self.backend.set_byte(self.ring, dev, offset, value).await;
            if r.is_err() {
                Counters::add(&self.stats.devices[dev].errors, 1);
            }
            r
        })
    }

    fn copy_from_request<'a>(&'a self, buf_offset: u64, into: &'a mut [u8]) -> IoFuture<'a> {
        ready(self.copy(buf_offset, into.as_mut_ptr(), into.len(), true))
    }

    fn copy_to_request<'a>(&'a self, buf_offset: u64, from: &'a [u8]) -> IoFuture<'a> {
        ready(self.copy(buf_offset, from.as_ptr().cast_mut(), from.len(), false))
    }

    fn spawn(&self, job: rdm_targets::Job) {
        crate::services::jobs::spawn(job);
    }

    /// The daemon's log carries the device's name in its span.
    fn event(&self, what: &str) {
        tracing::warn!(event = what, "target event");
    }
}

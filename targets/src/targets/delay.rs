//! `delay <dev> <offset> <delay> [<write_dev> <write_offset> <write_delay>
//! [<flush_dev> <flush_offset> <flush_delay>]]` (dm-delay): reads go to the
//! first device after `delay` ms; writes (and discards) to the second, and
//! flushes to the third, each after its own delay. Omitted classes repeat
//! the one before. A class without a delay is a plain remap; a delayed
//! one is served by the target itself: it waits on the queue's ring (an
//! io_uring timeout, never a sleeping queue thread), then does the I/O.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::args::{device_sector, scan_u32};
use crate::serve::{Data, IoCtx, IoFuture};
use crate::target::{
    flush_as, flush_piece, Ctr, CtrResult, DevIdx, Extent, Io, Op, Piece, PieceKind, StatusCtx,
    Target, TargetType,
};

pub const TYPE: TargetType = TargetType { name: "delay", ctr };

#[derive(Debug)]
struct Class {
    dev: DevIdx,
    start: u64,
    delay_ms: u32,
    /// Pieces of this class being held right now (the kernel's `ops`).
    held: AtomicU32,
}

#[derive(Debug)]
struct Delay {
    /// Read, write, flush.
    classes: [Class; 3],
    /// 3, 6 or 9: how many arguments the table gave (status prints as many).
    argc: usize,
    len: u64,
}

const READ: usize = 0;
const WRITE: usize = 1;
const FLUSH: usize = 2;

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    let argc = c.args.len();
    if !matches!(argc, 3 | 6 | 9) {
        return Err("Requires exactly 3, 6 or 9 arguments".into());
    }
    let args = c.args;
    let mut classes = Vec::with_capacity(3);
    for i in 0..3 {
        // Classes the table omits repeat the last one given.
        let at = 3 * i.min(argc / 3 - 1);
        let a = &args[at..at + 3];
        let start = device_sector(&a[1])?;
        let delay_ms = scan_u32(&a[2]).ok_or_else(|| format!("Invalid delay {:?}", a[2]))?;
        let dev = c.device(&a[0])?;
        classes.push(Class {
            dev,
            start,
            delay_ms,
            held: AtomicU32::new(0),
        });
    }
    let classes: [Class; 3] = classes.try_into().expect("three classes");
    Ok(Arc::new(Delay {
        classes,
        argc,
        len: c.len,
    }))
}

/// dm-delay: bio_data_dir() picks read or write; discards are writes.
fn class_of(op: Op) -> usize {
    match op {
        Op::Read => READ,
        Op::Flush => FLUSH,
        _ => WRITE,
    }
}

/// Counts a held request of a class while it waits (the kernel's `ops`).
struct Held<'a>(&'a AtomicU32);

impl<'a> Held<'a> {
    fn new(n: &'a AtomicU32) -> Self {
        n.fetch_add(1, Relaxed);
        Held(n)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Delay {
    fn dev_offset(&self, c: &Class, io: &Io) -> u64 {
        (c.start + io.offset) << crate::SECTOR_SHIFT
    }
}

impl Target for Delay {
    fn name(&self) -> &'static str {
        "delay"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        let c = &self.classes[class_of(io.op)];
        out.push(if c.delay_ms == 0 {
            io.piece(PieceKind::Io {
                dev: c.dev,
                dev_offset: self.dev_offset(c, io),
            })
        } else {
            io.served()
        });
    }

    fn flush(&self, segment: usize, out: &mut Vec<Piece>) {
        let c = &self.classes[FLUSH];
        out.push(if c.delay_ms == 0 {
            flush_piece(segment, c.dev)
        } else {
            flush_as(segment, PieceKind::Serve { offset: 0 })
        });
    }

    /// A delayed part: held for its class's delay, then done on its
    /// class's device.
    fn serve<'a>(&'a self, io: Io, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            let c = &self.classes[class_of(io.op)];
            {
                let _held = Held::new(&c.held);
                ctx.sleep(Duration::from_millis(u64::from(c.delay_ms)))
                    .await?;
            }
            let (off, len) = (self.dev_offset(c, &io), io.len << crate::SECTOR_SHIFT);
            let data = Data::Request(io.buf_offset);
            let fua = io.opf & crate::REQ_FUA != 0;
            match io.op {
                Op::Read => ctx.read(c.dev, off, len, data).await,
                Op::Write => ctx.write(c.dev, off, len, data, fua).await,
                Op::Flush => ctx.flush(c.dev).await,
                Op::Discard => ctx.zero_range(c.dev, off, len, true).await,
                Op::WriteZeroes => ctx.zero_range(c.dev, off, len, false).await,
            }
        })
    }

    fn serves(&self) -> bool {
        self.classes.iter().any(|c| c.delay_ms > 0)
    }

    fn table_args(&self, devs: &[String]) -> String {
        self.classes[..self.argc / 3]
            .iter()
            .map(|c| format!("{} {} {}", devs[c.dev], c.start, c.delay_ms))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `<reads> <writes> <flushes>` held right now.
    fn status(&self, _ctx: &StatusCtx<'_>) -> String {
        let [r, w, f] = &self.classes;
        format!(
            "{} {} {}",
            r.held.load(Relaxed),
            w.held.load(Relaxed),
            f.held.load(Relaxed)
        )
    }

    /// Every class's range is checked against its device; only the write
    /// class's range is written.
    fn extents(&self, segment: usize) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for (i, c) in self.classes.iter().enumerate() {
            let e = Extent {
                segment,
                dev: c.dev,
                start: c.start,
                len: self.len,
                written: i == WRITE,
            };
            match out
                .iter_mut()
                .find(|o| o.dev == e.dev && o.start == e.start)
            {
                Some(o) => o.written |= e.written,
                None => out.push(e),
            }
        }
        out
    }

    fn supports_dax(&self) -> bool {
        false
    }

    fn aligned(&self) -> Vec<(&'static str, u64)> {
        self.classes
            .iter()
            .map(|c| ("device offset", c.start))
            .collect()
    }
}

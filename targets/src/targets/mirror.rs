//! `mirror <log_type> <#log_args> <log_args…> <#devs> <dev> <offset>…
//! [<#features> handle_errors [keep_log]]` (dm-raid1): the same bytes on
//! 2–9 legs.
//!
//! Served on the target interface: a write goes to every live leg at once
//! and completes when all have it, after its regions are marked dirty in
//! the region log ([`DirtyLog`], flushed to a `disk` log before the write is
//! issued); reads are spread over the legs of in-sync regions, and a read
//! that fails is retried on the next leg. A background job (the kernel's
//! kmirrord) copies out-of-sync regions from the default leg to the others
//! through the copier, one region at a time: writes to the region being
//! copied wait for it, and it waits for the writes in flight there. The
//! same job clears idle regions in the log in batches, after flushing the
//! legs, so that a region is only ever clean on the log when every leg
//! durably holds it.
//!
//! Failures: with `handle_errors` a leg that fails a write or a flush is
//! dead: no more I/O goes to it and the caller sees no error while a leg
//! lives; regions are then left dirty on the log, so that the leg, once
//! back, resyncs only what changed. Without it, as the kernel: the error
//! is counted (the leg's status letter), the region falls out of sync and
//! is copied again, and the write succeeds if any leg took it.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::args::{digits, scan_u32};
use crate::serve::background::Background;
use crate::serve::copier::{Copier, Copy, CopyError, Progress};
use crate::serve::dirty_log::{DirtyLog, LogSpec};
use crate::serve::{join_all, Data, IoCtx, IoFuture, IoMem, EIO, EOPNOTSUPP};
use crate::target::{
    flush_as, Ctr, CtrResult, DevIdx, Extent, Io, Op, Piece, PieceKind, StatusCtx, Target,
    TargetType,
};
use crate::{REQ_FUA, SECTOR_SHIFT};

pub const TYPE: TargetType = TargetType {
    name: "mirror",
    ctr,
};

/// `MAX_NR_MIRRORS`: `DM_KCOPYD_MAX_REGIONS + 1`.
const MAX_LEGS: u32 = 9;
/// How often a request waiting for a region (or the log) looks again.
const WAIT: Duration = Duration::from_micros(50);
/// How often the background job clears idle regions when it has nothing
/// to copy.
const TICK: Duration = Duration::from_millis(100);
/// The resync's pause between regions while requests are in flight.
const THROTTLE: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Leg {
    dev: DevIdx,
    /// First sector on `dev`.
    offset: u64,
}

/// What went wrong on a leg (`enum dm_raid1_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Write,
    Flush,
    Sync,
    Read,
}

/// One leg's health (the kernel's `error_count`/`error_type`).
#[derive(Debug, Default, Clone, Copy)]
struct Health {
    errors: u64,
    write: bool,
    flush: bool,
    sync: bool,
    read: bool,
    /// `handle_errors` took it out: no more I/O goes to it.
    dead: bool,
}

impl Health {
    /// `device_status_char`.
    fn char(&self) -> char {
        match self {
            h if h.errors == 0 => 'A',
            h if h.flush => 'F',
            h if h.write => 'D',
            h if h.sync => 'S',
            h if h.read => 'R',
            _ => 'U',
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    NotYet,
    Loading,
    Done,
}

#[derive(Debug)]
struct State {
    log: DirtyLog,
    load: Load,
    /// Writes in flight per region, and writes started per region (to tell
    /// whether a region written since it went idle).
    pending: Vec<u32>,
    writes: Vec<u32>,
    /// Writes in flight in all.
    inflight: u32,
    /// The region being copied.
    recovering: Option<u64>,
    /// Where the resync looks next (`sync_search`).
    resync_from: u64,
    /// Regions that went idle (region, its write count then): cleared on
    /// the log after the next flush of the legs.
    idle: Vec<(u64, u32)>,
    /// Log changes made, and committed (written and flushed).
    dirty_gen: u64,
    flushed_gen: u64,
    log_busy: bool,
    legs: Vec<Health>,
    /// The leg reads of out-of-sync regions and the resync come from.
    default: usize,
}

#[derive(Debug)]
struct Inner {
    legs: Vec<Leg>,
    /// Segment length in sectors.
    len: u64,
    spec: LogSpec,
    handle_errors: bool,
    keep_log: bool,
    st: Mutex<State>,
    bg: Arc<Background>,
    progress: Progress,
    next_read: AtomicUsize,
}

#[derive(Debug)]
struct Mirror {
    inner: Arc<Inner>,
}

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    let args = c.args;
    let insufficient = || "Insufficient mirror log arguments".to_string();
    if args.len() < 2 {
        return Err(insufficient());
    }
    let n_log = scan_u32(&args[1]).ok_or("Invalid mirror log argument count")? as usize;
    if n_log > args.len() - 2 {
        return Err(insufficient());
    }
    let spec = LogSpec::parse(c, &args[0], &args[2..2 + n_log])
        .map_err(|why| format!("Error creating mirror dirty log ({why})"))?;
    let mut at = 2 + n_log;
    let n = args
        .get(at)
        .and_then(|s| scan_u32(s))
        .filter(|n| (2..=MAX_LEGS).contains(n))
        .ok_or("Invalid number of mirrors")? as usize;
    at += 1;
    if args.len() - at < 2 * n {
        return Err("Too few mirror arguments".into());
    }
    let mut legs = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = digits(&args[at + 1]).ok_or("Invalid offset")?;
        let dev = c.device(&args[at]).map_err(|_| "Device lookup failure")?;
        legs.push(Leg { dev, offset });
        at += 2;
    }
    let (mut handle_errors, mut keep_log) = (false, false);
    if let Some(nf) = args.get(at) {
        let nf = scan_u32(nf).ok_or("Invalid number of features")? as usize;
        at += 1;
        if nf > args.len() - at {
            return Err("Not enough arguments to support feature count".into());
        }
        for f in &args[at..at + nf] {
            match f.as_str() {
                "handle_errors" => handle_errors = true,
                "keep_log" => keep_log = true,
                _ => return Err("Unrecognised feature requested".into()),
            }
        }
        at += nf;
        if keep_log && !handle_errors {
            return Err("keep_log feature requires the handle_errors feature".into());
        }
    }
    if at < args.len() {
        return Err("Too many mirror arguments".into());
    }
    let regions = spec.regions as usize;
    let st = State {
        log: DirtyLog::new(spec.clone()),
        load: Load::NotYet,
        pending: vec![0; regions],
        writes: vec![0; regions],
        inflight: 0,
        recovering: None,
        resync_from: 0,
        idle: Vec::new(),
        dirty_gen: 0,
        flushed_gen: 0,
        log_busy: false,
        legs: vec![Health::default(); legs.len()],
        default: 0,
    };
    Ok(Arc::new(Mirror {
        inner: Arc::new(Inner {
            legs,
            len: c.len,
            spec,
            handle_errors,
            keep_log,
            st: Mutex::new(st),
            bg: Background::new(),
            progress: Progress::default(),
            next_read: AtomicUsize::new(0),
        }),
    }))
}

/// A write's claim on its regions, released however the write ends.
struct Pending<'a> {
    m: &'a Inner,
    regions: std::ops::RangeInclusive<u64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut s = self.m.lock();
        s.inflight -= 1;
        for r in self.regions.clone() {
            let i = r as usize;
            s.pending[i] -= 1;
            if s.pending[i] == 0 && self.m.spec.disk.is_some() {
                let w = s.writes[i];
                s.idle.push((r, w));
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The regions a part of a request touches.
    fn regions_of(&self, io: &Io) -> std::ops::RangeInclusive<u64> {
        let rs = self.spec.region_size;
        io.offset / rs..=(io.offset + io.len.max(1) - 1) / rs
    }

    /// A region's byte range inside the segment (the last may be short).
    fn region_bytes(&self, r: u64) -> (u64, u64) {
        let rs = self.spec.region_size;
        let start = r * rs;
        (
            start << SECTOR_SHIFT,
            (rs.min(self.len - start)) << SECTOR_SHIFT,
        )
    }

    fn leg_at(&self, i: usize, off: u64) -> (DevIdx, u64) {
        let l = &self.legs[i];
        (l.dev, (l.offset << SECTOR_SHIFT) + off)
    }

    fn live(&self, s: &State) -> Vec<usize> {
        (0..self.legs.len()).filter(|&i| !s.legs[i].dead).collect()
    }

    /// `fail_mirror`: counts the error; with `handle_errors` a failed
    /// write or flush takes the leg out, and a dead default leg hands its
    /// role to a leg without errors.
    fn fail_leg(&self, s: &mut State, ctx: &dyn IoCtx, i: usize, kind: Fail) {
        let h = &mut s.legs[i];
        h.errors += 1;
        let first = !match kind {
            Fail::Write => std::mem::replace(&mut h.write, true),
            Fail::Flush => std::mem::replace(&mut h.flush, true),
            Fail::Sync => std::mem::replace(&mut h.sync, true),
            Fail::Read => std::mem::replace(&mut h.read, true),
        };
        let kill = self.handle_errors && kind != Fail::Read && !h.dead;
        if kill {
            h.dead = true;
        }
        if first || kill {
            ctx.event(&format!(
                "mirror leg {i} ({kind:?} error){}",
                if kill {
                    ": leg is dead, I/O goes on over the others"
                } else {
                    ""
                }
            ));
        }
        if s.default == i && kill {
            if let Some(j) = (0..self.legs.len()).find(|&j| s.legs[j].errors == 0) {
                s.default = j;
            }
        }
    }

    /// Reads the log (the first time only: the in-memory state is newer
    /// after a suspend) as `disk_resume` does, and writes it back.
    async fn load(&self, ctx: &dyn IoCtx) -> Result<(), i32> {
        loop {
            {
                let mut s = self.lock();
                match s.load {
                    Load::Done => return Ok(()),
                    Load::NotYet => {
                        s.load = Load::Loading;
                        break;
                    }
                    Load::Loading => {}
                }
            }
            let _ = ctx.sleep(WAIT).await;
        }
        if let Some(dev) = self.spec.disk {
            let block = u64::from(ctx.block_size());
            let size = self.spec.buf_bytes(block);
            let mut mem = IoMem::new(size);
            let read = ctx.read(dev, 0, size as u64, Data::Into(&mut mem)).await;
            let buf = self
                .lock()
                .log
                .resume_disk(read.ok().map(|_| mem.to_vec()), block);
            if self.write_log(ctx, dev, &buf).await.is_err() {
                self.lock().log.health.failed = true;
                ctx.event("mirror log device failed");
            }
        }
        self.lock().load = Load::Done;
        Ok(())
    }

    async fn write_log(&self, ctx: &dyn IoCtx, dev: DevIdx, buf: &[u8]) -> Result<(), i32> {
        let mut mem = IoMem::new(buf.len());
        mem.copy_from_slice(buf);
        ctx.write(dev, 0, buf.len() as u64, Data::From(&mem), false)
            .await?;
        ctx.flush(dev).await
    }

    /// Returns once the log as it was at change `want` is on the log
    /// device, durably: one writer at a time, each write carrying every
    /// change made before it (dm-region-hash's batching).
    async fn commit_log(&self, ctx: &dyn IoCtx, want: u64) -> Result<(), i32> {
        let Some(dev) = self.spec.disk else {
            return Ok(());
        };
        loop {
            let snap = {
                let mut s = self.lock();
                if s.flushed_gen >= want {
                    return Ok(());
                }
                if s.log.health.failed {
                    return Err(EIO);
                }
                match s.log_busy {
                    true => None,
                    false => {
                        s.log_busy = true;
                        s.log.touched = false;
                        Some((s.dirty_gen, s.log.to_disk()))
                    }
                }
            };
            let Some((gen, buf)) = snap else {
                let _ = ctx.sleep(WAIT).await;
                continue;
            };
            let r = self.write_log(ctx, dev, &buf).await;
            let mut s = self.lock();
            s.log_busy = false;
            match r {
                Ok(()) => s.flushed_gen = s.flushed_gen.max(gen),
                Err(e) => {
                    s.log.health.failed = true;
                    drop(s);
                    ctx.event("mirror log device failed: regions are no longer logged");
                    return Err(e);
                }
            }
        }
    }

    async fn write(&self, io: Io, ctx: &dyn IoCtx) -> Result<(), i32> {
        self.load(ctx).await?;
        let regions = self.regions_of(&io);
        let want = loop {
            {
                let mut s = self.lock();
                if s.recovering.is_none_or(|r| !regions.contains(&r)) {
                    let mut marked = false;
                    for r in regions.clone() {
                        let i = r as usize;
                        s.pending[i] += 1;
                        s.writes[i] = s.writes[i].wrapping_add(1);
                        marked |= self.spec.disk.is_some() && s.log.mark(r);
                    }
                    s.inflight += 1;
                    if marked {
                        s.dirty_gen += 1;
                    }
                    break marked.then_some(s.dirty_gen);
                }
            }
            let _ = ctx.sleep(WAIT).await;
        };
        let _pending = Pending {
            m: self,
            regions: regions.clone(),
        };
        if let Some(g) = want {
            if self.commit_log(ctx, g).await.is_err() && self.keep_log {
                return Err(EIO);
            }
        }
        let legs = self.live(&self.lock());
        if legs.is_empty() {
            return Err(EIO);
        }
        let (off, len) = (io.offset << SECTOR_SHIFT, io.len << SECTOR_SHIFT);
        let fua = io.opf & REQ_FUA != 0;
        let futs = legs
            .iter()
            .map(|&i| {
                let (dev, at) = self.leg_at(i, off);
                match io.op {
                    Op::Write => ctx.write(dev, at, len, Data::Request(io.buf_offset), fua),
                    Op::Discard => ctx.zero_range(dev, at, len, true),
                    _ => ctx.zero_range(dev, at, len, false),
                }
            })
            .collect();
        let results = join_all(futs).await;
        let failed: Vec<usize> = legs
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(&i, _)| i)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        // A discard that a leg refuses fails, but degrades nothing.
        if io.op == Op::Discard {
            return Err(EOPNOTSUPP);
        }
        let mut s = self.lock();
        for &i in &failed {
            self.fail_leg(&mut s, ctx, i, Fail::Write);
        }
        if !self.handle_errors {
            for r in regions.clone() {
                s.log.set_sync(r, false);
            }
            s.resync_from = s.resync_from.min(*regions.start());
        }
        match failed.len() == legs.len() {
            true => Err(EIO),
            false => Ok(()),
        }
    }

    /// The legs to try for a read, best first: in-sync regions from every
    /// leg without errors in turn (then those with read errors), others
    /// from the default leg only.
    fn read_order(&self, io: &Io) -> Vec<usize> {
        let s = self.lock();
        if !self.regions_of(io).all(|r| s.log.in_sync(r)) {
            return [s.default]
                .into_iter()
                .filter(|&i| !s.legs[i].dead)
                .collect();
        }
        let n = self.legs.len();
        let start = self.next_read.fetch_add(1, Relaxed) % n;
        let turn = (0..n).map(|k| (start + k) % n);
        let mut order: Vec<usize> = turn.clone().filter(|&i| s.legs[i].errors == 0).collect();
        order.extend(turn.filter(|&i| s.legs[i].errors != 0 && !s.legs[i].dead));
        order
    }

    async fn read(&self, io: Io, ctx: &dyn IoCtx) -> Result<(), i32> {
        self.load(ctx).await?;
        let (off, len) = (io.offset << SECTOR_SHIFT, io.len << SECTOR_SHIFT);
        for i in self.read_order(&io) {
            let (dev, at) = self.leg_at(i, off);
            match ctx.read(dev, at, len, Data::Request(io.buf_offset)).await {
                Ok(()) => return Ok(()),
                Err(_) => self.fail_leg(&mut self.lock(), ctx, i, Fail::Read),
            }
        }
        Err(EIO)
    }

    /// FLUSH to every live leg; an error only if none took it.
    async fn flush_legs(&self, ctx: &dyn IoCtx) -> Result<(), i32> {
        let legs = self.live(&self.lock());
        let futs = legs.iter().map(|&i| ctx.flush(self.legs[i].dev)).collect();
        let results = join_all(futs).await;
        let mut s = self.lock();
        let mut ok = false;
        for (&i, r) in legs.iter().zip(&results) {
            match r {
                Ok(()) => ok = true,
                Err(_) => self.fail_leg(&mut s, ctx, i, Fail::Flush),
            }
        }
        match ok {
            true => Ok(()),
            false => Err(EIO),
        }
    }

    /// Picks the next out-of-sync region to copy, if there is a source
    /// and somewhere to copy to.
    fn claim(&self) -> Option<u64> {
        let mut s = self.lock();
        let live = self.live(&s);
        if s.legs[s.default].dead || live.len() < 2 {
            return None;
        }
        let r = s.log.next_out_of_sync(s.resync_from)?;
        s.resync_from = r + 1;
        s.recovering = Some(r);
        Some(r)
    }

    /// Copies region `r` from the default leg to the other live legs once
    /// no write is in flight there (new ones wait for the copy).
    async fn recover(&self, ctx: &dyn IoCtx, r: u64) {
        while self.lock().pending[r as usize] > 0 {
            let _ = ctx.sleep(WAIT).await;
        }
        let (off, bytes) = self.region_bytes(r);
        let (src, dests) = {
            let s = self.lock();
            let d: Vec<usize> = self
                .live(&s)
                .into_iter()
                .filter(|&i| i != s.default)
                .collect();
            (s.default, d)
        };
        let (from, from_offset) = self.leg_at(src, off);
        let copy = Copy {
            from,
            from_offset,
            to: dests.iter().map(|&i| self.leg_at(i, off)).collect(),
            len: bytes,
        };
        // No checkpoint inside a region: a suspend waits for the writes
        // held behind it.
        let res = Copier::default()
            .copy(ctx, &copy, &self.progress, None)
            .await;
        let mut s = self.lock();
        s.recovering = None;
        match res {
            Ok(()) => {
                s.log.set_sync(r, true);
                if self.spec.disk.is_some() {
                    let w = s.writes[r as usize];
                    s.idle.push((r, w));
                }
            }
            Err(CopyError::Io { dest, .. }) => {
                let leg = dest.map_or(src, |d| dests[d]);
                self.fail_leg(&mut s, ctx, leg, Fail::Sync);
            }
            Err(CopyError::Stopped) => {}
        }
    }

    /// Clears on the log the regions that went idle, after a flush of the
    /// legs has made their data durable; nothing while a leg is dead (its
    /// return then resyncs exactly what changed without it).
    async fn clean_idle(&self, ctx: &dyn IoCtx) {
        let batch = {
            let mut s = self.lock();
            if self.spec.disk.is_none() || s.idle.is_empty() || s.log.health.failed {
                return;
            }
            if s.legs.iter().any(|h| h.dead) {
                s.idle.clear();
                return;
            }
            std::mem::take(&mut s.idle)
        };
        if self.flush_legs(ctx).await.is_err() {
            return;
        }
        let want = {
            let mut s = self.lock();
            let mut any = false;
            for (r, w) in batch {
                let i = r as usize;
                if s.pending[i] == 0 && s.writes[i] == w && s.log.in_sync(r) && !s.log.is_clean(r) {
                    s.log.clear(r);
                    any = true;
                }
            }
            if any {
                s.dirty_gen += 1;
            }
            any.then_some(s.dirty_gen)
        };
        if let Some(g) = want {
            let _ = self.commit_log(ctx, g).await;
        }
    }

    /// The background job: resync, then keep the log's clean bits current,
    /// until stopped.
    async fn mirrord(&self, ctx: &dyn IoCtx) -> Result<(), i32> {
        self.load(ctx).await?;
        while self.bg.checkpoint(ctx).await.is_ok() {
            if let Some(r) = self.claim() {
                self.recover(ctx, r).await;
                if self.lock().inflight > 0 {
                    let _ = ctx.sleep(THROTTLE).await;
                }
                continue;
            }
            self.clean_idle(ctx).await;
            let _ = ctx.sleep(TICK).await;
        }
        Ok(())
    }
}

impl Mirror {
    fn start_job(&self, ctx: &dyn IoCtx) {
        let inner = self.inner.clone();
        self.inner.bg.start(ctx, move |ctx| {
            Box::pin(async move { inner.mirrord(ctx).await })
        });
    }
}

impl Target for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        out.push(io.served());
    }

    fn flush(&self, segment: usize, out: &mut Vec<Piece>) {
        out.push(flush_as(segment, PieceKind::Serve { offset: 0 }));
    }

    fn serve<'a>(&'a self, io: Io, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        let m = &*self.inner;
        Box::pin(async move {
            match io.op {
                Op::Read => m.read(io, ctx).await,
                Op::Flush => {
                    m.load(ctx).await?;
                    m.flush_legs(ctx).await
                }
                Op::Write | Op::Discard | Op::WriteZeroes => m.write(io, ctx).await,
            }
        })
    }

    fn serves(&self) -> bool {
        true
    }

    fn presuspend<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            self.inner.bg.pause(ctx).await;
            Ok(())
        })
    }

    /// The I/O has drained: the log is brought up to date (`disk_flush`).
    fn postsuspend<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            self.inner.clean_idle(ctx).await;
            Ok(())
        })
    }

    fn resume<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            self.inner.load(ctx).await?;
            match self.inner.bg.running() {
                0 => {
                    self.inner.bg.restart();
                    self.start_job(ctx);
                }
                _ => self.inner.bg.unpause(),
            }
            Ok(())
        })
    }

    fn stop<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            self.inner.bg.stop(ctx).await;
            self.inner.clean_idle(ctx).await;
            Ok(())
        })
    }

    fn table_args(&self, devs: &[String]) -> String {
        let m = &self.inner;
        let mut s = m.spec.table_args(devs);
        s.push_str(&m.legs.len().to_string());
        for l in &m.legs {
            s.push_str(&format!(" {} {}", devs[l.dev], l.offset));
        }
        let n = usize::from(m.handle_errors) + usize::from(m.keep_log);
        if n > 0 {
            s.push_str(&format!(" {n}"));
            if m.handle_errors {
                s.push_str(" handle_errors");
            }
            if m.keep_log {
                s.push_str(" keep_log");
            }
        }
        s
    }

    /// `<#devs> <dev>… <in_sync>/<regions> 1 <health> <log status>`.
    fn status(&self, ctx: &StatusCtx<'_>) -> String {
        let m = &self.inner;
        let s = m.lock();
        let mut out = format!("{} ", m.legs.len());
        for l in &m.legs {
            out.push_str(&ctx.names[l.dev]);
            out.push(' ');
        }
        let health: String = s.legs.iter().map(Health::char).collect();
        format!(
            "{out}{}/{} 1 {health} {}",
            s.log.sync_count(),
            m.spec.regions,
            s.log.status(ctx.names)
        )
    }

    fn extents(&self, segment: usize) -> Vec<Extent> {
        let m = &self.inner;
        let len = m.len;
        let mut out: Vec<Extent> = m
            .legs
            .iter()
            .map(|l| Extent {
                segment,
                dev: l.dev,
                start: l.offset,
                len,
                written: true,
            })
            .collect();
        if let Some(dev) = m.spec.disk {
            out.push(Extent {
                segment,
                dev,
                start: 0,
                len: m.spec.buf_bytes(512) as u64 >> SECTOR_SHIFT,
                written: true,
            });
        }
        out
    }

    fn supports_dax(&self) -> bool {
        false
    }

    fn aligned(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .legs
            .iter()
            .map(|l| ("device offset", l.offset))
            .collect()
    }
}

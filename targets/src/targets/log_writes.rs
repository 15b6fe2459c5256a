//! `log-writes <dev> <log_dev>` (dm-log-writes): I/O goes to `dev`, and
//! every write, discard, flush and FUA is appended, in completion order,
//! to `log_dev` in the kernel's on-media format; `mark <name>` (a message)
//! adds a mark. fstests' `replay-log` replays such a log to any mark.
//!
//! Served on the target interface only: reads are remapped; writes,
//! discards and flushes are served here through the I/O context, and the
//! log is written by whichever request (or message) finds it idle, one
//! entry at a time, so that positions are given out in the order the
//! kernel's log thread gives them.
//!
//! The kernel's order, kept exactly: a completed write waits on the
//! unflushed list until a flush completes, then goes to the log before
//! that flush's entry; FUA writes and marks go to the log at once. The
//! super block (entry count) is written after each FUA or mark entry, and
//! a mark `dm-log-writes-end` is logged when the table goes away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::serve::{Data, IoCtx, IoFuture, IoMem, EOPNOTSUPP};
use crate::target::{
    flush_as, Ctr, CtrResult, DevIdx, Extent, Io, MessageFuture, Op, Piece, PieceKind, StatusCtx,
    Target, TargetType,
};
use crate::{REQ_FUA, SECTOR_SHIFT};

pub const TYPE: TargetType = TargetType {
    name: "log-writes",
    ctr,
};

// The on-media format (dm-log-writes.c, fstests' log-writes.h): all
// little-endian; block 0 the super block, then per entry one header block
// and its data, in blocks of the data device's logical block size.
const LOG_FLUSH_FLAG: u64 = 1 << 0;
const LOG_FUA_FLAG: u64 = 1 << 1;
const LOG_DISCARD_FLAG: u64 = 1 << 2;
const LOG_MARK_FLAG: u64 = 1 << 3;
const LOG_METADATA_FLAG: u64 = 1 << 4;
const WRITE_LOG_VERSION: u64 = 1;
const WRITE_LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
/// The kernel's `REQ_META` bit of `bi_opf`.
const REQ_META: u32 = 1 << 12;
/// `struct log_write_entry`: sector, nr_sectors, flags, data_len.
const ENTRY_BYTES: usize = 32;
/// The mark the kernel's destructor logs.
const END_MARK: &[u8] = b"dm-log-writes-end";

#[derive(Debug)]
struct LogWrites {
    dev: DevIdx,
    log: DevIdx,
    len: u64,
    state: Mutex<LogState>,
    /// Someone is writing entries to the log.
    writing: AtomicBool,
}

/// One entry waiting for its place in the log (`struct pending_block`).
#[derive(Debug)]
struct Block {
    /// In logical blocks of the data device.
    sector: u64,
    nr_sectors: u64,
    flags: u64,
    /// A write's data (`nr_sectors` blocks), or a mark's name.
    data: Option<IoMem>,
    /// Its sequence number, for a message waiting until it is logged.
    seq: u64,
}

#[derive(Debug, Default)]
struct LogState {
    /// Logical block size in bytes (0: not known yet).
    ss: u64,
    /// Next free 512-byte sector of the log, and the log's end.
    next_sector: u64,
    end_sector: u64,
    logged_entries: u64,
    enabled: bool,
    /// Completed writes and discards waiting for a flush.
    unflushed: Vec<Block>,
    /// Entries to write, in order.
    logging: VecDeque<Block>,
    /// Blocks handed out / written (every block gets a number).
    queued: u64,
    done: u64,
}

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    // The kernel ignores arguments past the second.
    if c.args.len() < 2 {
        return Err("Invalid argument count".into());
    }
    let args = c.args;
    let dev = c.device(&args[0]).map_err(|_| "Device lookup failed")?;
    let log = c.device(&args[1]).map_err(|_| "Log device lookup failed")?;
    Ok(Arc::new(LogWrites {
        dev,
        log,
        len: c.len,
        state: Mutex::new(LogState {
            enabled: true,
            ..LogState::default()
        }),
        writing: AtomicBool::new(false),
    }))
}

impl LogWrites {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns the block size and the log's size from the device the
    /// first time (the kernel's constructor does it from its devices).
    fn init(&self, ctx: &dyn IoCtx) -> MutexGuard<'_, LogState> {
        let mut s = self.lock();
        if s.ss == 0 {
            s.ss = u64::from(ctx.block_size());
            s.next_sector = s.ss >> SECTOR_SHIFT;
            s.end_sector = ctx.device_bytes(self.log) >> SECTOR_SHIFT;
        }
        s
    }

    fn block(
        s: &mut LogState,
        sector: u64,
        nr_sectors: u64,
        flags: u64,
        data: Option<IoMem>,
    ) -> Block {
        s.queued += 1;
        Block {
            sector,
            nr_sectors,
            flags,
            data,
            seq: s.queued,
        }
    }

    /// A write, discard or write-zeroes: done on `dev`, then queued for the
    /// log (at once with FUA, else at the next flush).
    async fn serve_write(&self, io: Io, ctx: &dyn IoCtx) -> Result<(), i32> {
        let (off, len) = (io.offset << SECTOR_SHIFT, io.len << SECTOR_SHIFT);
        let (ss, enabled) = {
            let s = self.init(ctx);
            (s.ss, s.enabled)
        };
        let fua = io.opf & REQ_FUA != 0;
        let mut flags = if fua { LOG_FUA_FLAG } else { 0 };
        if io.opf & REQ_META != 0 {
            flags |= LOG_METADATA_FLAG;
        }
        let mut data = None;
        match io.op {
            Op::Write => {
                // The data is copied before the write, as the kernel's map
                // does; where the request's pages cannot be read from here
                // (zero copy without USER_COPY), it is read back after.
                let mut mem = IoMem::new(len as usize);
                let copied = match enabled {
                    true => ctx.copy_from_request(io.buf_offset, &mut mem).await,
                    false => Ok(()),
                };
                let data_at = Data::Request(io.buf_offset);
                ctx.write(self.dev, off, len, data_at, fua).await?;
                if copied == Err(EOPNOTSUPP) {
                    ctx.read(self.dev, off, len, Data::Into(&mut mem)).await?;
                } else {
                    copied?;
                }
                data = Some(mem);
            }
            Op::Discard => {
                flags |= LOG_DISCARD_FLAG;
                ctx.zero_range(self.dev, off, len, true).await?;
            }
            // dm-log-writes takes no WRITE_ZEROES: logged as the write of
            // zeros it stands for, so that a replay gives the same bytes.
            Op::WriteZeroes => {
                ctx.zero_range(self.dev, off, len, false).await?;
                data = Some(IoMem::new(len as usize));
            }
            Op::Read | Op::Flush => return Err(crate::serve::EIO),
        }
        if !enabled {
            return Ok(());
        }
        {
            let mut s = self.lock();
            let b = Self::block(&mut s, off / ss, len / ss, flags, data);
            if fua {
                s.logging.push_back(b);
            } else {
                s.unflushed.push(b);
            }
        }
        self.write_log(ctx).await;
        Ok(())
    }

    /// A flush: the writes completed before it go to the log, then it.
    async fn serve_flush(&self, ctx: &dyn IoCtx) -> Result<(), i32> {
        let spliced = std::mem::take(&mut self.init(ctx).unflushed);
        let r = ctx.flush(self.dev).await;
        {
            let mut s = self.lock();
            if s.enabled {
                s.logging.extend(spliced);
                let b = Self::block(&mut s, 0, 0, LOG_FLUSH_FLAG, None);
                s.logging.push_back(b);
            }
        }
        self.write_log(ctx).await;
        r
    }

    /// Queues a mark (ahead of completed writes not yet flushed, as the
    /// kernel's `log_mark`) and waits until it is in the log.
    async fn mark(&self, name: &[u8], ctx: &dyn IoCtx) -> Result<(), String> {
        let seq = {
            let mut s = self.init(ctx);
            if !s.enabled {
                return Ok(());
            }
            // kstrndup(name, sectorsize - sizeof(entry) - 1)
            let n = name.len().min(s.ss as usize - ENTRY_BYTES - 1);
            let mut mem = IoMem::new(n);
            mem.copy_from_slice(&name[..n]);
            let b = Self::block(&mut s, 0, 0, LOG_MARK_FLAG, Some(mem));
            let seq = b.seq;
            s.logging.push_back(b);
            seq
        };
        self.write_log(ctx).await;
        // Another request may be writing the log: wait for it to get there.
        while self.lock().done < seq {
            let _ = ctx.sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Writes queued entries until none is left, unless someone else is
    /// already doing it (then they will write ours too).
    async fn write_log(&self, ctx: &dyn IoCtx) {
        while !self.writing.swap(true, SeqCst) {
            while let Some((b, sector, nr)) = self.next_entry() {
                let ok = self.write_entry(ctx, &b, sector).await.is_ok()
                    && (b.flags & (LOG_FUA_FLAG | LOG_MARK_FLAG) == 0
                        || self.write_super(ctx, nr).await.is_ok());
                let mut s = self.lock();
                // dm-log-writes: "Error writing log block" ends logging.
                s.enabled &= ok;
                s.done = s.done.max(b.seq);
            }
            self.writing.store(false, SeqCst);
            if self.lock().logging.is_empty() {
                return;
            }
        }
    }

    /// The next entry and its place (log sector, entry count after it);
    /// entries past the log's end disable logging, as in the kernel.
    fn next_entry(&self) -> Option<(Block, u64, u64)> {
        let mut s = self.lock();
        loop {
            let b = s.logging.pop_front()?;
            if !s.enabled {
                s.done = s.done.max(b.seq);
                continue;
            }
            let sector = s.next_sector;
            let per_block = s.ss >> SECTOR_SHIFT;
            if b.flags & LOG_DISCARD_FLAG == 0 {
                s.next_sector += b.nr_sectors * per_block;
            }
            s.next_sector += per_block;
            if s.next_sector >= s.end_sector {
                // "Ran out of space on the logdev"
                s.enabled = false;
                s.done = s.done.max(b.seq);
                continue;
            }
            s.logged_entries += 1;
            return Some((b, sector, s.logged_entries));
        }
    }

    /// The entry's header block (and a mark's name in it), then its data.
    async fn write_entry(&self, ctx: &dyn IoCtx, b: &Block, sector: u64) -> Result<(), i32> {
        let ss = self.lock().ss;
        let mut head = IoMem::new(ss as usize);
        let mark = b.flags == LOG_MARK_FLAG;
        let data_len = match (&b.data, mark) {
            (Some(name), true) => name.len() as u64,
            _ => 0,
        };
        for (i, v) in [b.sector, b.nr_sectors, b.flags, data_len]
            .iter()
            .enumerate()
        {
            head[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        if let (Some(name), true) = (&b.data, mark) {
            head[ENTRY_BYTES..ENTRY_BYTES + name.len()].copy_from_slice(name);
        }
        let at = sector << SECTOR_SHIFT;
        ctx.write(self.log, at, ss, Data::From(&head), false)
            .await?;
        match &b.data {
            Some(data) if !mark && b.flags & LOG_DISCARD_FLAG == 0 => {
                let len = data.len() as u64;
                ctx.write(self.log, at + ss, len, Data::From(data), false)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Block 0: magic, version, entry count, block size (then zeros).
    async fn write_super(&self, ctx: &dyn IoCtx, nr_entries: u64) -> Result<(), i32> {
        let ss = self.lock().ss;
        let mut sb = IoMem::new(ss as usize);
        sb[0..8].copy_from_slice(&WRITE_LOG_MAGIC.to_le_bytes());
        sb[8..16].copy_from_slice(&WRITE_LOG_VERSION.to_le_bytes());
        sb[16..24].copy_from_slice(&nr_entries.to_le_bytes());
        sb[24..28].copy_from_slice(&(ss as u32).to_le_bytes());
        ctx.write(self.log, 0, ss, Data::From(&sb), false).await
    }
}

impl Target for LogWrites {
    fn name(&self) -> &'static str {
        "log-writes"
    }

    /// Reads are remapped (nothing is logged); everything else is served.
    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        out.push(if io.op == Op::Read {
            io.piece(PieceKind::Io {
                dev: self.dev,
                dev_offset: io.offset << SECTOR_SHIFT,
            })
        } else {
            io.served()
        });
    }

    fn flush(&self, segment: usize, out: &mut Vec<Piece>) {
        out.push(flush_as(segment, PieceKind::Serve { offset: 0 }));
    }

    fn serve<'a>(&'a self, io: Io, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            match io.op {
                Op::Flush => self.serve_flush(ctx).await,
                _ => self.serve_write(io, ctx).await,
            }
        })
    }

    fn serves(&self) -> bool {
        true
    }

    /// `mark <name>`, as `dmsetup message DEV 0 mark NAME`.
    fn message<'a>(&'a self, argv: &'a [String], ctx: &'a dyn IoCtx) -> MessageFuture<'a> {
        Box::pin(async move {
            if argv.len() != 2 {
                return Err(format!(
                    "Invalid log-writes message arguments, expect 2 arguments, got {}",
                    argv.len()
                ));
            }
            if !argv[0].eq_ignore_ascii_case("mark") {
                return Err(format!(
                    "Unrecognised log writes target message received: {}",
                    argv[0]
                ));
            }
            self.mark(argv[1].as_bytes(), ctx).await?;
            Ok(String::new())
        })
    }

    fn resume<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        drop(self.init(ctx));
        crate::serve::ready(Ok(()))
    }

    /// The destructor's last entries: the unflushed writes, then the end
    /// mark (which writes the super block).
    fn stop<'a>(&'a self, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            {
                let mut s = self.init(ctx);
                let rest = std::mem::take(&mut s.unflushed);
                s.logging.extend(rest);
            }
            self.mark(END_MARK, ctx)
                .await
                .map_err(|_| crate::serve::EIO)
        })
    }

    fn table_args(&self, devs: &[String]) -> String {
        format!("{} {}", devs[self.dev], devs[self.log])
    }

    /// `<logged entries> <highest allocated sector>[ logging_disabled]`.
    fn status(&self, _ctx: &StatusCtx<'_>) -> String {
        let s = self.lock();
        let next = if s.ss == 0 { 1 } else { s.next_sector };
        let mut out = format!("{} {}", s.logged_entries, next - 1);
        if !s.enabled {
            out.push_str(" logging_disabled");
        }
        out
    }

    /// The data device's range, and the log's first block (its size is
    /// the log's own business).
    fn extents(&self, segment: usize) -> Vec<Extent> {
        vec![
            Extent {
                segment,
                dev: self.dev,
                start: 0,
                len: self.len,
                written: true,
            },
            Extent {
                segment,
                dev: self.log,
                start: 0,
                len: 8,
                written: true,
            },
        ]
    }

    fn supports_dax(&self) -> bool {
        false
    }
}

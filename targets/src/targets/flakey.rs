//! `flakey <dev> <offset> <up interval> <down interval> [<#features>
//! [<feature arguments>]]` (dm-flakey): maps like `linear` for `up`
//! seconds, then misbehaves for `down` seconds, and so on, counted from
//! the table's construction. Features: `error_reads`, `drop_writes`,
//! `error_writes`, `corrupt_bio_byte <Nth_byte> <r|w> <value> <flags>`,
//! `random_read_corrupt <p>`, `random_write_corrupt <p>` (p in units of
//! 10⁻⁹). With none, reads and writes both fail while down.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::args::{device_sector, read_arg};
use crate::serve::{Data, IoCtx, IoFuture};
use crate::target::{
    flush_piece, Ctr, CtrResult, DevIdx, Extent, Io, Op, Piece, PieceKind, Target, TargetType,
};

pub const TYPE: TargetType = TargetType {
    name: "flakey",
    ctr,
};

/// Random corruption probabilities are out of this.
const PROBABILITY_BASE: u32 = 1_000_000_000;

#[derive(Debug, Default)]
struct Features {
    error_reads: bool,
    drop_writes: bool,
    error_writes: bool,
    /// `corrupt_bio_byte`: (1-based byte, write?, value, bi_opf flags).
    corrupt: Option<(u32, bool, u8, u32)>,
    random_read: u32,
    random_write: u32,
}

#[derive(Debug)]
struct Flakey {
    dev: DevIdx,
    offset: u64,
    len: u64,
    up: u32,
    down: u32,
    f: Features,
    start: Instant,
    /// xorshift state for the random corruptions.
    rng: AtomicU64,
}

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    let args = c.args;
    if args.len() < 4 {
        return Err("Invalid argument count".into());
    }
    let offset = device_sector(&args[1])?;
    let up = read_arg(args.get(2), 0, u32::MAX, "Invalid up interval")?;
    let down = read_arg(args.get(3), 0, u32::MAX, "Invalid down interval")?;
    if up == 0 && down == 0 {
        return Err("Total (up + down) interval is zero".into());
    }
    if up.checked_add(down).is_none() {
        return Err("Interval overflow".into());
    }
    let f = features(&args[4..])?;
    let dev = c.device(&args[0])?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    Ok(Arc::new(Flakey {
        dev,
        offset,
        len: c.len,
        up,
        down,
        f,
        start: Instant::now(),
        rng: AtomicU64::new(seed),
    }))
}

/// dm-flakey's `parse_features`, checks and messages in its order.
fn features(args: &[String]) -> Result<Features, String> {
    let mut f = Features::default();
    let mut it = args.iter();
    let Some(count) = it.next() else {
        return Ok(defaults(f));
    };
    // dm_read_arg_group: the count must not exceed the words left.
    let mut argc = read_arg(Some(count), 0, 11, "Invalid number of feature args")? as usize;
    if argc > it.len() {
        return Err("Invalid number of feature args".into());
    }
    while argc > 0 {
        let name = it.next().ok_or("Insufficient feature arguments")?;
        argc -= 1;
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "error_reads" => {
                if std::mem::replace(&mut f.error_reads, true) {
                    return Err("Feature error_reads duplicated".into());
                }
            }
            "drop_writes" => {
                if std::mem::replace(&mut f.drop_writes, true) {
                    return Err("Feature drop_writes duplicated".into());
                }
                if f.error_writes {
                    return Err("Feature drop_writes conflicts with feature error_writes".into());
                }
            }
            "error_writes" => {
                if std::mem::replace(&mut f.error_writes, true) {
                    return Err("Feature error_writes duplicated".into());
                }
                if f.drop_writes {
                    return Err("Feature error_writes conflicts with feature drop_writes".into());
                }
            }
            "corrupt_bio_byte" => {
                if f.corrupt.is_some() {
                    return Err("Feature corrupt_bio_byte duplicated".into());
                }
                if argc < 4 {
                    return Err("Feature corrupt_bio_byte requires 4 parameters".into());
                }
                argc -= 4;
                let nth = read_arg(it.next(), 1, u32::MAX, "Invalid corrupt bio byte")?;
                let write = match it.next().map(|s| s.to_ascii_lowercase()).as_deref() {
                    Some("w") => true,
                    Some("r") => false,
                    _ => return Err("Invalid corrupt bio direction (r or w)".into()),
                };
                let value = read_arg(
                    it.next(),
                    0,
                    255,
                    "Invalid corrupt value to write into bio byte (0-255)",
                )?;
                let flags = read_arg(it.next(), 0, u32::MAX, "Invalid corrupt bio flags mask")?;
                f.corrupt = Some((nth, write, value as u8, flags));
            }
            "random_read_corrupt" | "random_write_corrupt" => {
                let slot = if lower == "random_read_corrupt" {
                    &mut f.random_read
                } else {
                    &mut f.random_write
                };
                // 0 counts as not given (the kernel tests the value).
                if *slot > 0 {
                    return Err(format!("Feature {lower} duplicated"));
                }
                if argc == 0 {
                    return Err(format!("Feature {lower} requires a parameter"));
                }
                argc -= 1;
                *slot = read_arg(
                    it.next(),
                    0,
                    PROBABILITY_BASE,
                    "Invalid random corrupt argument",
                )?;
            }
            _ => return Err("Unrecognised flakey feature requested".into()),
        }
    }
    let corrupt_w = matches!(f.corrupt, Some((_, true, ..)));
    let corrupt_r = matches!(f.corrupt, Some((_, false, ..)));
    if f.drop_writes && (corrupt_w || f.random_write > 0) {
        return Err("drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set".into());
    }
    if f.error_writes && (corrupt_w || f.random_write > 0) {
        return Err("error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set".into());
    }
    if f.error_reads && (corrupt_r || f.random_read > 0) {
        return Err("error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the READ flag set".into());
    }
    Ok(defaults(f))
}

/// No behaviour asked for: reads and writes both fail while down.
fn defaults(mut f: Features) -> Features {
    let any = f.error_reads
        || f.drop_writes
        || f.error_writes
        || f.corrupt.is_some()
        || f.random_read > 0
        || f.random_write > 0;
    if !any {
        f.error_reads = true;
        f.error_writes = true;
    }
    f
}

impl Flakey {
    /// `(jiffies - start_time) / HZ`, in the down part of the cycle.
    fn is_down(&self) -> bool {
        let elapsed = self.start.elapsed().as_secs();
        elapsed % (u64::from(self.up) + u64::from(self.down)) >= u64::from(self.up)
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Relaxed);
        x
    }

    fn hit(&self, probability: u32) -> bool {
        probability > 0 && ((self.random() % u64::from(PROBABILITY_BASE)) as u32) < probability
    }

    /// The corruptions (byte offset in the part, value) of a part of
    /// `len` bytes in direction `write` while down: `corrupt_bio_byte`
    /// where the flags match, and a random one by its probability.
    fn corruptions(&self, opf: u32, len: u64, write: bool) -> Vec<(u64, u8)> {
        let mut out = Vec::with_capacity(2);
        if let Some((nth, w, value, flags)) = self.f.corrupt {
            let at = u64::from(nth) - 1;
            if w == write && opf & flags == flags && at < len {
                out.push((at, value));
            }
        }
        let prob = if write {
            self.f.random_write
        } else {
            self.f.random_read
        };
        if self.hit(prob) {
            let r = self.random();
            out.push(((r >> 8) % len, r as u8));
        }
        out
    }

    /// Whether a part in direction `write` may be corrupted while down.
    fn may_corrupt(&self, write: bool) -> bool {
        let random = if write {
            self.f.random_write
        } else {
            self.f.random_read
        };
        random > 0 || matches!(self.f.corrupt, Some((_, w, ..)) if w == write)
    }

    fn dev_offset(&self, io: &Io) -> u64 {
        (self.offset + io.offset) << crate::SECTOR_SHIFT
    }
}

impl Target for Flakey {
    fn name(&self) -> &'static str {
        "flakey"
    }

    /// Up: a remap. Down: reads and writes fail or are dropped as the
    /// features say, or, where they may be corrupted, are served here.
    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        let mut p = io.piece(PieceKind::Io {
            dev: self.dev,
            dev_offset: self.dev_offset(io),
        });
        if self.is_down() {
            if io.op == Op::Read {
                if self.f.error_reads {
                    p.kind = PieceKind::Error;
                } else if self.may_corrupt(false) {
                    p = io.served();
                }
            } else if self.f.drop_writes {
                p.kind = PieceKind::Drop;
            } else if self.f.error_writes {
                p.kind = PieceKind::Error;
            } else if io.op == Op::Write && self.may_corrupt(true) {
                p = io.served();
            }
        }
        out.push(p);
    }

    /// A read or write that may be corrupted: done as linear would, then
    /// one byte replaced: of a read in the caller's buffer, of a write on
    /// the device (the caller's data stays intact).
    fn serve<'a>(&'a self, io: Io, ctx: &'a dyn IoCtx) -> IoFuture<'a> {
        Box::pin(async move {
            let (off, len) = (self.dev_offset(&io), io.len << crate::SECTOR_SHIFT);
            let write = io.op == Op::Write;
            let data = Data::Request(io.buf_offset);
            if write {
                let fua = io.opf & crate::REQ_FUA != 0;
                ctx.write(self.dev, off, len, data, fua).await?;
            } else {
                ctx.read(self.dev, off, len, data).await?;
            }
            for (at, value) in self.corruptions(io.opf, len, write) {
                if write {
                    ctx.set_device_byte(self.dev, off + at, value).await?;
                } else {
                    ctx.set_request_byte(io.buf_offset + at, value).await?;
                }
            }
            Ok(())
        })
    }

    fn serves(&self) -> bool {
        self.may_corrupt(false) || self.may_corrupt(true)
    }

    /// A flush is a write without data: dropped or failed like writes.
    fn flush(&self, segment: usize, out: &mut Vec<Piece>) {
        let mut p = flush_piece(segment, self.dev);
        if self.is_down() {
            if self.f.drop_writes {
                p.kind = PieceKind::Drop;
            } else if self.f.error_writes {
                p.kind = PieceKind::Error;
            }
        }
        out.push(p);
    }

    fn table_args(&self, devs: &[String]) -> String {
        let f = &self.f;
        let mut feats: Vec<String> = Vec::new();
        if f.error_reads {
            feats.push("error_reads".into());
        }
        if f.drop_writes {
            feats.push("drop_writes".into());
        } else if f.error_writes {
            feats.push("error_writes".into());
        }
        if let Some((nth, w, value, flags)) = f.corrupt {
            let dir = if w { 'w' } else { 'r' };
            feats.push(format!("corrupt_bio_byte {nth} {dir} {value} {flags}"));
        }
        if f.random_read > 0 {
            feats.push(format!("random_read_corrupt {}", f.random_read));
        }
        if f.random_write > 0 {
            feats.push(format!("random_write_corrupt {}", f.random_write));
        }
        let count = usize::from(f.error_reads)
            + usize::from(f.drop_writes)
            + usize::from(f.error_writes)
            + 5 * usize::from(f.corrupt.is_some())
            + 2 * usize::from(f.random_read > 0)
            + 2 * usize::from(f.random_write > 0);
        let mut s = format!(
            "{} {} {} {} {count}",
            devs[self.dev], self.offset, self.up, self.down
        );
        for x in feats {
            s.push(' ');
            s.push_str(&x);
        }
        s
    }

    fn extents(&self, segment: usize) -> Vec<Extent> {
        vec![Extent {
            segment,
            dev: self.dev,
            start: self.offset,
            len: self.len,
            written: true,
        }]
    }

    fn supports_dax(&self) -> bool {
        false
    }

    fn aligned(&self) -> Vec<(&'static str, u64)> {
        vec![("device offset", self.offset)]
    }
}

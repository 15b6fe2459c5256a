//! `striped <#stripes> <chunk_size> (<dev> <offset>)+`: chunk `c` of the
//! segment lives on stripe `c % #stripes` (dm-stripe).

use std::sync::Arc;

use crate::args::{digits, kstrtouint};
use crate::target::{
    Ctr, CtrResult, DevIdx, Extent, Io, Piece, PieceKind, StatusCtx, Target, TargetType,
};
use crate::SECTOR_SHIFT;

pub const TYPE: TargetType = TargetType {
    name: "striped",
    ctr,
};

#[derive(Debug)]
struct Striped {
    /// Sectors per chunk.
    chunk: u64,
    stripes: Vec<(DevIdx, u64)>,
    /// Sectors of each stripe the segment uses.
    width: u64,
}

/// dm-stripe's constructor, checks in the kernel's order.
fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    let (args, len) = (c.args, c.len);
    if args.len() < 2 {
        return Err(format!(
            "invalid argument count {}: expected at least 2 (<#stripes> <chunk_size> (<dev> <offset>)+)",
            args.len()
        ));
    }
    let stripes = kstrtouint(&args[0]).filter(|&n| n > 0).ok_or_else(|| {
        format!(
            "invalid stripe count {:?}: expected a number from 1 to 4294967295",
            args[0]
        )
    })?;
    let chunk = kstrtouint(&args[1]).filter(|&n| n > 0).ok_or_else(|| {
        format!(
            "invalid chunk_size {:?}: expected a number of sectors from 1 to 4294967295",
            args[1]
        )
    })?;
    let (n, chunk) = (u64::from(stripes), u64::from(chunk));
    if !len.is_multiple_of(n) {
        return Err(format!(
            "target length {len} not divisible by number of stripes {stripes}"
        ));
    }
    let width = len / n;
    if !width.is_multiple_of(chunk) {
        return Err(format!("target length not divisible by chunk size: {len} sectors over {stripes} stripes is {width} sectors per stripe, not a multiple of chunk {chunk}"));
    }
    let expected = 2 * stripes as usize;
    if args.len() - 2 != expected {
        return Err(format!("not enough destinations specified: {stripes} stripes need {expected} arguments after the chunk size, got {}", args.len() - 2));
    }
    let mut out = Vec::with_capacity(stripes as usize);
    for pair in args[2..].chunks(2) {
        let offset =
            digits(&pair[1]).ok_or_else(|| format!("invalid stripe offset {:?}", pair[1]))?;
        out.push((c.device(&pair[0])?, offset));
    }
    Ok(Arc::new(Striped {
        chunk,
        stripes: out,
        width,
    }))
}

impl Target for Striped {
    fn name(&self) -> &'static str {
        "striped"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        let n = self.stripes.len() as u64;
        let end = io.offset + io.len;
        let mut at = io.offset;
        while at < end {
            // dm-stripe's stripe_map_sector.
            let (chunk_nr, in_chunk) = (at / self.chunk, at % self.chunk);
            let (dev, offset) = self.stripes[(chunk_nr % n) as usize];
            let dev_sector = (chunk_nr / n) * self.chunk + in_chunk + offset;
            let take = (self.chunk - in_chunk).min(end - at);
            let mut p = io.piece(PieceKind::Io {
                dev,
                dev_offset: dev_sector << SECTOR_SHIFT,
            });
            p.buf_offset += (at - io.offset) << SECTOR_SHIFT;
            p.len = take << SECTOR_SHIFT;
            out.push(p);
            at += take;
        }
    }

    fn table_args(&self, devs: &[String]) -> String {
        let mut s = format!("{} {}", self.stripes.len(), self.chunk);
        for (dev, offset) in &self.stripes {
            s.push_str(&format!(" {} {offset}", devs[*dev]));
        }
        s
    }

    /// dm-stripe: `<#stripes> <dev>... 1 <A|D per stripe>`.
    fn status(&self, ctx: &StatusCtx<'_>) -> String {
        let mut s = format!("{}", self.stripes.len());
        for (dev, _) in &self.stripes {
            s.push_str(&format!(" {}", ctx.names[*dev]));
        }
        s.push_str(" 1 ");
        for (dev, _) in &self.stripes {
            s.push(if ctx.dev_errors[*dev] == 0 { 'A' } else { 'D' });
        }
        s
    }

    fn extents(&self, segment: usize) -> Vec<Extent> {
        self.stripes
            .iter()
            .map(|&(dev, start)| Extent {
                segment,
                dev,
                start,
                len: self.width,
                written: true,
            })
            .collect()
    }

    fn io_hints(&self) -> Option<(u64, u64)> {
        Some((self.chunk, self.chunk * self.stripes.len() as u64))
    }

    fn supports_dax(&self) -> bool {
        true
    }

    fn aligned(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![("chunk size", self.chunk)];
        v.extend(self.stripes.iter().map(|&(_, o)| ("stripe offset", o)));
        v
    }
}

//! `linear <dev> <offset>`: sectors map 1:1 onto `dev` from `offset`
//! (dm-linear).

use std::sync::Arc;

use crate::args::device_sector;
use crate::target::{Ctr, CtrResult, DevIdx, Extent, Io, Piece, PieceKind, Target, TargetType};

pub const TYPE: TargetType = TargetType {
    name: "linear",
    ctr,
};

#[derive(Debug)]
struct Linear {
    dev: DevIdx,
    offset: u64,
    len: u64,
}

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    if c.args.len() != 2 {
        return Err(format!(
            "invalid argument count {}: expected 2 (<dev> <offset>)",
            c.args.len()
        ));
    }
    let offset = device_sector(&c.args[1])?;
    let dev = c.device(&c.args[0])?;
    Ok(Arc::new(Linear {
        dev,
        offset,
        len: c.len,
    }))
}

impl Target for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        out.push(io.piece(PieceKind::Io {
            dev: self.dev,
            dev_offset: (self.offset + io.offset) << crate::SECTOR_SHIFT,
        }));
    }

    fn table_args(&self, devs: &[String]) -> String {
        format!("{} {}", devs[self.dev], self.offset)
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
        true
    }

    fn aligned(&self) -> Vec<(&'static str, u64)> {
        vec![("device offset", self.offset)]
    }
}

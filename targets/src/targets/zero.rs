//! `zero`: reads return zeros, writes are discarded (dm-zero). It has no
//! `direct_access`, so a table with a zero segment cannot pass DAX through.

use std::sync::Arc;

use crate::target::{Ctr, CtrResult, Extent, Io, Piece, PieceKind, Target, TargetType};

pub const TYPE: TargetType = TargetType { name: "zero", ctr };

#[derive(Debug)]
struct Zero;

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    super::error::no_args(c)?;
    Ok(Arc::new(Zero))
}

impl Target for Zero {
    fn name(&self) -> &'static str {
        "zero"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        out.push(io.piece(PieceKind::Zero));
    }

    fn flush(&self, _segment: usize, _out: &mut Vec<Piece>) {}

    fn table_args(&self, _devs: &[String]) -> String {
        String::new()
    }

    fn extents(&self, _segment: usize) -> Vec<Extent> {
        Vec::new()
    }

    fn supports_dax(&self) -> bool {
        false
    }
}

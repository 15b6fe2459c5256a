//! `error`: every I/O fails with EIO (dm-error). Flushes are not sent to
//! it (it sets no `num_flush_bios`), and it does implement direct access
//! (which fails), so it does not stop a table from being DAX-capable.

use std::sync::Arc;

use crate::target::{Ctr, CtrResult, Extent, Io, Piece, PieceKind, Target, TargetType};

pub const TYPE: TargetType = TargetType { name: "error", ctr };

#[derive(Debug)]
struct Error;

fn ctr(c: &mut Ctr<'_>) -> CtrResult {
    no_args(c)?;
    Ok(Arc::new(Error))
}

/// Targets that take no arguments refuse any.
pub(super) fn no_args(c: &Ctr<'_>) -> Result<(), String> {
    if c.args.is_empty() {
        Ok(())
    } else {
        Err(format!("takes no arguments, got {}", c.args.len()))
    }
}

impl Target for Error {
    fn name(&self) -> &'static str {
        "error"
    }

    fn map(&self, io: &Io, out: &mut Vec<Piece>) {
        out.push(io.piece(PieceKind::Error));
    }

    fn flush(&self, _segment: usize, _out: &mut Vec<Piece>) {}

    fn table_args(&self, _devs: &[String]) -> String {
        String::new()
    }

    fn extents(&self, _segment: usize) -> Vec<Extent> {
        Vec::new()
    }

    fn supports_dax(&self) -> bool {
        true
    }
}

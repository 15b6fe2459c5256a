//! The table parser and everything a parsed table answers without I/O.
//!
//! Input: table text, optionally followed by a NUL and bytes that describe
//! the backing devices (size, read-only, identity) and a few requests. A
//! table that parses must print as text that parses to the same table,
//! validate against those in-memory devices without panicking, and map
//! any request inside the device onto pieces that cover it exactly.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rdm_targets::{DeviceInfo, Op, Table};

/// Reads numbers off the tail of the input; zeros once it runs out.
struct Facts<'a>(&'a [u8]);

impl Facts<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| v << 8 | u64::from(self.u8()))
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, facts) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let table = match Table::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };

    // Printing and parsing again gives the same table, printed the same.
    let printed = table.to_string();
    let again = Table::parse(&printed)
        .unwrap_or_else(|e| panic!("the printed table does not parse: {e}\n{printed}"));
    assert_eq!(again.to_string(), printed);
    assert_eq!(again.devices(), table.devices());
    assert_eq!(again.total_sectors(), table.total_sectors());
    assert_eq!(again.segments().len(), table.segments().len());
    assert_eq!(again.extents(), table.extents());

    // What the daemon does before it changes directory.
    let moved = table.rewrite_paths(|p| Path::new("/fuzz/dir").join(p));
    assert_eq!(moved.total_sectors(), table.total_sectors());

    // Validation against in-memory devices.
    let mut f = Facts(facts);
    let infos: Vec<DeviceInfo> = (0..table.devices().len() as u64)
        .map(|i| {
            let flags = f.u8();
            let size = f.u64();
            DeviceInfo {
                size_bytes: if size == 0 { u64::MAX } else { size },
                read_only: flags & 1 != 0,
                // Some devices are one file reached by two paths.
                identity: if flags & 2 != 0 {
                    (0, u64::from(flags >> 2 & 3))
                } else {
                    (1, i)
                },
            }
        })
        .collect();
    for writable in [false, true] {
        if let Err(e) = table.check_devices(&infos, writable) {
            let _ = e.to_string();
        }
    }
    for bs in [512, 4096, 1 << (f.u8() % 32)] {
        if let Err(e) = table.check_block_size(bs) {
            let _ = e.to_string();
        }
    }
    let _ = table.status_lines(&vec![f.u64(); table.devices().len()]);
    let _ = table.io_hints();
    let _ = table.supports_dax(&vec![f.u8() & 1 != 0; table.devices().len()]);

    // Mapping: pieces cover a request inside the device exactly, in order.
    let total = table.total_sectors();
    let mut out = Vec::new();
    table.flush(&mut out);
    for _ in 0..4 {
        let op = [Op::Read, Op::Write, Op::Discard, Op::WriteZeroes][usize::from(f.u8() % 4)];
        let opf = op.req_op() | u32::from(f.u8()) << 8;
        let sector = f.u64() % (total + 1);
        let n = (f.u64() % (total - sector + 1)).min(2048);
        out.clear();
        table
            .map(op, opf, sector, n, &mut out)
            .expect("inside the device");
        let mut at = 0;
        for p in &out {
            assert_eq!(p.buf_offset, at, "pieces follow each other: {out:?}");
            at += p.len;
        }
        assert_eq!(at, n << 9, "pieces cover the request: {out:?}");
        out.clear();
        table
            .map_range(op, opf, sector, n, &mut out)
            .expect("inside the device");
        assert_eq!(out.iter().map(|p| p.len).sum::<u64>(), n << 9);
    }
    assert!(table.map(Op::Read, 0, total, 1, &mut out).is_err());
    assert!(table.map(Op::Read, 0, u64::MAX, 2, &mut out).is_err());
});

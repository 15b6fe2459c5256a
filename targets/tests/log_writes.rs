//! `log-writes` on the in-memory model: the table, and the log it writes,
//! read back field by field in the kernel's on-media format and replayed.

mod model;

use model::{block_on, MemCtx};
use rdm_targets::{Op, StatusCtx, Table};

const MAGIC: u64 = 0x006a_7366_7773_6872;

fn le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One request through the table on the model.
fn io(t: &Table, ctx: &MemCtx, op: Op, opf: u32, sector: u64, nr: u64) {
    model::request(t, ctx, op, opf, sector, nr).unwrap();
}

fn message(t: &Table, ctx: &MemCtx, words: &[&str]) -> Result<String, String> {
    let argv: Vec<String> = words.iter().map(|s| s.to_string()).collect();
    block_on(t.segments()[0].target.message(&argv, ctx))
}

/// (sector, nr_sectors, flags, data or mark name) of every entry.
type Entry = (u64, u64, u64, Vec<u8>);

fn parse_log(log: &[u8]) -> (u64, Vec<Entry>) {
    assert_eq!(le(log, 0), MAGIC);
    assert_eq!(le(log, 8), 1);
    let n = le(log, 16);
    let ss = u32::from_le_bytes(log[24..28].try_into().unwrap()) as usize;
    assert!(
        log[28..ss].iter().all(|&b| b == 0),
        "the super's padding is zero"
    );
    let mut at = ss;
    let mut out = Vec::new();
    for _ in 0..n {
        let h = &log[at..at + ss];
        let (sector, nr, flags, data_len) = (le(h, 0), le(h, 8), le(h, 16), le(h, 24));
        at += ss;
        let data = if flags == 8 {
            let name = h[32..32 + data_len as usize].to_vec();
            assert!(h[32 + data_len as usize..].iter().all(|&b| b == 0));
            name
        } else {
            assert!(h[32..].iter().all(|&b| b == 0), "zero padding");
            if flags & 4 != 0 {
                Vec::new()
            } else {
                let d = log[at..at + nr as usize * ss].to_vec();
                at += nr as usize * ss;
                d
            }
        };
        out.push((sector, nr, flags, data));
    }
    (n, out)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn table_and_refusals_are_the_kernels() {
    let t = Table::parse("0 64 log-writes /d /l").unwrap();
    assert_eq!(t.to_string(), "0 64 log-writes /d /l\n");
    assert_eq!(t.devices().len(), 2);
    // Extra arguments are ignored, as in the kernel.
    Table::parse("0 64 log-writes /d /l extra").unwrap();
    let e = Table::parse("0 64 log-writes /d")
        .unwrap_err()
        .kind
        .to_string();
    assert!(e.contains("Invalid argument count"), "{e}");
    let ctx = MemCtx::new(&[64 * 512, 64 * 512], vec![]);
    assert_eq!(
        message(&t, &ctx, &["mark"]).unwrap_err(),
        "Invalid log-writes message arguments, expect 2 arguments, got 1"
    );
    assert_eq!(
        message(&t, &ctx, &["flush", "x"]).unwrap_err(),
        "Unrecognised log writes target message received: flush"
    );
}

#[test]
fn the_log_holds_writes_in_the_kernels_order_and_format() {
    let t = Table::parse("0 64 log-writes /d /l").unwrap();
    let target = &t.segments()[0].target;
    let ctx = MemCtx::new(&[64 * 512, 256 * 512], vec![]);
    let names = ["/d".to_string(), "/l".to_string()];
    let sctx = StatusCtx {
        names: &names,
        dev_errors: &[0, 0],
    };
    block_on(target.resume(&ctx)).unwrap();
    assert_eq!(target.status(&sctx), "0 0");
    // Two writes, a flush, a mark, a FUA write, a discard, an unflushed
    // write, then the table goes away.
    *ctx.req.borrow_mut() = pattern(1, 4096);
    io(&t, &ctx, Op::Write, 1, 0, 8);
    *ctx.req.borrow_mut() = pattern(2, 1024);
    io(&t, &ctx, Op::Write, 1, 16, 2);
    io(&t, &ctx, Op::Flush, 2, 0, 0);
    // A read is only remapped: nothing logged.
    *ctx.req.borrow_mut() = vec![0; 4096];
    io(&t, &ctx, Op::Read, 0, 0, 8);
    assert_eq!(*ctx.req.borrow(), pattern(1, 4096));
    message(&t, &ctx, &["MARK", "one"]).unwrap();
    *ctx.req.borrow_mut() = pattern(3, 512);
    io(&t, &ctx, Op::Write, 1 | 1 << 17, 4, 1);
    io(&t, &ctx, Op::Discard, 3, 32, 8);
    *ctx.req.borrow_mut() = pattern(4, 512);
    io(&t, &ctx, Op::Write, 1, 40, 1);
    // Not flushed: a mark goes ahead of it.
    message(&t, &ctx, &["mark", "two"]).unwrap();
    block_on(target.stop(&ctx)).unwrap();
    let (n, entries) = parse_log(&ctx.dev(1));
    let got: Vec<(u64, u64, u64, Vec<u8>)> = entries;
    let want: Vec<Entry> = vec![
        (0, 8, 0, pattern(1, 4096)),
        (16, 2, 0, pattern(2, 1024)),
        (0, 0, 1, vec![]),
        (0, 0, 8, b"one".to_vec()),
        (4, 1, 2, pattern(3, 512)),
        (0, 0, 8, b"two".to_vec()),
        (32, 8, 4, vec![]),
        (40, 1, 0, pattern(4, 512)),
        (0, 0, 8, b"dm-log-writes-end".to_vec()),
    ];
    assert_eq!(n, 9);
    assert_eq!(got, want);
    // Status: entries, and the highest log sector given out.
    let used = 1 + (1 + 8) + (1 + 2) + 1 + 1 + (1 + 1) + 1 + 1 + (1 + 1) + 1;
    assert_eq!(target.status(&sctx), format!("9 {}", used - 1));
    // The data device holds what a replay of the log gives.
    let mut replay = vec![0u8; 64 * 512];
    for (sector, nr, flags, data) in &want {
        let r = *sector as usize * 512..(*sector + *nr) as usize * 512;
        if flags & 4 != 0 {
            replay[r].fill(0);
        } else if flags & 8 == 0 && *nr > 0 {
            replay[r].copy_from_slice(data);
        }
    }
    assert_eq!(ctx.dev(0), replay);
}

#[test]
fn data_is_read_back_where_the_request_cannot_be_copied() {
    let t = Table::parse("0 64 log-writes /d /l").unwrap();
    let mut ctx = MemCtx::new(&[64 * 512, 64 * 512], pattern(9, 4096));
    ctx.copyable = false;
    io(&t, &ctx, Op::Write, 1 | 1 << 17, 8, 8);
    let (_, e) = parse_log(&ctx.dev(1));
    assert_eq!(e, vec![(8, 8, 2, pattern(9, 4096))]);
}

#[test]
fn logging_stops_when_the_log_is_full() {
    let t = Table::parse("0 64 log-writes /d /l").unwrap();
    let target = &t.segments()[0].target;
    // Room for the super and one 8-sector write (the last sector is
    // never used, as in the kernel).
    let ctx = MemCtx::new(&[64 * 512, 11 * 512], pattern(5, 4096));
    io(&t, &ctx, Op::Write, 1 | 1 << 17, 0, 8);
    io(&t, &ctx, Op::Write, 1 | 1 << 17, 8, 8);
    let names = ["/d".to_string(), "/l".to_string()];
    let sctx = StatusCtx {
        names: &names,
        dev_errors: &[0, 0],
    };
    assert!(target.status(&sctx).ends_with(" logging_disabled"));
    // Writes still reach the data device.
    assert_eq!(&ctx.dev(0)[4096..8192], &pattern(5, 4096)[..]);
    let (n, _) = parse_log(&ctx.dev(1));
    assert_eq!(n, 1);
}

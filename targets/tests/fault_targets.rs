//! `flakey` and `delay`: their tables (the kernel's syntax, checks and
//! messages, printed back as `dmsetup table` does) and their maps.

mod model;

use model::{block_on, poll_once, MemCtx};
use rdm_targets::{DeviceInfo, Op, Piece, PieceKind, StatusCtx, Table};

fn msg(text: &str) -> String {
    Table::parse(text)
        .expect_err("table should be refused")
        .kind
        .to_string()
}

fn map(t: &Table, op: Op, opf: u32, sector: u64, nr: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    t.map(op, opf, sector, nr, &mut out).unwrap();
    out
}

fn io(dev: usize, byte: u64) -> PieceKind {
    PieceKind::Io {
        dev,
        dev_offset: byte,
    }
}

#[test]
fn flakey_table_syntax_and_defaults() {
    // No features: reads and writes fail while down, and the table says so.
    let t = Table::parse("0 8 flakey /a 16 5 5").unwrap();
    assert_eq!(
        t.to_string(),
        "0 8 flakey /a 16 5 5 2 error_reads error_writes\n"
    );
    let t = Table::parse("0 8 flakey /a 0 5 5 0").unwrap();
    assert_eq!(
        t.to_string(),
        "0 8 flakey /a 0 5 5 2 error_reads error_writes\n"
    );
    // Features print in the kernel's order with its count (5 per
    // corrupt_bio_byte, 2 per random corruption), names case-insensitive.
    for (features, want) in [
        (
            "8 RANDOM_WRITE_CORRUPT 7 corrupt_bio_byte 3 R 9 4 error_reads",
            "error_reads is incompatible",
        ),
        (
            "8 random_write_corrupt 7 corrupt_bio_byte 3 w 9 4 drop_writes",
            "drop_writes is incompatible",
        ),
        (
            "8 random_write_corrupt 7 corrupt_bio_byte 3 w 9 4 error_writes",
            "error_writes is incompatible",
        ),
    ] {
        let m = msg(&format!("0 8 flakey /a 0 1 2 {features}"));
        assert!(m.contains(want), "{features}: {m}");
    }
    // Words after the group are ignored, as the kernel does.
    let t = Table::parse(
        "0 8 flakey /a 0 1 2 8 random_write_corrupt 7 error_reads corrupt_bio_byte 3 W 9 4 x",
    )
    .unwrap();
    assert_eq!(
        t.to_string(),
        "0 8 flakey /a 0 1 2 8 error_reads corrupt_bio_byte 3 w 9 4 random_write_corrupt 7\n"
    );
    assert_eq!(
        Table::parse(&t.to_string()).unwrap(),
        t,
        "prints and parses back"
    );
    let t = Table::parse("0 8 flakey /a 0 1 2 2 drop_writes error_reads").unwrap();
    assert_eq!(
        t.to_string(),
        "0 8 flakey /a 0 1 2 2 error_reads drop_writes\n"
    );
}

#[test]
fn flakey_refusals_carry_the_kernel_messages() {
    for (text, want) in [
        ("0 8 flakey /a 0 1", "Invalid argument count"),
        ("0 8 flakey /a x 1 1", "Invalid device sector"),
        ("0 8 flakey /a 0 -1 1", "Invalid up interval"),
        ("0 8 flakey /a 0 1 +1", "Invalid down interval"),
        ("0 8 flakey /a 0 0 0", "Total (up + down) interval is zero"),
        ("0 8 flakey /a 0 4294967295 1", "Interval overflow"),
        ("0 8 flakey /a 0 1 1 12", "Invalid number of feature args"),
        (
            "0 8 flakey /a 0 1 1 2 drop_writes",
            "Invalid number of feature args",
        ),
        (
            "0 8 flakey /a 0 1 1 1 bogus",
            "Unrecognised flakey feature requested",
        ),
        (
            "0 8 flakey /a 0 1 1 2 drop_writes error_writes",
            "Feature error_writes conflicts with feature drop_writes",
        ),
        (
            "0 8 flakey /a 0 1 1 2 error_writes drop_writes",
            "Feature drop_writes conflicts with feature error_writes",
        ),
        (
            "0 8 flakey /a 0 1 1 2 error_reads error_reads",
            "Feature error_reads duplicated",
        ),
        (
            "0 8 flakey /a 0 1 1 4 corrupt_bio_byte 1 r 1",
            "Feature corrupt_bio_byte requires 4 parameters",
        ),
        (
            "0 8 flakey /a 0 1 1 5 corrupt_bio_byte 0 r 1 0",
            "Invalid corrupt bio byte",
        ),
        (
            "0 8 flakey /a 0 1 1 5 corrupt_bio_byte 1 x 1 0",
            "Invalid corrupt bio direction (r or w)",
        ),
        (
            "0 8 flakey /a 0 1 1 5 corrupt_bio_byte 1 r 256 0",
            "Invalid corrupt value to write into bio byte (0-255)",
        ),
        (
            "0 8 flakey /a 0 1 1 5 corrupt_bio_byte 1 r 1 -1",
            "Invalid corrupt bio flags mask",
        ),
        (
            "0 8 flakey /a 0 1 1 10 corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 1 r 1 0",
            "Feature corrupt_bio_byte duplicated",
        ),
        (
            "0 8 flakey /a 0 1 1 2 random_read_corrupt 1000000001",
            "Invalid random corrupt argument",
        ),
        (
            "0 8 flakey /a 0 1 1 4 random_read_corrupt 1 random_read_corrupt 2",
            "Feature random_read_corrupt duplicated",
        ),
        (
            "0 8 flakey /a 0 1 1 1 random_write_corrupt",
            "Feature random_write_corrupt requires a parameter",
        ),
    ] {
        let m = msg(text);
        assert!(m.starts_with("flakey: "), "{text}: {m}");
        assert!(m.contains(want), "{text}: {m} (want {want:?})");
    }
    // A probability of 0 counts as not given, as in the kernel.
    Table::parse("0 8 flakey /a 0 1 1 4 random_read_corrupt 0 random_read_corrupt 2").unwrap();
}

#[test]
fn flakey_maps_plainly_while_up() {
    let t = Table::parse("0 64 flakey /a 8 3600 1").unwrap();
    for op in [Op::Read, Op::Write, Op::Discard] {
        let p = map(&t, op, 0, 4, 8);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, io(0, (8 + 4) * 512));
    }
    let mut f = Vec::new();
    t.flush(&mut f);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, io(0, 0));
}

/// Kinds of a READ, a WRITE, a DISCARD and a FLUSH while always down.
fn down(features: &str) -> [PieceKind; 4] {
    let t = Table::parse(&format!("0 64 flakey /a 0 0 1 {features}")).unwrap();
    let mut f = Vec::new();
    t.flush(&mut f);
    [
        map(&t, Op::Read, 0, 0, 8)[0].kind,
        map(&t, Op::Write, 1, 0, 8)[0].kind,
        map(&t, Op::Discard, 3, 0, 8)[0].kind,
        f[0].kind,
    ]
}

#[test]
fn flakey_down_interval_follows_dm_flakey() {
    use PieceKind::{Drop, Error};
    let ok = io(0, 0);
    assert_eq!(down(""), [Error, Error, Error, Error]);
    assert_eq!(down("0"), [Error, Error, Error, Error]);
    assert_eq!(down("1 error_reads"), [Error, ok, ok, ok]);
    assert_eq!(down("1 drop_writes"), [ok, Drop, Drop, Drop]);
    assert_eq!(down("1 error_writes"), [ok, Error, Error, Error]);
    assert_eq!(down("2 error_reads drop_writes"), [Error, Drop, Drop, Drop]);
    // Reads that may be corrupted are served by the target itself.
    let served = PieceKind::Serve { offset: 0 };
    assert_eq!(down("5 corrupt_bio_byte 1 r 0 0"), [served, ok, ok, ok]);
}

fn serve(t: &Table, ctx: &MemCtx, op: Op, opf: u32, sector: u64, nr: u64) -> Result<(), i32> {
    model::request(t, ctx, op, opf, sector, nr)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

#[test]
fn flakey_corrupts_the_nth_byte_of_matching_io() {
    // A write: byte 100 on the device is 7, the caller's data untouched.
    let t = Table::parse("0 64 flakey /a 0 0 1 5 corrupt_bio_byte 100 w 7 0").unwrap();
    let ctx = MemCtx::new(&[64 * 512], pattern(4096));
    serve(&t, &ctx, Op::Write, 1, 0, 8).unwrap();
    let mut want = pattern(4096);
    want[99] = 7;
    assert_eq!(&ctx.dev(0)[..4096], &want[..]);
    assert_eq!(*ctx.req.borrow(), pattern(4096));
    // Reads are not corrupted by a write-direction feature: a plain remap.
    assert!(matches!(
        map(&t, Op::Read, 0, 0, 8)[0].kind,
        PieceKind::Io { .. }
    ));
    // A read: the byte changes in the caller's buffer, not on the device.
    let t = Table::parse("0 64 flakey /a 0 0 1 5 corrupt_bio_byte 5000 r 7 0").unwrap();
    let ctx = MemCtx::new(&[64 * 512], vec![0; 8192]);
    ctx.devs.borrow_mut()[0][..8192].copy_from_slice(&pattern(8192));
    // Beyond the I/O: nothing to corrupt.
    serve(&t, &ctx, Op::Read, 0, 0, 8).unwrap();
    assert_eq!(&ctx.req.borrow()[..4096], &pattern(4096)[..]);
    serve(&t, &ctx, Op::Read, 0, 0, 16).unwrap();
    let mut want = pattern(8192);
    want[4999] = 7;
    assert_eq!(*ctx.req.borrow(), want);
    assert_eq!(&ctx.dev(0)[..8192], &pattern(8192)[..]);
    // Flags: every bit of the mask must be set in bi_opf (REQ_FUA = 1<<17).
    let t = Table::parse("0 64 flakey /a 0 0 1 5 corrupt_bio_byte 1 w 7 131072").unwrap();
    let ctx = MemCtx::new(&[64 * 512], pattern(4096));
    serve(&t, &ctx, Op::Write, 1, 0, 8).unwrap();
    assert_eq!(ctx.dev(0)[0], pattern(1)[0]);
    serve(&t, &ctx, Op::Write, 1 | 1 << 17, 0, 8).unwrap();
    assert_eq!(ctx.dev(0)[0], 7);
    // Discards carry no data: not served.
    assert!(matches!(
        map(&t, Op::Discard, 3 | 1 << 17, 0, 8)[0].kind,
        PieceKind::Io { .. }
    ));
    // Certain random corruption: one byte inside the piece differs.
    let t = Table::parse("0 64 flakey /a 0 0 1 2 random_read_corrupt 1000000000").unwrap();
    let ctx = MemCtx::new(&[64 * 512], vec![0; 4096]);
    ctx.devs.borrow_mut()[0][..4096].copy_from_slice(&pattern(4096));
    for _ in 0..20 {
        serve(&t, &ctx, Op::Read, 0, 0, 8).unwrap();
        let got = ctx.req.borrow().clone();
        let diff = got
            .iter()
            .zip(pattern(4096))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(diff <= 1, "{diff} bytes differ");
    }
}

#[test]
fn delay_table_syntax() {
    let t = Table::parse("0 8 delay /a 16 50").unwrap();
    assert_eq!(t.to_string(), "0 8 delay /a 16 50\n");
    assert_eq!(t.devices().len(), 1);
    let t = Table::parse("0 8 delay /a 0 10 /b 8 20").unwrap();
    assert_eq!(t.to_string(), "0 8 delay /a 0 10 /b 8 20\n");
    let t = Table::parse("0 8 delay /a 0 10 /a 0 20 /c 0 30").unwrap();
    assert_eq!(t.to_string(), "0 8 delay /a 0 10 /a 0 20 /c 0 30\n");
    for (text, want) in [
        ("0 8 delay /a 0", "Requires exactly 3, 6 or 9 arguments"),
        (
            "0 8 delay /a 0 1 /b",
            "Requires exactly 3, 6 or 9 arguments",
        ),
        ("0 8 delay /a x 1", "Invalid device sector"),
        ("0 8 delay /a 0 -1", "Invalid delay"),
        ("0 8 delay /a 0 1 /b 0 +2", "Invalid delay"),
    ] {
        let m = msg(text);
        assert!(m.starts_with("delay: ") && m.contains(want), "{text}: {m}");
    }
}

#[test]
fn delay_serves_each_class_on_its_device_after_its_delay() {
    let t = Table::parse("0 64 linear /l 0\n64 64 delay /a 8 10 /b 16 20 /c 24 30").unwrap();
    let r = map(&t, Op::Read, 0, 60, 8);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, io(0, 60 * 512));
    assert_eq!(r[1].kind, PieceKind::Serve { offset: 0 });
    assert_eq!(r[1].buf_offset, 4 * 512);
    let ctx = MemCtx::new(&[64 * 512, 72 * 512, 80 * 512, 88 * 512], vec![0; 4096]);
    ctx.devs.borrow_mut()[1][8 * 512..12 * 512].copy_from_slice(&pattern(2048));
    serve(&t, &ctx, Op::Read, 0, 64, 4).unwrap();
    assert_eq!(&ctx.req.borrow()[..2048], &pattern(2048)[..]);
    assert_eq!(
        *ctx.slept.borrow(),
        vec![std::time::Duration::from_millis(10)]
    );
    // Writes and discards: the write class.
    *ctx.req.borrow_mut() = pattern(4096);
    serve(&t, &ctx, Op::Write, 1, 64, 8).unwrap();
    assert_eq!(&ctx.dev(2)[16 * 512..24 * 512], &pattern(4096)[..]);
    serve(&t, &ctx, Op::Discard, 3, 64, 8).unwrap();
    assert!(ctx.dev(2)[16 * 512..24 * 512].iter().all(|&b| b == 0));
    let slept: Vec<u128> = ctx.slept.borrow().iter().map(|d| d.as_millis()).collect();
    assert_eq!(slept, vec![10, 20, 20]);
    // Flushes: the linear device at once, the flush class's after 30 ms.
    let mut f = Vec::new();
    t.flush(&mut f);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].kind, io(0, 0));
    assert_eq!(f[1].kind, PieceKind::Serve { offset: 0 });
    let (target, fio) = t.served(&f[1], Op::Flush, 2).unwrap();
    block_on(target.serve(fio, &ctx)).unwrap();
    assert_eq!(*ctx.flushes.borrow(), vec![3]);
    // A class without a delay is a plain remap.
    let t = Table::parse("0 64 delay /a 8 0 /b 16 20").unwrap();
    assert_eq!(map(&t, Op::Read, 0, 0, 8)[0].kind, io(0, 8 * 512));
    assert_eq!(
        map(&t, Op::Write, 1, 0, 8)[0].kind,
        PieceKind::Serve { offset: 0 }
    );
    let t = Table::parse("0 64 delay /a 8 0").unwrap();
    assert!(!t.segments()[0].target.serves());
    assert_eq!(map(&t, Op::Write, 1, 0, 8)[0].kind, io(0, 8 * 512));
}

#[test]
fn delay_extents_cover_every_class() {
    let t = Table::parse("0 64 linear /l 0\n64 64 delay /a 8 10 /b 16 20 /c 24 30").unwrap();
    // Every class's range must fit its device; only the write class's
    // range counts as written for the overlap check.
    let ex = t.extents();
    assert_eq!(ex.len(), 4);
    let info = |size| DeviceInfo {
        size_bytes: size,
        read_only: false,
        identity: (0, size),
    };
    let sizes = [64 * 512, 72 * 512, 80 * 512, 88 * 512];
    t.check_devices(&sizes.map(info), true).unwrap();
    let short = [64 * 512, 72 * 512, 80 * 512, 87 * 512];
    assert!(t.check_devices(&short.map(info), true).is_err());
    // Reading and writing one range is no overlap with itself.
    let same = Table::parse("0 8 delay /a 0 10 /a 0 20").unwrap();
    same.check_devices(&[info(4096)], true).unwrap();
    // Offsets must be block-aligned like any backing offset.
    t.check_block_size(4096).unwrap();
    let odd = Table::parse("0 8 delay /a 0 10 /b 1 20").unwrap();
    assert!(odd.check_block_size(4096).is_err());
}

#[test]
fn delay_status_counts_what_it_holds() {
    let t = Table::parse("0 8 delay /a 0 10 /b 0 20 /b 8 30").unwrap();
    let names = ["/a".to_string(), "/b".to_string()];
    let sctx = StatusCtx {
        names: &names,
        dev_errors: &[0, 0],
    };
    let target = &t.segments()[0].target;
    assert_eq!(target.status(&sctx), "0 0 0");
    let ctx = MemCtx::new(&[4096, 8192], vec![0; 4096]);
    let w = map(&t, Op::Write, 1, 0, 8);
    let (_, wio) = t.served(&w[0], Op::Write, 1).unwrap();
    let mut f = Vec::new();
    t.flush(&mut f);
    let (_, fio) = t.served(&f[0], Op::Flush, 2).unwrap();
    let mut a = target.serve(wio, &ctx);
    let mut b = target.serve(fio, &ctx);
    let mut c = target.serve(fio, &ctx);
    assert!(poll_once(a.as_mut()).is_none());
    assert!(poll_once(b.as_mut()).is_none());
    assert!(poll_once(c.as_mut()).is_none());
    assert_eq!(target.status(&sctx), "0 1 2");
    assert_eq!(poll_once(b.as_mut()), Some(Ok(())));
    assert_eq!(t.status_lines(&[0, 0]), vec!["0 8 delay 0 1 1".to_string()]);
    assert_eq!(poll_once(a.as_mut()), Some(Ok(())));
    assert_eq!(poll_once(c.as_mut()), Some(Ok(())));
    assert_eq!(target.status(&sctx), "0 0 0");
}

#[test]
fn only_dax_capable_targets_pass_dax() {
    for (text, dax) in [
        ("0 8 linear /a 0", true),
        ("0 8 error", true),
        ("0 8 zero", false),
        ("0 8 flakey /a 0 1 1", false),
        ("0 8 delay /a 0 1", false),
    ] {
        let t = Table::parse(text).unwrap();
        let devs = vec![true; t.devices().len()];
        assert_eq!(t.supports_dax(&devs), dax, "{text}");
    }
}

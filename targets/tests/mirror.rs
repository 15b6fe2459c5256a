//! `mirror` on the in-memory model: the kernel's table rules and messages,
//! writes on every leg, reads spread and retried, the resync, leg
//! failures, and the disk log in dm-log's on-disk format across a crash.

mod model;

use model::{block_on, poll_once, MemCtx};
use rdm_targets::{Op, StatusCtx, Table, Target};

const REGION: u64 = 1024; // sectors
const REGIONS: u64 = 8;
const LEG: usize = (REGION * REGIONS * 512) as usize;

fn msg(text: &str) -> String {
    Table::parse(text)
        .expect_err("table should be refused")
        .kind
        .to_string()
}

fn target(t: &Table) -> &dyn Target {
    &*t.segments()[0].target
}

fn status(t: &Table) -> String {
    let names: Vec<String> = t
        .devices()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let errors = vec![0; names.len()];
    target(t).status(&StatusCtx {
        names: &names,
        dev_errors: &errors,
    })
}

fn io(t: &Table, ctx: &MemCtx, op: Op, sector: u64, nr: u64) -> Result<(), i32> {
    model::request(t, ctx, op, 0, sector, nr)
}

/// Runs the background job the resume hook started until `done`.
fn run_job_until(ctx: &MemCtx, done: impl Fn() -> bool) {
    let jobs = ctx.take_spawned();
    assert_eq!(jobs.len(), 1, "one background job");
    let job = jobs.into_iter().next().unwrap();
    let mut fut = job(ctx);
    for _ in 0..100_000 {
        if done() {
            return;
        }
        assert!(
            poll_once(fut.as_mut()).is_none(),
            "the job runs until stopped"
        );
    }
    panic!("the job never got there");
}

fn fill(ctx: &MemCtx, byte: u8) {
    ctx.req.borrow_mut().fill(byte);
}

#[test]
fn tables_are_read_and_refused_as_the_kernel_does() {
    let t = Table::parse("0 8192 mirror core 1 1024 2 /a 0 /b 8").unwrap();
    assert_eq!(t.to_string(), "0 8192 mirror core 1 1024 2 /a 0 /b 8\n");
    let t = Table::parse(
        "0 8192 mirror disk 3 /log 1024 nosync 3 /a 0 /b 0 /c 0 2 handle_errors keep_log",
    )
    .unwrap();
    assert_eq!(
        t.to_string(),
        "0 8192 mirror disk 3 /log 1024 nosync 3 /a 0 /b 0 /c 0 2 handle_errors keep_log\n"
    );
    assert_eq!(t.devices().len(), 4);
    // Nine legs is the kernel's limit (DM_KCOPYD_MAX_REGIONS + 1).
    let legs = |n: usize| (0..n).map(|i| format!(" /l{i} 0")).collect::<String>();
    assert!(Table::parse(&format!("0 64 mirror core 1 32 9{}", legs(9))).is_ok());
    for (table, why) in [
        ("0 64 mirror core", "Insufficient mirror log arguments"),
        ("0 64 mirror core x 32", "Invalid mirror log argument count"),
        ("0 64 mirror core 2 32", "Insufficient mirror log arguments"),
        (
            "0 64 mirror foo 1 32 2 /a 0 /b 0",
            "Error creating mirror dirty log",
        ),
        (
            "0 64 mirror core 1 24 2 /a 0 /b 0",
            "invalid region size 24",
        ),
        ("0 64 mirror core 1 1 2 /a 0 /b 0", "invalid region size 1"),
        (
            "0 64 mirror core 1 128 2 /a 0 /b 0",
            "invalid region size 128",
        ),
        (
            "0 64 mirror core 2 32 maybe 2 /a 0 /b 0",
            "unrecognised sync argument",
        ),
        (
            "0 64 mirror disk 1 /log 2 /a 0 /b 0",
            "wrong number of arguments to disk",
        ),
        ("0 64 mirror core 1 32 1 /a 0", "Invalid number of mirrors"),
        ("0 64 mirror core 1 32 10 /a 0", "Invalid number of mirrors"),
        ("0 64 mirror core 1 32 2 /a 0", "Too few mirror arguments"),
        ("0 64 mirror core 1 32 2 /a 0 /b x", "Invalid offset"),
        (
            "0 64 mirror core 1 32 2 /a 0 /b 0 1",
            "Not enough arguments to support feature count",
        ),
        (
            "0 64 mirror core 1 32 2 /a 0 /b 0 1 fast",
            "Unrecognised feature requested",
        ),
        (
            "0 64 mirror core 1 32 2 /a 0 /b 0 1 keep_log",
            "keep_log feature requires the handle_errors feature",
        ),
        (
            "0 64 mirror core 1 32 2 /a 0 /b 0 0 x",
            "Too many mirror arguments",
        ),
        (
            "0 64 mirror core 1 32 2 /a 0 /b 0 x",
            "Invalid number of features",
        ),
    ] {
        let m = msg(table);
        assert!(m.contains(why), "{table}: {m}");
    }
    assert!(msg("0 64 mirror core 1 24 2 /a 0 /b 0").contains("Error creating mirror dirty log"));
}

#[test]
fn writes_reach_every_leg_and_reads_are_spread_and_retried() {
    let t = Table::parse("0 8192 mirror core 2 1024 nosync 2 /a 0 /b 0").unwrap();
    let ctx = MemCtx::new(&[LEG, LEG], vec![0; 8192]);
    block_on(target(&t).resume(&ctx)).unwrap();
    fill(&ctx, 0x5a);
    io(&t, &ctx, Op::Write, 2000, 16).unwrap();
    for d in 0..2 {
        assert!(ctx.dev(d)[2000 * 512..2016 * 512]
            .iter()
            .all(|&b| b == 0x5a));
    }
    // FLUSH reaches both legs.
    io(&t, &ctx, Op::Flush, 0, 0).unwrap();
    assert_eq!(*ctx.flushes.borrow(), vec![0, 1]);
    // Make the legs differ: reads alternate between them.
    ctx.devs.borrow_mut()[1][0] = 7;
    let mut seen = Vec::new();
    for _ in 0..4 {
        io(&t, &ctx, Op::Read, 0, 1).unwrap();
        seen.push(ctx.req.borrow()[0]);
    }
    assert!(seen.contains(&0) && seen.contains(&7), "{seen:?}");
    // A leg that fails reads: every read still succeeds, from the other.
    ctx.failing.borrow_mut().push(1);
    for _ in 0..4 {
        io(&t, &ctx, Op::Read, 0, 1).unwrap();
        assert_eq!(ctx.req.borrow()[0], 0);
    }
    assert!(status(&t).starts_with("2 /a /b 8/8 1 AR 1 core"));
    // Both gone: EIO.
    ctx.failing.borrow_mut().push(0);
    assert!(io(&t, &ctx, Op::Read, 0, 1).is_err());
}

#[test]
fn a_new_mirror_resyncs_the_first_leg_to_the_others() {
    let t = Table::parse("0 8192 mirror core 1 1024 3 /a 0 /b 0 /c 0").unwrap();
    let ctx = MemCtx::new(&[LEG, LEG, LEG], vec![0; 4096]);
    for (i, b) in ctx.devs.borrow_mut()[0].iter_mut().enumerate() {
        *b = (i / 4096) as u8;
    }
    block_on(target(&t).resume(&ctx)).unwrap();
    assert_eq!(status(&t), "3 /a /b /c 0/8 1 AAA 1 core");
    // An out-of-sync region is read from the default leg only.
    io(&t, &ctx, Op::Read, 8, 8).unwrap();
    assert!(ctx.req.borrow().iter().all(|&b| b == 1));
    run_job_until(&ctx, || status(&t).contains(" 8/8 "));
    assert_eq!(ctx.dev(0), ctx.dev(1));
    assert_eq!(ctx.dev(0), ctx.dev(2));
}

#[test]
fn handle_errors_takes_a_failed_leg_out_and_io_goes_on() {
    let t = Table::parse("0 8192 mirror core 2 1024 nosync 2 /a 0 /b 0 1 handle_errors").unwrap();
    let ctx = MemCtx::new(&[LEG, LEG], vec![0x11; 4096]);
    block_on(target(&t).resume(&ctx)).unwrap();
    ctx.failing.borrow_mut().push(1);
    io(&t, &ctx, Op::Write, 0, 8).unwrap();
    assert_eq!(status(&t), "2 /a /b 8/8 1 AD 1 core");
    assert!(ctx.events.borrow().iter().any(|e| e.contains("dead")));
    // The dead leg gets no more I/O, even once it answers again.
    ctx.failing.borrow_mut().clear();
    let before = ctx.writes.borrow().len();
    io(&t, &ctx, Op::Write, 16, 8).unwrap();
    let w = ctx.writes.borrow();
    assert!(w[before..].iter().all(|&(dev, ..)| dev == 0), "{w:?}");
    drop(w);
    for _ in 0..4 {
        io(&t, &ctx, Op::Read, 16, 8).unwrap();
    }
    // The last leg gone: EIO.
    ctx.failing.borrow_mut().push(0);
    assert!(io(&t, &ctx, Op::Write, 0, 8).is_err());
}

#[test]
fn without_handle_errors_a_failed_write_degrades_the_region_as_the_kernel_does() {
    let t = Table::parse("0 8192 mirror core 2 1024 nosync 2 /a 0 /b 0").unwrap();
    let ctx = MemCtx::new(&[LEG, LEG], vec![0x22; 4096]);
    block_on(target(&t).resume(&ctx)).unwrap();
    ctx.failing.borrow_mut().push(1);
    // The write succeeds (one leg has it); the region is out of sync and
    // the leg marked D, but it still gets writes.
    io(&t, &ctx, Op::Write, 3 * REGION, 8).unwrap();
    assert_eq!(status(&t), "2 /a /b 7/8 1 AD 1 core");
    ctx.failing.borrow_mut().clear();
    io(&t, &ctx, Op::Write, 0, 8).unwrap();
    assert!(ctx.dev(1)[..4096].iter().all(|&b| b == 0x22));
    // The resync copies the region again.
    run_job_until(&ctx, || status(&t).contains(" 8/8 "));
    assert_eq!(ctx.dev(0), ctx.dev(1));
}

const MAGIC: u32 = 0x4D69_5272;

fn header(log: &[u8]) -> (u32, u32, u64) {
    (
        u32::from_le_bytes(log[0..4].try_into().unwrap()),
        u32::from_le_bytes(log[4..8].try_into().unwrap()),
        u64::from_le_bytes(log[8..16].try_into().unwrap()),
    )
}

#[test]
fn the_disk_log_is_dm_logs_format_and_after_a_crash_only_dirty_regions_resync() {
    let table = "0 8192 mirror disk 2 /log 1024 2 /a 0 /b 0";
    let t = Table::parse(table).unwrap();
    // Devices: the log first, then the legs.
    let ctx = MemCtx::new(&[4096, LEG, LEG], vec![0; 8192]);
    ctx.devs.borrow_mut()[0][16..1024].fill(0xee);
    for (i, b) in ctx.devs.borrow_mut()[1].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    block_on(target(&t).resume(&ctx)).unwrap();
    let log = ctx.dev(0);
    assert_eq!(header(&log), (MAGIC, 2, REGIONS));
    assert!(
        log[16..1024].iter().all(|&b| b == 0xee),
        "bytes between kept"
    );
    assert_eq!(log[1024], 0, "a new log: every region out of sync");
    run_job_until(&ctx, || status(&t).contains(" 8/8 "));
    assert_eq!(ctx.dev(1), ctx.dev(2));
    // A clean stop leaves every region clean on the log.
    block_on(target(&t).stop(&ctx)).unwrap();
    assert_eq!(ctx.dev(0)[1024], 0xff);
    assert!(
        ctx.dev(0)[1025..1032].iter().all(|&b| b == 0),
        "bits past the end clear"
    );
    assert_eq!(status(&t), "2 /a /b 8/8 1 AA 3 disk /log A");

    // A new table over the same log: in sync at once; a write marks its
    // region dirty on the log before any leg is written.
    let t = Table::parse(table).unwrap();
    ctx.writes.borrow_mut().clear();
    block_on(target(&t).resume(&ctx)).unwrap();
    assert_eq!(status(&t), "2 /a /b 8/8 1 AA 3 disk /log A");
    let _job = ctx.take_spawned();
    fill(&ctx, 0x77);
    io(&t, &ctx, Op::Write, 5 * REGION + 8, 16).unwrap();
    assert_eq!(ctx.dev(0)[1024], !(1u8 << 5));
    let w = ctx.writes.borrow();
    let log_write = w.iter().rposition(|&(d, ..)| d == 0).unwrap();
    let first_leg = w
        .iter()
        .position(|&(d, off, ..)| d != 0 && off == (5 * REGION + 8) * 512)
        .unwrap();
    assert!(log_write < first_leg, "the mark is written first: {w:?}");
    assert!(ctx.flushes.borrow().contains(&0), "and flushed");
    drop(w);

    // The daemon dies here (no stop). Leg b misses the write, as an
    // unflushed leg might; the next table resyncs region 5 only.
    ctx.devs.borrow_mut()[2][(5 * REGION as usize + 8) * 512] = 0;
    let t = Table::parse(table).unwrap();
    block_on(target(&t).resume(&ctx)).unwrap();
    assert_eq!(status(&t), "2 /a /b 7/8 1 AA 3 disk /log A");
    ctx.writes.borrow_mut().clear();
    run_job_until(&ctx, || status(&t).contains(" 8/8 "));
    assert_eq!(ctx.dev(1), ctx.dev(2));
    let copied: u64 = ctx
        .writes
        .borrow()
        .iter()
        .filter(|&&(d, ..)| d == 2)
        .map(|&(_, _, len, _)| len)
        .sum();
    assert_eq!(copied, REGION * 512, "only the dirty region was copied");
}

#[test]
fn a_log_from_another_writer_is_read_as_the_kernel_reads_it() {
    // A log the kernel left: 8 regions, 3 and 6 dirty.
    let mut log = vec![0u8; 4096];
    log[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    log[4..8].copy_from_slice(&2u32.to_le_bytes());
    log[8..16].copy_from_slice(&8u64.to_le_bytes());
    log[1024] = !((1 << 3) | (1 << 6));
    let ctx = MemCtx::new(&[4096, LEG, LEG], vec![]);
    ctx.devs.borrow_mut()[0] = log.clone();
    let t = Table::parse("0 8192 mirror disk 2 /log 1024 2 /a 0 /b 0").unwrap();
    block_on(target(&t).resume(&ctx)).unwrap();
    assert!(status(&t).contains(" 6/8 "));
    // `sync` ignores it: everything is copied.
    ctx.devs.borrow_mut()[0] = log.clone();
    let t = Table::parse("0 8192 mirror disk 3 /log 1024 sync 2 /a 0 /b 0").unwrap();
    block_on(target(&t).resume(&ctx)).unwrap();
    assert!(status(&t).contains(" 0/8 "));
    // A grown device: the new regions are out of sync (nosync: in sync).
    ctx.devs.borrow_mut()[0] = log.clone();
    let t = Table::parse("0 16384 mirror disk 2 /log 1024 2 /a 0 /b 0").unwrap();
    let ctx2 = MemCtx::new(&[4096, 2 * LEG, 2 * LEG], vec![]);
    ctx2.devs.borrow_mut()[0] = log;
    block_on(target(&t).resume(&ctx2)).unwrap();
    assert!(status(&t).contains(" 6/16 "), "{}", status(&t));
    assert_eq!(header(&ctx2.dev(0)).2, 16);
}

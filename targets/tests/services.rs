//! The services a serving target gets, on the in-memory model: the copier,
//! crash-safe metadata, background jobs that pause and stop.

mod model;

use std::time::Duration;

use model::{block_on, poll_once, MemCtx};
use rdm_targets::serve::background::{Background, Stopped};
use rdm_targets::serve::copier::{Copier, Copy, CopyError, Progress};
use rdm_targets::serve::metadata::{Committed, MetaArea};
use rdm_targets::IoCtx;

const MIB: usize = 1 << 20;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 253) as u8 ^ (i >> 12) as u8).collect()
}

#[test]
fn the_copier_copies_to_every_destination_with_progress() {
    let ctx = MemCtx::new(&[MIB, MIB, 2 * MIB], vec![]);
    ctx.devs.borrow_mut()[0].copy_from_slice(&pattern(MIB));
    let c = Copy {
        from: 0,
        from_offset: 4096,
        to: vec![(1, 0), (2, MIB as u64)],
        len: (MIB - 4096) as u64,
    };
    let progress = Progress::default();
    let copier = Copier {
        chunk: 60 << 10,
        pause: Duration::from_millis(1),
    };
    block_on(copier.copy(&ctx, &c, &progress, None)).unwrap();
    assert_eq!(progress.get(), (c.len, c.len));
    assert_eq!(&ctx.dev(1)[..MIB - 4096], &pattern(MIB)[4096..]);
    assert_eq!(&ctx.dev(2)[MIB..2 * MIB - 4096], &pattern(MIB)[4096..]);
    // Throttled: a pause after every chunk but the last.
    assert_eq!(
        ctx.slept.borrow().len(),
        (c.len as usize).div_ceil(60 << 10) - 1
    );
    // A destination too small fails the copy where it failed.
    let bad = Copy {
        to: vec![(1, 8192)],
        ..c.clone()
    };
    let e = block_on(Copier::default().copy(&ctx, &bad, &Progress::default(), None));
    assert_eq!(
        e,
        Err(CopyError::Io {
            errno: -5,
            at: 15 * (64 << 10),
            dest: Some(0)
        })
    );
}

#[test]
fn a_stopped_copy_ends_between_chunks() {
    let ctx = MemCtx::new(&[MIB, MIB], vec![]);
    let bg = Background::new();
    let c = Copy {
        from: 0,
        from_offset: 0,
        to: vec![(1, 0)],
        len: MIB as u64,
    };
    let progress = Progress::default();
    let copier = Copier {
        chunk: 64 << 10,
        pause: Duration::from_millis(1),
    };
    let mut f = Box::pin(copier.copy(&ctx, &c, &progress, Some(&bg)));
    for _ in 0..3 {
        assert!(poll_once(f.as_mut()).is_none());
    }
    block_on(bg.stop(&ctx));
    assert_eq!(block_on(f), Err(CopyError::Stopped));
    let (done, total) = progress.get();
    assert!(done > 0 && done < total, "{done} of {total}");
}

#[test]
fn metadata_commits_leave_the_old_or_the_new_state() {
    let ctx = MemCtx::new(&[64 << 10], vec![]);
    let area = MetaArea {
        dev: 0,
        offset: 8192,
        copy_bytes: 8192,
        magic: 0x5244_4d5f_4d45_5441,
    };
    assert_eq!(block_on(area.load(&ctx)).unwrap(), None);
    for seq in 1..=3u64 {
        block_on(area.commit(&ctx, seq, &vec![seq as u8; 1000 * seq as usize])).unwrap();
        // Durable on return: the commit flushed the device.
        assert_eq!(ctx.flushes.borrow().len(), seq as usize);
    }
    let got = block_on(area.load(&ctx)).unwrap();
    assert_eq!(
        got,
        Some(Committed {
            seq: 3,
            payload: vec![3; 3000]
        })
    );
    // A torn write of state 3 (copy 1): state 2 stands.
    ctx.devs.borrow_mut()[0][8192 + 8192 + 100] ^= 0xff;
    let got = block_on(area.load(&ctx)).unwrap().unwrap();
    assert_eq!((got.seq, got.payload), (2, vec![2; 2000]));
    // State 3 again, then a torn header of it: state 2 stands.
    block_on(area.commit(&ctx, 3, &[7; 10])).unwrap();
    assert_eq!(
        block_on(area.load(&ctx)).unwrap().unwrap().payload,
        vec![7; 10]
    );
    ctx.devs.borrow_mut()[0][8192 + 8192 + 9] ^= 1;
    let got = block_on(area.load(&ctx)).unwrap().unwrap();
    assert_eq!(got.seq, 2);
    // Another target's magic is nothing.
    let other = MetaArea { magic: 1, ..area };
    assert_eq!(block_on(other.load(&ctx)).unwrap(), None);
    // Too large for a copy: refused, nothing written.
    let before = ctx.dev(0);
    assert!(block_on(area.commit(&ctx, 4, &vec![0; 8192])).is_err());
    assert_eq!(ctx.dev(0), before);
}

#[test]
fn background_jobs_pause_for_a_suspend_and_stop_for_a_remove() {
    let ctx = MemCtx::new(&[4096], vec![]);
    let bg = Background::new();
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (b, n) = (bg.clone(), counted.clone());
    bg.start(&ctx, move |ctx| {
        Box::pin(async move {
            while b.checkpoint(ctx).await != Err(Stopped) {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = ctx.sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        })
    });
    assert_eq!(bg.running(), 1);
    let mut jobs = ctx.take_spawned();
    assert_eq!(jobs.len(), 1);
    let job = jobs.pop().unwrap();
    let mut run = job(&ctx);
    for _ in 0..4 {
        assert!(poll_once(run.as_mut()).is_none());
    }
    // Pausing waits until the job is parked at a checkpoint.
    let mut pause = Box::pin(bg.pause(&ctx));
    while poll_once(pause.as_mut()).is_none() {
        assert!(poll_once(run.as_mut()).is_none());
    }
    let at = counted.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert!(poll_once(run.as_mut()).is_none());
    }
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::SeqCst),
        at,
        "paused"
    );
    bg.unpause();
    for _ in 0..10 {
        assert!(poll_once(run.as_mut()).is_none());
    }
    assert!(
        counted.load(std::sync::atomic::Ordering::SeqCst) > at,
        "going on"
    );
    // Stop: the job ends at its next checkpoint, and the stop returns
    // once it has.
    let mut stop = Box::pin(bg.stop(&ctx));
    assert!(poll_once(stop.as_mut()).is_none());
    assert_eq!(block_on(run), Ok(()));
    assert_eq!(bg.running(), 0);
    assert!(poll_once(stop.as_mut()).is_some());
    // Stopped: nothing starts until a restart.
    bg.start(&ctx, |_| rdm_targets::serve::ready(Ok(())));
    assert!(ctx.take_spawned().is_empty());
    bg.restart();
    bg.start(&ctx, |_| rdm_targets::serve::ready(Ok(())));
    assert_eq!(ctx.take_spawned().len(), 1);
    let _ = IoCtx::block_size(&ctx);
}

//! The I/O core against real files on a plain io_uring (no ublk): bytes
//! written through the engine land where the table says, read back
//! identical, and the special ops do what they promise.

mod common;
use common::{pattern, req};

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use rdm_targets::Table;
use rdm_ublk_server::backend::uring::{Backing, UringBackend};
use rdm_ublk_server::backing;
use rdm_ublk_server::buffer::{Aux, Buffer};
use rdm_ublk_server::handler::Handler;
use rdm_ublk_server::request::op;
use rdm_ublk_server::ring::{join_all, HostRing};

const BUF: usize = 1 << 20;

struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        let ptr = unsafe { alloc_zeroed(layout) };
        AlignedBuf { ptr, layout }
    }
    // The kernel writes into this memory behind Rust's back anyway; tests
    // hand out one view at a time.
    #[allow(clippy::mut_from_ref)]
    fn slice(&self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    paths: Vec<std::path::PathBuf>,
    _files: Vec<fs::File>,
    ring: Rc<HostRing>,
    engine: Handler<UringBackend>,
    bufs: Vec<AlignedBuf>,
}

/// Three 4 MiB files under a table of linear + striped ×3 + zero + error.
fn rig(nbufs: usize) -> Rig {
    rig_with(
        nbufs,
        "0 2048 linear {a} 4096\n2048 6144 striped 3 16 {a} 0 {b} 0 {c} 0\n8192 512 zero\n8704 8 error\n",
    )
}

/// Three 4 MiB files `{a}`, `{b}`, `{c}` under the table `tpl`.
fn rig_with(nbufs: usize, tpl: &str) -> Rig {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let paths: Vec<_> = (0..3).map(|i| dir.path().join(format!("f{i}"))).collect();
    for p in &paths {
        fs::File::create(p).unwrap().set_len(4 << 20).unwrap();
    }
    let text = tpl
        .replace("{a}", &paths[0].display().to_string())
        .replace("{b}", &paths[1].display().to_string())
        .replace("{c}", &paths[2].display().to_string());
    let table = Table::parse(&text).unwrap();
    backing::check_table(&table, true).unwrap();
    let mut files = Vec::new();
    let mut back = Vec::new();
    for (i, p) in table.devices().iter().enumerate() {
        let (f, direct) = backing::open(p, true).unwrap();
        files.push(f);
        back.push(Backing {
            fixed: i as u32,
            direct,
        });
    }
    let zero = fs::File::open("/dev/zero").unwrap();
    let zero_fixed = files.len() as u32;
    let ring = HostRing::new(256).unwrap();
    let mut fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
    fds.push(zero.as_raw_fd());
    ring.register_files(&fds).unwrap();
    files.push(zero);
    let bufs: Vec<AlignedBuf> = (0..nbufs).map(|_| AlignedBuf::new(BUF)).collect();
    let iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr.cast(),
            iov_len: BUF,
        })
        .collect();
    unsafe { ring.register_buffers(&iovs).unwrap() };
    let engine = Handler::new(
        table,
        UringBackend::new(back),
        Aux {
            zero: Some(zero_fixed),
            bytes: None,
        },
    );
    Rig {
        _dir: dir,
        paths,
        _files: files,
        ring,
        engine,
        bufs,
    }
}

fn user(r: &Rig, i: usize) -> Buffer {
    Buffer::User {
        base: r.bufs[i].ptr,
        index: i as u16,
    }
}

#[test]
fn writes_read_back_and_land_where_the_table_says() {
    let r = rig(8);
    let data_sectors = 8192u64;
    let mut model = vec![0u8; (data_sectors * 512) as usize];
    // Random writes of 1..256 sectors, 8 in flight at once.
    let mut rng = 12345u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..40 {
        let reqs: Vec<(u64, u32)> = (0..8)
            .map(|_| {
                let nr = (next() % 256 + 1) as u32;
                let s = next() % (data_sectors - u64::from(nr));
                (s, nr)
            })
            .collect();
        // Overlapping concurrent writes have no defined order, so keep
        // each round's requests disjoint by giving later ones up on overlap.
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let mut batch = Vec::new();
        for (i, (s, nr)) in reqs.into_iter().enumerate() {
            let e = s + u64::from(nr);
            if taken.iter().any(|&(a, b)| s < b && a < e) {
                continue;
            }
            taken.push((s, e));
            let data = pattern(round * 100 + i as u64, nr as usize * 512);
            r.bufs[i].slice()[..data.len()].copy_from_slice(&data);
            model[(s * 512) as usize..(e * 512) as usize].copy_from_slice(&data);
            batch.push((i, s, nr));
        }
        let results = r.ring.block_on(join_all(
            batch
                .iter()
                .map(|&(i, s, nr)| r.engine.handle(&r.ring, req(op::WRITE, s, nr), user(&r, i)))
                .collect(),
        ));
        for (res, &(_, _, nr)) in results.iter().zip(&batch) {
            assert_eq!(*res, nr as i32 * 512);
        }
    }
    // Read the whole data area back through the engine, 1 MiB at a time.
    for chunk in 0..(data_sectors / 2048) {
        let res = r.ring.block_on(r.engine.handle(
            &r.ring,
            req(op::READ, chunk * 2048, 2048),
            user(&r, 0),
        ));
        assert_eq!(res, 1 << 20);
        let want = &model[(chunk << 20) as usize..((chunk + 1) << 20) as usize];
        assert!(r.bufs[0].slice() == want, "chunk {chunk} differs");
    }
    // The linear segment is file 0 from sector 4096, byte for byte.
    let mut f0 = vec![0u8; 2048 * 512];
    fs::File::open(&r.paths[0])
        .unwrap()
        .read_exact_at(&mut f0, 4096 * 512)
        .unwrap();
    assert!(f0 == model[..2048 * 512]);
    // Striped: chunk 1 of the striped segment (sectors 2064..2080) is the
    // first chunk of file 1.
    let mut c1 = vec![0u8; 16 * 512];
    fs::File::open(&r.paths[1])
        .unwrap()
        .read_exact_at(&mut c1, 0)
        .unwrap();
    assert!(c1 == model[2064 * 512..2080 * 512]);
    let st = r.engine.stats.devices[1].snapshot();
    assert!(st.writes > 0 && st.reads > 0 && st.errors == 0);
}

#[test]
fn zero_segment_reads_zeros_in_both_buffer_modes() {
    let r = rig(1);
    r.bufs[0].slice().fill(0xEE);
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::READ, 8000, 400), user(&r, 0)),
    );
    assert_eq!(res, 400 * 512);
    // 8000..8192 is striped (never written: zeros in the file), 8192.. zero.
    assert!(r.bufs[0].slice()[..400 * 512].iter().all(|&b| b == 0));
    assert!(r.bufs[0].slice()[400 * 512..].iter().all(|&b| b == 0xEE));
    // Writes to the zero segment succeed and change nothing.
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::WRITE, 8192, 8), user(&r, 0)),
    );
    assert_eq!(res, 4096);
}

#[test]
fn error_segment_and_out_of_range_fail_with_eio() {
    let r = rig(1);
    for (s, nr) in [
        (8704, 1),
        (8700, 8),
        (8712, 1),
        (0, 8713),
        (u64::MAX - 1, 4),
    ] {
        let res = r
            .ring
            .block_on(r.engine.handle(&r.ring, req(op::READ, s, nr), user(&r, 0)));
        assert_eq!(res, -libc::EIO, "read {s}+{nr}");
    }
    // A failed write that reaches the error segment writes nothing at all:
    // sectors 8180..8192 (the striped tail, file 2 sectors 2036..2048) stay zero.
    r.bufs[0].slice().fill(0x55);
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::WRITE, 8180, 540), user(&r, 0)),
    );
    assert_eq!(res, -libc::EIO);
    let mut f = vec![0xFFu8; 12 * 512];
    fs::File::open(&r.paths[2])
        .unwrap()
        .read_exact_at(&mut f, 2036 * 512)
        .unwrap();
    assert!(f.iter().all(|&b| b == 0));
    assert!(r.engine.stats.segments[3].snapshot().errors >= 1);
}

#[test]
fn flush_fua_discard_and_write_zeroes() {
    let r = rig(1);
    let data = pattern(7, 64 * 512);
    r.bufs[0].slice()[..data.len()].copy_from_slice(&data);
    let res = r.ring.block_on(r.engine.handle(
        &r.ring,
        req(op::WRITE | op::F_FUA, 0, 64),
        user(&r, 0),
    ));
    assert_eq!(res, 64 * 512);
    assert_eq!(
        r.ring
            .block_on(r.engine.handle(&r.ring, req(op::FLUSH, 0, 0), user(&r, 0))),
        0
    );
    assert_eq!(r.engine.stats.devices[0].snapshot().flushes, 1);
    assert_eq!(r.engine.stats.devices[2].snapshot().flushes, 1);
    let mut back = vec![0u8; data.len()];
    fs::File::open(&r.paths[0])
        .unwrap()
        .read_exact_at(&mut back, 4096 * 512)
        .unwrap();
    assert_eq!(back, data);

    // Discard the first 32 sectors: they read back as zeros, the rest stays.
    assert_eq!(
        r.ring.block_on(
            r.engine
                .handle(&r.ring, req(op::DISCARD, 0, 32), user(&r, 0))
        ),
        0
    );
    fs::File::open(&r.paths[0])
        .unwrap()
        .read_exact_at(&mut back, 4096 * 512)
        .unwrap();
    assert!(back[..32 * 512].iter().all(|&b| b == 0));
    assert_eq!(back[32 * 512..], data[32 * 512..]);

    // Write zeroes across the linear/striped boundary and into the zero segment.
    r.bufs[0].slice()[..4096].fill(0xAB);
    for s in [2040u64, 2048, 2064] {
        assert_eq!(
            r.ring
                .block_on(r.engine.handle(&r.ring, req(op::WRITE, s, 8), user(&r, 0))),
            4096
        );
    }
    let res = r.ring.block_on(r.engine.handle(
        &r.ring,
        req(op::WRITE_ZEROES, 2040, 6200),
        user(&r, 0),
    ));
    assert_eq!(res, 0);
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::READ, 2040, 40), user(&r, 0)),
    );
    assert_eq!(res, 40 * 512);
    assert!(r.bufs[0].slice()[..40 * 512].iter().all(|&b| b == 0));
    assert!(r.engine.stats.segments[1].snapshot().write_zeroes >= 1);
    // Discard reaching the error segment fails.
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::DISCARD, 8700, 8), user(&r, 0)),
    );
    assert_eq!(res, -libc::EIO);
}

#[test]
fn unknown_ops_are_refused() {
    let r = rig(1);
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(4, 0, 8), user(&r, 0)));
    assert_eq!(res, -libc::EOPNOTSUPP);
}

#[test]
fn delay_holds_a_piece_on_the_ring_for_its_delay() {
    let r = rig_with(1, "0 64 delay {a} 0 40 {a} 0 0");
    let t = std::time::Instant::now();
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(op::READ, 0, 8), user(&r, 0)));
    assert_eq!(res, 4096);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(40),
        "{:?}",
        t.elapsed()
    );
    let names = [r.paths[0].display().to_string()];
    let st = r.engine.table.status_lines(&[0]);
    assert_eq!(
        st,
        vec!["0 64 delay 0 0 0".to_string()],
        "{names:?}: nothing held now"
    );
}

#[test]
fn flakey_corrupts_reads_in_the_buffer_and_writes_on_the_device() {
    let data = pattern(3, 4096);
    // A read corruption changes what the caller gets, not the file.
    let r = rig_with(1, "0 64 flakey {a} 8 0 1 5 corrupt_bio_byte 10 r 7 0");
    fs::write(&r.paths[0], [vec![0u8; 4096], data.clone()].concat()).unwrap();
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(op::READ, 0, 8), user(&r, 0)));
    assert_eq!(res, 4096);
    let mut want = data.clone();
    want[9] = 7;
    assert_eq!(&r.bufs[0].slice()[..4096], &want[..]);
    assert_eq!(fs::read(&r.paths[0]).unwrap()[4096..8192], data[..]);
    // A write corruption lands on the device; the caller's data is intact.
    let r = rig_with(1, "0 64 flakey {a} 8 0 1 5 corrupt_bio_byte 4000 w 7 0");
    r.bufs[0].slice()[..4096].copy_from_slice(&data);
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(op::WRITE, 0, 8), user(&r, 0)));
    assert_eq!(res, 4096);
    let mut want = data.clone();
    want[3999] = 7;
    assert_eq!(fs::read(&r.paths[0]).unwrap()[4096..8192], want[..]);
    assert_eq!(&r.bufs[0].slice()[..4096], &data[..]);
}

#[test]
fn flakey_drops_or_fails_writes_while_down() {
    let data = pattern(4, 4096);
    for (features, want) in [("1 drop_writes", 4096), ("1 error_writes", -libc::EIO)] {
        let r = rig_with(1, &format!("0 64 flakey {{a}} 0 0 1 {features}"));
        r.bufs[0].slice()[..4096].copy_from_slice(&data);
        let res = r
            .ring
            .block_on(r.engine.handle(&r.ring, req(op::WRITE, 0, 8), user(&r, 0)));
        assert_eq!(res, want, "{features}");
        assert!(fs::read(&r.paths[0]).unwrap()[..4096]
            .iter()
            .all(|&b| b == 0));
        // Flushes go the way of writes.
        let res = r
            .ring
            .block_on(r.engine.handle(&r.ring, req(op::FLUSH, 0, 0), user(&r, 0)));
        assert_eq!(res, if want > 0 { 0 } else { want }, "{features}: flush");
    }
}

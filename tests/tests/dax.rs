//! DAX on real (emulated) persistent memory: probing fs-dax files and
//! device-dax devices, `DaxMapping` on both, and the DAX engine serving
//! requests from them. These need pmem, not ublk, but start with
//! `require_ublk()` so that they run only in the guest (`cargo xtask test`),
//! where NVDIMM 0 is used as fs-dax and NVDIMM 1 as device-dax.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use rdm_dax::{probe, Dax, DaxInfo, DaxKind, DaxMapping, UnsupportedReason};
use rdm_targets::Table;
use rdm_tests::*;
use rdm_ublk_server::backend::dax::DaxBackend;
use rdm_ublk_server::buffer::{Aux, Buffer};
use rdm_ublk_server::dax_path::{decide, DaxDecision, DaxPolicy};
use rdm_ublk_server::handler::Handler;
use rdm_ublk_server::request::{op, Request};
use rdm_ublk_server::ring::HostRing;

const MIB: u64 = 1 << 20;

/// A file of `size` bytes on the fs-dax mount, filled with `fill`.
fn fsdax_file(name: &str, size: u64, fill: u8) -> PathBuf {
    let p = pmem_fsdax(0).join(name);
    let _ = fs::remove_file(&p);
    fs::write(&p, vec![fill; size as usize]).unwrap();
    p
}

fn supported(p: &Path) -> DaxInfo {
    match probe(p).unwrap_or_else(|e| panic!("probe {}: {e}", p.display())) {
        Dax::Supported(i) => i,
        Dax::Unsupported(u) => panic!("{} unexpectedly unsupported: {u}", p.display()),
    }
}

#[test]
fn dax_probe_fsdax_file() {
    if !require_ublk() {
        return;
    }
    let p = fsdax_file("probe.img", 4 * MIB, 0);
    let i = supported(&p);
    println!("{i}");
    assert_eq!(i.kind, DaxKind::FsDax);
    assert_eq!(i.size, 4 * MIB);
    assert!(i.writable);
    assert!(
        i.region.as_deref().is_some_and(|r| r.starts_with("region")),
        "{i}"
    );
    // Not on the DAX mount: a tmpfs file is not DAX.
    let s = Scratch::new("dax-probe");
    let plain = s.file("plain.img", MIB);
    match probe(Path::new(&plain)).unwrap() {
        Dax::Unsupported(u) => assert!(
            matches!(
                u.reason,
                UnsupportedReason::NotDax | UnsupportedReason::MapSyncRefused { .. }
            ),
            "{u}"
        ),
        Dax::Supported(i) => panic!("tmpfs file is DAX? {i}"),
    }
    // The decision over a table of it: capable, active.
    let t = Table::parse(&format!("0 8192 linear {} 0", p.display())).unwrap();
    let d = decide(&t, DaxPolicy::Required).unwrap();
    assert!(d.active && d.note.is_none(), "{d:?}");
    assert_eq!(d.devices[0].kind, Some(DaxKind::FsDax));
    assert!(d.devices[0].persistence_domain.is_some());
}

#[test]
fn dax_probe_devdax() {
    if !require_ublk() {
        return;
    }
    let dev = pmem_devdax(1);
    let i = supported(&dev);
    println!("{i}");
    assert_eq!(i.kind, DaxKind::DevDax);
    assert!(i.size >= 256 * MIB, "{i}");
    assert!(i.align.is_power_of_two() && i.align >= 4096, "{i}");
    assert!(i.region.is_some(), "{i}");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    random_bytes(len, seed)
}

fn exercise_mapping(m: &DaxMapping) {
    let len = m.len();
    let cases = [
        (0u64, 4096usize),
        (4096 * 3 + 17, 100_000),
        (len - 513, 513),
    ];
    for (i, &(off, n)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, n);
        m.write_at(off, &data).unwrap();
        let mut back = vec![0u8; n];
        m.read_at(off, &mut back).unwrap();
        assert_same_bytes(&back, &data, "mapping round trip");
        m.persist(off, n as u64).unwrap();
    }
    m.fill_zero(100, 5000).unwrap();
    let mut back = vec![1u8; 5000];
    m.read_at(100, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    m.fence();
    assert!(m.write_at(len - 1, &[0, 0]).is_err());
}

#[test]
fn dax_mapping_fsdax_and_devdax() {
    if !require_ublk() {
        return;
    }
    let p = fsdax_file("map.img", 8 * MIB, 0x11);
    {
        let m = DaxMapping::open(&p).unwrap();
        assert_eq!(m.kind(), Some(DaxKind::FsDax));
        exercise_mapping(&m);
        m.write_at(MIB, b"durable").unwrap();
    }
    // The stores reached the file (through the page-cache-less DAX path).
    let f = fs::read(&p).unwrap();
    assert_eq!(&f[MIB as usize..][..7], b"durable");
    assert_eq!(f[MIB as usize + 7], 0x11);

    let dev = pmem_devdax(1);
    let m = DaxMapping::open(&dev).unwrap();
    assert_eq!(m.kind(), Some(DaxKind::DevDax));
    exercise_mapping(&m);
    // Device-dax has no holes: punch_hole zeroes.
    m.write_at(8192, &[7u8; 4096]).unwrap();
    m.punch_hole(8192, 4096).unwrap();
    let mut b = [1u8; 4096];
    m.read_at(8192, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

fn req(op: u32, sector: u64, nr: u32) -> Request {
    Request {
        op_flags: op,
        sector,
        nr_sectors: nr,
    }
}

/// Random writes through the engine (copy mode), read back against a model.
/// The request handler over the DAX mappings of an active decision.
fn open_dax(t: rdm_targets::Table, d: &DaxDecision) -> Handler<DaxBackend> {
    let backend = DaxBackend::open(&t, d).expect("map the DAX devices");
    Handler::new(t, backend, Aux::default())
}

fn engine_round_trip(e: &Handler<DaxBackend>, ring: &Rc<HostRing>, sectors: u64) -> Vec<u8> {
    let mut model = vec![0u8; (sectors * 512) as usize];
    // Start from what is there.
    for (i, chunk) in model.chunks_mut(512 << 10).enumerate() {
        let base = chunk.as_mut_ptr();
        let nr = (chunk.len() / 512) as u32;
        let r = ring.block_on(e.handle(
            ring,
            req(op::READ, i as u64 * 1024, nr),
            Buffer::User { base, index: 0 },
        ));
        assert_eq!(r, chunk.len() as i32);
    }
    let mut rng = 99u64;
    for round in 0..300u64 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let nr = ((rng >> 33) % 256 + 1) as u32;
        let s = (rng >> 13) % (sectors - u64::from(nr));
        let mut data = pattern(round + 7, nr as usize * 512);
        model[(s * 512) as usize..][..data.len()].copy_from_slice(&data);
        let fua = if round % 4 == 0 { op::F_FUA } else { 0 };
        let base = data.as_mut_ptr();
        let r = ring.block_on(e.handle(
            ring,
            req(op::WRITE | fua, s, nr),
            Buffer::User { base, index: 0 },
        ));
        assert_eq!(r, (nr * 512) as i32, "write {round}");
    }
    assert_eq!(
        ring.block_on(e.handle(
            ring,
            req(op::FLUSH, 0, 0),
            Buffer::User {
                index: 0,
                base: std::ptr::null_mut()
            }
        )),
        0
    );
    let mut back = vec![0u8; model.len()];
    for (i, chunk) in back.chunks_mut(512 << 10).enumerate() {
        let base = chunk.as_mut_ptr();
        let nr = (chunk.len() / 512) as u32;
        let r = ring.block_on(e.handle(
            ring,
            req(op::READ, i as u64 * 1024, nr),
            Buffer::User { base, index: 0 },
        ));
        assert_eq!(r, chunk.len() as i32);
    }
    assert_same_bytes(&back, &model, "engine read-back");
    model
}

#[test]
fn dax_engine_fsdax_files() {
    if !require_ublk() {
        return;
    }
    let a = fsdax_file("eng-a.img", 16 * MIB, 0);
    let b = fsdax_file("eng-b.img", 16 * MIB, 0);
    // 4 MiB linear from a at 8 MiB, then 16 MiB striped over a and b.
    let text = format!(
        "0 8192 linear {a} 16384\n8192 32768 striped 2 128 {a} 0 {b} 0\n",
        a = a.display(),
        b = b.display()
    );
    let t = Table::parse(&text).unwrap();
    let d = decide(&t, DaxPolicy::Auto).unwrap();
    assert!(d.active, "{d:?}");
    let e = open_dax(t, &d);
    let ring = HostRing::new(64).unwrap();
    let model = engine_round_trip(&e, &ring, 8192 + 32768);
    // Linear part landed in a at 8 MiB.
    let fa = fs::read(&a).unwrap();
    assert_same_bytes(&fa[8 << 20..12 << 20], &model[..4 << 20], "linear in a");
    // First chunk of the striped segment on a at 0, second on b at 0.
    let fb = fs::read(&b).unwrap();
    let seg = 4 << 20;
    assert_same_bytes(&fa[..64 << 10], &model[seg..seg + (64 << 10)], "stripe 0");
    assert_same_bytes(
        &fb[..64 << 10],
        &model[seg + (64 << 10)..seg + (128 << 10)],
        "stripe 1",
    );
    // Discard punches: blocks are freed, reads see zeros.
    let before = fs::metadata(&a).unwrap().blocks();
    let base = std::ptr::null_mut();
    let r = ring.block_on(e.handle(
        &ring,
        req(op::DISCARD, 0, 8192),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(r, 0);
    assert_eq!(
        ring.block_on(e.handle(&ring, req(op::FLUSH, 0, 0), Buffer::User { base, index: 0 })),
        0
    );
    let after = fs::metadata(&a).unwrap().blocks();
    assert!(after < before, "blocks {before} -> {after}");
    let mut z = vec![1u8; 64 << 10];
    let base = z.as_mut_ptr();
    let r = ring.block_on(e.handle(
        &ring,
        req(op::READ, 1000, 128),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(r, 64 << 10);
    assert!(z.iter().all(|&x| x == 0));
    assert_eq!(e.stats.devices[0].discards.load(Relaxed), 1);
    assert_eq!(e.stats.devices[0].errors.load(Relaxed), 0);
}

#[test]
fn dax_engine_devdax() {
    if !require_ublk() {
        return;
    }
    let dev = pmem_devdax(1);
    // 64 MiB at 2 MiB into the device.
    let t = Table::parse(&format!("0 131072 linear {} 4096", dev.display())).unwrap();
    let d = decide(&t, DaxPolicy::Required).unwrap();
    assert_eq!(d.devices[0].kind, Some(DaxKind::DevDax));
    let e = open_dax(t, &d);
    let ring = HostRing::new(64).unwrap();
    let model = engine_round_trip(&e, &ring, 131072);
    // Through a second mapping of the device: the bytes are where the table says.
    let m = DaxMapping::open(&dev).unwrap();
    let mut got = vec![0u8; 1 << 20];
    m.read_at(2 * MIB, &mut got).unwrap();
    assert_same_bytes(&got, &model[..1 << 20], "devdax contents");
    // WRITE_ZEROES zeroes (no holes on device-dax).
    let base = std::ptr::null_mut();
    let r = ring.block_on(e.handle(
        &ring,
        req(op::WRITE_ZEROES, 0, 2048),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(r, 0);
    m.read_at(2 * MIB, &mut got).unwrap();
    assert!(got.iter().all(|&x| x == 0));
}

#[test]
fn dax_engine_user_copy_into_fsdax_mapping() {
    if !require_ublk() {
        return;
    }
    // The kernel storing into (and loading from) a MAP_SYNC mapping on an
    // io_uring READ/WRITE, as USER_COPY does on /dev/ublkcN; a file on
    // tmpfs stands in for the character device.
    let a = fsdax_file("uc.img", 16 * MIB, 0);
    let t = Table::parse(&format!("0 32768 linear {} 0", a.display())).unwrap();
    let d = decide(&t, DaxPolicy::Required).unwrap();
    let e = open_dax(t, &d);
    let s = Scratch::new("dax-uc");
    let cdev_path = s.path("fake-ublkc");
    let cdev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&cdev_path)
        .unwrap();
    let ring = HostRing::new(64).unwrap();
    ring.register_files(&[cdev.as_raw_fd()]).unwrap();
    let pos = |tag, off| libublk::io::UblkIOCtx::ublk_user_copy_pos(0, tag, off);
    let uc = |tag| Buffer::UserCopy {
        cdev_fixed: 0,
        cdev: -1,
        q_id: 0,
        tag,
    };
    for (i, (s, nr)) in [(0u64, 8u32), (17, 1024), (30000, 999)]
        .into_iter()
        .enumerate()
    {
        let tag = i as u16;
        let data = pattern(50 + i as u64, nr as usize * 512);
        cdev.write_all_at(&data, pos(tag, 0)).unwrap();
        let r = ring.block_on(e.handle(&ring, req(op::WRITE, s, nr), uc(tag)));
        assert_eq!(r, (nr * 512) as i32);
        let on_pmem = read_at(a.to_str().unwrap(), s * 512, data.len());
        assert_same_bytes(&on_pmem, &data, "user-copy write");
        let r = ring.block_on(e.handle(&ring, req(op::READ, s, nr), uc(tag + 8)));
        assert_eq!(r, (nr * 512) as i32);
        let mut back = vec![0u8; data.len()];
        cdev.read_exact_at(&mut back, pos(tag + 8, 0)).unwrap();
        assert_same_bytes(&back, &data, "user-copy read");
    }
}

/// Not a check: the cost per 4 KiB request of the two ways data reaches
/// the mapping, without the daemon. Copy mode = the driver's copy into the
/// per-tag buffer (modelled by a memcpy) + `Buffer::User` (copy into pmem +
/// flush + fence). USER_COPY = `Buffer::UserCopy` (one io_uring READ/WRITE
/// that makes the kernel copy between the "request" and the mapping, +
/// flush + fence), with a tmpfs file standing in for /dev/ublkcN. Run:
/// `cargo xtask vm --kernel latest --pmem 512M --icount -- <dax test
/// binary> --ignored --nocapture dax_bench`.
#[test]
#[ignore]
fn dax_bench_user_copy_vs_copy() {
    if !require_ublk() {
        return;
    }
    let a = fsdax_file("bench.img", 16 * MIB, 0x5a); // allocated: no faults
    let t = Table::parse(&format!("0 32768 linear {} 0", a.display())).unwrap();
    let d = decide(&t, DaxPolicy::Required).unwrap();
    let e = open_dax(t, &d);
    let s = Scratch::new("dax-bench");
    let cdev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(s.path("fake-ublkc"))
        .unwrap();
    let pos = libublk::io::UblkIOCtx::ublk_user_copy_pos(0, 0, 0);
    cdev.write_all_at(&pattern(1, 4096), pos).unwrap();
    let ring = HostRing::new(64).unwrap();
    ring.register_files(&[cdev.as_raw_fd()]).unwrap();
    let n = 20_000u64;
    let sector = |i: u64| (i.wrapping_mul(2654435761) % 4096) * 8;
    let request = pattern(2, 4096);
    let mut tagbuf = vec![0u8; 4096];
    let uc = Buffer::UserCopy {
        cdev_fixed: 0,
        cdev: -1,
        q_id: 0,
        tag: 0,
    };
    for (name, opc) in [("write", op::WRITE), ("read", op::READ)] {
        // Warm up both paths.
        for i in 0..500 {
            let base = tagbuf.as_mut_ptr();
            ring.block_on(e.handle(
                &ring,
                req(opc, sector(i), 8),
                Buffer::User { base, index: 0 },
            ));
            ring.block_on(e.handle(&ring, req(opc, sector(i), 8), uc));
        }
        let t0 = std::time::Instant::now();
        for i in 0..n {
            if opc == op::WRITE {
                tagbuf.copy_from_slice(&request); // the driver's copy in
            }
            let base = tagbuf.as_mut_ptr();
            let r = ring.block_on(e.handle(
                &ring,
                req(opc, sector(i), 8),
                Buffer::User { base, index: 0 },
            ));
            assert_eq!(r, 4096);
            if opc == op::READ {
                std::hint::black_box(&mut tagbuf).copy_from_slice(&request); // copy out
            }
        }
        let copy = t0.elapsed();
        let t0 = std::time::Instant::now();
        for i in 0..n {
            let r = ring.block_on(e.handle(&ring, req(opc, sector(i), 8), uc));
            assert_eq!(r, 4096);
        }
        let user_copy = t0.elapsed();
        println!(
            "BENCH 4k {name}: copy mode (memcpy + DaxBuf::User) {:.2} us/req, USER_COPY (one SQE into the mapping) {:.2} us/req",
            copy.as_secs_f64() * 1e6 / n as f64,
            user_copy.as_secs_f64() * 1e6 / n as f64
        );
    }
}

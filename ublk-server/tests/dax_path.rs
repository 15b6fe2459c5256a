//! The DAX path on the host: the policy decision over real (non-DAX) files,
//! and the DAX engine over plain shared mappings of ordinary files driven
//! through a plain io_uring (no ublk, no pmem). USER_COPY is exercised with
//! a sparse regular file standing in for /dev/ublkcN: the engine reads and
//! writes it at `ublk_user_copy_pos(q, tag, offset)` exactly as it would the
//! character device.

mod common;
use common::{pattern, req};

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;

use rdm_dax::{DaxMapping, PersistenceDomain};
use rdm_targets::Table;
use rdm_ublk_server::backend::dax::DaxBackend;
use rdm_ublk_server::buffer::{Aux, Buffer};
use rdm_ublk_server::dax_path::{decide, DaxDecisionError, DaxPolicy};
use rdm_ublk_server::handler::Handler;
use rdm_ublk_server::request::op;
use rdm_ublk_server::ring::{join_all, HostRing};

const FILE: u64 = 4 << 20;

fn files(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let paths: Vec<_> = (0..n).map(|i| dir.path().join(format!("f{i}"))).collect();
    for p in &paths {
        fs::File::create(p).unwrap().set_len(FILE).unwrap();
    }
    (dir, paths)
}

fn two_file_table(p: &[PathBuf]) -> Table {
    Table::parse(&format!(
        "0 2048 linear {} 0\n2048 2048 linear {} 0\n",
        p[0].display(),
        p[1].display()
    ))
    .unwrap()
}

#[test]
fn auto_falls_back_with_one_line_naming_the_file() {
    let (_d, p) = files(2);
    let d = decide(&two_file_table(&p), DaxPolicy::Auto).unwrap();
    assert!(!d.active);
    assert_eq!(d.capable, Some(false));
    let note = d.note.as_deref().unwrap();
    assert!(!note.contains('\n'), "{note}");
    assert!(note.starts_with("dax: "), "{note}");
    assert!(note.contains(p[0].to_str().unwrap()), "{note}");
    assert!(note.contains("not DAX-capable"), "{note}");
    assert!(note.ends_with("serving through io_uring"), "{note}");
    assert!(note.contains("and 1 more"), "{note}");
    for (dev, path) in d.devices.iter().zip(&p) {
        assert_eq!(&dev.path, path);
        assert_eq!(dev.supported, Some(false));
        assert!(dev.reason.as_deref().is_some_and(|r| !r.is_empty()));
        assert_eq!(dev.kind, None);
    }
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["policy"], "auto");
    assert_eq!(v["active"], false);
    assert_eq!(v["devices"][0]["supported"], false);
    assert!(v["devices"][0]["reason"].is_string());
    assert!(v["devices"][0].get("info").is_none());
}

#[test]
fn required_names_every_device() {
    let (_d, p) = files(2);
    let e = decide(&two_file_table(&p), DaxPolicy::Required).unwrap_err();
    assert!(matches!(&e, DaxDecisionError::Required { problems } if problems.len() == 2));
    let msg = e.to_string();
    for f in &p {
        assert!(msg.contains(f.to_str().unwrap()), "{msg}");
    }
    assert!(msg.contains("--dax required"), "{msg}");
}

#[test]
fn off_never_probes() {
    // A missing file would be a probe error; with off it is never looked at.
    let t = Table::parse("0 8 linear /nonexistent/rdm-dax-off 0").unwrap();
    let d = decide(&t, DaxPolicy::Off).unwrap();
    assert!(!d.active);
    assert_eq!(d.capable, None);
    assert_eq!(d.note, None);
    assert_eq!(d.devices[0].supported, None);
    assert_eq!(d.devices[0].reason, None);
    let v = serde_json::to_value(&d).unwrap();
    assert!(v["devices"][0]["supported"].is_null());
}

#[test]
fn a_real_probe_error_fails_auto_and_required() {
    let t = Table::parse("0 8 linear /nonexistent/rdm-dax-missing 0").unwrap();
    for policy in [DaxPolicy::Auto, DaxPolicy::Required] {
        let e = decide(&t, policy).unwrap_err();
        assert!(matches!(e, DaxDecisionError::Probe(_)), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/rdm-dax-missing"),
            "{e}"
        );
    }
}

#[test]
fn zero_segment_is_not_dax_capable() {
    // Only zero/error segments: no device can be blamed, the zero segment is.
    let t = Table::parse("0 8 error\n8 8 zero").unwrap();
    let d = decide(&t, DaxPolicy::Auto).unwrap();
    assert!(!d.active);
    assert!(
        d.reason.as_deref().unwrap().contains("zero segment"),
        "{d:?}"
    );
    assert!(
        d.note.as_deref().unwrap().contains("zero segment (line 2)"),
        "{d:?}"
    );
    let e = decide(&t, DaxPolicy::Required).unwrap_err();
    assert!(e.to_string().contains("zero segment"), "{e}");
    // An error-only table is DAX-capable (the kernel's rule), with no devices.
    let d = decide(&Table::parse("0 8 error").unwrap(), DaxPolicy::Required).unwrap();
    assert!(d.active);
    assert!(d.devices.is_empty());
}

#[test]
fn open_refuses_an_inactive_decision() {
    let (_d, p) = files(2);
    let t = two_file_table(&p);
    let d = decide(&t, DaxPolicy::Auto).unwrap();
    assert!(matches!(
        DaxBackend::open(&t, &d),
        Err(DaxDecisionError::NotActive)
    ));
}

// ---------------------------------------------------------------------------
// The engine.
// ---------------------------------------------------------------------------

struct Rig {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    ring: Rc<HostRing>,
    engine: Handler<DaxBackend>,
    /// Stands in for /dev/ublkcN (fixed file 0).
    cdev: fs::File,
}

/// Three 4 MiB files under linear + striped ×3 + zero + error.
fn rig() -> Rig {
    let (dir, paths) = files(3);
    let text = format!(
        "0 2048 linear {a} 4096\n2048 6144 striped 3 16 {a} 0 {b} 0 {c} 0\n8192 512 zero\n8704 8 error\n",
        a = paths[0].display(),
        b = paths[1].display(),
        c = paths[2].display()
    );
    let table = Table::parse(&text).unwrap();
    let maps = table
        .devices()
        .iter()
        .map(|p| DaxMapping::map_plain_for_tests(p, PersistenceDomain::MemoryController).unwrap())
        .collect();
    let engine = Handler::new(table, DaxBackend::from_mappings(maps), Aux::default());
    let cdev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("fake-ublkc"))
        .unwrap();
    let ring = HostRing::new(256).unwrap();
    ring.register_files(&[cdev.as_raw_fd()]).unwrap();
    Rig {
        _dir: dir,
        paths,
        ring,
        engine,
        cdev,
    }
}

/// Where device byte `at` (below sector 8192) lives: (file, offset).
fn locate(at: u64) -> (usize, u64) {
    let s = at / 512;
    if s < 2048 {
        return (0, (4096 << 9) + at);
    }
    let off = at - (2048 << 9);
    let chunk = off / (16 << 9);
    let stripe = (chunk % 3) as usize;
    (stripe, (chunk / 3) * (16 << 9) + off % (16 << 9))
}

fn rw_user(r: &Rig, opc: u32, sector: u64, buf: &mut [u8]) -> i32 {
    let base = buf.as_mut_ptr();
    r.ring.block_on(r.engine.handle(
        &r.ring,
        req(opc, sector, (buf.len() / 512) as u32),
        Buffer::User { base, index: 0 },
    ))
}

#[test]
fn random_writes_read_back_and_land_in_the_files() {
    let r = rig();
    let data_sectors = 8192u64;
    let mut model = vec![0u8; (data_sectors * 512) as usize];
    let mut rng = 777u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..200u64 {
        let nr = (next() % 256 + 1) as u32;
        let s = next() % (data_sectors - u64::from(nr));
        let mut data = pattern(round, nr as usize * 512);
        let want = data.clone();
        let fua = if round % 3 == 0 { op::F_FUA } else { 0 };
        assert_eq!(
            rw_user(&r, op::WRITE | fua, s, &mut data),
            (nr * 512) as i32
        );
        model[(s * 512) as usize..][..want.len()].copy_from_slice(&want);
    }
    // Read back through the engine, in one big and many small requests.
    let mut all = vec![0u8; model.len()];
    for (i, chunk) in all.chunks_mut(256 << 10).enumerate() {
        let s = (i as u64) * 512;
        assert_eq!(rw_user(&r, op::READ, s, chunk), chunk.len() as i32);
    }
    assert!(all == model, "read-back differs from the model");
    // And in the files, where the table says.
    let f: Vec<fs::File> = r.paths.iter().map(|p| fs::File::open(p).unwrap()).collect();
    for sector in (0..data_sectors).step_by(37) {
        let (file, off) = locate(sector * 512);
        let mut b = [0u8; 512];
        f[file].read_exact_at(&mut b, off).unwrap();
        let want = &model[(sector * 512) as usize..][..512];
        assert_eq!(&b[..], want, "sector {sector} in file {file} at {off}");
    }
    // Concurrent requests on one ring work too (they are synchronous here).
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 4096]).collect();
    let futs = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let base = b.as_mut_ptr();
            r.engine.handle(
                &r.ring,
                req(op::READ, i as u64 * 100, 8),
                Buffer::User { base, index: 0 },
            )
        })
        .collect();
    assert!(r.ring.block_on(join_all(futs)).iter().all(|&x| x == 4096));
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(&b[..], &model[i * 100 * 512..][..4096]);
    }
    let st = &r.engine.stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(st.segments[0].errors.load(Relaxed), 0);
    assert!(st.devices.iter().all(|d| d.writes.load(Relaxed) > 0));
    assert!(st.devices.iter().all(|d| d.reads.load(Relaxed) > 0));
}

#[test]
fn zero_segment_reads_zeros_and_drops_writes() {
    let r = rig();
    let mut data = pattern(5, 8192);
    assert_eq!(rw_user(&r, op::WRITE, 8192, &mut data), 8192);
    let mut back = pattern(6, 8192);
    assert_eq!(rw_user(&r, op::READ, 8192, &mut back), 8192);
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn error_segment_and_out_of_range_fail_whole() {
    let r = rig();
    // A write straddling zero + error: EIO and nothing of it done.
    let mut data = pattern(1, 16 * 512);
    assert_eq!(rw_user(&r, op::WRITE, 8704 - 8, &mut data), -libc::EIO);
    // A write straddling striped + ... + error from the data part.
    let mut data = pattern(2, 1008 * 512);
    let s = 8704 - 1000;
    assert_eq!(rw_user(&r, op::WRITE, s, &mut data), -libc::EIO);
    let mut back = vec![1u8; 512];
    assert_eq!(rw_user(&r, op::READ, 8100, &mut back), 512);
    assert!(
        back.iter().all(|&b| b == 0),
        "the failed write was partly done"
    );
    // Beyond the end of the device.
    let mut b = vec![0u8; 4096];
    assert_eq!(rw_user(&r, op::READ, 8712, &mut b), -libc::EIO);
    assert_eq!(rw_user(&r, op::READ, u64::MAX - 2, &mut b), -libc::EIO);
    // Unknown ops.
    assert_eq!(
        r.ring.block_on(r.engine.handle(
            &r.ring,
            req(99, 0, 1),
            Buffer::User {
                base: b.as_mut_ptr(),
                index: 0
            }
        )),
        -libc::EOPNOTSUPP
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert!(r.engine.stats.segments[3].errors.load(Relaxed) >= 2);
}

#[test]
fn a_mapping_smaller_than_the_table_gives_eio() {
    let (_d, p) = files(1);
    // The table claims 8 MiB of a 4 MiB file (as if it shrank).
    let t = Table::parse(&format!("0 16384 linear {} 0", p[0].display())).unwrap();
    let m = DaxMapping::map_plain_for_tests(&p[0], PersistenceDomain::CpuCache).unwrap();
    let e = Handler::new(t, DaxBackend::from_mappings(vec![m]), Aux::default());
    let ring = HostRing::new(8).unwrap();
    let mut b = vec![0u8; 8192];
    let base = b.as_mut_ptr();
    let res = ring.block_on(e.handle(
        &ring,
        req(op::READ, 8190, 16),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(res, -libc::EIO);
    let res = ring.block_on(e.handle(
        &ring,
        req(op::WRITE, 8192, 16),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(res, -libc::EIO);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(e.stats.devices[0].errors.load(Relaxed), 2);
    let res = ring.block_on(e.handle(
        &ring,
        req(op::DISCARD, 8000, 400),
        Buffer::User { base, index: 0 },
    ));
    assert_eq!(res, -libc::EIO);
}

fn blocks(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().blocks()
}

#[test]
fn discard_and_write_zeroes_punch_and_flush_syncs() {
    let r = rig();
    let mut data = pattern(9, 2048 * 512);
    assert_eq!(rw_user(&r, op::WRITE, 0, &mut data), 2048 * 512);
    let before = blocks(&r.paths[0]);
    let mut dummy = [0u8; 1];
    let base = dummy.as_mut_ptr();
    let h = |o, s, n| {
        r.ring.block_on(
            r.engine
                .handle(&r.ring, req(o, s, n), Buffer::User { base, index: 0 }),
        )
    };
    assert_eq!(h(op::DISCARD, 0, 1024), 0);
    assert_eq!(h(op::WRITE_ZEROES, 1024, 512), 0);
    let after = blocks(&r.paths[0]);
    assert!(
        after < before,
        "discard punched nothing: {before} -> {after}"
    );
    // The mapping reads zeros, the rest is intact.
    let mut back = vec![0xEEu8; 2048 * 512];
    assert_eq!(rw_user(&r, op::READ, 0, &mut back), 2048 * 512);
    assert!(back[..1536 * 512].iter().all(|&b| b == 0));
    assert_eq!(&back[1536 * 512..], &data[1536 * 512..]);
    // So does the file.
    let f = fs::read(&r.paths[0]).unwrap();
    assert!(f[(4096 << 9)..][..1536 * 512].iter().all(|&b| b == 0));
    // Zero segment: nothing to do; error segment: EIO.
    assert_eq!(h(op::DISCARD, 8192, 512), 0);
    assert_eq!(h(op::DISCARD, 8700, 12), -libc::EIO);
    // FLUSH: fence + fdatasync of the punched file.
    assert_eq!(h(op::FLUSH, 0, 0), 0);
    assert_eq!(h(op::FLUSH, 0, 0), 0);
    use std::sync::atomic::Ordering::Relaxed;
    let d0 = &r.engine.stats.devices[0];
    assert_eq!(d0.discards.load(Relaxed), 1);
    assert_eq!(d0.write_zeroes.load(Relaxed), 1);
    assert_eq!(d0.flushes.load(Relaxed), 2);
    assert_eq!(d0.errors.load(Relaxed), 0);
}

fn pos(tag: u16, off: u64) -> u64 {
    libublk::io::UblkIOCtx::ublk_user_copy_pos(0, tag, off as u32)
}

#[test]
fn user_copy_moves_data_between_the_cdev_and_the_mapping() {
    let r = rig();
    let uc = |tag| Buffer::UserCopy {
        cdev_fixed: 0,
        cdev: -1,
        q_id: 0,
        tag,
    };
    // WRITE: the request's data is "in the kernel" (the fake cdev at the
    // tag's position); the engine reads it into the mapping.
    let mut model = vec![0u8; 8192 * 512];
    let writes: &[(u16, u64, u32)] = &[(0, 0, 8), (1, 2000, 300), (2, 4097, 1024), (3, 7000, 1)];
    for (i, &(tag, s, nr)) in writes.iter().enumerate() {
        let data = pattern(100 + i as u64, nr as usize * 512);
        r.cdev.write_all_at(&data, pos(tag, 0)).unwrap();
        let res = r
            .ring
            .block_on(r.engine.handle(&r.ring, req(op::WRITE, s, nr), uc(tag)));
        assert_eq!(res, (nr * 512) as i32, "write {i}");
        model[(s * 512) as usize..][..data.len()].copy_from_slice(&data);
    }
    // Several in flight at once.
    let futs = (0..4u16)
        .map(|tag| {
            let s = 1000 + u64::from(tag) * 600;
            let data = pattern(200 + u64::from(tag), 512 * 512);
            r.cdev.write_all_at(&data, pos(tag, 0)).unwrap();
            model[(s * 512) as usize..][..data.len()].copy_from_slice(&data);
            r.engine.handle(&r.ring, req(op::WRITE, s, 512), uc(tag))
        })
        .collect();
    assert!(r
        .ring
        .block_on(join_all(futs))
        .iter()
        .all(|&x| x == 512 * 512));
    // READ: the engine writes the mapping out to the cdev at the tag's
    // position; compare with a copy-mode read.
    for (tag, s, nr) in [(5u16, 0u64, 1024u32), (6, 1024, 1024), (7, 6000, 1000)] {
        let res = r
            .ring
            .block_on(r.engine.handle(&r.ring, req(op::READ, s, nr), uc(tag)));
        assert_eq!(res, (nr * 512) as i32);
        let mut got = vec![0u8; nr as usize * 512];
        r.cdev.read_exact_at(&mut got, pos(tag, 0)).unwrap();
        assert!(
            got == model[(s * 512) as usize..][..got.len()],
            "user-copy read at {s}"
        );
    }
    // Zero segment in user-copy mode: zeros written to the cdev (more than
    // the 64 KiB zero region, so it loops).
    let junk = pattern(1, 256 * 512);
    r.cdev.write_all_at(&junk, pos(9, 0)).unwrap();
    let res = r.ring.block_on(
        r.engine
            .handle(&r.ring, req(op::READ, 8192 - 128, 256), uc(9)),
    );
    assert_eq!(res, 256 * 512);
    let mut got = vec![1u8; 256 * 512];
    r.cdev.read_exact_at(&mut got, pos(9, 0)).unwrap();
    assert_eq!(&got[..128 * 512], &model[(8192 - 128) * 512..]);
    assert!(got[128 * 512..].iter().all(|&b| b == 0));
    // Error segment: EIO, nothing moved.
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(op::WRITE, 8700, 8), uc(0)));
    assert_eq!(res, -libc::EIO);
    // A bad fixed file: the ring's error comes back.
    let bad = Buffer::UserCopy {
        cdev_fixed: 5,
        cdev: -1,
        q_id: 0,
        tag: 0,
    };
    let res = r
        .ring
        .block_on(r.engine.handle(&r.ring, req(op::READ, 0, 8), bad));
    assert!(res < 0, "{res}");
}

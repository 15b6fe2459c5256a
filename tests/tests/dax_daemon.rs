//! DAX through the daemon: `rdm create --dax required|auto|off` over fs-dax
//! files and device-dax, data agreement between the DAX path, the files
//! themselves and the io_uring path, and persistence across a hard stop
//! (two boots on one pmem image, driven by `cargo xtask test`).

use std::path::Path;
use std::time::Duration;

use rdm_tests::*;

const MIB: u64 = 1 << 20;

fn fio_verify_small(dev: &str) {
    fio(
        dev,
        &[
            "--rw=randwrite",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--bssplit=4k/50:64k/30:512k/20",
            "--io_size=4M",
        ],
    );
}

/// A fresh directory on the fs-dax mount of NVDIMM 0.
fn dax_dir(tag: &str) -> String {
    let d = pmem_fsdax(0).join(tag);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.to_str().unwrap().to_string()
}

fn file(dir: &str, name: &str, size: u64) -> String {
    let p = format!("{dir}/{name}");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

#[test]
fn required_on_fsdax_serves_linear_and_striped_through_dax() {
    if !require_ublk() {
        return;
    }
    let d = dax_dir("req");
    let (a, b, c) = (
        file(&d, "a", 16 * MIB),
        file(&d, "b", 8 * MIB),
        file(&d, "c", 8 * MIB),
    );
    // 16 MiB linear + 16 MiB striped over two files in 64 KiB chunks.
    let table = format!("0 32768 linear {a} 0; 32768 32768 striped 2 128 {b} 0 {c} 0");
    let dev = Device::create("dax-req", &table, &["--dax", "required"]);
    assert_eq!(dev.mode, "dax");
    let st = dev.status();
    assert_eq!(st["mode"], "dax");
    assert_eq!(st["dax"]["active"], true, "{st}");
    for d in st["devices"].as_array().unwrap() {
        assert_eq!(d["access"], "dax", "{st}");
    }
    fio_verify_small(dev.bdev_str());

    // Bytes through the DAX device are in the files and read back the same
    // through an io_uring (--dax off) device over the same files.
    let data = random_bytes(24 * MIB as usize, 11);
    write_dev(dev.bdev_str(), 4 * MIB, &data);
    let st = dev.status();
    assert!(
        st["segments"][1]["stats"]["writes"].as_u64().unwrap() > 0,
        "{st}"
    );
    dev.remove();
    drop_caches();
    assert_same_bytes(
        &read_at(&a, 4 * MIB, 12 * MIB as usize),
        &data[..12 * MIB as usize],
        "file a",
    );
    let off = Device::create("dax-off", &table, &["--dax", "off"]);
    assert_ne!(off.mode, "dax");
    assert_eq!(off.status()["dax"]["active"], false);
    assert_same_bytes(
        &pread_direct(off.bdev_str(), 4 * MIB, data.len()).unwrap(),
        &data,
        "read through --dax off",
    );
    off.remove();
}

#[test]
fn devdax_backing_device() {
    if !require_ublk() {
        return;
    }
    let dax = pmem_devdax(1);
    let dax = dax.to_str().unwrap();
    let table = format!("0 65536 linear {dax} 0");
    let dev = Device::create("dax-dev", &table, &["--dax", "required"]);
    assert_eq!(dev.mode, "dax");
    fio_verify_small(dev.bdev_str());
    let data = random_bytes(8 * MIB as usize, 12);
    write_dev(dev.bdev_str(), 2 * MIB, &data);
    dev.remove();
    let again = Device::create("dax-dev", &table, &[]);
    assert_eq!(again.mode, "dax", "auto picks DAX on devdax");
    assert_same_bytes(
        &pread_direct(again.bdev_str(), 2 * MIB, data.len()).unwrap(),
        &data,
        "devdax",
    );
    again.remove();
    // Without the DAX path a devdax device cannot be served at all.
    let before = ublk_nodes();
    let out = rdm(&["create", "dax-dev-off", "--dax", "off", "--table", &table]);
    assert!(!out.ok());
    assert!(
        out.stderr.contains("device-dax") && out.stderr.contains(dax),
        "{out}"
    );
    assert_no_trace("dax-dev-off", &before);
}

#[test]
fn required_fails_on_tmpfs_and_auto_falls_back_saying_why() {
    if !require_ublk() {
        return;
    }
    let d = dax_dir("mixed");
    let a = file(&d, "a", 8 * MIB);
    let s = Scratch::new("dax-tmpfs");
    let t = s.file("t.img", 8 * MIB);
    let table = format!("0 16384 linear {a} 0; 16384 16384 linear {t} 0");
    let before = ublk_nodes();
    let out = rdm(&["create", "dax-mix", "--dax", "required", "--table", &table]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains(&t) && out.stderr.contains("not a DAX file"),
        "{out}"
    );
    assert!(
        !out.stderr.contains(&format!("{a}:")),
        "a is DAX-capable: {out}"
    );
    assert_no_trace("dax-mix", &before);

    let out = rdm(&["create", "dax-mix", "--table", &table]);
    assert!(out.ok(), "{out}");
    let note: Vec<&str> = out.stderr.lines().filter(|l| l.contains("dax:")).collect();
    assert_eq!(note.len(), 1, "one line says why: {out}");
    assert!(note[0].contains(&t), "{out}");
    let st = rdm_json(&["status", "dax-mix"]);
    assert_eq!(st["dax"]["active"], false);
    assert_ne!(st["mode"], "dax");
    rdm_ok(&["remove", "dax-mix"]);
}

// --- persistence: two boots on one pmem image (see tools/xtask/src/test.rs) ---

const PERSIST_DIR: &str = "/tmp/rdm-persist";

fn persist_tables(dir: &str) -> (String, String) {
    (
        format!("0 16384 linear {dir}/d0 0; 16384 16384 striped 2 8 {dir}/d1 0 {dir}/d2 0"),
        format!("0 16384 linear {dir}/u0 0"),
    )
}

/// Boot 1: write through a DAX device and an io_uring device on fs-dax
/// files, each write made durable the way an application would (O_SYNC,
/// or write + fsync), then power off at once: no sync, no unmount.
#[test]
#[ignore = "phase 1 of the persistence test; cargo xtask test runs it"]
fn persist_phase1_write_then_hard_stop() {
    assert!(require_ublk());
    let ctl = std::env::var("RDM_VM_CTL").expect("run by cargo xtask test (RDM_VM_CTL)");
    let mnt = pmem_fsdax(0);
    let dir = mnt.join("p");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().unwrap().to_string();
    for f in ["d0", "d1", "d2", "u0"] {
        file(&dir, f, 8 * MIB);
    }
    // The files must survive too: make the directory durable now.
    sh("sync", &[] as &[&str]);
    let (dax_table, uring_table) = persist_tables(&dir);
    let dax = Device::create("persist-dax", &dax_table, &["--dax", "required"]);
    let uring = Device::create("persist-uring", &uring_table, &["--dax", "off"]);
    assert_eq!(dax.mode, "dax");
    pwrite_direct(
        dax.bdev_str(),
        0,
        &random_bytes(4 * MIB as usize, 21),
        libc::O_SYNC,
    )
    .unwrap();
    write_dev(dax.bdev_str(), 8 * MIB, &random_bytes(8 * MIB as usize, 22));
    pwrite_direct(
        uring.bdev_str(),
        MIB,
        &random_bytes(2 * MIB as usize, 23),
        libc::O_SYNC,
    )
    .unwrap();
    write_dev(
        uring.bdev_str(),
        4 * MIB,
        &random_bytes(2 * MIB as usize, 24),
    );
    // Report success ourselves: the guest will not get to.
    std::fs::write(format!("{ctl}/status"), "0\n").unwrap();
    std::fs::write("/proc/sysrq-trigger", "o").unwrap();
    std::thread::sleep(Duration::from_secs(60));
    unreachable!("the guest should have powered off");
}

/// Boot 2, same pmem image: every write made durable in phase 1 is there,
/// in the files and through new devices on them.
#[test]
#[ignore = "phase 2 of the persistence test; cargo xtask test runs it"]
fn persist_phase2_verify() {
    assert!(require_ublk());
    // Mount what phase 1 left, without formatting (the journal replays).
    let ns = pmem_namespace(0, "fsdax");
    let bdev = format!("/dev/{}", ns["blockdev"].as_str().expect("fsdax blockdev"));
    wait_for_path(&bdev, Duration::from_secs(10));
    std::fs::create_dir_all(PERSIST_DIR).unwrap();
    sh("mount", &["-o", "dax", &bdev, PERSIST_DIR]);
    let dir = format!("{PERSIST_DIR}/p");
    assert!(
        Path::new(&dir).join("d0").exists(),
        "the backing files survived"
    );
    let d = |n: usize, seed| random_bytes(n, seed);
    let (dax_table, uring_table) = persist_tables(&dir);
    let dax = Device::create("persist-dax", &dax_table, &["--dax", "required"]);
    assert_same_bytes(
        &pread_direct(dax.bdev_str(), 0, 4 * MIB as usize).unwrap(),
        &d(4 * MIB as usize, 21),
        "O_SYNC write via DAX",
    );
    assert_same_bytes(
        &pread_direct(dax.bdev_str(), 8 * MIB, 8 * MIB as usize).unwrap(),
        &d(8 * MIB as usize, 22),
        "fsync'd write via DAX",
    );
    dax.remove();
    let uring = Device::create("persist-uring", &uring_table, &["--dax", "off"]);
    assert_same_bytes(
        &pread_direct(uring.bdev_str(), MIB, 2 * MIB as usize).unwrap(),
        &d(2 * MIB as usize, 23),
        "O_SYNC write via io_uring",
    );
    assert_same_bytes(
        &pread_direct(uring.bdev_str(), 4 * MIB, 2 * MIB as usize).unwrap(),
        &d(2 * MIB as usize, 24),
        "fsync'd write via io_uring",
    );
    uring.remove();
    // And straight from the file, bypassing rdm.
    assert_same_bytes(
        &read_at(&format!("{dir}/u0"), MIB, 2 * MIB as usize),
        &d(2 * MIB as usize, 23),
        "file u0",
    );
    sh("umount", &[PERSIST_DIR]);
}

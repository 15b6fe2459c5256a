//! dm's verbs on a live device, under I/O: `rdm reload` + `resume` grows
//! a device and a mounted ext4 online (UPDATE_SIZE, 6.16+; refused up
//! front on 6.12), moves a segment to a copy of its file as pvmove does,
//! and 50 suspend/resume cycles pass — each with fio's crc32c verification
//! running and seeing no error. The verbs behave as dmsetup's: a bad
//! reload changes nothing, resume without a table just resumes, a second
//! suspend is harmless, held I/O waits instead of failing.

use std::time::{Duration, Instant};

use rdm_tests::*;

const MIB: u64 = 1 << 20;

fn sectors(bytes: u64) -> u64 {
    bytes / 512
}

fn table_of(name: &str) -> String {
    rdm_ok(&["table", name])
}

fn inactive_of(name: &str) -> String {
    rdm_ok(&["table", "--inactive", name])
}

fn ls_flag(name: &str, key: &str) -> bool {
    let e = ls_entry(name).unwrap_or_else(|| panic!("{name} not listed"));
    e[key]
        .as_bool()
        .unwrap_or_else(|| panic!("no {key} in {e}"))
}

fn has_update_size() -> bool {
    kernel_version() >= (6, 16)
}

#[test]
fn reload_appends_a_segment_and_ext4_grows_online_under_fio() {
    if !require_ublk() {
        return;
    }
    for zc in modes() {
        let s = Scratch::new("live-grow");
        let a = s.file("a.img", 96 * MIB);
        let b = s.file("b.img", 64 * MIB);
        let t1 = format!("0 {} linear {a} 0", sectors(96 * MIB));
        let t2 = format!(
            "{t1}\n{} {} linear {b} 0",
            sectors(96 * MIB),
            sectors(64 * MIB)
        );
        let dev = Device::create_in_mode("lgrow", &t1, zc, &[]);
        let bdev = dev.bdev_str().to_string();
        // 4 KiB blocks: the lockfs check below looks for 4 KiB-aligned data.
        sh("mkfs.ext4", &["-q", "-F", "-b", "4096", &bdev]);
        let mnt = s.path("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mnt = mnt.to_str().unwrap().to_string();
        sh("mount", &[&bdev, &mnt]);
        let fio = BackgroundVerify::start_rw(&format!("{mnt}/fio.dat"), "48M", "192M", "randrw");
        std::thread::sleep(Duration::from_secs(2));
        // lockfs: a suspend freezes ext4 first, so data that was only in
        // the page cache is on the backing file while suspended.
        let marker = random_bytes(64 << 10, 99);
        std::fs::write(format!("{mnt}/marker"), &marker).unwrap();
        rdm_ok(&["suspend", "lgrow"]);
        let backing = std::fs::read(&a).unwrap();
        assert!(
            backing.chunks(4096).any(|c| c == &marker[..4096]),
            "{zc}: suspend froze the file system: its dirty data is on a.img"
        );
        rdm_ok(&["resume", "lgrow"]);
        if !has_update_size() {
            let out = rdm(&["reload", "lgrow", "--table", &t2]);
            assert!(!out.ok(), "a size change without UPDATE_SIZE: {out}");
            assert!(
                out.stderr.contains("UPDATE_SIZE") && out.stderr.lines().count() == 1,
                "{out}"
            );
            assert_eq!(inactive_of("lgrow"), "", "nothing loaded");
            assert_eq!(dev_size(&bdev), 96 * MIB);
        } else {
            rdm_ok(&["reload", "lgrow", "--table", &t2]);
            assert_eq!(inactive_of("lgrow").trim(), t2, "{zc}");
            assert_eq!(dev_size(&bdev), 96 * MIB, "a reload touches nothing");
            assert!(ls_flag("lgrow", "inactive_table"));
            rdm_ok(&["resume", "lgrow"]);
            assert_eq!(dev_size(&bdev), 160 * MIB, "{zc}: resume grows the device");
            assert_eq!(table_of("lgrow").trim(), t2);
            assert_eq!(inactive_of("lgrow"), "");
            let before = statvfs_bytes(&mnt);
            sh("resize2fs", &[&bdev]);
            let after = statvfs_bytes(&mnt);
            assert!(
                after > before + 48 * MIB,
                "{zc}: ext4 grew online: {before} -> {after}"
            );
            // The new space takes data.
            let big = format!("{mnt}/fill.dat");
            sh(
                "dd",
                &[
                    "if=/dev/urandom",
                    &format!("of={big}"),
                    "bs=1M",
                    "count=80",
                    "oflag=direct",
                    "status=none",
                ],
            );
        }
        fio.assert_clean(&format!("{zc}: across reload + resume + resize2fs"));
        sh("umount", &[&mnt]);
        sh("e2fsck", &["-f", "-n", &bdev]);
        let st = dev.status();
        assert_eq!(st["suspended"], false, "{st}");
        dev.remove();
    }
}

fn statvfs_bytes(path: &str) -> u64 {
    let out = sh("df", &["-B1", "--output=size", path]);
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df: {out}"))
}

#[test]
fn reload_moves_a_segment_to_a_copy_of_its_file_like_pvmove() {
    if !require_ublk() {
        return;
    }
    for zc in modes() {
        let s = Scratch::new("live-move");
        let a = s.file("a.img", 32 * MIB);
        let b = s.file("b.img", 32 * MIB);
        let c = s.path("c.img").to_str().unwrap().to_string();
        let half = sectors(32 * MIB);
        let t1 = format!("0 {half} linear {a} 0\n{half} {half} linear {b} 0");
        let t2 = format!("0 {half} linear {c} 0\n{half} {half} linear {b} 0");
        let dev = Device::create_in_mode("lmove", &t1, zc, &[]);
        let bdev = dev.bdev_str().to_string();
        let fio = BackgroundVerify::start_rw(&bdev, "64M", "160M", "randrw");
        std::thread::sleep(Duration::from_secs(2));
        rdm_ok(&["suspend", "lmove"]);
        assert!(ls_flag("lmove", "suspended"));
        // Suspended and flushed: the copy is byte-identical.
        std::fs::copy(&a, &c).expect("copy a.img");
        let a_at_copy = std::fs::read(&a).unwrap();
        rdm_ok(&["reload", "lmove", "--table", &t2]);
        rdm_ok(&["resume", "lmove"]);
        assert!(!ls_flag("lmove", "suspended"));
        fio.assert_clean(&format!("{zc}: across the move"));
        assert_eq!(table_of("lmove").trim(), t2);
        // Every write after the resume went to the copy, none to a.img.
        assert!(
            std::fs::read(&a).unwrap() == a_at_copy,
            "{zc}: a.img written after the move"
        );
        drop_caches();
        let dev_first = read_at(&bdev, 0, (32 * MIB) as usize);
        let c_now = std::fs::read(&c).unwrap();
        assert_same_bytes(&dev_first, &c_now, "device's first segment vs c.img");
        assert!(
            dev_first != a_at_copy,
            "{zc}: fio wrote after the move, so the device differs from a.img"
        );
        let st = dev.status();
        let paths: Vec<&str> = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, [c.as_str(), b.as_str()], "{st}");
        dev.remove();
    }
}

#[test]
fn fifty_suspend_resume_cycles_under_fio_lose_nothing() {
    if !require_ublk() {
        return;
    }
    // One mode: the hold is the same code in both (the swaps above run in
    // every mode).
    for zc in modes().into_iter().rev().take(1) {
        let s = Scratch::new("live-cycles");
        let a = s.file("a.img", 64 * MIB);
        let dev = Device::create_in_mode(
            "lcycle",
            &format!("0 {} linear {a} 0", sectors(64 * MIB)),
            zc,
            &["--queues", "2"],
        );
        let fio = BackgroundVerify::start_rw(dev.bdev_str(), "64M", "256M", "randrw");
        std::thread::sleep(Duration::from_secs(1));
        let (mut cycle, mut held) = (Vec::new(), Vec::new());
        for i in 0..50 {
            let t = Instant::now();
            rdm_ok(&["suspend", "lcycle"]);
            let v: serde_json::Value =
                serde_json::from_str(&rdm_ok(&["resume", "lcycle", "--json"])).unwrap();
            cycle.push(t.elapsed());
            // From the hold to the release, as the server measured it.
            held.push(Duration::from_micros(
                v["held_us"].as_u64().expect("held_us"),
            ));
            if i % 10 == 9 {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        fio.assert_clean(&format!("{zc}: across 50 suspend/resume cycles"));
        cycle.sort();
        held.sort();
        println!(
            "{zc}: I/O held per suspend/resume cycle (guest time): median {:?}, max {:?}; both commands: median {:?}",
            held[held.len() / 2],
            held[held.len() - 1],
            cycle[cycle.len() / 2],
        );
        let st = dev.status();
        assert_eq!(st["suspended"], false, "{st}");
        dev.remove();
    }
}

#[test]
fn verbs_behave_as_dmsetup_and_a_bad_reload_changes_nothing() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("live-verbs");
    let a = s.file("a.img", 8 * MIB);
    let small = s.file("small.img", MIB);
    let t1 = format!("0 {} linear {a} 0", sectors(8 * MIB));
    let before = ublk_nodes();
    let dev = Device::create("lverbs", &t1, &[]);
    let bdev = dev.bdev_str().to_string();
    let pattern = random_bytes(4096, 7);
    pwrite_direct(&bdev, 0, &pattern, 0).unwrap();

    // Bad reloads: each refused with one line, nothing loaded or changed.
    let mut bad = vec![
        ("0 100 linear".to_string(), "bad table"),
        (
            "0 16384 linear /nonexistent.img 0".into(),
            "/nonexistent.img",
        ),
        (
            format!("0 {} linear {small} 0", sectors(8 * MIB)),
            "small.img",
        ),
        ("0 16384 frobnicate".into(), "frobnicate"),
    ];
    if !has_update_size() {
        bad.push((
            format!("0 {} linear {a} 0", sectors(4 * MIB)),
            "UPDATE_SIZE",
        ));
    }
    for (table, says) in bad {
        let out = rdm(&["reload", "lverbs", "--table", &table]);
        assert!(!out.ok(), "reload {table:?} accepted: {out}");
        assert!(out.stderr.contains(says), "reload {table:?}: {out}");
        assert_eq!(inactive_of("lverbs"), "", "after {table:?}");
        assert_eq!(table_of("lverbs").trim(), t1);
    }
    assert_same_bytes(
        &pread_direct(&bdev, 0, 4096).unwrap(),
        &pattern,
        "after bad reloads",
    );

    // Resume without a loaded table just resumes; resume of a running
    // device is fine too.
    rdm_ok(&["resume", "lverbs"]);
    rdm_ok(&["suspend", "lverbs"]);
    rdm_ok(&["suspend", "lverbs"]);
    assert!(ls_flag("lverbs", "suspended"));
    assert!(rdm_ok(&["ls"]).contains("suspended"));
    // I/O issued while suspended waits; it is not failed.
    let reader = {
        let bdev = bdev.clone();
        std::thread::spawn(move || pread_direct(&bdev, 0, 4096))
    };
    std::thread::sleep(Duration::from_millis(700));
    assert!(!reader.is_finished(), "a read completed while suspended");
    rdm_ok(&["resume", "lverbs"]);
    let got = reader
        .join()
        .unwrap()
        .expect("the held read succeeds after resume");
    assert_same_bytes(&got, &pattern, "held read");
    assert!(!ls_flag("lverbs", "suspended"));

    // Load, inspect, clear: the live table never changed.
    let b = s.file("b.img", 8 * MIB);
    let t2 = format!("0 {} linear {b} 0", sectors(8 * MIB));
    rdm_ok(&["reload", "lverbs", "--table", &t2]);
    assert_eq!(inactive_of("lverbs").trim(), t2);
    rdm_ok(&["clear", "lverbs"]);
    assert_eq!(inactive_of("lverbs"), "");
    rdm_ok(&["resume", "lverbs"]);
    assert_eq!(table_of("lverbs").trim(), t1);
    assert_same_bytes(
        &pread_direct(&bdev, 0, 4096).unwrap(),
        &pattern,
        "after clear",
    );

    // Resume of a running device with a loaded table suspends, swaps and
    // resumes (as dmsetup resume does): reads now come from b.img.
    rdm_ok(&["reload", "lverbs", "--table", &t2]);
    rdm_ok(&["resume", "lverbs"]);
    assert_eq!(table_of("lverbs").trim(), t2);
    assert_eq!(pread_direct(&bdev, 0, 4096).unwrap(), vec![0u8; 4096]);

    // A suspended device can be removed: its held I/O runs first.
    rdm_ok(&["suspend", "lverbs"]);
    let reader = {
        let bdev = bdev.clone();
        std::thread::spawn(move || pread_direct(&bdev, 0, 4096))
    };
    std::thread::sleep(Duration::from_millis(300));
    dev.remove();
    let _ = reader.join().unwrap();
    assert_no_trace("lverbs", &before);
}

#[test]
fn dax_path_keeps_serving_across_a_swap() {
    if !require_ublk() {
        return;
    }
    let dir = pmem_fsdax(0).join("live");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |n: &str| {
        let p = dir.join(n);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(16 * MIB))
            .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (a, b) = (file("a.img"), file("b.img"));
    let t1 = format!("0 {} linear {a} 0", sectors(16 * MIB));
    // --dax auto (a reload may then leave pmem; `required` would refuse).
    let dev = Device::create("ldax", &t1, &[]);
    assert_eq!(dev.mode, "dax");
    let bdev = dev.bdev_str().to_string();
    let pattern = random_bytes(64 << 10, 11);
    pwrite_direct(&bdev, MIB, &pattern, 0).unwrap();
    rdm_ok(&["suspend", "ldax"]);
    // The pmem file, copied while suspended.
    std::fs::copy(&a, &b).unwrap();
    rdm_ok(&[
        "reload",
        "ldax",
        "--table",
        &format!("0 {} linear {b} 0", sectors(16 * MIB)),
    ]);
    rdm_ok(&["resume", "ldax"]);
    let st = dev.status();
    assert_eq!(st["devices"][0]["path"], b.as_str(), "{st}");
    assert_eq!(st["devices"][0]["access"], "dax", "{st}");
    assert_same_bytes(
        &pread_direct(&bdev, MIB, pattern.len()).unwrap(),
        &pattern,
        "read through DAX from the copy",
    );
    let second = random_bytes(4096, 12);
    pwrite_direct(&bdev, 0, &second, libc::O_SYNC).unwrap();
    assert_same_bytes(&read_at(&b, 0, 4096), &second, "a write lands in b.img");
    assert_ne!(read_at(&a, 0, 4096), second, "and not in a.img");
    // Off pmem: a table the DAX path cannot serve (a file on tmpfs) is
    // served through io_uring on the same device.
    let s = Scratch::new("ldax");
    let c = s.file("c.img", 16 * MIB);
    rdm_ok(&["suspend", "ldax"]);
    std::fs::copy(&b, &c).unwrap();
    rdm_ok(&[
        "reload",
        "ldax",
        "--table",
        &format!("0 {} linear {c} 0", sectors(16 * MIB)),
    ]);
    rdm_ok(&["resume", "ldax"]);
    let st = dev.status();
    assert_ne!(st["devices"][0]["access"], "dax", "{st}");
    assert_same_bytes(
        &pread_direct(&bdev, MIB, pattern.len()).unwrap(),
        &pattern,
        "read through io_uring from c.img",
    );
    let third = random_bytes(8192, 13);
    pwrite_direct(&bdev, 8192, &third, libc::O_SYNC).unwrap();
    assert_same_bytes(&read_at(&c, 8192, 8192), &third, "a write lands in c.img");
    assert_same_bytes(
        &pread_direct(&bdev, 8192, 8192).unwrap(),
        &third,
        "and reads back",
    );
    dev.remove();
    let _ = std::fs::remove_dir_all(&dir);
}

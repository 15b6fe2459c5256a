//! The fault-injection targets against the kernel's own: `flakey` and
//! `delay` tables accepted or refused as `dmsetup create` does, rdm-flakey
//! failing, dropping and corrupting I/O exactly as dm-flakey does on the
//! same bytes, rdm-delay holding only its own I/O, and `rdm status --dm` /
//! `rdm table` printing what `dmsetup status` / `dmsetup table` print.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use rdm_tests::*;

const MIB: u64 = 1 << 20;

/// `tpl` with `{i}` replaced by `devs[i]`; `;` separates lines.
fn fill(tpl: &str, devs: &[String]) -> String {
    let mut t = tpl.to_string();
    for (i, d) in devs.iter().enumerate() {
        t = t.replace(&format!("{{{i}}}"), d);
    }
    t
}

/// Tables over two 8 MiB files `{0}` and `{1}`: whether the newest kernel
/// accepts each, and whether Linux before 6.16 (which lacks some of
/// dm-flakey's duplicate and conflict checks) accepts it anyway.
const TABLES: &[(&str, bool, bool)] = &[
    // flakey: the kernel's syntax and defaults.
    ("0 2048 flakey {0} 0 0 1", true, false),
    ("0 2048 flakey {0} 8 5 5 0", true, false),
    ("0 2048 flakey {0} 0 1 1 1 error_reads", true, false),
    ("0 2048 flakey {0} 0 1 1 1 DROP_WRITES", true, false),
    (
        "0 2048 flakey {0} 0 1 1 2 error_reads error_writes",
        true,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 5 corrupt_bio_byte 32 r 1 0",
        true,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 5 corrupt_bio_byte 1 W 255 4",
        true,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 2 random_read_corrupt 1000000000",
        true,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 4 random_read_corrupt 10 random_write_corrupt 20",
        true,
        false,
    ),
    // Words after the feature group are ignored, as the kernel does.
    ("0 2048 flakey {0} 0 1 1 1 drop_writes surplus", true, false),
    (
        "0 2048 linear {0} 0;2048 2048 flakey {1} 0 4294967294 1",
        true,
        false,
    ),
    ("0 2048 flakey {0} 0 1", false, false),
    ("0 2048 flakey {0} x 1 1", false, false),
    ("0 2048 flakey {0} 0 -1 1", false, false),
    ("0 2048 flakey {0} 0 +1 1", false, false),
    ("0 2048 flakey {0} 0 0 0", false, false),
    ("0 2048 flakey {0} 0 4294967295 1", false, false),
    ("0 2048 flakey {0} 0 1 1 12 drop_writes", false, false),
    ("0 2048 flakey {0} 0 1 1 2 drop_writes", false, false),
    ("0 2048 flakey {0} 0 1 1 1 bogus", false, false),
    (
        "0 2048 flakey {0} 0 1 1 2 drop_writes error_writes",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 2 drop_writes drop_writes",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 5 corrupt_bio_byte 0 r 1 0",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 5 corrupt_bio_byte 1 x 1 0",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 5 corrupt_bio_byte 1 r 256 0",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 4 corrupt_bio_byte 1 r 1",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 6 drop_writes corrupt_bio_byte 1 w 1 0",
        false,
        false,
    ),
    (
        "0 2048 flakey {0} 0 1 1 2 random_read_corrupt 1000000001",
        false,
        false,
    ),
    ("0 20480 flakey {0} 0 1 1", false, false),
    ("0 2048 flakey /nonexistent 0 1 1", false, false),
    // Refused by the newest kernel's checks only.
    (
        "0 2048 flakey {0} 0 1 1 6 error_reads corrupt_bio_byte 1 r 1 0",
        false,
        true,
    ),
    (
        "0 2048 flakey {0} 0 1 1 3 drop_writes random_write_corrupt 5",
        false,
        true,
    ),
    (
        "0 2048 flakey {0} 0 1 1 4 random_read_corrupt 1 random_read_corrupt 2",
        false,
        true,
    ),
    // delay: 3, 6 or 9 arguments, in milliseconds.
    ("0 2048 delay {0} 0 0", true, false),
    ("0 2048 delay {0} 16 50", true, false),
    ("0 2048 delay {0} 0 10 {1} 0 20", true, false),
    ("0 2048 delay {0} 0 10 {1} 0 20 {0} 4096 30", true, false),
    ("0 2048 linear {0} 0;2048 2048 delay {1} 0 50", true, false),
    ("0 2048 delay {0} 0", false, false),
    ("0 2048 delay {0} 0 10 {1}", false, false),
    ("0 2048 delay {0} 0 10 {1} 0 20 {0} 0", false, false),
    ("0 2048 delay {0} x 10", false, false),
    ("0 2048 delay {0} 0 ten", false, false),
    ("0 2048 delay {0} 0 -1", false, false),
    ("0 2048 delay {0} 0 10 {1} 16384 20", false, false),
    ("0 2048 delay /nonexistent 0 10", false, false),
];

#[test]
fn flakey_and_delay_tables_accepted_or_refused_as_kernel_dm() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("tgt-tables");
    let files = vec![s.file("a.img", 8 * MIB), s.file("b.img", 8 * MIB)];
    let loops: Vec<Loop> = files.iter().map(|f| Loop::new(f)).collect();
    let loop_devs: Vec<String> = loops.iter().map(|l| l.dev.clone()).collect();
    let old_kernel = kernel_version() < (6, 16);
    for (i, &(tpl, accepted, older_accepts)) in TABLES.iter().enumerate() {
        let name = format!("tgt-t{i}");
        let nodes = ublk_nodes();
        let table = fill(tpl, &files);
        // `create --dry-run` runs every check `create` does before a device
        // exists; every fourth table is created for real as well.
        let dry = rdm(&["create", &name, "--dry-run", "--table", &table]);
        let rdm_ok = dry.ok();
        if i % 4 == 0 {
            let ours = Device::try_create(&name, &table, &[]);
            assert_eq!(ours.is_ok(), rdm_ok, "{tpl}: create and --dry-run agree");
            if let Ok(dev) = ours {
                dev.remove();
            }
        }
        if !rdm_ok {
            assert!(
                dry.stderr.trim().starts_with("rdm: ") && dry.stderr.contains(&name),
                "{tpl}: a refusal names the device: {dry}"
            );
            assert_no_trace(&name, &nodes);
        }
        assert_eq!(rdm_ok, accepted, "rdm on {tpl:?}");
        let kernel = Dm::try_new(&format!("k{name}"), &fill(tpl, &loop_devs));
        let dm_ok = kernel.is_ok();
        drop(kernel);
        let want = if old_kernel && older_accepts {
            true
        } else {
            rdm_ok
        };
        assert_eq!(dm_ok, want, "kernel dm on {tpl:?} (rdm accepted: {rdm_ok})");
    }
}

/// What a device does with one fixed sequence of I/O: each outcome as a
/// word, and the bytes each read returned.
fn exercise(dev: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut said = Vec::new();
    let mut reads = Vec::new();
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
    };
    let data = written();
    said.push(format!(
        "write {}",
        outcome(pwrite_direct(dev, 4096, &data, 0))
    ));
    for off in [4096u64, 65536] {
        match pread_direct(dev, off, 4096) {
            Ok(b) => {
                said.push(format!("read {off} ok"));
                reads.push(b);
            }
            Err(e) => said.push(format!("read {off} {}", outcome(Err(e)))),
        }
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .expect("open the device");
    said.push(format!("fsync {}", outcome(f.sync_all())));
    (said, reads)
}

/// What [`exercise`] writes.
fn written() -> Vec<u8> {
    random_bytes(4096, 77)
}

/// How many bytes differ.
fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn flakey_down_interval_behaves_as_kernel_dm_flakey() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("tgt-flakey");
    let original = random_bytes(MIB as usize, 5);
    let data = written();
    // (features, whether reads may differ from the file by one random byte)
    let cases: &[(&str, bool)] = &[
        ("", false),
        ("1 error_reads", false),
        ("1 drop_writes", false),
        ("1 error_writes", false),
        ("2 error_reads drop_writes", false),
        ("5 corrupt_bio_byte 100 r 7 0", false),
        ("5 corrupt_bio_byte 4000 w 7 0", false),
        ("5 corrupt_bio_byte 5000 r 7 0", false),
        ("2 random_read_corrupt 1000000000", true),
    ];
    for (i, &(features, random)) in cases.iter().enumerate() {
        // Zero copy differs from copy in how bytes are corrupted (in a
        // kernel buffer): only those cases run in both modes.
        let corrupting = features.contains("corrupt");
        for (round, zc) in modes().into_iter().enumerate() {
            if round > 0 && !corrupting {
                continue;
            }
            let ours = s.path(&format!("r{i}-{round}.img"));
            let theirs = s.path(&format!("k{i}-{round}.img"));
            std::fs::write(&ours, &original).unwrap();
            std::fs::write(&theirs, &original).unwrap();
            // up 0, down 1: always down.
            let tpl = format!("0 2048 flakey {{0}} 0 0 1 {features}");
            let dev = Device::create_in_mode(
                &format!("tgt-fl{i}-{zc}"),
                &fill(&tpl, &[ours.display().to_string()]),
                zc,
                &[],
            );
            let (rdm_said, rdm_reads) = exercise(dev.bdev_str());
            dev.remove();
            let lo = Loop::new(theirs.to_str().unwrap());
            let dm = Dm::new(
                &format!("ktgt-fl{i}"),
                &fill(&tpl, std::slice::from_ref(&lo.dev)),
            );
            let (dm_said, dm_reads) = exercise(&dm.dev);
            drop(dm);
            drop(lo);
            let what = format!("flakey features {features:?} ({zc})");
            assert_eq!(rdm_said, dm_said, "{what}: outcomes");
            if random {
                // Each read is what the device holds, but for at most one
                // (random) byte: the write went through, the rest is as it was.
                let on_device = [&data[..], &original[65536..65536 + 4096]];
                for reads in [&rdm_reads, &dm_reads] {
                    for (r, want) in reads.iter().zip(on_device) {
                        assert!(
                            differing(r, want) <= 1,
                            "{what}: more than one byte differs"
                        );
                    }
                }
            } else {
                for (k, (r, d)) in rdm_reads.iter().zip(&dm_reads).enumerate() {
                    assert_same_bytes(r, d, &format!("{what}: read {k}"));
                }
            }
            drop_caches();
            let got = std::fs::read(&ours).unwrap();
            let want = std::fs::read(&theirs).unwrap();
            assert_same_bytes(&got, &want, &format!("{what}: backing file afterwards"));
        }
    }
    // An up interval maps plainly.
    let f = s.file("up.img", MIB);
    let dev = Device::create("tgt-fl-up", &format!("0 2048 flakey {f} 0 3600 1"), &[]);
    let data = random_bytes(8192, 9);
    pwrite_direct(dev.bdev_str(), 0, &data, 0).expect("write while up");
    assert_same_bytes(
        &pread_direct(dev.bdev_str(), 0, 8192).expect("read while up"),
        &data,
        "flakey while up",
    );
    dev.remove();
}

#[test]
fn delay_holds_its_own_reads_and_nothing_else() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("tgt-delay");
    let a = s.file("a.img", 4 * MIB);
    let b = s.file("b.img", 4 * MIB);
    // Reads of the second segment wait 50 ms; its writes do not.
    let table = format!("0 2048 linear {a} 0;2048 2048 delay {b} 0 50 {b} 0 0");
    for zc in modes() {
        let dev = Device::create_in_mode(&format!("tgt-dly-{zc}"), &table, zc, &["--queues", "1"]);
        let bdev = dev.bdev_str().to_string();
        let delayed = 2048 * 512;
        for i in 0..5u64 {
            let t = Instant::now();
            pread_direct(&bdev, delayed + i * 4096, 4096).expect("delayed read");
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(50),
                "a delayed read took {took:?}"
            );
        }
        // While another thread keeps a delayed read in flight, reads of the
        // linear segment on the same queue keep their own latency: nothing
        // sleeps the queue thread.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bg = {
            let (bdev, stop) = (bdev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pread_direct(&bdev, delayed, 4096).expect("delayed read");
                    n += 1;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let mut lat: Vec<Duration> = (0..20u64)
            .map(|i| {
                let t = Instant::now();
                pread_direct(&bdev, i * 4096, 4096).expect("linear read");
                t.elapsed()
            })
            .collect();
        let mut wlat: Vec<Duration> = (0..10u64)
            .map(|i| {
                let t = Instant::now();
                pwrite_direct(&bdev, delayed + i * 4096, &[1u8; 4096], 0).expect("write");
                t.elapsed()
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let held = bg.join().unwrap();
        lat.sort();
        wlat.sort();
        assert!(held >= 1, "the background reads ran");
        assert!(
            lat[lat.len() / 2] < Duration::from_millis(25),
            "linear reads next to delayed ones: {lat:?}"
        );
        assert!(
            wlat[wlat.len() / 2] < Duration::from_millis(25),
            "writes with a 0 ms write delay: {wlat:?}"
        );
        // Idle again: nothing held.
        let st = rdm_ok(&["status", &dev.name, "--dm"]);
        assert_eq!(
            st.lines().nth(1).map(str::trim_end),
            Some("2048 2048 delay 0 0 0")
        );
        dev.remove();
    }
}

/// `major:minor` of a block device, as dmsetup prints devices.
fn majmin(dev: &str) -> String {
    let rdev = std::fs::metadata(dev).unwrap().rdev();
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

#[test]
fn status_and_table_print_as_dmsetup_does() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("tgt-status");
    let files: Vec<String> = (0..3)
        .map(|i| s.file(&format!("f{i}.img"), 8 * MIB))
        .collect();
    let tpl = "0 2048 linear {0} 0;\
        2048 4096 striped 2 16 {1} 0 {2} 0;\
        6144 2048 flakey {0} 2048 3600 1;\
        8192 2048 flakey {1} 4096 3600 1 1 drop_writes;\
        10240 2048 flakey {2} 4096 3600 1 5 corrupt_bio_byte 9 r 3 0;\
        12288 2048 delay {2} 8192 0;\
        14336 2048 delay {0} 6144 0 {1} 8192 0;\
        16384 2048 zero;\
        18432 2048 error";
    let dev = Device::create("tgt-st", &fill(tpl, &files), &[]);
    let loops: Vec<Loop> = files.iter().map(|f| Loop::new(f)).collect();
    let devs: Vec<String> = loops.iter().map(|l| l.dev.clone()).collect();
    let dm = Dm::new("ktgt-st", &fill(tpl, &devs));
    // dmsetup names devices major:minor where rdm prints paths; an empty
    // status or table leaves a trailing space on either.
    let as_paths = |text: String| -> Vec<String> {
        text.lines()
            .map(|l| {
                let mut l = format!("{l} ");
                for (d, f) in devs.iter().zip(&files) {
                    l = l.replace(&format!(" {} ", majmin(d)), &format!(" {f} "));
                }
                l.trim_end().to_string()
            })
            .collect()
    };
    assert_eq!(
        as_paths(rdm_ok(&["status", "tgt-st", "--dm"])),
        as_paths(run(dmsetup().args(["status", "ktgt-st"]))),
        "status"
    );
    assert_eq!(
        as_paths(rdm_ok(&["table", "tgt-st"])),
        as_paths(run(dmsetup().args(["table", "ktgt-st"]))),
        "table"
    );
    // The JSON carries the same lines.
    let v = dev.status();
    assert_eq!(v["dm_status"].as_array().unwrap().len(), 9, "{v}");
    // dm-stripe's health letters follow the errors each stripe saw.
    let bad = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[2])
        .unwrap();
    bad.set_len(0).unwrap();
    let _ = pread_direct(dev.bdev_str(), 2048 * 512 + 8192, 8192);
    let st = rdm_ok(&["status", "tgt-st", "--dm"]);
    let striped = st.lines().nth(1).unwrap();
    assert!(striped.ends_with(" 1 AD"), "{striped}");
    drop(dm);
    drop(loops);
    bad.set_len(8 * MIB).unwrap();
    dev.remove();
}

/// fstests' `replay-log`, built from the copy in `tests/vendor`.
fn replay_log(dir: &Scratch) -> String {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/replay-log");
    let exe = dir.path("replay-log");
    let exe_s = exe.to_str().unwrap().to_string();
    run(Command::new("cc").args([
        "-O2",
        "-o",
        &exe_s,
        &format!("{src}/replay-log.c"),
        &format!("{src}/log-writes.c"),
    ]));
    exe_s
}

/// The same QD1 sequence on a log-writes device: writes, a flush, a mark,
/// a FUA write, a discard, writes left unflushed, a second mark, more
/// writes. `mark` sends `mark NAME` the device's way.
fn log_writes_workload(dev: &str, mark: &dyn Fn(&str)) {
    for i in 0..16u64 {
        pwrite_direct(dev, i * 4096, &random_bytes(4096, i + 1), 0).unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .unwrap()
        .sync_data()
        .unwrap();
    mark("w1");
    pwrite_direct(dev, 128 << 10, &random_bytes(8192, 100), libc::O_DSYNC).unwrap();
    run(Command::new("blkdiscard").args(["-o", "65536", "-l", "32768", dev]));
    for i in 0..4u64 {
        pwrite_direct(dev, (256 << 10) + i * 4096, &random_bytes(4096, 200 + i), 0).unwrap();
    }
    mark("w2");
    for i in 0..2u64 {
        pwrite_direct(dev, (512 << 10) + i * 8192, &random_bytes(8192, 300 + i), 0).unwrap();
    }
}

/// The log's bytes with the super block's tail padding (bytes 28..32,
/// uninitialised kernel stack in dm-log-writes) cleared.
fn log_bytes(path: &str) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    b[28..32].fill(0);
    b
}

/// `replay-log` of `log` onto a fresh zeroed image, to `end_mark` (or
/// all), and the image's bytes.
fn replayed(tool: &str, dir: &Scratch, log: &str, end_mark: Option<&str>, size: u64) -> Vec<u8> {
    let img = dir.file("replay.img", size);
    let mut c = Command::new(tool);
    c.args(["--log", log, "--replay", &img]);
    if let Some(m) = end_mark {
        c.args(["--end-mark", m]);
    }
    run(&mut c);
    std::fs::read(&img).unwrap()
}

#[test]
fn log_writes_logs_what_kernel_dm_log_writes_logs_and_replays() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("tgt-logw");
    let tool = replay_log(&s);
    let size = 4 * MIB;
    // The kernel's log, over loop devices.
    let (kdata, klog) = (s.file("kdata.img", size), s.file("klog.img", 4 * MIB));
    {
        let (ld, ll) = (Loop::new(&kdata), Loop::new(&klog));
        let table = format!("0 {} log-writes {} {}", size / 512, ld.dev, ll.dev);
        let dm = Dm::new("klogw", &table);
        log_writes_workload(&dm.dev, &|m| {
            run(dmsetup().args(["message", "klogw", "0", "mark", m]));
        });
        drop(dm);
    }
    let klisting = run(Command::new(&tool).args(["-v", "--log", &klog, "--replay", "/dev/null"]));
    assert!(
        klisting.contains("FUA") && klisting.contains("DISCARD"),
        "{klisting}"
    );
    for mode in modes() {
        let (data, log) = (s.file("data.img", size), s.file("log.img", 4 * MIB));
        let table = format!("0 {} log-writes {data} {log}", size / 512);
        let dev = Device::create_in_mode("tgt-logw", &table, mode, &[]);
        let st = rdm_ok(&["status", "tgt-logw", "--dm"]);
        assert_eq!(st.trim(), format!("0 {} log-writes 0 0", size / 512));
        log_writes_workload(dev.bdev_str(), &|m| {
            rdm_ok(&["message", "tgt-logw", "0", "mark", m]);
        });
        // A message the target refuses gets the kernel's words.
        let bad = rdm(&["message", "tgt-logw", "0", "mark"]);
        assert!(!bad.ok(), "{bad}");
        assert!(
            bad.stderr.contains("expect 2 arguments, got 1"),
            "{mode}: {bad}"
        );
        let st = rdm_ok(&["status", "tgt-logw", "--dm"]);
        assert!(st.contains(" log-writes "), "{st}");
        dev.remove();
        // Entry for entry, and byte for byte, the kernel's log.
        let listing = run(Command::new(&tool).args(["-v", "--log", &log, "--replay", "/dev/null"]));
        assert_eq!(listing, klisting, "{mode}: replay-log listings differ");
        assert_same_bytes(
            &log_bytes(&log),
            &log_bytes(&klog),
            &format!("{mode}: the log"),
        );
        // Replayed to its first mark: the 16 writes before it; to the end:
        // the device's bytes, as the kernel's log gives.
        let mut want = vec![0u8; size as usize];
        for i in 0..16usize {
            want[i * 4096..(i + 1) * 4096].copy_from_slice(&random_bytes(4096, i as u64 + 1));
        }
        let w1 = replayed(&tool, &s, &log, Some("w1"), size);
        assert_same_bytes(&w1, &want, &format!("{mode}: replayed to w1"));
        let all = replayed(&tool, &s, &log, None, size);
        assert_same_bytes(
            &all,
            &std::fs::read(&data).unwrap(),
            &format!("{mode}: replayed"),
        );
        assert_same_bytes(
            &all,
            &std::fs::read(&kdata).unwrap(),
            &format!("{mode}: kernel's data"),
        );
    }
}

//! The rdm CLI against real kernels: create / ls / table / status /
//! features / remove, bad input and faults (each with its clear error and
//! nothing left behind), the error target, a killed server, and what
//! FLUSH, FUA and DISCARD do to the backing files.

use rdm_tests::*;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const STATS: [&str; 8] = [
    "reads",
    "writes",
    "read_bytes",
    "write_bytes",
    "flushes",
    "discards",
    "write_zeroes",
    "errors",
];

fn assert_stats_shape(stats: &Value, what: &str) {
    for k in STATS {
        assert!(stats[k].is_u64(), "{what}: stats.{k} missing in {stats}");
    }
}

/// Asserts a failed rdm command: exit `code`, one message on stderr that
/// starts with `rdm: `, names the device and contains `needle`
/// (case-insensitive).
fn assert_fails(out: &Out, code: i32, name: &str, needle: &str) {
    assert_eq!(out.code, code, "unexpected exit code: {out}");
    let err = out.stderr.trim();
    assert!(
        err.starts_with("rdm: "),
        "message should start with `rdm: `: {out}"
    );
    assert!(err.contains(name), "message should name {name}: {out}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "message should mention {needle:?}: {out}"
    );
}

#[test]
fn create_ls_table_status_features_remove() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-basic");
    let a = s.file("a.img", 8 * MIB);
    let b = s.file("b.img", 8 * MIB);
    let table =
        format!("0 4096 linear {a} 0\n4096 8192 striped 2 16 {a} 4096 {b} 0\n12288 2048 zero");
    for zc in modes() {
        let name = format!("life-basic-{zc}");
        let dev = Device::create_in_mode(
            &name,
            &table.replace('\n', ";"),
            zc,
            &["--queues", "2", "--depth", "32"],
        );
        let bdev = dev.bdev_str();
        assert_eq!(dev_size(bdev), 14336 * 512);
        assert!(
            std::path::Path::new(&format!("/dev/ublkc{}", dev.dev_id)).exists(),
            "no /dev/ublkc{}",
            dev.dev_id
        );

        // ls --json
        let e = ls_entry(&name).unwrap_or_else(|| panic!("{name} not in `rdm ls --json`"));
        assert_eq!(e["state"], "live", "{e}");
        assert_eq!(e["bdev"], bdev, "{e}");
        assert_eq!(e["dev_id"], dev.dev_id, "{e}");
        assert_eq!(e["size_bytes"], 14336 * 512, "{e}");
        assert_eq!(e["mode"], mode_name(zc), "{e}");
        let pid = e["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {e}"));
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "server pid {pid} is not running"
        );
        let plain = rdm_ok(&["ls"]);
        assert!(plain.contains(&name), "`rdm ls` lacks {name}: {plain}");

        // table: normalized as dmsetup prints it, and it round-trips.
        let t = rdm_ok(&["table", &name]);
        assert_eq!(t.trim_end(), table, "rdm table {name}");
        // Read-only: the live device holds these ranges for writing.
        let dry = rdm_ok(&[
            "create",
            "roundtrip",
            "--dry-run",
            "--read-only",
            "--table",
            &t,
        ]);
        assert_eq!(dry.trim_end(), table, "--dry-run of `rdm table` output");

        // status: shape, then counters move with I/O.
        let st = dev.status();
        assert_eq!(st["mode"], mode_name(zc), "{st}");
        assert_eq!(st["queues"], 2, "{st}");
        assert_eq!(st["depth"], 32, "{st}");
        let segs = st["segments"].as_array().unwrap_or_else(|| panic!("{st}"));
        assert_eq!(segs.len(), 3, "{st}");
        let targets: Vec<&str> = segs
            .iter()
            .map(|g| g["target"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(targets, ["linear", "striped", "zero"], "{st}");
        for (i, (start, len)) in [(0, 4096), (4096, 8192), (12288, 2048)].iter().enumerate() {
            assert_eq!(segs[i]["start"], *start, "{st}");
            assert_eq!(segs[i]["len"], *len, "{st}");
            assert!(segs[i]["line"].is_u64(), "segments[{i}].line: {st}");
            assert_stats_shape(&segs[i]["stats"], "segment");
        }
        let devs = st["devices"].as_array().unwrap_or_else(|| panic!("{st}"));
        let paths: Vec<&str> = devs
            .iter()
            .map(|d| d["path"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(paths, [a.as_str(), b.as_str()], "{st}");
        for d in devs {
            assert!(d["direct"].is_boolean(), "devices[].direct: {st}");
            assert!(d["health"].is_string(), "devices[].health: {st}");
            assert_stats_shape(&d["stats"], "device");
        }
        let before = dev.status();
        // 1 MiB into the striped segment, then a flush.
        write_dev(bdev, 4096 * 512, &random_bytes(MIB as usize, 1));
        let _ = pread_direct(bdev, 0, 64 * 1024).expect("read the linear segment");
        let after = dev.status();
        let seg = |v: &Value, i: usize, k: &str| v["segments"][i]["stats"][k].as_u64().unwrap();
        let devst = |v: &Value, i: usize, k: &str| v["devices"][i]["stats"][k].as_u64().unwrap();
        assert!(
            seg(&after, 1, "writes") > seg(&before, 1, "writes"),
            "{after}"
        );
        assert!(
            seg(&after, 1, "write_bytes") >= seg(&before, 1, "write_bytes") + MIB,
            "{after}"
        );
        assert!(
            seg(&after, 0, "reads") > seg(&before, 0, "reads"),
            "{after}"
        );
        assert!(
            devst(&after, 1, "writes") > devst(&before, 1, "writes"),
            "b.img: {after}"
        );
        assert!(
            devst(&after, 0, "flushes") > devst(&before, 0, "flushes")
                || seg(&after, 1, "flushes") > seg(&before, 1, "flushes"),
            "fsync counts no flush: {after}"
        );
        assert_eq!(seg(&after, 1, "errors"), 0, "{after}");
        rdm_ok(&["status", &name]);

        // remove: the node is gone when it returns; then the name is free.
        let id = dev.dev_id;
        dev.remove();
        assert!(!std::path::Path::new(&format!("/dev/ublkc{id}")).exists());
        assert_eq!(ls_entry(&name), None, "{name} still listed after remove");
        let again = rdm(&["remove", &name]);
        assert_fails(&again, 1, &name, "no device named");
    }
}

#[test]
fn features_and_modes() {
    if !require_ublk() {
        return;
    }
    let f = rdm_json(&["features"]);
    let bits = u64::from_str_radix(
        f["features"]
            .as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .unwrap_or_else(|| panic!("features: {f}")),
        16,
    )
    .unwrap_or_else(|e| panic!("features: {e}: {f}"));
    let names: Vec<&str> = f["names"]
        .as_array()
        .unwrap_or_else(|| panic!("{f}"))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"CMD_IOCTL_ENCODE"), "{f}");
    let zc = bits & (1 << 11) != 0;
    assert_eq!(names.contains(&"AUTO_BUF_REG"), zc, "{f}");
    assert_eq!(
        zc,
        modes().contains(&"on"),
        "AUTO_BUF_REG on kernel {}: {f}",
        kernel_release()
    );
    assert_eq!(f["mode"], if zc { "zero-copy" } else { "copy" }, "{f}");
    rdm_ok(&["features"]);

    // --zero-copy auto picks what `features` says.
    let s = Scratch::new("life-features");
    let a = s.file("a.img", MIB);
    let dev = Device::create("life-auto", &format!("0 2048 linear {a} 0"), &[]);
    assert_eq!(dev.mode, f["mode"].as_str().unwrap());
    dev.remove();
}

#[test]
fn zero_copy_on_without_auto_buf_reg_fails() {
    if !require_ublk() {
        return;
    }
    if modes().contains(&"on") {
        println!("SKIP: kernel {} has AUTO_BUF_REG", kernel_release());
        return;
    }
    let s = Scratch::new("life-zc");
    let a = s.file("a.img", MIB);
    let nodes = ublk_nodes();
    let err = Device::try_create(
        "life-zc",
        &format!("0 2048 linear {a} 0"),
        &["--zero-copy", "on"],
    )
    .expect_err("--zero-copy on must fail without AUTO_BUF_REG");
    assert_ne!(err.code, 0);
    assert_fails(&err, err.code, "life-zc", "AUTO_BUF_REG");
    assert_no_trace("life-zc", &nodes);
}

#[test]
fn duplicate_and_unknown_names() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-dup");
    let a = s.file("a.img", MIB);
    let b = s.file("b.img", MIB);
    let dev = Device::create("life-dup", &format!("0 2048 linear {a} 0"), &[]);
    let nodes = ublk_nodes();
    let err = Device::try_create("life-dup", &format!("0 2048 linear {b} 0"), &[])
        .expect_err("a second device named life-dup");
    assert_fails(&err, 1, "life-dup", "already exists");
    assert_eq!(ublk_nodes(), nodes, "the failed create left ublk nodes");
    // The first one is untouched.
    let e = ls_entry("life-dup").expect("life-dup still listed");
    assert_eq!(e["state"], "live", "{e}");
    assert_eq!(e["bdev"], dev.bdev_str(), "{e}");
    assert_eq!(
        rdm_ok(&["table", "life-dup"]).trim(),
        format!("0 2048 linear {a} 0")
    );
    pwrite_direct(dev.bdev_str(), 0, &[7u8; 4096], libc::O_SYNC).expect("first device still works");
    dev.remove();

    for cmd in [
        &["remove"][..],
        &["remove", "--force"],
        &["table"],
        &["status"],
    ] {
        let mut args = cmd.to_vec();
        args.push("life-nosuch");
        let out = rdm(&args);
        assert_eq!(out.code, 1, "rdm {args:?}: {out}");
        assert!(
            out.stderr.contains("no device named life-nosuch"),
            "rdm {args:?}: {out}"
        );
    }
}

#[test]
fn bad_backing_files_fail_cleanly() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-bad");
    let short = s.file("short.img", MIB);
    let missing = s.path("missing.img");
    let missing = missing.to_str().unwrap();
    let nodes = ublk_nodes();
    let cases = [
        (format!("0 2048 linear {missing} 0"), missing.to_string()),
        // 1 MiB file, 2 MiB mapped.
        (format!("0 4096 linear {short} 0"), short.clone()),
        // In range by length, but the offset pushes it out.
        (format!("0 2048 linear {short} 1"), short.clone()),
        (
            format!("0 4096 striped 2 8 {short} 0 {missing} 0"),
            missing.to_string(),
        ),
    ];
    for (table, culprit) in cases {
        let err = Device::try_create("life-bad", &table, &[])
            .expect_err(&format!("create with {table:?} must fail"));
        assert_fails(&err, 1, "life-bad", &culprit);
        assert_no_trace("life-bad", &nodes);
    }
    // Usage errors: exit 2.
    let out = rdm(&[
        "create",
        "life-bad",
        "--table",
        &format!("0 2048 linear {short} 0"),
        "--block-size",
        "1024",
    ]);
    assert_eq!(out.code, 2, "{out}");
    assert_no_trace("life-bad", &nodes);
}

#[test]
fn read_only_backing_file() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-ro");
    let ro = s.file("ro.img", 2 * MIB);
    let data = random_bytes(MIB as usize, 5);
    std::fs::write(&ro, [&data[..], &vec![0u8; MIB as usize]].concat()).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let table = format!("0 2048 linear {ro} 0");
    let nodes = ublk_nodes();

    let err =
        Device::try_create("life-ro", &table, &[]).expect_err("writable table on a 0444 file");
    assert_fails(&err, 1, "life-ro", &ro);
    assert_no_trace("life-ro", &nodes);

    let dev = Device::create("life-ro", &table, &["--read-only"]);
    let bdev = dev.bdev_str();
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/ublkb{}/ro", dev.dev_id))
            .unwrap()
            .trim(),
        "1",
        "the block device is not read-only"
    );
    let got = pread_direct(bdev, 0, MIB as usize).expect("read a read-only device");
    assert_same_bytes(&got, &data, "read-only device");
    assert!(
        pwrite_direct(bdev, 0, &[1u8; 4096], libc::O_SYNC).is_err(),
        "writing a read-only device succeeded"
    );
    dev.remove();
    assert_same_bytes(
        &read_at(&ro, 0, MIB as usize),
        &data,
        "backing file after a refused write",
    );
    assert_eq!(std::fs::metadata(&ro).unwrap().mode() & 0o777, 0o444);
}

#[test]
fn error_target_gives_eio() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-err");
    let a = s.file("a.img", 4 * MIB);
    // linear 1 MiB, error 1 MiB, linear 1 MiB.
    let table = format!("0 2048 linear {a} 0; 2048 2048 error; 4096 2048 linear {a} 2048");
    for zc in modes() {
        let dev = Device::create_in_mode(&format!("life-err-{zc}"), &table, zc, &[]);
        let bdev = dev.bdev_str();
        let eio = Some(libc::EIO);
        assert_eq!(
            pread_direct(bdev, MIB, 4096)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(eio)
        );
        assert_eq!(
            pwrite_direct(bdev, MIB + 8192, &[1u8; 4096], 0)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(eio)
        );
        // Straddling linear/error fails as a whole.
        assert_eq!(
            pread_direct(bdev, MIB - 4096, 8192)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(eio)
        );
        // Around it everything works.
        pread_direct(bdev, 0, MIB as usize).expect("read the first linear segment");
        pwrite_direct(bdev, 2 * MIB, &[2u8; 4096], libc::O_SYNC).expect("write the last segment");
        // fio sees the EIO too.
        let out = try_fio(
            bdev,
            &[
                "--rw=randread",
                "--bs=4k",
                "--offset=1M",
                "--size=1M",
                "--io_size=64k",
            ],
        );
        assert!(!out.ok(), "fio over the error target succeeded: {out}");
        assert!(
            out.stdout.contains("Input/output error") || out.stderr.contains("Input/output error"),
            "fio does not report EIO: {out}"
        );
        let st = dev.status();
        assert!(
            st["segments"][1]["stats"]["errors"].as_u64().unwrap() > 0,
            "{st}"
        );
        dev.remove();
    }
}

#[test]
fn killed_server_shows_dead_and_force_remove_cleans_up() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-kill");
    let a = s.file("a.img", 4 * MIB);
    let table = format!("0 8192 linear {a} 0");
    let nodes = ublk_nodes();
    // Without recovery a dead server leaves a dead device (the default,
    // recovery, is tested in recovery.rs).
    let dev = Device::create("life-kill", &table, &["--recovery", "off"]);
    pwrite_direct(dev.bdev_str(), 0, &[3u8; 4096], libc::O_SYNC).unwrap();
    let e = ls_entry("life-kill").expect("listed");
    let pid = e["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {e}")) as i32;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    // The server's death is noticed (no timing asserted: poll generously).
    let start = std::time::Instant::now();
    loop {
        let e = ls_entry("life-kill").expect("a dead device stays listed until removed");
        if e["state"] == "dead" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still not dead 30 s after kill -9: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rdm_ok(&["remove", "--force", "life-kill"]);
    assert!(
        !dev.bdev.exists(),
        "{} left after remove --force",
        dev.bdev.display()
    );
    assert_no_trace("life-kill", &nodes);
    std::mem::forget(dev);

    // The name is usable again, and the data written before is there.
    let dev = Device::create("life-kill", &table, &[]);
    assert_eq!(
        pread_direct(dev.bdev_str(), 0, 4096).unwrap(),
        vec![3u8; 4096]
    );
    dev.remove();
    assert_no_trace("life-kill", &nodes);
}

#[test]
fn flush_and_fua_reach_the_backing_file() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-flush");
    let a = s.file("a.img", 8 * MIB);
    let b = s.file("b.img", 8 * MIB);
    let table = format!("0 8192 linear {a} 0; 8192 16384 striped 2 128 {a} 8192 {b} 0");
    for zc in modes() {
        let dev = Device::create_in_mode(&format!("life-flush-{zc}"), &table, zc, &[]);
        let bdev = dev.bdev_str();
        let seed = if zc == "on" { 20 } else { 10 };
        // O_DIRECT|O_SYNC (FUA or write + flush): in the file on return.
        let d1 = random_bytes(64 * 1024, seed);
        pwrite_direct(bdev, 512 * 1024, &d1, libc::O_SYNC).expect("O_DIRECT|O_SYNC write");
        assert_same_bytes(
            &read_at(&a, 512 * 1024, d1.len()),
            &d1,
            "O_SYNC write in a.img",
        );
        // O_DSYNC too.
        let d2 = random_bytes(8192, seed + 1);
        pwrite_direct(bdev, 2 * MIB, &d2, libc::O_DSYNC).expect("O_DIRECT|O_DSYNC write");
        assert_same_bytes(
            &read_at(&a, 2 * MIB, d2.len()),
            &d2,
            "O_DSYNC write in a.img",
        );
        // Buffered writes + fsync, on the striped segment: chunk 0 -> a.img
        // at 4 MiB, chunk 1 -> b.img at 0.
        let d3 = random_bytes(128 * 1024, seed + 2);
        write_dev(bdev, 4 * MIB, &d3);
        assert_same_bytes(
            &read_at(&a, 4 * MIB, 65536),
            &d3[..65536],
            "fsynced stripe 0",
        );
        assert_same_bytes(&read_at(&b, 0, 65536), &d3[65536..], "fsynced stripe 1");
        let st = dev.status();
        let flushes: u64 = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["stats"]["flushes"].as_u64().unwrap())
            .sum();
        assert!(flushes > 0, "no flush reached a backing file: {st}");
        dev.remove();
    }
}

/// Allocated bytes of a file (`st_blocks` * 512).
fn allocated(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `lseek(SEEK_HOLE)` from `offset`.
fn next_hole(path: &str, offset: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_HOLE) };
    assert!(r >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    r as u64
}

#[test]
fn discard_punches_and_write_zeroes_zeroes() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-discard");
    let a = s.file("a.img", 16 * MIB);
    let b = s.file("b.img", 8 * MIB);
    let table = format!("0 16384 linear {a} 8192; 16384 16384 striped 2 128 {a} 0 {b} 0");
    for zc in modes() {
        // Fully allocated, non-zero backing files.
        std::fs::write(&a, vec![0xabu8; 16 * MIB as usize]).unwrap();
        std::fs::write(&b, vec![0xcdu8; 8 * MIB as usize]).unwrap();
        let dev = Device::create_in_mode(&format!("life-discard-{zc}"), &table, zc, &[]);
        let bdev = dev.bdev_str();
        let sys = format!("/sys/block/ublkb{}/queue/discard_max_bytes", dev.dev_id);
        let max: u64 = std::fs::read_to_string(&sys)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(max > 0, "{sys} is 0: the device does not take discards");

        // Linear: device 2..4 MiB = a.img 6..8 MiB.
        let before = allocated(&a);
        sh(
            "blkdiscard",
            &[
                "-o",
                &(2 * MIB).to_string(),
                "-l",
                &(2 * MIB).to_string(),
                bdev,
            ],
        );
        let after = allocated(&a);
        assert!(
            before - after >= 2 * MIB,
            "discarding 2 MiB freed {} bytes of a.img",
            before - after
        );
        assert_eq!(next_hole(&a, 6 * MIB), 6 * MIB, "no hole at 6 MiB in a.img");
        assert_same_bytes(
            &read_at(&a, 6 * MIB, 2 * MIB as usize),
            &vec![0; 2 << 20],
            "punched range",
        );
        assert_same_bytes(
            &read_at(&a, 8 * MIB, 4096),
            &[0xab; 4096],
            "after the punched range",
        );
        assert_same_bytes(
            &read_at(&a, 6 * MIB - 4096, 4096),
            &[0xab; 4096],
            "before the punched range",
        );
        assert_same_bytes(
            &pread_direct(bdev, 2 * MIB, 2 * MIB as usize).unwrap(),
            &vec![0; 2 << 20],
            "discarded range read through rdm",
        );

        // Striped: device 8 MiB + 1 MiB (4 chunks of 64 KiB per file) ->
        // a.img 0..512K and b.img 0..512K.
        let (ba, bb) = (allocated(&a), allocated(&b));
        sh(
            "blkdiscard",
            &["-o", &(8 * MIB).to_string(), "-l", &MIB.to_string(), bdev],
        );
        assert!(
            ba - allocated(&a) >= 512 * 1024,
            "striped discard freed too little of a.img"
        );
        assert!(
            bb - allocated(&b) >= 512 * 1024,
            "striped discard freed too little of b.img"
        );
        assert_same_bytes(
            &read_at(&b, 0, 512 * 1024),
            &vec![0; 512 * 1024],
            "b.img punched",
        );
        assert_same_bytes(
            &read_at(&b, 512 * 1024, 4096),
            &[0xcd; 4096],
            "b.img after punch",
        );

        // WRITE_ZEROES: device 5 MiB..5 MiB+256K = a.img 9 MiB..
        let wz = output(std::process::Command::new("blkdiscard").args([
            "-z",
            "-o",
            &(5 * MIB).to_string(),
            "-l",
            "262144",
            bdev,
        ]));
        assert!(wz.ok(), "blkdiscard -z: {wz}");
        assert_same_bytes(
            &read_at(&a, 9 * MIB, 262144),
            &vec![0; 262144],
            "write-zeroes range",
        );
        assert_same_bytes(
            &read_at(&a, 9 * MIB + 262144, 4096),
            &[0xab; 4096],
            "after write-zeroes",
        );

        let st = dev.status();
        let sum = |k: &str| -> u64 {
            st["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["stats"][k].as_u64().unwrap())
                .sum()
        };
        assert!(sum("discards") > 0, "no discards counted: {st}");
        dev.remove();
    }
}

/// The I/O scheduler the block device has now.
fn scheduler_of(dev: &Device) -> String {
    let node = dev.bdev_str().trim_start_matches("/dev/");
    let all = std::fs::read_to_string(format!("/sys/block/{node}/queue/scheduler")).unwrap();
    all.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or_else(|| panic!("no current scheduler in {all:?}"))
        .to_string()
}

#[test]
fn io_scheduler_is_none_unless_asked() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-sched");
    let a = s.file("a.img", 4 * MIB);
    let table = format!("0 8192 linear {a} 0");
    let dev = Device::create("life-sched", &table, &[]);
    assert_eq!(scheduler_of(&dev), "none", "the default");
    dev.remove();
    // One queue: the kernel would give it mq-deadline.
    let dev = Device::create("life-sched", &table, &["--scheduler", "kernel"]);
    assert_eq!(scheduler_of(&dev), "mq-deadline", "--scheduler kernel");
    dev.remove();
    let dev = Device::create("life-sched", &table, &["--scheduler", "mq-deadline"]);
    assert_eq!(scheduler_of(&dev), "mq-deadline");
    dev.remove();
    let out = rdm(&[
        "create",
        "life-sched",
        "--scheduler",
        "No Such",
        "--table",
        &table,
    ]);
    assert_eq!(out.code, 2, "{out}");
    // Well-formed, but a scheduler this kernel does not have: the create
    // fails naming the device, the sysfs file and the name, and leaves no
    // device and no state behind.
    let before = ublk_nodes();
    let out = rdm(&[
        "create",
        "life-sched",
        "--scheduler",
        "nosuch-sched",
        "--table",
        &table,
    ]);
    assert_eq!(out.code, 1, "{out}");
    for part in ["life-sched", "nosuch-sched", "/queue/scheduler"] {
        assert!(out.stderr.contains(part), "{part} not named: {out}");
    }
    assert_no_trace("life-sched", &before);
}

/// A started device that cannot go live (here its control socket cannot
/// be bound: a directory is in its place) fails the create, naming the
/// device, the path and the cause, and is removed: no device, no state.
#[test]
fn a_device_that_cannot_go_live_fails_the_create_and_is_removed() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("life-notlive");
    let a = s.file("a.img", 4 * MIB);
    let sock = run_dir().join("life-notlive.sock");
    std::fs::create_dir_all(&sock).unwrap();
    let before = ublk_nodes();
    let out = rdm(&[
        "create",
        "life-notlive",
        "--table",
        &format!("0 8192 linear {a} 0"),
    ]);
    std::fs::remove_dir(&sock).unwrap();
    assert_eq!(out.code, 1, "{out}");
    let sock = sock.display().to_string();
    for part in ["life-notlive", sock.as_str(), "the device was removed"] {
        assert!(out.stderr.contains(part), "{part} not named: {out}");
    }
    assert_no_trace("life-notlive", &before);
    // The name is free again.
    let dev = Device::create("life-notlive", &format!("0 8192 linear {a} 0"), &[]);
    dev.remove();
}

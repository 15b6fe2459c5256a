//! The data path against real kernels: fio with verification over linear,
//! striped and multi-segment tables, byte-for-byte agreement with kernel
//! device-mapper over the same files, and an ext4 that survives
//! `rdm remove` + `rdm create`. Every test runs in each data-path mode the
//! kernel offers (copy; zero copy too on 6.16+).

use rdm_tests::*;

const MIB: u64 = 1 << 20;

/// fio: random writes, then read back and check every block (crc32c), in
/// `region` (fio `--offset`/`--size` options): 4 KiB blocks, then a mix of
/// 4 KiB to 512 KiB.
fn fio_verify(dev: &str, region: &[&str]) {
    let common = [
        "--rw=randwrite",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
    ];
    let small = ["--bs=4k", "--io_size=2M"];
    let mixed = [
        "--bssplit=4k/30:16k/20:64k/20:128k/15:512k/15",
        "--io_size=8M",
    ];
    for shape in [&small[..], &mixed[..]] {
        let args: Vec<&str> = common.iter().chain(shape).chain(region).copied().collect();
        fio(dev, &args);
    }
}

#[test]
fn fio_verify_linear() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("fio-linear");
    let a = s.file("a.img", 64 * MIB);
    // Start at 1 MiB into the file: offsets must be honoured.
    let table = format!("0 122880 linear {a} 2048");
    for zc in modes() {
        let dev = Device::create_in_mode(&format!("dp-lin-{zc}"), &table, zc, &[]);
        assert_eq!(dev_size(dev.bdev_str()), 122880 * 512);
        fio_verify(dev.bdev_str(), &["--size=60M"]);
        dev.remove();
    }
}

#[test]
fn fio_verify_striped() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("fio-striped");
    let f: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 16 * MIB))
        .collect();
    // 4 stripes, 64 KiB chunks, 64 MiB.
    let table = format!(
        "0 131072 striped 4 128 {} 0 {} 0 {} 0 {} 0",
        f[0], f[1], f[2], f[3]
    );
    for zc in modes() {
        let dev = Device::create_in_mode(
            &format!("dp-str-{zc}"),
            &table,
            zc,
            &["--queues", "2", "--depth", "64"],
        );
        assert_eq!(dev_size(dev.bdev_str()), 64 * MIB);
        fio_verify(dev.bdev_str(), &["--size=64M"]);
        dev.remove();
    }
}

#[test]
fn fio_verify_multi_segment() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("fio-multi");
    let a = s.file("a.img", 24 * MIB);
    let f: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 6 * MIB))
        .collect();
    // 24 MiB linear, 24 MiB striped (4 x 64 KiB), 8 MiB zero.
    let table = format!(
        "0 49152 linear {a} 0; 49152 49152 striped 4 128 {} 0 {} 0 {} 0 {} 0; 98304 16384 zero",
        f[0], f[1], f[2], f[3]
    );
    let zero_off = 48 * MIB;
    let zero_len = 8 * MIB as usize;
    for zc in modes() {
        let dev = Device::create_in_mode(&format!("dp-multi-{zc}"), &table, zc, &[]);
        let bdev = dev.bdev_str();
        assert_eq!(dev_size(bdev), 56 * MIB);
        // fio only on linear + striped: it checks what it reads back.
        fio_verify(bdev, &["--offset=0", "--size=48M"]);
        // The zero segment reads zeros, also after writes to it (dropped).
        let zeros = vec![0u8; zero_len];
        let got = pread_direct(bdev, zero_off, zero_len).expect("read the zero segment");
        assert_same_bytes(&got, &zeros, "zero segment before writes");
        pwrite_direct(bdev, zero_off, &random_bytes(zero_len, 9), libc::O_SYNC)
            .expect("writes to the zero segment succeed");
        let got = pread_direct(bdev, zero_off, zero_len).expect("read the zero segment");
        assert_same_bytes(&got, &zeros, "zero segment after writes");
        // A request straddling striped and zero: the striped half is kept.
        let data = random_bytes(128 * 1024, 10);
        pwrite_direct(bdev, zero_off - 64 * 1024, &data, libc::O_SYNC).expect("straddling write");
        let got = pread_direct(bdev, zero_off - 64 * 1024, 128 * 1024).expect("straddling read");
        let mut want = data[..64 * 1024].to_vec();
        want.resize(128 * 1024, 0);
        assert_same_bytes(&got, &want, "write across the striped/zero boundary");
        dev.remove();
    }
}

/// Writes random bytes through rdm and reads them through kernel dm over
/// loop devices of the same files, then the other way round. `files` are
/// the backing files in the order `table` names them as `{0}`, `{1}`…;
/// `zero` is a byte range that must read as zeros (a zero segment).
fn crosscheck(tag: &str, table_tpl: &str, files: &[String], zero: Option<(usize, usize)>) {
    crosscheck_in(tag, table_tpl, files, zero, &modes());
}

/// [`crosscheck`] in the given data-path modes.
fn crosscheck_in(
    tag: &str,
    table_tpl: &str,
    files: &[String],
    zero: Option<(usize, usize)>,
    modes: &[&str],
) {
    let fill = |tpl: &str, devs: &[String]| {
        let mut t = tpl.to_string();
        for (i, d) in devs.iter().enumerate() {
            t = t.replace(&format!("{{{i}}}"), d);
        }
        t
    };
    let rdm_table = fill(table_tpl, files);
    for (round, &zc) in modes.iter().enumerate() {
        let name = format!("dp-x-{tag}-{zc}");
        let seed = 100 + 2 * round as u64;
        let expect = |seed| {
            let dev_len = size_of_table(&rdm_table);
            let mut v = random_bytes(dev_len, seed);
            if let Some((off, len)) = zero {
                v[off..off + len].fill(0);
            }
            v
        };

        // rdm -> dm
        let dev = Device::create_in_mode(&name, &rdm_table, zc, &[]);
        let len = dev_size(dev.bdev_str()) as usize;
        assert_eq!(len, size_of_table(&rdm_table), "device size");
        write_dev(dev.bdev_str(), 0, &random_bytes(len, seed));
        dev.remove();
        {
            let loops: Vec<Loop> = files.iter().map(|f| Loop::new(f)).collect();
            let devs: Vec<String> = loops.iter().map(|l| l.dev.clone()).collect();
            let dm = Dm::new(&format!("rdm-x-{tag}"), &fill(table_tpl, &devs));
            assert_eq!(dev_size(&dm.dev) as usize, len, "dm device size");
            let got = read_at(&dm.dev, 0, len);
            assert_same_bytes(
                &got,
                &expect(seed),
                &format!("{tag} ({zc}): written by rdm, read by dm"),
            );

            // dm -> rdm
            write_dev(&dm.dev, 0, &random_bytes(len, seed + 1));
        }
        drop_caches();
        let dev = Device::create_in_mode(&name, &rdm_table, zc, &[]);
        let got = read_at(dev.bdev_str(), 0, len);
        assert_same_bytes(
            &got,
            &expect(seed + 1),
            &format!("{tag} ({zc}): written by dm, read by rdm"),
        );
        dev.remove();
    }
}

/// Total length in bytes of a table (`;`-separated lines).
fn size_of_table(table: &str) -> usize {
    table
        .split(';')
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.parse::<usize>().expect("length") * 512)
        .sum()
}

#[test]
fn dm_crosscheck_linear() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("x-linear");
    let files = vec![s.file("a.img", 24 * MIB)];
    // 8 MiB starting 1 MiB + 3 sectors into the file.
    crosscheck("linear", "0 16384 linear {0} 2051", &files, None);
}

#[test]
fn dm_crosscheck_striped() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("x-striped");
    let files: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 5 * MIB))
        .collect();
    crosscheck(
        "striped",
        "0 16384 striped 4 128 {0} 0 {1} 2048 {2} 8 {3} 0",
        &files,
        None,
    );
}

#[test]
fn dm_crosscheck_multi_segment() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("x-multi");
    let mut files = vec![s.file("a.img", 16 * MIB)];
    files.extend((0..4).map(|i| s.file(&format!("s{i}.img"), 4 * MIB)));
    // linear, striped 4 x 64 KiB, zero, linear again (same file, further
    // on), striped 3 x 12 KiB (a chunk that is no power of two) on the
    // upper halves of three stripe files.
    let table = "0 8192 linear {0} 2048; \
                 8192 16384 striped 4 128 {1} 0 {2} 0 {3} 0 {4} 0; \
                 24576 4096 zero; \
                 28672 8192 linear {0} 16384; \
                 36864 7200 striped 3 24 {1} 4096 {2} 4096 {3} 4096";
    crosscheck("multi", table, &files, Some((24576 * 512, 4096 * 512)));
}

#[test]
fn ext4_survives_remove_and_recreate() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("ext4");
    let a = s.file("a.img", 40 * MIB);
    let f: Vec<String> = (0..2)
        .map(|i| s.file(&format!("s{i}.img"), 16 * MIB))
        .collect();
    // 32 MiB linear + 32 MiB striped x 2.
    let table = format!(
        "0 65536 linear {a} 8192; 65536 65536 striped 2 128 {} 0 {} 0",
        f[0], f[1]
    );
    let mnt = s.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..12u64)
        .map(|i| {
            let len = [1000, 4096, 65536, 300_000, 1 << 20, 3 << 20][i as usize % 6] + i as usize;
            (format!("f{i}"), random_bytes(len, 1000 + i))
        })
        .collect();
    let modes = modes();
    // Write in the first mode, read back in the last (copy vs zero copy
    // where the kernel has both).
    let first = modes[0];
    let last = *modes.last().unwrap();

    let dev = Device::create_in_mode("dp-ext4", &table, first, &[]);
    sh("mkfs.ext4", &["-q", "-F", dev.bdev_str()]);
    sh("mount", &[dev.bdev_str(), mnt_s]);
    let mounted = Mounted(mnt_s.to_string());
    std::fs::create_dir(mnt.join("d")).unwrap();
    for (name, data) in &files {
        std::fs::write(mnt.join("d").join(name), data).unwrap();
    }
    drop(mounted);
    dev.remove();

    let dev = Device::create_in_mode("dp-ext4", &table, last, &[]);
    sh("mount", &[dev.bdev_str(), mnt_s]);
    let mounted = Mounted(mnt_s.to_string());
    for (name, data) in &files {
        let got = std::fs::read(mnt.join("d").join(name)).unwrap();
        assert_same_bytes(&got, data, &format!("file {name} after remove + create"));
    }
    drop(mounted);
    let fsck = output(std::process::Command::new("e2fsck").args(["-fn", dev.bdev_str()]));
    assert!(fsck.ok(), "e2fsck -fn found problems: {fsck}");
    dev.remove();
}

/// Unmounts when dropped (also when the test panics).
struct Mounted(String);

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = output(std::process::Command::new("umount").arg(&self.0));
        if !out.ok() && !std::thread::panicking() {
            panic!("umount {}: {out}", self.0);
        }
    }
}

/// Copy mode with UBLK_F_BATCH_IO (Linux 7.0+): requests fetched and
/// committed in batches serve the same bytes as kernel dm, and fio verifies.
#[test]
fn batch_io_matches_dm_and_verifies() {
    if !require_ublk() || !require_feature("BATCH_IO") {
        return;
    }
    let s = Scratch::new("batch");
    let files: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 17 * MIB))
        .collect();
    crosscheck_in(
        "batch",
        "0 16384 striped 4 128 {0} 0 {1} 2048 {2} 8 {3} 0",
        &files,
        None,
        &["batch"],
    );
    let table = format!(
        "0 131072 striped 4 128 {} 0 {} 0 {} 0 {} 0",
        files[0], files[1], files[2], files[3]
    );
    let dev = Device::create_in_mode(
        "dp-batch",
        &table,
        "batch",
        &["--queues", "2", "--depth", "64"],
    );
    fio_verify(dev.bdev_str(), &["--size=64M"]);
    dev.remove();
}

/// Two server threads share each queue's tags (UBLK_F_PER_IO_DAEMON,
/// 6.16+), each on its own ring: the same bytes as kernel dm, fio verifies.
#[test]
fn io_threads_share_a_queue_and_serve_the_same_bytes() {
    if !require_ublk() || !require_feature("PER_IO_DAEMON") {
        return;
    }
    let s = Scratch::new("iothreads");
    let files: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 17 * MIB))
        .collect();
    crosscheck_in(
        "iothreads",
        "0 16384 striped 4 128 {0} 0 {1} 2048 {2} 8 {3} 0",
        &files,
        None,
        &["on-2threads"],
    );
    let table = format!(
        "0 131072 striped 4 128 {} 0 {} 0 {} 0 {} 0",
        files[0], files[1], files[2], files[3]
    );
    let dev = Device::create_in_mode("dp-iothreads", &table, "on-2threads", &["--depth", "64"]);
    fio_verify(dev.bdev_str(), &["--size=64M"]);
    dev.remove();
}

/// Allocated bytes of a file (`st_blocks` × 512).
fn allocated(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Zero copy over a file on tmpfs: pieces move through a mapping of the
/// file in the queue thread (`rdm status`: access `mapped`), which must
/// behave as the file itself: bytes written either way read back the other
/// way, reading holes fills none of them, a discarded range is a hole
/// again, a full tmpfs is an I/O error and a shrunk file EIO past its end,
/// with the server still serving.
#[test]
fn tmpfs_files_are_served_through_their_mapping() {
    use std::os::unix::fs::FileExt;
    if !require_ublk() || !require_feature("AUTO_BUF_REG") {
        return;
    }
    let s = Scratch::new("memfile");
    let mnt = s.path("small");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.to_str().unwrap().to_string();
    sh("mount", &["-t", "tmpfs", "-o", "size=8M", "tmpfs", &mnt]);
    // 32 MiB of sparse file on an 8 MiB tmpfs.
    let a = format!("{mnt}/a.img");
    std::fs::File::create(&a)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let dev = Device::create_in_mode("dp-memfile", &format!("0 65536 linear {a} 0"), "on", &[]);
    let bdev = dev.bdev_str().to_string();
    assert_eq!(
        dev.status()["devices"][0]["access"],
        "mapped",
        "{}",
        dev.status()
    );

    // Every hole reads as zeros, in requests of 4 KiB to 1 MiB, and stays a hole.
    let mut off = 0;
    for len in [4096usize, 16384, 65536, 1 << 20].iter().cycle() {
        if off >= 32 * MIB {
            break;
        }
        let len = (*len as u64).min(32 * MIB - off) as usize;
        let got = pread_direct(&bdev, off, len).unwrap();
        assert!(got.iter().all(|&b| b == 0), "a hole at {off} read non-zero");
        off += len as u64;
    }
    assert_eq!(allocated(&a), 0, "reading holes allocated them");

    // Through the device, read back through the file; and the other way.
    let data = random_bytes(MIB as usize, 7);
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        // 4 KiB, 8 KiB ... pieces, so small and large requests both occur.
        let step = 4096 << (i % 5);
        for (j, c) in chunk.chunks(step).enumerate() {
            let at = MIB + (i * (64 << 10) + j * step) as u64;
            pwrite_direct(&bdev, at, c, 0).unwrap();
        }
    }
    assert_same_bytes(
        &read_at(&a, MIB, MIB as usize),
        &data,
        "file after device writes",
    );
    let other = random_bytes(256 << 10, 8);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&other, 3 * MIB)
        .unwrap();
    assert_same_bytes(
        &pread_direct(&bdev, 3 * MIB, other.len()).unwrap(),
        &other,
        "device after file writes",
    );

    // A discard makes the range a hole again, and reading it keeps it one.
    let before = allocated(&a);
    sh(
        "blkdiscard",
        &["-o", &MIB.to_string(), "-l", &MIB.to_string(), &bdev],
    );
    assert_eq!(allocated(&a), before - MIB, "discard freed the range");
    let got = pread_direct(&bdev, MIB, MIB as usize).unwrap();
    assert!(got.iter().all(|&b| b == 0), "discarded range reads zeros");
    assert_eq!(
        allocated(&a),
        before - MIB,
        "reading the discarded range allocated it"
    );

    // More than the tmpfs holds: an I/O error, not a dead server; what was
    // written before reads back.
    let big = random_bytes(12 * MIB as usize, 9);
    let mut failed = None;
    for (i, c) in big.chunks(64 << 10).enumerate() {
        if let Err(e) = pwrite_direct(&bdev, 8 * MIB + (i as u64) * (64 << 10), c, 0) {
            failed = Some((i, e));
            break;
        }
    }
    let (n, e) = failed.expect("12 MiB were written to an 8 MiB tmpfs");
    assert!(e.raw_os_error().is_some(), "{e}");
    let ok = n * (64 << 10);
    assert_same_bytes(
        &pread_direct(&bdev, 8 * MIB, ok).unwrap(),
        &big[..ok],
        "what was written before the tmpfs filled up",
    );
    assert_eq!(dev.status()["state"], "live", "{}", dev.status());

    // The file shrinks under the device: EIO past its end, the rest intact.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let past = pread_direct(&bdev, 8 * MIB, 4096).expect_err("a read past the file's end");
    assert_eq!(past.raw_os_error(), Some(libc::EIO), "{past}");
    assert_same_bytes(
        &pread_direct(&bdev, 3 * MIB, other.len()).unwrap(),
        &other,
        "device after the file shrank",
    );
    dev.remove();
    sh("umount", &[&mnt]);
}

//! NBD exports as backing devices, against real servers started on
//! loopback (qemu-nbd from qemu-utils, nbdkit's file plugin): tables over
//! exports agree byte for byte with kernel dm over loop devices of the
//! same files, fio verifies, a server killed and restarted under load
//! costs exactly the requests that hit it while it was down and no
//! acknowledged write, and bad tables are refused before anything exists.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rdm_tests::*;

const MIB: u64 = 1 << 20;

/// Four 16 MiB files, each served by its own server: qemu-nbd on TCP for
/// the first two, qemu-nbd and nbdkit on Unix sockets for the others.
fn four_exports(s: &Scratch, port0: u16) -> (Vec<String>, Vec<NbdServer>) {
    let files: Vec<String> = (0..4)
        .map(|i| s.file(&format!("e{i}.img"), 16 * MIB))
        .collect();
    let kinds = [
        NbdKind::QemuTcp { port: port0 },
        NbdKind::QemuTcp { port: port0 + 1 },
        NbdKind::QemuUnix {
            socket: s.path("e2.sock"),
        },
        NbdKind::NbdkitUnix {
            socket: s.path("e3.sock"),
        },
    ];
    let servers = kinds
        .into_iter()
        .zip(&files)
        .map(|(k, f)| NbdServer::new(k, f))
        .collect();
    (files, servers)
}

/// For tests of data, not of timeouts: a TCG guest on a busy host can
/// stall long enough (fio saw 4 KiB writes take 129 ms at best and 35 s at
/// worst) for the default 30 s to expire on requests the servers were
/// about to answer. A request that really hangs still fails, later.
const SLOW_GUEST_TIMEOUT: [&str; 2] = ["--nbd-timeout", "120"];

fn fill(tpl: &str, devs: &[String]) -> String {
    let mut t = tpl.to_string();
    for (i, d) in devs.iter().enumerate() {
        t = t.replace(&format!("{{{i}}}"), d);
    }
    t
}

/// rdm over the exports → kernel dm over loop devices of the files, and
/// back, for `tpl` (`{i}` = device i), in the default data path (zero copy
/// where the kernel has it: the NBD data moves straight between the socket
/// and the request's pages).
fn crosscheck(tag: &str, tpl: &str, files: &[String], uris: &[String], len: usize) {
    let _watchdog = Watchdog::new(&format!("nbd-x-{tag}"), 600);
    let seed = 500;
    let dev = Device::create(
        &format!("nbd-x-{tag}"),
        &fill(tpl, uris),
        &SLOW_GUEST_TIMEOUT,
    );
    assert_eq!(dev_size(dev.bdev_str()) as usize, len);
    write_dev(dev.bdev_str(), 0, &random_bytes(len, seed));
    dev.remove();
    {
        let loops: Vec<Loop> = files.iter().map(|f| Loop::new(f)).collect();
        let devs: Vec<String> = loops.iter().map(|l| l.dev.clone()).collect();
        let dm = Dm::new(&format!("nbd-x-{tag}"), &fill(tpl, &devs));
        let got = read_at(&dm.dev, 0, len);
        assert_same_bytes(
            &got,
            &random_bytes(len, seed),
            &format!("{tag}: written by rdm over NBD, read by dm"),
        );
        write_dev(&dm.dev, 0, &random_bytes(len, seed + 1));
    }
    drop_caches();
    let dev = Device::create(
        &format!("nbd-x-{tag}"),
        &fill(tpl, uris),
        &SLOW_GUEST_TIMEOUT,
    );
    let got = read_at(dev.bdev_str(), 0, len);
    assert_same_bytes(
        &got,
        &random_bytes(len, seed + 1),
        &format!("{tag}: written by dm, read by rdm over NBD"),
    );
    dev.remove();
}

#[test]
fn dm_crosscheck_linear_and_striped_over_exports() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("nbd-x");
    let (files, servers) = four_exports(&s, 10900);
    let uris: Vec<String> = servers.iter().map(|e| e.uri.clone()).collect();
    // 4 MiB linear, 1 MiB + 3 sectors into the export.
    crosscheck(
        "linear",
        "0 8192 linear {0} 2051",
        &files[..1],
        &uris[..1],
        4 << 20,
    );
    // 4 stripes of 64 KiB chunks, 16 MiB, starting 1 MiB into each export.
    crosscheck(
        "striped",
        "0 32768 striped 4 128 {0} 2048 {1} 2048 {2} 2048 {3} 2048",
        &files,
        &uris,
        16 << 20,
    );
}

#[test]
fn fio_verify_striped_over_exports_on_two_queues() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("nbd-fio");
    let (_files, servers) = four_exports(&s, 10910);
    let uris: Vec<String> = servers.iter().map(|e| e.uri.clone()).collect();
    let table = fill("0 131072 striped 4 128 {0} 0 {1} 0 {2} 0 {3} 0", &uris);
    let _watchdog = Watchdog::new("nbd-fio", 600);
    let mut opts = vec!["--queues", "2", "--depth", "64"];
    opts.extend(SLOW_GUEST_TIMEOUT);
    let dev = Device::create("nbd-fio", &table, &opts);
    for shape in [
        &["--bs=4k", "--io_size=2M"][..],
        &["--bssplit=4k/30:64k/40:512k/30", "--io_size=8M"][..],
    ] {
        let mut args = vec![
            "--rw=randwrite",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--size=64M",
        ];
        args.extend_from_slice(shape);
        fio(dev.bdev_str(), &args);
    }
    // Discard and write-zeroes go to the exports and read back as zeros.
    sh(
        "blkdiscard",
        &["-o", "1048576", "-l", "1048576", dev.bdev_str()],
    );
    sh(
        "blkdiscard",
        &["-z", "-o", "4194304", "-l", "1048576", dev.bdev_str()],
    );
    drop_caches();
    for off in [1u64 << 20, 4 << 20] {
        let got = pread_direct(dev.bdev_str(), off, 1 << 20).expect("read zeroed range");
        assert!(got.iter().all(|&b| b == 0), "range at {off} reads zeros");
    }
    let st = dev.status();
    for d in st["devices"].as_array().unwrap() {
        assert_eq!(d["access"], "nbd", "{d}");
        assert_eq!(
            d["nbd"]["connections"],
            serde_json::json!(["up", "up"]),
            "{d}"
        );
        assert_eq!(d["stats"]["errors"], 0, "{d}");
    }
    dev.remove();
}

/// One 64 KiB chunk's content: its index and a generation.
fn chunk(i: u64, generation: u64) -> Vec<u8> {
    random_bytes(64 << 10, i * 1000 + generation)
}

/// Writes every chunk of the first `n` × 64 KiB of `dev` with
/// `generation`, 16 at a time (O_DIRECT); returns each write's outcome.
fn write_chunks(dev: &str, n: u64, generation: u64) -> Vec<bool> {
    let results = Arc::new(Mutex::new(vec![false; n as usize]));
    let next = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (results, next, dev) = (results.clone(), next.clone(), dev.to_string());
            std::thread::spawn(move || loop {
                let i = {
                    let mut g = next.lock().unwrap();
                    if *g >= n {
                        return;
                    }
                    *g += 1;
                    *g - 1
                };
                let ok = pwrite_direct(&dev, i * (64 << 10), &chunk(i, generation), 0).is_ok();
                results.lock().unwrap()[i as usize] = ok;
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = results.lock().unwrap().clone();
    r
}

#[test]
fn a_server_killed_and_restarted_under_load_costs_only_its_requests_and_no_acknowledged_write() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("nbd-kill");
    let (_files, mut servers) = four_exports(&s, 10920);
    let uris: Vec<String> = servers.iter().map(|e| e.uri.clone()).collect();
    // 4 stripes of 64 KiB: chunk i lives on export i % 4.
    let table = fill("0 131072 striped 4 128 {0} 0 {1} 0 {2} 0 {3} 0", &uris);
    let _watchdog = Watchdog::new("nbd-kill", 420);
    // The timeout is what a request to the dead export waits; it must also
    // be long enough that a live qemu-nbd in a starved TCG guest always
    // answers within it (3 s once did not, on a CI machine running two).
    let timeout_secs = 8;
    let dev = Device::create(
        "nbd-kill",
        &table,
        &["--nbd-timeout", &timeout_secs.to_string(), "--queues", "2"],
    );
    let bdev = dev.bdev_str().to_string();
    let n = 256; // 16 MiB
    let failed: Vec<usize> = write_chunks(&bdev, n, 1)
        .iter()
        .enumerate()
        .filter_map(|(i, &ok)| (!ok).then_some(i))
        .collect();
    assert!(
        failed.is_empty(),
        "writes failed before the kill: chunks {failed:?}; status: {}",
        dev.status()
    );

    // Each 64 KiB write must stay one request on one export: no merging.
    let node = bdev.trim_start_matches("/dev/");
    std::fs::write(format!("/sys/block/{node}/queue/nomerges"), "2").unwrap();
    servers[2].kill();
    let t0 = std::time::Instant::now();
    let results = write_chunks(&bdev, n, 2);
    let down_for = t0.elapsed();
    for (i, ok) in results.iter().enumerate() {
        assert_eq!(
            *ok,
            i % 4 != 2,
            "chunk {i} (export {}) while export 2 is down",
            i % 4
        );
    }
    // Bounded: each failed write waited about the timeout, 16 at a time.
    assert!(
        down_for < std::time::Duration::from_secs(timeout_secs * (64 / 16) + 20),
        "{down_for:?}"
    );
    eprintln!("nbd-kill: generation 2 written in {down_for:?}; restarting export 2");
    servers[2].start();

    // Clean again: every acknowledged write is there — generation 2 where
    // it was acknowledged, generation 1 where it failed.
    for i in 0..n {
        let got = pread_direct(&bdev, i * (64 << 10), 64 << 10)
            .unwrap_or_else(|e| panic!("read chunk {i} after the restart: {e}"));
        let want = if i % 4 == 2 { chunk(i, 1) } else { chunk(i, 2) };
        assert_same_bytes(&got, &want, &format!("chunk {i} after the restart"));
    }
    eprintln!("nbd-kill: every chunk checked");
    // Writes acknowledged on the dead connection were never flushed: the
    // first flush says so, the next one is clean.
    let f = std::fs::OpenOptions::new().write(true).open(&bdev).unwrap();
    let first = f.sync_all();
    assert!(
        first.is_err(),
        "the first flush after losing unflushed writes fails"
    );
    f.sync_all().expect("the second flush");
    // An open block device keeps the ublk device alive (DEL_DEV waits).
    drop(f);
    // And the device is as good as new.
    fio(
        &bdev,
        &[
            "--rw=randwrite",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--bs=4k",
            "--size=16M",
            "--io_size=4M",
        ],
    );
    let st = dev.status();
    let e2 = &st["devices"][2]["nbd"];
    assert_eq!(e2["connections"], serde_json::json!(["up", "up"]), "{st}");
    assert!(e2["reconnects"].as_u64().unwrap() >= 1, "{e2}");
    assert!(e2["failed_requests"].as_u64().unwrap() >= 64, "{e2}");
    for other in [0, 1, 3] {
        let e = &st["devices"][other]["nbd"];
        assert_eq!(e["failed_requests"], 0, "export {other}: {e}");
        assert_eq!(e["disconnects"], 0, "export {other}: {e}");
    }
    eprintln!("export 2 down for {down_for:?} of writes; status: {e2}");
    dev.remove();
}

#[test]
fn bad_tables_over_exports_are_refused_before_anything_exists() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("nbd-bad");
    let f = s.file("a.img", 8 * MIB);
    let srv = NbdServer::new(NbdKind::QemuTcp { port: 10930 }, &f);
    let ro_file = s.file("ro.img", 8 * MIB);
    let ro_sock: PathBuf = s.path("ro.sock");
    // A read-only export: qemu-nbd -r.
    let mut ro = std::process::Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "-r", "-e", "4", "-x", "e0"])
        .arg(format!("--socket={}", ro_sock.display()))
        .arg(&ro_file)
        .spawn()
        .unwrap();
    wait_for_path(&ro_sock, std::time::Duration::from_secs(10));
    let ro_uri = format!("nbd+unix:///e0?socket={}", ro_sock.display());
    // One connection only: no multi-conn.
    let single_file = s.file("one.img", 8 * MIB);
    let single_sock = s.path("one.sock");
    let mut single = std::process::Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "-x", "e0"])
        .arg(format!("--socket={}", single_sock.display()))
        .arg(&single_file)
        .spawn()
        .unwrap();
    wait_for_path(&single_sock, std::time::Duration::from_secs(10));
    let single_uri = format!("nbd+unix:///e0?socket={}", single_sock.display());

    let nodes = ublk_nodes();
    let u = &srv.uri;
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        (
            format!("0 16385 linear {u} 0"),
            vec![],
            "too small for target".into(),
        ),
        (
            format!("0 2048 linear {u} 16000"),
            vec![],
            "too small for target".into(),
        ),
        (
            format!("0 2048 linear {u} 0;2048 2048 linear {u} 1024"),
            vec![],
            "mapped writable twice".into(),
        ),
        (
            format!("0 2048 linear {ro_uri} 0"),
            vec![],
            "read-only but the table is writable".into(),
        ),
        (
            format!("0 2048 linear {single_uri} 0"),
            vec!["--queues", "2"],
            "does not allow multi-conn".into(),
        ),
        (
            "0 2048 linear nbd://127.0.0.1:1/none 0".into(),
            vec![],
            "nbd://127.0.0.1:1/none: Connection refused".into(),
        ),
        (
            format!("0 2048 linear {}/nope 0", u.trim_end_matches("/e0")),
            vec![],
            "no such export".into(),
        ),
        (
            "0 2048 linear nbds://127.0.0.1/e0 0".into(),
            vec![],
            "TLS".into(),
        ),
        (
            "0 2048 linear nbd+unix:///e0 0".into(),
            vec![],
            "socket=".into(),
        ),
    ];
    for (table, args, want) in &cases {
        let name = "nbd-bad";
        let r = Device::try_create(name, table, args);
        let out = r.expect_err(&format!("{table} {args:?} must be refused"));
        let text = out.stderr.trim().to_string();
        // One line (a table rule adds the table line it is about).
        assert!(text.lines().count() <= 2, "one line: {text}");
        assert!(
            text.contains(want.as_str()),
            "{table}: {text:?} should say {want:?}"
        );
        assert!(text.contains(name), "{text}");
        assert_no_trace(name, &nodes);
    }
    // What was refused works the right way: read-only, and one queue.
    let dev = Device::create(
        "nbd-ro",
        &format!("0 2048 linear {ro_uri} 0"),
        &["--read-only"],
    );
    assert_eq!(
        pread_direct(dev.bdev_str(), 0, 4096).unwrap(),
        vec![0u8; 4096]
    );
    dev.remove();
    let dev = Device::create("nbd-one", &format!("0 2048 linear {single_uri} 0"), &[]);
    pwrite_direct(dev.bdev_str(), 0, &random_bytes(4096, 3), libc::O_SYNC).unwrap();
    dev.remove();
    assert_eq!(read_at(&single_file, 0, 4096), random_bytes(4096, 3));
    let _ = ro.kill();
    let _ = single.kill();
    let _ = ro.wait();
    let _ = single.wait();
}

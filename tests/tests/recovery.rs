//! A server that dies loses nothing: its device waits (I/O held, or failed
//! fast with `--recovery fail-io`) and `rdm recover` re-attaches a new
//! server; fio's verification and an ext4 see no error across three
//! `kill -9`s. Refusals: what never existed, what is live, what changed
//! underneath, two recoveries at once, a device created without recovery.

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use rdm_tests::*;

const MIB: u64 = 1 << 20;

fn pid_of(name: &str) -> i32 {
    let e = ls_entry(name).unwrap_or_else(|| panic!("{name} is not listed"));
    e["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {e}")) as i32
}

fn state_of(name: &str) -> String {
    ls_entry(name).map_or("gone".into(), |e| {
        e["state"].as_str().unwrap_or("?").to_string()
    })
}

/// kill -9 of the device's server; waits until the device is listed as
/// `want` (`recovering` or `dead`).
fn kill_server(name: &str, want: &str) {
    let pid = pid_of(name);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    let t = Instant::now();
    while state_of(name) != want {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} not {want} 30 s after kill -9: {}",
            state_of(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kill -9, then `rdm recover`; returns how long the first I/O issued after
/// the kill took to complete (it waits for the new server).
fn kill_and_recover(dev: &Device) -> Duration {
    let t = Instant::now();
    kill_server(&dev.name, "recovering");
    let probe = {
        let bdev = dev.bdev_str().to_string();
        std::thread::spawn(move || {
            pread_direct(&bdev, 0, 4096).expect("a read held across the recovery");
            t.elapsed()
        })
    };
    let out = rdm(&["recover", &dev.name, "--json"]);
    assert!(out.ok(), "rdm recover {}: {out}", dev.name);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    assert_eq!(
        v["bdev"].as_str(),
        dev.bdev.to_str(),
        "the same device: {v}"
    );
    assert_eq!(
        v["mode"].as_str(),
        Some(dev.mode.as_str()),
        "the same data path: {v}"
    );
    assert_eq!(state_of(&dev.name), "live");
    probe.join().expect("probe thread")
}

#[test]
fn fio_verify_survives_three_kills() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("rec-fio");
    let f: Vec<String> = (0..4)
        .map(|i| s.file(&format!("s{i}.img"), 16 * MIB))
        .collect();
    let table = format!(
        "0 131072 striped 4 128 {} 0 {} 0 {} 0 {} 0",
        f[0], f[1], f[2], f[3]
    );
    for zc in modes() {
        let dev = Device::create_in_mode(
            &format!("rec-fio-{zc}"),
            &table,
            zc,
            &["--queues", "2", "--depth", "64"],
        );
        let fio = BackgroundVerify::start(dev.bdev_str(), "48M", "64M");
        let mut waits = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_secs(3));
            waits.push(kill_and_recover(&dev));
        }
        fio.assert_clean(&format!("across three kills ({zc})"));
        println!("recovery ({zc}): kill -9 to first completed I/O: {waits:?}");
        dev.remove();
    }
}

#[test]
fn ext4_keeps_what_was_fsynced_across_a_kill() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("rec-ext4");
    let a = s.file("a.img", 96 * MIB);
    let mnt = s.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for zc in modes() {
        let dev = Device::create_in_mode(
            &format!("rec-ext4-{zc}"),
            &format!("0 196608 linear {a} 0"),
            zc,
            &[],
        );
        sh("mkfs.ext4", &["-q", "-F", dev.bdev_str()]);
        sh("mount", &[dev.bdev_str(), mnt.to_str().unwrap()]);
        let data = random_bytes(3 * MIB as usize, 21);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(mnt.join("before")).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
        }
        kill_and_recover(&dev);
        // Written after the recovery, through the same mount.
        std::fs::write(mnt.join("after"), &data[..MIB as usize]).unwrap();
        sh("sync", &[] as &[&str]);
        drop_caches();
        assert_same_bytes(
            &std::fs::read(mnt.join("before")).unwrap(),
            &data,
            "fsynced before the kill",
        );
        sh("umount", &[mnt.to_str().unwrap()]);
        let fsck = output(Command::new("e2fsck").args(["-fn", dev.bdev_str()]));
        assert!(fsck.ok(), "e2fsck -fn after the recovery ({zc}): {fsck}");
        dev.remove();
    }
}

#[test]
fn recovery_refuses_what_it_cannot_recover_and_changes_nothing() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("rec-bad");
    let a = s.file("a.img", 8 * MIB);
    let table = format!("0 8192 linear {a} 0");
    let nodes = ublk_nodes();

    let out = rdm(&["recover", "rec-never"]);
    assert!(
        !out.ok() && out.stderr.contains("no device named rec-never"),
        "{out}"
    );

    let dev = Device::create("rec-bad", &table, &[]);
    pwrite_direct(dev.bdev_str(), 0, &[5u8; 4096], libc::O_SYNC).unwrap();
    let out = rdm(&["recover", "rec-bad"]);
    assert!(
        !out.ok() && out.stderr.contains("is live"),
        "recovering a live device: {out}"
    );

    kill_server("rec-bad", "recovering");
    let st = rdm_ok(&["status", "rec-bad"]);
    assert!(st.contains("recovering"), "{st}");
    let out = rdm(&["create", "rec-bad", "--table", &table]);
    assert!(
        !out.ok() && out.stderr.contains("rdm recover rec-bad"),
        "create of a waiting name: {out}"
    );
    let out = rdm(&["remove", "rec-bad"]);
    assert!(
        !out.ok() && out.stderr.contains("rdm recover"),
        "remove without --force: {out}"
    );

    // A backing file that shrank: refused, naming it; the device waits on.
    let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(2 * MIB).unwrap();
    let out = rdm(&["recover", "rec-bad"]);
    assert!(
        !out.ok() && out.stderr.contains("shrank") && out.stderr.contains(&a),
        "{out}"
    );
    assert_eq!(state_of("rec-bad"), "recovering");
    f.set_len(8 * MIB).unwrap();
    // Replaced by another file at the same path: refused too.
    let keep = s.path("a.keep");
    std::fs::hard_link(&a, &keep).unwrap();
    let other = s.file("other.img", 8 * MIB);
    std::fs::rename(&other, &a).unwrap();
    let out = rdm(&["recover", "rec-bad"]);
    assert!(!out.ok() && out.stderr.contains("replaced"), "{out}");
    assert_eq!(state_of("rec-bad"), "recovering");
    std::fs::rename(&keep, &a).unwrap();

    // Two recoveries at once: one re-attaches, the other says why not.
    let spawn = || {
        Command::new(rdm_bin())
            .args(["recover", "rec-bad"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let outs = [
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    ];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one recovery wins: {outs:?}");
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    let msg = String::from_utf8_lossy(&loser.stderr);
    assert!(
        msg.contains("already under way") || msg.contains("is live"),
        "{msg}"
    );
    assert_eq!(state_of("rec-bad"), "live");
    assert_eq!(
        pread_direct(dev.bdev_str(), 0, 4096).unwrap(),
        vec![5u8; 4096]
    );

    // A waiting device nobody recovers: remove --force clears it.
    kill_server("rec-bad", "recovering");
    rdm_ok(&["remove", "--force", "rec-bad"]);
    std::mem::forget(dev);
    assert_no_trace("rec-bad", &nodes);

    // Without recovery the device is dead, and says so.
    let dev = Device::create("rec-off", &table, &["--recovery", "off"]);
    kill_server("rec-off", "dead");
    let out = rdm(&["recover", "rec-off"]);
    assert!(!out.ok() && out.stderr.contains("--recovery off"), "{out}");
    rdm_ok(&["remove", "--force", "rec-off"]);
    std::mem::forget(dev);
    assert_no_trace("rec-off", &nodes);
}

#[test]
fn fail_io_fails_fast_while_waiting_where_the_kernel_has_it() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("rec-failio");
    let a = s.file("a.img", 8 * MIB);
    let table = format!("0 8192 linear {a} 0");
    let nodes = ublk_nodes();
    if kernel_version() < (6, 13) {
        let out = rdm(&[
            "create",
            "rec-fio",
            "--table",
            &table,
            "--recovery",
            "fail-io",
        ]);
        assert_eq!(out.code, 2, "not supported by this kernel: {out}");
        assert!(out.stderr.contains("6.13"), "{out}");
        assert_no_trace("rec-fio", &nodes);
        return;
    }
    let dev = Device::create("rec-fio", &table, &["--recovery", "fail-io"]);
    pwrite_direct(dev.bdev_str(), 0, &[9u8; 4096], libc::O_SYNC).unwrap();
    kill_server("rec-fio", "recovering");
    // No server: reads fail at once instead of waiting.
    let t = Instant::now();
    let r = pread_direct(dev.bdev_str(), 0, 4096);
    assert!(r.is_err(), "a read with no server fails: {r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "failed fast: {:?}",
        t.elapsed()
    );
    rdm_ok(&["recover", "rec-fio"]);
    assert_eq!(
        pread_direct(dev.bdev_str(), 0, 4096).unwrap(),
        vec![9u8; 4096]
    );
    dev.remove();
    assert_no_trace("rec-fio", &nodes);
}

/// A device waiting for recovery keeps the ranges it writes: another
/// device may not take them while it waits, and it comes back to them.
#[test]
fn a_waiting_device_keeps_its_ranges() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("rec-claims");
    let a = s.file("a.img", 8 * MIB);
    let table = format!("0 8192 linear {a} 0");
    let dev = Device::create("rec-claims", &table, &[]);
    pwrite_direct(dev.bdev_str(), 0, &[7u8; 4096], libc::O_SYNC).unwrap();
    kill_server("rec-claims", "recovering");
    let out = rdm(&["create", "rec-claims-2", "--table", &table]);
    assert!(
        !out.ok() && out.stderr.contains("device rec-claims "),
        "a create over a waiting device's range: {out}"
    );
    assert_eq!(ls_entry("rec-claims-2"), None);
    rdm_ok(&["recover", "rec-claims"]);
    assert_eq!(state_of("rec-claims"), "live");
    assert_eq!(
        pread_direct(dev.bdev_str(), 0, 4096).unwrap(),
        vec![7u8; 4096]
    );
    dev.remove();
}

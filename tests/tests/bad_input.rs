//! Bad input gets one clear line and leaves nothing behind: no device, no
//! server process, no state file. And a backing file truncated under a
//! live device fails the I/O past its new end, not the server.

use std::collections::BTreeSet;
use std::io::Write;

use rdm_tests::*;

const MIB: u64 = 1 << 20;

/// Server processes whose command line names `name`.
fn servers_of(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"rdm")) && args.contains(&name.as_bytes())
            })
        })
        .collect()
}

fn refused(name: &str, args: &[&str], says: &str, nodes: &BTreeSet<String>) {
    let out = rdm(args);
    assert!(!out.ok(), "{args:?} was accepted: {out}");
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains(says),
        "{args:?}: the first line should say {says:?}: {out}"
    );
    // rdm's own refusals are one line (plus the offending table line,
    // quoted); clap's usage errors add a hint after a blank line.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with("  | "))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line: {out}");
    assert!(!out.stderr.contains("panicked"), "{args:?}: {out}");
    assert_no_trace(name, nodes);
    assert_eq!(
        servers_of(name),
        Vec::<u32>::new(),
        "{args:?}: a server is left"
    );
}

#[test]
fn each_bad_input_gets_one_line_and_leaves_nothing() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("bad-input");
    let a = s.file("a.img", 4 * MIB);
    let nodes = ublk_nodes();
    let n = "bad";
    let table = format!("0 8192 linear {a} 0");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--table".into(), "0 100 linear".into()], "bad table"),
        (
            vec!["--table".into(), "0 100 zero extra".into()],
            "bad table",
        ),
        (vec!["--table".into(), "x 100 zero".into()], "invalid"),
        (
            vec!["--table".into(), format!("0 8192 linear {a} nan")],
            "sector \"nan\"",
        ),
        (
            vec!["--table".into(), "0 8192 frobnicate".into()],
            "frobnicate",
        ),
        (
            vec!["--table".into(), "0 18446744073709551615 zero".into()],
            "2^64",
        ),
        (
            vec!["--table".into(), "0 99999999999999999999 zero".into()],
            "invalid",
        ),
        (
            vec![
                "--table".into(),
                format!("0 8 zero;8 18446744073709551610 linear {a} 0"),
            ],
            "bad table",
        ),
        (
            vec!["--table".into(), format!("0 8192 linear {a}\nb 0")],
            "bad table",
        ),
        (
            vec!["--table".into(), format!("0 16384 linear {a} 0")],
            "too small",
        ),
        (
            vec![
                "--table".into(),
                "0 8192 linear /nonexistent/x.img 0".into(),
            ],
            "/nonexistent/x.img",
        ),
        (
            vec![
                "--table".into(),
                table.clone(),
                "--queues".into(),
                "0".into(),
            ],
            "--queues",
        ),
        (
            vec![
                "--table".into(),
                table.clone(),
                "--depth".into(),
                "100000".into(),
            ],
            "--depth",
        ),
        (
            vec![
                "--table".into(),
                table.clone(),
                "--block-size".into(),
                "1000".into(),
            ],
            "--block-size",
        ),
    ];
    for (extra, says) in &cases {
        let mut args = vec!["create", n];
        args.extend(extra.iter().map(String::as_str));
        refused(n, &args, says, &nodes);
    }

    // A 10 MB table (in a file: too long for an argument).
    let big = s.path("big.table");
    let mut f = std::fs::File::create(&big).unwrap();
    for i in 0..400_000u64 {
        writeln!(f, "{} 8 zero", i * 8).unwrap();
    }
    drop(f);
    assert!(std::fs::metadata(&big).unwrap().len() > 5 * MIB);
    refused(
        n,
        &["create", n, big.to_str().unwrap()],
        "at most 1048576",
        &nodes,
    );

    // A writable table over a file on a read-only mount.
    let ro = s.path("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let ro = ro.to_str().unwrap();
    sh("mount", &["-t", "tmpfs", "-o", "size=8m", "tmpfs", ro]);
    let rofile = format!("{ro}/r.img");
    std::fs::File::create(&rofile)
        .and_then(|f| f.set_len(4 * MIB))
        .unwrap();
    sh("mount", &["-o", "remount,ro", ro]);
    refused(
        n,
        &["create", n, "--table", &format!("0 8192 linear {rofile} 0")],
        "read-only",
        &nodes,
    );
    // --read-only serves it.
    let dev = Device::create(n, &format!("0 8192 linear {rofile} 0"), &["--read-only"]);
    dev.remove();
    sh("umount", &[ro]);
    assert_no_trace(n, &nodes);
}

#[test]
fn a_backing_file_truncated_under_a_live_device_fails_only_past_its_end() {
    if !require_ublk() {
        return;
    }
    for zc in modes() {
        let s = Scratch::new("bad-trunc");
        let a = s.file("a.img", 8 * MIB);
        let dev = Device::create_in_mode("trunc", &format!("0 16384 linear {a} 0"), zc, &[]);
        let bdev = dev.bdev_str().to_string();
        let data = random_bytes(4096, 3);
        pwrite_direct(&bdev, MIB, &data, 0).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .and_then(|f| f.set_len(4 * MIB))
            .unwrap();
        drop_caches();
        let e = pread_direct(&bdev, 6 * MIB, 4096).expect_err("a read past the new end");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{zc}: {e}");
        // The server is up and the rest of the device works.
        assert_same_bytes(
            &pread_direct(&bdev, MIB, 4096).expect("a read inside the file"),
            &data,
            "inside the truncated file",
        );
        let st = dev.status();
        assert_eq!(st["state"], "live", "{st}");
        assert!(
            st["devices"][0]["stats"]["errors"].as_u64() >= Some(1),
            "{zc}: the error is counted: {st}"
        );
        dev.remove();
    }
}

/// Two devices may not write the same bytes of one file: a create or a
/// reload whose writable range overlaps one another device writes (live or
/// loaded) is refused, naming the range and the other device, and changes
/// nothing. Read-only devices and ranges next to each other are fine.
#[test]
fn a_range_another_device_writes_is_refused() {
    if !require_ublk() {
        return;
    }
    let s = Scratch::new("bad-claims");
    let a = s.file("a.img", 8 * MIB);
    let b = s.file("b.img", 8 * MIB);
    let x = Device::create("claims-x", &format!("0 8192 linear {a} 0"), &[]);
    let nodes = ublk_nodes();
    let over_x = format!("0 8192 linear {b} 0\n8192 8192 linear {a} 4096");
    refused(
        "claims-y",
        &["create", "claims-y", "--table", &over_x],
        "line 2: ",
        &nodes,
    );
    let out = rdm(&["create", "claims-y", "--table", &over_x]);
    for part in [a.as_str(), "sectors 4096..8192", "device claims-x"] {
        assert!(out.stderr.contains(part), "{part} not named: {out}");
    }
    let dry = rdm(&["create", "claims-y", "--dry-run", "--table", &over_x]);
    assert!(!dry.ok() && dry.stderr.contains("device claims-x"), "{dry}");

    let ro = Device::create(
        "claims-ro",
        &format!("0 8192 linear {a} 0"),
        &["--read-only"],
    );
    let z = Device::create("claims-z", &format!("0 8192 linear {a} 8192"), &[]);
    // A reload onto x's range is refused; z keeps its table, nothing loaded.
    let out = rdm(&[
        "reload",
        "claims-z",
        "--table",
        &format!("0 8192 linear {a} 0"),
    ]);
    assert!(!out.ok() && out.stderr.contains("device claims-x"), "{out}");
    assert_eq!(
        rdm_ok(&["table", "claims-z"]).trim(),
        format!("0 8192 linear {a} 8192")
    );
    assert_eq!(ls_entry("claims-z").unwrap()["inactive_table"], false);
    // A loaded table holds its ranges as the live one does.
    rdm_ok(&[
        "reload",
        "claims-z",
        "--table",
        &format!("0 8192 linear {b} 0"),
    ]);
    let nodes = ublk_nodes();
    refused(
        "claims-w",
        &[
            "create",
            "claims-w",
            "--table",
            &format!("0 8 linear {b} 8000"),
        ],
        "device claims-z",
        &nodes,
    );
    // Once x is gone its range is free.
    x.remove();
    let w = Device::create("claims-w", &format!("0 8192 linear {a} 0"), &[]);
    for d in [w, z, ro] {
        d.remove();
    }
}

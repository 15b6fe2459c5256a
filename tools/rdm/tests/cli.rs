//! The `rdm` binary as a user runs it: exit codes, stdout, stderr.

use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn rdm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rdm"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(sizes: &[(&str, u64)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, sectors) in sizes {
            let f = fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(sectors * 512).unwrap();
        }
        Files { dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn dry_run_prints_the_normalized_table() {
    let f = Files::new(&[("a", 2048), ("b", 1024), ("c", 1024)]);
    let table = format!(
        "0 1024 linear {}  0 ; 1024 2048 striped 2 128 {} 0 {} 0;3072 8 zero",
        f.p("a"),
        f.p("b"),
        f.p("c")
    );
    let o = rdm(&["create", "t", "--dry-run", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "0 1024 linear {} 0\n1024 2048 striped 2 128 {} 0 {} 0\n3072 8 zero\n",
            f.p("a"),
            f.p("b"),
            f.p("c")
        )
    );
}

#[test]
fn dry_run_json_describes_segments_and_devices() {
    let f = Files::new(&[("a", 2048)]);
    let table = format!("0 2048 linear {} 0", f.p("a"));
    let o = rdm(&["create", "t", "--dry-run", "--json", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "t");
    assert_eq!(v["size_sectors"], 2048);
    assert_eq!(v["size_bytes"], 2048 * 512);
    assert_eq!(v["segments"][0]["target"]["type"], "linear");
    assert_eq!(v["devices"][0]["path"], f.p("a"));
    assert_eq!(v["devices"][0]["kind"], "file");
    assert_eq!(v["devices"][0]["size_bytes"], 2048 * 512);
    assert_eq!(v["devices"][0]["read_only"], false);
    assert!(v["devices"][0]["dax"].is_object());
}

#[test]
fn dry_run_json_reports_dax_probe_results() {
    let f = Files::new(&[("a", 2048), ("b", 2048)]);
    let table = format!(
        "0 2048 linear {} 0;2048 2048 linear {} 0",
        f.p("a"),
        f.p("b")
    );
    // Default (auto): probed; host files are not DAX.
    let o = rdm(&["create", "t", "--dry-run", "--json", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for i in 0..2 {
        let d = &v["devices"][i]["dax"];
        assert_eq!(d["supported"], false, "{v}");
        assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        assert!(d["kind"].is_null(), "{v}");
        assert!(d["persistence_domain"].is_null(), "{v}");
    }
    assert_eq!(v["dax"]["policy"], "auto");
    assert_eq!(v["dax"]["capable"], false);
    assert_eq!(v["dax"]["active"], false);
    let reason = v["dax"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&f.p("a")) && reason.contains(&f.p("b")),
        "{reason}"
    );

    // off: nothing probed.
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--json",
        "--dax",
        "off",
        "--table",
        &table,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["devices"][0]["dax"]["supported"].is_null(), "{v}");
    assert!(v["dax"]["capable"].is_null(), "{v}");
    assert_eq!(v["dax"]["policy"], "off");
    assert_eq!(v["dax"]["active"], false);
}

#[test]
fn dry_run_dax_required_fails_naming_every_device() {
    let f = Files::new(&[("a", 2048), ("b", 2048)]);
    let table = format!(
        "0 2048 linear {} 0;2048 2048 linear {} 0",
        f.p("a"),
        f.p("b")
    );
    for json in [false, true] {
        let mut args = vec![
            "create",
            "t",
            "--dry-run",
            "--dax",
            "required",
            "--table",
            &table,
        ];
        if json {
            args.push("--json");
        }
        let o = rdm(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--dax required"), "{e}");
        assert!(e.contains(&f.p("a")) && e.contains(&f.p("b")), "{e}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn dry_run_dax_zero_segment_and_auto_note() {
    let f = Files::new(&[("a", 2048)]);
    let table = format!("0 2048 linear {} 0;2048 8 zero", f.p("a"));
    let o = rdm(&["create", "t", "--dry-run", "--json", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dax"]["capable"], false);
    assert!(
        v["dax"]["reason"]
            .as_str()
            .unwrap()
            .contains("zero segment"),
        "{v}"
    );
    // Text mode, auto: exactly one line on stderr naming the device.
    let o = rdm(&["create", "t", "--dry-run", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("dax: ") && e.contains(&f.p("a")), "{e}");
    assert!(e.contains("serving through io_uring"), "{e}");
    // off: no probe, no note.
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--dax",
        "off",
        "--table",
        &table,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn table_from_file_and_stdin() {
    let f = Files::new(&[("a", 16)]);
    let tf = f.dir.path().join("t.table");
    fs::write(&tf, format!("# my table\n0 16 linear {} 0\n", f.p("a"))).unwrap();
    let o = rdm(&["create", "t", "--dry-run", tf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("0 16 linear {} 0\n", f.p("a")));

    let mut child = Command::new(env!("CARGO_BIN_EXE_rdm"))
        .args(["create", "t", "--dry-run", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"0 8 zero\n8 8 error\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "0 8 zero\n8 8 error\n");
}

#[test]
fn bad_tables_give_one_clear_error_and_the_line() {
    let f = Files::new(&[("a", 16)]);
    let cases = [
        (
            "0 8 zero\n8 8 linear X",
            "line 2: linear: invalid argument count 1",
            "8 8 linear X",
        ),
        (
            "0 16 striped 2 3 X 0 Y 0",
            "not divisible by chunk size",
            "0 16 striped 2 3 X 0 Y 0",
        ),
        ("4 8 zero", "gap in table", "4 8 zero"),
        (
            "0 8 frobnicate",
            "unknown target type \"frobnicate\"",
            "0 8 frobnicate",
        ),
    ];
    for (table, msg, line) in cases {
        let table = table.replace('X', &f.p("a")).replace('Y', &f.p("a"));
        let line = line.replace('X', &f.p("a")).replace('Y', &f.p("a"));
        let o = rdm(&["create", "t", "--dry-run", "--table", &table]);
        assert_eq!(o.status.code(), Some(1), "{table}");
        let e = stderr(&o);
        assert!(e.starts_with("rdm: t: bad table: "), "{e}");
        assert!(e.contains(msg), "{e}");
        assert!(e.contains(&format!("  | {line}")), "{e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn backing_file_problems_name_the_file() {
    let f = Files::new(&[("a", 16)]);
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--table",
        &format!("0 17 linear {} 0", f.p("a")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{}: too small for target", f.p("a"))),
        "{}",
        stderr(&o)
    );

    let missing = f.p("missing");
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--table",
        &format!("0 8 linear {missing} 0"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&missing) && stderr(&o).contains("No such file"),
        "{}",
        stderr(&o)
    );

    let o = rdm(&["create", "t", "--dry-run", "nonexistent.table"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read table file nonexistent.table"));

    let t = format!("0 8 linear {a} 0\n8 8 linear {a} 4", a = f.p("a"));
    let o = rdm(&["create", "t", "--dry-run", "--table", &t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("mapped writable twice"),
        "{}",
        stderr(&o)
    );
    let o = rdm(&["create", "t", "--dry-run", "--read-only", "--table", &t]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn block_size_is_checked() {
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--block-size",
        "4096",
        "--table",
        "0 12 zero",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not aligned to the 4096-byte logical block size"));
    let o = rdm(&[
        "create",
        "t",
        "--dry-run",
        "--block-size",
        "1024",
        "--table",
        "0 16 zero",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    assert_eq!(rdm(&["create", "t"]).status.code(), Some(2));
    assert_eq!(rdm(&["frobnicate"]).status.code(), Some(2));
    let o = rdm(&["create", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
    let o = rdm(&["--help"]);
    assert!(stdout(&o).contains("Exit codes"));
}

/// On a kernel without ublk (this host), create fails with one clear
/// sentence and leaves no state behind; the other verbs answer sensibly.
#[test]
fn without_ublk_create_fails_cleanly() {
    if std::path::Path::new("/dev/ublk-control").exists() {
        return; // covered by the guest tests
    }
    let f = Files::new(&[("a", 16)]);
    let run_dir = f.dir.path().join("run");
    let rdm_env = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rdm"))
            .args(args)
            .env("RDM_RUN_DIR", &run_dir)
            .output()
            .unwrap()
    };
    let table = format!("0 16 linear {} 0", f.p("a"));
    for fg in [false, true] {
        let mut args = vec!["create", "t", "--table", &table];
        if fg {
            args.push("--foreground");
        }
        let o = rdm_env(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("t: this kernel has no ublk"),
            "{}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty());
        let left: Vec<_> = fs::read_dir(&run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "state left behind: {left:?}");
    }
    let o = rdm_env(&["ls", "--json"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "[]");
    let o = rdm_env(&["remove", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no device named nope"));
    assert_eq!(rdm_env(&["features"]).status.code(), Some(2));
    let o = rdm_env(&["create", "../x", "--table", &table]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid device name"), "{}", stderr(&o));
}

/// A qemu-nbd serving `file` (read-only with `ro`) on a Unix socket
/// beside it, killed on drop.
struct QemuNbd(std::process::Child);

impl QemuNbd {
    fn start(file: &str, sock: &str, ro: bool) -> Option<QemuNbd> {
        let mut c = Command::new("qemu-nbd");
        c.args(["-f", "raw", "-t", "-e", "4", "-x", "e0"])
            .arg(format!("--socket={sock}"))
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if ro {
            c.arg("-r");
        }
        let child = c.spawn().ok()?;
        let t0 = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(t0.elapsed().as_secs() < 10, "qemu-nbd never listened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(QemuNbd(child))
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nbd_exports_are_checked_like_files() {
    let f = Files::new(&[("a", 8192), ("r", 8192)]);
    let (sa, sr) = (f.p("a.sock"), f.p("r.sock"));
    let Some(_a) = QemuNbd::start(&f.p("a"), &sa, false) else {
        eprintln!("skipped: no qemu-nbd (apt install qemu-utils)");
        return;
    };
    let _r = QemuNbd::start(&f.p("r"), &sr, true).unwrap();
    let a = format!("nbd+unix:///e0?socket={sa}");
    let r = format!("nbd+unix:///e0?socket={sr}");
    // Accepted, printed as given, with the export's size and kind.
    let table = format!("0 4096 linear {a} 0\n4096 4096 linear {a} 4096\n");
    let o = rdm(&["create", "t", "--dry-run", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), table);
    assert_eq!(stderr(&o), "", "no DAX note for a table of exports");
    let o = rdm(&["create", "t", "--dry-run", "--json", "--table", &table]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["devices"][0]["kind"], "nbd-export");
    assert_eq!(v["devices"][0]["size_bytes"], 8192 * 512);
    // Refused, one line each, naming the export and the cause.
    for (table, want) in [
        (format!("0 8193 linear {a} 0"), "too small for target"),
        (
            format!("0 10 linear {a} 0;10 10 linear {a} 5"),
            "mapped writable twice",
        ),
        (
            format!("0 10 linear {r} 0"),
            "read-only but the table is writable",
        ),
        (
            format!("0 10 linear nbd+unix:///e1?socket={sa} 0"),
            "e1: no such export",
        ),
        (
            "0 10 linear nbd+unix:///e0?socket=/nonexistent.sock 0".into(),
            "No such file",
        ),
        ("0 10 linear nbds://h/e 0".into(), "TLS"),
        (
            "0 10 linear nbd://h/e?foo=1 0".into(),
            "\"foo\" is not supported",
        ),
    ] {
        let o = rdm(&["create", "t", "--dry-run", "--table", &table]);
        assert_eq!(o.status.code(), Some(1), "{table}: {}", stderr(&o));
        let e = stderr(&o);
        // One line, and for a table rule the line of the table it is about.
        assert!(e.trim().lines().count() <= 2, "{e}");
        assert!(e.starts_with("rdm: t: "), "{e}");
        assert!(e.contains(want), "{table}: {e:?} should say {want:?}");
    }
    // A read-only table may use a read-only export, and map ranges twice.
    let table = format!("0 10 linear {r} 0\n10 10 linear {r} 5\n");
    let o = rdm(&["create", "t", "--dry-run", "--read-only", "--table", &table]);
    assert!(o.status.success(), "{}", stderr(&o));
}

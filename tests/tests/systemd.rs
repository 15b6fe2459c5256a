//! The systemd unit and the udev rule under the real programs, installed as
//! the README says: `systemctl start rdm@NAME` serves `/etc/rdm/NAME.table`
//! and `/dev/rdm/NAME` appears; a `kill -9` of the server is restarted by
//! systemd and the restart recovers the device while fio verifies across
//! it; `systemctl stop` removes the device. Runs only in a guest that
//! booted systemd as PID 1 (`cargo xtask test` boots one per kernel).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdm_tests::*;

const MIB: u64 = 1 << 20;

fn systemctl(args: &[&str]) -> String {
    sh("systemctl", args).trim().to_string()
}

/// `systemctl is-active` (which exits non-zero for anything but active).
fn is_active(unit: &str) -> String {
    output(Command::new("systemctl").args(["is-active", unit]))
        .stdout
        .trim()
        .to_string()
}

fn main_pid(unit: &str) -> u32 {
    systemctl(&["show", "-p", "MainPID", "--value", unit])
        .parse()
        .expect("MainPID is a number")
}

/// `cp` with a mode, as `install -m` does.
fn install(from: impl AsRef<Path>, to: &str, mode: &str) {
    sh(
        "install",
        &["-D", "-m", mode, from.as_ref().to_str().unwrap(), to],
    );
}

/// Installed as the README says: the package when there is one (what
/// `cargo xtask test` passes), else from source.
fn install_rdm() {
    match std::env::var("RDM_DEB").ok().filter(|d| !d.is_empty()) {
        Some(deb) => {
            sh("dpkg", &["-i", &deb]);
            let unit = std::fs::read_to_string("/lib/systemd/system/rdm@.service").unwrap();
            assert!(unit.contains("ExecStart=/usr/bin/rdm create %i"), "{unit}");
            let rule = std::fs::read_to_string("/lib/udev/rules.d/99-rdm.rules").unwrap();
            assert!(rule.contains("PROGRAM=\"/usr/bin/rdm udev-name"), "{rule}");
            let rule =
                std::fs::read_to_string("/lib/udev/rules.d/98-rdm-unprivileged.rules").unwrap();
            assert!(rule.contains("PROGRAM=\"/usr/bin/rdm udev-owner"), "{rule}");
            for f in [
                "/usr/share/man/man8/rdm.8.gz",
                "/usr/share/bash-completion/completions/rdm",
                "/usr/share/zsh/vendor-completions/_rdm",
                "/usr/share/fish/vendor_completions.d/rdm.fish",
            ] {
                assert!(Path::new(f).exists(), "{f} not installed");
            }
            let load = std::fs::read_to_string("/usr/lib/modules-load.d/rdm.conf").unwrap();
            assert_eq!(load.trim(), "ublk_drv");
            assert!(sh("rdm", &["--version"]).starts_with("rdm "));
        }
        None => {
            install(rdm_bin(), "/usr/local/bin/rdm", "0755");
            install(
                "../tools/systemd/rdm@.service",
                "/etc/systemd/system/rdm@.service",
                "0644",
            );
            for rule in ["99-rdm.rules", "98-rdm-unprivileged.rules"] {
                install(
                    format!("../tools/udev/{rule}"),
                    &format!("/etc/udev/rules.d/{rule}"),
                    "0644",
                );
            }
            systemctl(&["daemon-reload"]);
            sh("udevadm", &["control", "--reload"]);
        }
    }
}

#[test]
#[ignore = "needs systemd as PID 1: cargo xtask test runs it in a systemd guest"]
fn unit_serves_restarts_recovers_and_stops_under_systemd() {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(init.trim(), "systemd", "PID 1 must be systemd");
    install_rdm();

    let dir = Path::new("/var/lib/rdm-test");
    std::fs::create_dir_all(dir).unwrap();
    let files: Vec<String> = (0..4)
        .map(|i| {
            let p = dir.join(format!("s{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(16 * MIB)
                .unwrap();
            p.display().to_string()
        })
        .collect();
    std::fs::create_dir_all("/etc/rdm").unwrap();
    std::fs::write(
        "/etc/rdm/sd.table",
        format!(
            "# 64 MiB over four files\n0 131072 striped 4 128 {} 0 {} 0 {} 0 {} 0\n",
            files[0], files[1], files[2], files[3]
        ),
    )
    .unwrap();

    // Type=notify: start returns once the device is live.
    systemctl(&["start", "rdm@sd"]);
    assert_eq!(is_active("rdm@sd"), "active");
    wait_for_path("/dev/rdm/sd", Duration::from_secs(20));
    let target = std::fs::canonicalize("/dev/rdm/sd").unwrap();
    assert!(
        target.to_str().unwrap().starts_with("/dev/ublkb"),
        "/dev/rdm/sd -> {}",
        target.display()
    );

    // fio verifies across a crash of the server.
    let fio = BackgroundVerify::start("/dev/rdm/sd", "48M", "48M");
    std::thread::sleep(Duration::from_secs(3));
    let pid = main_pid("rdm@sd");
    assert!(pid > 0);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let t = Instant::now();
    loop {
        let now = main_pid("rdm@sd");
        let active = is_active("rdm@sd") == "active";
        if active && now != 0 && now != pid {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "systemd did not restart rdm@sd: {}",
            systemctl(&["status", "--no-pager", "rdm@sd"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "systemd restarted the server and it recovered in {:?}",
        t.elapsed()
    );
    fio.assert_clean("across the restart");
    // The same device, still named.
    assert_eq!(std::fs::canonicalize("/dev/rdm/sd").unwrap(), target);
    let ls = rdm_json(&["ls"]);
    assert_eq!(ls[0]["name"], "sd", "{ls}");
    assert_eq!(ls[0]["state"], "live", "{ls}");

    // Stopping the unit removes the device, its name and its record.
    systemctl(&["stop", "rdm@sd"]);
    wait_gone(&target, Duration::from_secs(30));
    wait_gone("/dev/rdm/sd", Duration::from_secs(30));
    assert_eq!(rdm_json(&["ls"]), serde_json::json!([]));
    assert_ne!(is_active("rdm@sd").as_str(), "active");
}

/// `cmd` as `user`, with that user's runtime directory.
fn as_user(user: &str, cmd: &[&str]) -> Out {
    as_user_in(user, &format!("/tmp/run-{user}"), cmd)
}

/// `cmd` as `user`, with `run` as their runtime directory.
fn as_user_in(user: &str, run: &str, cmd: &[&str]) -> Out {
    output(
        Command::new("runuser")
            .args([
                "-u",
                user,
                "--",
                "env",
                &format!("XDG_RUNTIME_DIR={run}"),
                "HOME=/tmp",
            ])
            .args(cmd)
            .env_remove("RDM_RUN_DIR"),
    )
}

fn add_user(user: &str) {
    if output(Command::new("id").arg(user)).ok() {
        return;
    }
    sh("useradd", &["--no-create-home", user]);
    let run = format!("/tmp/run-{user}");
    std::fs::create_dir_all(&run).unwrap();
    sh("chown", &[user, &run]);
    sh("chmod", &["0700", &run]);
}

fn owner_of(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.uid()).unwrap_or(u32::MAX)
}

fn mode_of(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map_or(u32::MAX, |m| m.mode() & 0o7777)
}

#[test]
#[ignore = "needs systemd and udev: cargo xtask test runs it in a systemd guest"]
fn users_create_use_and_remove_only_their_own_devices() {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(init.trim(), "systemd", "PID 1 must be systemd");
    install_rdm();
    // The rule opens the control node to users (MODE 0666).
    sh(
        "udevadm",
        &["trigger", "--action=add", "/sys/class/misc/ublk-control"],
    );
    sh("udevadm", &["settle"]);
    let features: serde_json::Value =
        serde_json::from_str(&sh("rdm", &["features", "--json"])).unwrap();
    assert_eq!(features["unprivileged"], true, "{features}");
    add_user("alice");
    add_user("bob");
    let alice = sh("id", &["-u", "alice"]).trim().parse::<u32>().unwrap();

    // Alice's file, in a directory only she can enter.
    let home = "/var/lib/alice";
    std::fs::create_dir_all(home).unwrap();
    sh("chown", &["alice", home]);
    sh("chmod", &["0700", home]);
    let file = format!("{home}/a.img");
    assert!(as_user("alice", &["truncate", "-s", "8M", &file]).ok());
    let table = format!("0 16384 linear {file} 0");

    // Under umask 0 too, what the create makes is hers alone from the
    // start: the run directory, and the log (before, 0666 until removed).
    let out = as_user(
        "alice",
        &[
            "sh",
            "-c",
            "umask 0; exec \"$0\" \"$@\"",
            "rdm",
            "create",
            "mine",
            "--table",
            &table,
            "--json",
        ],
    );
    assert!(out.ok(), "alice's create: {out}");
    for (f, want) in [
        ("", 0o700),
        ("/mine.log", 0o600),
        ("/mine.json", 0o600),
        ("/mine.sock", 0o600),
    ] {
        let p = format!("/tmp/run-alice/rdm{f}");
        assert_eq!(mode_of(&p), want, "{p} is {:o}", mode_of(&p));
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let bdev = v["bdev"].as_str().unwrap().to_string();
    assert_eq!(v["mode"], "copy", "{v}");
    // udev gives her the node.
    let t = Instant::now();
    while owner_of(&bdev) != alice {
        assert!(t.elapsed() < Duration::from_secs(20), "{bdev} not alice's");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Her I/O, through the device, lands in her file.
    let data = "rdm-unprivileged-".repeat(241);
    let data = &data[..4096];
    std::fs::write("/tmp/pattern", data).unwrap();
    let dd = as_user(
        "alice",
        &[
            "dd",
            "if=/tmp/pattern",
            &format!("of={bdev}"),
            "bs=4096",
            "seek=2",
            "oflag=direct",
            "status=none",
        ],
    );
    assert!(dd.ok(), "alice writes: {dd}");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(&got[8192..12288], data.as_bytes(), "the write is in a.img");
    // She lists only her devices; root's list does not have hers.
    let root_dir = Path::new("/var/lib/rdm-test-root");
    std::fs::create_dir_all(root_dir).unwrap();
    let secret = root_dir.join("secret.img");
    std::fs::File::create(&secret)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    sh("chmod", &["0700", root_dir.to_str().unwrap()]);
    let secret = secret.to_str().unwrap();
    let rootdev = rdm_ok(&[
        "create",
        "roots",
        "--table",
        &format!("0 16384 linear {secret} 0"),
    ]);
    let ls = as_user("alice", &["rdm", "ls", "--json"]);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&ls.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["mine"], "{ls}");
    assert!(
        ls_entry("mine").is_none(),
        "root's list shows alice's device"
    );
    // Root's device: not hers to see, control or remove; nor its node.
    for cmd in [
        &["rdm", "status", "roots"][..],
        &["rdm", "remove", "roots"],
        &["rdm", "remove", "--force", "roots"],
    ] {
        let out = as_user("alice", cmd);
        assert!(!out.ok(), "alice: {cmd:?}: {out}");
    }
    assert!(ls_entry("roots").is_some(), "root's device is still there");
    let rootbdev = rootdev.trim();
    let peek = as_user(
        "alice",
        &[
            "dd",
            &format!("if={rootbdev}"),
            "of=/dev/null",
            "count=1",
            "status=none",
        ],
    );
    assert!(!peek.ok(), "alice read root's device: {peek}");
    // Nor can she make rdm open root's file.
    let out = as_user(
        "alice",
        &[
            "rdm",
            "create",
            "steal",
            "--table",
            &format!("0 16384 linear {secret} 0"),
        ],
    );
    assert!(!out.ok() && out.stderr.contains("secret.img"), "{out}");
    assert!(
        as_user("alice", &["rdm", "ls"]).stdout.lines().count() == 2,
        "steal left a trace"
    );
    // Bob sees nothing of hers and cannot open her device.
    let bob_ls = as_user("bob", &["rdm", "ls", "--json"]);
    assert_eq!(bob_ls.stdout.trim(), "[]", "{bob_ls}");
    let peek = as_user(
        "bob",
        &[
            "dd",
            &format!("if={bdev}"),
            "of=/dev/null",
            "count=1",
            "status=none",
        ],
    );
    assert!(!peek.ok(), "bob read alice's device: {peek}");
    assert!(!as_user("bob", &["rdm", "remove", "mine"]).ok());
    // Where the runtime directory is shared (sticky, 1777), bob makes
    // `rdm/` first and plants her log as a link to a file of hers: her
    // create is refused, saying whose the directory is, and writes nothing
    // through the link.
    let shared = "/tmp/shared-run";
    std::fs::create_dir_all(shared).unwrap();
    sh("chmod", &["1777", shared]);
    let notes = format!("{home}/notes");
    assert!(as_user("alice", &["sh", "-c", &format!("echo mine > {notes}")]).ok());
    let planted = format!("{shared}/rdm");
    assert!(as_user("bob", &["mkdir", "-m", "0777", &planted]).ok());
    assert!(as_user("bob", &["ln", "-s", &notes, &format!("{planted}/trap.log")]).ok());
    let out = as_user_in(
        "alice",
        shared,
        &["rdm", "create", "trap", "--table", &table],
    );
    assert!(!out.ok(), "alice's create in bob's directory: {out}");
    let bob = sh("id", &["-u", "bob"]).trim().to_string();
    assert!(
        out.stderr.contains(&planted) && out.stderr.contains(&format!("owned by uid {bob}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "mine\n",
        "written through the link"
    );
    // She removes hers: nothing left.
    let out = as_user("alice", &["rdm", "remove", "mine"]);
    assert!(out.ok(), "alice's remove: {out}");
    assert!(!Path::new(&bdev).exists(), "{bdev} left behind");
    assert_eq!(
        as_user("alice", &["rdm", "ls", "--json"]).stdout.trim(),
        "[]"
    );
    rdm_ok(&["remove", "roots"]);
}

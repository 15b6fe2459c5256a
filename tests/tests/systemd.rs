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

#[test]
#[ignore = "needs systemd as PID 1: cargo xtask test runs it in a systemd guest"]
fn unit_serves_restarts_recovers_and_stops_under_systemd() {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(init.trim(), "systemd", "PID 1 must be systemd");
    // Installed as the README says: the package when there is one (what
    // `cargo xtask test` passes), else from source.
    match std::env::var("RDM_DEB").ok().filter(|d| !d.is_empty()) {
        Some(deb) => {
            sh("dpkg", &["-i", &deb]);
            let unit = std::fs::read_to_string("/lib/systemd/system/rdm@.service").unwrap();
            assert!(unit.contains("ExecStart=/usr/bin/rdm create %i"), "{unit}");
            let rule = std::fs::read_to_string("/lib/udev/rules.d/99-rdm.rules").unwrap();
            assert!(rule.contains("PROGRAM=\"/usr/bin/rdm udev-name"), "{rule}");
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
            install(
                "../tools/udev/99-rdm.rules",
                "/etc/udev/rules.d/99-rdm.rules",
                "0644",
            );
            systemctl(&["daemon-reload"]);
            sh("udevadm", &["control", "--reload"]);
        }
    }

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

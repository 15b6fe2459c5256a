//! A Debian root with systemd and udev, for the guests that boot systemd as
//! PID 1: the unit and the udev rule tested under the real programs. Built
//! once with debootstrap, from the machine's own apt sources and for the
//! machine's own release (the guest runs the host's test binaries on it),
//! and cached under `target/vm/sysroot`.

use crate::kernel::debian_mirror;
use crate::util::{cache_dir, run_progress};
use anyhow::{Context, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// What the guest tests use on it besides systemd itself.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "fio",
    "e2fsprogs",
    "procps",
    "util-linux",
    "dmsetup",
];

/// The cached root, built first if needed.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_dir().join("sysroot");
    let done = dir.join(".rdm-complete");
    if done.exists() {
        return Ok(dir);
    }
    let release = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    let suite = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let mirror = debian_mirror()?;
    let tmp = cache_dir().join("sysroot.tmp");
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    run_progress(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={}", PACKAGES.join(",")),
            ])
            .arg(&suite)
            .arg(&tmp)
            .arg(&mirror),
        &format!("building the systemd guest root ({suite}, debootstrap; once, cached)"),
    )
    .context("debootstrap of the systemd guest root failed")?;
    fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    fs::write(&done, "")?;
    Ok(dir)
}

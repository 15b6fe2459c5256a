//! Host packages the rig needs, installed on demand.

use crate::util::{describe, run};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Debian packages the VM rig and the integration tests use on the host.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "fio",
    "dmsetup",
    "ndctl",
    "daxctl",
    "e2fsprogs",
    "xfsprogs",
    "cpio",
    "kmod",
    "xz-utils",
    "libclang1-14",
    "debootstrap",
    "fonts-dejavu-core",
    // NBD: servers for the tests and the kernel's client for the peer row.
    "qemu-utils",
    "nbdkit",
    "nbd-client",
];

fn is_installed(pkg: &str) -> Result<bool> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Status}", pkg]);
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}` (is this a Debian host?)", describe(&cmd)))?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Installs whichever of [`HOST_PACKAGES`] are missing.
pub fn ensure_host_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in HOST_PACKAGES {
        if !is_installed(pkg)? {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing host packages: {}",
        missing.join(" ")
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing host packages and not root; run: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    if install().is_err() {
        // Typically stale or empty package lists on a fresh machine.
        eprintln!("xtask: apt-get install failed; running apt-get update and retrying");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install().context("cannot install the rig's host packages")?;
    }
    Ok(())
}

//! `cargo xtask deb`: the Debian package of rdm, built with dpkg-deb from
//! the tree: the release binary, the systemd unit and the udev rule (with
//! the package's `/usr/bin/rdm`), the man page and shell completions that
//! rdm generates from its own command line, and a modules-load.d entry for
//! `ublk_drv`.

use crate::util::{run, workspace_root};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DESCRIPTION: &str = "device-mapper tables served from userspace over ublk
 rdm serves dmsetup-style tables (linear, striped, zero, error, flakey,
 delay) as ublk block devices from a userspace daemon, over backing files
 or block devices, with a zero-copy io_uring data path and DAX for
 persistent memory. A crashed daemon is recovered without losing I/O.";

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || true
		systemctl start systemd-modules-load.service >/dev/null 2>&1 || true
	fi
	udevadm control --reload >/dev/null 2>&1 || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
udevadm control --reload >/dev/null 2>&1 || true
";

/// Builds the package; returns the path of the .deb.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "rdm"])
        .current_dir(&root))?;
    let rdm = root.join("target/release/rdm");
    let version = capture(Command::new(&rdm).arg("--version"))?
        .split_whitespace()
        .nth(1)
        .context("rdm --version printed no version")?
        .to_string();
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out_dir = root.join("target/debian");
    let stage = out_dir.join("stage");
    let _ = fs::remove_dir_all(&stage);
    let put = |rel: &str, data: &[u8], mode: u32| -> Result<()> {
        let p = stage.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent"))?;
        fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let local = |rel: &str| -> Result<String> {
        let text =
            fs::read_to_string(root.join(rel)).with_context(|| format!("cannot read {rel}"))?;
        Ok(text.replace("/usr/local/bin/rdm", "/usr/bin/rdm"))
    };
    put("usr/bin/rdm", &fs::read(&rdm)?, 0o755)?;
    run(Command::new("strip")
        .arg("--strip-unneeded")
        .arg(stage.join("usr/bin/rdm")))?;
    put(
        "lib/systemd/system/rdm@.service",
        local("tools/systemd/rdm@.service")?.as_bytes(),
        0o644,
    )?;
    put(
        "lib/udev/rules.d/99-rdm.rules",
        local("tools/udev/99-rdm.rules")?.as_bytes(),
        0o644,
    )?;
    put(
        "lib/udev/rules.d/98-rdm-unprivileged.rules",
        local("tools/udev/98-rdm-unprivileged.rules")?.as_bytes(),
        0o644,
    )?;
    put("usr/lib/modules-load.d/rdm.conf", b"ublk_drv\n", 0o644)?;
    let man = capture(Command::new(&rdm).arg("man"))?;
    put("usr/share/man/man8/rdm.8.gz", &gzip(man.as_bytes())?, 0o644)?;
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/rdm"),
        ("zsh", "usr/share/zsh/vendor-completions/_rdm"),
        ("fish", "usr/share/fish/vendor_completions.d/rdm.fish"),
    ] {
        let text = capture(Command::new(&rdm).args(["completions", shell]))?;
        put(rel, text.as_bytes(), 0o644)?;
    }
    put(
        "usr/share/doc/rdm/README.md",
        &fs::read(root.join("README.md"))?,
        0o644,
    )?;
    put(
        "usr/share/doc/rdm/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: rdm\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    let control = format!(
        "Package: rdm\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: rdm developers <rdm@localhost>\nSection: admin\nPriority: optional\n\
         Depends: libc6 (>= 2.36)\nRecommends: systemd, udev\n\
         Installed-Size: {}\nDescription: {DESCRIPTION}\n",
        dir_bytes(&stage)?.div_ceil(1024)
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out_dir.join(format!("rdm_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// A command's stdout, which must succeed.
fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    child.stdin.take().expect("piped").write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// Bytes of everything under `dir` (for Installed-Size).
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_bytes(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}

//! Guest kernels: fetched from Debian packages into `target/vm/kernels/`.
//!
//! * `6.12`: newest `linux-image-6.12.*+deb12-amd64-unsigned` from the
//!   system's own apt lists (bookworm-security).
//! * `latest`: newest `linux-binary-*+deb13-amd64` + `linux-modules-*` from
//!   trixie-backports, through a private apt list and state dir so the
//!   system's apt configuration is never touched.
//!
//! A kernel is fetched once; `VERSION` in its cache dir names the release in
//! use. `cargo xtask fetch-kernels --refresh` picks the newest again.

use crate::util::{cache_dir, describe, output, run, run_progress, version_key};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    #[value(name = "6.12")]
    V6_12,
    #[value(name = "latest")]
    Latest,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::V6_12 => "6.12",
            Flavor::Latest => "latest",
        }
    }
}

/// An extracted kernel: `root` is a tree with `lib/modules/<kver>`.
#[derive(Clone)]
pub struct Kernel {
    pub kver: String,
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    fn at(dir: &Path, kver: &str) -> Kernel {
        let root = dir.join(kver);
        // bookworm packages use /boot, the trixie-backports ones keep the
        // image next to the modules.
        let boot = root.join("boot").join(format!("vmlinuz-{kver}"));
        let vmlinuz = if boot.exists() {
            boot
        } else {
            root.join("lib/modules").join(kver).join("vmlinuz")
        };
        Kernel {
            kver: kver.to_string(),
            root,
            vmlinuz,
        }
    }
}

/// Returns the cached kernel, fetching it first if needed (or if `refresh`).
pub fn ensure(flavor: Flavor, refresh: bool) -> Result<Kernel> {
    let dir = cache_dir().join("kernels").join(flavor.name());
    let version_file = dir.join("VERSION");
    if !refresh {
        if let Ok(kver) = fs::read_to_string(&version_file) {
            let k = Kernel::at(&dir, kver.trim());
            if k.vmlinuz.exists() {
                return Ok(k);
            }
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let apt = match flavor {
        Flavor::V6_12 => Apt::system(),
        Flavor::Latest => Apt::private(&dir.join("apt"))?,
    };
    let candidates = candidates(flavor, &apt)?;
    let mut last_err = None;
    // Newest first; an unavailable download falls back to the previous one.
    for (kver, pkgs) in candidates.iter().take(3) {
        eprintln!("xtask: fetching kernel {kver} ({})", pkgs.join(" "));
        match fetch(&apt, &dir, kver, pkgs) {
            Ok(k) => {
                fs::write(&version_file, format!("{kver}\n"))
                    .with_context(|| format!("cannot write {}", version_file.display()))?;
                remove_other_versions(&dir, kver);
                eprintln!("xtask: kernel {} = {kver}", flavor.name());
                return Ok(k);
            }
            Err(e) => {
                eprintln!("xtask: warning: {e:#}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("candidates is non-empty"))
        .with_context(|| format!("cannot fetch a {} kernel", flavor.name()))
}

/// apt-get/apt-cache with either the system's configuration or a private
/// list/state/cache dir.
struct Apt {
    opts: Vec<String>,
}

impl Apt {
    fn system() -> Apt {
        Apt { opts: Vec::new() }
    }

    fn private(dir: &Path) -> Result<Apt> {
        let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        if !keyring.exists() {
            bail!(
                "{} is missing (apt-get install debian-archive-keyring); it signs trixie-backports",
                keyring.display()
            );
        }
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let list = dir.join("sources.list");
        let line = format!(
            "deb [signed-by={}] {} trixie-backports main\n",
            keyring.display(),
            debian_mirror()?
        );
        fs::write(&list, line).with_context(|| format!("cannot write {}", list.display()))?;
        let d = dir.display();
        let opts = [
            format!("Dir::Etc::sourcelist={}", list.display()),
            "Dir::Etc::sourceparts=/nonexistent".to_string(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Snapshot mirrors serve Release files past their Valid-Until.
            "Acquire::Check-Valid-Until=false".to_string(),
        ];
        let apt = Apt {
            opts: opts
                .iter()
                .flat_map(|o| ["-o".to_string(), o.clone()])
                .collect(),
        };
        run(apt.cmd("apt-get").args(["-q", "update"]))
            .context("cannot fetch the trixie-backports package list")?;
        Ok(apt)
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.args(&self.opts);
        c
    }

    fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = output(self.cmd("apt-cache").args(["pkgnames", prefix]))?;
        Ok(out.lines().map(str::to_string).collect())
    }
}

/// The mirror the system's apt sources use for Debian itself; there is no
/// built-in address to fall back on.
pub fn debian_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for word in text.split_whitespace() {
            let url = word.trim_end_matches('/');
            if (url.starts_with("http://") || url.starts_with("https://"))
                && url.ends_with("/debian")
            {
                return Ok(url.to_string());
            }
        }
    }
    bail!(
        "no Debian mirror in this machine's apt sources (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/): add one (a URL ending in /debian) to fetch guest kernels \
         and the systemd root"
    )
}

/// Available (kver, packages) for `flavor`, newest first.
fn candidates(flavor: Flavor, apt: &Apt) -> Result<Vec<(String, Vec<String>)>> {
    let mut found: Vec<(String, Vec<String>)> = match flavor {
        Flavor::V6_12 => {
            let list = |apt: &Apt| -> Result<Vec<_>> {
                Ok(apt
                    .pkgnames("linux-image-6.12.")?
                    .into_iter()
                    .filter_map(|p| {
                        let v = p
                            .strip_prefix("linux-image-")?
                            .strip_suffix("+deb12-amd64-unsigned")?;
                        is_version(v).then(|| (format!("{v}+deb12-amd64"), vec![p.clone()]))
                    })
                    .collect())
            };
            let mut found = list(apt)?;
            if found.is_empty() {
                eprintln!("xtask: no 6.12 kernel in the apt lists; running apt-get update");
                run(Command::new("apt-get").args(["-q", "update"]))?;
                found = list(apt)?;
            }
            found
        }
        Flavor::Latest => {
            let modules = apt.pkgnames("linux-modules-")?;
            apt.pkgnames("linux-binary-")?
                .into_iter()
                .filter_map(|p| {
                    let v = p
                        .strip_prefix("linux-binary-")?
                        .strip_suffix("+deb13-amd64")?;
                    let kver = format!("{v}+deb13-amd64");
                    let m = format!("linux-modules-{kver}");
                    (is_version(v) && modules.contains(&m)).then(|| (kver, vec![p.clone(), m]))
                })
                .collect()
        }
    };
    if found.is_empty() {
        bail!("no {} kernel package found in the apt lists", flavor.name());
    }
    found.sort_by_key(|(kver, _)| {
        std::cmp::Reverse(version_key(kver.split('+').next().unwrap_or("")))
    });
    Ok(found)
}

fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Downloads and extracts one kernel into `dir/<kver>`.
fn fetch(apt: &Apt, dir: &Path, kver: &str, pkgs: &[String]) -> Result<Kernel> {
    let dl = dir.join("download");
    let tmp = dir.join(format!("{kver}.tmp"));
    let _ = fs::remove_dir_all(&dl);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&dl).with_context(|| format!("cannot create {}", dl.display()))?;
    let mut cmd = apt.cmd("apt-get");
    // Downloading into a root-owned dir: apt's _apt sandbox user can't write there.
    cmd.args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .args(pkgs)
        .current_dir(&dl);
    run_progress(&mut cmd, &format!("downloading kernel {kver}"))
        .context("kernel download failed")?;
    for entry in fs::read_dir(&dl).with_context(|| format!("cannot list {}", dl.display()))? {
        let deb = entry?.path();
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    }
    // modprobe/depmod -b look in ROOT/lib/modules; trixie packages use usr/lib.
    if !tmp.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", tmp.join("lib"))
            .with_context(|| format!("cannot symlink {}/lib", tmp.display()))?;
    }
    // The packages ship no modules.dep (their postinst would make it).
    // (Its warnings about modules.order/builtin are expected: not shipped.)
    output(Command::new("depmod").arg("-b").arg(&tmp).arg(kver))?;
    let final_dir = dir.join(kver);
    let _ = fs::remove_dir_all(&final_dir);
    fs::rename(&tmp, &final_dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), final_dir.display()))?;
    let _ = fs::remove_dir_all(&dl);
    let k = Kernel::at(dir, kver);
    if !k.vmlinuz.exists() {
        bail!(
            "{} has no kernel image at {}",
            pkgs.join(" "),
            k.vmlinuz.display()
        );
    }
    Ok(k)
}

/// Drops older extracted kernels of the same flavor (they are ~500 MB each).
fn remove_other_versions(dir: &Path, keep: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name != keep && name.contains("+deb") && e.path().is_dir() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Runs `modprobe --show-depends` against the kernel tree: the module files
/// (in load order) needed for `modules`.
pub fn module_files(k: &Kernel, modules: &[&str], empty_conf: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("modprobe");
    cmd.arg("-C")
        .arg(empty_conf)
        .arg("-d")
        .arg(&k.root)
        .args(["-S", &k.kver, "--show-depends", "-a"])
        .args(modules);
    let out = output(&mut cmd)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for line in out.lines() {
        // "insmod /path/mod.ko.xz [params]"; built-in modules print "builtin x".
        if let Some(rest) = line.strip_prefix("insmod ") {
            let p = PathBuf::from(rest.split_whitespace().next().unwrap_or_default());
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    if files.is_empty() && !out.contains("builtin") {
        bail!("`{}` listed no modules", describe(&cmd));
    }
    Ok(files)
}

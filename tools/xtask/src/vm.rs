//! Boots a guest under qemu (TCG) and runs one command in it.
//!
//! Stage 1 (`tools/vm/init`, busybox initramfs) mounts the host's `/`
//! read-only over virtio-9p plus the working tree and a per-run control dir
//! read-write, then switch_roots into the host's bash running
//! `tools/vm/stage2.sh`, which runs the command and writes its exit status
//! to the control dir before powering off.
//!
//! With a systemd root ([`VmConfig::sysroot`]), stage 1 instead lays a
//! tmpfs overlay over that root, adds the guest kernel's modules and a unit
//! that runs `tools/vm/stage2-systemd.sh`, and switch_roots into systemd as
//! PID 1: the command runs as a service, next to real systemd and udev.

use crate::kernel::{self, Kernel};
use crate::util::{cache_dir, describe, run, shell_quote, workspace_root};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STAGE1: &str = include_str!("../../vm/init");
const STAGE2: &str = include_str!("../../vm/stage2.sh");
const STAGE2_SYSTEMD: &str = include_str!("../../vm/stage2-systemd.sh");
const RUN_COMMAND: &str = include_str!("../../vm/run-command.sh");

/// Stage 1 needs only the 9p client; stage 2 loads the rest with modprobe.
const STAGE1_MODULES: &[&str] = &["netfs", "9pnet", "9p", "9pnet_virtio", "overlay"];

/// Environment variables passed through to the guest command by default.
const PASS_ENV: &[&str] = &["PATH", "HOME", "TERM", "USER", "RUST_BACKTRACE", "RUST_LOG"];

/// One emulated NVDIMM.
pub enum Pmem {
    /// A fresh, zeroed image of this many bytes.
    Fresh(u64),
    /// An existing image, reused as-is (persistence checks).
    Image(PathBuf),
}

pub struct VmConfig {
    pub kernel: Kernel,
    pub pmem: Vec<Pmem>,
    pub icount: bool,
    pub timeout: Duration,
    /// Extra `NAME=VALUE` pairs on top of [`PASS_ENV`] and `RDM_*`.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub argv: Vec<String>,
    /// Give the guest command no stdin (tests), instead of the terminal.
    pub stdin_null: bool,
    /// Boot systemd as PID 1 from this root (see [`crate::sysroot`]).
    pub sysroot: Option<PathBuf>,
    /// Start every console line with this (guests running side by side).
    pub prefix: Option<String>,
}

/// Boots the guest and returns the command's exit status.
pub fn run_in_vm(cfg: &VmConfig) -> Result<i32> {
    if cfg.argv.is_empty() {
        bail!("no command given to run in the guest");
    }
    let runs = cache_dir().join("run");
    remove_stale_runs(&runs);
    // One directory per boot: guests of one xtask may run side by side.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run_dir = runs.join(format!("{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&run_dir);
    let ctl = run_dir.join("ctl");
    let mut attempt = 1;
    let result = loop {
        let _ = fs::remove_dir_all(&ctl);
        fs::create_dir_all(&ctl).with_context(|| format!("cannot create {}", ctl.display()))?;
        let r = boot(cfg, &run_dir, &ctl);
        // A kernel that panicked while booting ran nothing: boot again, once.
        let early = r
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("panicked"))
            && !ctl.join("started").exists();
        if early && attempt < 2 {
            eprintln!("xtask: the guest kernel panicked while booting; booting it again");
            attempt += 1;
            continue;
        }
        break r;
    };
    let _ = fs::remove_dir_all(&run_dir);
    result
}

fn boot(cfg: &VmConfig, run_dir: &Path, ctl: &Path) -> Result<i32> {
    let tree = workspace_root();
    let k = &cfg.kernel;
    write_ctl(cfg, &tree, ctl)?;
    let initramfs = run_dir.join("initramfs.cpio");
    build_initramfs(k, run_dir, &initramfs)?;
    let pmem = pmem_images(&cfg.pmem, run_dir)?;

    let mut qemu = Command::new("qemu-system-x86_64");
    let machine = if pmem.is_empty() {
        "pc,accel=tcg"
    } else {
        "pc,accel=tcg,nvdimm=on"
    };
    qemu.args(["-machine", machine, "-cpu", "max"]);
    if cfg.icount {
        // Guest time counts instructions: deterministic timing. Only with
        // one vCPU (icount with -smp 2 panics the guest).
        qemu.args(["-smp", "1", "-icount", "shift=0,sleep=off"]);
    } else {
        qemu.args(["-smp", "2"]);
    }
    const RAM: u64 = 2 << 30;
    if pmem.is_empty() {
        qemu.args(["-m", "2G"]);
    } else {
        let total: u64 = pmem.iter().map(|(_, size)| size).sum();
        qemu.args([
            "-m",
            &format!(
                "{}M,slots={},maxmem={}M",
                RAM >> 20,
                pmem.len(),
                (RAM + total) >> 20
            ),
        ]);
    }
    qemu.args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "none",
    ]);
    qemu.arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initramfs);
    // quiet + loglevel=3 keep the kernel's chatter out of the command's
    // output; panic=-1 + -no-reboot turns a panic into a qemu exit.
    let mut append = "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off".to_string();
    if cfg.sysroot.is_some() {
        append.push_str(" systemd.show_status=0 systemd.log_level=warning");
    }
    qemu.args(["-append", &append]);
    let sysroot = cfg.sysroot.clone().unwrap_or_else(|| PathBuf::from("/"));
    for (tag, path, ro) in [
        ("hostroot", Path::new("/"), true),
        ("tree", &tree, false),
        ("ctl", ctl, false),
        ("sysroot", &sysroot, true),
    ] {
        qemu.args([
            "-fsdev",
            &format!(
                "local,id={tag},path={},security_model=none,multidevs=remap{}",
                qemu_escape(path),
                if ro { ",readonly=on" } else { "" }
            ),
            "-device",
            &format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"),
        ]);
    }
    for (i, (img, size)) in pmem.iter().enumerate() {
        qemu.args([
            "-object",
            &format!(
                "memory-backend-file,id=pm{i},share=on,mem-path={},size={size}",
                qemu_escape(img)
            ),
            "-device",
            &format!("nvdimm,memdev=pm{i},id=nv{i}"),
        ]);
    }
    qemu.stdout(Stdio::piped());
    if cfg.stdin_null {
        qemu.stdin(Stdio::null());
    }
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&qemu)))?;

    // Forward the console to our stdout as it comes, remembering whether the
    // kernel panicked.
    let mut out = child.stdout.take().expect("stdout is piped");
    let panic_line: Arc<Mutex<Option<String>>> = Arc::default();
    let reader = {
        let panic_line = Arc::clone(&panic_line);
        let prefix = cfg.prefix.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut tail: Vec<u8> = Vec::new();
            let mut line: Vec<u8> = Vec::new();
            let stdout = std::io::stdout();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut o = stdout.lock();
                match &prefix {
                    None => {
                        let _ = o.write_all(&buf[..n]);
                    }
                    // Whole lines only, so two guests' lines never mix.
                    Some(p) => {
                        line.extend_from_slice(&buf[..n]);
                        while let Some(i) = line.iter().position(|&b| b == b'\n') {
                            let _ = o.write_all(p.as_bytes());
                            let _ = o.write_all(&line[..=i]);
                            line.drain(..=i);
                        }
                    }
                }
                let _ = o.flush();
                tail.extend_from_slice(&buf[..n]);
                if let Some(line) = find_panic(&tail) {
                    panic_line.lock().unwrap().get_or_insert(line);
                }
                // Keep enough to see a panic line split across reads.
                let keep = tail.len().saturating_sub(256);
                tail.drain(..keep);
            }
            if let (Some(p), false) = (&prefix, line.is_empty()) {
                let mut o = stdout.lock();
                let _ = writeln!(o, "{p}{}", String::from_utf8_lossy(&line));
            }
        })
    };

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break status;
        }
        if start.elapsed() > cfg.timeout {
            stop(&mut child);
            let _ = reader.join();
            bail!(
                "guest timed out after {} s (qemu killed); raise it with --timeout",
                cfg.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    if let Some(line) = panic_line.lock().unwrap().take() {
        bail!("guest kernel panicked: {line}");
    }
    let status_file = ctl.join("status");
    match fs::read_to_string(&status_file) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("bad exit status {s:?} in {}", status_file.display())),
        Err(_) => bail!("guest powered off without reporting an exit status (qemu: {status})"),
    }
}

/// Control-dir files stage 1 and stage 2 read.
fn write_ctl(cfg: &VmConfig, tree: &Path, ctl: &Path) -> Result<()> {
    let path_str = |p: &Path| -> Result<String> {
        p.to_str()
            .map(str::to_string)
            .with_context(|| format!("non-UTF-8 path {}", p.display()))
    };
    let env1 = format!(
        "RDM_TREE={}\nRDM_CTL={}\nRDM_KROOT={}\nRDM_KVER={}\nRDM_SYSTEMD={}\n",
        shell_quote(&path_str(tree)?),
        shell_quote(&path_str(ctl)?),
        shell_quote(&path_str(&cfg.kernel.root)?),
        shell_quote(&cfg.kernel.kver),
        if cfg.sysroot.is_some() { "1" } else { "" }
    );
    // The unit that runs the command under systemd (systemd mode only).
    let unit = format!(
        "[Unit]\nDescription=rdm VM rig: the command under test\n\
         Wants=systemd-udev-trigger.service systemd-udev-settle.service\n\
         After=systemd-udev-trigger.service systemd-udev-settle.service local-fs.target\n\
         [Service]\nType=oneshot\nTimeoutStartSec=infinity\n\
         ExecStart=/bin/bash {ctl}/stage2-systemd.sh {ctl}\n",
        ctl = shell_quote(&path_str(ctl)?)
    );
    let mut env = Vec::new();
    for (k, v) in std::env::vars() {
        if PASS_ENV.contains(&k.as_str()) || k.starts_with("RDM_") {
            env.push((k, v));
        }
    }
    env.extend(cfg.env.iter().cloned());
    let nul_join = |items: &mut dyn Iterator<Item = String>| {
        let mut v = Vec::new();
        for s in items {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v
    };
    let files: [(&str, Vec<u8>); 8] = [
        ("run-command.sh", RUN_COMMAND.as_bytes().to_vec()),
        ("stage1.env", env1.into_bytes()),
        ("stage2.sh", STAGE2.as_bytes().to_vec()),
        ("stage2-systemd.sh", STAGE2_SYSTEMD.as_bytes().to_vec()),
        ("rdm-vm.service", unit.into_bytes()),
        ("args", nul_join(&mut cfg.argv.iter().cloned())),
        (
            "env",
            nul_join(&mut env.iter().map(|(k, v)| format!("{k}={v}"))),
        ),
        ("cwd", path_str(&cfg.cwd)?.into_bytes()),
    ];
    for (name, data) in files {
        let p = ctl.join(name);
        fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// A busybox initramfs with the 9p modules decompressed (busybox insmod
/// can't read .ko.xz), written to `out`.
fn build_initramfs(k: &Kernel, run_dir: &Path, out: &Path) -> Result<()> {
    let stage = run_dir.join("initramfs");
    // A second boot (after an early panic) builds it again from scratch.
    let _ = fs::remove_dir_all(&stage);
    for d in ["bin", "dev", "proc", "sys", "modules", "newroot", "ctl"] {
        fs::create_dir_all(stage.join(d))
            .with_context(|| format!("cannot create {}", stage.display()))?;
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox"))
        .context("cannot copy /bin/busybox (busybox-static)")?;
    let init = stage.join("init");
    fs::write(&init, STAGE1).with_context(|| format!("cannot write {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    run(Command::new("mknod")
        .arg(stage.join("dev/console"))
        .args(["c", "5", "1"]))?;

    let empty = run_dir.join("empty-modprobe.d");
    fs::create_dir_all(&empty)?;
    let mut order = String::new();
    for src in kernel::module_files(k, STAGE1_MODULES, &empty)? {
        let name = src
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (base, decompress) = match name.rsplit_once('.') {
            Some((b, "xz")) => (b.to_string(), Some("xz")),
            Some((b, "zst")) => (b.to_string(), Some("zstd")),
            _ => (name.clone(), None),
        };
        let dst = stage.join("modules").join(&base);
        match decompress {
            Some(tool) => {
                let f = fs::File::create(&dst)
                    .with_context(|| format!("cannot create {}", dst.display()))?;
                run(Command::new(tool).arg("-dc").arg(&src).stdout(f))?;
            }
            None => {
                fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
            }
        }
        order.push_str(&base);
        order.push('\n');
    }
    fs::write(stage.join("modules/order"), order)?;

    let mut files = Vec::new();
    list_tree(&stage, Path::new("."), &mut files)?;
    let f = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(f);
    let mut child = cpio
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&cpio)))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(files.join("\n").as_bytes())
        .context("writing the cpio file list")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&cpio));
    }
    Ok(())
}

/// Relative paths of everything under `base/rel`, parents first (for cpio).
fn list_tree(base: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    out.push(rel.to_string_lossy().into_owned());
    let full = base.join(rel);
    if fs::symlink_metadata(&full)?.is_dir() {
        for e in fs::read_dir(&full).with_context(|| format!("cannot list {}", full.display()))? {
            list_tree(base, &rel.join(e?.file_name()), out)?;
        }
    }
    Ok(())
}

/// Image paths and sizes for the NVDIMMs. Fresh images live in this run's
/// own directory (removed with it), so concurrent guests never share one;
/// persistence checks pass their own image with `--pmem-image`.
fn pmem_images(pmem: &[Pmem], run_dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let dir = run_dir.join("pmem");
    let fresh_path = |i: usize| dir.join(format!("pmem{i}.img"));
    // Don't truncate an image that is also being reused in this boot.
    for (i, p) in pmem.iter().enumerate() {
        if let Pmem::Image(img) = p {
            let img =
                fs::canonicalize(img).with_context(|| format!("pmem image {}", img.display()))?;
            let fresh = (0..pmem.len()).filter(|&j| matches!(pmem[j], Pmem::Fresh(_)));
            if let Some(j) = fresh
                .map(fresh_path)
                .find(|f| fs::canonicalize(f).is_ok_and(|f| f == img))
            {
                bail!(
                    "--pmem would overwrite {} (also given as NVDIMM {i}); copy it first",
                    j.display()
                );
            }
        }
    }
    let mut v = Vec::new();
    for (i, p) in pmem.iter().enumerate() {
        match p {
            Pmem::Fresh(size) => {
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let img = fresh_path(i);
                // Truncating to zero then extending gives a sparse, zeroed file.
                let f = fs::File::create(&img)
                    .with_context(|| format!("cannot create {}", img.display()))?;
                f.set_len(*size)
                    .with_context(|| format!("cannot size {}", img.display()))?;
                v.push((img, *size));
            }
            Pmem::Image(img) => {
                let size = fs::metadata(img)
                    .with_context(|| format!("pmem image {}", img.display()))?
                    .len();
                v.push((img.clone(), size));
            }
        }
    }
    Ok(v)
}

/// A qemu option value can't contain a bare comma.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The first "Kernel panic" line in `buf`, once it is complete.
fn find_panic(buf: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(buf);
    let start = text.find("Kernel panic")?;
    let line = &text[start..];
    let end = line.find('\n')?;
    Some(line[..end].trim().to_string())
}

/// SIGTERM first so qemu restores the terminal, SIGKILL if it lingers.
fn stop(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run dirs of xtask processes that no longer exist (killed by ^C).
fn remove_stale_runs(runs: &Path) {
    let Ok(rd) = fs::read_dir(runs) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let alive = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

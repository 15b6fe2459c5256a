//! Shared helpers for rdm's integration tests (`tests/tests/*.rs`).
//!
//! The tests run inside a guest under `cargo xtask test` (root, no udev,
//! emulated NVDIMMs). Start each test that needs ublk with
//!
//! ```no_run
//! if !rdm_tests::require_ublk() {
//!     return;
//! }
//! ```
//!
//! which skips on a host without ublk, but panics when `RDM_REQUIRE_UBLK=1`
//! (set by xtask) so CI can't pass by skipping.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// True if ublk is usable. Otherwise prints a SKIP line and returns false,
/// or panics if `RDM_REQUIRE_UBLK=1`.
pub fn require_ublk() -> bool {
    if Path::new("/dev/ublk-control").exists() {
        return true;
    }
    if std::env::var_os("RDM_REQUIRE_UBLK").is_some_and(|v| v == "1") {
        panic!("/dev/ublk-control is missing and RDM_REQUIRE_UBLK=1");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    println!("SKIP {test}: no /dev/ublk-control (run under `cargo xtask test`)");
    false
}

/// Runs `cmd`; panics with its stdout and stderr if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// `run(Command::new(prog).args(args))`.
pub fn sh<S: AsRef<std::ffi::OsStr>>(prog: &str, args: &[S]) -> String {
    run(Command::new(prog).args(args))
}

/// A `dmsetup` command that doesn't wait for udev (there is none in the
/// guest); dmsetup then creates the /dev/mapper nodes itself.
pub fn dmsetup() -> Command {
    let mut c = Command::new("dmsetup");
    c.env("DM_DISABLE_UDEV", "1");
    c
}

/// Waits until `path` exists (device nodes appear asynchronously).
pub fn wait_for_path(path: impl AsRef<Path>, timeout: Duration) {
    let path = path.as_ref();
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `rdm` CLI: `$RDM_BIN`, else `target/debug/rdm` next to the test
/// executable (`target/debug/deps/<test>`). Built by `cargo build --bins`.
pub fn rdm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RDM_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("rdm"))
        .expect("test executable is in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` or set RDM_BIN",
        bin.display()
    );
    bin
}

/// `uname -r`, e.g. "6.12.117+deb12-amd64".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}

/// (major, minor) of the running kernel, e.g. (6, 12): for feature checks.
pub fn kernel_version() -> (u32, u32) {
    let rel = kernel_release();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Puts namespace `n`.0 (on the n-th NVDIMM region) in `mode` ("fsdax" or
/// "devdax") unless it already is; returns `ndctl list` JSON for it.
pub fn pmem_namespace(n: usize, mode: &str) -> serde_json::Value {
    let ns = format!("namespace{n}.0");
    let list = sh("ndctl", &["list", "-n", &ns]);
    let cur: serde_json::Value = parse_ndctl(&list);
    if cur["mode"] == mode {
        return cur;
    }
    let out = sh("ndctl", &["create-namespace", "-f", "-e", &ns, "-m", mode]);
    parse_ndctl(&out)
}

fn parse_ndctl(out: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("bad ndctl output ({e}): {out}"));
    // `ndctl list` wraps one namespace in an array on some versions.
    match v {
        serde_json::Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v => v,
    }
}

/// An ext4 filesystem mounted with `-o dax` on NVDIMM `n` (fsdax). The
/// first call in a boot formats it; later calls return the same mountpoint.
pub fn pmem_fsdax(n: usize) -> PathBuf {
    let mnt = PathBuf::from(format!("/tmp/rdm-pmem{n}"));
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    if mounts.lines().any(|l| l.split(' ').nth(1) == mnt.to_str()) {
        return mnt;
    }
    let ns = pmem_namespace(n, "fsdax");
    let dev = format!(
        "/dev/{}",
        ns["blockdev"]
            .as_str()
            .expect("fsdax namespace has a blockdev")
    );
    wait_for_path(&dev, Duration::from_secs(10));
    // DAX needs the filesystem block size to equal the page size.
    sh("mkfs.ext4", &["-q", "-F", "-b", "4096", &dev]);
    std::fs::create_dir_all(&mnt).expect("create pmem mountpoint");
    sh("mount", &["-o", "dax", &dev, mnt.to_str().unwrap()]);
    mnt
}

/// The device-DAX character device (e.g. /dev/dax1.0) on NVDIMM `n`.
pub fn pmem_devdax(n: usize) -> PathBuf {
    let ns = pmem_namespace(n, "devdax");
    // `ndctl list` has it at the top, `create-namespace` under daxregion.
    let chardev = ns["chardev"]
        .as_str()
        .or_else(|| ns["daxregion"]["devices"][0]["chardev"].as_str())
        .unwrap_or_else(|| panic!("no dax chardev in {ns}"));
    let dev = PathBuf::from(format!("/dev/{chardev}"));
    wait_for_path(&dev, Duration::from_secs(10));
    dev
}

// ---------------------------------------------------------------------------
// rdm devices and the things around them (backing files, loop, dm, fio).
// ---------------------------------------------------------------------------

/// Data-path modes (`--zero-copy` values) to run the data tests in: copy
/// everywhere, zero copy too where the kernel has `UBLK_F_AUTO_BUF_REG`
/// (6.16+; the 6.12 guest has no zero copy at all).
pub fn modes() -> Vec<&'static str> {
    if kernel_version() >= (6, 16) {
        vec!["off", "on"]
    } else {
        vec!["off"]
    }
}

/// Whether the running kernel's ublk offers feature `name` (as `rdm
/// features` names it, e.g. "BATCH_IO").
pub fn kernel_has(name: &str) -> bool {
    rdm_json(&["features"])["names"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n == name))
}

/// True if the running kernel's ublk offers feature `name`. Otherwise
/// prints a SKIP line naming the kernel and the feature (a test that
/// returns early still reports `ok`) and returns false.
pub fn require_feature(name: &str) -> bool {
    if kernel_has(name) {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    println!("SKIP {test}: kernel {} has no {name}", kernel_release());
    false
}

/// The `mode` rdm reports for a `--zero-copy` value.
pub fn mode_name(zero_copy: &str) -> &'static str {
    match zero_copy {
        "on" | "on-2threads" => "zero-copy",
        "batch" => "batch",
        _ => "copy",
    }
}

/// Outcome of a command that may fail.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` and returns its outcome, whatever it is.
pub fn output(cmd: &mut Command) -> Out {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `rdm ARGS`, outcome whatever it is.
pub fn rdm(args: &[&str]) -> Out {
    output(Command::new(rdm_bin()).args(args))
}

/// `rdm ARGS`, which must succeed; returns stdout.
pub fn rdm_ok(args: &[&str]) -> String {
    let out = rdm(args);
    assert!(out.ok(), "rdm {args:?} failed: {out}");
    out.stdout
}

/// `rdm ARGS --json` (must succeed), parsed.
pub fn rdm_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let text = rdm_ok(&a);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("rdm {a:?}: bad JSON ({e}): {text}"))
}

/// The entry of `rdm ls --json` for `name`, if any.
pub fn ls_entry(name: &str) -> Option<serde_json::Value> {
    let ls = rdm_json(&["ls"]);
    let arr = ls.as_array().unwrap_or_else(|| panic!("ls --json: {ls}"));
    arr.iter().find(|d| d["name"] == name).cloned()
}

/// The ublk nodes in /dev (`ublkbN`, `ublkcN`), to check that a failed
/// command left none behind.
pub fn ublk_nodes() -> BTreeSet<String> {
    std::fs::read_dir("/dev")
        .expect("read /dev")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ublkb") || n.starts_with("ublkc"))
        .collect()
}

/// Asserts nothing of device `name` remains: no `rdm ls` entry, no state
/// or socket in the run directory, no ublk nodes beyond `nodes_before`.
pub fn assert_no_trace(name: &str, nodes_before: &BTreeSet<String>) {
    assert_eq!(ls_entry(name), None, "`rdm ls` still lists {name}");
    let run = run_dir();
    for ext in ["json", "sock", "lock"] {
        let p = run.join(format!("{name}.{ext}"));
        assert!(!p.exists(), "stale {} left behind", p.display());
    }
    let now = ublk_nodes();
    let extra: Vec<_> = now.difference(nodes_before).collect();
    assert!(extra.is_empty(), "orphan ublk nodes: {extra:?}");
}

/// Where rdm keeps each device's state, socket, lock and log.
pub fn run_dir() -> PathBuf {
    std::env::var_os("RDM_RUN_DIR").map_or_else(|| PathBuf::from("/run/rdm"), PathBuf::from)
}

/// Waits until `path` is gone.
pub fn wait_gone(path: impl AsRef<Path>, timeout: Duration) {
    let path = path.as_ref();
    let start = Instant::now();
    while path.exists() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {} to go",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A live rdm device, created by `rdm create --json`; removed (with
/// `--force`) when dropped, also when the test panics.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub dev_id: u64,
    pub bdev: PathBuf,
    pub mode: String,
    removed: bool,
}

impl Device {
    /// `rdm create NAME --table TABLE --json ARGS`; panics if it fails.
    pub fn create(name: &str, table: &str, args: &[&str]) -> Device {
        Device::try_create(name, table, args)
            .unwrap_or_else(|out| panic!("rdm create {name} --table {table:?} {args:?}: {out}"))
    }

    /// Like [`Device::create`] but returns the failed outcome.
    pub fn try_create(name: &str, table: &str, args: &[&str]) -> Result<Device, Out> {
        let mut a = vec!["create", name, "--table", table, "--json"];
        a.extend_from_slice(args);
        let out = rdm(&a);
        if !out.ok() {
            return Err(out);
        }
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("rdm create --json: bad JSON ({e}): {out}"));
        let dev = Device {
            name: v["name"]
                .as_str()
                .unwrap_or_else(|| panic!("no name: {v}"))
                .into(),
            dev_id: v["dev_id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no dev_id: {v}")),
            bdev: v["bdev"]
                .as_str()
                .unwrap_or_else(|| panic!("no bdev: {v}"))
                .into(),
            mode: v["mode"]
                .as_str()
                .unwrap_or_else(|| panic!("no mode: {v}"))
                .into(),
            removed: false,
        };
        assert_eq!(dev.name, name, "{v}");
        assert_eq!(
            dev.bdev,
            PathBuf::from(format!("/dev/ublkb{}", dev.dev_id)),
            "{v}"
        );
        // `rdm create` returns once the device is live; no udev in the guest,
        // so give devtmpfs a moment for the node.
        wait_for_path(&dev.bdev, Duration::from_secs(10));
        Ok(dev)
    }

    /// `rdm create` in data-path mode `zero_copy` ("on"/"off", or "batch"
    /// for `--batch-io`); checks the reported mode.
    pub fn create_in_mode(name: &str, table: &str, zero_copy: &str, args: &[&str]) -> Device {
        let mut a = match zero_copy {
            "batch" => vec!["--batch-io"],
            "on-2threads" => vec!["--zero-copy", "on", "--io-threads", "2"],
            zc => vec!["--zero-copy", zc],
        };
        a.extend_from_slice(args);
        let dev = Device::create(name, table, &a);
        assert_eq!(dev.mode, mode_name(zero_copy), "mode of {name}");
        dev
    }

    pub fn bdev_str(&self) -> &str {
        self.bdev.to_str().expect("utf-8 path")
    }

    /// `rdm status NAME --json`.
    pub fn status(&self) -> serde_json::Value {
        rdm_json(&["status", &self.name])
    }

    /// `rdm remove NAME` (without --force), which must succeed and leave
    /// no block device behind.
    pub fn remove(mut self) {
        self.removed = true;
        let out = rdm(&["remove", &self.name]);
        if !out.ok() {
            let log = std::fs::read_to_string(run_dir().join(format!("{}.log", self.name)))
                .unwrap_or_default();
            panic!("rdm remove {} failed: {out}\nserver log:\n{log}", self.name);
        }
        assert!(
            !self.bdev.exists(),
            "{} still exists after `rdm remove` returned",
            self.bdev.display()
        );
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.removed {
            // A failing test: what the server said is the first clue, and
            // the removal below deletes it.
            if std::thread::panicking() {
                let log = run_dir().join(format!("{}.log", self.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last 40 lines)", log.display());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
                eprintln!(
                    "--- rdm status {}: {}",
                    self.name,
                    rdm(&["status", &self.name])
                );
            }
            let out = rdm(&["remove", "--force", &self.name]);
            if !out.ok() {
                eprintln!("cleanup: rdm remove --force {}: {out}", self.name);
            }
        }
    }
}

/// A scratch directory under /tmp (tmpfs in the guest: keep it small),
/// removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = PathBuf::from(format!("/tmp/rdm-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    /// A sparse file of `size` bytes; returns its path as a string.
    pub fn file(&self, name: &str, size: u64) -> String {
        let p = self.dir.join(name);
        File::create(&p)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p.to_str().expect("utf-8 path").to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A failed test may have left something mounted here.
        let _ = Command::new("umount").arg("-R").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loop device over a file (direct I/O where the file system allows),
/// detached when dropped.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn new(file: &str) -> Loop {
        let out = output(Command::new("losetup").args(["-f", "--show", "--direct-io=on", file]));
        let dev = if out.ok() {
            out.stdout
        } else {
            sh("losetup", &["-f", "--show", file])
        };
        let dev = dev.trim().to_string();
        wait_for_path(&dev, Duration::from_secs(10));
        Loop { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

/// A kernel device-mapper device (`dmsetup create`), removed when dropped.
pub struct Dm {
    pub name: String,
    pub dev: String,
}

impl Dm {
    pub fn new(name: &str, table: &str) -> Dm {
        Dm::try_new(name, table).unwrap_or_else(|out| panic!("dmsetup create {name}: {out}"))
    }

    /// `dmsetup create`, or its failed outcome (nothing is left behind).
    pub fn try_new(name: &str, table: &str) -> Result<Dm, Out> {
        // dmsetup reads one table line per line.
        let table = table.replace(';', "\n");
        for (word, module) in [
            (" zero", "dm-zero"),
            (" flakey ", "dm-flakey"),
            (" delay ", "dm-delay"),
            (" log-writes ", "dm-log-writes"),
        ] {
            if table.contains(word) {
                load_module(module);
            }
        }
        let out = output(dmsetup().args(["create", name, "--table", &table]));
        if !out.ok() {
            let _ = dmsetup().args(["remove", name]).output();
            return Err(out);
        }
        let dev = format!("/dev/mapper/{name}");
        wait_for_path(&dev, Duration::from_secs(10));
        Ok(Dm {
            name: name.to_string(),
            dev,
        })
    }
}

impl Drop for Dm {
    fn drop(&mut self) {
        let _ = dmsetup().args(["remove", &self.name]).output();
    }
}

/// Loads a kernel module the rig did not (e.g. dm-zero), from the guest
/// kernel's tree: `$RDM_KROOT`, else `target/vm/kernels/*/$(uname -r)` of
/// this workspace (the guest sees the host's tree at the same path).
pub fn load_module(module: &str) {
    let modname = module.replace('-', "_");
    let loaded = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if loaded
        .lines()
        .any(|l| l.split(' ').next() == Some(modname.as_str()))
    {
        return;
    }
    let rel = kernel_release();
    let mut roots: Vec<PathBuf> = std::env::var_os("RDM_KROOT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm/kernels");
    if let Ok(rd) = std::fs::read_dir(kernels) {
        roots.extend(rd.filter_map(|e| e.ok()).map(|e| e.path().join(&rel)));
    }
    let empty = Path::new("/run/rdm-tests-empty-modprobe.d");
    let _ = std::fs::create_dir_all(empty);
    let mut tried = Vec::new();
    for root in roots.iter().filter(|r| r.exists()) {
        let out = output(
            Command::new("modprobe")
                .arg("-C")
                .arg(empty)
                .arg("-d")
                .arg(root)
                .args(["-S", &rel, module]),
        );
        if out.ok() {
            return;
        }
        tried.push(format!("{}: {out}", root.display()));
    }
    panic!("cannot load kernel module {module}: {tried:?}");
}

/// Runs fio against `dev` with io_uring, O_DIRECT and `args`; panics with
/// fio's output if it fails. Returns its output.
pub fn fio(dev: &str, args: &[&str]) -> String {
    let out = try_fio(dev, args);
    assert!(out.ok(), "fio on {dev} {args:?} failed: {out}");
    out.stdout
}

/// Like [`fio`] but returns the outcome.
pub fn try_fio(dev: &str, args: &[&str]) -> Out {
    let mut c = Command::new("fio");
    c.args([
        "--name=rdm",
        &format!("--filename={dev}"),
        "--ioengine=io_uring",
        "--direct=1",
        "--iodepth=32",
    ])
    .args(args);
    output(&mut c)
}

/// Deterministic pseudo-random bytes (xorshift64*), different per `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Panics unless `got == want`, naming the first differing byte.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sector {}): got {:#04x}, want {:#04x}",
            i / 512,
            got[i],
            want[i]
        );
    }
}

/// Drops clean page cache, so later buffered reads hit the devices.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// Writes `data` at `offset` of a block device (buffered), then fsyncs.
pub fn write_dev(dev: &str, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev}: {e}"));
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        f.write_all_at(chunk, offset + (i as u64) * (1 << 20))
            .unwrap_or_else(|e| panic!("write {dev}: {e}"));
    }
    f.sync_all().unwrap_or_else(|e| panic!("fsync {dev}: {e}"));
}

/// Reads `len` bytes at `offset` of a file or device (buffered).
pub fn read_at(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, offset)
        .unwrap_or_else(|e| panic!("read {path} at {offset}: {e}"));
    v
}

/// A 4 KiB-aligned buffer for O_DIRECT.
pub struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + 4096];
        let off = raw.as_ptr().align_offset(4096);
        Aligned { raw, off, len }
    }
    pub fn from(data: &[u8]) -> Aligned {
        let mut a = Aligned::new(data.len());
        a.bytes_mut().copy_from_slice(data);
        a
    }
    pub fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// One O_DIRECT (plus `extra_flags`, e.g. `O_SYNC`) write of `data` at
/// `offset` (both 4 KiB-aligned).
pub fn pwrite_direct(
    path: &str,
    offset: u64,
    data: &[u8],
    extra_flags: i32,
) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | extra_flags)
        .open(path)?;
    let buf = Aligned::from(data);
    f.write_all_at(buf.bytes(), offset)
}

/// One O_DIRECT read of `len` bytes at `offset` (both 4 KiB-aligned).
pub fn pread_direct(path: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = Aligned::new(len);
    f.read_exact_at(buf.bytes_mut(), offset)?;
    Ok(buf.bytes().to_vec())
}

/// Size of a block device in bytes (`blockdev --getsize64`).
pub fn dev_size(dev: &str) -> u64 {
    sh("blockdev", &["--getsize64", dev])
        .trim()
        .parse()
        .expect("blockdev --getsize64 prints a number")
}

/// fio random writes with crc32c verification running in the background:
/// every block is read back and checked after each 64 writes and at the
/// end, and any I/O error or bad block fails fio. For what must survive
/// something happening underneath (a killed and recovered server).
pub struct BackgroundVerify {
    child: std::process::Child,
}

impl BackgroundVerify {
    /// Starts on `dev`, writing `io_size` (e.g. "64M") over the first
    /// `size` of it.
    pub fn start(dev: &str, size: &str, io_size: &str) -> BackgroundVerify {
        Self::start_rw(dev, size, io_size, "randwrite")
    }

    /// [`BackgroundVerify::start`] with another fio `--rw` (e.g. `randrw`:
    /// reads of written blocks are verified as they happen too).
    pub fn start_rw(dev: &str, size: &str, io_size: &str, rw: &str) -> BackgroundVerify {
        let child = Command::new("fio")
            .args([
                "--name=verify",
                &format!("--filename={dev}"),
                "--ioengine=io_uring",
                "--direct=1",
                "--iodepth=16",
                &format!("--rw={rw}"),
                "--bs=4k",
                &format!("--size={size}"),
                &format!("--io_size={io_size}"),
                "--verify=crc32c",
                "--verify_backlog=64",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start fio");
        BackgroundVerify { child }
    }

    /// Waits for fio; panics with its output unless it ended with no I/O
    /// error and no verification failure.
    pub fn assert_clean(self, what: &str) {
        let out = self.child.wait_with_output().expect("fio");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fio {what}: {text}");
        assert!(text.contains("err= 0"), "fio {what} reports errors: {text}");
        assert!(!text.contains("verify: bad"), "fio {what}: {text}");
    }
}

/// An NBD server the test starts on loopback: qemu-nbd (qemu-utils) or
/// nbdkit's file plugin over a file, on a TCP port or a Unix socket.
/// Killed when dropped; [`NbdServer::kill`] and [`NbdServer::start`] stop
/// and start it again at the same address.
pub struct NbdServer {
    child: Option<std::process::Child>,
    kind: NbdKind,
    file: String,
    /// The URI a table names the export with.
    pub uri: String,
}

#[derive(Debug, Clone)]
pub enum NbdKind {
    QemuTcp { port: u16 },
    QemuUnix { socket: PathBuf },
    NbdkitUnix { socket: PathBuf },
}

impl NbdServer {
    pub fn new(kind: NbdKind, file: &str) -> NbdServer {
        let uri = match &kind {
            NbdKind::QemuTcp { port } => format!("nbd://127.0.0.1:{port}/e0"),
            NbdKind::QemuUnix { socket } => format!("nbd+unix:///e0?socket={}", socket.display()),
            NbdKind::NbdkitUnix { socket } => format!("nbd+unix:///?socket={}", socket.display()),
        };
        let mut s = NbdServer {
            child: None,
            kind,
            file: file.to_string(),
            uri,
        };
        s.start();
        s
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let qemu = |c: &mut Command| {
            // Persistent, 8 clients (multi-conn), writes through the host's
            // page cache, discards punch holes.
            c.args([
                "-f",
                "raw",
                "-t",
                "-e",
                "8",
                "--cache=writeback",
                "--discard=unmap",
                "-x",
                "e0",
            ]);
        };
        let mut c;
        match &self.kind {
            NbdKind::QemuTcp { port } => {
                c = Command::new("qemu-nbd");
                qemu(&mut c);
                c.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
            }
            NbdKind::QemuUnix { socket } => {
                let _ = std::fs::remove_file(socket);
                c = Command::new("qemu-nbd");
                qemu(&mut c);
                c.arg(format!("--socket={}", socket.display()));
            }
            NbdKind::NbdkitUnix { socket } => {
                let _ = std::fs::remove_file(socket);
                c = Command::new("nbdkit");
                c.args(["-f", "-U"]).arg(socket).arg("file");
            }
        }
        c.arg(&self.file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.child = Some(
            c.spawn()
                .unwrap_or_else(|e| panic!("start {:?}: {e}", self.kind)),
        );
        let t0 = std::time::Instant::now();
        loop {
            let up = match &self.kind {
                NbdKind::QemuTcp { port } => {
                    std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
                }
                NbdKind::QemuUnix { socket } | NbdKind::NbdkitUnix { socket } => {
                    std::os::unix::net::UnixStream::connect(socket).is_ok()
                }
            };
            if up {
                return;
            }
            // Starting qemu-nbd (its libraries come over 9p) can take long
            // in a loaded guest.
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "{:?} never listened",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ends the test process after `secs` unless dropped first, printing the
/// server log of device `name`: a hung test says where it hung instead of
/// timing out the whole guest.
pub struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    pub fn new(name: &str, secs: u64) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, name) = (done.clone(), name.to_string());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(secs) {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let log =
                std::fs::read_to_string(run_dir().join(format!("{name}.log"))).unwrap_or_default();
            let ps = Command::new("ps")
                .args(["-eo", "pid,stat,wchan:24,etime,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let dmesg = Command::new("dmesg")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let tail: Vec<&str> = dmesg.lines().rev().take(30).collect();
            eprintln!(
                "watchdog: {name} still running after {secs} s; its server log:\n{log}\nprocesses:\n{ps}\nkernel log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            std::process::exit(101);
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

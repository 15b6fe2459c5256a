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

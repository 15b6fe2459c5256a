//! Per-device state under the run directory (`/run/rdm`): a JSON state file
//! and a Unix socket the CLI talks to. The directory is 0700 and every file
//! in it 0600 from the moment it is made ([`RunDir`]).
//!
//! The state file is claimed with `O_EXCL` before anything is created, so
//! names are unique; it is removed by [`StateGuard`]'s `Drop` when the
//! server exits cleanly, and stays behind when it crashes so that `rdm ls`
//! can show the device as dead and `rdm remove --force` can clean it up.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use serde::{Deserialize, Serialize};

use crate::backend::dax_path::DaxPolicy;
use crate::control::recovery::{self, Recovery};
pub use crate::control::rundir::RunDir;
use crate::io::features::{DataMode, ZeroCopy};

/// The run directory: `$RDM_RUN_DIR` if set; for root `/run/rdm`; for
/// any other user `$XDG_RUNTIME_DIR/rdm` (or `/run/user/UID/rdm`), their
/// own: a user sees and controls only their own devices.
pub fn run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RDM_RUN_DIR") {
        return d.into();
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/rdm");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", uid.as_raw())))
        .join("rdm")
}

pub fn state_path(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.json"))
}

pub fn socket_path(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.sock"))
}

pub fn log_path(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.log"))
}

/// Opens (makes, 0600) the log of `name` for the server's output.
pub fn open_log(name: &str) -> Result<fs::File, ControlError> {
    check_name(name)?;
    RunDir::create()?.open_file(
        &format!("{name}.log"),
        OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND,
    )
}

/// The log of `name`, if there is one.
pub fn read_log(name: &str) -> Option<String> {
    let dir = RunDir::existing().ok()??;
    let f = dir.open_file(&format!("{name}.log"), OFlags::RDONLY).ok()?;
    io::read_to_string(f).ok()
}

/// Removes the log of `name` (missing is fine).
pub fn remove_log(name: &str) {
    if let Ok(Some(dir)) = RunDir::existing() {
        dir.remove(&format!("{name}.log"));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid device name {0:?}: use 1-127 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("device {0} already exists")]
    Exists(String),
    #[error("device {0} exists but its server is dead; clean it up with `rdm remove --force {0}`")]
    ExistsDead(String),
    #[error("device {0} is waiting for recovery: its server died; `rdm recover {0}` re-attaches it (`rdm remove --force {0}` deletes it)")]
    Waiting(String),
    #[error("device {0} is live (pid {1}): there is nothing to recover")]
    NotWaiting(String, u32),
    #[error("device {0} cannot be recovered: its server died and {1}; `rdm remove --force {0}` deletes it")]
    Unrecoverable(String, &'static str),
    #[error("a recovery of device {0} is already under way")]
    RecoveryBusy(String),
    #[error("no device named {0}")]
    NotFound(String),
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: refused: {why}")]
    Untrusted { path: PathBuf, why: &'static str },
    #[error("{path}: refused as the run directory: {why}")]
    UnsafeRunDir { path: PathBuf, why: String },
    #[error("device {name}: its server does not answer on {path}: {cause}")]
    NoAnswer {
        name: String,
        path: PathBuf,
        cause: io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |cause| ControlError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The longest device name, in bytes (dm's `DM_NAME_LEN` less the NUL).
pub const MAX_NAME: usize = 127;

/// A name is a file name under the run directory and a udev symlink: no
/// `/`, no `..`, no white space or control characters.
pub fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadName(name.to_string()))
    }
}

/// What the state file records about one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub name: String,
    pub pid: u32,
    /// The server's start time, see [`process_start`].
    pub pid_start: u64,
    /// `starting` until the device is live.
    pub state: String,
    pub dev_id: Option<u32>,
    pub bdev: Option<String>,
    pub mode: Option<DataMode>,
    pub queues: u16,
    pub depth: u16,
    pub block_size: u32,
    pub read_only: bool,
    pub size_bytes: u64,
    /// The normalized table.
    pub table: String,
    /// What the kernel does with I/O while no server is attached.
    #[serde(default)]
    pub recovery: Recovery,
    /// `--zero-copy` and `--dax` as given: a recovery serves the same way.
    #[serde(default)]
    pub zero_copy: Option<ZeroCopy>,
    #[serde(default)]
    pub dax: Option<DaxPolicy>,
    /// Each backing device as it was when the device was created: a
    /// recovery refuses files that are not the same or have shrunk.
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
    /// Requests are held (`rdm suspend`) until `rdm resume`.
    #[serde(default)]
    pub suspended: bool,
    /// The table `rdm reload` loaded, which `rdm resume` swaps in.
    #[serde(default)]
    pub inactive_table: Option<String>,
    /// `--nbd-timeout` in seconds, as given.
    #[serde(default)]
    pub nbd_timeout: Option<u64>,
    /// `--batch-io`: copy mode with UBLK_F_BATCH_IO.
    #[serde(default)]
    pub batch_io: bool,
    /// `--io-threads`: server threads per queue.
    #[serde(default)]
    pub io_threads: Option<u16>,
}

pub use crate::backend::backing::DeviceRecord;

/// Whether a recorded device's server is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Live,
    Starting,
    /// The server died and the device waits for `rdm recover`, or a new
    /// server is re-attaching it.
    Recovering,
    Dead,
}

/// Start time of a process (field 22 of /proc/PID/stat, in clock ticks
/// since boot), or None if it does not exist or is a zombie. Together with
/// the pid it names one process, even after the pid is reused.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` is still running.
pub fn pid_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

impl DeviceState {
    /// A device `name` starting in this process, serving `table`.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, table: &str) -> DeviceState {
        let me = std::process::id();
        DeviceState {
            name: name.into(),
            pid: me,
            pid_start: process_start(me).unwrap(),
            state: "starting".into(),
            dev_id: None,
            bdev: None,
            mode: None,
            queues: 1,
            depth: 1,
            block_size: 512,
            read_only: false,
            size_bytes: 512,
            table: table.into(),
            recovery: Recovery::Off,
            zero_copy: None,
            dax: None,
            devices: Vec::new(),
            suspended: false,
            inactive_table: None,
            nbd_timeout: None,
            batch_io: false,
            io_threads: None,
        }
    }

    pub fn liveness(&self) -> Liveness {
        match (pid_alive(self.pid, self.pid_start), self.state.as_str()) {
            (false, _) if recovery::waiting(self) => Liveness::Recovering,
            (false, _) => Liveness::Dead,
            (true, "live") => Liveness::Live,
            (true, "recovering") => Liveness::Recovering,
            (true, _) => Liveness::Starting,
        }
    }
}

/// Owns a device's state file and socket; removes both when dropped by
/// the process that claimed them. A guard that adopted a waiting device
/// puts its record back instead, until the device is live again
/// ([`StateGuard::settle`]): a failed recovery leaves it waiting.
#[derive(Debug)]
pub struct StateGuard {
    name: String,
    pid: u32,
    /// The directory checked when claiming; all later changes go there.
    dir: RunDir,
    restore: std::sync::Mutex<Option<DeviceState>>,
    /// The recovery lock (`NAME.lock`, flock'ed), held while adopted.
    _lock: Option<fs::File>,
}

impl StateGuard {
    /// Claims `name`: fails if a device of that name exists, live or dead.
    pub fn claim(state: &DeviceState) -> Result<StateGuard, ControlError> {
        check_name(&state.name)?;
        let dir = RunDir::create()?;
        let file = format!("{}.json", state.name);
        let created = dir.open_file(&file, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL);
        match created {
            Ok(_) => {}
            Err(ControlError::Io { cause, .. }) if cause.kind() == io::ErrorKind::AlreadyExists => {
                return Err(match read_state(&state.name).map(|s| s.liveness()) {
                    Ok(Liveness::Dead) => ControlError::ExistsDead(state.name.clone()),
                    Ok(Liveness::Recovering) => ControlError::Waiting(state.name.clone()),
                    _ => ControlError::Exists(state.name.clone()),
                });
            }
            Err(e) => return Err(e),
        }
        let guard = StateGuard {
            name: state.name.clone(),
            pid: std::process::id(),
            dir,
            restore: std::sync::Mutex::new(None),
            _lock: None,
        };
        guard.update(state)?;
        Ok(guard)
    }

    /// Takes over the record of a device waiting for recovery: only one
    /// process at a time (an flock on `NAME.lock`), only if its server is
    /// gone and the kernel still has the device. Returns the record as it
    /// was.
    pub fn adopt(name: &str) -> Result<(StateGuard, DeviceState), ControlError> {
        check_name(name)?;
        let dir = RunDir::create()?;
        let lock = dir.open_file(&format!("{name}.lock"), OFlags::WRONLY | OFlags::CREATE)?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(ControlError::RecoveryBusy(name.to_string()));
        }
        let old = read_state(name)?;
        if pid_alive(old.pid, old.pid_start) {
            return Err(match old.state.as_str() {
                "recovering" => ControlError::RecoveryBusy(name.to_string()),
                _ => ControlError::NotWaiting(name.to_string(), old.pid),
            });
        }
        if old.recovery == Recovery::Off {
            return Err(ControlError::Unrecoverable(
                name.to_string(),
                "it was created with --recovery off",
            ));
        }
        if !recovery::waiting(&old) {
            return Err(ControlError::Unrecoverable(
                name.to_string(),
                "the kernel no longer has its device",
            ));
        }
        let guard = StateGuard {
            name: name.to_string(),
            pid: std::process::id(),
            dir,
            restore: std::sync::Mutex::new(Some(old.clone())),
            _lock: Some(lock),
        };
        Ok((guard, old))
    }

    /// The adopted device is live again: from now on the record goes with
    /// the server, as for a created one.
    pub fn settle(&self) {
        *self.restore.lock().expect("not poisoned") = None;
    }

    /// Rewrites the state file atomically.
    pub fn update(&self, state: &DeviceState) -> Result<(), ControlError> {
        let file = format!("{}.json", self.name);
        let tmp = format!("{file}.tmp");
        self.dir.remove(&tmp);
        // O_EXCL: a fresh file, never one someone planted.
        let mut f = self
            .dir
            .open_file(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
        let text = serde_json::to_string_pretty(state).expect("plain data serializes");
        let tmp_path = self.dir.join(&tmp);
        f.write_all(text.as_bytes()).map_err(io_err(&tmp_path))?;
        // Write, sync, rename, sync the directory: after a crash the record
        // is the old one or the new one, whole.
        f.sync_all().map_err(io_err(&tmp_path))?;
        self.dir.rename(&tmp, &file)?;
        self.dir.sync()
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return;
        }
        match self.restore.lock().map(|mut r| r.take()) {
            Ok(Some(old)) => {
                self.dir.remove(&format!("{}.sock", self.name));
                if let Err(e) = self.update(&old) {
                    tracing::error!("cannot restore the record of {}: {e}", self.name);
                }
            }
            _ => remove_in(&self.dir, &self.name),
        }
    }
}

/// Removes a device's state file and socket (missing ones are fine).
pub fn remove_state(name: &str) {
    if let Ok(Some(dir)) = RunDir::existing() {
        remove_in(&dir, name);
    }
}

fn remove_in(dir: &RunDir, name: &str) {
    for ext in ["sock", "json", "lock"] {
        dir.remove(&format!("{name}.{ext}"));
    }
}

pub fn read_state(name: &str) -> Result<DeviceState, ControlError> {
    check_name(name)?;
    let path = state_path(name);
    let Some(dir) = RunDir::existing()? else {
        return Err(ControlError::NotFound(name.to_string()));
    };
    let untrusted = |why| ControlError::Untrusted {
        path: path.clone(),
        why,
    };
    // O_NONBLOCK: a FIFO planted as the record cannot hang us.
    let f = match dir.open_file(&format!("{name}.json"), OFlags::RDONLY | OFlags::NONBLOCK) {
        Err(ControlError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => {
            return Err(ControlError::NotFound(name.to_string()))
        }
        Err(ControlError::Untrusted { .. }) => {
            return Err(untrusted("not a regular file (a symlink?)"))
        }
        r => r?,
    };
    // Checked on the open file: what is checked is what is read.
    use std::os::unix::fs::MetadataExt;
    let meta = f.metadata().map_err(io_err(&path))?;
    if !meta.file_type().is_file() {
        return Err(untrusted("not a regular file"));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(untrusted("owned by another user"));
    }
    if meta.len() > 1 << 20 {
        return Err(untrusted("larger than any record"));
    }
    let mut bytes = Vec::new();
    f.take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    parse_state(&bytes).map_err(io_err(&path))
}

/// A state file's contents as [`read_state`] reads them (UTF-8 JSON).
pub fn parse_state(bytes: &[u8]) -> io::Result<DeviceState> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    serde_json::from_str(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Every recorded device, sorted by name.
pub fn list() -> Result<Vec<DeviceState>, ControlError> {
    let Some(dir) = RunDir::existing()? else {
        return Ok(Vec::new());
    };
    let entries = fs::read_dir(dir.path()).map_err(io_err(dir.path()))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(name) = p.file_stem().and_then(|s| s.to_str()) {
                if let Ok(s) = read_state(name) {
                    out.push(s);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(pid_alive(me, start));
        assert!(!pid_alive(me, start + 1), "a reused pid is another process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let cstart = process_start(pid);
        child.wait().unwrap();
        assert!(cstart.is_none() || !pid_alive(pid, cstart.unwrap()));
    }

    #[test]
    fn names() {
        for ok in ["a", "data-1", "x.y_z", &"n".repeat(127)] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../x",
            "a b",
            "a\nb",
            "tab\t",
            "bell\u{7}",
            "é",
            &"n".repeat(128),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claim_is_exclusive_and_dropping_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: tests in this module are the only users of RDM_RUN_DIR.
        unsafe { std::env::set_var("RDM_RUN_DIR", dir.path()) };
        let st = DeviceState::for_tests("t", "0 1 zero\n");
        let g = StateGuard::claim(&st).unwrap();
        assert!(matches!(
            StateGuard::claim(&st),
            Err(ControlError::Exists(_))
        ));
        assert_eq!(list().unwrap().len(), 1);
        assert_eq!(read_state("t").unwrap().liveness(), Liveness::Starting);
        drop(g);
        assert!(matches!(read_state("t"), Err(ControlError::NotFound(_))));
        // A record left by a dead server blocks the name, saying so.
        let mut dead = st.clone();
        dead.pid_start += 1;
        let g = StateGuard::claim(&dead).unwrap();
        std::mem::forget(g);
        assert!(matches!(
            StateGuard::claim(&st),
            Err(ControlError::ExistsDead(_))
        ));
        remove_state("t");
        assert!(list().unwrap().is_empty());
    }
}

//! The run directory against other users, on a host without ublk (where
//! `rdm create` fails in the server, after the run directory and the log
//! are made): it is private from the first create whatever the umask, one
//! that is someone else's or that others can write is refused, nothing is
//! written through a link planted in it, and `rdm remove --force` stops
//! where its kill of the server is refused.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A uid with no account, for files and processes that are not ours.
const STRANGER: u32 = 4242;

fn rdm_in(run: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rdm"))
        .args(args)
        .env("RDM_RUN_DIR", run)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `rdm ARGS` under umask 0, as a careless caller would run it.
fn rdm_umask0(run: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "umask 0; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_rdm"))
        .args(args)
        .env("RDM_RUN_DIR", run);
    c
}

#[test]
fn what_the_first_create_makes_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    // The directories it makes on the way are the caller's alone too.
    let run = dir.path().join("runtime/rdm");
    let o = rdm_umask0(&run, &["create", "t", "--table", "0 16 zero"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "there is no ublk on this host");
    assert_eq!(mode(&run), 0o700, "{}", stderr(&o));
    assert_eq!(mode(run.parent().unwrap()), 0o700);
    // The log and the record as they are made: caught while the server
    // waits for the claims lock (an flock on the run directory).
    let lock = fs::File::open(&run).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut create = rdm_umask0(&run, &["create", "u", "--table", "0 16 zero"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !run.join("u.json").exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let modes = [
        mode(&run),
        mode(&run.join("u.log")),
        mode(&run.join("u.json")),
    ];
    drop(lock);
    create.wait().unwrap();
    assert_eq!(modes, [0o700, 0o600, 0o600], "the run dir, u.log, u.json");
}

#[test]
fn nothing_is_written_through_a_log_planted_as_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, run.join("t.log")).unwrap();
    let o = rdm_in(&run, &["create", "t", "--table", "0 16 zero"]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("t.log") && stderr(&o).contains("symlink"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_dir_of_someone_else_or_that_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o1777)).unwrap();
    let o = rdm_in(&run, &["create", "t", "--table", "0 16 zero"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&run.display().to_string()) && e.contains("others can write"),
        "{e}"
    );
    assert_eq!(fs::read_dir(&run).unwrap().count(), 0, "written in: {e}");
    let o = rdm_in(&run, &["ls"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    if !is_root() {
        return; // chown needs root
    }
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&run, Some(STRANGER), None).unwrap();
    let o = rdm_in(&run, &["create", "t", "--table", "0 16 zero"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!("owned by uid {STRANGER}")), "{e}");
    assert_eq!(fs::read_dir(&run).unwrap().count(), 0, "written in: {e}");
}

/// A server pid the caller may not kill: `remove --force` says so and
/// deletes nothing (the record stays).
#[test]
fn remove_force_stops_when_its_kill_is_refused() {
    if !is_root() {
        return; // needs a process of another user, and to run as one
    }
    let dir = tempfile::tempdir().unwrap();
    // The stranger reaches the run directory, and only that.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(STRANGER), Some(STRANGER)).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    // A root process the stranger's record names as its server.
    let mut server = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = server.id();
    let start = rdm_ublk_server::control::process_start(pid).unwrap();
    let record = serde_json::json!({
        "name": "v", "pid": pid, "pid_start": start, "state": "live",
        "dev_id": null, "bdev": null, "mode": null, "queues": 1, "depth": 1,
        "block_size": 512, "read_only": false, "size_bytes": 8192,
        "table": "0 16 zero\n",
    });
    let state = run.join("v.json");
    fs::write(&state, record.to_string()).unwrap();
    std::os::unix::fs::chown(&state, Some(STRANGER), Some(STRANGER)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rdm"))
        .args(["remove", "--force", "v"])
        .env("RDM_RUN_DIR", &run)
        .uid(STRANGER)
        .gid(STRANGER)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("pid {pid}")) && e.contains("not permitted"),
        "{e}"
    );
    assert!(state.exists(), "the record was deleted: {e}");
}

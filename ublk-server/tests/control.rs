//! The control plane against hostile input: oversized, slow and malformed
//! requests get an error answer and never stall the server; state files
//! that are symlinks or someone else's are refused.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rdm_ublk_server::control::{self, ControlError, MAX_REQUEST};

/// Both tests point RDM_RUN_DIR somewhere: one at a time.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ask(name: &str, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(control::socket_path(name)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn hostile_requests_get_an_error_and_the_server_goes_on() {
    let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the tests that touch the environment hold ENV.
    unsafe { std::env::set_var("RDM_RUN_DIR", dir.path()) };
    control::serve_socket("h", |req| serde_json::json!({ "echo": req })).unwrap();
    assert_eq!(ask("h", b"status\n")["echo"], "status");
    // Too long, with or without a newline in the end.
    let long = vec![b'x'; MAX_REQUEST + 10];
    let v = ask("h", &long);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    // Not UTF-8.
    let v = ask("h", b"\xff\xfe\n");
    assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    // A peer that connects and says nothing holds the server for at most
    // the read timeout; the next request is answered.
    let idle = UnixStream::connect(control::socket_path("h")).unwrap();
    let t = Instant::now();
    assert_eq!(ask("h", b"after\n")["echo"], "after");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    drop(idle);
}

#[test]
fn untrusted_state_files_are_refused() {
    let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let read = |name: &str| {
        // SAFETY: the tests that touch the environment hold ENV.
        unsafe { std::env::set_var("RDM_RUN_DIR", &run) };
        control::read_state(name)
    };
    std::fs::write(dir.path().join("elsewhere.json"), "{}").unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere.json"), run.join("link.json")).unwrap();
    assert!(matches!(read("link"), Err(ControlError::Untrusted { .. })));
    std::fs::write(run.join("theirs.json"), "{}").unwrap();
    std::os::unix::fs::chown(run.join("theirs.json"), Some(4242), None).unwrap();
    assert!(matches!(
        read("theirs"),
        Err(ControlError::Untrusted { .. })
    ));
    assert!(matches!(read("a..b/c"), Err(ControlError::BadName(_))));
    assert!(matches!(read("nope"), Err(ControlError::NotFound(_))));
}

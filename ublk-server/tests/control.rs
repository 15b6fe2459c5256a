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

/// A peer that trickles its request (a byte every 0.5 s) gets one deadline
/// for the whole of it, and a request on another connection meanwhile is
/// answered at once.
#[test]
fn a_slow_peer_has_one_deadline_and_delays_no_other() {
    let _env = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the tests that touch the environment hold ENV.
    unsafe { std::env::set_var("RDM_RUN_DIR", dir.path()) };
    control::serve_socket("slow", |req| serde_json::json!({ "echo": req })).unwrap();
    let slow = UnixStream::connect(control::socket_path("slow")).unwrap();
    let mut trickle = slow.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..12 {
            if trickle.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let t = Instant::now();
    let answer = std::thread::spawn(move || {
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(&slow).read_line(&mut line);
        (t.elapsed(), line)
    });
    std::thread::sleep(Duration::from_millis(700));
    let other = Instant::now();
    assert_eq!(ask("slow", b"status\n")["echo"], "status");
    let waited = other.elapsed();
    let (took, line) = answer.join().unwrap();
    writer.join().unwrap();
    assert!(
        waited < Duration::from_millis(1500),
        "another peer waited {waited:?}"
    );
    assert!(line.contains("within 2 s"), "{line:?}");
    assert!(
        took < Duration::from_secs(4),
        "the slow peer held on for {took:?}"
    );
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

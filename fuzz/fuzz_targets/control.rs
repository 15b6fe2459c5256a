//! The control protocol: arbitrary bytes sent to a real control socket
//! (`serve_socket` → `read_request`, peer check, framing, reply) of a
//! server with no device behind it. Every connection gets exactly one JSON
//! line back; bytes that are not a request (too long, not UTF-8) get an
//! error answer, as do unknown requests. The framing is also checked on its
//! own (`read_request_from`): the socket hands the handler what it returns.

#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use rdm_ublk_server::control::{self, MAX_REQUEST};

/// The request line the handler saw last.
static SEEN: Mutex<Option<String>> = Mutex::new(None);

const STATE: &str = r#"{"name":"fuzz","pid":1,"pid_start":1,"state":"live","dev_id":0,
"bdev":"/dev/ublkb0","mode":"copy","queues":1,"depth":64,"block_size":512,
"read_only":false,"size_bytes":4096,"table":"0 8 zero\n","recovery":"reissue",
"zero_copy":"auto","dax":"off","devices":[]}"#;

/// The daemon's dispatch (`verbs::Device::answer`) without a device: the
/// real request parser, then `status` answers the record and its table's
/// status lines, a reload parses its table, the other verbs are
/// acknowledged (nothing to act on), anything unparsable is an error.
fn answer(req: &str) -> serde_json::Value {
    *SEEN.lock().unwrap() = Some(req.to_string());
    match control::Request::parse(req) {
        Ok(control::Request::Status) => {
            let st = control::parse_state(STATE.as_bytes()).expect("the sample record reads");
            let table = rdm_targets::Table::parse(&st.table).expect("the sample table parses");
            let mut v = serde_json::to_value(&st).expect("plain data");
            v["dm_status"] = table.status_lines(&[]).into();
            v
        }
        Ok(control::Request::Reload { table }) => match rdm_targets::Table::parse(&table) {
            Ok(_) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        Ok(_) => serde_json::json!({ "ok": true }),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

fn socket() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        // Unread input makes a write fail with EPIPE, not kill the fuzzer.
        // SAFETY: setting a signal disposition, before any other thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("rdm-fuzz-control.{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a run directory");
        // SAFETY: set once, before the server thread starts.
        unsafe { std::env::set_var("RDM_RUN_DIR", &dir) };
        control::serve_socket("fuzz", answer).expect("the control socket serves");
        control::socket_path("fuzz")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = socket();
    let framed = control::read_request_from(data);
    if let Ok(line) = &framed {
        assert!(line.len() <= MAX_REQUEST);
        assert!(!line.contains('\n'));
        assert_eq!(line.trim(), line);
    }

    *SEEN.lock().unwrap() = None;
    let mut s = UnixStream::connect(path).expect("the server listens");
    // The server may answer and hang up before reading everything.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("an answer");
    let line = reply
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("one line: {reply:?}"));
    assert!(!line.contains('\n'), "one line: {reply:?}");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON answer");
    let seen = SEEN.lock().unwrap().take();
    match framed {
        Ok(req) => {
            assert_eq!(
                seen.as_deref(),
                Some(req.as_str()),
                "the handler got the framed line"
            );
            match control::Request::parse(&req) {
                Ok(control::Request::Status) => assert_eq!(v["name"], "fuzz"),
                Ok(control::Request::Reload { .. }) => {}
                Ok(r) => {
                    assert_eq!(v["ok"], true);
                    // What parses prints back to a line that parses the same.
                    assert_eq!(control::Request::parse(&r.line()), Ok(r));
                }
                Err(_) => assert!(v["error"].is_string(), "an error for {req:?}: {v}"),
            }
        }
        Err(why) => {
            assert_eq!(seen, None, "refused bytes never reach the handler");
            assert_eq!(v["error"], why.as_str());
        }
    }
});

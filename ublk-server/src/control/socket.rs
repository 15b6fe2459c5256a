//! The control socket: one request line (a bare verb or a JSON object)
//! and one JSON answer. [`request`] is the client side (the CLI); the
//! server side reads each connection in its own thread under one deadline
//! for the whole request, so that a slow peer delays no other, and hands
//! the line to the device's verbs.

use crate::control::state::{check_name, io_err, socket_path, ControlError, RunDir};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a control connection asks, as one line: a bare word (`status`,
/// `remove`, `clear`, `resume`) or a JSON object with `op` and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    Remove,
    /// Load an inactive table beside the live one.
    Reload {
        table: String,
    },
    /// Drop the inactive table.
    Clear,
    Suspend {
        #[serde(default)]
        nolockfs: bool,
        #[serde(default)]
        noflush: bool,
    },
    /// Swap in the inactive table, if any, and let I/O run.
    Resume,
    /// `dmsetup message`: text for the target holding `sector`.
    Message {
        sector: u64,
        argv: Vec<String>,
    },
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim();
        let r = if line.starts_with('{') {
            serde_json::from_str(line)
        } else {
            serde_json::from_value(serde_json::json!({ "op": line }))
        };
        r.map_err(|e| format!("bad request: {e}"))
    }

    /// The request as the one line sent.
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Remove => "remove".into(),
            _ => serde_json::to_string(self).expect("plain data"),
        }
    }

    /// How long an answer may take: a suspend waits for the file system
    /// to freeze and the requests in flight to finish.
    fn timeout(&self) -> Duration {
        match self {
            Request::Suspend { .. } | Request::Resume | Request::Reload { .. } => {
                Duration::from_secs(600)
            }
            Request::Message { .. } => crate::services::jobs::JOB_TIMEOUT + Duration::from_secs(5),
            _ => Duration::from_secs(30),
        }
    }
}

/// Sends one request to a device's server and returns its one-line JSON
/// answer.
pub fn request(name: &str, req: &Request) -> Result<serde_json::Value, ControlError> {
    let line = req.line();
    let path = socket_path(name);
    let no_answer = |cause| ControlError::NoAnswer {
        name: name.to_string(),
        path: path.clone(),
        cause,
    };
    let mut s = UnixStream::connect(&path).map_err(no_answer)?;
    s.set_read_timeout(Some(req.timeout())).map_err(no_answer)?;
    writeln!(s, "{line}").map_err(no_answer)?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(no_answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| no_answer(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// The longest request line the control socket reads (a reload carries
/// a whole table).
pub const MAX_REQUEST: usize = 1 << 20;
/// How long a peer may take to send its whole request, and to take the
/// answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; one more is refused at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves the control socket: each connection sends one line, gets one
/// JSON line back. Runs until the process exits. Only root and the
/// server's own user are answered (SO_PEERCRED, checked per connection);
/// a request longer than [`MAX_REQUEST`], not UTF-8, or not all sent within
/// two seconds gets an error answer and a log line, never more of the
/// server's time. Each connection is read in a thread of its own, so a
/// slow peer delays no other; the handler answers one request at a time.
pub fn serve_socket(
    name: &str,
    handler: impl Fn(&str) -> serde_json::Value + Send + 'static,
) -> Result<(), ControlError> {
    check_name(name)?;
    let dir = RunDir::create()?;
    let file = format!("{name}.sock");
    let path = dir.join(&file);
    dir.remove(&file);
    // bind takes its mode from the umask only: 0600 from the first
    // syscall. (For an instant other threads' new files are private too.)
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(&path);
    rustix::process::umask(old);
    let listener = bound.map_err(io_err(&path))?;
    let handler = Arc::new(Mutex::new(handler));
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("rdm-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let Some(slot) = Slot::take(&open) else {
                    tracing::warn!("control request refused: {MAX_CONNECTIONS} connections open");
                    let why = format!("busy: {MAX_CONNECTIONS} control connections are open");
                    reply(&conn, &serde_json::json!({ "error": why }));
                    continue;
                };
                let handler = handler.clone();
                let served = std::thread::Builder::new()
                    .name("rdm-control-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        let answer = match read_request(&conn) {
                            Ok(line) => (handler.lock().unwrap_or_else(|p| p.into_inner()))(&line),
                            Err(why) => {
                                tracing::warn!("control request refused: {why}");
                                serde_json::json!({ "error": why })
                            }
                        };
                        reply(&conn, &answer);
                    });
                if let Err(e) = served {
                    tracing::warn!("control request refused: cannot start a thread: {e}");
                }
            }
        })
        .map_err(io_err(&path))?;
    Ok(())
}

fn reply(conn: &UnixStream, answer: &serde_json::Value) {
    let _ = conn.set_write_timeout(Some(REQUEST_DEADLINE));
    let _ = writeln!(&*conn, "{answer}");
}

/// One of the [`MAX_CONNECTIONS`] a control socket serves at once, given
/// back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request line from a permitted peer, or why not.
pub fn read_request(conn: &UnixStream) -> Result<String, String> {
    let cred = rustix::net::sockopt::socket_peercred(conn)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = rustix::process::geteuid();
    if !cred.uid.is_root() && cred.uid != me {
        return Err(format!(
            "uid {} may not control this device",
            cred.uid.as_raw()
        ));
    }
    read_request_from(Deadline {
        conn,
        until: Instant::now() + REQUEST_DEADLINE,
    })
}

/// A connection's reads against one deadline for the whole request,
/// however the peer spreads its bytes.
struct Deadline<'a> {
    conn: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let late = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the request was not all sent within {} s",
                    REQUEST_DEADLINE.as_secs()
                ),
            )
        };
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        self.conn.set_read_timeout(Some(left))?;
        match (&*self.conn).read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(late())
            }
            r => r,
        }
    }
}

/// The request line in what a peer sends: up to the first newline, at most
/// [`MAX_REQUEST`] bytes, UTF-8, trimmed.
pub fn read_request_from(conn: impl Read) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut r = BufReader::new(conn).take(MAX_REQUEST as u64 + 1);
    r.read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading the request: {e}"))?;
    if buf.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let line = String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_string())?;
    Ok(line.trim().to_string())
}

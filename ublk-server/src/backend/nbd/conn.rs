//! An NBD export as a table device: one connection per queue, driven from
//! that queue's io_uring (send/recv operations; nothing blocks, no thread
//! per request).
//!
//! A request registers itself under a handle, sends its header (and data)
//! while holding the connection's send turn, and waits for its reply.
//! Replies come in any order: whichever waiting request holds the read
//! turn reads the next reply header and moves its data straight into the
//! buffer of the request it answers, then passes the turn on. Every
//! socket operation carries a linked timeout: a server that stops
//! answering breaks the connection once a request has waited longer than
//! the export's timeout. A broken connection is reconnected with backoff,
//! and the requests it carried are sent again on the new one; each fails
//! with EIO only once its own timeout has passed.
//!
//! Durability across reconnects: a write acknowledged on a connection that
//! died before a flush covered it may be gone (a server that crashed loses
//! its cache), so the next FLUSH of the export fails with EIO instead of
//! vouching for it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::proto::{self, cmd, flags, ExportInfo};
use super::socket::{
    connect_ring, disconnect, flush_blocking, send_mem, sleep, xfer, Addr, Broken, Data,
};
use super::status::{Counters, ExportCounters};
use super::uri::Uri;
use crate::backend::buffer::Aux;
use crate::backend::ring::Ring;

mod reply;

const EIO: i32 = -libc::EIO;
/// Reconnect backoff: first retry, and the longest pause between tries
/// (less where the export's timeout is short).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One NBD command.
#[derive(Debug, Clone, Copy)]
pub struct Cmd {
    pub kind: u16,
    pub flags: u16,
    pub offset: u64,
    pub len: u32,
    /// The data written (WRITE) or the place for the data read (READ).
    pub data: Option<Data>,
}

/// An export and its connections, one per queue.
pub struct Export {
    pub uri: Uri,
    addr: Addr,
    /// What the handshake said when the table was opened; a reconnect must
    /// find at least this.
    pub info: ExportInfo,
    pub timeout: Duration,
    writable: bool,
    conns: Vec<Conn>,
    /// Writes acknowledged, numbered across the export's connections.
    write_seq: AtomicU64,
    /// The highest write number a completed flush covers.
    flushed_seq: AtomicU64,
    /// A connection died with writes no flush covered.
    lost: AtomicBool,
    pub counters: ExportCounters,
    aux: Aux,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("uri", &self.uri.to_string())
            .finish()
    }
}

/// An export's connection on one queue.
struct Conn {
    st: Mutex<State>,
}

struct State {
    fd: Option<OwnedFd>,
    /// Bumped by every (re)connect: operations of an older connection
    /// never touch a newer one.
    epoch: u64,
    /// Broken sockets, shut down but kept open until the next connect has
    /// awaited once, so that an operation already queued on the ring can
    /// never reach a new socket that reused the number.
    dead: Vec<OwnedFd>,
    structured: bool,
    pending: Slab<Pending>,
    reading: bool,
    sending: bool,
    send_queue: VecDeque<Waker>,
    connecting: bool,
    connect_queue: Vec<Waker>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The highest export write number acknowledged on this connection.
    acked_seq: u64,
}

struct Pending {
    cmd: Cmd,
    deadline: Instant,
    /// A write's number once acknowledged; for a flush, the write number
    /// it covers (taken when it is sent).
    seq: u64,
    /// The first error a structured reply reported.
    error: i32,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done(i32),
    /// The connection broke: send it again (within the deadline).
    Retry,
}

// SAFETY: `Data` holds addresses of the request's buffer; the state is
// only used on the thread of the queue that owns the connection (each
// queue its own `Conn`), and the Mutex only satisfies the type system.
unsafe impl Send for State {}

impl Export {
    /// An export whose queues' connections are `fds` (from
    /// [`connect_blocking`], all agreeing on `info`).
    pub fn new(
        uri: Uri,
        addr: Addr,
        info: ExportInfo,
        fds: Vec<OwnedFd>,
        timeout: Duration,
        writable: bool,
        aux: Aux,
    ) -> Export {
        let conns = fds
            .into_iter()
            .map(|fd| Conn {
                st: Mutex::new(State {
                    fd: Some(fd),
                    epoch: 1,
                    dead: Vec::new(),
                    structured: info.structured,
                    pending: Slab::new(),
                    reading: false,
                    sending: false,
                    send_queue: VecDeque::new(),
                    connecting: false,
                    connect_queue: Vec::new(),
                    retry_at: None,
                    backoff: BACKOFF_MIN,
                    acked_seq: 0,
                }),
            })
            .collect();
        Export {
            uri,
            addr,
            info,
            timeout,
            writable,
            conns,
            write_seq: AtomicU64::new(0),
            flushed_seq: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            counters: ExportCounters::default(),
            aux,
        }
    }

    /// The longest pause between tries: short enough that a request sees
    /// four tries within its timeout, so an export that comes back is
    /// found before the requests waiting for it give up.
    fn backoff_max(&self) -> Duration {
        (self.timeout / 4).clamp(BACKOFF_MIN, BACKOFF_MAX)
    }

    fn conn(&self, slot: usize) -> &Conn {
        &self.conns[slot]
    }

    /// Serves one command on this ring's connection; 0 or -errno.
    pub async fn call<R: Ring>(&self, ring: &R, c: Cmd) -> i32 {
        let conn = self.conn(ring.slot());
        let deadline = Instant::now() + self.timeout;
        loop {
            if c.kind == cmd::FLUSH && self.lost.swap(false, Relaxed) {
                Counters::add(&self.counters.lost_flushes);
                tracing::warn!(export = %self.uri, "FLUSH failed: writes acknowledged on a connection that died were never flushed");
                return EIO;
            }
            let Some((fd, epoch)) = self.connected(ring, conn, deadline).await else {
                Counters::add(&self.counters.failed);
                return EIO;
            };
            let key = {
                let mut st = lock(conn);
                st.pending.insert(Pending {
                    cmd: c,
                    deadline,
                    seq: 0,
                    error: 0,
                    outcome: None,
                    waker: None,
                })
            };
            if let Err(b) = self.send(ring, conn, fd, epoch, key).await {
                self.broken(conn, epoch, b);
            }
            match self.reply(ring, conn, fd, epoch, key).await {
                Outcome::Done(r) => return r,
                Outcome::Retry if Instant::now() < deadline => continue,
                Outcome::Retry => {
                    Counters::add(&self.counters.failed);
                    return EIO;
                }
            }
        }
    }

    /// The connection's socket, (re)connecting if need be; `None` once
    /// `deadline` has passed without one.
    async fn connected<R: Ring>(
        &self,
        ring: &R,
        conn: &Conn,
        deadline: Instant,
    ) -> Option<(RawFd, u64)> {
        enum Step {
            Wait,
            Sleep(Duration),
            Connect,
        }
        loop {
            let now = Instant::now();
            let step = {
                let mut st = lock(conn);
                if let Some(fd) = &st.fd {
                    return Some((fd.as_raw_fd(), st.epoch));
                }
                if now >= deadline {
                    return None;
                }
                if st.connecting {
                    Step::Wait
                } else if let Some(t) = st.retry_at.filter(|t| *t > now) {
                    Step::Sleep(t.min(deadline) - now)
                } else {
                    st.connecting = true;
                    Step::Connect
                }
            };
            match step {
                Step::Wait => {
                    std::future::poll_fn(|cx| {
                        let mut st = lock(conn);
                        if !st.connecting {
                            return Poll::Ready(());
                        }
                        st.connect_queue.push(cx.waker().clone());
                        Poll::Pending
                    })
                    .await;
                }
                Step::Sleep(d) => sleep(ring, d).await,
                Step::Connect => {
                    let until = Instant::now() + self.timeout.min(BACKOFF_MAX * 2);
                    let r = self.reconnect(ring, conn, until).await;
                    let mut st = lock(conn);
                    st.connecting = false;
                    match r {
                        Ok((fd, info)) => {
                            st.fd = Some(fd);
                            st.epoch += 1;
                            st.structured = info.structured;
                            st.retry_at = None;
                            st.backoff = BACKOFF_MIN;
                            st.acked_seq = 0;
                            Counters::add(&self.counters.reconnects);
                            tracing::info!(export = %self.uri, slot = ring.slot(), "reconnected");
                        }
                        Err(e) => {
                            st.retry_at = Some(Instant::now() + st.backoff);
                            st.backoff = (st.backoff * 2).min(self.backoff_max());
                            tracing::warn!(export = %self.uri, slot = ring.slot(), "reconnecting failed: {e}");
                        }
                    }
                    for w in st.connect_queue.drain(..) {
                        w.wake();
                    }
                }
            }
        }
    }

    /// Connects and negotiates on the ring, and checks that the export is
    /// still what the table was checked against.
    async fn reconnect<R: Ring>(
        &self,
        ring: &R,
        conn: &Conn,
        until: Instant,
    ) -> io::Result<(OwnedFd, ExportInfo)> {
        let (fd, info) = connect_ring(ring, &self.uri, &self.addr, until).await?;
        // The connect awaited: whatever an old socket had queued on the
        // ring has been submitted; now it may close.
        lock(conn).dead.clear();
        let want = self.info;
        let needed = [
            flags::SEND_FLUSH,
            flags::SEND_FUA,
            flags::SEND_TRIM,
            flags::SEND_WRITE_ZEROES,
            flags::CAN_MULTI_CONN,
        ];
        let lost: Vec<u16> = needed
            .into_iter()
            .filter(|f| want.has(*f) && !info.has(*f))
            .collect();
        if info.size < want.size {
            return Err(io::Error::other(format!(
                "the export shrank from {} to {} bytes",
                want.size, info.size
            )));
        }
        if self.writable && info.read_only() {
            return Err(io::Error::other("the export is read-only now"));
        }
        if !lost.is_empty() || info.min_block > want.min_block {
            return Err(io::Error::other(format!(
                "the export no longer offers what it did (flags {:#x}, was {:#x}; minimum block {}, was {})",
                info.flags, want.flags, info.min_block, want.min_block
            )));
        }
        Ok((fd, info))
    }

    /// Marks connection `epoch` broken: the socket is shut down, every
    /// request on it is told to retry, and unflushed writes become lost.
    fn broken(&self, conn: &Conn, epoch: u64, why: Broken) {
        let mut st = lock(conn);
        if st.epoch != epoch {
            return;
        }
        let Some(fd) = st.fd.take() else { return };
        let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Both);
        st.dead.push(fd);
        st.epoch += 1;
        if matches!(why, Broken::Timeout) {
            Counters::add(&self.counters.timeouts);
        }
        Counters::add(&self.counters.disconnects);
        if st.acked_seq > self.flushed_seq.load(Relaxed) && self.info.has(flags::SEND_FLUSH) {
            self.lost.store(true, Relaxed);
        }
        st.reading = false;
        st.sending = false;
        for (_, p) in st.pending.iter_mut() {
            if p.outcome.is_none() {
                p.outcome = Some(Outcome::Retry);
            }
            if let Some(w) = p.waker.take() {
                w.wake();
            }
        }
        for w in st.send_queue.drain(..) {
            w.wake();
        }
        tracing::warn!(export = %self.uri, "connection lost: {why}");
    }

    /// Sends request `key`'s header and data, in its turn.
    async fn send<R: Ring>(
        &self,
        ring: &R,
        conn: &Conn,
        fd: RawFd,
        epoch: u64,
        key: usize,
    ) -> Result<(), Broken> {
        // Wait for the send turn (or for the connection to break).
        let turn = std::future::poll_fn(|cx| {
            let mut st = lock(conn);
            if st.epoch != epoch {
                return Poll::Ready(false);
            }
            if !st.sending {
                st.sending = true;
                return Poll::Ready(true);
            }
            st.send_queue.push_back(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !turn {
            return Ok(()); // the reply wait sees the retry
        }
        let (c, deadline) = {
            let mut st = lock(conn);
            let flushed = self.write_seq.load(Relaxed);
            let p = &mut st.pending[key];
            if p.cmd.kind == cmd::FLUSH {
                p.seq = flushed;
            }
            (p.cmd, p.deadline)
        };
        let hdr = proto::request(c.flags, c.kind, key as u64, c.offset, c.len);
        let more = if c.kind == cmd::WRITE {
            libc::MSG_MORE
        } else {
            0
        };
        let mut r = send_mem(ring, fd, &hdr, more, deadline).await;
        if r.is_ok() && c.kind == cmd::WRITE {
            let data = c.data.expect("a write has data");
            r = xfer(ring, fd, true, data, u64::from(c.len), deadline).await;
        }
        let mut st = lock(conn);
        if st.epoch == epoch {
            st.sending = false;
            // Every waiter tries again (a waiter re-polled meanwhile may
            // be queued twice: waking only the first could lose one).
            for w in st.send_queue.drain(..) {
                w.wake();
            }
        }
        r
    }

    /// NBD_CMD_FLUSH from the calling thread, on each connection, while no
    /// request is in flight (a suspended, drained device or a stopped one:
    /// no queue reads or writes the sockets meanwhile).
    pub fn flush_idle(&self) -> io::Result<()> {
        if !self.info.has(flags::SEND_FLUSH) {
            return Ok(());
        }
        if self.lost.swap(false, Relaxed) {
            Counters::add(&self.counters.lost_flushes);
            return Err(io::Error::other(
                "writes acknowledged on a connection that died were never flushed",
            ));
        }
        let covered = self.write_seq.load(Relaxed);
        for c in &self.conns {
            let st = lock(c);
            let Some(fd) = &st.fd else { continue };
            if !st.pending.is_empty() || st.sending || st.reading {
                return Err(io::Error::other("the export has requests in flight"));
            }
            flush_blocking(fd, st.structured, self.timeout)?;
        }
        self.flushed_seq.fetch_max(covered, Relaxed);
        Ok(())
    }

    /// The state of each queue's connection, for status.
    pub fn states(&self) -> Vec<&'static str> {
        self.conns
            .iter()
            .map(|c| {
                let st = lock(c);
                match (&st.fd, st.connecting) {
                    (Some(_), _) => "up",
                    (None, true) => "connecting",
                    (None, false) => "down",
                }
            })
            .collect()
    }
}

impl Drop for Export {
    /// Says goodbye (NBD_CMD_DISC) on every open connection.
    fn drop(&mut self) {
        for c in &self.conns {
            let st = lock(c);
            if let Some(fd) = &st.fd {
                if st.pending.is_empty() && !st.sending {
                    disconnect(fd);
                }
            }
        }
    }
}

fn lock(c: &Conn) -> MutexGuard<'_, State> {
    c.st.lock().unwrap_or_else(|p| p.into_inner())
}

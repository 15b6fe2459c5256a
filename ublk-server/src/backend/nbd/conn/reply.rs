//! The read side of a connection: waiting for a request's reply while
//! reading whatever replies come (structured or simple), and moving each
//! one's data into the buffer of the request it answers.

use super::super::proto::{self, chunk, cmd, Reply};
use super::super::socket::{fill_zero, recv_mem, xfer, Broken};
use super::*;
use crate::backend::ring::Ring;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Instant;

impl Export {
    /// Waits for request `key`'s reply, reading replies (for whichever
    /// request they answer) while it holds the read turn.
    pub(super) async fn reply<R: Ring>(
        &self,
        ring: &R,
        conn: &Conn,
        fd: RawFd,
        epoch: u64,
        key: usize,
    ) -> Outcome {
        loop {
            let read = std::future::poll_fn(|cx| {
                let mut st = lock(conn);
                if let Some(o) = st.pending[key].outcome {
                    st.pending.remove(key);
                    return Poll::Ready(Err(o));
                }
                if st.epoch != epoch {
                    st.pending.remove(key);
                    return Poll::Ready(Err(Outcome::Retry));
                }
                if !st.reading {
                    st.reading = true;
                    return Poll::Ready(Ok(()));
                }
                st.pending[key].waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if let Err(o) = read {
                return o;
            }
            let r = self.read_reply(ring, conn, fd, epoch).await;
            if let Err(b) = r {
                self.broken(conn, epoch, b);
                continue;
            }
            let mut st = lock(conn);
            if st.epoch != epoch {
                continue;
            }
            st.reading = false;
            // Leaving with our answer: hand the read turn to another waiter.
            if st.pending[key].outcome.is_some() {
                if let Some(w) = st
                    .pending
                    .iter_mut()
                    .find(|(k, p)| *k != key && p.outcome.is_none() && p.waker.is_some())
                    .and_then(|(_, p)| p.waker.take())
                {
                    w.wake();
                }
            }
        }
    }

    /// Reads one reply (or structured chunk) and hands it to its request.
    async fn read_reply<R: Ring>(
        &self,
        ring: &R,
        conn: &Conn,
        fd: RawFd,
        epoch: u64,
    ) -> Result<(), Broken> {
        // No reply before the oldest request's deadline: the server hangs.
        let until = {
            let st = lock(conn);
            st.pending
                .iter()
                .filter(|(_, p)| p.outcome.is_none())
                .map(|(_, p)| p.deadline)
                .min()
        };
        let Some(until) = until else { return Ok(()) };
        let mut head = [0u8; 20];
        recv_mem(ring, fd, &mut head[..16], until).await?;
        let reply =
            proto::reply(head[..16].try_into().expect("16 bytes")).map_err(Broken::Protocol)?;
        let structured = lock(conn).structured;
        let (handle, done) = match reply {
            Reply::Simple { error, handle } => {
                let c = self.request(conn, epoch, handle)?;
                if error == 0 && c.kind == cmd::READ {
                    xfer(
                        ring,
                        fd,
                        false,
                        c.data.expect("a read has data"),
                        u64::from(c.len),
                        until,
                    )
                    .await?;
                }
                (handle, proto::errno(error))
            }
            Reply::Chunk { .. } if !structured => {
                return Err(Broken::Protocol(
                    "a structured reply that was not negotiated".into(),
                ));
            }
            Reply::Chunk {
                flags: fl,
                kind,
                handle,
            } => {
                recv_mem(ring, fd, &mut head[16..20], until).await?;
                let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
                let c = self.request(conn, epoch, handle)?;
                let err = self.chunk(ring, fd, c, kind, len, until).await?;
                let mut st = lock(conn);
                if st.epoch != epoch {
                    return Ok(());
                }
                let p = &mut st.pending[handle as usize];
                if err != 0 && p.error == 0 {
                    p.error = err;
                }
                if fl & chunk::FLAG_DONE == 0 {
                    return Ok(());
                }
                let e = p.error;
                (handle, e)
            }
        };
        self.complete(conn, epoch, handle, done);
        Ok(())
    }

    /// The command a reply answers; a handle we did not send breaks the
    /// connection (the stream can no longer be trusted).
    fn request(&self, conn: &Conn, epoch: u64, handle: u64) -> Result<Cmd, Broken> {
        let st = lock(conn);
        if st.epoch != epoch {
            return Err(Broken::Io(EIO));
        }
        match usize::try_from(handle).ok().and_then(|k| st.pending.get(k)) {
            Some(p) if p.outcome.is_none() => Ok(p.cmd),
            _ => Err(Broken::Protocol(format!(
                "a reply to unknown handle {handle}"
            ))),
        }
    }

    /// Reads one structured chunk's payload for command `c`; returns the
    /// -errno it reports (0 for data).
    async fn chunk<R: Ring>(
        &self,
        ring: &R,
        fd: RawFd,
        c: Cmd,
        kind: u16,
        len: u32,
        until: Instant,
    ) -> Result<i32, Broken> {
        let bad = |m: &str| {
            Err(Broken::Protocol(format!(
                "{m} (chunk type {kind}, {len} bytes)"
            )))
        };
        match kind {
            chunk::NONE if len == 0 => Ok(0),
            chunk::OFFSET_DATA | chunk::OFFSET_HOLE if c.kind == cmd::READ => {
                let mut off = [0u8; 12];
                let fixed = if kind == chunk::OFFSET_DATA { 8 } else { 12 };
                if len < fixed || (kind == chunk::OFFSET_HOLE && len != 12) {
                    return bad("a short chunk");
                }
                recv_mem(ring, fd, &mut off[..fixed as usize], until).await?;
                let at = u64::from_be_bytes(off[..8].try_into().expect("8 bytes"));
                let n = if kind == chunk::OFFSET_DATA {
                    u64::from(len - 8)
                } else {
                    u64::from(u32::from_be_bytes(off[8..12].try_into().expect("4 bytes")))
                };
                let end = c.offset + u64::from(c.len);
                if at < c.offset || at.checked_add(n).is_none_or(|e| e > end) {
                    return bad("a chunk outside the request");
                }
                let data = c.data.expect("a read has data").at(at - c.offset);
                if kind == chunk::OFFSET_DATA {
                    xfer(ring, fd, false, data, n, until).await?;
                } else {
                    fill_zero(ring, self.aux, data, n)
                        .await
                        .map_err(Broken::Io)?;
                }
                Ok(0)
            }
            k if k & chunk::ERROR_BIT != 0 && len >= 6 => {
                if len > 64 << 10 {
                    return bad("an error chunk too long");
                }
                let mut rest = vec![0u8; len as usize];
                recv_mem(ring, fd, &mut rest, until).await?;
                let err = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
                let msg_len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
                let msg = String::from_utf8_lossy(rest.get(6..6 + msg_len).unwrap_or(&[]));
                tracing::debug!(export = %self.uri, err, "server error: {msg}");
                Ok(if err == 0 { EIO } else { proto::errno(err) })
            }
            _ => bad("an unexpected chunk"),
        }
    }
    /// Request `handle` is answered (`done`: 0 or -errno) on connection
    /// epoch `epoch`: its waiter wakes, and a write or flush moves the
    /// export's durability counters on.
    fn complete(&self, conn: &Conn, epoch: u64, handle: u64, done: i32) {
        let mut st = lock(conn);
        if st.epoch != epoch {
            return;
        }
        let (seq, kind) = {
            let p = &st.pending[handle as usize];
            (p.seq, p.cmd)
        };
        if done == 0 {
            if kind.kind == cmd::WRITE && kind.flags & cmd::FLAG_FUA == 0 {
                st.acked_seq = self.write_seq.fetch_add(1, Relaxed) + 1;
            } else if kind.kind == cmd::FLUSH {
                self.flushed_seq.fetch_max(seq, Relaxed);
            }
        }
        let p = &mut st.pending[handle as usize];
        p.outcome = Some(Outcome::Done(done));
        if let Some(w) = p.waker.take() {
            w.wake();
        }
    }
}

//! The sockets under an export: connecting and negotiating (blocking when
//! a table is opened, on the queue ring when a queue reconnects), and each
//! socket operation on the ring with a linked timeout, so that no queue
//! ever waits on a server longer than it allows.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};

use super::proto::{self, chunk, cmd, ExportInfo, Reply, Wire};
use super::uri::{Server, Uri};
use crate::backend::buffer::{Aux, Buffer};
use crate::backend::ring::Ring;

const EIO: i32 = -libc::EIO;

/// A resolved server address (names are looked up once, when the table
/// is opened: a queue thread never blocks in the resolver).
#[derive(Debug, Clone)]
pub enum Addr {
    Inet(Vec<SocketAddr>),
    Unix(PathBuf),
}

impl Addr {
    pub fn resolve(uri: &Uri) -> io::Result<Addr> {
        match &uri.server {
            Server::Tcp { host, port } => {
                let all: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
                if all.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    ));
                }
                Ok(Addr::Inet(all))
            }
            Server::Unix(p) => Ok(Addr::Unix(p.clone())),
        }
    }
}

/// Connects and negotiates with blocking sockets, each step bounded by
/// `timeout`: for checking a table and opening its devices.
pub fn connect_blocking(
    uri: &Uri,
    addr: &Addr,
    timeout: Duration,
) -> io::Result<(OwnedFd, ExportInfo)> {
    let (fd, info) = match addr {
        Addr::Inet(all) => {
            let mut last = None;
            let mut stream = None;
            for a in all {
                match std::net::TcpStream::connect_timeout(a, timeout) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = stream.ok_or_else(|| last.expect("at least one address"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let info = smol::block_on(proto::handshake(&mut proto::Blocking(&s), &uri.export))?;
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            (OwnedFd::from(s), info)
        }
        Addr::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let info = smol::block_on(proto::handshake(&mut proto::Blocking(&s), &uri.export))?;
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            (OwnedFd::from(s), info)
        }
    };
    Ok((fd, info))
}

/// Where a request's data is: a fixed buffer of the queue ring (the
/// request's own, in copy or zero-copy mode) or plain memory of ours.
#[derive(Debug, Clone, Copy)]
pub enum Data {
    Buf { buf: Buffer, at: u64 },
    Mem(*mut u8),
}

impl Data {
    /// The same data from byte `off` on.
    pub fn at(self, off: u64) -> Data {
        match self {
            Data::Buf { buf, at } => Data::Buf { buf, at: at + off },
            // SAFETY: callers stay inside the request's memory.
            Data::Mem(p) => Data::Mem(unsafe { p.add(off as usize) }),
        }
    }
}

/// Why a connection broke.
#[derive(Debug)]
pub(super) enum Broken {
    Timeout,
    Io(i32),
    Protocol(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Timeout => write!(f, "no answer within the timeout"),
            Broken::Io(0) => write!(f, "the server closed the connection"),
            Broken::Io(e) => write!(f, "{}", io::Error::from_raw_os_error(-e)),
            Broken::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

/// One FLUSH with blocking socket calls, bounded by `timeout`.
pub(super) fn flush_blocking(fd: &OwnedFd, structured: bool, timeout: Duration) -> io::Result<()> {
    use rustix::net::{RecvFlags, SendFlags};
    const HANDLE: u64 = u64::MAX;
    let until = Instant::now() + timeout;
    let wait = |events: rustix::event::PollFlags| -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        let ts =
            rustix::time::Timespec::try_from(left).map_err(|_| io::Error::other("bad timeout"))?;
        let mut p = [rustix::event::PollFd::new(fd, events)];
        match rustix::event::poll(&mut p, Some(&ts))? {
            0 => Err(io::Error::from(io::ErrorKind::TimedOut)),
            _ => Ok(()),
        }
    };
    let hdr = proto::request(0, cmd::FLUSH, HANDLE, 0, 0);
    let mut done = 0;
    while done < hdr.len() {
        wait(rustix::event::PollFlags::OUT)?;
        done += rustix::net::send(fd, &hdr[done..], SendFlags::NOSIGNAL | SendFlags::DONTWAIT)?;
    }
    let recv = |buf: &mut [u8]| -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            wait(rustix::event::PollFlags::IN)?;
            match rustix::net::recv(fd, &mut buf[got..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok((n, _)) => got += n,
                Err(rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    };
    loop {
        let mut head = [0u8; 16];
        recv(&mut head)?;
        match proto::reply(&head).map_err(io::Error::other)? {
            Reply::Simple { error, handle } if handle == HANDLE => {
                return match proto::errno(error) {
                    0 => Ok(()),
                    e => Err(io::Error::from_raw_os_error(-e)),
                };
            }
            Reply::Chunk {
                flags: fl,
                kind,
                handle,
            } if structured && handle == HANDLE => {
                let mut len = [0u8; 4];
                recv(&mut len)?;
                let len = u32::from_be_bytes(len) as usize;
                if len > 64 << 10 {
                    return Err(io::Error::other("an oversized reply to FLUSH"));
                }
                let mut payload = vec![0u8; len];
                recv(&mut payload)?;
                if kind & chunk::ERROR_BIT != 0 {
                    let err = payload
                        .get(..4)
                        .map_or(5, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
                    return Err(io::Error::from_raw_os_error(-proto::errno(err.max(5))));
                }
                if fl & chunk::FLAG_DONE != 0 {
                    return Ok(());
                }
            }
            other => {
                return Err(io::Error::other(format!(
                    "an unexpected reply to FLUSH: {other:?}"
                )))
            }
        }
    }
}

/// Ends a connection politely (NBD_CMD_DISC), without waiting.
pub fn disconnect(fd: &OwnedFd) {
    let hdr = proto::request(0, cmd::DISC, 0, 0, 0);
    let _ = rustix::net::send(
        fd,
        &hdr,
        rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
    );
}

/// Submits `sqe` with a linked timeout at `until`; -ECANCELED when the
/// timeout fired first.
pub(super) async fn submit_by<R: Ring>(ring: &R, sqe: squeue::Entry, until: Instant) -> i32 {
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let ts = types::Timespec::from(left);
    let op = ring.submit(sqe.flags(squeue::Flags::IO_LINK));
    let timer = ring.submit(opcode::LinkTimeout::new(&ts).build());
    let (r, _) = futures_lite::future::zip(op, timer).await;
    r
}

pub(super) fn fail(r: i32) -> Broken {
    if r == -libc::ECANCELED || r == -libc::ETIME {
        Broken::Timeout
    } else {
        Broken::Io(r)
    }
}

pub(super) async fn send_mem<R: Ring>(
    ring: &R,
    fd: RawFd,
    buf: &[u8],
    more: i32,
    until: Instant,
) -> Result<(), Broken> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let sqe = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL | more)
            .build();
        match submit_by(ring, sqe, until).await {
            r if r > 0 => done += r as usize,
            r if r == -libc::EINTR || r == -libc::EAGAIN => {}
            r => return Err(fail(r)),
        }
    }
    Ok(())
}

pub(super) async fn recv_mem<R: Ring>(
    ring: &R,
    fd: RawFd,
    buf: &mut [u8],
    until: Instant,
) -> Result<(), Broken> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let sqe = opcode::Recv::new(types::Fd(fd), rest.as_mut_ptr(), rest.len() as u32)
            .flags(libc::MSG_WAITALL)
            .build();
        match submit_by(ring, sqe, until).await {
            r if r > 0 => done += r as usize,
            r if r == -libc::EINTR || r == -libc::EAGAIN => {}
            r => return Err(fail(r)),
        }
    }
    Ok(())
}

/// Moves `len` bytes of request data over the socket: READ_FIXED /
/// WRITE_FIXED for ring buffers (zero copy included), recv/send for ours.
pub(super) async fn xfer<R: Ring>(
    ring: &R,
    fd: RawFd,
    write: bool,
    data: Data,
    len: u64,
    until: Instant,
) -> Result<(), Broken> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(1 << 30) as u32;
        let sqe = match data.at(done) {
            Data::Buf {
                buf: Buffer::UserCopy { .. },
                ..
            } => return Err(Broken::Io(EIO)),
            Data::Buf { buf, at } if write => {
                opcode::WriteFixed::new(types::Fd(fd), buf.addr(at) as *const u8, n, buf.index())
                    .build()
            }
            Data::Buf { buf, at } => {
                opcode::ReadFixed::new(types::Fd(fd), buf.addr(at) as *mut u8, n, buf.index())
                    .build()
            }
            Data::Mem(p) if write => opcode::Send::new(types::Fd(fd), p, n)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            Data::Mem(p) => opcode::Recv::new(types::Fd(fd), p, n)
                .flags(libc::MSG_WAITALL)
                .build(),
        };
        match submit_by(ring, sqe, until).await {
            r if r > 0 => done += r as u64,
            r if r == -libc::EINTR || r == -libc::EAGAIN => {}
            r => return Err(fail(r)),
        }
    }
    Ok(())
}

pub(super) async fn fill_zero<R: Ring>(
    ring: &R,
    aux: Aux,
    data: Data,
    len: u64,
) -> Result<(), i32> {
    match data {
        Data::Buf { buf, at } => buf.fill_zero(ring, aux, at, len).await,
        Data::Mem(p) => {
            // SAFETY: inside the caller's memory.
            unsafe { std::ptr::write_bytes(p, 0, len as usize) };
            Ok(())
        }
    }
}

/// Waits `d` on the ring.
pub(super) async fn sleep<R: Ring>(ring: &R, d: Duration) {
    let ts = types::Timespec::from(d);
    let _ = ring.submit(opcode::Timeout::new(&ts).build()).await;
}

/// A connected socket, connected and negotiated on the ring.
pub(super) async fn connect_ring<R: Ring>(
    ring: &R,
    uri: &Uri,
    addr: &Addr,
    until: Instant,
) -> io::Result<(OwnedFd, ExportInfo)> {
    let targets: Vec<RawAddr> = match addr {
        Addr::Inet(all) => all.iter().map(RawAddr::inet).collect(),
        Addr::Unix(p) => vec![RawAddr::unix(p)?],
    };
    let mut last = io::Error::other("no address");
    for t in targets {
        let fd = rustix::net::socket_with(
            t.family(),
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        if matches!(addr, Addr::Inet(_)) {
            let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
        }
        let sqe = opcode::Connect::new(types::Fd(fd.as_raw_fd()), t.ptr(), t.len).build();
        let r = submit_by(ring, sqe, until).await;
        if r < 0 {
            last = if r == -libc::ECANCELED {
                io::Error::from(io::ErrorKind::TimedOut)
            } else {
                io::Error::from_raw_os_error(-r)
            };
            continue;
        }
        let mut w = RingWire {
            ring,
            fd: fd.as_fd().as_raw_fd(),
            until,
        };
        let info = proto::handshake(&mut w, &uri.export).await?;
        return Ok((fd, info));
    }
    Err(last)
}

/// The handshake's byte stream on the queue ring.
struct RingWire<'a, R> {
    ring: &'a R,
    fd: RawFd,
    until: Instant,
}

impl<R: Ring> Wire for RingWire<'_, R> {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        send_mem(self.ring, self.fd, buf, 0, self.until)
            .await
            .map_err(broken_io)
    }
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        recv_mem(self.ring, self.fd, buf, self.until)
            .await
            .map_err(broken_io)
    }
}

fn broken_io(b: Broken) -> io::Error {
    match b {
        Broken::Timeout => io::Error::from(io::ErrorKind::TimedOut),
        Broken::Io(0) => io::Error::from(io::ErrorKind::UnexpectedEof),
        Broken::Io(e) => io::Error::from_raw_os_error(-e),
        Broken::Protocol(m) => io::Error::new(io::ErrorKind::InvalidData, m),
    }
}

/// A socket address as `connect(2)` takes it.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn inet(a: &SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    fn unix(p: &std::path::Path) -> io::Result<RawAddr> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = p.as_os_str().as_bytes();
        if bytes.len() >= sun.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: socket path too long", p.display()),
            ));
        }
        for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: sockaddr_storage is larger than sockaddr_un.
        unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sun) };
        Ok(RawAddr {
            storage,
            len: (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t,
        })
    }

    fn family(&self) -> rustix::net::AddressFamily {
        rustix::net::AddressFamily::from_raw(self.storage.ss_family)
    }

    fn ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

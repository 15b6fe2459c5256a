//! The NBD protocol (`doc/proto.md` of the NBD project), the client side:
//! the fixed newstyle handshake with `NBD_OPT_STRUCTURED_REPLY` and
//! `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME`), the 28-byte
//! request, and the simple and structured reply headers.
//!
//! The handshake is written once over [`Wire`]: blocking sockets when a
//! device is created, the queue's io_uring when a queue reconnects.

use std::io;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const OPT_ABORT: u32 = 2;
const OPT_STRUCTURED_REPLY: u32 = 8;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_BIT: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags (`NBD_FLAG_*`).
pub mod flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Commands (`NBD_CMD_*`) and command flags.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const WRITE_ZEROES: u16 = 6;
    pub const FLAG_FUA: u16 = 1 << 0;
}

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const ERROR_BIT: u16 = 1 << 15;
    pub const ERROR: u16 = ERROR_BIT | 1;
    pub const ERROR_OFFSET: u16 = ERROR_BIT | 2;
}

/// The largest payload we ask for when the server states no maximum (the
/// protocol's advice: 32 MiB is safe).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// What the handshake learned about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Smallest request the server takes (1 when it states none).
    pub min_block: u32,
    /// Largest payload of one request.
    pub max_payload: u32,
}

impl ExportInfo {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    pub fn read_only(&self) -> bool {
        self.has(flags::READ_ONLY)
    }
}

/// A byte stream the handshake runs over.
#[allow(async_fn_in_trait)]
pub trait Wire {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()>;
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn recv_u16<W: Wire>(w: &mut W) -> io::Result<u16> {
    let mut b = [0u8; 2];
    w.recv(&mut b).await?;
    Ok(u16::from_be_bytes(b))
}

async fn recv_u32<W: Wire>(w: &mut W) -> io::Result<u32> {
    let mut b = [0u8; 4];
    w.recv(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn recv_u64<W: Wire>(w: &mut W) -> io::Result<u64> {
    let mut b = [0u8; 8];
    w.recv(&mut b).await?;
    Ok(u64::from_be_bytes(b))
}

async fn send_option<W: Wire>(w: &mut W, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.send(&m).await
}

/// One option reply: its type and data (bounded: a server cannot make us
/// allocate much).
async fn recv_option_reply<W: Wire>(w: &mut W, opt: u32) -> io::Result<(u32, Vec<u8>)> {
    let magic = recv_u64(w).await?;
    if magic != REPLY_MAGIC {
        return Err(proto_err(format!("bad option reply magic {magic:#x}")));
    }
    let got = recv_u32(w).await?;
    if got != opt {
        return Err(proto_err(format!("reply to option {got}, asked {opt}")));
    }
    let ty = recv_u32(w).await?;
    let len = recv_u32(w).await?;
    if len > 64 << 10 {
        return Err(proto_err(format!("option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    w.recv(&mut data).await?;
    Ok((ty, data))
}

/// A server's refusal of an option, as a sentence.
fn refusal(ty: u32, data: &[u8]) -> String {
    let what = match ty & !REP_ERR_BIT {
        1 => "not supported",
        2 => "refused by policy",
        3 => "invalid",
        4 => "not supported on this platform",
        5 => "TLS required",
        6 => "no such export",
        7 => "server shutting down",
        8 => "block size requirements not met",
        9 => "too big",
        _ => "refused",
    };
    let msg = String::from_utf8_lossy(data);
    if msg.trim().is_empty() {
        what.to_string()
    } else {
        format!("{what} ({})", msg.trim())
    }
}

/// The server's greeting and our flags: fixed newstyle (the oldstyle
/// protocol is refused). Returns whether the server omits the zeroes.
async fn greeting<W: Wire>(w: &mut W) -> io::Result<bool> {
    let magic = recv_u64(w).await?;
    if magic != NBDMAGIC {
        return Err(proto_err("not an NBD server (no NBDMAGIC)"));
    }
    match recv_u64(w).await? {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(proto_err(
                "the server speaks the oldstyle protocol, which is not supported",
            ))
        }
        m => return Err(proto_err(format!("bad handshake magic {m:#x}"))),
    }
    let server = recv_u16(w).await?;
    if server & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto_err("the server does not speak fixed newstyle"));
    }
    let client = u32::from(FLAG_FIXED_NEWSTYLE | (server & FLAG_NO_ZEROES));
    w.send(&client.to_be_bytes()).await?;
    Ok(server & FLAG_NO_ZEROES != 0)
}

/// One NBD_REP_INFO of NBD_OPT_GO's answer.
enum Info {
    /// Size and transmission flags.
    Export(u64, u16),
    /// Minimum and maximum block size.
    BlockSize(u32, u32),
    Other,
}

fn parse_info(data: &[u8]) -> io::Result<Info> {
    let kind = u16::from_be_bytes([data[0], data[1]]);
    Ok(match kind {
        INFO_EXPORT if data.len() == 12 => {
            let size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
            Info::Export(size, u16::from_be_bytes([data[10], data[11]]))
        }
        INFO_BLOCK_SIZE if data.len() == 14 => {
            let word = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("4 bytes"));
            // The protocol's rules: a power-of-two minimum of at most
            // 64 KiB, a maximum no smaller.
            let (min, max) = (word(2), word(10));
            if !min.is_power_of_two() || min > 64 << 10 || max < min {
                return Err(proto_err(format!(
                    "bad block sizes: minimum {min}, maximum {max}"
                )));
            }
            Info::BlockSize(min, max)
        }
        _ => Info::Other,
    })
}

/// The fixed newstyle handshake for export `name`: structured replies
/// where offered, then `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` on a server
/// that lacks it). On success the wire is in the transmission phase.
pub async fn handshake<W: Wire>(w: &mut W, name: &str) -> io::Result<ExportInfo> {
    let no_zeroes = greeting(w).await?;
    send_option(w, OPT_STRUCTURED_REPLY, &[]).await?;
    let (ty, _) = recv_option_reply(w, OPT_STRUCTURED_REPLY).await?;
    let structured = ty == REP_ACK;

    let mut go = Vec::with_capacity(8 + name.len());
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(w, OPT_GO, &go).await?;
    let mut info: Option<(u64, u16)> = None;
    let (mut min_block, mut max_payload) = (1u32, DEFAULT_MAX_PAYLOAD);
    loop {
        let (ty, data) = recv_option_reply(w, OPT_GO).await?;
        match ty {
            REP_INFO if data.len() >= 2 => match parse_info(&data)? {
                Info::Export(size, fl) => info = Some((size, fl)),
                Info::BlockSize(min, max) => {
                    min_block = min;
                    max_payload = max.min(DEFAULT_MAX_PAYLOAD).max(min);
                }
                Info::Other => {}
            },
            REP_INFO => return Err(proto_err("a short NBD_REP_INFO")),
            REP_ACK => break,
            REP_ERR_UNSUP => {
                // A server older than NBD_OPT_GO: the old way, which ends
                // the handshake with the export's size and flags.
                send_option(w, OPT_EXPORT_NAME, name.as_bytes()).await?;
                let size = recv_u64(w).await?;
                let fl = recv_u16(w).await?;
                if !no_zeroes {
                    let mut z = [0u8; 124];
                    w.recv(&mut z).await?;
                }
                info = Some((size, fl));
                break;
            }
            t if t & REP_ERR_BIT != 0 => {
                let why = refusal(t, &data);
                let name = if name.is_empty() {
                    "the default export"
                } else {
                    name
                };
                // Leave politely; the error is what matters.
                let _ = send_option(w, OPT_ABORT, &[]).await;
                return Err(io::Error::other(format!("{name}: {why}")));
            }
            _ => {} // replies we did not ask for are ignored, as the spec says
        }
    }
    let (size, flags) = info.ok_or_else(|| proto_err("the server sent no export information"))?;
    Ok(ExportInfo {
        size,
        flags,
        structured,
        min_block,
        max_payload,
    })
}

/// One request header.
pub fn request(flags: u16, kind: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// A reply header: the first 16 bytes say which kind; a structured chunk
/// has 4 more (its payload length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Simple {
        error: u32,
        handle: u64,
    },
    /// A structured chunk; `len` bytes of payload follow the 20-byte header.
    Chunk {
        flags: u16,
        kind: u16,
        handle: u64,
    },
}

/// Parses the first 16 bytes of a reply.
pub fn reply(b: &[u8; 16]) -> Result<Reply, String> {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    match magic {
        SIMPLE_REPLY_MAGIC => Ok(Reply::Simple {
            error: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
            handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        }),
        STRUCTURED_REPLY_MAGIC => Ok(Reply::Chunk {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        }),
        m => Err(format!("bad reply magic {m:#x}")),
    }
}

/// An NBD error number as the -errno a ublk request completes with. The
/// protocol's values are Linux's; unknown ones are EIO.
pub fn errno(nbd: u32) -> i32 {
    match nbd {
        0 => 0,
        1 | 5 | 12 | 22 | 28 | 75 | 95 | 108 => -(nbd as i32),
        _ => -libc::EIO,
    }
}

/// The handshake over blocking sockets (device creation, `rdm create`'s
/// checks): each call completes before returning, so [`smol::block_on`]
/// drives it.
pub struct Blocking<S>(pub S);

impl<S: io::Read + io::Write> Wire for Blocking<S> {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server: what it sends, and what the client sent.
    struct Script {
        from_server: std::collections::VecDeque<u8>,
        to_server: Vec<u8>,
    }

    impl Wire for Script {
        async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
            self.to_server.extend_from_slice(buf);
            Ok(())
        }
        async fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
            for b in buf.iter_mut() {
                *b = self
                    .from_server
                    .pop_front()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            }
            Ok(())
        }
    }

    fn opt_reply(opt: u32, ty: u32, data: &[u8]) -> Vec<u8> {
        let mut v = REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut v = NBDMAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    #[test]
    fn go_with_structured_replies_and_block_sizes() {
        let mut s = greeting(3);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        let mut export = INFO_EXPORT.to_be_bytes().to_vec();
        export.extend_from_slice(&(1u64 << 30).to_be_bytes());
        export.extend_from_slice(&(flags::HAS_FLAGS | flags::SEND_FLUSH).to_be_bytes());
        s.extend(opt_reply(OPT_GO, REP_INFO, &export));
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [512u32, 4096, 1 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        s.extend(opt_reply(OPT_GO, REP_INFO, &bs));
        s.extend(opt_reply(OPT_GO, REP_ACK, &[]));
        let mut w = Script {
            from_server: s.into(),
            to_server: Vec::new(),
        };
        let info = smol::block_on(handshake(&mut w, "e0")).unwrap();
        assert_eq!(
            info,
            ExportInfo {
                size: 1 << 30,
                flags: flags::HAS_FLAGS | flags::SEND_FLUSH,
                structured: true,
                min_block: 512,
                max_payload: 1 << 20,
            }
        );
        // Client flags: fixed newstyle + no zeroes, as offered.
        assert_eq!(&w.to_server[0..4], &3u32.to_be_bytes());
        assert!(w.from_server.is_empty());
    }

    #[test]
    fn export_name_fallback_and_refusals() {
        let mut s = greeting(1);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
        s.extend(opt_reply(OPT_GO, REP_ERR_UNSUP, &[]));
        s.extend_from_slice(&4096u64.to_be_bytes());
        s.extend_from_slice(&3u16.to_be_bytes());
        s.extend_from_slice(&[0u8; 124]);
        let mut w = Script {
            from_server: s.into(),
            to_server: Vec::new(),
        };
        let info = smol::block_on(handshake(&mut w, "old")).unwrap();
        assert_eq!((info.size, info.flags, info.structured), (4096, 3, false));
        assert!(w.from_server.is_empty());

        let mut s = greeting(3);
        s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        s.extend(opt_reply(OPT_GO, REP_ERR_BIT | 6, b"no export named nope"));
        let mut w = Script {
            from_server: s.into(),
            to_server: Vec::new(),
        };
        let e = smol::block_on(handshake(&mut w, "nope")).unwrap_err();
        assert_eq!(e.to_string(), "nope: no such export (no export named nope)");

        let mut s = NBDMAGIC.to_be_bytes().to_vec();
        s.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        let mut w = Script {
            from_server: s.into(),
            to_server: Vec::new(),
        };
        let e = smol::block_on(handshake(&mut w, "")).unwrap_err();
        assert!(e.to_string().contains("oldstyle"), "{e}");
    }

    #[test]
    fn headers() {
        let r = request(cmd::FLAG_FUA, cmd::WRITE, 7, 4096, 512);
        assert_eq!(&r[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 7);
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&5u32.to_be_bytes());
        b[8..16].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            reply(&b),
            Ok(Reply::Simple {
                error: 5,
                handle: 9
            })
        );
        b[0..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert!(reply(&b).is_err());
        assert_eq!(errno(28), -libc::ENOSPC);
        assert_eq!(errno(1234), -libc::EIO);
    }
}

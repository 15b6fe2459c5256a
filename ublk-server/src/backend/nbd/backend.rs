//! Backing devices that are NBD exports: each piece becomes NBD commands on
//! the queue's own connection to the export (see [`crate::backend::nbd::conn`]).
//! FLUSH, FUA, discard and write-zeroes become NBD commands where the
//! export offers them; FUA without the flag is a write and a flush, and
//! write-zeroes without the command writes zeros. A table may mix exports
//! and files: the files are served by the io_uring file backend.

use std::path::Path;
use std::time::Duration;

use rdm_targets::DevIdx;

use crate::backend::backing::{self, BackingError};
use crate::backend::buffer::{Aux, Buffer};
use crate::backend::nbd::conn::{Cmd, Export};
use crate::backend::nbd::proto::{cmd, flags};
use crate::backend::nbd::socket::Data;
use crate::backend::ring::Ring;
use crate::backend::uring::UringBackend;
use crate::backend::{Backend, Transfer};

/// How a table uses an export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Connections to open: one per queue ring (queue and io thread).
    pub rings: usize,
    pub writable: bool,
    /// The device's logical block size.
    pub block_size: u32,
    /// `--nbd-timeout`.
    pub timeout: Duration,
}

/// Connects every ring to the export `p` names. Several connections need
/// the export's multi-conn promise (what one connection flushes or reads
/// covers the others' writes), unless the table is read-only.
pub fn open_export(p: &Path, o: ExportOptions, aux: Aux) -> Result<Export, BackingError> {
    let err = |cause: String| BackingError::Nbd {
        path: p.to_path_buf(),
        cause,
    };
    let mut fds = Vec::new();
    let mut first = None;
    for ring in 0..o.rings {
        let (uri, addr, info, fd) = backing::connect_export(p, backing::NBD_CHECK_TIMEOUT)?;
        if ring == 0 {
            let refuse = |msg: String| {
                crate::backend::nbd::socket::disconnect(&fd);
                Err(err(msg))
            };
            if o.rings > 1 && o.writable && !info.has(flags::CAN_MULTI_CONN) {
                return refuse(format!(
                    "the export does not allow multi-conn, and each of the {} queue threads needs its own connection: use --queues 1 (and --io-threads 1) or --read-only, or let the server allow it (qemu-nbd --shared=N, nbdkit)",
                    o.rings
                ));
            }
            if info.min_block > o.block_size {
                return refuse(format!(
                    "the export's smallest block is {} bytes, larger than the device's {}-byte blocks (--block-size 4096)",
                    info.min_block, o.block_size
                ));
            }
            first = Some((uri, addr, info));
        }
        fds.push(fd);
    }
    let (uri, addr, info) = first.expect("at least one ring");
    Ok(Export::new(
        uri, addr, info, fds, o.timeout, o.writable, aux,
    ))
}

#[derive(Debug)]
pub struct NbdBackend {
    /// The export behind each device, `None` for the files.
    pub exports: Vec<Option<Export>>,
    /// The table's files (every device has an entry; exports' are unused).
    pub files: UringBackend,
}

/// Zeros written for WRITE_ZEROES on an export without the command.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Largest TRIM / WRITE_ZEROES length in one command (u32, kept aligned).
const MAX_RANGE: u64 = 0xffff_f000;

fn status(r: i32) -> Result<(), i32> {
    if r < 0 {
        Err(r)
    } else {
        Ok(())
    }
}

impl NbdBackend {
    /// Writes `len` bytes of `data` at `offset`, in pieces the export
    /// takes; durable before returning when `fua`.
    async fn write<R: Ring>(
        &self,
        ring: &R,
        e: &Export,
        offset: u64,
        len: u64,
        data: Data,
        fua: bool,
    ) -> Result<(), i32> {
        let native_fua = fua && e.info.has(flags::SEND_FUA);
        let max = u64::from(e.info.max_payload);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            let c = Cmd {
                kind: cmd::WRITE,
                flags: if native_fua { cmd::FLAG_FUA } else { 0 },
                offset: offset + done,
                len: n as u32,
                data: Some(data.at(done)),
            };
            status(e.call(ring, c).await)?;
            done += n;
        }
        if fua && !native_fua && e.info.has(flags::SEND_FLUSH) {
            status(e.call(ring, plain(cmd::FLUSH, 0, 0)).await)?;
        }
        Ok(())
    }

    async fn read<R: Ring>(
        &self,
        ring: &R,
        e: &Export,
        offset: u64,
        len: u64,
        data: Data,
    ) -> Result<(), i32> {
        let max = u64::from(e.info.max_payload);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            let c = Cmd {
                kind: cmd::READ,
                flags: 0,
                offset: offset + done,
                len: n as u32,
                data: Some(data.at(done)),
            };
            status(e.call(ring, c).await)?;
            done += n;
        }
        Ok(())
    }
}

fn plain(kind: u16, offset: u64, len: u32) -> Cmd {
    Cmd {
        kind,
        flags: 0,
        offset,
        len,
        data: None,
    }
}

impl Backend for NbdBackend {
    /// A file's piece as the files backend moves it; an export's never.
    fn transfer_now(&self, t: Transfer, buf: Buffer) -> Option<Result<(), i32>> {
        match self.exports.get(t.dev)? {
            Some(_) => None,
            None => self.files.transfer_now(t, buf),
        }
    }

    async fn transfer<R: Ring>(&self, ring: &R, t: Transfer, buf: Buffer) -> Result<(), i32> {
        let Some(e) = &self.exports[t.dev] else {
            return self.files.transfer(ring, t, buf).await;
        };
        let data = match buf {
            // SAFETY: the target's memory holds the transfer.
            Buffer::Mem { base } => Data::Mem(unsafe { base.add(t.buf_offset as usize) }),
            _ => Data::Buf {
                buf,
                at: t.buf_offset,
            },
        };
        if t.write {
            self.write(ring, e, t.dev_offset, t.len, data, t.fua).await
        } else {
            self.read(ring, e, t.dev_offset, t.len, data).await
        }
    }

    /// An export without NBD_FLAG_SEND_FLUSH has no cache to flush.
    async fn flush<R: Ring>(&self, ring: &R, dev: DevIdx) -> Result<(), i32> {
        match &self.exports[dev] {
            None => self.files.flush(ring, dev).await,
            Some(e) if e.info.has(flags::SEND_FLUSH) => {
                status(e.call(ring, plain(cmd::FLUSH, 0, 0)).await)
            }
            Some(_) => Ok(()),
        }
    }

    /// DISCARD is NBD_CMD_TRIM (the device offers discard only when every
    /// export can trim); WRITE_ZEROES is NBD_CMD_WRITE_ZEROES, or zeros
    /// written where the export lacks it.
    async fn zero_range<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        len: u64,
        discard: bool,
    ) -> Result<(), i32> {
        let Some(e) = &self.exports[dev] else {
            return self.files.zero_range(ring, dev, offset, len, discard).await;
        };
        let native = if discard {
            flags::SEND_TRIM
        } else {
            flags::SEND_WRITE_ZEROES
        };
        if !e.info.has(native) {
            if discard {
                return Ok(()); // advisory, and not offered for this table
            }
            let mut done = 0;
            while done < len {
                let n = (len - done).min(ZEROS.len() as u64);
                let zeros = Data::Mem(ZEROS.as_ptr().cast_mut());
                self.write(ring, e, offset + done, n, zeros, false).await?;
                done += n;
            }
            return Ok(());
        }
        let kind = if discard {
            cmd::TRIM
        } else {
            cmd::WRITE_ZEROES
        };
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_RANGE);
            status(e.call(ring, plain(kind, offset + done, n as u32)).await)?;
            done += n;
        }
        Ok(())
    }

    /// Read-modify-write of the export's smallest block (at least 512
    /// bytes) holding the byte, written durably.
    async fn set_byte<R: Ring>(
        &self,
        ring: &R,
        dev: DevIdx,
        offset: u64,
        value: u8,
    ) -> Result<(), i32> {
        let Some(e) = &self.exports[dev] else {
            return self.files.set_byte(ring, dev, offset, value).await;
        };
        let block = u64::from(e.info.min_block.max(512));
        let start = offset - offset % block;
        let mut mem = vec![0u8; block as usize];
        self.read(ring, e, start, block, Data::Mem(mem.as_mut_ptr()))
            .await?;
        mem[(offset - start) as usize] = value;
        self.write(ring, e, start, block, Data::Mem(mem.as_mut_ptr()), true)
            .await
    }

    fn access(&self, dev: DevIdx) -> &'static str {
        match &self.exports[dev] {
            Some(_) => "nbd",
            None => self.files.access(dev),
        }
    }
}

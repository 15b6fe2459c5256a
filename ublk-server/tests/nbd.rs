//! The NBD backend against real servers on this host (qemu-nbd, nbdkit)
//! and against scripted ones (for what real servers rarely do: replies
//! out of order, holes, error chunks, silence), on a plain io_uring.

mod common;
use common::{pattern, req};

use std::alloc::{alloc_zeroed, Layout};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rdm_targets::Table;
use rdm_ublk_server::backend::nbd::NbdBackend;
use rdm_ublk_server::backend::uring::{Backing, UringBackend};
use rdm_ublk_server::backing;
use rdm_ublk_server::buffer::{Aux, Buffer};
use rdm_ublk_server::handler::Handler;
use rdm_ublk_server::nbd::conn::Export;
use rdm_ublk_server::nbd::proto;
use rdm_ublk_server::request::op;
use rdm_ublk_server::ring::{join_all, HostRing};

const BUF: usize = 1 << 20;
const MIB: u64 = 1 << 20;

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A server process on a Unix socket, killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn qemu_nbd(file: &Path, socket: &Path) -> Server {
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-t",
                "-e",
                "4",
                "--cache=writeback",
                "--discard=unmap",
                "-x",
                "e0",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg(file)
            .stdout(Stdio::null())
            .spawn()
            .expect("start qemu-nbd");
        Server::wait(child, socket)
    }

    fn nbdkit(file: &Path, socket: &Path) -> Server {
        let child = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(socket)
            .arg("file")
            .arg(file)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nbdkit");
        Server::wait(child, socket)
    }

    fn wait(child: Child, socket: &Path) -> Server {
        let t0 = Instant::now();
        while UnixStream::connect(socket).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            socket: socket.to_path_buf(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Rig {
    ring: Rc<HostRing>,
    h: Handler<NbdBackend>,
    bufs: Vec<*mut u8>,
    _zero: fs::File,
}

/// A handler over a one-device table `table` (whose device is an export),
/// its connection made as the daemon makes it, with `nbufs` registered
/// 1 MiB buffers.
fn rig(table: &str, timeout: Duration, nbufs: usize) -> Rig {
    let table = Table::parse(table).unwrap();
    backing::check_table(&table, true).unwrap();
    let dev = &table.devices()[0];
    let (uri, addr, info, fd) = backing::connect_export(dev, Duration::from_secs(5)).unwrap();
    let zero = fs::File::open("/dev/zero").unwrap();
    let ring = HostRing::new(512).unwrap();
    ring.register_files(&[zero.as_raw_fd()]).unwrap();
    let aux = Aux {
        zero: Some(0),
        bytes: None,
    };
    let layout = Layout::from_size_align(BUF, 4096).unwrap();
    let bufs: Vec<*mut u8> = (0..nbufs)
        .map(|_| unsafe { alloc_zeroed(layout) })
        .collect();
    let iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.cast(),
            iov_len: BUF,
        })
        .collect();
    unsafe { ring.register_buffers(&iovs).unwrap() };
    let export = Export::new(uri, addr, info, vec![fd], timeout, true, aux);
    let backend = NbdBackend {
        exports: vec![Some(export)],
        files: UringBackend::new(vec![Backing {
            fixed: 99,
            direct: false,
        }]),
    };
    Rig {
        ring,
        h: Handler::new(table, backend, aux),
        bufs,
        _zero: zero,
    }
}

impl Rig {
    fn buf(&self, i: usize) -> Buffer {
        Buffer::User {
            base: self.bufs[i],
            index: i as u16,
        }
    }
    // The kernel writes into these buffers behind Rust's back anyway;
    // the tests hold one view at a time.
    #[allow(clippy::mut_from_ref)]
    fn mem(&self, i: usize, len: usize) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.bufs[i], len) }
    }
    fn run(&self, o: u32, sector: u64, nr: u32, i: usize) -> i32 {
        self.ring
            .block_on(self.h.handle(&self.ring, req(o, sector, nr), self.buf(i)))
    }
    fn export(&self) -> &Export {
        self.h.backend.exports[0].as_ref().unwrap()
    }
}

/// Writes, reads back, flushes, discards and zeroes through `server`'s
/// export; the file behind it agrees byte for byte.
fn exercise(file: &Path, uri: &str) {
    let r = rig(
        &format!("0 8192 linear {uri} 2048"),
        Duration::from_secs(10),
        8,
    );
    // 8 writes in flight at once, then 8 reads, in random places.
    let spots: Vec<(u64, u32)> = (0..8u64)
        .map(|i| (i * 1000 + 7, 1 + (i as u32 * 37) % 200))
        .collect();
    for (i, &(_, nr)) in spots.iter().enumerate() {
        r.mem(i, nr as usize * 512)
            .copy_from_slice(&pattern(i as u64 + 1, nr as usize * 512));
    }
    let writes: Vec<_> = spots
        .iter()
        .enumerate()
        .map(|(i, &(s, nr))| r.h.handle(&r.ring, req(op::WRITE, s, nr), r.buf(i)))
        .collect();
    for (res, &(_, nr)) in r.ring.block_on(join_all(writes)).into_iter().zip(&spots) {
        assert_eq!(res, nr as i32 * 512);
    }
    assert_eq!(r.run(op::FLUSH, 0, 0, 0), 0);
    for i in 0..8 {
        r.mem(i, BUF).fill(0xee);
    }
    let reads: Vec<_> = spots
        .iter()
        .enumerate()
        .map(|(i, &(s, nr))| r.h.handle(&r.ring, req(op::READ, s, nr), r.buf(i)))
        .collect();
    r.ring.block_on(join_all(reads));
    let disk = fs::read(file).unwrap();
    for (i, &(s, nr)) in spots.iter().enumerate() {
        let want = pattern(i as u64 + 1, nr as usize * 512);
        assert_eq!(
            &r.mem(i, want.len())[..],
            &want[..],
            "read back of write {i}"
        );
        let at = ((2048 + s) * 512) as usize;
        assert_eq!(
            &disk[at..at + want.len()],
            &want[..],
            "on the file, write {i}"
        );
    }
    // A read of a region never written: zeros (a hole, for qemu-nbd).
    r.mem(0, 4096).fill(0xee);
    assert_eq!(r.run(op::READ, 8000, 8, 0), 4096);
    assert!(r.mem(0, 4096).iter().all(|&b| b == 0));
    // WRITE_ZEROES and DISCARD read back as zeros.
    assert_eq!(r.run(op::WRITE_ZEROES, 7, 1, 0), 0);
    assert_eq!(r.run(op::DISCARD, 1007, 38, 0), 0);
    for s in [7u64, 1007] {
        r.mem(0, 512).fill(0xee);
        assert_eq!(r.run(op::READ, s, 1, 0), 512);
        assert!(
            r.mem(0, 512).iter().all(|&b| b == 0),
            "sector {s} after zeroing"
        );
    }
    // FUA lands too.
    r.mem(1, 512).copy_from_slice(&pattern(99, 512));
    assert_eq!(r.run(op::WRITE | op::F_FUA, 5000, 1, 1), 512);
    let disk = fs::read(file).unwrap();
    assert_eq!(&disk[(7048 * 512)..(7049 * 512)], &pattern(99, 512)[..]);
}

fn file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

#[test]
fn qemu_nbd_serves_reads_writes_flush_discard_and_zeroes() {
    if !have("qemu-nbd") {
        eprintln!("skipped: no qemu-nbd (apt install qemu-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "q.img", 8 * MIB);
    let sock = dir.path().join("q.sock");
    let _s = Server::qemu_nbd(&f, &sock);
    exercise(&f, &format!("nbd+unix:///e0?socket={}", sock.display()));
}

#[test]
fn nbdkit_serves_reads_writes_flush_discard_and_zeroes() {
    if !have("nbdkit") {
        eprintln!("skipped: no nbdkit (apt install nbdkit)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "k.img", 8 * MIB);
    let sock = dir.path().join("k.sock");
    let _s = Server::nbdkit(&f, &sock);
    exercise(&f, &format!("nbd+unix:///?socket={}", sock.display()));
}

#[test]
fn a_server_restarted_within_the_timeout_costs_no_request_but_the_unflushed_writes_fail_the_next_flush(
) {
    if !have("qemu-nbd") {
        eprintln!("skipped: no qemu-nbd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "q.img", 8 * MIB);
    let sock = dir.path().join("q.sock");
    let mut s = Server::qemu_nbd(&f, &sock);
    let uri = format!("nbd+unix:///e0?socket={}", sock.display());
    let r = rig(
        &format!("0 16384 linear {uri} 0"),
        Duration::from_secs(20),
        2,
    );
    r.mem(0, 4096).copy_from_slice(&pattern(1, 4096));
    assert_eq!(r.run(op::WRITE, 0, 8, 0), 4096);
    s.kill();
    // Restart the server a moment after the read below has met a dead
    // connection.
    let f2 = f.clone();
    let sock2 = sock.clone();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        Server::qemu_nbd(&f2, &sock2)
    });
    r.mem(1, 4096).fill(0);
    let t0 = Instant::now();
    assert_eq!(
        r.run(op::READ, 0, 8, 1),
        4096,
        "the read survives the restart"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "it waited for the server"
    );
    assert_eq!(&r.mem(1, 4096)[..], &pattern(1, 4096)[..]);
    let _s2 = restart.join().unwrap();
    let e = r.export();
    assert!(
        e.counters
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The write was acknowledged on the dead connection and never flushed.
    assert_eq!(r.run(op::FLUSH, 0, 0, 0), -libc::EIO);
    assert_eq!(
        r.run(op::FLUSH, 0, 0, 0),
        0,
        "only the first flush after it fails"
    );
    // Written and flushed on the new connection: no complaint.
    assert_eq!(r.run(op::WRITE, 8, 8, 0), 4096);
    assert_eq!(r.run(op::FLUSH, 0, 0, 0), 0);
}

#[test]
fn a_server_that_is_gone_fails_requests_with_eio_after_the_timeout() {
    if !have("qemu-nbd") {
        eprintln!("skipped: no qemu-nbd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "q.img", 8 * MIB);
    let sock = dir.path().join("q.sock");
    let mut s = Server::qemu_nbd(&f, &sock);
    let uri = format!("nbd+unix:///e0?socket={}", sock.display());
    let r = rig(
        &format!("0 16384 linear {uri} 0"),
        Duration::from_secs(2),
        1,
    );
    s.kill();
    // Gone for four timeouts: the reconnect backoff has grown.
    for _ in 0..4 {
        let t0 = Instant::now();
        assert_eq!(r.run(op::READ, 0, 8, 0), -libc::EIO);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(8),
            "{took:?}"
        );
    }
    let failed = r
        .export()
        .counters
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 4);
    assert_eq!(r.export().states(), ["down"]);
    // Back: the next request finds it within its own timeout, however
    // long the server was away.
    let _s = Server::qemu_nbd(&f, &sock);
    assert_eq!(r.run(op::READ, 0, 8, 0), 4096);
    assert_eq!(r.export().states(), ["up"]);
}

// ------------------------------------------------------------- scripted

/// How the scripted server behaves once the handshake is done.
#[derive(Clone, Copy)]
enum Script {
    /// Collects `n` READs, then answers them last first: structured chunks,
    /// the first half of each request as data and the second as a hole;
    /// the request at offset `bad` gets an error chunk instead.
    Reversed { n: usize, bad: u64 },
    /// Reads requests and never answers.
    Silent,
}

/// The server side of the handshake: structured replies, NBD_OPT_GO.
fn serve_handshake(s: &mut UnixStream, size: u64) {
    s.write_all(&proto::NBDMAGIC.to_be_bytes()).unwrap();
    s.write_all(&proto::IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&3u16.to_be_bytes()).unwrap();
    let mut b4 = [0u8; 4];
    s.read_exact(&mut b4).unwrap();
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        let reply = |s: &mut UnixStream, ty: u32, d: &[u8]| {
            let mut v = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
            v.extend_from_slice(&opt.to_be_bytes());
            v.extend_from_slice(&ty.to_be_bytes());
            v.extend_from_slice(&(d.len() as u32).to_be_bytes());
            v.extend_from_slice(d);
            s.write_all(&v).unwrap();
        };
        match opt {
            8 => reply(s, 1, &[]),
            7 => {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(
                    &(proto::flags::HAS_FLAGS | proto::flags::SEND_FLUSH).to_be_bytes(),
                );
                reply(s, 3, &info);
                reply(s, 1, &[]);
                return;
            }
            _ => reply(s, (1 << 31) | 1, &[]),
        }
    }
}

/// A scripted server on `sock` for one connection per script in `scripts`.
fn scripted(sock: &Path, size: u64, scripts: Vec<Script>) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for script in scripts {
            let (mut s, _) = l.accept().unwrap();
            serve_handshake(&mut s, size);
            match script {
                Script::Silent => {
                    let mut sink = [0u8; 4096];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                }
                Script::Reversed { n, bad } => {
                    let mut reqs = Vec::new();
                    for _ in 0..n {
                        let mut h = [0u8; 28];
                        s.read_exact(&mut h).unwrap();
                        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
                        let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
                        let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
                        reqs.push((handle, off, len));
                    }
                    for &(handle, off, len) in reqs.iter().rev() {
                        let chunk = |s: &mut UnixStream, flags: u16, ty: u16, payload: &[u8]| {
                            let mut v = proto::STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
                            v.extend_from_slice(&flags.to_be_bytes());
                            v.extend_from_slice(&ty.to_be_bytes());
                            v.extend_from_slice(&handle.to_be_bytes());
                            v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                            v.extend_from_slice(payload);
                            s.write_all(&v).unwrap();
                        };
                        if off == bad {
                            let mut p = 28u32.to_be_bytes().to_vec(); // ENOSPC
                            p.extend_from_slice(&4u16.to_be_bytes());
                            p.extend_from_slice(b"full");
                            chunk(&mut s, 1, proto::chunk::ERROR, &p);
                            continue;
                        }
                        let half = len / 2;
                        let mut data = off.to_be_bytes().to_vec();
                        data.extend_from_slice(&pattern(off, half as usize));
                        chunk(&mut s, 0, proto::chunk::OFFSET_DATA, &data);
                        let mut hole = (off + u64::from(half)).to_be_bytes().to_vec();
                        hole.extend_from_slice(&(len - half).to_be_bytes());
                        chunk(&mut s, 1, proto::chunk::OFFSET_HOLE, &hole);
                    }
                    let mut sink = [0u8; 4096];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                }
            }
        }
    })
}

#[test]
fn replies_out_of_order_with_holes_and_error_chunks_reach_the_right_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // One connection for the table check, one for the rig.
    let bad = 3 * 8192;
    let _srv = scripted(
        &sock,
        16 * MIB,
        vec![Script::Silent, Script::Reversed { n: 6, bad }],
    );
    let uri = format!("nbd+unix:///x?socket={}", sock.display());
    let r = rig(
        &format!("0 32768 linear {uri} 0"),
        Duration::from_secs(10),
        6,
    );
    for i in 0..6 {
        r.mem(i, 8192).fill(0xee);
    }
    let reads: Vec<_> = (0..6u64)
        .map(|i| {
            r.h.handle(&r.ring, req(op::READ, i * 16, 16), r.buf(i as usize))
        })
        .collect();
    let res = r.ring.block_on(join_all(reads));
    for i in 0..6u64 {
        let off = i * 8192;
        if off == bad {
            assert_eq!(res[i as usize], -libc::ENOSPC, "the error chunk's errno");
            continue;
        }
        assert_eq!(res[i as usize], 8192);
        let m = r.mem(i as usize, 8192);
        assert_eq!(&m[..4096], &pattern(off, 4096)[..], "data of read {i}");
        assert!(m[4096..].iter().all(|&b| b == 0), "hole of read {i}");
    }
}

#[test]
fn a_server_that_never_answers_fails_the_request_after_the_timeout_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // Table check, the rig's connection (silent), then a good one.
    let _srv = scripted(
        &sock,
        16 * MIB,
        vec![
            Script::Silent,
            Script::Silent,
            Script::Reversed {
                n: 1,
                bad: u64::MAX,
            },
        ],
    );
    let uri = format!("nbd+unix:///x?socket={}", sock.display());
    let r = rig(
        &format!("0 32768 linear {uri} 0"),
        Duration::from_secs(1),
        2,
    );
    let t0 = Instant::now();
    assert_eq!(r.run(op::READ, 0, 8, 0), -libc::EIO);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let e = r.export();
    assert_eq!(
        e.counters
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The next request reconnects and is answered.
    assert_eq!(r.run(op::READ, 0, 8, 1), 4096);
    assert_eq!(&r.mem(1, 2048)[..], &pattern(0, 2048)[..]);
}

#[test]
fn many_requests_in_flight_over_two_exports_complete_promptly() {
    if !have("qemu-nbd") {
        eprintln!("skipped: no qemu-nbd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (
        file(dir.path(), "a.img", 8 * MIB),
        file(dir.path(), "b.img", 8 * MIB),
    );
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let _a = Server::qemu_nbd(&fa, &sa);
    let _b = Server::qemu_nbd(&fb, &sb);
    let table = format!(
        "0 32768 striped 2 16 nbd+unix:///e0?socket={} 0 nbd+unix:///e0?socket={} 0",
        sa.display(),
        sb.display()
    );
    let table = Table::parse(&table).unwrap();
    backing::check_table(&table, true).unwrap();
    let zero = fs::File::open("/dev/zero").unwrap();
    let ring = HostRing::new(1024).unwrap();
    ring.register_files(&[zero.as_raw_fd()]).unwrap();
    let aux = Aux {
        zero: Some(0),
        bytes: None,
    };
    let layout = Layout::from_size_align(BUF, 4096).unwrap();
    let bufs: Vec<*mut u8> = (0..32).map(|_| unsafe { alloc_zeroed(layout) }).collect();
    let iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.cast(),
            iov_len: BUF,
        })
        .collect();
    unsafe { ring.register_buffers(&iovs).unwrap() };
    let exports = table
        .devices()
        .iter()
        .map(|d| {
            let (uri, addr, info, fd) = backing::connect_export(d, Duration::from_secs(5)).unwrap();
            Some(Export::new(
                uri,
                addr,
                info,
                vec![fd],
                Duration::from_secs(10),
                true,
                aux,
            ))
        })
        .collect();
    let backend = NbdBackend {
        exports,
        files: UringBackend::new(
            (0..2)
                .map(|i| Backing {
                    fixed: 90 + i,
                    direct: false,
                })
                .collect(),
        ),
    };
    let h = Handler::new(table, backend, aux);
    // 32 tasks, as a queue's tags, each 40 requests of 4 KiB to 512 KiB
    // over both exports (up to 32 pieces each).
    let exe = smol::LocalExecutor::new();
    let t0 = Instant::now();
    let (ring_ref, h_ref) = (&ring, &h);
    let tasks: Vec<_> = (0..32usize)
        .map(|w| {
            let base = bufs[w];
            exe.spawn(async move {
                let buf = Buffer::User {
                    base,
                    index: w as u16,
                };
                let mut x = w as u64 * 7919 + 1;
                for i in 0..40u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let nr = 8 << (x % 8); // 4 KiB .. 512 KiB
                    let sector = (x >> 8) % (32768 - nr as u64);
                    let o = if i % 2 == 0 { op::WRITE } else { op::READ };
                    let r = h_ref.handle(ring_ref, req(o, sector, nr), buf).await;
                    assert_eq!(r, nr as i32 * 512, "request {i} of task {w}");
                }
            })
        })
        .collect();
    ring.run(&exe, || tasks.iter().all(|t| t.is_finished()));
    let took = t0.elapsed();
    eprintln!("1280 requests in {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}: requests stall");
}

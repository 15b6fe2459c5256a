//! The io core alone, no ublk: a QD32 stream of 4 KiB random reads through
//! `Handler::handle` over a plain io_uring (`HostRing`, driven as a queue
//! ring is: a task per request), against fio doing the
//! same (io_uring, O_DIRECT, fixed buffers and files, QD32, 4 KiB randread,
//! the same number of I/Os) on the same file. Prints both IOPS and the ratio;
//! with valgrind installed, also userspace instructions per I/O of both
//! (callgrind, from the difference between an N and a 2N run, so start-up
//! cost cancels out).
//!
//! ```sh
//! cargo run --release -p rdm-ublk-server --example io_bench -- [--file PATH] [--ios N] [--reps N] [--json OUT]
//! ```
//! The file is created (256 MiB, filled) if it is missing; keep it on a disk
//! file system, not tmpfs. Run by `cargo xtask bench --host`.

use std::alloc::{alloc_zeroed, Layout};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rdm_targets::Table;
use rdm_ublk_server::backend::uring::{Backing, UringBackend};
use rdm_ublk_server::backing;
use rdm_ublk_server::buffer::{Aux, Buffer};
use rdm_ublk_server::handler::Handler;
use rdm_ublk_server::request::{op, Request};
use rdm_ublk_server::ring::HostRing;

const QD: usize = 32;
const BS: u64 = 4096;
const FILE_BYTES: u64 = 256 << 20;

struct Args {
    file: PathBuf,
    ios: u64,
    reps: u32,
    json: Option<PathBuf>,
    /// Internal: run only the engine loop (for callgrind).
    engine_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        file: PathBuf::from("target/bench/io_bench.img"),
        ios: 400_000,
        reps: 3,
        json: None,
        engine_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--file" => a.file = val().into(),
            "--ios" => a.ios = val().parse().expect("--ios N"),
            "--reps" => a.reps = val().parse().expect("--reps N"),
            "--json" => a.json = Some(val().into()),
            "--engine-only" => a.engine_only = true,
            _ => panic!("unknown argument {k}; see the header of io_bench.rs"),
        }
    }
    a
}

fn ensure_file(path: &Path) {
    if fs::metadata(path).is_ok_and(|m| m.len() == FILE_BYTES) {
        return;
    }
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("create the file's directory");
    }
    let chunk = vec![0x5au8; 1 << 20];
    let mut data = Vec::with_capacity(FILE_BYTES as usize);
    while (data.len() as u64) < FILE_BYTES {
        data.extend_from_slice(&chunk);
    }
    fs::write(path, data).expect("write the benchmark file");
}

/// `ios` random 4 KiB reads through the engine, QD32; returns seconds.
fn engine_run(path: &Path, ios: u64) -> f64 {
    let sectors = FILE_BYTES >> 9;
    let table = Table::parse(&format!("0 {sectors} linear {} 0", path.display())).unwrap();
    backing::check_table(&table, true).unwrap();
    let (file, direct) = backing::open(&table.devices()[0], true).unwrap();
    assert!(direct, "the file system must take O_DIRECT (not tmpfs)");
    let ring = HostRing::new(256).unwrap();
    ring.register_files(&[file.as_raw_fd()]).unwrap();
    // One 4 KiB buffer per in-flight request, as the daemon's per-tag buffers.
    let layout = Layout::from_size_align(BS as usize * QD, 4096).unwrap();
    // SAFETY: non-zero size; never freed (the process ends).
    let base = unsafe { alloc_zeroed(layout) };
    let iov = libc::iovec {
        iov_base: base.cast(),
        iov_len: BS as usize * QD,
    };
    // SAFETY: the buffer lives until the process ends.
    unsafe { ring.register_buffers(&[iov]).unwrap() };
    let engine = Handler::new(
        table,
        UringBackend::new(vec![Backing { fixed: 0, direct }]),
        Aux::default(),
    );
    let blocks = FILE_BYTES / BS;
    let per = ios / QD as u64;
    // As in the daemon: one task per in-flight request on a local
    // executor, driven by the ring loop.
    let exe = smol::LocalExecutor::new();
    let (ring, engine) = (&ring, &engine);
    let t = Instant::now();
    let tasks: Vec<_> = (0..QD)
        .map(|w| {
            exe.spawn(async move {
                let mut x =
                    0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                // SAFETY: inside the registered buffer.
                let buf = Buffer::User {
                    base: unsafe { base.add(w * BS as usize) },
                    index: 0,
                };
                for _ in 0..per {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let req = Request {
                        op_flags: op::READ,
                        sector: (x % blocks) * (BS >> 9),
                        nr_sectors: (BS >> 9) as u32,
                    };
                    let r = engine.handle(ring, req, buf).await;
                    assert_eq!(r, BS as i32, "read failed: {r}");
                }
            })
        })
        .collect();
    ring.run(&exe, || tasks.iter().all(|t| t.is_finished()));
    t.elapsed().as_secs_f64()
}

fn fio_cmd(path: &Path, ios: u64) -> Command {
    let mut c = Command::new("fio");
    c.args([
        "--name=io_bench",
        "--ioengine=io_uring",
        "--direct=1",
        "--iodepth=32",
        "--rw=randread",
        "--bs=4k",
        "--fixedbufs=1",
        "--registerfiles=1",
        "--norandommap",
        "--randrepeat=1",
        "--thread",
        "--output-format=json",
        "--eta=never",
    ])
    .arg(format!("--filename={}", path.display()))
    .arg(format!("--io_size={}", ios * BS))
    .arg(format!("--size={FILE_BYTES}"));
    c
}

/// fio's IOPS over the same stream.
fn fio_run(path: &Path, ios: u64) -> f64 {
    let out = fio_cmd(path, ios).output().expect("run fio");
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    // "iops" : 12345.6 — the first one in the JSON is the read side.
    let i = s.find("\"iops\"").expect("fio JSON has iops");
    let rest = s[i + 6..].trim_start_matches([' ', ':']);
    let end = rest.find([',', '\n']).unwrap_or(rest.len());
    rest[..end].trim().parse().expect("fio iops")
}

/// Userspace instructions (callgrind) of a command.
fn callgrind(mut cmd: Command) -> Option<u64> {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(prog)
        .args(args);
    let out = cmd.output().ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("Collected :"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

fn per_io_instructions(path: &Path, n: u64) -> Option<(f64, f64)> {
    let exe = std::env::current_exe().ok()?;
    let engine = |ios: u64| {
        let mut c = Command::new(&exe);
        c.arg("--engine-only")
            .arg("--file")
            .arg(path)
            .args(["--ios", &ios.to_string()]);
        callgrind(c)
    };
    let e = (engine(2 * n)? as f64 - engine(n)? as f64) / n as f64;
    let f =
        (callgrind(fio_cmd(path, 2 * n))? as f64 - callgrind(fio_cmd(path, n))? as f64) / n as f64;
    Some((e, f))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = args();
    if a.engine_only {
        engine_run(&a.file, a.ios);
        return;
    }
    ensure_file(&a.file);
    let ios = a.ios / QD as u64 * QD as u64;
    println!(
        "io_bench: {ios} × 4 KiB random reads, QD{QD}, O_DIRECT, {} ({} reps, alternating)",
        a.file.display(),
        a.reps
    );
    // Warm up both once, then alternate so host noise hits both alike.
    let _ = engine_run(&a.file, ios / 10);
    let _ = fio_run(&a.file, ios / 10);
    let (mut e, mut f) = (Vec::new(), Vec::new());
    for rep in 0..a.reps {
        let ei = ios as f64 / engine_run(&a.file, ios);
        let fi = fio_run(&a.file, ios);
        println!(
            "  rep {rep}: engine {ei:.0} IOPS, fio {fi:.0} IOPS, ratio {:.3}",
            ei / fi
        );
        e.push(ei);
        f.push(fi);
    }
    let (em, fm) = (median(e.clone()), median(f.clone()));
    println!(
        "io_bench: median engine {em:.0} IOPS, fio {fm:.0} IOPS, engine/fio {:.3}",
        em / fm
    );
    let instr = if Command::new("valgrind").arg("--version").output().is_ok() {
        let n = 20_000;
        let r = per_io_instructions(&a.file, n);
        match r {
            Some((ei, fi)) => println!(
                "io_bench: userspace instructions per I/O (callgrind, 2N−N with N={n}): engine {ei:.0}, fio {fi:.0}, ratio {:.2}",
                ei / fi
            ),
            None => println!("io_bench: callgrind run failed; no instruction counts"),
        }
        r
    } else {
        println!(
            "io_bench: no valgrind; no instruction counts (perf has no instructions event here)"
        );
        None
    };
    if let Some(p) = &a.json {
        let j = format!(
            "{{\n  \"ios\": {ios},\n  \"qd\": {QD},\n  \"engine_iops\": {e:?},\n  \"fio_iops\": {f:?},\n  \"engine_iops_median\": {em},\n  \"fio_iops_median\": {fm},\n  \"ratio\": {},\n  \"engine_instructions_per_io\": {},\n  \"fio_instructions_per_io\": {}\n}}\n",
            em / fm,
            instr.map_or("null".into(), |(x, _)| format!("{x:.1}")),
            instr.map_or("null".into(), |(_, y)| format!("{y:.1}")),
        );
        fs::write(p, j).expect("write the JSON");
    }
}

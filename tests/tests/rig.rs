//! Self-test of the VM rig: the guest has what rdm's tests rely on.
//! Runs in the guest on both kernels under `cargo xtask test`.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rdm_tests::*;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// `_IOR('u', 0x13, struct ublksrv_ctrl_cmd)` (32-byte command header).
const UBLK_U_CMD_GET_FEATURES: u32 = (2 << 30) | (32 << 16) | ((b'u' as u32) << 8) | 0x13;
/// Not in every libc release yet.
const STATX_ATTR_DAX: u64 = 0x0020_0000;

#[test]
fn ublk_control_and_features() {
    if !require_ublk() {
        return;
    }
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ublk-control")
        .expect("open /dev/ublk-control");
    let mut features: u64 = 0;
    // struct ublksrv_ctrl_cmd: dev_id u32, queue_id u16, len u16, addr u64,
    // data u64, dev_path_len u16, pad u16, reserved u32.
    let mut cmd = [0u8; 80];
    cmd[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    cmd[4..6].copy_from_slice(&u16::MAX.to_ne_bytes());
    cmd[6..8].copy_from_slice(&8u16.to_ne_bytes());
    cmd[8..16].copy_from_slice(&(&mut features as *mut u64 as u64).to_ne_bytes());
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        IoUring::builder().build(4).expect("io_uring with SQE128");
    let sqe = opcode::UringCmd80::new(types::Fd(ctl.as_raw_fd()), UBLK_U_CMD_GET_FEATURES)
        .cmd(cmd)
        .build()
        .user_data(7);
    // SAFETY: `cmd` was copied into the SQE; `features` outlives the wait.
    unsafe { ring.submission().push(&sqe).expect("push") };
    ring.submit_and_wait(1).expect("submit");
    let cqe = ring.completion().next().expect("cqe");
    assert_eq!(cqe.result(), 0, "UBLK_U_CMD_GET_FEATURES failed");
    println!("kernel {}: ublk features {features:#x}", kernel_release());
    // UBLK_F_CMD_IOCTL_ENCODE (bit 6) is what rdm's server relies on.
    assert_ne!(features & (1 << 6), 0, "features {features:#x}");
}

#[test]
fn io_uring_nop_and_read() {
    if !require_ublk() {
        return;
    }
    let path = Path::new("/tmp/rdm-rig-uring");
    std::fs::write(path, b"hello io_uring").unwrap();
    let file = File::open(path).unwrap();
    let mut ring = IoUring::new(8).expect("io_uring_setup");
    let mut buf = [0u8; 14];
    let nop = opcode::Nop::new().build().user_data(1);
    let read = opcode::Read::new(
        types::Fd(file.as_raw_fd()),
        buf.as_mut_ptr(),
        buf.len() as u32,
    )
    .offset(0)
    .build()
    .user_data(2);
    // SAFETY: `buf` and `file` outlive the wait below.
    unsafe {
        ring.submission().push(&nop).unwrap();
        ring.submission().push(&read).unwrap();
    }
    ring.submit_and_wait(2).expect("submit");
    let mut cqes: Vec<_> = ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    cqes.sort();
    assert_eq!(cqes, vec![(1, 0), (2, 14)]);
    assert_eq!(&buf, b"hello io_uring");
}

#[test]
fn pmem_fsdax_is_dax() {
    if !require_ublk() {
        return;
    }
    let mnt = pmem_fsdax(0);
    assert_eq!(pmem_fsdax(0), mnt, "pmem_fsdax is idempotent");
    let path = mnt.join("dax-file");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(2 << 20).unwrap();

    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: zeroed statx is a valid out-buffer; cpath is NUL-terminated.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            cpath.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    assert_eq!(rc, 0, "statx: {}", std::io::Error::last_os_error());
    assert_ne!(
        stx.stx_attributes & STATX_ATTR_DAX,
        0,
        "STATX_ATTR_DAX not set on {}",
        path.display()
    );

    // MAP_SYNC is only accepted on a DAX file (with MAP_SHARED_VALIDATE).
    // SAFETY: a fresh mapping of our own file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap MAP_SYNC: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: p maps 2 MiB.
    unsafe {
        std::ptr::copy_nonoverlapping(b"dax!".as_ptr(), p.cast::<u8>(), 4);
        libc::munmap(p, 2 << 20);
    }
    let mut head = [0u8; 4];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"dax!");
}

#[test]
fn pmem_devdax_exists() {
    if !require_ublk() {
        return;
    }
    let dev = pmem_devdax(1);
    assert!(
        dev.to_str().unwrap().starts_with("/dev/dax"),
        "{}",
        dev.display()
    );
    assert_eq!(pmem_devdax(1), dev, "pmem_devdax is idempotent");
}

#[test]
fn dm_linear_over_loop() {
    if !require_ublk() {
        return;
    }
    let backing = Path::new("/tmp/rdm-rig-dm.img");
    File::create(backing).unwrap().set_len(8 << 20).unwrap();
    let loopdev = sh("losetup", &["-f", "--show", backing.to_str().unwrap()]);
    let loopdev = loopdev.trim();
    let name = "rdm-rig-linear";
    run(dmsetup().args([
        "create",
        name,
        "--table",
        &format!("0 16384 linear {loopdev} 0"),
    ]));
    let dm = format!("/dev/mapper/{name}");
    wait_for_path(&dm, Duration::from_secs(10));

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut f = OpenOptions::new().write(true).open(&dm).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
    }
    run(dmsetup().args(["remove", name]));
    sh("losetup", &["-d", loopdev]);

    let mut f = File::open(backing).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    let mut got = vec![0u8; 4096];
    f.read_exact(&mut got).unwrap();
    assert!(
        got == pattern,
        "bytes written through dm-linear differ in the backing file"
    );
}

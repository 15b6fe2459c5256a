//! The two ublk control commands rdm sends itself, where libublk 0.4.8
//! cannot: ADD_DEV with `UBLK_F_USER_RECOVERY_FAIL_IO` (libublk refuses
//! the flag) and END_USER_RECOVERY for a device in `FAIL_IO` (libublk
//! would send START_DEV, which the kernel refuses for a used device).

use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};
use libublk::{sys, UblkError};

/// Sends one control command on `/dev/ublk-control`; returns its result.
fn send(op: u32, cmd: sys::ublksrv_ctrl_cmd) -> Result<i32, UblkError> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ublk-control")
        .map_err(UblkError::IOError)?;
    let mut ring: IoUring<squeue::Entry128> =
        IoUring::builder().build(4).map_err(UblkError::IOError)?;
    let mut raw = [0u8; 80];
    // SAFETY: ublksrv_ctrl_cmd is 32 bytes of plain old data.
    let bytes: [u8; 32] = unsafe { std::mem::transmute(cmd) };
    raw[..32].copy_from_slice(&bytes);
    let sqe = opcode::UringCmd80::new(types::Fd(ctl.as_raw_fd()), op)
        .cmd(raw)
        .build();
    // SAFETY: the SQE points only at `ctl` and at whatever `cmd.addr`
    // names, which the caller keeps alive until this returns.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| UblkError::OtherError(-libc::EBUSY))?;
    ring.submit_and_wait(1).map_err(UblkError::IOError)?;
    let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    if res < 0 {
        return Err(UblkError::OtherError(res));
    }
    Ok(res)
}

/// ADD_DEV with `info`; the kernel picks the id, which is returned.
pub fn add_dev(mut info: sys::ublksrv_ctrl_dev_info) -> Result<u32, UblkError> {
    info.dev_id = u32::MAX;
    let cmd = sys::ublksrv_ctrl_cmd {
        dev_id: u32::MAX,
        queue_id: u16::MAX,
        len: std::mem::size_of::<sys::ublksrv_ctrl_dev_info>() as u16,
        addr: &mut info as *mut _ as u64,
        ..Default::default()
    };
    send(sys::UBLK_U_CMD_ADD_DEV, cmd)?;
    Ok(info.dev_id)
}

/// END_USER_RECOVERY for `dev_id` with this process as the server:
/// returns once every queue has fetched its requests.
pub fn end_user_recovery(dev_id: u32) -> Result<(), UblkError> {
    let cmd = sys::ublksrv_ctrl_cmd {
        dev_id,
        queue_id: u16::MAX,
        data: [u64::from(std::process::id())],
        ..Default::default()
    };
    send(sys::UBLK_U_CMD_END_USER_RECOVERY, cmd).map(|_| ())
}

fn simple(op: u32, dev_id: u32) -> Result<i32, UblkError> {
    send(
        op,
        sys::ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            ..Default::default()
        },
    )
}

/// Deletes a device added by [`add_dev`] unless disarmed: what libublk's
/// `Drop` does for the devices it adds, so a failed create leaves nothing.
#[derive(Debug)]
pub struct DeleteOnDrop {
    id: u32,
    armed: std::cell::Cell<bool>,
}

impl DeleteOnDrop {
    pub fn new(id: u32) -> Self {
        DeleteOnDrop {
            id,
            armed: std::cell::Cell::new(true),
        }
    }

    /// From here the caller deletes the device (or it must stay).
    pub fn disarm(&self) {
        self.armed.set(false);
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if self.armed.get() {
            let _ = simple(sys::UBLK_U_CMD_STOP_DEV, self.id);
            let _ = simple(sys::UBLK_U_CMD_DEL_DEV, self.id);
        }
    }
}

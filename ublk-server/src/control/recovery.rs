//! User recovery (`UBLK_F_USER_RECOVERY`): when a server dies, its device
//! stays, holding new I/O (or failing it fast, `fail-io`) until a new
//! server re-attaches with START/END_USER_RECOVERY. A mapping holds no state
//! of its own, so requests that were in flight are simply re-issued to the
//! new server (`reissue`, the default).

use std::path::Path;

use libublk::sys;
use serde::{Deserialize, Serialize};

use crate::control::state::DeviceState;

/// `--recovery`: what the kernel does with I/O while no server is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    /// Hold I/O; re-issue what was in flight to the new server.
    #[default]
    Reissue,
    /// Fail I/O at once until a new server attaches (kernel 6.13+).
    FailIo,
    /// No recovery: a dead server leaves a dead device.
    Off,
}

impl Recovery {
    pub fn name(self) -> &'static str {
        match self {
            Recovery::Reissue => "reissue",
            Recovery::FailIo => "fail-io",
            Recovery::Off => "off",
        }
    }

    /// The ADD_DEV flags, or why this kernel (`features`) cannot.
    pub fn ctrl_flags(self, features: u64) -> Result<u64, String> {
        let (flags, what) = match self {
            Recovery::Off => return Ok(0),
            Recovery::Reissue => (
                sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE,
                "UBLK_F_USER_RECOVERY_REISSUE",
            ),
            Recovery::FailIo => (
                sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_FAIL_IO,
                "UBLK_F_USER_RECOVERY_FAIL_IO (kernel 6.13 or newer)",
            ),
        };
        let flags = u64::from(flags);
        if features & flags != flags {
            return Err(format!(
                "--recovery {} needs {what}; this kernel offers {features:#x}",
                self.name()
            ));
        }
        Ok(flags)
    }
}

/// Whether a device whose server is gone waits for recovery: it was created
/// with recovery and the kernel still has its nodes.
pub fn waiting(st: &DeviceState) -> bool {
    let Some(id) = st.dev_id else { return false };
    st.recovery != Recovery::Off
        && Path::new(&format!("/dev/ublkc{id}")).exists()
        && Path::new(&format!("/sys/block/ublkb{id}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_kernel() {
        let k612 = 0x1fe; // USER_RECOVERY and REISSUE, no FAIL_IO
        let k73 = 0x1fffff;
        assert_eq!(Recovery::Off.ctrl_flags(k612), Ok(0));
        assert_eq!(Recovery::Reissue.ctrl_flags(k612), Ok(8 | 16));
        assert!(Recovery::FailIo
            .ctrl_flags(k612)
            .unwrap_err()
            .contains("6.13"));
        assert_eq!(Recovery::FailIo.ctrl_flags(k73), Ok(8 | 512));
    }
}

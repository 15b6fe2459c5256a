//! The kernel's `UBLK_CMD_GET_FEATURES` bits, decoded, and the data-path
//! mode rdm picks from them.

use libublk::sys;
use serde::Serialize;

/// `UBLK_F_*` bit names, by bit number (include/uapi/linux/ublk_cmd.h).
pub const FEATURE_NAMES: [&str; 20] = [
    "SUPPORT_ZERO_COPY",
    "URING_CMD_COMP_IN_TASK",
    "NEED_GET_DATA",
    "USER_RECOVERY",
    "USER_RECOVERY_REISSUE",
    "UNPRIVILEGED_DEV",
    "CMD_IOCTL_ENCODE",
    "USER_COPY",
    "ZONED",
    "USER_RECOVERY_FAIL_IO",
    "UPDATE_SIZE",
    "AUTO_BUF_REG",
    "QUIESCE",
    "PER_IO_DAEMON",
    "BUF_REG_OFF_DAEMON",
    "BATCH_IO",
    "INTEGRITY",
    "SAFE_STOP_DEV",
    "NO_AUTO_PART_SCAN",
    "SHMEM_ZC",
];

pub const F_SUPPORT_ZERO_COPY: u64 = sys::UBLK_F_SUPPORT_ZERO_COPY as u64;
pub const F_USER_COPY: u64 = sys::UBLK_F_USER_COPY as u64;
pub const F_AUTO_BUF_REG: u64 = sys::UBLK_F_AUTO_BUF_REG as u64;

/// Names of the set bits; unknown bits as `BIT_n`.
pub fn decode(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| {
            FEATURE_NAMES
                .get(b)
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("BIT_{b}"))
        })
        .collect()
}

/// How request data reaches the backing files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataMode {
    /// The kernel registers each request's pages in our ring
    /// (`UBLK_F_AUTO_BUF_REG`); backing I/O goes straight to them.
    ZeroCopy,
    /// The driver copies between the request and our per-tag buffers, which
    /// are registered io_uring fixed buffers.
    Copy,
    /// DAX: requests are served by copying between our per-tag buffers and
    /// persistent-memory mappings, with cache flushes for persistence.
    Dax,
    /// Copy mode with `UBLK_F_BATCH_IO` (Linux 7.0+): requests are fetched
    /// and their results committed in batches.
    Batch,
}

impl DataMode {
    pub fn name(self) -> &'static str {
        match self {
            DataMode::ZeroCopy => "zero-copy",
            DataMode::Copy => "copy",
            DataMode::Dax => "dax",
            DataMode::Batch => "batch",
        }
    }

    /// Whether requests' data is copied into our per-tag buffers.
    pub fn copies(self) -> bool {
        self != DataMode::ZeroCopy
    }
}

/// What the user asked for with `--zero-copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    Auto,
    On,
    Off,
}

impl ZeroCopy {
    pub fn name(self) -> &'static str {
        match self {
            ZeroCopy::Auto => "auto",
            ZeroCopy::On => "on",
            ZeroCopy::Off => "off",
        }
    }
}

pub const F_BATCH_IO: u64 = sys::UBLK_F_BATCH_IO as u64;
pub const F_PER_IO_DAEMON: u64 = sys::UBLK_F_PER_IO_DAEMON as u64;

/// Whether `--io-threads n` can be had: several threads serving one queue
/// need UBLK_F_PER_IO_DAEMON, which the kernel does not give batch devices.
pub fn check_io_threads(n: u16, batch: bool, features: u64) -> Result<(), String> {
    if features & F_PER_IO_DAEMON == 0 {
        return Err(format!(
            "--io-threads {n} needs UBLK_F_PER_IO_DAEMON (kernel 6.16 or newer); use --queues to spread the work instead"
        ));
    }
    if batch {
        return Err("--io-threads cannot go with --batch-io (the kernel has no per-I/O daemons for batch devices)".into());
    }
    Ok(())
}

/// Picks the mode from the kernel's features, or says why what was asked
/// for cannot be had. `batch` (`--batch-io`) is copy mode with batches.
pub fn choose_mode(want: ZeroCopy, batch: bool, features: u64) -> Result<DataMode, String> {
    if batch {
        if want == ZeroCopy::On {
            return Err("--batch-io is copy mode only (libublk's batch queue); it cannot go with --zero-copy on".into());
        }
        if features & F_BATCH_IO == 0 {
            return Err(format!(
                "--batch-io needs UBLK_F_BATCH_IO (kernel 7.0 or newer); this kernel offers {:#x} ({})",
                features,
                decode(features).join(", ")
            ));
        }
        return Ok(DataMode::Batch);
    }
    let has = features & F_AUTO_BUF_REG != 0;
    match (want, has) {
        (ZeroCopy::Off, _) | (ZeroCopy::Auto, false) => Ok(DataMode::Copy),
        (ZeroCopy::Auto | ZeroCopy::On, true) => Ok(DataMode::ZeroCopy),
        (ZeroCopy::On, false) => Err(format!(
            "--zero-copy on needs UBLK_F_AUTO_BUF_REG (kernel 6.16 or newer); \
             this kernel offers {:#x} ({})",
            features,
            decode(features).join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_kernels() {
        // Debian 6.12: no zero copy.
        let k612 = decode(0x1fe);
        assert_eq!(k612.len(), 8);
        assert!(k612.contains(&"USER_COPY".to_string()));
        assert!(!k612.contains(&"AUTO_BUF_REG".to_string()));
        let k73 = decode(0x1fffff);
        assert!(k73.contains(&"AUTO_BUF_REG".to_string()));
        assert_eq!(k73.last().unwrap(), "BIT_20");
    }

    #[test]
    fn names_follow_libublks_bits() {
        let bits = [
            sys::UBLK_F_SUPPORT_ZERO_COPY,
            sys::UBLK_F_URING_CMD_COMP_IN_TASK,
            sys::UBLK_F_NEED_GET_DATA,
            sys::UBLK_F_USER_RECOVERY,
            sys::UBLK_F_USER_RECOVERY_REISSUE,
            sys::UBLK_F_UNPRIVILEGED_DEV,
            sys::UBLK_F_CMD_IOCTL_ENCODE,
            sys::UBLK_F_USER_COPY,
            sys::UBLK_F_ZONED,
            sys::UBLK_F_USER_RECOVERY_FAIL_IO,
            sys::UBLK_F_UPDATE_SIZE,
            sys::UBLK_F_AUTO_BUF_REG,
            sys::UBLK_F_QUIESCE,
            sys::UBLK_F_PER_IO_DAEMON,
            sys::UBLK_F_BUF_REG_OFF_DAEMON,
            sys::UBLK_F_BATCH_IO,
            sys::UBLK_F_INTEGRITY,
            sys::UBLK_F_SAFE_STOP_DEV,
            sys::UBLK_F_NO_AUTO_PART_SCAN,
            sys::UBLK_F_SHMEM_ZC,
        ];
        for (i, (bit, name)) in bits.iter().zip(FEATURE_NAMES).enumerate() {
            assert_eq!(*bit, 1 << i, "{name}");
        }
    }

    #[test]
    fn mode_choice() {
        assert_eq!(
            choose_mode(ZeroCopy::Auto, false, 0x1fe),
            Ok(DataMode::Copy)
        );
        assert_eq!(
            choose_mode(ZeroCopy::Auto, false, 0x1fffff),
            Ok(DataMode::ZeroCopy)
        );
        assert_eq!(
            choose_mode(ZeroCopy::Off, false, 0x1fffff),
            Ok(DataMode::Copy)
        );
        let e = choose_mode(ZeroCopy::On, false, 0x1fe).unwrap_err();
        assert!(e.contains("AUTO_BUF_REG"), "{e}");
        assert_eq!(
            choose_mode(ZeroCopy::Auto, true, 0x1fffff),
            Ok(DataMode::Batch)
        );
        let e = choose_mode(ZeroCopy::Auto, true, 0x1fe).unwrap_err();
        assert!(e.contains("BATCH_IO"), "{e}");
        assert!(choose_mode(ZeroCopy::On, true, 0x1fffff).is_err());
    }
}

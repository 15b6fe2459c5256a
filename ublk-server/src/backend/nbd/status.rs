//! What `rdm status` shows of an export: its facts, each queue's
//! connection and the counters of what went wrong.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use super::conn::Export;
use super::proto::flags;

/// The counters `rdm status` shows for an export.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub reconnects: AtomicU64,
    pub disconnects: AtomicU64,
    pub timeouts: AtomicU64,
    /// Requests failed because no connection served them in time.
    pub failed: AtomicU64,
    /// Flushes failed because writes may have been lost with a connection.
    pub lost_flushes: AtomicU64,
}

pub(super) struct Counters;
impl Counters {
    pub(super) fn add(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

/// An export's facts and counters, for `rdm status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Default)]
pub struct ExportStatus {
    pub size_bytes: u64,
    /// Transmission flags the server offered, by name.
    pub offers: Vec<String>,
    pub structured_replies: bool,
    /// Each queue's connection: up, connecting or down.
    pub connections: Vec<String>,
    pub reconnects: u64,
    pub disconnects: u64,
    pub timeouts: u64,
    pub failed_requests: u64,
    pub lost_flushes: u64,
    pub timeout_secs: f64,
}

impl Export {
    pub fn status(&self) -> ExportStatus {
        let names = [
            (flags::READ_ONLY, "read-only"),
            (flags::SEND_FLUSH, "flush"),
            (flags::SEND_FUA, "fua"),
            (flags::SEND_TRIM, "trim"),
            (flags::SEND_WRITE_ZEROES, "write-zeroes"),
            (flags::CAN_MULTI_CONN, "multi-conn"),
        ];
        let c = &self.counters;
        ExportStatus {
            size_bytes: self.info.size,
            offers: names
                .iter()
                .filter(|(f, _)| self.info.has(*f))
                .map(|(_, n)| n.to_string())
                .collect(),
            structured_replies: self.info.structured,
            connections: self.states().into_iter().map(String::from).collect(),
            reconnects: c.reconnects.load(Relaxed),
            disconnects: c.disconnects.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            failed_requests: c.failed.load(Relaxed),
            lost_flushes: c.lost_flushes.load(Relaxed),
            timeout_secs: self.timeout.as_secs_f64(),
        }
    }
}

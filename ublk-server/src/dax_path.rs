//! The DAX pass-through: serve a table straight from persistent-memory
//! mappings of its backing devices instead of through backing-file I/O.
//!
//! Two steps, in order:
//!
//! 1. [`decide`] probes every backing device (unless the policy is
//!    [`DaxPolicy::Off`]) and applies the policy. DAX is optional, as in the
//!    kernel: a device that *cannot* do DAX is a fallback reason (`Auto`) or
//!    a refusal naming every such device (`Required`); a device whose probe
//!    *fails* (EIO, EACCES ...) is always an error. A table is DAX-capable
//!    only if every device is and it has no `zero` segment
//!    ([`Table::supports_dax`]).
//! 2. [`DaxEngine::open`] maps the devices of an active decision and
//!    [`DaxEngine::handle`] serves requests with the same result semantics
//!    as [`crate::engine::Engine::handle`]: READ copies out of the mapping,
//!    WRITE copies in and makes the stores durable (cache-line write-back +
//!    fence) before completing, FLUSH fences (MAP_SYNC already made the
//!    metadata of written blocks durable) and syncs files whose metadata
//!    a discard changed, DISCARD / WRITE_ZEROES punch the range (fs-dax) or
//!    zero it (device-dax).
//!
//! Request data moves either through the per-tag buffer the ublk driver
//! copies into ([`DaxBuf::User`], one extra copy) or, with
//! `UBLK_F_USER_COPY`, directly between the request's pages and the mapping
//! by one READ/WRITE on `/dev/ublkcN` whose buffer *is* the mapped range
//! ([`DaxBuf::UserCopy`]).

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{opcode, types};
use rdm_dax::{Dax, DaxError, DaxInfo, DaxKind, DaxMapping, PersistenceDomain};
use rdm_targets::{Piece, PieceKind, Table, Target};
use serde::Serialize;

use crate::engine::{op, Request};
use crate::ring::{first_error, join_all, transfer_all, Ring};
use crate::stats::{Counters, Stats};

/// `--dax`: whether to serve through the DAX path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaxPolicy {
    /// Use DAX when the whole table can; otherwise fall back to io_uring
    /// with one line saying why.
    Auto,
    /// Use DAX or fail (before the device is created).
    Required,
    /// Never probe; always io_uring.
    Off,
}

impl DaxPolicy {
    pub fn name(self) -> &'static str {
        match self {
            DaxPolicy::Auto => "auto",
            DaxPolicy::Required => "required",
            DaxPolicy::Off => "off",
        }
    }
}

/// What probing found for one backing device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDax {
    pub path: PathBuf,
    /// `None` when not probed (`--dax off`).
    pub supported: Option<bool>,
    /// fs-dax file or device-dax, when supported.
    pub kind: Option<DaxKind>,
    /// Why not, when unsupported.
    pub reason: Option<String>,
    /// The nd region's persistence domain, when supported.
    pub persistence_domain: Option<PersistenceDomain>,
    /// The full probe result, for [`DaxEngine::open`].
    #[serde(skip)]
    pub info: Option<DaxInfo>,
}

/// The outcome of [`decide`]: the per-device facts and whether the DAX path
/// is used.
#[derive(Debug, Clone, Serialize)]
pub struct DaxDecision {
    pub policy: DaxPolicy,
    /// Whether the table can pass DAX through (`None`: not probed).
    pub capable: Option<bool>,
    /// Whether the DAX path will serve the device.
    pub active: bool,
    /// Why the table is not DAX-capable (or not probed), if so.
    pub reason: Option<String>,
    pub devices: Vec<DeviceDax>,
    /// For `auto` falling back: the one line to print, e.g.
    /// `dax: /x is not DAX-capable: <reason>; serving through io_uring`.
    pub note: Option<String>,
}

/// Why [`decide`] or [`DaxEngine::open`] refused.
#[derive(Debug, thiserror::Error)]
pub enum DaxDecisionError {
    /// Probing (or mapping) a device failed for real: never a fallback.
    #[error("DAX probe failed: {0}")]
    Probe(#[source] DaxError),
    /// `--dax required` on a table that cannot.
    #[error("--dax required, but the table is not DAX-capable: {}", .problems.join("; "))]
    Required {
        /// One entry per non-DAX device (`PATH: reason`), plus the zero
        /// segment if there is one.
        problems: Vec<String>,
    },
    /// [`DaxEngine::open`] on a decision that is not active.
    #[error("the DAX path is not active for this table")]
    NotActive,
    /// A mapping does not cover what the table maps onto it (the file
    /// shrank since the table was checked).
    #[error("{path}: mapping of {have} bytes is smaller than the {need} bytes the table uses")]
    TooSmall { path: PathBuf, have: u64, need: u64 },
}

/// Probes the table's devices and applies `policy`.
pub fn decide(table: &Table, policy: DaxPolicy) -> Result<DaxDecision, DaxDecisionError> {
    if policy == DaxPolicy::Off {
        return Ok(DaxDecision {
            policy,
            capable: None,
            active: false,
            reason: Some("not probed (--dax off)".into()),
            devices: table
                .devices()
                .iter()
                .map(|p| DeviceDax {
                    path: p.clone(),
                    supported: None,
                    kind: None,
                    reason: None,
                    persistence_domain: None,
                    info: None,
                })
                .collect(),
            note: None,
        });
    }
    let mut devices = Vec::with_capacity(table.devices().len());
    for p in table.devices() {
        devices.push(match rdm_dax::probe(p).map_err(DaxDecisionError::Probe)? {
            Dax::Supported(info) => DeviceDax {
                path: p.clone(),
                supported: Some(true),
                kind: Some(info.kind),
                reason: None,
                persistence_domain: Some(info.persistence_domain),
                info: Some(info),
            },
            Dax::Unsupported(u) => DeviceDax {
                path: p.clone(),
                supported: Some(false),
                kind: None,
                reason: Some(u.reason.to_string()),
                persistence_domain: None,
                info: None,
            },
        });
    }
    let mut problems: Vec<String> = devices
        .iter()
        .filter(|d| d.supported == Some(false))
        .map(|d| {
            format!(
                "{}: {}",
                d.path.display(),
                d.reason.as_deref().unwrap_or("not DAX-capable")
            )
        })
        .collect();
    if let Some(z) = zero_segment_reason(table) {
        problems.push(z);
    }
    let flags: Vec<bool> = devices.iter().map(|d| d.supported == Some(true)).collect();
    let capable = table.supports_dax(&flags);
    debug_assert_eq!(capable, problems.is_empty());
    if !capable && policy == DaxPolicy::Required {
        return Err(DaxDecisionError::Required { problems });
    }
    let (reason, note) = if capable {
        (None, None)
    } else {
        let first = devices.iter().find(|d| d.supported == Some(false));
        let what = match first {
            Some(d) => format!(
                "{} is not DAX-capable: {}",
                d.path.display(),
                d.reason.as_deref().unwrap_or("unknown")
            ),
            None => problems[0].clone(),
        };
        let more = match problems.len() - 1 {
            0 => String::new(),
            1 => " (and 1 more reason)".into(),
            n => format!(" (and {n} more reasons)"),
        };
        (
            Some(problems.join("; ")),
            Some(format!("dax: {what}{more}; serving through io_uring")),
        )
    };
    Ok(DaxDecision {
        policy,
        capable: Some(capable),
        active: capable,
        reason,
        devices,
        note,
    })
}

fn zero_segment_reason(table: &Table) -> Option<String> {
    table
        .segments()
        .iter()
        .find(|s| matches!(s.target, Target::Zero))
        .map(|s| format!("the table has a zero segment (line {})", s.line))
}

/// Bytes of each device the table maps, to check mappings against.
fn needed_bytes(table: &Table) -> Vec<u64> {
    let mut need = vec![0u64; table.devices().len()];
    for s in table.segments() {
        match &s.target {
            Target::Linear { dev, offset } => need[*dev] = need[*dev].max((offset + s.len) << 9),
            Target::Striped { stripes, .. } => {
                let per = s.len / stripes.len() as u64;
                for st in stripes {
                    need[st.dev] = need[st.dev].max((st.offset + per) << 9);
                }
            }
            Target::Zero | Target::Error => {}
        }
    }
    need
}

/// Where a request's data is, for [`DaxEngine::handle`].
#[derive(Debug, Clone, Copy)]
pub enum DaxBuf {
    /// Copy mode: the request data is in our per-tag buffer at `base`
    /// (the driver copies it in before a WRITE is handled and out after a
    /// READ completes). `base` must be valid for the request's bytes for
    /// the duration of `handle`, and nothing else may touch it meanwhile.
    User { base: *mut u8 },
    /// `UBLK_F_USER_COPY`: the data moves between the request's pages and
    /// the mapping by READ/WRITE on the `/dev/ublkcN` fixed file
    /// `cdev_fixed`, at `ublk_user_copy_pos(q_id, tag, offset)`, with the
    /// SQE's buffer pointing into the mapping: one copy, done by the kernel.
    UserCopy {
        cdev_fixed: u32,
        q_id: u16,
        tag: u16,
    },
}

const EIO: i32 = -libc::EIO;

/// A zeroed region written out for reads of zero pieces in USER_COPY mode.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Serves requests from persistent-memory mappings; shared by all queues.
#[derive(Debug)]
pub struct DaxEngine {
    pub table: Table,
    /// One mapping per [`Table::devices`] entry.
    pub maps: Vec<DaxMapping>,
    pub stats: Stats,
    /// Per device: a discard changed file metadata that the next FLUSH must
    /// make durable (fdatasync).
    dirty_meta: Vec<AtomicBool>,
}

impl DaxEngine {
    /// Maps every device of an active decision (`decision` must come from
    /// [`decide`] on this `table`).
    pub fn open(table: Table, decision: &DaxDecision) -> Result<Self, DaxDecisionError> {
        if !decision.active || decision.devices.len() != table.devices().len() {
            return Err(DaxDecisionError::NotActive);
        }
        let mut maps = Vec::with_capacity(decision.devices.len());
        for d in &decision.devices {
            let info = d.info.as_ref().ok_or(DaxDecisionError::NotActive)?;
            maps.push(DaxMapping::map(info).map_err(DaxDecisionError::Probe)?);
        }
        for ((m, need), p) in maps.iter().zip(needed_bytes(&table)).zip(table.devices()) {
            if m.len() < need {
                return Err(DaxDecisionError::TooSmall {
                    path: p.clone(),
                    have: m.len(),
                    need,
                });
            }
        }
        Ok(Self::from_mappings(table, maps))
    }

    /// An engine over ready mappings (tests and benchmarks: e.g.
    /// [`DaxMapping::map_plain_for_tests`]), one per [`Table::devices`].
    pub fn from_mappings(table: Table, maps: Vec<DaxMapping>) -> Self {
        assert_eq!(maps.len(), table.devices().len(), "one mapping per device");
        let stats = Stats::new(table.segments().len(), table.devices().len());
        let dirty_meta = maps.iter().map(|_| AtomicBool::new(false)).collect();
        DaxEngine {
            table,
            maps,
            stats,
            dirty_meta,
        }
    }

    /// Serves one request; returns the ublk result (bytes for READ/WRITE, 0
    /// for the others, or -errno). Never a silent partial success: the
    /// result is the first error of any piece, and an error segment or a
    /// range beyond the device fails the request before anything is done.
    pub async fn handle<R: Ring>(&self, ring: &R, req: Request, buf: DaxBuf) -> i32 {
        let res = match req.op() {
            op::READ | op::WRITE => self.read_write(ring, req, buf).await,
            op::FLUSH => self.flush(ring).await,
            op::DISCARD | op::WRITE_ZEROES => self.range_op(ring, req).await,
            _ => Err(-libc::EOPNOTSUPP),
        };
        req.outcome(res)
    }

    async fn read_write<R: Ring>(&self, ring: &R, req: Request, buf: DaxBuf) -> Result<(), i32> {
        let write = req.op() == op::WRITE;
        let pieces = req.pieces(&self.table, &self.stats, false)?;
        match buf {
            // Plain memory copies: nothing to wait for.
            DaxBuf::User { base } => first_error(
                pieces
                    .iter()
                    .map(|p| self.count(p, write, |m, off| copy_user(m, off, p, write, base)))
                    .collect(),
            ),
            DaxBuf::UserCopy {
                cdev_fixed,
                q_id,
                tag,
            } => {
                let futs = pieces
                    .iter()
                    .map(|p| async move {
                        let r = match p.kind {
                            PieceKind::Io { dev, dev_offset } => {
                                let m = &self.maps[dev];
                                user_copy(ring, m, dev_offset, p, write, (cdev_fixed, q_id, tag))
                                    .await
                            }
                            PieceKind::Zero if write => Ok(()),
                            PieceKind::Zero => {
                                user_copy_zeros(ring, p, (cdev_fixed, q_id, tag)).await
                            }
                            PieceKind::Error => Err(EIO),
                        };
                        self.count(p, write, |_, _| r)
                    })
                    .collect();
                first_error(join_all(futs).await)
            }
        }
    }

    /// Counts one piece and its outcome; for an I/O piece calls `f` with
    /// its mapping and device offset, for zero pieces with no mapping
    /// (`f` is then only called in USER_COPY mode, where it carries the
    /// already computed result).
    fn count(
        &self,
        p: &Piece,
        write: bool,
        f: impl FnOnce(Option<&DaxMapping>, u64) -> Result<(), i32>,
    ) -> Result<(), i32> {
        let seg = &self.stats.segments[p.segment];
        let (c_ops, c_bytes) = if write {
            (&seg.writes, &seg.write_bytes)
        } else {
            (&seg.reads, &seg.read_bytes)
        };
        Counters::add(c_ops, 1);
        Counters::add(c_bytes, p.len);
        let res = match p.kind {
            PieceKind::Io { dev, dev_offset } => {
                let d = &self.stats.devices[dev];
                Counters::add(if write { &d.writes } else { &d.reads }, 1);
                Counters::add(if write { &d.write_bytes } else { &d.read_bytes }, p.len);
                let r = f(Some(&self.maps[dev]), dev_offset);
                if r.is_err() {
                    Counters::add(&d.errors, 1);
                }
                r
            }
            PieceKind::Zero | PieceKind::Error => f(None, 0),
        };
        if res.is_err() {
            Counters::add(&seg.errors, 1);
        }
        res
    }

    /// FLUSH: every store was already written back and fenced when its
    /// request completed, and MAP_SYNC made the metadata of the blocks it
    /// touched durable at fault time. What remains: a fence, and an
    /// fdatasync of fs-dax files whose metadata a discard changed since.
    async fn flush<R: Ring>(&self, ring: &R) -> Result<(), i32> {
        let results = join_all(
            self.maps
                .iter()
                .enumerate()
                .map(|(i, m)| async move {
                    let d = &self.stats.devices[i];
                    Counters::add(&d.flushes, 1);
                    m.fence();
                    if self.dirty_meta[i].swap(false, Ordering::AcqRel) {
                        let sqe = opcode::Fsync::new(types::Fd(m.as_raw_fd()))
                            .flags(types::FsyncFlags::DATASYNC)
                            .build();
                        let r = ring.submit(sqe).await;
                        if r < 0 {
                            self.dirty_meta[i].store(true, Ordering::Release);
                            Counters::add(&d.errors, 1);
                            return Err(r);
                        }
                    }
                    Ok(())
                })
                .collect(),
        )
        .await;
        first_error(results)
    }

    /// DISCARD and WRITE_ZEROES: after either the range reads zeros. On
    /// fs-dax (and plain test files) the range is punched on the ring
    /// (`PUNCH_HOLE | KEEP_SIZE`; the kernel unmaps the pages from our
    /// mapping) and the next FLUSH syncs the metadata; on device-dax, or
    /// where punching is refused, the bytes are zeroed durably.
    async fn range_op<R: Ring>(&self, ring: &R, req: Request) -> Result<(), i32> {
        let discard = req.op() == op::DISCARD;
        let pieces = req.pieces(&self.table, &self.stats, true)?;
        let results = join_all(
            pieces
                .iter()
                .map(|p| async move {
                    let seg = &self.stats.segments[p.segment];
                    seg.count_range_op(discard);
                    let PieceKind::Io { dev, dev_offset } = p.kind else {
                        return Ok(());
                    };
                    let d = &self.stats.devices[dev];
                    d.count_range_op(discard);
                    let r = self.zero_range(ring, dev, dev_offset, p.len).await;
                    if r.is_err() {
                        Counters::add(&d.errors, 1);
                        Counters::add(&seg.errors, 1);
                    }
                    r
                })
                .collect(),
        )
        .await;
        first_error(results)
    }

    async fn zero_range<R: Ring>(
        &self,
        ring: &R,
        dev: usize,
        off: u64,
        len: u64,
    ) -> Result<(), i32> {
        let m = &self.maps[dev];
        let in_range = off.checked_add(len).is_some_and(|e| e <= m.len());
        if !in_range || !m.is_writable() {
            return Err(EIO);
        }
        if m.kind() != Some(DaxKind::DevDax) {
            let sqe = opcode::Fallocate::new(types::Fd(m.as_raw_fd()), len)
                .offset(off)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build();
            let r = ring.submit(sqe).await;
            if r == 0 {
                self.dirty_meta[dev].store(true, Ordering::Release);
                return Ok(());
            }
            if r != -libc::EOPNOTSUPP {
                return Err(r);
            }
        }
        m.fill_zero(off, len).map_err(dax_errno)
    }
}

fn dax_errno(e: DaxError) -> i32 {
    match e {
        DaxError::Io { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
        DaxError::ReadOnly { .. } => -libc::EROFS,
        _ => EIO,
    }
}

/// Copy mode: one piece between the per-tag buffer and the mapping.
fn copy_user(
    m: Option<&DaxMapping>,
    dev_offset: u64,
    p: &Piece,
    write: bool,
    base: *mut u8,
) -> Result<(), i32> {
    let len = p.len as usize;
    // SAFETY: the piece lies inside the request, and `base` is valid for the
    // request's bytes with nothing else touching it during `handle`
    // (DaxBuf::User's contract); the slices live only for this call.
    let at = unsafe { base.add(p.buf_offset as usize) };
    match (m, write) {
        (Some(m), true) => {
            // SAFETY: see above.
            let src = unsafe { std::slice::from_raw_parts(at, len) };
            m.write_at(dev_offset, src).map_err(dax_errno)
        }
        (Some(m), false) => {
            // SAFETY: see above.
            let dst = unsafe { std::slice::from_raw_parts_mut(at, len) };
            m.read_at(dev_offset, dst).map_err(dax_errno)
        }
        (None, true) => Ok(()),
        (None, false) => match p.kind {
            PieceKind::Zero => {
                // SAFETY: see above.
                unsafe { std::ptr::write_bytes(at, 0, len) };
                Ok(())
            }
            _ => Err(EIO),
        },
    }
}

/// USER_COPY: one piece between the request (through /dev/ublkcN) and the
/// mapped range itself. A WRITE request is a READ from the cdev into the
/// mapping followed by a persist; a READ request a WRITE from the mapping.
async fn user_copy<R: Ring>(
    ring: &R,
    m: &DaxMapping,
    dev_offset: u64,
    p: &Piece,
    write: bool,
    (cdev, q_id, tag): (u32, u16, u16),
) -> Result<(), i32> {
    let len = p.len as usize;
    // Bounds (and, for writes, writability) checked once for the piece.
    // SAFETY: the pointer is used only by the SQEs below, which complete
    // before this function returns, while `m` (owned by the engine, which
    // outlives every request) is alive; the kernel's stores are persisted
    // below before the request completes.
    let base = unsafe {
        if write {
            m.as_mut_ptr_range(dev_offset, len)
        } else {
            m.as_ptr_range(dev_offset, len).map(|p| p as *mut u8)
        }
    }
    .map_err(dax_errno)?;
    transfer_all(ring, p.len, |done| {
        let pos =
            libublk::io::UblkIOCtx::ublk_user_copy_pos(q_id, tag, (p.buf_offset + done) as u32);
        let n = (p.len - done) as u32;
        // SAFETY: `done < len`, inside the checked range.
        let at = unsafe { base.add(done as usize) };
        if write {
            opcode::Read::new(types::Fixed(cdev), at, n)
                .offset(pos)
                .build()
        } else {
            opcode::Write::new(types::Fixed(cdev), at, n)
                .offset(pos)
                .build()
        }
    })
    .await?;
    if write {
        m.persist(dev_offset, len as u64).map_err(dax_errno)?;
    }
    Ok(())
}

/// USER_COPY: zeros for a read of a zero piece, from a static zero region.
async fn user_copy_zeros<R: Ring>(
    ring: &R,
    p: &Piece,
    (cdev, q_id, tag): (u32, u16, u16),
) -> Result<(), i32> {
    transfer_all(ring, p.len, |done| {
        let pos =
            libublk::io::UblkIOCtx::ublk_user_copy_pos(q_id, tag, (p.buf_offset + done) as u32);
        let n = (p.len - done).min(ZEROS.len() as u64) as u32;
        opcode::Write::new(types::Fixed(cdev), ZEROS.as_ptr(), n)
            .offset(pos)
            .build()
    })
    .await
}

impl fmt::Display for DaxPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
//!    only if every device is and every target can pass DAX through
//!    (`zero`, `flakey` and `delay` cannot: [`Table::supports_dax`]).
//! 2. [`crate::backend::dax::DaxBackend::open`] maps the devices of an
//!    active decision, and the request handler serves through them.

use std::fmt;
use std::path::PathBuf;

use rdm_dax::{Dax, DaxError, DaxInfo, DaxKind, PersistenceDomain};
use rdm_targets::Table;
use serde::Serialize;

/// `--dax`: whether to serve through the DAX path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
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
    /// The full probe result, for mapping the device.
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

/// Why [`decide`] or mapping the devices refused.
#[derive(Debug, thiserror::Error)]
pub enum DaxDecisionError {
    /// Probing (or mapping) a device failed for real: never a fallback.
    #[error("DAX probe failed: {0}")]
    Probe(#[source] DaxError),
    /// `--dax required` on a table that cannot.
    #[error("--dax required, but the table is not DAX-capable: {}", .problems.join("; "))]
    Required {
        /// One entry per non-DAX device (`PATH: reason`), plus the first
        /// segment whose target cannot pass DAX through, if any.
        problems: Vec<String>,
    },
    /// Mapping the devices of a decision that is not active.
    #[error("the DAX path is not active for this table")]
    NotActive,
    /// A mapping does not cover what the table maps onto it (the file
    /// shrank since the table was checked).
    #[error("{path}: mapping of {have} bytes is smaller than the {need} bytes the table uses")]
    TooSmall { path: PathBuf, have: u64, need: u64 },
}

/// One device's answer: an NBD export is never DAX, a file or device is
/// probed (a probe error is an error, not a reason).
fn probe_device(p: &std::path::Path) -> Result<DeviceDax, DaxDecisionError> {
    let no = |reason: String| DeviceDax {
        path: p.to_path_buf(),
        supported: Some(false),
        kind: None,
        reason: Some(reason),
        persistence_domain: None,
        info: None,
    };
    if crate::backend::nbd::uri::is_nbd(p) {
        return Ok(no("an NBD export, not persistent memory".into()));
    }
    Ok(match rdm_dax::probe(p).map_err(DaxDecisionError::Probe)? {
        Dax::Supported(info) => DeviceDax {
            path: p.to_path_buf(),
            supported: Some(true),
            kind: Some(info.kind),
            reason: None,
            persistence_domain: Some(info.persistence_domain),
            info: Some(info),
        },
        Dax::Unsupported(u) => no(u.reason.to_string()),
    })
}

/// Why a table cannot be served through DAX (every problem), and the one
/// line `--dax auto` prints (none for tables with NBD exports: nobody
/// expects DAX over the network).
fn fallback_reason(devices: &[DeviceDax], problems: &[String]) -> (Option<String>, Option<String>) {
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
    let remote = devices
        .iter()
        .any(|d| crate::backend::nbd::uri::is_nbd(&d.path));
    (
        Some(problems.join("; ")),
        (!remote).then(|| format!("dax: {what}{more}; serving through io_uring")),
    )
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
    let devices = table
        .devices()
        .iter()
        .map(|p| probe_device(p))
        .collect::<Result<Vec<_>, _>>()?;
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
    if let Some(z) = non_dax_reason(table) {
        problems.push(z);
    }
    let flags: Vec<bool> = devices.iter().map(|d| d.supported == Some(true)).collect();
    let capable = table.supports_dax(&flags);
    debug_assert_eq!(capable, problems.is_empty());
    if !capable && policy == DaxPolicy::Required {
        return Err(DaxDecisionError::Required { problems });
    }
    let (reason, note) = match capable {
        true => (None, None),
        false => fallback_reason(&devices, &problems),
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

/// The first segment whose target cannot pass DAX through.
fn non_dax_reason(table: &Table) -> Option<String> {
    table.non_dax_segment().map(|s| {
        format!(
            "the table has a {} segment (line {}), which cannot pass DAX through",
            s.target.name(),
            s.line
        )
    })
}

impl fmt::Display for DaxPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

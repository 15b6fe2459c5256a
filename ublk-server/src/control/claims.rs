//! Writable ranges across devices: two devices may not both write the same
//! bytes of one backing object, as a table may not map them twice (LVM's
//! rule; kernel dm checks neither). A device that only reads
//! (`--read-only`) may map anything, and so may the ranges a table only
//! reads.
//!
//! Creates, recoveries and reloads check under one lock (an flock on the
//! run directory itself: no file to leave behind), held until the new
//! claim is in the state file, so that two at once cannot both pass.

use std::path::PathBuf;

use rdm_targets::Table;

use crate::backend::backing::{identity_of, BackingInfo};
use crate::control::state::{self as control, io_err, ControlError, DeviceState, Liveness, RunDir};

/// The claims lock, held while alive.
#[derive(Debug)]
pub(crate) struct Lock(#[allow(dead_code)] RunDir);

/// Takes the claims lock (waits for another create or reload to record
/// its claim).
pub(crate) fn lock() -> Result<Lock, ControlError> {
    let dir = RunDir::create()?;
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err(dir.path())(e.into()))?;
    Ok(Lock(dir))
}

/// A writable range of `table` that another device also writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {path}: sectors {start}..{end} are also written by device {other} (its line {other_line}); two devices may not write the same bytes (a --read-only device may map them)")]
pub struct Clash {
    pub line: usize,
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
    pub other: String,
    pub other_line: usize,
}

/// Checks the writable ranges of `table` (over `infos`, in
/// [`Table::devices`] order) against every other device's live and loaded
/// tables. Call it with the [`lock`] held.
pub fn check(name: &str, table: &Table, infos: &[BackingInfo]) -> Result<(), Clash> {
    let others = control::list().unwrap_or_default();
    check_against(table, infos, others.iter().filter(|s| s.name != name))
}

fn check_against<'a>(
    table: &Table,
    infos: &[BackingInfo],
    others: impl Iterator<Item = &'a DeviceState>,
) -> Result<(), Clash> {
    let mine: Vec<_> = table.extents().into_iter().filter(|e| e.written).collect();
    if mine.is_empty() {
        return Ok(());
    }
    for other in others {
        if other.read_only || !holds_claims(other) {
            continue;
        }
        let live = Table::parse(&other.table).ok();
        let loaded = other
            .inactive_table
            .as_deref()
            .and_then(|t| Table::parse(t).ok());
        for (t, recorded) in [(live, true), (loaded, false)] {
            let Some(t) = t else { continue };
            // The live table's objects as recorded when it was opened; a
            // loaded table's as its paths name them now.
            let use_records = recorded && other.devices.len() == t.devices().len();
            let ids: Vec<Option<(u64, u64)>> = t
                .devices()
                .iter()
                .enumerate()
                .map(|(i, p)| match use_records {
                    true => Some(other.devices[i].identity),
                    false => identity_of(p),
                })
                .collect();
            for theirs in t.extents().into_iter().filter(|e| e.written) {
                let Some(id) = ids[theirs.dev] else { continue };
                for m in mine.iter().filter(|m| infos[m.dev].info.identity == id) {
                    let (start, end) = (
                        m.start.max(theirs.start),
                        (m.start + m.len).min(theirs.start + theirs.len),
                    );
                    if start < end {
                        return Err(Clash {
                            line: table.segments()[m.segment].line,
                            path: infos[m.dev].path.clone(),
                            start,
                            end,
                            other: other.name.clone(),
                            other_line: t.segments()[theirs.segment].line,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether a recorded device holds its ranges: a live one, one waiting
/// for recovery (it comes back with the same table), and one starting
/// that has recorded its objects (one that has not yet checks against us
/// once it gets the lock). A dead device serves nothing.
fn holds_claims(s: &DeviceState) -> bool {
    match s.liveness() {
        Liveness::Live | Liveness::Recovering => true,
        Liveness::Starting => !s.devices.is_empty(),
        Liveness::Dead => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::backing::inspect_all;
    use crate::control::state::DeviceRecord;

    /// A device `name` live in this process over `table`, its objects
    /// recorded as a create records them.
    fn live(name: &str, table: &str) -> DeviceState {
        let t = Table::parse(table).unwrap();
        let mut s = DeviceState::for_tests(name, &t.to_string());
        s.state = "live".into();
        s.devices = inspect_all(&t)
            .unwrap()
            .iter()
            .map(DeviceRecord::of)
            .collect();
        s
    }

    fn check_one(table: &str, others: &[DeviceState]) -> Result<(), Clash> {
        let t = Table::parse(table).unwrap();
        check_against(&t, &inspect_all(&t).unwrap(), others.iter())
    }

    #[test]
    fn a_writable_range_of_another_device_is_refused_and_what_only_reads_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| {
            let p = dir.path().join(n);
            std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
            p.display().to_string()
        };
        let (a, b) = (f("a.img"), f("b.img"));
        // A hard link is the same object under another name.
        let a2 = dir.path().join("a2.img").display().to_string();
        std::fs::hard_link(&a, &a2).unwrap();
        let x = live("x", &format!("0 8192 linear {b} 0\n8192 8192 linear {a} 0"));

        let clash = check_one(
            &format!("0 4096 zero\n4096 8192 linear {a2} 4096"),
            std::slice::from_ref(&x),
        )
        .unwrap_err();
        assert_eq!(
            clash,
            Clash {
                line: 2,
                path: a2.clone().into(),
                start: 4096,
                end: 8192,
                other: "x".into(),
                other_line: 2,
            }
        );
        assert!(clash.to_string().contains("device x"), "{clash}");
        // Next to it, on another file, or what the other only reads.
        check_one(&format!("0 8192 linear {a} 8192"), std::slice::from_ref(&x)).unwrap();
        check_one(&format!("0 8192 linear {b} 8192"), std::slice::from_ref(&x)).unwrap();
        let mut ro = x.clone();
        ro.read_only = true;
        check_one(&format!("0 8192 linear {a} 0"), &[ro]).unwrap();
        // A dead server's device serves nothing; one waiting to start and
        // not yet checked has recorded nothing.
        let mut dead = x.clone();
        dead.pid_start += 1;
        check_one(&format!("0 8192 linear {a} 0"), &[dead]).unwrap();
        let mut starting = x.clone();
        starting.state = "starting".into();
        starting.devices.clear();
        check_one(&format!("0 8192 linear {a} 0"), &[starting]).unwrap();
        // A loaded table claims its ranges too: resume makes it live.
        let mut loaded = live("y", &format!("0 8192 linear {b} 8192"));
        loaded.inactive_table = Some(format!("0 8192 linear {a} 16000\n"));
        let clash = check_one(&format!("0 8192 linear {a} 8192"), &[loaded]).unwrap_err();
        assert_eq!(
            (clash.start, clash.end, clash.other_line),
            (16000, 16384, 1)
        );
        // The live table's objects are the recorded ones, not what its
        // paths name now.
        let mut moved = x.clone();
        moved.devices[1].identity = (0, 0);
        check_one(&format!("0 8192 linear {a} 0"), &[moved]).unwrap();
    }
}

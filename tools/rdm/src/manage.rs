//! Verbs on existing devices: remove, ls, table, status, features.

use std::path::Path;
use std::time::{Duration, Instant};

use rdm_ublk_server::control::{self, ControlError, DeviceState, Liveness, Request};
use rdm_ublk_server::features;
use serde::Serialize;

use crate::error::CliError;

/// How long a server gets to drain, flush and delete its device.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn failed(e: ControlError) -> CliError {
    CliError::failed(e.to_string())
}

/// Sends a request to a device's server; an `error` answer is a failure.
pub fn ask(name: &str, req: &Request) -> Result<serde_json::Value, CliError> {
    let v = control::request(name, req).map_err(failed)?;
    match v["error"].as_str() {
        Some(e) => Err(CliError::failed(e)),
        None => Ok(v),
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn remove(name: &str, force: bool) -> Result<(), CliError> {
    let st = control::read_state(name).map_err(failed)?;
    let waiting = st.liveness() == Liveness::Recovering;
    let mut dead = !control::pid_alive(st.pid, st.pid_start);
    if !dead {
        let asked = control::request(name, &Request::Remove);
        let stopped =
            asked.is_ok() && wait_until(STOP_TIMEOUT, || !control::pid_alive(st.pid, st.pid_start));
        if !stopped {
            if !force {
                return Err(CliError::failed(match asked {
                    Err(e) => format!("{e}; use --force to kill it and delete the device"),
                    Ok(_) => format!(
                        "{name}: the server (pid {}) did not stop within {} s; use --force",
                        st.pid,
                        STOP_TIMEOUT.as_secs()
                    ),
                }));
            }
            // SAFETY: plain kill(2) of the recorded server pid.
            if unsafe { libc::kill(st.pid as libc::pid_t, libc::SIGKILL) } != 0 {
                let e = std::io::Error::last_os_error();
                // Gone meanwhile is what the kill was for; any other
                // refusal leaves the server, and so its device, alone.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(CliError::failed(format!(
                        "{name}: cannot kill its server (pid {}): {e}; the device is left as it is",
                        st.pid
                    )));
                }
            }
            wait_until(Duration::from_secs(5), || {
                !control::pid_alive(st.pid, st.pid_start)
            });
            dead = true;
        }
    }
    if dead {
        if !force && waiting {
            return Err(failed(ControlError::Waiting(name.to_string())));
        }
        if !force {
            return Err(CliError::failed(format!(
                "{name}: its server (pid {}) is dead; use `rdm remove --force {name}` to delete the device",
                st.pid
            )));
        }
        if let Some(id) = st.dev_id {
            delete_ublk_device(name, id)?;
        }
        control::remove_state(name);
    }
    if let Some(bdev) = &st.bdev {
        if !wait_until(Duration::from_secs(10), || !Path::new(bdev).exists()) {
            return Err(CliError::failed(format!(
                "{name}: {bdev} still exists after removal"
            )));
        }
    }
    control::remove_log(name);
    Ok(())
}

/// Deletes a ublk device whose server is gone (STOP_DEV, then DEL_DEV);
/// a device the kernel no longer has is fine.
fn delete_ublk_device(name: &str, id: u32) -> Result<(), CliError> {
    use libublk::ctrl::UblkCtrl;
    let cdev = format!("/dev/ublkc{id}");
    if !Path::new(&cdev).exists() {
        return Ok(());
    }
    let ctrl = UblkCtrl::new_simple(id as i32)
        .map_err(|e| CliError::failed(format!("{name}: cannot open ublk device {id}: {e:?}")))?;
    let _ = ctrl.kill_dev();
    ctrl.del_dev().map_err(|e| {
        CliError::failed(format!("{name}: deleting ublk device {id} failed: {e:?}"))
    })?;
    Ok(())
}

#[derive(Serialize)]
struct LsRow<'a> {
    name: &'a str,
    state: Liveness,
    bdev: Option<&'a str>,
    dev_id: Option<u32>,
    pid: u32,
    size_bytes: u64,
    mode: Option<&'static str>,
    suspended: bool,
    /// An inactive table is loaded (`rdm reload`).
    inactive_table: bool,
}

pub fn ls(json: bool) -> Result<(), CliError> {
    let devices = control::list().map_err(failed)?;
    let rows: Vec<LsRow> = devices.iter().map(row).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("plain data")
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<14} {:>12} {:<9} INACTIVE",
        "NAME", "STATE", "DEVICE", "SIZE", "MODE"
    );
    for r in rows {
        let state = match (r.state, r.suspended) {
            (Liveness::Live, true) => "suspended".to_string(),
            (s, _) => format!("{s:?}").to_lowercase(),
        };
        println!(
            "{:<20} {:<10} {:<14} {:>12} {:<9} {}",
            r.name,
            state,
            r.bdev.unwrap_or("-"),
            human(r.size_bytes),
            r.mode.unwrap_or("-"),
            if r.inactive_table { "yes" } else { "-" }
        );
    }
    Ok(())
}

fn row(s: &DeviceState) -> LsRow<'_> {
    LsRow {
        name: &s.name,
        state: s.liveness(),
        bdev: s.bdev.as_deref(),
        dev_id: s.dev_id,
        pid: s.pid,
        size_bytes: s.size_bytes,
        mode: s.mode.map(|m| m.name()),
        suspended: s.suspended,
        inactive_table: s.inactive_table.is_some(),
    }
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

pub fn udev_name(kernel_name: &str) -> Result<(), CliError> {
    let id: Option<u32> = kernel_name
        .strip_prefix("ublkb")
        .and_then(|n| n.parse().ok());
    let found = control::list()
        .map_err(failed)?
        .into_iter()
        .find(|s| id.is_some() && s.dev_id == id);
    match found {
        Some(s) => {
            println!("{}", s.name);
            Ok(())
        }
        None => Err(CliError::failed(format!(
            "{kernel_name} is not an rdm device"
        ))),
    }
}

/// The live table, or with `inactive` the one `rdm reload` loaded
/// (nothing if none is, as `dmsetup table --inactive`).
pub fn udev_owner(kernel_name: &str) -> Result<(), CliError> {
    let id: i32 = kernel_name
        .strip_prefix("ublkb")
        .or_else(|| kernel_name.strip_prefix("ublkc"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| CliError::usage(format!("{kernel_name} is not a ublk device node")))?;
    let ctrl = libublk::ctrl::UblkCtrlBuilder::default()
        .id(id)
        .build()
        .map_err(|e| CliError::failed(format!("{kernel_name}: GET_DEV_INFO failed: {e:?}")))?;
    let info = ctrl.dev_info();
    // Only a user's device changes hands; root's keep udev's defaults.
    if info.flags & u64::from(libublk::sys::UBLK_F_UNPRIVILEGED_DEV) == 0 {
        return Err(CliError::failed(format!(
            "{kernel_name} was created by root"
        )));
    }
    println!("{} {}", info.owner_uid, info.owner_gid);
    Ok(())
}

pub fn table(name: &str, inactive: bool) -> Result<(), CliError> {
    let st = control::read_state(name).map_err(failed)?;
    match inactive {
        false => print!("{}", st.table),
        true => print!("{}", st.inactive_table.as_deref().unwrap_or("")),
    }
    Ok(())
}

pub fn status(name: &str, json: bool, dm: bool) -> Result<(), CliError> {
    let st = control::read_state(name).map_err(failed)?;
    if st.liveness() == Liveness::Recovering && !control::pid_alive(st.pid, st.pid_start) {
        // No server to ask: what the record says.
        if json {
            let mut v = serde_json::to_value(&st).expect("plain data");
            v["state"] = "recovering".into();
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        } else {
            println!(
                "{name}: {} recovering: its server (pid {}) died and the device waits; `rdm recover {name}` re-attaches it",
                st.bdev.as_deref().unwrap_or("-"),
                st.pid
            );
        }
        return Ok(());
    }
    if st.liveness() == Liveness::Dead {
        return Err(CliError::failed(format!(
            "{name}: its server (pid {}) is dead; `rdm remove --force {name}` deletes the device",
            st.pid
        )));
    }
    let v = ask(name, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    if dm {
        for line in v["dm_status"].as_array().into_iter().flatten() {
            println!("{}", line.as_str().unwrap_or(""));
        }
        return Ok(());
    }
    println!(
        "{}: {} {}, mode {}, {} queue(s) × depth {}, block size {}{}",
        name,
        v["bdev"].as_str().unwrap_or("-"),
        human(v["size_bytes"].as_u64().unwrap_or(0)),
        v["mode"].as_str().unwrap_or("-"),
        v["queues"],
        v["depth"],
        v["block_size"],
        match (v["dax"]["active"].as_bool(), v["dax"]["reason"].as_str()) {
            (Some(true), _) => ", DAX active".to_string(),
            (_, Some(why)) => format!(", DAX inactive: {why}"),
            _ => String::new(),
        }
    );
    if v["suspended"].as_bool() == Some(true) {
        println!("  suspended: I/O is held until `rdm resume {name}`");
    }
    if v["inactive_table"].is_string() {
        println!("  inactive table loaded: `rdm table --inactive {name}` shows it, `rdm resume {name}` swaps it in");
    }
    let stats = |s: &serde_json::Value| {
        format!(
            "reads {} ({}) writes {} ({}) flushes {} discards {} write-zeroes {} errors {}",
            s["reads"],
            human(s["read_bytes"].as_u64().unwrap_or(0)),
            s["writes"],
            human(s["write_bytes"].as_u64().unwrap_or(0)),
            s["flushes"],
            s["discards"],
            s["write_zeroes"],
            s["errors"]
        )
    };
    for (s, line) in v["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(v["dm_status"].as_array().into_iter().flatten())
    {
        let dm = line
            .as_str()
            .unwrap_or("")
            .splitn(4, ' ')
            .nth(3)
            .unwrap_or("");
        if !dm.trim().is_empty() {
            println!(
                "  segment {} {}: {}",
                s["line"],
                s["target"].as_str().unwrap_or("?"),
                dm.trim()
            );
        }
    }
    for s in v["segments"].as_array().into_iter().flatten() {
        println!(
            "  segment {} {}+{} {}: {}",
            s["line"],
            s["start"],
            s["len"],
            s["target"].as_str().unwrap_or("?"),
            stats(&s["stats"])
        );
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "  device {} [{}, {}]: {}",
            d["path"].as_str().unwrap_or("?"),
            d["health"].as_str().unwrap_or("?"),
            d["access"].as_str().unwrap_or("?"),
            stats(&d["stats"])
        );
        let n = &d["nbd"];
        if n.is_object() {
            let list = |k: &str| {
                n[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "    nbd: connections [{}], offers [{}], {} reconnects, {} disconnects, {} timeouts, {} failed requests, {} lost flushes, timeout {} s",
                list("connections"),
                list("offers"),
                n["reconnects"],
                n["disconnects"],
                n["timeouts"],
                n["failed_requests"],
                n["lost_flushes"],
                n["timeout_secs"]
            );
        }
    }
    Ok(())
}

pub fn features(json: bool) -> Result<(), CliError> {
    let bits = libublk::ctrl::UblkCtrl::get_features()
        .ok_or_else(|| CliError::usage(rdm_ublk_server::server::no_ublk_reason()))?;
    let names = features::decode(bits);
    let mode =
        features::choose_mode(features::ZeroCopy::Auto, false, bits).expect("auto always chooses");
    // Users may create devices: the kernel allows it, and this user could
    // open /dev/ublk-control (or GET_FEATURES above would have failed).
    let unprivileged = bits & u64::from(libublk::sys::UBLK_F_UNPRIVILEGED_DEV) != 0;
    if json {
        let v = serde_json::json!({
            "features": format!("{bits:#x}"),
            "names": names,
            "mode": mode.name(),
            "unprivileged": unprivileged,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("ublk features {bits:#x}: {}", names.join(" "));
        println!("rdm data path: {}", mode.name());
        println!(
            "unprivileged devices: {}",
            match unprivileged {
                true => "allowed (UBLK_F_UNPRIVILEGED_DEV; users also need tools/udev/98-rdm-unprivileged.rules)",
                false => "not allowed by this kernel",
            }
        );
    }
    Ok(())
}

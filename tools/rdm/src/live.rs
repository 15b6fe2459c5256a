//! dm's verbs on a live device: reload (dmsetup load), clear, suspend,
//! resume, message. The server does the work; this front checks the table first
//! (for an error that shows the offending line) and prints the outcome.

use rdm_ublk_server::control::{self, Liveness, Request};

use crate::cli::ReloadArgs;
use crate::create::{check, read_table_text};
use crate::error::CliError;
use crate::manage::ask;

/// The device's record, if its server is there to ask.
fn live_state(name: &str) -> Result<control::DeviceState, CliError> {
    let st = control::read_state(name).map_err(|e| CliError::failed(e.to_string()))?;
    match st.liveness() {
        Liveness::Live => Ok(st),
        other => Err(CliError::failed(format!(
            "{name}: the device is {} (server pid {}), not live",
            format!("{other:?}").to_lowercase(),
            st.pid
        ))),
    }
}

pub fn reload(args: &ReloadArgs) -> Result<(), CliError> {
    let st = live_state(&args.name)?;
    let text = read_table_text(args.table.as_deref(), args.file.as_deref())?;
    let (table, _) = check(&args.name, &text, st.block_size, st.read_only)?;
    ask(
        &args.name,
        &Request::Reload {
            table: table.to_string(),
        },
    )?;
    Ok(())
}

pub fn clear(name: &str) -> Result<(), CliError> {
    live_state(name)?;
    ask(name, &Request::Clear)?;
    Ok(())
}

pub fn suspend(name: &str, nolockfs: bool, noflush: bool, json: bool) -> Result<(), CliError> {
    live_state(name)?;
    let v = ask(name, &Request::Suspend { nolockfs, noflush })?;
    print_json(json, &v);
    Ok(())
}

pub fn resume(name: &str, json: bool) -> Result<(), CliError> {
    live_state(name)?;
    let v = ask(name, &Request::Resume)?;
    print_json(json, &v);
    Ok(())
}

/// dmsetup message: the target's answer, if any, on its own line.
pub fn message(name: &str, sector: u64, argv: Vec<String>, json: bool) -> Result<(), CliError> {
    live_state(name)?;
    let v = ask(name, &Request::Message { sector, argv })?;
    if json {
        println!("{v}");
    } else if let Some(a) = v.get("answer").and_then(|a| a.as_str()) {
        if !a.is_empty() {
            println!("{a}");
        }
    }
    Ok(())
}

fn print_json(json: bool, v: &serde_json::Value) {
    if json {
        println!("{v}");
    }
}

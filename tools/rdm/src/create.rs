use std::io::Read;
use std::path::Path;

use rdm_targets::Table;
use rdm_ublk_server::backing::{self, BackingError, BackingInfo};
use rdm_ublk_server::claims;
use rdm_ublk_server::dax_path::{self, DaxDecision, DaxPolicy, DeviceDax};
use serde::Serialize;

use crate::cli::CreateArgs;
use crate::error::CliError;
use rdm_ublk_server::control::{self, Liveness};

/// Reads the table from `--table`, a file, or stdin (`-`).
pub fn read_table_text(table: Option<&str>, file: Option<&Path>) -> Result<String, CliError> {
    if let Some(t) = table {
        return Ok(t.replace(';', "\n"));
    }
    let file = file.expect("clap requires FILE or --table");
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::failed(format!("cannot read the table from stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(file)
        .map_err(|e| CliError::failed(format!("cannot read table file {}: {e}", file.display())))
}

/// Parses and checks a table against its backing devices and the device
/// options; the one path every verb that takes a table goes through.
pub fn load(args: &CreateArgs) -> Result<(Table, Vec<BackingInfo>), CliError> {
    let text = read_table_text(args.table.as_deref(), args.file.as_deref())?;
    check(&args.name, &text, args.block_size, args.read_only)
}

/// [`load`] on a table's text, for device `name` with these options.
pub fn check(
    name: &str,
    text: &str,
    block_size: u32,
    read_only: bool,
) -> Result<(Table, Vec<BackingInfo>), CliError> {
    let bad_table = |e: rdm_targets::TableError| {
        let c = CliError::failed(format!("{name}: bad table: {e}"));
        if e.text.is_empty() {
            c
        } else {
            c.with_context(e.text)
        }
    };
    let table = Table::parse(text).map_err(bad_table)?;
    table.check_block_size(block_size).map_err(bad_table)?;
    let devices = backing::check_table(&table, !read_only).map_err(|e| match e {
        BackingError::Table(t) => bad_table(t),
        other => CliError::failed(format!("{name}: {other}")),
    })?;
    // Early, for --dry-run and a quick answer; the server checks again
    // under the claims lock.
    if !read_only {
        claims::check(name, &table, &devices)
            .map_err(|c| CliError::failed(format!("{name}: {c}")))?;
    }
    Ok((table, devices))
}

#[derive(Serialize)]
struct DryRun<'a> {
    name: &'a str,
    size_sectors: u64,
    size_bytes: u64,
    block_size: u32,
    read_only: bool,
    table: String,
    segments: serde_json::Value,
    devices: Vec<DeviceReport<'a>>,
    /// DAX capability of the whole table.
    dax: TableDax<'a>,
}

#[derive(Serialize)]
struct DeviceReport<'a> {
    #[serde(flatten)]
    backing: &'a BackingInfo,
    dax: &'a DeviceDax,
}

/// `capable`/`reason` of the whole table, the policy, and whether the DAX
/// path would serve it (`null` capability: not probed, `--dax off`).
#[derive(Serialize)]
struct TableDax<'a> {
    policy: DaxPolicy,
    capable: Option<bool>,
    active: bool,
    reason: Option<&'a str>,
}

/// Probes the table's devices for DAX under `--dax` (nothing for `off`):
/// `required` on a table that cannot, or a probe that fails for real, is
/// an error naming the devices.
pub fn decide_dax(args: &CreateArgs, table: &Table) -> Result<DaxDecision, CliError> {
    dax_path::decide(table, args.dax).map_err(|e| CliError::failed(format!("{}: {e}", args.name)))
}

pub fn run(args: CreateArgs) -> Result<(), CliError> {
    if args.or_recover && !args.dry_run {
        let waiting = control::read_state(&args.name).is_ok_and(|s| {
            s.liveness() == Liveness::Recovering && !control::pid_alive(s.pid, s.pid_start)
        });
        if waiting {
            return recover(&args.name, args.json, args.foreground);
        }
    }
    if args.recover {
        // The server checks the recorded table against what was recorded
        // and reports through the readiness pipe.
        let text = args.table.clone().unwrap_or_default();
        let table = Table::parse(&text).map_err(|e| {
            CliError::failed(format!(
                "{}: the recorded table is unusable: {e}",
                args.name
            ))
        })?;
        return crate::serve::foreground(&args, table);
    }
    let (table, devices) = load(&args)?;
    if args.dry_run {
        let dax = decide_dax(&args, &table)?;
        print_dry_run(&args, &table, &devices, &dax);
        return Ok(());
    }
    if args.foreground {
        crate::serve::foreground(&args, table)
    } else {
        crate::serve::detached(&args, &table)
    }
}

fn print_dry_run(args: &CreateArgs, table: &Table, devices: &[BackingInfo], dax: &DaxDecision) {
    if args.json {
        let report = DryRun {
            name: &args.name,
            size_sectors: table.total_sectors(),
            size_bytes: table.total_bytes(),
            block_size: args.block_size,
            read_only: args.read_only,
            table: table.to_string(),
            segments: serde_json::to_value(table).expect("plain data")["segments"].take(),
            devices: devices
                .iter()
                .zip(&dax.devices)
                .map(|(b, d)| DeviceReport { backing: b, dax: d })
                .collect(),
            dax: TableDax {
                policy: dax.policy,
                capable: dax.capable,
                active: dax.active,
                reason: dax.reason.as_deref(),
            },
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data serializes")
        );
    } else {
        print!("{table}");
        if let Some(note) = &dax.note {
            eprintln!("{note}");
        }
    }
}

/// `rdm recover NAME`: a new server for a device whose server died, with
/// the table and options recorded when it was created.
pub fn recover(name: &str, json: bool, foreground: bool) -> Result<(), CliError> {
    let failed = |e: control::ControlError| CliError::failed(e.to_string());
    let st = control::read_state(name).map_err(failed)?;
    match st.liveness() {
        Liveness::Live | Liveness::Starting => {
            return Err(failed(control::ControlError::NotWaiting(
                name.into(),
                st.pid,
            )))
        }
        Liveness::Recovering if control::pid_alive(st.pid, st.pid_start) => {
            return Err(failed(control::ControlError::RecoveryBusy(name.into())))
        }
        Liveness::Dead => {
            let why = if st.recovery == rdm_ublk_server::recovery::Recovery::Off {
                "it was created with --recovery off"
            } else {
                "the kernel no longer has its device"
            };
            return Err(failed(control::ControlError::Unrecoverable(
                name.into(),
                why,
            )));
        }
        Liveness::Recovering => {}
    }
    let table = Table::parse(&st.table)
        .map_err(|e| CliError::failed(format!("{name}: the recorded table is unusable: {e}")))?;
    let args = CreateArgs {
        name: name.to_string(),
        file: None,
        table: Some(st.table.clone()),
        dry_run: false,
        json,
        read_only: st.read_only,
        block_size: st.block_size,
        queues: st.queues,
        depth: st.depth,
        zero_copy: st
            .zero_copy
            .unwrap_or(rdm_ublk_server::features::ZeroCopy::Auto),
        dax: st.dax.unwrap_or(DaxPolicy::Auto),
        recovery: st.recovery,
        or_recover: false,
        recover: true,
        foreground,
        nbd_timeout: st.nbd_timeout.unwrap_or(30),
        batch_io: st.batch_io,
        io_threads: st.io_threads.unwrap_or(1),
        // The block device, and the scheduler it was given, outlive the server.
        scheduler: "kernel".into(),
    };
    if foreground {
        crate::serve::foreground(&args, table)
    } else {
        crate::serve::detached(&args, &table)
    }
}

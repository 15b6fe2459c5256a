//! `rdm`: the command line of rdm, a userspace device-mapper served over ublk.
//!
//! This crate is only the front: argument parsing, reading tables, printing
//! results (text or `--json`) and exit codes. Tables and mappings live in
//! `rdm-targets`, everything that touches devices in `rdm-ublk-server`.

mod cli;
mod create;
mod error;
mod manage;
mod serve;

use clap::Parser;
use cli::Command;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Command::Create(args) => create::run(args),
        Command::Recover {
            name,
            json,
            foreground,
        } => create::recover(&name, json, foreground),
        Command::Remove { name, force } => manage::remove(&name, force),
        Command::Ls { json } => manage::ls(json),
        Command::Table { name } => manage::table(&name),
        Command::Status { name, json, dm } => manage::status(&name, json, dm),
        Command::Features { json } => manage::features(json),
        Command::UdevName { kernel_name } => manage::udev_name(&kernel_name),
    };
    if let Err(e) = result {
        e.report();
        std::process::exit(e.code);
    }
}

//! `rdm`: the command line of rdm, a userspace device-mapper served over ublk.
//!
//! This crate is only the front: argument parsing, reading tables, printing
//! results (text or `--json`) and exit codes. Tables and mappings live in
//! `rdm-targets`, everything that touches devices in `rdm-ublk-server`.

mod cli;
mod create;
mod error;
mod live;
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
        Command::Table { name, inactive } => manage::table(&name, inactive),
        Command::Reload(args) => live::reload(&args),
        Command::Clear { name } => live::clear(&name),
        Command::Suspend {
            name,
            nolockfs,
            noflush,
            json,
        } => live::suspend(&name, nolockfs, noflush, json),
        Command::Resume { name, json } => live::resume(&name, json),
        Command::Message {
            name,
            sector,
            message,
            json,
        } => live::message(&name, sector, message, json),
        Command::Status { name, json, dm } => manage::status(&name, json, dm),
        Command::Features { json } => manage::features(json),
        Command::UdevName { kernel_name } => manage::udev_name(&kernel_name),
        Command::UdevOwner { kernel_name } => manage::udev_owner(&kernel_name),
        Command::Completions { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "rdm", &mut buf);
            print_bytes(&buf)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(<cli::Cli as clap::CommandFactory>::command())
                .section("8")
                .render(&mut buf)
                .map_err(|e| error::CliError::failed(format!("cannot render the man page: {e}")))
                .and_then(|()| print_bytes(&buf))
        }
    };
    if let Err(e) = result {
        e.report();
        std::process::exit(e.code);
    }
}

/// Writes generated text to stdout; a closed pipe is not an error.
fn print_bytes(buf: &[u8]) -> Result<(), error::CliError> {
    use std::io::Write;
    match std::io::stdout().write_all(buf) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(error::CliError::failed(
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

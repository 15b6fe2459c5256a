//! `rdm`: the command line of rdm, a userspace device-mapper served over ublk.
//!
//! This crate is only the front: argument parsing, reading tables, printing
//! results (text or `--json`) and exit codes. Tables and mappings live in
//! `rdm-targets`, everything that touches devices in `rdm-ublk-server`.

mod cli;
mod create;
mod error;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Create(args) => create::run(args),
    };
    if let Err(e) = result {
        e.report();
        std::process::exit(e.code);
    }
}

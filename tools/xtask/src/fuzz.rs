//! `cargo xtask fuzz`: each cargo-fuzz target in `fuzz/` for a bounded
//! time over its committed corpus (`fuzz/corpus/TARGET`), as CI's smoke.
//!
//! cargo-fuzz needs nightly `-Z` flags; the stable toolchain accepts them
//! with `RUSTC_BOOTSTRAP=1`. New inputs go to a scratch directory, so the
//! committed corpus stays as it is; a crash leaves its input in
//! `fuzz/artifacts/TARGET/` and fails the run.

use crate::util::{describe, workspace_root};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const TARGETS: &[&str] = &["table", "control", "state", "nbd"];

fn cargo_fuzz() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(workspace_root());
    c
}

fn status_ok(c: &mut Command) -> Result<()> {
    let status = c
        .status()
        .with_context(|| format!("cannot start `{}`", describe(c)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(c));
    }
    Ok(())
}

/// Installs cargo-fuzz if `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let there = cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !there {
        eprintln!("cargo-fuzz is missing: installing it");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        status_ok(Command::new(cargo).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Runs `targets` (all if empty) for `each` apiece; fails on any crash.
pub fn run(targets: &[String], each: Duration) -> Result<()> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t:?}; there are {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    status_ok(cargo_fuzz().arg("build"))?;
    let scratch = workspace_root().join("fuzz/target/scratch");
    for t in targets {
        let new = scratch.join(t);
        let _ = std::fs::remove_dir_all(&new);
        std::fs::create_dir_all(&new).with_context(|| format!("{}", new.display()))?;
        let start = Instant::now();
        let mut c = cargo_fuzz();
        c.args(["run", t])
            .arg(&new)
            .arg(format!("fuzz/corpus/{t}"))
            .args(["--", "-max_len=8192", "-timeout=10"])
            .arg(format!("-max_total_time={}", each.as_secs().max(1)));
        status_ok(&mut c)?;
        eprintln!(
            "fuzz {t}: no crash in {:.0} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

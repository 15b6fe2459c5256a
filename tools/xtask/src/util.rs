//! Small helpers shared by the xtask subcommands.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (this crate lives in `tools/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tools/xtask has two ancestors")
        .to_path_buf()
}

/// Everything the rig downloads or creates lives here, inside the tree.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("vm")
}

/// A printable form of a command line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}`: non-UTF-8 output", describe(cmd)))
}

/// Quotes `s` for a POSIX shell (used for the env file stage 1 sources).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Parses sizes like `512M`, `1G`, `4096` (bytes) into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("bad size suffix in {s:?} (use K, M, G or T)"),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

/// Compares dotted version strings numerically ("7.10.1" > "7.9.4").
pub fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Runs a long command: on a terminal, a spinner shows `what` and the
/// command's latest output line; elsewhere (CI logs) one line says what
/// runs and nothing more. Either way a failure prints the output's tail.
pub fn run_progress(cmd: &mut Command, what: &str) -> Result<()> {
    use std::io::{BufRead, BufReader, IsTerminal};
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
                .expect("valid template"),
        );
        b.set_prefix(what.to_string());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    } else {
        eprintln!("xtask: {what}");
        indicatif::ProgressBar::hidden()
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        let (tail, bar) = (tail.clone(), bar.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                bar.set_message(line.clone());
                let mut t = tail.lock().expect("not poisoned");
                t.push(line);
                let excess = t.len().saturating_sub(40);
                t.drain(..excess);
            }
        })
    })
    .collect();
    let status = child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    bar.finish_and_clear();
    if !status.success() {
        for l in tail.lock().expect("not poisoned").iter() {
            eprintln!("  | {l}");
        }
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn versions() {
        assert!(version_key("7.10.1") > version_key("7.9.4"));
        assert!(version_key("6.12.107") > version_key("6.12.99"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}

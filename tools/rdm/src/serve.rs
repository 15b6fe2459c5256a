//! Running the server: in the foreground, or detached with a readiness pipe.
//!
//! `rdm create` without `--foreground` starts `rdm create --foreground` as a
//! new session with its output in `/run/rdm/NAME.log` (0600), and waits for one
//! line on a pipe (fd 3 in the child): `ok <json>` once the device is live,
//! or `err <exit code> <message>`. So the user sees the server's own error,
//! and the parent returns only when the device exists or nothing does.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rdm_targets::Table;
use rdm_ublk_server::control;
use rdm_ublk_server::server::{self, Config, Live, ServerError};

use crate::cli::CreateArgs;
use crate::error::{exit, CliError};

const READY_FD: i32 = 3;
const READY_ENV: &str = "RDM_READY_FD";

fn exit_code(e: &ServerError) -> i32 {
    match e {
        ServerError::NoUblk { .. } | ServerError::Unsupported { .. } => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Serves the device in this process until it is removed or signalled.
pub fn foreground(args: &CreateArgs, table: Table) -> Result<(), CliError> {
    init_logging();
    let ready: Option<File> = std::env::var(READY_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        // SAFETY: the parent handed us this fd for our exclusive use.
        .map(|fd| unsafe { File::from_raw_fd(fd) });
    if ready.is_some() {
        // Detached: hold no directory (and so no mount) busy.
        let _ = std::env::set_current_dir("/");
    }
    let ready = std::sync::Arc::new(std::sync::Mutex::new(ready));
    let json = args.json;
    let on_live = {
        let ready = ready.clone();
        move |live: &Live| {
            let text = serde_json::json!({
                "name": live_name(),
                "dev_id": live.dev_id,
                "bdev": live.bdev,
                "mode": live.mode.name(),
                "dax_note": live.dax_note,
            });
            // A Type=notify unit becomes ready exactly when the device is live.
            let status = format!("serving {}", live.bdev);
            let state = [
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&status),
            ];
            if let Err(e) = sd_notify::notify(&state) {
                tracing::warn!("sd_notify failed: {e}");
            }
            match ready.lock().expect("not poisoned").take() {
                Some(mut f) => {
                    let _ = writeln!(f, "ok {text}");
                }
                None => {
                    if let Some(note) = &live.dax_note {
                        eprintln!("rdm: {note}");
                    }
                    if json {
                        println!("{text}");
                    } else {
                        println!("{}", live.bdev);
                    }
                }
            }
        }
    };
    NAME.set(args.name.clone()).expect("set once");
    let cfg = Config {
        name: args.name.clone(),
        table,
        queues: args.queues,
        depth: args.depth,
        zero_copy: args.zero_copy,
        block_size: args.block_size,
        read_only: args.read_only,
        dax: args.dax,
        recovery: args.recovery,
        recover: args.recover,
        nbd_timeout: std::time::Duration::from_secs(args.nbd_timeout),
        batch_io: args.batch_io,
        io_threads: args.io_threads,
        scheduler: (args.scheduler != "kernel").then(|| args.scheduler.clone()),
    };
    server::serve(cfg, on_live).map_err(|e| {
        let code = exit_code(&e);
        if let Some(mut f) = ready.lock().expect("not poisoned").take() {
            let _ = writeln!(f, "err {code} {e}");
        }
        CliError {
            code,
            message: e.to_string(),
            context: None,
        }
    })
}

static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn live_name() -> &'static str {
    NAME.get().map(String::as_str).unwrap_or("")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Starts the server detached and waits until it reports.
pub fn detached(args: &CreateArgs, table: &Table) -> Result<(), CliError> {
    // The run directory checked and the log made 0600, not through a link.
    let log = control::open_log(&args.name)
        .map_err(|e| CliError::failed(format!("{}: {e}", args.name)))?;
    let (read_end, write_end) =
        std::io::pipe().map_err(|e| CliError::failed(format!("{}: pipe: {e}", args.name)))?;

    // The server runs from / (so that it holds no mount busy): hand it
    // absolute paths (NBD URIs stay as they are).
    let table = table.rewrite_paths(|p| {
        if rdm_ublk_server::nbd::uri::is_nbd(p) {
            return p.to_path_buf();
        }
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    });
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the rdm binary: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "create",
        &args.name,
        "--foreground",
        "--table",
        &table.to_string(),
    ])
    .args([
        "--queues",
        &args.queues.to_string(),
        "--depth",
        &args.depth.to_string(),
    ])
    .args(["--zero-copy", args.zero_copy.name()])
    .args(["--block-size", &args.block_size.to_string()])
    .args(["--dax", args.dax.name()])
    .args(["--recovery", args.recovery.name()])
    .args(["--nbd-timeout", &args.nbd_timeout.to_string()])
    .args(["--io-threads", &args.io_threads.to_string()])
    .args(["--scheduler", &args.scheduler])
    .env(READY_ENV, READY_FD.to_string())
    .stdin(Stdio::null())
    .stdout(
        log.try_clone()
            .map_err(|e| CliError::failed(e.to_string()))?,
    )
    .stderr(log);
    if args.read_only {
        cmd.arg("--read-only");
    }
    if args.recover {
        cmd.arg("--recover");
    }
    if args.batch_io {
        cmd.arg("--batch-io");
    }
    let wfd = write_end.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(wfd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::failed(format!("{}: cannot start the server: {e}", args.name)))?;
    drop(write_end);

    let mut line = String::new();
    let _ = BufReader::new(read_end).read_line(&mut line);
    let line = line.trim_end();
    if let Some(json) = line.strip_prefix("ok ") {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        if let Some(note) = v["dax_note"].as_str() {
            eprintln!("rdm: {note}");
        }
        // The server lives on after we exit; dropping the handle neither
        // waits for it nor kills it.
        drop(child);
        if args.json {
            println!("{json}");
        } else {
            println!("{}", v["bdev"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    // The server failed and is exiting: wait so that its cleanup is done
    // before we return.
    let status = child.wait().ok();
    let log_tail = control::read_log(&args.name).unwrap_or_default();
    // The message below says what the log would; leave no stray state.
    control::remove_log(&args.name);
    if let Some(rest) = line.strip_prefix("err ") {
        let (code, msg) = rest.split_once(' ').unwrap_or(("1", rest));
        return Err(CliError {
            code: code.parse().unwrap_or(exit::FAILED),
            message: msg.to_string(),
            context: None,
        });
    }
    Err(CliError::failed(format!(
        "{}: the server exited ({}) before the device was live",
        args.name,
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into()),
    ))
    .with_context(log_tail.lines().last().unwrap_or("").to_string()))
}

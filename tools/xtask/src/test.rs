//! `cargo xtask test`: host tests, then the rdm-tests integration test
//! binaries inside guests on each kernel (one boot per binary per kernel).

use crate::kernel::{self, Flavor};
use crate::sysroot;
use crate::util::{describe, workspace_root};
use crate::vm::{run_in_vm, Pmem, VmConfig};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest side of a boot that runs several test binaries.
const RUN_TESTS: &str = include_str!("../../vm/run-tests.sh");

pub struct TestOpts {
    pub kernels: Vec<Flavor>,
    pub host: bool,
    pub guest: bool,
    pub timeout: Duration,
    pub filter: Option<String>,
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn run_tests(opts: &TestOpts) -> Result<()> {
    let mut results: Vec<(String, Result<()>)> = Vec::new();
    if opts.host {
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        if let Some(f) = &opts.filter {
            c.args(["--", f]);
        }
        results.push(("host: cargo test --workspace".into(), status_ok(&mut c)));
        if opts.filter.is_none() {
            let fuzz = crate::fuzz::run(&[], Duration::from_secs(15));
            results.push(("host: cargo xtask fuzz (3 × 15 s)".into(), fuzz));
        }
    }
    if opts.guest {
        let built = build_test_binaries()?;
        // Guests run private copies: rebuilding while they run (the host
        // shares the tree over 9p) must not swap a binary under them.
        let private = workspace_root().join(format!("target/vm/bin/{}", std::process::id()));
        let _cleanup = RemoveOnDrop(private.clone());
        let copy = |from: &PathBuf| -> Result<PathBuf> {
            std::fs::create_dir_all(&private)?;
            let to = private.join(from.file_name().context("a file name")?);
            std::fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
            Ok(to)
        };
        let rdm_bin = copy(&workspace_root().join("target/debug/rdm"))?;
        let mut exes = Vec::new();
        for (name, exe) in &built {
            exes.push((name.clone(), copy(exe)?));
        }
        let script = private.join("run-tests.sh");
        std::fs::write(&script, RUN_TESTS)?;
        let tests_dir = workspace_root().join("tests");
        // The systemd tests install the package, as a user would.
        const SYSTEMD_TESTS: [&str; 2] = [
            "unit_serves_restarts_recovers_and_stops_under_systemd",
            "users_create_use_and_remove_only_their_own_devices",
        ];
        let systemd_wanted = exes.iter().any(|(n, _)| n == "systemd")
            && opts
                .filter
                .as_ref()
                .is_none_or(|f| SYSTEMD_TESTS.iter().any(|t| t.contains(f.as_str())));
        let deb = if systemd_wanted {
            Some(crate::deb::build().map_err(|e| format!("{e:#}")))
        } else {
            None
        };
        let deb_path = match &deb {
            Some(Ok(p)) => p.display().to_string(),
            _ => String::new(),
        };
        // The kernels and the systemd root first; then each kernel's guests
        // run in a thread of their own, side by side (a guest keeps about one
        // of the host's CPUs busy), their console lines prefixed.
        let kernels = opts
            .kernels
            .iter()
            .map(|&f| kernel::ensure(f, false).map(|k| (f, k)))
            .collect::<Result<Vec<_>>>()?;
        let sysroot_ready: Option<Result<PathBuf, String>> = deb.as_ref().map(|d| match d {
            Ok(_) => sysroot::ensure().map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("cargo xtask deb: {e}")),
        });
        let side_by_side = kernels.len() > 1;
        let per_kernel = |flavor: Flavor, k: &kernel::Kernel| -> Vec<(String, Result<()>)> {
            let mut results: Vec<(String, Result<()>)> = Vec::new();
            let prefix = side_by_side.then(|| format!("[{}] ", flavor.name()));
            let pfx = prefix.clone().unwrap_or_default();
            // One guest run: `argv` with the tests' environment (plus `env`).
            let boot = |argv: Vec<String>,
                        env: Vec<(String, String)>,
                        pmem: Vec<Pmem>,
                        sysroot: Option<PathBuf>,
                        timeout: Duration| {
                let mut env_all = vec![
                    // Under xtask a skipped ublk test is a failure.
                    ("RDM_REQUIRE_UBLK".to_string(), "1".to_string()),
                    ("RDM_BIN".into(), rdm_bin.display().to_string()),
                    ("RUST_BACKTRACE".into(), "1".into()),
                    ("RDM_DEB".into(), deb_path.clone()),
                ];
                env_all.extend(env);
                let cfg = VmConfig {
                    kernel: k.clone(),
                    prefix: prefix.clone(),
                    pmem,
                    icount: false,
                    timeout,
                    env: env_all,
                    // cargo runs integration tests from the package dir.
                    cwd: tests_dir.clone(),
                    argv,
                    stdin_null: true,
                    sysroot,
                };
                match run_in_vm(&cfg) {
                    Ok(0) => Ok(()),
                    Ok(code) => Err(anyhow::anyhow!("exit status {code}")),
                    Err(e) => Err(e),
                }
            };
            // One test binary in a guest of its own.
            let guest = |label: String,
                         exe: &PathBuf,
                         args: &[&str],
                         pmem: Vec<Pmem>,
                         sysroot: Option<PathBuf>| {
                eprintln!("\n{p}=== {label}", p = pfx);
                let mut argv = vec![
                    exe.display().to_string(),
                    "--test-threads=1".into(),
                    // What passing tests print (timings the note reports) stays in the log.
                    "--show-output".into(),
                ];
                argv.extend(args.iter().map(|a| a.to_string()));
                let start = Instant::now();
                let r = boot(argv, Vec::new(), pmem, sysroot, opts.timeout);
                (
                    format!("{label} [{:.0} s]", start.elapsed().as_secs_f64()),
                    r,
                )
            };
            let kname = format!("guest {} ({})", flavor.name(), k.kver);
            // Every binary but systemd's (which needs systemd as PID 1,
            // booted below) in one boot: a boot costs ~20 s of TCG time.
            // A guest that dies (a kernel panic, the time limit) leaves the
            // rest to one more boot.
            let mut todo: Vec<&(String, PathBuf)> =
                exes.iter().filter(|(n, _)| n != "systemd").collect();
            for attempt in 1..=2 {
                if todo.is_empty() {
                    break;
                }
                let names: Vec<&str> = todo.iter().map(|(n, _)| n.as_str()).collect();
                eprintln!("\n{pfx}=== {kname}: {}", names.join(", "));
                let results_file = private.join(format!("results-{}-{attempt}", flavor.name()));
                if let Err(e) = std::fs::write(&results_file, "") {
                    results.push((
                        format!("{kname}: {}", results_file.display()),
                        Err(e.into()),
                    ));
                    return results;
                }
                let mut argv = vec![
                    "/bin/sh".to_string(),
                    script.display().to_string(),
                    results_file.display().to_string(),
                    opts.timeout.as_secs().to_string(),
                ];
                for (n, exe) in &todo {
                    argv.push(n.clone());
                    argv.push(exe.display().to_string());
                }
                let env: Vec<(String, String)> = opts
                    .filter
                    .iter()
                    .map(|f| ("RDM_TEST_FILTER".to_string(), f.clone()))
                    .collect();
                // Two NVDIMMs: enough for fsdax and devdax at once.
                let pmem = vec![Pmem::Fresh(512 << 20), Pmem::Fresh(512 << 20)];
                let limit = opts.timeout * u32::try_from(todo.len()).unwrap_or(u32::MAX);
                let run = boot(argv, env, pmem, None, limit);
                let done = std::fs::read_to_string(&results_file).unwrap_or_default();
                for line in done.lines() {
                    let mut f = line.split_whitespace();
                    let (Some(name), Some(status), Some(secs)) = (f.next(), f.next(), f.next())
                    else {
                        continue;
                    };
                    let r = match status {
                        "0" => Ok(()),
                        "124" | "137" => Err(anyhow::anyhow!(
                            "timed out after {} s (raise it with --timeout)",
                            opts.timeout.as_secs()
                        )),
                        s => Err(anyhow::anyhow!("exit status {s}")),
                    };
                    results.push((format!("{kname}: {name} [{secs} s]"), r));
                    todo.retain(|(n, _)| n != name);
                }
                if let Err(e) = &run {
                    if !todo.is_empty() {
                        eprintln!("{pfx}xtask: the guest died ({e:#}); not run: {}", {
                            let n: Vec<&str> = todo.iter().map(|(n, _)| n.as_str()).collect();
                            n.join(", ")
                        });
                    }
                }
                if attempt == 2 || run.is_ok() {
                    let why = run.err().map(|e| format!("{e:#}"));
                    for (n, _) in todo.drain(..) {
                        let e = why.clone().unwrap_or_else(|| "never ran".into());
                        results.push((format!("{kname}: {n}"), Err(anyhow::anyhow!(e))));
                    }
                }
            }
            // The unit and the udev rule under real systemd and udev.
            let systemd = exes.iter().find(|(n, _)| n == "systemd");
            if let Some(((_, exe), deb)) = systemd.zip(deb.as_ref()) {
                let label = format!("{kname}: systemd");
                let ready = match sysroot_ready.as_ref() {
                    Some(Ok(root)) => Ok(root.clone()),
                    Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
                    None => Err(anyhow::anyhow!("cargo xtask deb: {deb:?}")),
                };
                match ready {
                    Ok(root) => {
                        let args = ["--ignored"];
                        results.push(guest(label, exe, &args, Vec::new(), Some(root)));
                    }
                    Err(e) => results.push((label, Err(e))),
                }
            }
            // Persistence: write and power off hard in one boot, check in the
            // next, on the same pmem image.
            let wanted = opts
                .filter
                .as_ref()
                .is_none_or(|f| "persist".contains(f.as_str()));
            if let Some((_, exe)) = exes
                .iter()
                .find(|(n, _)| n == "dax_daemon")
                .filter(|_| wanted)
            {
                let img =
                    workspace_root().join(format!("target/vm/pmem/persist-{}.img", flavor.name()));
                let fresh = std::fs::create_dir_all(img.parent().expect("has a parent"))
                    .and_then(|()| std::fs::File::create(&img))
                    .and_then(|f| f.set_len(512 << 20));
                if let Err(e) = fresh {
                    results.push((
                        format!("{kname}: persistence"),
                        Err(anyhow::anyhow!("{}: {e}", img.display())),
                    ));
                    return results;
                }
                for phase in [
                    "persist_phase1_write_then_hard_stop",
                    "persist_phase2_verify",
                ] {
                    let (label, r) = guest(
                        format!("{kname}: dax_daemon {phase}"),
                        exe,
                        &["--ignored", "--exact", phase],
                        vec![Pmem::Image(img.clone())],
                        None,
                    );
                    let failed = r.is_err();
                    results.push((label, r));
                    if failed {
                        break;
                    }
                }
            }
            results
        };
        let runs: Vec<Vec<(String, Result<()>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = kernels
                .iter()
                .map(|(f, k)| {
                    let per_kernel = &per_kernel;
                    s.spawn(move || per_kernel(*f, k))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a guest thread panicked"))
                .collect()
        });
        for r in runs {
            results.extend(r);
        }
    }
    eprintln!("\n=== summary");
    let mut failed = 0;
    for (label, r) in &results {
        match r {
            Ok(()) => eprintln!("ok      {label}"),
            Err(e) => {
                failed += 1;
                eprintln!("FAILED  {label}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} test runs failed", results.len());
    }
    Ok(())
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// Builds the workspace binaries (the guest runs target/debug/rdm) and the
/// rdm-tests integration test binaries; returns (test name, executable).
fn build_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    status_ok(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "rdm-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ])
    .stdout(Stdio::piped());
    let out = c
        .output()
        .with_context(|| format!("cannot start `{}`", describe(&c)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(&c), out.status);
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        // Only tests/tests/*.rs, not the library's own unit tests.
        if msg["target"]["kind"][0] != "test" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if exes.is_empty() {
        bail!("`{}` built no integration test binaries", describe(&c));
    }
    exes.sort();
    Ok(exes)
}

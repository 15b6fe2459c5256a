//! Developer tasks for rdm: `cargo xtask vm`, `cargo xtask test`,
//! `cargo xtask demo`, `cargo xtask fuzz`, `cargo xtask ensure-deps`,
//! `cargo xtask fetch-kernels`.

mod bench;
mod deb;
mod deps;
mod fuzz;
mod kernel;
mod plot;
mod sysroot;
mod test;
mod util;
mod vm;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kernel::Flavor;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rdm developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest (qemu TCG), run CMD in the current directory with the
    /// host's binaries, exit with CMD's status.
    Vm {
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: Flavor,
        /// Add an emulated NVDIMM backed by a fresh image of SIZE (e.g. 512M),
        /// deleted after the run. Repeatable.
        #[arg(long, value_name = "SIZE", value_parser = util::parse_size)]
        pmem: Vec<u64>,
        /// Add an NVDIMM backed by an existing image (reused as-is, after
        /// any --pmem ones). Repeatable.
        #[arg(long, value_name = "PATH")]
        pmem_image: Vec<PathBuf>,
        /// One vCPU with instruction-counted time (deterministic benchmarks).
        #[arg(long)]
        icount: bool,
        /// Boot systemd (and udev) as PID 1 from a Debian root made with
        /// debootstrap (cached in target/vm/sysroot); CMD runs as a service.
        #[arg(long)]
        systemd: bool,
        /// Kill the guest after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 1200)]
        timeout: u64,
        /// Extra environment for CMD (NAME=VALUE, or NAME to copy it from
        /// here). PATH, HOME, TERM, USER, RUST_BACKTRACE, RUST_LOG and RDM_*
        /// are always passed.
        #[arg(long, value_name = "NAME[=VALUE]")]
        env: Vec<String>,
        #[arg(required = true, last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Host tests, then the rdm-tests integration tests in guests.
    Test {
        #[arg(long, value_enum, default_value = "all")]
        kernel: KernelSel,
        #[arg(long, conflicts_with = "guest_only")]
        host_only: bool,
        #[arg(long)]
        guest_only: bool,
        /// Per-guest timeout.
        #[arg(long, value_name = "SECS", default_value_t = 1200)]
        timeout: u64,
        /// Test name filter, passed to the test binaries.
        filter: Option<String>,
    },
    /// The demo: on a host with ublk it runs here, otherwise in a guest on
    /// the newest kernel with emulated pmem (tools/demo.sh).
    Demo {
        #[arg(long, value_enum, default_value = "latest")]
        kernel: Flavor,
    },
    /// Benchmarks: fio over rdm, kernel dm and rublk in one instruction-
    /// counted guest boot (tools/fio/*.fio); results in target/bench/.
    /// With --host: the io core alone on this host against fio.
    Bench {
        #[arg(long, value_enum, default_value = "latest")]
        kernel: Flavor,
        /// Runs per (row, workload); the table shows the median and min–max.
        #[arg(long, value_name = "N")]
        reps: Option<u32>,
        /// Short runs, one rep: finishes in under 10 minutes.
        #[arg(long)]
        quick: bool,
        /// Only the runs whose `ROW/WORKLOAD` contains PATTERN (several:
        /// comma-separated), e.g. `rdm-linear`, `qd32`, `dm-linear/read-64k`.
        #[arg(long, value_name = "PATTERN")]
        only: Option<String>,
        /// The host-side benchmark of the io core (no ublk, no guest).
        #[arg(long)]
        host: bool,
        /// Another rdm binary (e.g. a build of the previous commit): every
        /// rdm row also runs with it in the same boot, as `was-ROW`, with
        /// its ratio to ROW: before/after that counts.
        #[arg(long, value_name = "RDM")]
        baseline: Option<std::path::PathBuf>,
        /// Guest timeout.
        #[arg(long, value_name = "SECS", default_value_t = 7200)]
        timeout: u64,
        /// Internal: the part that runs inside the guest.
        #[arg(long, hide = true)]
        in_guest: bool,
        /// Only rebuild the report (md, svg, json) from the last runs.
        #[arg(long)]
        report_only: bool,
        /// Multi-queue scaling instead: two vCPUs without icount (noisy:
        /// medians of 5 reps by default), kernel dm against rdm with one
        /// and two queues, two fio jobs at once.
        #[arg(long)]
        smp: bool,
        /// A name for this run's files (target/bench/*-KERNEL-TAG.*), so
        /// that two runs can go at once.
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
    },
    /// Fuzz smoke: each cargo-fuzz target (fuzz/) for SECS seconds over
    /// its committed corpus; fails on a crash.
    Fuzz {
        #[arg(long, value_name = "SECS", default_value_t = 15)]
        secs: u64,
        /// Targets to run (table, control, state); all by default.
        targets: Vec<String>,
    },
    /// Build the Debian package (target/debian/rdm_VERSION_ARCH.deb): the
    /// binary, the systemd unit, the udev rule, the man page, completions
    /// and a modules-load.d entry for ublk_drv.
    Deb,
    /// Install the host packages the rig needs.
    EnsureDeps,
    /// Fetch the guest kernels (done on first use anyway).
    FetchKernels {
        #[arg(long, value_enum, default_value = "all")]
        kernel: KernelSel,
        /// Look for newer packages even if a kernel is cached.
        #[arg(long)]
        refresh: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelSel {
    #[value(name = "6.12")]
    V6_12,
    Latest,
    All,
}

impl KernelSel {
    fn flavors(self) -> Vec<Flavor> {
        match self {
            KernelSel::V6_12 => vec![Flavor::V6_12],
            KernelSel::Latest => vec![Flavor::Latest],
            KernelSel::All => vec![Flavor::V6_12, Flavor::Latest],
        }
    }
}

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> Result<i32> {
    match Cli::parse().cmd {
        Cmd::Vm {
            kernel,
            pmem,
            pmem_image,
            icount,
            systemd,
            timeout,
            env,
            cmd,
        } => {
            deps::ensure_host_packages()?;
            let mut pm: Vec<vm::Pmem> = pmem.into_iter().map(vm::Pmem::Fresh).collect();
            pm.extend(pmem_image.into_iter().map(vm::Pmem::Image));
            let cfg = vm::VmConfig {
                kernel: kernel::ensure(kernel, false)?,
                pmem: pm,
                icount,
                timeout: Duration::from_secs(timeout),
                env: env.iter().map(|e| parse_env(e)).collect::<Result<_>>()?,
                cwd: std::env::current_dir().context("cannot get the current directory")?,
                stdin_null: systemd,
                argv: cmd,
                prefix: None,
                sysroot: if systemd {
                    Some(sysroot::ensure()?)
                } else {
                    None
                },
            };
            vm::run_in_vm(&cfg)
        }
        Cmd::Test {
            kernel,
            host_only,
            guest_only,
            timeout,
            filter,
        } => {
            deps::ensure_host_packages()?;
            test::run_tests(&test::TestOpts {
                kernels: kernel.flavors(),
                host: !guest_only,
                guest: !host_only,
                timeout: Duration::from_secs(timeout),
                filter,
            })?;
            Ok(0)
        }
        Cmd::Demo { kernel } => demo(kernel),
        Cmd::Bench {
            kernel,
            reps,
            quick,
            only,
            host,
            baseline,
            timeout,
            in_guest,
            report_only,
            smp,
            tag,
        } => bench::run_bench(&bench::BenchOpts {
            kernel,
            reps,
            quick,
            only,
            host,
            baseline,
            in_guest,
            report_only,
            smp,
            tag,
            timeout: Duration::from_secs(timeout),
        }),
        Cmd::Fuzz { secs, targets } => {
            fuzz::run(&targets, Duration::from_secs(secs))?;
            Ok(0)
        }
        Cmd::Deb => {
            let deb = deb::build()?;
            println!("{}", deb.display());
            Ok(0)
        }
        Cmd::EnsureDeps => {
            deps::ensure_host_packages()?;
            Ok(0)
        }
        Cmd::FetchKernels { kernel, refresh } => {
            deps::ensure_host_packages()?;
            for f in kernel.flavors() {
                let k = kernel::ensure(f, refresh)?;
                println!("{}: {} ({})", f.name(), k.kver, k.vmlinuz.display());
            }
            Ok(0)
        }
    }
}

fn demo(kernel: Flavor) -> Result<i32> {
    // libclang (bindgen, for libublk) first: the build below needs it.
    deps::ensure_host_packages()?;
    let root = util::workspace_root();
    let status = std::process::Command::new("cargo")
        .args(["build", "--quiet", "-p", "rdm"])
        .current_dir(&root)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("building rdm failed");
    }
    let script = root.join("tools/demo.sh");
    if std::path::Path::new("/dev/ublk-control").exists() {
        let status = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .context("cannot run tools/demo.sh")?;
        return Ok(status.code().unwrap_or(1));
    }
    println!(
        "no /dev/ublk-control here: running the demo in a guest ({})",
        kernel.name()
    );
    let cfg = vm::VmConfig {
        kernel: kernel::ensure(kernel, false)?,
        pmem: vec![vm::Pmem::Fresh(512 << 20)],
        icount: false,
        timeout: Duration::from_secs(600),
        env: Vec::new(),
        cwd: root.clone(),
        argv: vec!["bash".into(), script.display().to_string()],
        stdin_null: true,
        sysroot: None,
        prefix: None,
    };
    vm::run_in_vm(&cfg)
}

/// `NAME=VALUE`, or `NAME` to copy the variable from our environment.
fn parse_env(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some(("", _)) => bail!("bad --env {s:?}: empty name"),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => Ok((s.to_string(), std::env::var(s).unwrap_or_default())),
    }
}

//! `cargo xtask bench`: fio over rdm and its kernel peers, all in one guest
//! boot with instruction-counted time, so the ratios between rows are
//! repeatable (absolute numbers are not: they are TCG's).
//!
//! The host side builds rdm (release), boots the guest once and re-runs this
//! same xtask binary inside it (`bench --in-guest`). The guest side prepares
//! backing files on tmpfs and on an emulated NVDIMM, sets each row up in
//! turn, runs the job files of `tools/fio/` against it and appends every run
//! to `target/bench/runs-KERNEL.json` as it goes. Back on the host the runs
//! become a markdown table of medians (with min–max over reps and the ratio
//! to the row's kernel baseline) and an SVG chart.
//!
//! `cargo xtask bench --host` instead runs `ublk-server/examples/io_bench.rs`:
//! the io core alone on this host against fio, no ublk involved.

use crate::kernel::{self, Flavor};
use crate::util::{describe, output, run, workspace_root};
use crate::{deps, vm};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The fio workloads, in table order: (id, job file in tools/fio, label).
pub const WORKLOADS: &[(&str, &str)] = &[
    ("randread-4k-qd32", "4k randread QD32"),
    ("randwrite-4k-qd32", "4k randwrite QD32"),
    ("randread-4k-qd1", "4k randread QD1"),
    ("read-64k-qd8", "64k read QD8"),
    ("write-64k-qd8", "64k write QD8"),
    ("read-512k-qd4", "512k read QD4"),
];

/// `--smp`: the scaling workloads, two fio jobs of QD32 each.
pub const SMP_WORKLOADS: &[(&str, &str)] = &[
    ("randread-4k-2x32", "4k randread 2 jobs × QD32"),
    ("randwrite-4k-2x32", "4k randwrite 2 jobs × QD32"),
    ("read-64k-2x8", "64k read 2 jobs × QD8"),
];

/// Size of every device under test (tools/fio/*.fio say size=128m).
const DEV_BYTES: u64 = 128 << 20;
const DEV_SECTORS: u64 = DEV_BYTES >> 9;
/// Striped rows: 4 stripes of 64 KiB chunks, as dm-stripe takes them.
const STRIPES: u64 = 4;
const CHUNK_SECTORS: u64 = 128;
/// The emulated NVDIMM (fsdax namespace, then ext4 -o dax on it).
const PMEM_BYTES: u64 = 512 << 20;

pub struct BenchOpts {
    pub kernel: Flavor,
    pub reps: Option<u32>,
    pub quick: bool,
    pub only: Option<String>,
    pub host: bool,
    /// An rdm binary to run every rdm row with as well (`was-ROW`).
    pub baseline: Option<PathBuf>,
    pub in_guest: bool,
    /// Only re-render the report from the last runs file.
    pub report_only: bool,
    /// Two vCPUs without icount: the multi-queue scaling rows.
    pub smp: bool,
    /// Suffix of this run's file names.
    pub tag: Option<String>,
    pub timeout: Duration,
}

impl BenchOpts {
    fn reps(&self) -> u32 {
        let default = match (self.smp, self.quick) {
            (true, _) => 5,
            (false, true) => 1,
            (false, false) => 3,
        };
        self.reps.unwrap_or(default).max(1)
    }

    /// The runs/report file stem: the kernel, and `-smp2` for scaling runs.
    fn stem(&self) -> String {
        let mut s = self.kernel.name().to_string();
        if self.smp {
            s.push_str("-smp2");
        }
        if let Some(t) = &self.tag {
            s.push('-');
            s.push_str(t);
        }
        s
    }

    fn workloads(&self) -> &'static [(&'static str, &'static str)] {
        if self.smp {
            SMP_WORKLOADS
        } else {
            WORKLOADS
        }
    }
    /// fio runtime and ramp, in guest (instruction-counted) time.
    fn runtime(&self) -> (&'static str, &'static str) {
        if self.quick {
            ("500ms", "50ms")
        } else {
            ("4", "1")
        }
    }
}

fn out_dir() -> PathBuf {
    workspace_root().join("target").join("bench")
}

pub fn run_bench(o: &BenchOpts) -> Result<i32> {
    if o.in_guest {
        return guest::main(o);
    }
    if o.host {
        return host_bench(o);
    }
    if o.report_only {
        let runs = out_dir().join(format!("runs-{}.json", o.stem()));
        write_report(o, &runs, None)?;
        return Ok(0);
    }
    deps::ensure_host_packages()?;
    let root = workspace_root();
    let dir = out_dir();
    fs::create_dir_all(&dir)?;
    let t0 = Instant::now();
    println!("bench: building rdm (release)");
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "rdm"])
        .current_dir(&root))?;
    // A private copy: other work may rebuild target/release/rdm meanwhile.
    let rdm_bin = dir.join(format!("rdm-{}", o.stem()));
    let _ = fs::remove_file(&rdm_bin);
    fs::copy(root.join("target/release/rdm"), &rdm_bin).context("cannot copy the rdm binary")?;
    let rublk_note = ensure_rublk(&dir);
    // A private NVDIMM image too: target/vm/pmem/pmemN.img is rewritten by
    // every other guest boot with --pmem, which would SIGBUS this qemu.
    let pmem_img = dir.join(format!("pmem-{}.img", o.stem()));
    {
        let f = fs::File::create(&pmem_img)
            .with_context(|| format!("cannot create {}", pmem_img.display()))?;
        f.set_len(PMEM_BYTES)?;
    }
    let k = kernel::ensure(o.kernel, false)?;
    let runs_file = dir.join(format!("runs-{}.json", o.stem()));
    let _ = fs::remove_file(&runs_file);
    // The guest runs a private copy: rebuilding xtask meanwhile (the tree
    // is shared over 9p) must not swap the binary under it.
    let exe = dir.join(format!("xtask-{}", o.stem()));
    let _ = fs::remove_file(&exe);
    fs::copy(
        std::env::current_exe().context("cannot find the xtask binary")?,
        &exe,
    )
    .context("cannot copy the xtask binary")?;
    let mut argv = vec![
        exe.display().to_string(),
        "bench".into(),
        "--in-guest".into(),
        "--kernel".into(),
        o.kernel.name().into(),
        "--reps".into(),
        o.reps().to_string(),
    ];
    if o.quick {
        argv.push("--quick".into());
    }
    if o.smp {
        argv.push("--smp".into());
    }
    if let Some(p) = &o.only {
        argv.extend(["--only".into(), p.clone()]);
    }
    let mut env = vec![
        ("RDM_BENCH_OUT".to_string(), runs_file.display().to_string()),
        ("RDM_BENCH_RDM".to_string(), rdm_bin.display().to_string()),
    ];
    if let Some(b) = &o.baseline {
        // A private copy, like rdm's own.
        let copy = dir.join(format!("rdm-baseline-{}", o.stem()));
        let _ = fs::remove_file(&copy);
        fs::copy(b, &copy).with_context(|| format!("cannot copy {}", b.display()))?;
        env.push(("RDM_BENCH_BASELINE".to_string(), copy.display().to_string()));
    }
    if let Some(n) = rublk_note {
        env.push(("RDM_BENCH_RUBLK_UNAVAILABLE".into(), n));
    }
    println!(
        "bench: booting Linux {} ({}) {}; {} rep(s) per run",
        o.kernel.name(),
        k.kver,
        if o.smp {
            "with two vCPUs, no icount"
        } else {
            "with --icount"
        },
        o.reps()
    );
    let cfg = vm::VmConfig {
        kernel: k,
        pmem: vec![vm::Pmem::Image(pmem_img)],
        icount: !o.smp,
        timeout: o.timeout,
        env,
        cwd: root.clone(),
        argv,
        stdin_null: true,
        sysroot: None,
        prefix: None,
    };
    let status = vm::run_in_vm(&cfg)?;
    write_report(o, &runs_file, Some(t0.elapsed().as_secs_f64()))?;
    if status != 0 {
        bail!("the guest side of the benchmark failed (status {status})");
    }
    Ok(0)
}

/// target/bench/bench-KERNEL.{json,md,svg} from the guest's runs file.
fn write_report(o: &BenchOpts, runs_file: &Path, wall: Option<f64>) -> Result<()> {
    let dir = out_dir();
    let doc: Value = serde_json::from_str(
        &fs::read_to_string(runs_file)
            .with_context(|| format!("the guest wrote no {}", runs_file.display()))?,
    )?;
    let (md, chart) = report(&doc, o.kernel.name());
    let name = format!("bench-{}", o.stem());
    let mut full = doc.clone();
    if let Some(w) = wall {
        full["wall_seconds"] = json!(w);
    }
    fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&full)?,
    )?;
    fs::write(dir.join(format!("{name}.md")), &md)?;
    chart.write(
        &dir.join(format!("{name}.svg")),
        &dir.join(format!("{name}.png")),
    )?;
    println!("\n{md}");
    if let Some(w) = wall {
        println!("bench: done in {w:.0} s wall");
    }
    println!("bench: wrote {}/{name}.{{json,md,svg,png}}", dir.display());
    // A full run of the newest kernel is what the README shows.
    if o.only.is_none() && o.kernel == Flavor::Latest && !o.report_only && !o.smp && o.tag.is_none()
    {
        let docs = workspace_root().join("docs/bench-latest.png");
        fs::copy(dir.join(format!("{name}.png")), &docs)
            .with_context(|| format!("cannot update {}", docs.display()))?;
        println!("bench: updated {}", docs.display());
    }
    Ok(())
}

/// rublk (GPL, run only, never linked) into target/bench/rublk; returns why
/// it is unavailable, if it is.
fn ensure_rublk(dir: &Path) -> Option<String> {
    let root = dir.join("rublk");
    if root.join("bin/rublk").exists() {
        return None;
    }
    println!("bench: cargo install rublk (the peer row)");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "--quiet",
        "rublk",
        "--no-default-features",
        "--root",
    ])
    .arg(&root);
    match cmd.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`{}` failed ({s})", describe(&cmd))),
        Err(e) => Some(format!("cannot run cargo install: {e}")),
    }
}

// ---------------------------------------------------------------- report

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

struct Cell {
    med: f64,
    min: f64,
    max: f64,
    lat_us: f64,
    p99_us: f64,
}

/// Medians per (row, workload), in the rows' run order.
/// (row, baseline) pairs in run order, and the cells by (row, workload).
type Cells = (Vec<(String, String)>, BTreeMap<(String, String), Cell>);

fn cells(doc: &Value) -> Cells {
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in doc["rows"].as_array().into_iter().flatten() {
        let id = r["id"].as_str().unwrap_or("").to_string();
        let base = r["baseline"].as_str().unwrap_or("").to_string();
        if !rows.iter().any(|(i, _)| *i == id) {
            rows.push((id, base));
        }
    }
    let mut acc: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for run in doc["runs"].as_array().into_iter().flatten() {
        let k = (
            run["row"].as_str().unwrap_or("").to_string(),
            run["workload"].as_str().unwrap_or("").to_string(),
        );
        acc.entry(k).or_default().push(run);
    }
    let mut out = BTreeMap::new();
    for (k, runs) in acc {
        let f = |key: &str| -> Vec<f64> { runs.iter().filter_map(|r| r[key].as_f64()).collect() };
        let mut iops = f("iops");
        if iops.is_empty() {
            continue;
        }
        let min = iops.iter().copied().fold(f64::INFINITY, f64::min);
        let max = iops.iter().copied().fold(0.0, f64::max);
        out.insert(
            k,
            Cell {
                med: median(&mut iops),
                min,
                max,
                lat_us: median(&mut f("lat_mean_us")),
                p99_us: median(&mut f("lat_p99_us")),
            },
        );
    }
    (rows, out)
}

fn ratio(c: &BTreeMap<(String, String), Cell>, row: &str, base: &str, wl: &str) -> Option<f64> {
    let a = c.get(&(row.to_string(), wl.to_string()))?;
    let b = c.get(&(base.to_string(), wl.to_string()))?;
    (b.med > 0.0).then(|| a.med / b.med)
}

/// The markdown report and the SVG chart of one kernel's runs.
pub fn report(doc: &Value, flavor: &str) -> (String, crate::plot::Chart) {
    let (rows, c) = cells(doc);
    let workloads = doc_workloads(doc);
    let kver = doc["kernel"].as_str().unwrap_or("?");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Linux {kver} (`--kernel {flavor}`), {} rep(s), runs of {} of guest time{}\n",
        doc["reps"],
        doc["runtime"].as_str().unwrap_or("?"),
        if doc["quick"].as_bool() == Some(true) {
            " (--quick)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "IOPS, median (min–max over reps) and ×: the ratio to the row's kernel baseline.\n"
    );
    let mut head = "| row | vs |".to_string();
    let mut rule = "| --- | --- |".to_string();
    for (_, label) in &workloads {
        let _ = write!(head, " {label} |");
        rule.push_str(" ---: |");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for (row, base) in &rows {
        // Rows that did not run (--only) stay out of the table.
        if !workloads
            .iter()
            .any(|(wl, _)| c.contains_key(&(row.clone(), wl.clone())))
        {
            continue;
        }
        let mut line = format!("| {row} | {} |", if base == row { "—" } else { base });
        for (wl, _) in &workloads {
            match c.get(&(row.clone(), wl.to_string())) {
                Some(x) => {
                    let spread = if x.max > x.min {
                        format!(" ({}–{})", si(x.min), si(x.max))
                    } else {
                        String::new()
                    };
                    let r = match ratio(&c, row, base, wl) {
                        Some(r) if base != row => format!(" **{r:.2}×**"),
                        _ => String::new(),
                    };
                    let _ = write!(line, " {}{spread}{r} |", si(x.med));
                }
                None => line.push_str(" — |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let measured: Vec<_> = goals(&c)
        .into_iter()
        .filter(|(_, v, _)| v.is_some())
        .collect();
    if !measured.is_empty() {
        let _ = writeln!(md, "\nGoals (ratios of medians in this boot):\n\n| goal | measured | target | met |\n| --- | ---: | ---: | --- |");
        for (what, v, target) in measured {
            let v = v.expect("measured");
            let met = if v >= target { "yes" } else { "**no**" };
            let _ = writeln!(md, "| {what} | {v:.2} | {target:.2} | {met} |");
        }
    }
    let _ = writeln!(
        md,
        "\nQD1 latency (4k randread), guest µs: mean / p99\n\n| row | mean | p99 |\n| --- | ---: | ---: |"
    );
    for (row, _) in &rows {
        if let Some(x) = c.get(&(row.clone(), "randread-4k-qd1".to_string())) {
            let _ = writeln!(md, "| {row} | {:.1} | {:.1} |", x.lat_us, x.p99_us);
        }
    }
    let stalls: Vec<&Value> = doc["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["lat_mean_us"].as_f64().unwrap_or(0.0) > 100_000.0)
        .collect();
    if !stalls.is_empty() {
        let _ = writeln!(
            md,
            "\nStalled runs (mean latency over 100 ms of guest time; they drag their medians down):\n"
        );
        for r in stalls {
            let _ = writeln!(
                md,
                "- {} {} rep {}: {:.1} IOPS, mean latency {:.2} s",
                r["row"].as_str().unwrap_or("?"),
                r["workload"].as_str().unwrap_or("?"),
                r["rep"],
                r["iops"].as_f64().unwrap_or(0.0),
                r["lat_mean_us"].as_f64().unwrap_or(0.0) / 1e6
            );
        }
    }
    let unavailable: Vec<&Value> = doc["unavailable"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !unavailable.is_empty() {
        let _ = writeln!(md, "\nUnavailable rows:\n");
        for u in unavailable {
            let _ = writeln!(
                md,
                "- {}: {}",
                u["row"].as_str().unwrap_or("?"),
                u["reason"].as_str().unwrap_or("?")
            );
        }
    }
    (md, chart(&rows, &c, kver, &workloads))
}

/// The workloads a runs file has: as the guest recorded them (`--smp`
/// runs have their own), else the standard ones.
fn doc_workloads(doc: &Value) -> Vec<(String, String)> {
    match doc["workloads"].as_array() {
        Some(a) => a
            .iter()
            .map(|w| {
                (
                    w[0].as_str().unwrap_or("").to_string(),
                    w[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
        None => WORKLOADS
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

/// The grouped bar chart: per workload, each non-baseline row's ratio to
/// its baseline, with lines at 1.0 and at the 1.05 goal.
fn chart(
    rows: &[(String, String)],
    c: &BTreeMap<(String, String), Cell>,
    kver: &str,
    workloads: &[(String, String)],
) -> crate::plot::Chart {
    crate::plot::Chart {
        title: format!("rdm bench, Linux {kver}: IOPS ratio to the baseline row (icount guest)"),
        groups: workloads.iter().map(|(_, l)| l.to_string()).collect(),
        series: rows
            .iter()
            .filter(|(r, b)| r != b)
            .map(|(r, b)| crate::plot::Series {
                label: format!("{r} / {b}"),
                values: workloads.iter().map(|(wl, _)| ratio(c, r, b, wl)).collect(),
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect(),
        goals: vec![
            (0.65, "rdm / kernel dm at 4 KiB".into()),
            (1.0, "zero copy at 64k+, DAX / io_uring".into()),
            (1.25, "rdm / rublk at 4 KiB".into()),
        ],
    }
}

/// The goals of the per-request work (issue 13), as measured: each a
/// ratio of the best matching rows, the target, and whether it is met.
fn goals(c: &BTreeMap<(String, String), Cell>) -> Vec<(String, Option<f64>, f64)> {
    let best = |rows: &[&str], wl: &str| -> Option<f64> {
        rows.iter()
            .filter_map(|r| c.get(&(r.to_string(), wl.to_string())))
            .map(|x| x.med)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
    };
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let rdm = ["rdm-linear-copy", "rdm-linear-zc", "rdm-linear-batch"];
    let rublk = ["rublk-loop", "rublk-loop-zc"];
    let mut g = Vec::new();
    for (wl, label) in [
        ("randread-4k-qd32", "4k randread QD32"),
        ("randwrite-4k-qd32", "4k randwrite QD32"),
        ("randread-4k-qd1", "4k randread QD1"),
    ] {
        g.push((
            format!("best rdm linear / best rublk, {label}"),
            div(best(&rdm, wl), best(&rublk, wl)),
            1.25,
        ));
        g.push((
            format!("best rdm linear / kernel dm-linear, {label}"),
            div(best(&rdm, wl), best(&["dm-linear"], wl)),
            0.65,
        ));
    }
    for (wl, label) in [
        ("read-64k-qd8", "64k read QD8"),
        ("write-64k-qd8", "64k write QD8"),
        ("read-512k-qd4", "512k read QD4"),
    ] {
        g.push((
            format!("rdm-linear-zc / dm-linear, {label}"),
            div(best(&["rdm-linear-zc"], wl), best(&["dm-linear"], wl)),
            1.0,
        ));
    }
    for (wl, label) in WORKLOADS {
        g.push((
            format!("rdm DAX / best rdm io_uring on the same pmem, {label}"),
            div(
                best(&["rdm-linear-pmem-dax"], wl),
                best(&["rdm-linear-pmem-copy", "rdm-linear-pmem-zc"], wl),
            ),
            1.0,
        ));
    }
    g
}

// ---------------------------------------------------------------- host

fn host_bench(o: &BenchOpts) -> Result<i32> {
    let root = workspace_root();
    let dir = out_dir();
    fs::create_dir_all(&dir)?;
    println!("bench --host: building ublk-server/examples/io_bench.rs (release)");
    run(Command::new("cargo")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "rdm-ublk-server",
            "--example",
            "io_bench",
        ])
        .current_dir(&root))?;
    let exe = root.join("target/release/examples/io_bench");
    let mut cmd = Command::new(&exe);
    cmd.arg("--file").arg(dir.join("io_bench.img"));
    cmd.arg("--json").arg(dir.join("host.json"));
    if o.quick {
        cmd.args(["--ios", "100000"]);
    }
    if let Some(r) = o.reps {
        cmd.args(["--reps", &r.to_string()]);
    }
    run(&mut cmd)?;
    println!(
        "bench --host: results in {}",
        dir.join("host.json").display()
    );
    Ok(0)
}

// ---------------------------------------------------------------- guest

mod guest {
    use super::*;

    const WORK: &str = "/tmp/rdm-bench";

    struct Row {
        id: &'static str,
        baseline: &'static str,
        /// Which backing store: "tmpfs" or "pmem".
        store: &'static str,
        what: &'static str,
    }

    /// Every row, in run order. Rows whose setup fails are reported as
    /// unavailable with the reason and do not stop the others.
    fn rows(zc: bool, dax_flag: bool, batch: bool) -> Vec<Row> {
        let mut v = vec![
            Row {
                id: "file-odirect",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "the backing file itself, O_DIRECT on tmpfs (upper limit)",
            },
            Row {
                id: "loop",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "loop device, direct-io=on",
            },
            Row {
                id: "dm-linear",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "kernel dm-linear on loop",
            },
            Row {
                id: "dm-striped",
                baseline: "dm-striped",
                store: "tmpfs",
                what: "kernel dm-striped ×4 (64 KiB) on loops",
            },
            Row {
                id: "rdm-linear-copy",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, --zero-copy off",
            },
        ];
        if zc {
            v.push(Row {
                id: "rdm-linear-zc",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, --zero-copy on",
            });
        }
        if batch {
            v.push(Row {
                id: "rdm-linear-batch",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, --batch-io (copy mode, UBLK_F_BATCH_IO)",
            });
        }
        v.push(Row {
            id: "rdm-striped-copy",
            baseline: "dm-striped",
            store: "tmpfs",
            what: "rdm striped ×4, --zero-copy off",
        });
        if zc {
            v.push(Row {
                id: "rdm-striped-zc",
                baseline: "dm-striped",
                store: "tmpfs",
                what: "rdm striped ×4, --zero-copy on",
            });
        }
        if batch {
            v.push(Row {
                id: "rdm-striped-batch",
                baseline: "dm-striped",
                store: "tmpfs",
                what: "rdm striped ×4, --batch-io (copy mode, UBLK_F_BATCH_IO)",
            });
        }
        // Remote backing: four NBD exports (qemu-nbd on loopback TCP over
        // the stripe files), striped by the kernel's nbd client + dm and
        // by rdm.
        v.push(Row {
            id: "nbd-dm-striped",
            baseline: "nbd-dm-striped",
            store: "nbd",
            what: "kernel nbd-client ×4 + dm-striped (64 KiB) over qemu-nbd on loopback",
        });
        v.push(Row {
            id: "rdm-striped-nbd",
            baseline: "nbd-dm-striped",
            store: "nbd",
            what: "rdm striped ×4 over the same NBD exports (default data path)",
        });
        v.push(Row {
            id: "rublk-loop",
            baseline: "dm-linear",
            store: "tmpfs",
            what: "rublk add loop (peer, copy)",
        });
        if zc {
            v.push(Row {
                id: "rublk-loop-zc",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rublk add loop -z (peer, AUTO_BUF_REG)",
            });
        }
        v.push(Row {
            id: "pmem",
            baseline: "dm-linear-pmem",
            store: "pmem",
            what: "raw /dev/pmem0 (fsdax namespace)",
        });
        v.push(Row {
            id: "dm-linear-pmem",
            baseline: "dm-linear-pmem",
            store: "pmem",
            what: "kernel dm-linear on /dev/pmem0",
        });
        v.push(Row {
            id: "rdm-linear-pmem-copy",
            baseline: "dm-linear-pmem",
            store: "pmem-fs",
            what: "rdm linear over a file on ext4 -o dax, --zero-copy off",
        });
        if zc {
            v.push(Row {
                id: "rdm-linear-pmem-zc",
                baseline: "dm-linear-pmem",
                store: "pmem-fs",
                what: "rdm linear over a file on ext4 -o dax, --zero-copy on",
            });
        }
        // The hook for the DAX data path: served from the mapping of the
        // fs-dax file instead of io_uring. Only when this rdm has --dax.
        if dax_flag {
            v.push(Row {
                id: "rdm-linear-pmem-dax",
                baseline: "dm-linear-pmem",
                store: "pmem-fs",
                what: "rdm linear over a file on ext4 -o dax, --dax required (DAX path)",
            });
            v.push(Row {
                id: "rdm-linear-pmem-dax-buf",
                baseline: "rdm-linear-pmem-dax",
                store: "pmem-fs",
                what: "the DAX path with RDM_DAX_COPY=buffer (the driver copies into per-tag buffers)",
            });
        }
        v
    }

    /// `--smp`: kernel dm against rdm on one and on two queues, in the
    /// default data path.
    fn smp_rows() -> Vec<Row> {
        vec![
            Row {
                id: "dm-linear",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "kernel dm-linear on loop",
            },
            Row {
                id: "rdm-linear-q1",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, one queue (default data path)",
            },
            Row {
                id: "rdm-linear-q2",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, two queues (default data path)",
            },
            Row {
                id: "rdm-linear-q1-t2",
                baseline: "dm-linear",
                store: "tmpfs",
                what: "rdm linear, one queue served by two threads (--io-threads 2, PER_IO_DAEMON)",
            },
        ]
    }

    fn sh(argv: &[&str]) -> Result<String> {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).env("DM_DISABLE_UDEV", "1");
        Ok(output(&mut c)?.trim().to_string())
    }

    struct Setup {
        dev: String,
        /// Commands to run, in order, to take the row down.
        undo: Vec<Vec<String>>,
    }

    impl Setup {
        fn teardown(&mut self) {
            for cmd in self.undo.drain(..).rev() {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                if let Err(e) = sh(&args) {
                    eprintln!("bench: teardown: {e:#}");
                }
            }
        }
    }

    struct Ctx {
        rdm: String,
        /// `--baseline`: the rdm binary of the `was-` rows.
        baseline: Option<String>,
        rublk: String,
        dax_flag: bool,
        pmem_ready: bool,
        pmem_fs: bool,
        /// The NBD rows' servers, started by the first of them.
        nbd_servers: Vec<std::process::Child>,
    }

    const NBD_PORT: u16 = 10809;

    /// qemu-nbd over each stripe file, on loopback ports from NBD_PORT.
    fn nbd_servers(cx: &mut Ctx) -> Result<()> {
        if !cx.nbd_servers.is_empty() {
            return Ok(());
        }
        for i in 0..STRIPES {
            let port = NBD_PORT + i as u16;
            let child = Command::new("qemu-nbd")
                .args([
                    "-f",
                    "raw",
                    "-t",
                    "-e",
                    "8",
                    "--cache=writeback",
                    "-x",
                    "e0",
                    "-b",
                    "127.0.0.1",
                    "-p",
                ])
                .arg(port.to_string())
                .arg(stripe(i))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("start qemu-nbd (qemu-utils)")?;
            cx.nbd_servers.push(child);
            let t = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if t.elapsed() > Duration::from_secs(20) {
                    bail!("qemu-nbd on port {port} never listened");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn nbd_uri(i: u64) -> String {
        format!("nbd://127.0.0.1:{}/e0", NBD_PORT + i as u16)
    }

    fn lin() -> String {
        format!("{WORK}/lin.img")
    }
    fn stripe(i: u64) -> String {
        format!("{WORK}/s{i}.img")
    }
    fn pmem_file() -> String {
        format!("{WORK}/pmem/lin.img")
    }

    fn losetup(file: &str, undo: &mut Vec<Vec<String>>) -> Result<String> {
        let dev = sh(&["losetup", "-f", "--show", "--direct-io=on", file])?;
        undo.push(vec!["losetup".into(), "-d".into(), dev.clone()]);
        Ok(dev)
    }

    fn dmsetup(name: &str, table: &str, undo: &mut Vec<Vec<String>>) -> Result<String> {
        sh(&["dmsetup", "create", name, "--table", table])?;
        undo.push(vec!["dmsetup".into(), "remove".into(), name.into()]);
        Ok(format!("/dev/mapper/{name}"))
    }

    fn rdm(cx: &Ctx, table: &str, extra: &[&str], undo: &mut Vec<Vec<String>>) -> Result<String> {
        let mut argv = vec![cx.rdm.as_str(), "create", "bench", "--table", table];
        argv.extend_from_slice(extra);
        if cx.dax_flag && !extra.contains(&"--dax") {
            argv.extend(["--dax", "off"]);
        }
        let out = sh(&argv)?;
        undo.push(vec![cx.rdm.clone(), "remove".into(), "bench".into()]);
        out.lines()
            .rev()
            .find(|l| l.starts_with("/dev/"))
            .map(str::to_string)
            .with_context(|| format!("rdm create printed no device: {out:?}"))
    }

    fn ublk_devs() -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir("/dev")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("ublkb"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn rublk(cx: &Ctx, zc: bool, undo: &mut Vec<Vec<String>>) -> Result<String> {
        if let Ok(why) = std::env::var("RDM_BENCH_RUBLK_UNAVAILABLE") {
            bail!("{why}");
        }
        let before = ublk_devs();
        let lin = lin();
        let mut argv = vec![
            cx.rublk.as_str(),
            "add",
            "loop",
            "-f",
            lin.as_str(),
            "--quiet",
        ];
        if zc {
            argv.push("-z");
        }
        sh(&argv)?;
        let t = Instant::now();
        loop {
            if let Some(n) = ublk_devs().into_iter().find(|d| !before.contains(d)) {
                let id = n.trim_start_matches("ublkb").to_string();
                undo.push(vec![cx.rublk.clone(), "del".into(), "-n".into(), id]);
                return Ok(format!("/dev/{n}"));
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("rublk add returned but no new /dev/ublkbN appeared");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pmem_fs(cx: &mut Ctx) -> Result<()> {
        if cx.pmem_fs {
            return Ok(());
        }
        if !cx.pmem_ready {
            bail!("no /dev/pmem0");
        }
        sh(&["mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/pmem0"])?;
        fs::create_dir_all(format!("{WORK}/pmem"))?;
        sh(&["mount", "-o", "dax", "/dev/pmem0", &format!("{WORK}/pmem")])?;
        fill(&pmem_file(), DEV_BYTES)?;
        cx.pmem_fs = true;
        Ok(())
    }

    fn setup(cx: &mut Ctx, row: &Row) -> Result<Setup> {
        let mut undo = Vec::new();
        let s = DEV_SECTORS;
        let striped_table = |devs: &[String]| {
            let mut t = format!("0 {s} striped {STRIPES} {CHUNK_SECTORS}");
            for d in devs {
                let _ = write!(t, " {d} 0");
            }
            t
        };
        let stripes: Vec<String> = (0..STRIPES).map(stripe).collect();
        // A `was-` row: the same setup with the baseline binary.
        if let Some(id) = row.id.strip_prefix("was-") {
            let now = cx.rdm.clone();
            cx.rdm = cx.baseline.clone().context("no --baseline binary")?;
            let r = setup(
                cx,
                &Row {
                    id: Box::leak(id.to_string().into_boxed_str()),
                    ..*row
                },
            );
            cx.rdm = now;
            return r;
        }
        let r: Result<String> = (|| match row.id {
            "file-odirect" => Ok(lin()),
            "loop" => losetup(&lin(), &mut undo),
            "dm-linear" => {
                let l = losetup(&lin(), &mut undo)?;
                dmsetup("bench-lin", &format!("0 {s} linear {l} 0"), &mut undo)
            }
            "dm-striped" => {
                let mut loops = Vec::new();
                for f in &stripes {
                    loops.push(losetup(f, &mut undo)?);
                }
                dmsetup("bench-str", &striped_table(&loops), &mut undo)
            }
            "rdm-linear-copy" | "rdm-linear-zc" | "rdm-linear-batch" => rdm(
                cx,
                &format!("0 {s} linear {} 0", lin()),
                mode_args(row.id),
                &mut undo,
            ),
            "rdm-striped-copy" | "rdm-striped-zc" | "rdm-striped-batch" => {
                rdm(cx, &striped_table(&stripes), mode_args(row.id), &mut undo)
            }
            "nbd-dm-striped" => {
                nbd_servers(cx)?;
                // From the guest kernel's module tree (the rig's cache,
                // shared with the guest), as stage2 loads the others.
                let kver = sh(&["uname", "-r"])?;
                let root = fs::read_dir(workspace_root().join("target/vm/kernels"))?
                    .flatten()
                    .map(|e| e.path().join(&kver))
                    .find(|p| p.exists())
                    .context("the guest kernel's modules are not under target/vm/kernels")?;
                let _ = fs::create_dir_all("/run/rdm-empty-modprobe.d");
                let root = root.display().to_string();
                sh(&[
                    "modprobe",
                    "-C",
                    "/run/rdm-empty-modprobe.d",
                    "-d",
                    &root,
                    "-S",
                    &kver,
                    "nbd",
                    "nbds_max=8",
                ])?;
                let mut devs = Vec::new();
                for i in 0..STRIPES {
                    let dev = format!("/dev/nbd{i}");
                    let port = (NBD_PORT + i as u16).to_string();
                    sh(&["nbd-client", "-N", "e0", "127.0.0.1", &port, &dev])?;
                    undo.push(vec!["nbd-client".into(), "-d".into(), dev.clone()]);
                    devs.push(dev);
                }
                dmsetup("bench-nbd", &striped_table(&devs), &mut undo)
            }
            "rdm-linear-q1" | "rdm-linear-q2" | "rdm-linear-q1-t2" => {
                let args: &[&str] = match row.id {
                    "rdm-linear-q2" => &["--queues", "2"],
                    "rdm-linear-q1-t2" => &["--queues", "1", "--io-threads", "2"],
                    _ => &["--queues", "1"],
                };
                rdm(cx, &format!("0 {s} linear {} 0", lin()), args, &mut undo)
            }
            "rdm-striped-nbd" => {
                nbd_servers(cx)?;
                let uris: Vec<String> = (0..STRIPES).map(nbd_uri).collect();
                rdm(cx, &striped_table(&uris), &[], &mut undo)
            }
            "rublk-loop" => rublk(cx, false, &mut undo),
            "rublk-loop-zc" => rublk(cx, true, &mut undo),
            "pmem" | "dm-linear-pmem" => {
                if !cx.pmem_ready {
                    bail!("no /dev/pmem0 (ndctl create-namespace failed)");
                }
                if cx.pmem_fs {
                    bail!("/dev/pmem0 already holds the fs-dax rows' file system");
                }
                if row.id == "pmem" {
                    Ok("/dev/pmem0".into())
                } else {
                    dmsetup(
                        "bench-pmem",
                        &format!("0 {s} linear /dev/pmem0 0"),
                        &mut undo,
                    )
                }
            }
            "rdm-linear-pmem-copy" | "rdm-linear-pmem-zc" => {
                pmem_fs(cx)?;
                let zc = if row.id.ends_with("zc") { "on" } else { "off" };
                rdm(
                    cx,
                    &format!("0 {s} linear {} 0", pmem_file()),
                    &["--zero-copy", zc],
                    &mut undo,
                )
            }
            "rdm-linear-pmem-dax" | "rdm-linear-pmem-dax-buf" => {
                pmem_fs(cx)?;
                // The server inherits the environment of `rdm create`.
                let copy = if row.id.ends_with("buf") {
                    "buffer"
                } else {
                    "user"
                };
                std::env::set_var("RDM_DAX_COPY", copy);
                let r = rdm(
                    cx,
                    &format!("0 {s} linear {} 0", pmem_file()),
                    &["--dax", "required"],
                    &mut undo,
                );
                std::env::remove_var("RDM_DAX_COPY");
                r
            }
            other => bail!("unknown row {other}"),
        })();
        let mut st = Setup {
            dev: String::new(),
            undo,
        };
        match r {
            Ok(dev) => {
                st.dev = dev;
                Ok(st)
            }
            Err(e) => {
                st.teardown();
                Err(e)
            }
        }
    }

    /// The rdm options of a row's data-path mode (its id's last word).
    fn mode_args(id: &str) -> &'static [&'static str] {
        match id.rsplit('-').next() {
            Some("zc") => &["--zero-copy", "on"],
            Some("batch") => &["--batch-io"],
            _ => &["--zero-copy", "off"],
        }
    }

    /// A file of `len` bytes with every page allocated (reads never hit holes).
    fn fill(path: &str, len: u64) -> Result<()> {
        sh(&[
            "dd",
            "if=/dev/zero",
            &format!("of={path}"),
            "bs=1M",
            &format!("count={}", len >> 20),
            "status=none",
        ])?;
        Ok(())
    }

    fn wanted(only: &Option<String>, row: &str, wl: &str) -> bool {
        match only {
            None => true,
            Some(p) => {
                let key = format!("{row}/{wl}");
                p.split(',').any(|alt| key.contains(alt.trim()))
            }
        }
    }

    fn fio(job: &Path, dev: &str, runtime: &str, ramp: &str, out: &Path) -> Result<Value> {
        let mut c = Command::new("fio");
        c.arg("--output-format=json")
            .arg("--eta=never")
            .arg(format!("--output={}", out.display()))
            .arg(job)
            .env("DEV", dev)
            .env("RUNTIME", runtime)
            .env("RAMP", ramp);
        run(&mut c)?;
        let v: Value = serde_json::from_str(&fs::read_to_string(out)?)
            .with_context(|| format!("fio's JSON in {}", out.display()))?;
        let j = &v["jobs"][0];
        let mut iops = 0.0;
        let mut bw = 0.0;
        let mut lat = 0.0;
        let mut p99 = 0.0;
        for dir in ["read", "write"] {
            let d = &j[dir];
            let i = d["iops"].as_f64().unwrap_or(0.0);
            if i > 0.0 {
                iops += i;
                bw += d["bw_bytes"].as_f64().unwrap_or(0.0);
                lat = d["lat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1e3;
                p99 = d["lat_ns"]["percentile"]["99.000000"]
                    .as_f64()
                    .or_else(|| d["clat_ns"]["percentile"]["99.000000"].as_f64())
                    .unwrap_or(0.0)
                    / 1e3;
            }
        }
        if j["error"].as_i64().unwrap_or(0) != 0 || iops == 0.0 {
            bail!("fio reported error {} / no I/O", j["error"]);
        }
        Ok(json!({
            "iops": iops,
            "mb_s": bw / 1e6,
            "lat_mean_us": lat,
            "lat_p99_us": p99,
        }))
    }

    pub fn main(o: &BenchOpts) -> Result<i32> {
        let root = workspace_root();
        let out_file = PathBuf::from(
            std::env::var("RDM_BENCH_OUT").unwrap_or_else(|_| "target/bench/runs.json".into()),
        );
        let rdm_bin = std::env::var("RDM_BENCH_RDM")
            .unwrap_or_else(|_| root.join("target/release/rdm").display().to_string());
        let features: Value = serde_json::from_str(&sh(&[&rdm_bin, "features", "--json"])?)
            .context("rdm features --json")?;
        let zc = features["names"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "AUTO_BUF_REG"));
        let help = sh(&[&rdm_bin, "create", "--help"]).unwrap_or_default();
        let dax_flag = help.contains("--dax");
        let batch = help.contains("--batch-io")
            && features["names"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "BATCH_IO"));
        let kver = sh(&["uname", "-r"])?;
        let (runtime, ramp) = o.runtime();
        println!(
            "bench: guest Linux {kver}; zero copy {}; rows run as they come",
            if zc {
                "available"
            } else {
                "not available (copy only)"
            }
        );

        fs::create_dir_all(WORK)?;
        fill(&lin(), DEV_BYTES)?;
        for i in 0..STRIPES {
            fill(&stripe(i), DEV_BYTES / STRIPES)?;
        }
        let pmem_ready = (|| -> Result<()> {
            sh(&[
                "ndctl",
                "create-namespace",
                "-f",
                "-e",
                "namespace0.0",
                "-m",
                "fsdax",
            ])?;
            for _ in 0..100 {
                if Path::new("/dev/pmem0").exists() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!("/dev/pmem0 did not appear")
        })();
        if let Err(e) = &pmem_ready {
            println!("bench: no pmem rows: {e:#}");
        }
        let mut cx = Ctx {
            rdm: rdm_bin,
            rublk: root
                .join("target/bench/rublk/bin/rublk")
                .display()
                .to_string(),
            dax_flag,
            pmem_ready: pmem_ready.is_ok(),
            pmem_fs: false,
            nbd_servers: Vec::new(),
            baseline: std::env::var("RDM_BENCH_BASELINE").ok(),
        };

        let mut all_rows = if o.smp {
            smp_rows()
        } else {
            rows(zc, dax_flag, batch)
        };
        let workloads = o.workloads();
        if cx.baseline.is_some() {
            // Each rdm row followed by the same row on the baseline binary.
            all_rows = all_rows
                .into_iter()
                .flat_map(|r| {
                    let was = r.id.starts_with("rdm-").then(|| Row {
                        id: Box::leak(format!("was-{}", r.id).into_boxed_str()),
                        baseline: r.id,
                        store: r.store,
                        what: "the same row on the --baseline binary",
                    });
                    std::iter::once(r).chain(was)
                })
                .collect();
        }
        let mut doc = json!({
            "kernel": kver,
            "flavor": o.kernel.name(),
            "reps": o.reps(),
            "quick": o.quick,
            "runtime": runtime,
            "ramp": ramp,
            "icount": !o.smp,
            "zero_copy_available": zc,
            "rows": all_rows.iter().map(|r| json!({"id": r.id, "baseline": r.baseline, "store": r.store, "what": r.what})).collect::<Vec<_>>(),
            "workloads": workloads,
            "smp": o.smp,
            "runs": [],
            "unavailable": [],
        });
        let save = |doc: &Value| -> Result<()> {
            fs::write(&out_file, serde_json::to_string_pretty(doc)?)
                .with_context(|| format!("cannot write {}", out_file.display()))
        };
        let fio_out = PathBuf::from(format!("{WORK}/fio.json"));
        let t0 = Instant::now();
        let mut failures = 0;
        // How far along: rows that have runs to do, counted up front.
        let todo = all_rows
            .iter()
            .filter(|r| workloads.iter().any(|(wl, _)| wanted(&o.only, r.id, wl)))
            .count();
        let mut done_rows = 0;
        for row in &all_rows {
            let wls: Vec<_> = workloads
                .iter()
                .filter(|(wl, _)| wanted(&o.only, row.id, wl))
                .collect();
            if wls.is_empty() {
                continue;
            }
            let mut st = match setup(&mut cx, row) {
                Ok(st) => st,
                Err(e) => {
                    println!("bench: {:<22} unavailable: {e:#}", row.id);
                    doc["unavailable"]
                        .as_array_mut()
                        .expect("array")
                        .push(json!({"row": row.id, "reason": format!("{e:#}")}));
                    save(&doc)?;
                    continue;
                }
            };
            // A fresh device's first I/Os can stall for seconds of guest
            // time under icount (seen on kernel loop as well as on ublk):
            // an untimed warm-up keeps that out of the numbers.
            let warm = root.join("tools/fio/randread-4k-qd1.fio");
            if let Err(e) = fio(&warm, &st.dev, "100ms", "0", &fio_out) {
                println!("bench: {} warm-up failed: {e:#}", row.id);
            }
            let mut line = format!("bench: {:<22}", row.id);
            for (wl, _) in &wls {
                let job = root.join("tools/fio").join(format!("{wl}.fio"));
                let mut iops = Vec::new();
                for rep in 0..o.reps() {
                    match fio(&job, &st.dev, runtime, ramp, &fio_out) {
                        Ok(mut r) => {
                            iops.push(r["iops"].as_f64().unwrap_or(0.0));
                            r["row"] = json!(row.id);
                            r["workload"] = json!(wl);
                            r["rep"] = json!(rep);
                            r["dev"] = json!(st.dev);
                            doc["runs"].as_array_mut().expect("array").push(r);
                        }
                        Err(e) => {
                            failures += 1;
                            println!("bench: {} {wl} rep {rep} failed: {e:#}", row.id);
                        }
                    }
                }
                save(&doc)?;
                let mut v = iops.clone();
                let m = if v.is_empty() { 0.0 } else { median(&mut v) };
                let _ = write!(line, " {wl}={}", si(m));
            }
            st.teardown();
            done_rows += 1;
            println!(
                "{line}  [{:.0} s, row {done_rows}/{todo}]",
                t0.elapsed().as_secs_f64()
            );
        }
        if cx.pmem_fs {
            let _ = sh(&["umount", &format!("{WORK}/pmem")]);
        }
        for mut c in cx.nbd_servers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        save(&doc)?;
        println!(
            "bench: guest side done in {:.0} s, {failures} failed run(s)",
            t0.elapsed().as_secs_f64()
        );
        Ok(if failures > 0 { 1 } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_medians_spread_and_ratios() {
        let run = |row: &str, iops: f64| {
            json!({"row": row, "workload": "randread-4k-qd32", "iops": iops,
                   "lat_mean_us": 10.0, "lat_p99_us": 20.0})
        };
        let doc = json!({
            "kernel": "7.3.4", "reps": 3, "runtime": "4", "quick": false,
            "rows": [
                {"id": "dm-linear", "baseline": "dm-linear"},
                {"id": "rdm-linear-copy", "baseline": "dm-linear"},
            ],
            "runs": [
                run("dm-linear", 100.0), run("dm-linear", 110.0), run("dm-linear", 90.0),
                run("rdm-linear-copy", 120.0), run("rdm-linear-copy", 130.0),
                run("rdm-linear-copy", 110.0),
            ],
            "unavailable": [{"row": "rublk-loop", "reason": "no rublk"}],
        });
        let (md, chart) = report(&doc, "latest");
        assert!(
            md.contains("| rdm-linear-copy | dm-linear | 120 (110–130) **1.20×** |"),
            "{md}"
        );
        assert!(md.contains("- rublk-loop: no rublk"), "{md}");
        assert_eq!(chart.series.len(), 1);
        assert_eq!(chart.series[0].label, "rdm-linear-copy / dm-linear");
        assert!((chart.series[0].values[0].unwrap() - 1.2).abs() < 1e-9);
        let dir = std::env::temp_dir().join(format!("rdm-plot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        chart.write(&dir.join("c.svg"), &dir.join("c.png")).unwrap();
        let svg = fs::read_to_string(dir.join("c.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("rdm-linear-copy"),
            "{svg}"
        );
        let png = fs::read(dir.join("c.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let _ = fs::remove_dir_all(&dir);
    }
}

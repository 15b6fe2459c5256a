//! Host benchmark for `DaxMapping::write_at`: cached stores + cache-line
//! flush versus non-temporal stores, on a plain `MAP_SHARED` mapping of a
//! tmpfs file (DRAM, so absolute numbers are not pmem numbers; the relative
//! cost of the two store paths is what this measures).
//!
//! `cargo run --release -p rdm-dax --example nt_bench [DIR] [MiB]`

use std::path::PathBuf;
use std::time::Instant;

use rdm_dax::{DaxMapping, PersistenceDomain, WriteStrategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/dev/shm".into()));
    let mib: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let size = mib << 20;
    let tmp = tempfile::tempdir_in(&dir)?;
    let path = tmp.path().join("bench.img");
    std::fs::write(&path, vec![0u8; size])?;

    for domain in [
        PersistenceDomain::MemoryController,
        PersistenceDomain::CpuCache,
    ] {
        let mut m = DaxMapping::map_plain_for_tests(&path, domain)?;
        println!(
            "domain {domain} (flush: {}), {mib} MiB region",
            m.flush_instr()
        );
        for chunk in [256usize, 512, 1024, 4096, 16 << 10, 64 << 10, 1 << 20] {
            let buf: Vec<u8> = (0..chunk).map(|i| i as u8).collect();
            let mut line = format!("  {:>8} B:", chunk);
            for strat in [WriteStrategy::Cached, WriteStrategy::NonTemporal] {
                m.set_write_strategy(strat);
                // Warm-up pass (faults the pages in), then timed passes.
                for off in (0..size).step_by(chunk) {
                    m.write_at(off as u64, &buf)?;
                }
                let passes = 3;
                let t = Instant::now();
                for _ in 0..passes {
                    for off in (0..size).step_by(chunk) {
                        m.write_at(off as u64, &buf)?;
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                let gbs = (size * passes) as f64 / secs / 1e9;
                line.push_str(&format!("  {strat:?} {gbs:6.2} GB/s"));
            }
            println!("{line}");
        }
    }
    Ok(())
}

//! Durable single-put commits into fresh space: commits/s, latency and
//! bytes written per commit. Used to choose how the file grows
//! (docs/DESIGN.md, "Growth"). Run on the disk you care about:
//!
//! ```sh
//! cargo run --release --example commit_probe -- [DIR]
//! ```

use std::time::Instant;

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> mapkv::Result<()> {
    const COMMITS: usize = 3000;
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/commit-probe".into());
    let dir = std::path::Path::new(&dir);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the probe directory");
    let store = mapkv::Store::open(dir.join("probe.kv"))?;
    let mut lat = Vec::with_capacity(COMMITS);
    let (start, written) = (Instant::now(), write_bytes());
    for i in 0..COMMITS as u64 {
        let t = Instant::now();
        // 4 KB values: every commit moves the log into a new page.
        store.put(i.to_le_bytes(), [7u8; 4000])?;
        lat.push(t.elapsed().as_micros());
    }
    let secs = start.elapsed().as_secs_f64();
    let per_commit = (write_bytes() - written) / COMMITS as u64;
    lat.sort_unstable();
    println!(
        "{:.0} commits/s, p50 {} us, p99 {} us, max {} us, {} bytes written per commit",
        COMMITS as f64 / secs,
        lat[COMMITS / 2],
        lat[COMMITS * 99 / 100],
        lat[COMMITS - 1],
        per_commit
    );
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

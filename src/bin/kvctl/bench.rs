//! `kvctl bench`: a quick benchmark of this machine and build.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_OK};

/// A quick benchmark on a scratch store: fill (durable batches of 1,000),
/// random reads, and durable single-put commits; ops/s and latency
/// percentiles. Does not touch --db; the scratch store goes in a new
/// directory under --dir (default: the system's temporary directory —
/// on tmpfs durable commits cost nothing, so point it at a real disk).
///
/// Example: kvctl bench --keys 1000000 --value-size 100 --dir .
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Keys to fill and read.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Durable single-put commits to time.
    #[arg(long, default_value_t = 1_000)]
    commits: u64,
    /// Where to put the scratch store.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

/// p50, p99 and max of `lat`, in microseconds.
fn percentiles(lat: &mut [Duration]) -> (f64, f64, f64) {
    if lat.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99), at(1.0))
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = crate::scratch_dir(&base, "bench")?;
    let result = bench(ctx, &a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(ctx: &Ctx, a: &Args, dir: &std::path::Path) -> Outcome {
    let store = mapkv::Store::open(dir.join("bench.kv"))?;
    let value = vec![0x5au8; a.value_size];
    let n = a.keys.max(1);

    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut tx = store.begin_write()?;
        for _ in 0..1_000.min(n - i) {
            tx.put(key(i), &value)?;
            i += 1;
        }
        tx.commit()?;
    }
    let fill = n as f64 / t.elapsed().as_secs_f64();

    let snap = store.begin_read()?;
    let mut lat = Vec::with_capacity(n as usize);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = Instant::now();
        black_box(snap.get(key(x % n))?);
        lat.push(s.elapsed());
    }
    let reads = n as f64 / t.elapsed().as_secs_f64();
    let (r50, r99, rmax) = percentiles(&mut lat);
    drop(snap);

    let mut lat = Vec::with_capacity(a.commits as usize);
    let t = Instant::now();
    for c in 0..a.commits {
        let s = Instant::now();
        store.put(key(n + c), &value)?;
        lat.push(s.elapsed());
    }
    let commits = a.commits as f64 / t.elapsed().as_secs_f64();
    let (c50, c99, cmax) = percentiles(&mut lat);
    let file = store.stats()?.file_bytes;
    store.close()?;

    if ctx.json {
        let v = json!({
            "keys": n, "value_size": a.value_size,
            "fill_puts_per_sec": fill,
            "read_gets_per_sec": reads, "read_us": {"p50": r50, "p99": r99, "max": rmax},
            "commit_per_sec": commits, "commit_us": {"p50": c50, "p99": c99, "max": cmax},
            "file_bytes": file,
        });
        println!("{v}");
        return Ok(EXIT_OK);
    }
    println!(
        "{n} keys, {}-byte values, in {}",
        a.value_size,
        dir.display()
    );
    println!("| workload | ops/s | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    println!("| fill (durable batches of 1,000) | {fill:.0} | | | |");
    println!("| random get | {reads:.0} | {r50:.2} | {r99:.2} | {rmax:.1} |");
    println!("| durable single-put commit | {commits:.0} | {c50:.1} | {c99:.1} | {cmax:.1} |");
    println!("file: {file} bytes");
    Ok(EXIT_OK)
}

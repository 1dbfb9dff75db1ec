//! Reader scaling across processes: random-get throughput of one and of
//! two reader processes on one store, and the cost of `begin_read` + drop.
//! Run: `cargo bench --bench readers` (a bench binary, not criterion: the
//! readers are separate processes, this binary run again).
//!
//! Keys are 16 bytes and values 100 bytes, N = 1,000,000. Each reader
//! process opens the store read-only, takes one snapshot and does random
//! `get`s for `MAPKV_BENCH_SECS` seconds (default 3), after all readers
//! are ready. Each configuration runs three times; the median is printed.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapkv::{Options, Store};

const N: u64 = 1_000_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

fn secs() -> Duration {
    let s = std::env::var("MAPKV_BENCH_SECS").map_or(3.0, |s| s.parse().unwrap_or(3.0));
    Duration::from_secs_f64(s)
}

/// The reader process: ready, wait for "go", read for the set time, report.
fn child(db: &str) {
    let store = Options::new().read_only(true).open(db).unwrap();
    let snap = store.begin_read().unwrap();
    let mut x = std::process::id() as u64 | 1;
    // Touch every page once so both configurations start warm.
    for i in (0..N).step_by(97) {
        black_box(snap.get(key(i)).unwrap());
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let (limit, start) = (secs(), Instant::now());
    let mut ops = 0u64;
    while start.elapsed() < limit {
        for _ in 0..1024 {
            // xorshift: a cheap random key number.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = snap.get(key(x % N)).unwrap();
            debug_assert!(v.is_some());
            black_box(v);
        }
        ops += 1024;
    }
    println!("ops {ops} {}", start.elapsed().as_secs_f64());
}

/// Gets per second of `procs` reader processes together.
fn run(db: &Path, procs: usize) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..procs)
        .map(|_| {
            let mut c = Command::new(&exe)
                .env("MAPKV_BENCH_CHILD", db)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(c.stdout.take().unwrap());
            (c, out)
        })
        .collect();
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    for (c, _) in &mut children {
        writeln!(c.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut total = 0.0;
    for (mut c, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "ops", "child said {line:?}");
        total += f[1].parse::<f64>().unwrap() / f[2].parse::<f64>().unwrap();
        c.wait().unwrap();
    }
    total
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(db) = std::env::var("MAPKV_BENCH_CHILD") {
        return child(&db);
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list`: nothing to run here
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db = dir.path().join("readers.kv");
    {
        let store = Store::open(&db).unwrap();
        for chunk in (0..N).collect::<Vec<_>>().chunks(100_000) {
            let mut tx = store.begin_write().unwrap();
            for &i in chunk {
                tx.put(key(i), [i as u8; 100]).unwrap();
            }
            tx.commit().unwrap();
        }
        store.close().unwrap();
    }
    let one = median((0..3).map(|_| run(&db, 1)).collect());
    let two = median((0..3).map(|_| run(&db, 2)).collect());

    // begin_read + drop, in this process, on a store a writer keeps open.
    let store = Store::open(&db).unwrap();
    let iters = 2_000_000u32;
    let mut per = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(store.begin_read().unwrap());
        }
        per.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    let begin = median(per);

    println!("| readers | gets/s (median of 3) | vs 1 process |");
    println!("|---|---:|---:|");
    println!("| 1 process | {:.0} | 1.00× |", one);
    println!("| 2 processes | {:.0} | {:.2}× |", two, two / one);
    println!("begin_read + drop: {begin:.0} ns (median of 3 × {iters})");
    println!(
        "machine: {} cores; N = {N}, 16-byte keys, 100-byte values",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

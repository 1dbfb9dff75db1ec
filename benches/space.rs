//! The space targets of issue 4, as a bench binary (not criterion: each is
//! one long run whose figure is a ratio measured inside it).
//!
//! Run: `cargo bench --bench space -- [overwrite] [bulk] [reads]` (all
//! three when none is named). `MAPKV_BENCH_SCALE=0.1` shrinks every
//! workload tenfold for a quick look. Stores live in a fresh directory
//! under the current one (the real disk, not a tmpfs).
//!
//! - `overwrite`: 100,000 keys (16 bytes) with 100-byte values, then
//!   10,000,000 puts at random in durable commits of 100. The file size is
//!   sampled every 100 commits; prints the largest ratio of the file to
//!   the live records (and to the raw key+value bytes), and the ratio
//!   right after `compact()`.
//! - `bulk`: 10,000,000 new keys in durable commits of 1,000; prints
//!   p50/p99/max commit latency and max/p50 (no commit pays for a whole
//!   index rebuild: the index moves to each larger table over commits).
//!   `MAPKV_BENCH_SLOW_MS=6` also prints every commit that took 6 ms or
//!   more, with what it did (file growth, index move, log size). Then the
//!   same for a floor: batches of random memory writes the size of the
//!   median commit, for as long as the load took, which show the stalls
//!   the machine itself adds (a shared VM's host stops a vCPU for tens of
//!   milliseconds now and then).
//! - `reads`: 1,000,000 keys overwritten three times (automatic compaction
//!   off), then random gets in one thread for as long as `compact()` takes
//!   in another, against the same number of gets with no compaction.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mapkv::{Options, Store};

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn scale() -> f64 {
    std::env::var("MAPKV_BENCH_SCALE").map_or(1.0, |s| s.parse().unwrap_or(1.0))
}

fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(1)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn overwrite(dir: &std::path::Path) {
    let keys = 100_000u64;
    let puts = scaled(10_000_000);
    let store = Store::open(dir.join("overwrite.kv")).unwrap();
    let value = [7u8; 100];
    let mut i = 0;
    while i < keys {
        let mut tx = store.begin_write().unwrap();
        for k in i..(i + 1_000).min(keys) {
            tx.put(key(k), value).unwrap();
        }
        tx.commit().unwrap();
        i += 1_000;
    }
    let raw = keys * (16 + 100);
    let mut rng = Rng(1);
    let (mut worst, mut worst_raw, mut samples) = (0f64, 0f64, 0);
    let t0 = Instant::now();
    for c in 0..puts / 100 {
        let mut tx = store.begin_write().unwrap();
        for _ in 0..100 {
            tx.put(key(rng.below(keys)), value).unwrap();
        }
        tx.commit().unwrap();
        if c % 100 == 99 {
            let s = store.stats().unwrap();
            worst = worst.max(s.file_bytes as f64 / s.live_bytes as f64);
            worst_raw = worst_raw.max(s.file_bytes as f64 / raw as f64);
            samples += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = store.stats().unwrap();
    let report = store.compact().unwrap();
    let after = store.stats().unwrap();
    println!(
        "overwrite: {keys} keys, {puts} puts in durable commits of 100 ({:.0} puts/s)",
        puts as f64 / secs
    );
    println!(
        "  file / live records: max {worst:.2} over {samples} samples (max {worst_raw:.2} x raw key+value bytes)"
    );
    println!(
        "  compaction copied {} MB in all, reclaimed {} MB ({:.2} bytes copied per byte written)",
        s.moved_total >> 20,
        s.reclaimed_total >> 20,
        s.moved_total as f64 / s.log_bytes as f64
    );
    println!(
        "  after compact(): file {} bytes, live {} bytes: {:.2} x live ({:.2} x raw), took {:?}",
        after.file_bytes,
        after.live_bytes,
        after.file_bytes as f64 / after.live_bytes as f64,
        after.file_bytes as f64 / raw as f64,
        report.duration
    );
}

fn bulk(dir: &std::path::Path) {
    let n = scaled(10_000_000);
    let store = Store::open(dir.join("bulk.kv")).unwrap();
    let value = [3u8; 100];
    let mut lat = Vec::with_capacity((n / 1_000) as usize);
    let mut slowest: Vec<(Duration, u64, String)> = Vec::new();
    let mut moving = 0;
    let mut before = store.stats().unwrap();
    let slow_ms = std::env::var("MAPKV_BENCH_SLOW_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let t = Instant::now();
        let mut tx = store.begin_write().unwrap();
        let tb = t.elapsed();
        for k in i..(i + 1_000).min(n) {
            tx.put(key(k), value).unwrap();
        }
        let tp = t.elapsed();
        tx.commit().unwrap();
        let took = t.elapsed();
        lat.push(took);
        let after = store.stats().unwrap();
        let what = format!(
            "begin {tb:?} puts {tp:?} file {} -> {} MB, index {} slots{}, log {} MB",
            before.file_bytes >> 20,
            after.file_bytes >> 20,
            after.index_slots,
            if after.index_moving > 0 {
                " (moving)"
            } else {
                ""
            },
            after.log_bytes >> 20
        );
        if slow_ms.is_some_and(|ms| took >= Duration::from_millis(ms)) {
            eprintln!("slow commit: {took:?} at key {i}: {what}");
        }
        slowest.push((took, i, what));
        slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
        slowest.truncate(5);
        if after.index_moving > 0 && i % 100_000 == 0 {
            moving += 1;
        }
        before = after;
        i += 1_000;
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = store.stats().unwrap();
    lat.sort_unstable();
    let (p50, p99, max) = (pct(&lat, 0.5), pct(&lat, 0.99), *lat.last().unwrap());
    println!(
        "bulk: {n} keys in {} durable commits of 1,000 ({:.0} puts/s); index {} slots, seen mid-move at {moving} of {} samples",
        lat.len(),
        n as f64 / secs,
        s.index_slots,
        n / 100_000
    );
    println!(
        "  commit p50 {p50:?}, p99 {p99:?}, max {max:?}: max / p50 = {:.1}",
        max.as_secs_f64() / p50.as_secs_f64()
    );
    for (took, at, what) in &slowest {
        println!("  slow: {took:?} at key {at}: {what}");
    }
    floor(secs, p50);
}

/// The machine's own stalls, measured right after the bulk load for as
/// long as it ran: batches of random read-modify-writes over 256 MiB of
/// memory (no I/O, no allocation, nothing of mapkv), each sized to take
/// about the median commit. On a shared VM the host stops a vCPU now and
/// then; what such a loop sees as its max / p50 bounds what any commit's
/// max / p50 can show here.
fn floor(secs: f64, commit_p50: Duration) {
    let words = (256usize << 20) / 8;
    let mut mem = vec![1u64; words];
    let mut rng = Rng(7);
    let mut batch = |ops: u64| {
        for _ in 0..ops {
            let i = rng.below(words as u64) as usize;
            mem[i] = black_box(mem[i]).wrapping_add(1);
        }
    };
    batch(100_000);
    let t = Instant::now();
    batch(100_000);
    let per_op = t.elapsed().as_secs_f64() / 100_000.0;
    let ops = ((commit_p50.as_secs_f64() / per_op) as u64).max(1);
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        batch(ops);
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let (p50, p99, max) = (pct(&lat, 0.5), pct(&lat, 0.99), *lat.last().unwrap());
    println!(
        "  floor, {} batches of {ops} random writes over 256 MiB in {secs:.0} s: p50 {p50:?}, p99 {p99:?}, max {max:?}: max / p50 = {:.1}",
        lat.len(),
        max.as_secs_f64() / p50.as_secs_f64()
    );
}

/// Random gets in snapshots of 1,000 until `stop` is set or `limit` gets
/// are done: (gets, time).
fn read_for(store: &Store, n: u64, stop: &AtomicBool, limit: Option<u64>) -> (u64, Duration) {
    let mut rng = Rng(9);
    let t0 = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| done < l) {
        let snap = store.begin_read().unwrap();
        for _ in 0..1_000 {
            black_box(snap.get(key(rng.below(n))).unwrap());
        }
        done += 1_000;
    }
    (done, t0.elapsed())
}

/// Reads every page of the store once.
fn warm(store: &Store, n: u64) {
    let snap = store.begin_read().unwrap();
    for k in (0..n).step_by(31) {
        black_box(snap.get(key(k)).unwrap());
    }
}

fn reads(dir: &std::path::Path) {
    let n = scaled(1_000_000);
    let path = dir.join("reads.kv");
    let store = Options::new().auto_compact(false).open(&path).unwrap();
    let fill = |round: u8| {
        let mut i = 0;
        while i < n {
            let mut tx = store.begin_write().unwrap();
            for k in i..(i + 10_000).min(n) {
                tx.put(key(k), [round; 100]).unwrap();
            }
            tx.commit().unwrap();
            i += 10_000;
        }
    };
    for round in 0..4u8 {
        fill(round);
    }
    warm(&store, n);
    let never = AtomicBool::new(false);
    let base_gets = scaled(3_000_000);
    let (g0, t0) = read_for(&store, n, &never, Some(base_gets));
    let quiet = g0 as f64 / t0.as_secs_f64();
    let stop = AtomicBool::new(false);
    let (report, (g1, t1)) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_for(&store, n, &stop, None));
        let report = store.compact().unwrap();
        stop.store(true, Ordering::Relaxed);
        (report, reader.join().unwrap())
    });
    let busy = g1 as f64 / t1.as_secs_f64();
    println!(
        "reads: {n} keys; compact() copied {} MB in {:?}",
        report.bytes_moved >> 20,
        report.duration
    );
    println!(
        "  random gets, reader thread in the compacting process: {quiet:.0}/s alone, {busy:.0}/s during compaction: {:.0}%",
        100.0 * busy / quiet
    );
    // The same with the reader in a process of its own.
    for round in 4..7u8 {
        fill(round);
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--reader-child")
        .arg(&path)
        .arg(n.to_string())
        .arg(base_gets.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    from_child.read_line(&mut line).unwrap();
    let quiet: f64 = line.trim().parse().unwrap();
    writeln!(to_child, "go").unwrap();
    let report = store.compact().unwrap();
    writeln!(to_child, "stop").unwrap();
    line.clear();
    from_child.read_line(&mut line).unwrap();
    let busy: f64 = line.trim().parse().unwrap();
    child.wait().unwrap();
    println!(
        "  random gets, reader in another process: {quiet:.0}/s alone, {busy:.0}/s during compaction ({} MB copied): {:.0}%",
        report.bytes_moved >> 20,
        100.0 * busy / quiet
    );
}

/// The reader process of `reads`: prints its gets/s alone, then reads from
/// "go" to "stop" on stdin and prints its gets/s over that time.
fn reader_child(args: &[String]) {
    let path = &args[0];
    let n: u64 = args[1].parse().unwrap();
    let base_gets: u64 = args[2].parse().unwrap();
    let store = Store::open(path).unwrap();
    warm(&store, n);
    let never = AtomicBool::new(false);
    let (g0, t0) = read_for(&store, n, &never, Some(base_gets));
    println!("{}", g0 as f64 / t0.as_secs_f64());
    let mut lines = std::io::stdin().lines();
    assert_eq!(lines.next().unwrap().unwrap(), "go");
    let stop = AtomicBool::new(false);
    let (g1, t1) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_for(&store, n, &stop, None));
        let _ = lines.next();
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    println!("{}", g1 as f64 / t1.as_secs_f64());
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--reader-child") {
        reader_child(&raw[1..]);
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = args.is_empty();
    let dir = tempfile::tempdir_in(".").unwrap();
    if all || args.iter().any(|a| a == "overwrite") {
        overwrite(dir.path());
    }
    if all || args.iter().any(|a| a == "bulk") {
        bulk(dir.path());
    }
    if all || args.iter().any(|a| a == "reads") {
        reads(dir.path());
    }
}

//! One engine's run of every workload, in a child process of its own (so
//! its peak RSS and `/proc/self/io` are its own). It prints one
//! `metric value` line per figure; the parent gathers them.

use std::path::Path;
use std::time::Instant;

use crate::engines::{Engine, Key, Res, Value};
use crate::stats::{percentile, status_bytes, write_bytes, Rng};

pub const BATCH: usize = 1000;
pub const SYNC_COMMITS: usize = 2000;
/// One-put durable commits on the churned store (deleted keys put back).
pub const CHURN_COMMITS: usize = 2000;
/// Random gets timed on a cold page cache.
pub const COLD_GETS: usize = 10_000;
/// Opens timed per figure (the median is printed). 101, not 9: the first
/// opens of a process are slow (mapkv's first of 9 took ~100 µs, the rest
/// 15-20), and with 9 the median moved by a quarter from run to run.
const OPENS: usize = 101;

/// Key `i`: present keys are the even numbers in 16 hex digits, missing
/// keys the odd ones, so a miss lands between two present keys (as in a
/// real workload, not past the end of a B-tree). Made on the fly, in a few
/// nanoseconds, so that the harness adds no cache miss of its own to a get.
///
/// Made in a register and stored whole, not byte by byte: an engine's
/// first 8-byte load of a key built with 16 byte stores cannot take its
/// bytes from those stores, and waits until they are written to the cache,
/// that is until everything before them has retired — the previous get
/// included. So no engine's gets could overlap: mapkv's random gets took
/// ~480 ns with keys built byte by byte and ~245 with the same keys built
/// here (a scratch loop over a 1M-key store, before mapkv's get began to
/// copy short keys a byte at a time). [`key_bytewise`] is the definition,
/// and the row "each key written byte by byte" still measures keys made
/// with it; [`check_keys`] holds the two equal.
pub fn key(i: u32, missing: bool) -> Key {
    let n = 2 * i as u64 + missing as u64;
    // Spread the 16 nibbles of `n` to the 16 bytes of `x`, nibble k
    // (from the low end) to byte k.
    let mut x = n as u128;
    x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    // A nibble d becomes b'0' + d, plus 39 more for d > 9 (b'a' - 10).
    let ones = u128::MAX / 255;
    let above_9 = ((x + 6 * ones) >> 4) & ones;
    (x + b'0' as u128 * ones + above_9 * 39).to_be_bytes()
}

/// Present key `i`.
pub fn present(i: u32) -> Key {
    key(i, false)
}

/// [`key`] as it is defined: the hex digits of `2i + missing`, one by one.
pub fn key_bytewise(i: u32, missing: bool) -> Key {
    let n = 2 * i as u64 + missing as u64;
    let mut k = [0u8; 16];
    for (j, b) in k.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * j)) & 15) as usize];
    }
    k
}

/// Fails unless [`key`] and [`key_bytewise`] agree (every run checks
/// before it measures anything).
pub fn check_keys() -> Res<()> {
    let edges = [0xffff_fff0, u32::MAX / 2, u32::MAX - 1, u32::MAX];
    for i in (0..100_000).chain(edges).chain((0..32).map(|s| 1 << s)) {
        for missing in [false, true] {
            if key(i, missing) != key_bytewise(i, missing) {
                return Err(format!("key({i}, {missing}) differs from its definition").into());
            }
        }
    }
    Ok(())
}

/// A 100-byte value that differs per key and per round.
pub fn value(i: u32, round: u8) -> Value {
    let mut v = [round; 100];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v[96..].copy_from_slice(&(i ^ 0x5bd1_e995).to_le_bytes());
    v
}

fn emit(name: &str, value: f64) {
    println!("{name} {value}");
}

/// Disk the store's files hold (allocated blocks), holes not counted.
fn alloc_bytes<E: Engine>(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    E::files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

/// Keys and values of `live` pairs: what any engine must hold.
fn raw_bytes(live: usize) -> f64 {
    (live * (16 + 100)) as f64
}

/// One-put durable commits, `us` filled with each one's latency; emits
/// `{name}_ops`, p50, p99, max and disk bytes written per commit.
fn one_put_commits<E: Engine>(
    name: &str,
    e: &E,
    keys: &[u32],
    round: u8,
    mut after_each: impl FnMut(usize),
) -> Res<()> {
    let before = write_bytes();
    let mut us = Vec::with_capacity(keys.len());
    let t = Instant::now();
    for (c, &i) in keys.iter().enumerate() {
        let at = Instant::now();
        e.write(&[i], Some(&|i| value(i, round)))?;
        us.push(at.elapsed().as_secs_f64() * 1e6);
        after_each(c);
    }
    emit(
        &format!("{name}_ops"),
        keys.len() as f64 / t.elapsed().as_secs_f64(),
    );
    emit(
        &format!("{name}_wbytes"),
        (write_bytes() - before) as f64 / keys.len() as f64,
    );
    let max = us.iter().copied().fold(0.0, f64::max);
    emit(&format!("{name}_p50_us"), percentile(&mut us, 0.5));
    emit(&format!("{name}_p99_us"), percentile(&mut us, 0.99));
    emit(&format!("{name}_max_us"), max);
    Ok(())
}

/// How long each side of `beside` runs.
const BESIDE: std::time::Duration = std::time::Duration::from_secs(3);

/// One-put durable overwrites of random `live` keys for `BESIDE`:
/// (commits/s, latencies in µs).
fn writer_for<E: Engine>(e: &E, live: &[u32], seed: u64) -> Res<(f64, Vec<f64>)> {
    let mut rng = Rng(seed);
    let mut us = Vec::new();
    let t = Instant::now();
    while t.elapsed() < BESIDE {
        let i = live[(rng.next() % live.len() as u64) as usize];
        let at = Instant::now();
        e.write(&[i], Some(&|i| value(i, 6)))?;
        us.push(at.elapsed().as_secs_f64() * 1e6);
    }
    Ok((us.len() as f64 / t.elapsed().as_secs_f64(), us))
}

/// Read transactions of 1,000 random gets of `live` keys until `stop`
/// (or `BESIDE` when there is no writer): gets/s.
fn reader_for<E: Engine>(e: &E, live: &[u32], stop: &std::sync::atomic::AtomicBool) -> Res<f64> {
    use std::sync::atomic::Ordering;
    let mut rng = Rng(77);
    let (mut gets, t) = (0u64, Instant::now());
    let mut batch = vec![0u32; 1000];
    while !stop.load(Ordering::Relaxed) && t.elapsed() < BESIDE {
        for b in batch.iter_mut() {
            *b = live[(rng.next() % live.len() as u64) as usize];
        }
        let (found, _) = e.read(present, &batch)?;
        check("reader beside a writer found", found, batch.len() as u64)?;
        gets += found;
    }
    Ok(gets as f64 / t.elapsed().as_secs_f64())
}

/// A writer thread beside a reader thread on the churned store, each
/// also run alone first: both throughputs and the writer's p50/p99.
fn beside<E: Engine>(e: &E, live: &[u32]) -> Res<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let never = AtomicBool::new(false);
    let (alone_ops, mut alone_us) = writer_for(e, live, 1)?;
    emit("alone_writer_ops", alone_ops);
    emit("alone_writer_p99_us", percentile(&mut alone_us, 0.99));
    emit("alone_reader_ops", reader_for(e, live, &never)?);
    let stop = AtomicBool::new(false);
    let (w, r) = std::thread::scope(|s| {
        let r = s.spawn(|| reader_for(e, live, &stop));
        let w = writer_for(e, live, 2);
        stop.store(true, Ordering::Relaxed);
        (w, r.join())
    });
    let (ops, mut us) = w?;
    let reader = r.map_err(|_| "reader thread panicked")??;
    emit("beside_writer_ops", ops);
    emit("beside_writer_p50_us", percentile(&mut us, 0.5));
    emit("beside_writer_p99_us", percentile(&mut us, 0.99));
    emit("beside_reader_ops", reader);
    Ok(())
}

/// One-put durable commits while another thread compacts the store
/// (engines that can): their p50, p99 and max. Returns whether the engine
/// compacted.
fn while_compacting<E: Engine>(e: &E, live: &[u32]) -> Res<bool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    let mut us = Vec::new();
    let compacted = std::thread::scope(|s| -> Res<bool> {
        let c = s.spawn(|| {
            let r = e.compact();
            done.store(true, Ordering::Relaxed);
            r
        });
        let mut rng = Rng(3);
        while !done.load(Ordering::Relaxed) {
            let i = live[(rng.next() % live.len() as u64) as usize];
            let at = Instant::now();
            e.write(&[i], Some(&|i| value(i, 7)))?;
            us.push(at.elapsed().as_secs_f64() * 1e6);
        }
        c.join().map_err(|_| "compacting thread panicked")?
    })?;
    if compacted && !us.is_empty() {
        let max = us.iter().copied().fold(0.0, f64::max);
        emit("compacting_commits", us.len() as f64);
        emit("compacting_p50_us", percentile(&mut us, 0.5));
        emit("compacting_p99_us", percentile(&mut us, 0.99));
        emit("compacting_max_us", max);
    }
    Ok(compacted)
}

fn file_bytes<E: Engine>(dir: &Path) -> u64 {
    E::files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Durable commits of `BATCH` puts (or deletes) over `order`; emits ops/s,
/// disk bytes written per op and the file size after.
fn batches<E: Engine>(name: &str, e: &E, dir: &Path, order: &[u32], round: Option<u8>) -> Res<()> {
    let before = write_bytes();
    let t = Instant::now();
    let value = round.map(|r| move |i| value(i, r));
    for chunk in order.chunks(BATCH) {
        e.write(chunk, value.as_ref().map(|f| f as &dyn Fn(u32) -> Value))?;
    }
    let secs = t.elapsed().as_secs_f64();
    emit(&format!("{name}_ops"), order.len() as f64 / secs);
    emit(
        &format!("{name}_wbytes"),
        (write_bytes() - before) as f64 / order.len() as f64,
    );
    emit(&format!("{name}_file"), file_bytes::<E>(dir) as f64);
    Ok(())
}

/// Lets the file system finish what earlier phases left it (the
/// deletion of the previous store, writeback of its pages) before a phase
/// on a fresh store: else that work lands on whichever engine writes
/// next, and on a phase that writes as it goes (mapkv's puts) more than on
/// one that writes at commit. Unsettled, mapkv's fillseq varied from 1.9
/// to 3.6 M puts/s (its commit did not: the puts did); settled, 3.4-3.7.
fn settle() {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Drops the store's pages from the page cache (written out first), so
/// the next reads come from the disk: a store opened after a reboot or
/// after other programs pushed it out of memory.
fn drop_cache<E: Engine>(dir: &Path) -> Res<()> {
    use std::os::unix::io::AsRawFd;
    settle();
    for p in E::files(dir) {
        let f = std::fs::File::open(&p)?;
        // SAFETY: an advice call on an open descriptor; no memory is passed.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(format!("posix_fadvise {}: error {r}", p.display()).into());
        }
    }
    Ok(())
}

/// Gets of `COLD_GETS` random keys right after the store's pages were
/// dropped: µs per get, the first 1,000 and all of them.
fn cold_gets<E: Engine>(dir: &Path, order: &[u32]) -> Res<()> {
    drop_cache::<E>(dir)?;
    let e = E::open(dir)?;
    let keys = &order[..COLD_GETS.min(order.len())];
    let t = Instant::now();
    let (first, _) = e.read(present, &keys[..1000.min(keys.len())])?;
    let first_us = t.elapsed().as_secs_f64() * 1e6 / 1000.min(keys.len()) as f64;
    let (rest, _) = e.read(present, &keys[1000.min(keys.len())..])?;
    let all_us = t.elapsed().as_secs_f64() * 1e6 / keys.len() as f64;
    check("cold gets found", first + rest, keys.len() as u64)?;
    emit("cold_first_us", first_us);
    emit("cold_us", all_us);
    Ok(())
}

fn time_open<E: Engine>(dir: &Path) -> Res<(E, f64)> {
    let mut ms = Vec::new();
    let mut last = None;
    for _ in 0..OPENS {
        drop(last.take());
        let t = Instant::now();
        let e = E::open(dir)?;
        let (found, _) = e.read(present, &[0])?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if found != 1 {
            return Err("a key is missing after reopening".into());
        }
        last = Some(e);
    }
    let e = last.ok_or("no open")?;
    Ok((e, percentile(&mut ms, 0.5)))
}

fn check(what: &str, got: u64, want: u64) -> Res<()> {
    if got != want {
        return Err(format!("{what}: {got} where {want} were expected").into());
    }
    Ok(())
}

/// Every workload on a fresh store under `dir`, `n` keys.
pub fn run<E: Engine>(dir: &Path, n: usize) -> Res<()> {
    check_keys()?;
    let mut rng = Rng(42);
    let fill = rng.permutation(n);
    let reads = rng.permutation(n);
    let reads2 = rng.permutation(n);
    let over = rng.permutation(n);
    let del = rng.permutation(n);
    let seq: Vec<u32> = (0..n as u32).collect();
    let base_anon = status_bytes("RssAnon");

    // fillrandom, then reads, overwrite and delete on the same store.
    let d = dir.join("main");
    settle();
    let e = E::open(&d)?;
    batches("fillrandom", &e, &d, &fill, Some(1))?;
    drop(e);
    cold_gets::<E>(&d, &reads2)?;
    let (e, open_ms) = time_open::<E>(&d)?;
    emit("open_ms", open_ms);

    let t = Instant::now();
    let (found, bytes) = e.read(present, &reads)?;
    emit("readrandom_ops", n as f64 / t.elapsed().as_secs_f64());
    check("readrandom found", found, n as u64)?;
    check("readrandom bytes", bytes, 100 * n as u64)?;

    // The same gets, 1,000 keys per call where the engine can.
    let t = Instant::now();
    if let Some((found, bytes)) = e.read_batched(present, &reads, 1000)? {
        emit("readbatch_ops", n as f64 / t.elapsed().as_secs_f64());
        check("readrandom (batched) found", found, n as u64)?;
        check("readrandom (batched) bytes", bytes, 100 * n as u64)?;
    }

    // The same gets, each key written a byte at a time just before its
    // get, as a program that formats its keys does.
    let t = Instant::now();
    let (found, _) = e.read(|i| key_bytewise(i, false), &reads)?;
    emit(
        "readrandom_bytewise_ops",
        n as f64 / t.elapsed().as_secs_f64(),
    );
    check("readrandom (keys byte by byte) found", found, n as u64)?;

    let t = Instant::now();
    let both = std::thread::scope(|s| {
        let a = s.spawn(|| e.read(present, &reads));
        let b = s.spawn(|| e.read(present, &reads2));
        [a.join(), b.join()]
    });
    emit(
        "readrandom2_ops",
        2.0 * n as f64 / t.elapsed().as_secs_f64(),
    );
    for r in both {
        let (found, _) = r.map_err(|_| "a reader thread panicked")??;
        check("readrandom (2 threads) found", found, n as u64)?;
    }

    let t = Instant::now();
    let (found, _) = e.read(|i| key(i, true), &reads)?;
    emit("readmissing_ops", n as f64 / t.elapsed().as_secs_f64());
    check("readmissing found", found, 0)?;

    let t = Instant::now();
    let (pairs, bytes) = e.scan()?;
    emit("readseq_ops", n as f64 / t.elapsed().as_secs_f64());
    check("readseq pairs", pairs, n as u64)?;
    check("readseq bytes", bytes, 116 * n as u64)?;

    emit(
        "rss_anon",
        status_bytes("RssAnon").saturating_sub(base_anon) as f64,
    );
    emit("rss_file", status_bytes("RssFile") as f64);

    batches("overwrite", &e, &d, &over, Some(2))?;
    let (found, bytes) = e.read(present, &reads[..n.min(1000)])?;
    check("found after overwrite", found, n.min(1000) as u64)?;
    check("bytes after overwrite", bytes, 100 * n.min(1000) as u64)?;
    // The store users live with: half the keys deleted at random, then
    // one-put durable commits that put deleted keys back.
    let gone = &del[..n / 2];
    batches("delete", &e, &d, gone, None)?;
    check("pairs after delete", e.scan()?.0, (n - n / 2) as u64)?;
    emit(
        "delete_alloc_ratio",
        alloc_bytes::<E>(&d) as f64 / raw_bytes(n - n / 2),
    );
    let back = &gone[..CHURN_COMMITS.min(gone.len())];
    let mut worst: f64 = 0.0;
    let mut at_1000 = 0.0;
    one_put_commits("churn", &e, back, 5, |c| {
        if c % 100 == 99 || c + 1 == back.len() {
            let r = alloc_bytes::<E>(&d) as f64 / raw_bytes(n - n / 2 + c + 1);
            worst = worst.max(r);
            if c + 1 == 1000.min(back.len()) {
                at_1000 = r;
            }
        }
    })?;
    emit("churn_alloc_worst", worst);
    emit("churn_alloc_1000", at_1000);
    emit(
        "churn_alloc_end",
        alloc_bytes::<E>(&d) as f64 / raw_bytes(n - n / 2 + back.len()),
    );
    emit(
        "churn_file_end",
        file_bytes::<E>(&d) as f64 / raw_bytes(n - n / 2 + back.len()),
    );
    beside::<E>(&e, &del[n / 2..])?;
    if while_compacting::<E>(&e, &del[n / 2..])? {
        emit(
            "compacted_alloc_ratio",
            alloc_bytes::<E>(&d) as f64 / raw_bytes(n - n / 2 + back.len()),
        );
    }
    batches("delete_rest", &e, &d, &del[..], None)?;
    check("pairs after delete", e.scan()?.0, 0)?;
    drop(e);
    std::fs::remove_dir_all(&d)?;

    // fillsync: single-put durable commits on a fresh store.
    let d = dir.join("sync");
    settle();
    let e = E::open(&d)?;
    let commits = SYNC_COMMITS.min(n);
    let before = write_bytes();
    let mut us = Vec::with_capacity(commits);
    let t = Instant::now();
    for &i in &fill[..commits] {
        let c = Instant::now();
        e.write(&[i], Some(&|i| value(i, 3)))?;
        us.push(c.elapsed().as_secs_f64() * 1e6);
    }
    emit("fillsync_ops", commits as f64 / t.elapsed().as_secs_f64());
    emit(
        "fillsync_wbytes",
        (write_bytes() - before) as f64 / commits as f64,
    );
    emit("fillsync_p50_us", percentile(&mut us, 0.5));
    emit("fillsync_p99_us", percentile(&mut us, 0.99));
    drop(e);
    std::fs::remove_dir_all(&d)?;

    // fillseq: N puts in key order, one durable commit (last: its
    // one huge transaction must not count in the anonymous RSS above).
    // Twice: first right after the stores above were deleted, as on a
    // disk other programs write to (users' disks are rarely idle), then
    // settled (`sync` first).
    for (settled, name) in [(false, "fillseq_busy"), (true, "fillseq")] {
        let d = dir.join(name);
        if settled {
            settle();
        }
        {
            let e = E::open(&d)?;
            let t = Instant::now();
            e.write(&seq, Some(&|i| value(i, 1)))?;
            emit(&format!("{name}_ops"), n as f64 / t.elapsed().as_secs_f64());
            emit(&format!("{name}_file"), file_bytes::<E>(&d) as f64);
        }
        std::fs::remove_dir_all(&d)?;
    }

    emit("peak_rss", status_bytes("VmHWM") as f64);
    Ok(())
}

/// `commits` durable commits of `batch` puts each on a fresh store: run
/// under `strace -c` by the parent to count flushes per commit.
pub fn flushes<E: Engine>(dir: &Path, commits: usize, batch: usize) -> Res<()> {
    let e = E::open(dir)?;
    let order: Vec<u32> = (0..(commits * batch) as u32).collect();
    for chunk in order.chunks(batch.max(1)).take(commits) {
        e.write(chunk, Some(&|i| value(i, 4)))?;
    }
    Ok(())
}

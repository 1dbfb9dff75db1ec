//! The machine's floors, measured in the same run as the engines: what one
//! durable 4 KiB write costs by each route, and what a random dependent
//! memory load costs. A commit cannot beat the first; a cold get is a few
//! of the last.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

use crate::engines::Res;
use crate::stats::percentile;

const ROUNDS: usize = 1000;
const SPAN: u64 = 1 << 20;

/// Median microseconds of each floor, and nanoseconds per DRAM load.
pub struct Floors {
    pub inplace_fdatasync_us: f64,
    /// The 99th percentile of the same writes: the p99 targets
    /// are multiples of it.
    pub inplace_fdatasync_p99_us: f64,
    pub append_fdatasync_us: f64,
    pub msync_page_us: f64,
    pub msync_page_small_us: f64,
    pub dram_load_ns: f64,
}

fn written_file(path: &Path) -> Res<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(&vec![0x5a; SPAN as usize])?;
    f.sync_all()?;
    Ok(f)
}

fn fdatasync(f: &File) -> Res<()> {
    // SAFETY: fdatasync on a descriptor we own.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// One 4 KiB `pwrite` over written blocks + `fdatasync`: the commit floor
/// (median, 99th percentile).
fn inplace(dir: &Path) -> Res<(f64, f64)> {
    let f = written_file(&dir.join("floor-inplace"))?;
    let page = [7u8; 4096];
    let mut us = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS as u64 {
        let t = Instant::now();
        f.write_all_at(&page, (i * 4096 * 17) % SPAN)?;
        fdatasync(&f)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((percentile(&mut us, 0.5), percentile(&mut us, 0.99)))
}

/// One 4 KiB append at the end of the file + `fdatasync` (size changes too).
fn append(dir: &Path) -> Res<f64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("floor-append"))?;
    let page = [7u8; 4096];
    let mut us = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f.write_all(&page)?;
        fdatasync(&f)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(percentile(&mut us, 0.5))
}

/// One byte dirtied through a `MAP_SHARED` mapping of written blocks, then
/// `msync(MS_SYNC)` of its page. With `through_map`, the blocks were
/// written through a `MADV_RANDOM` mapping (as mapkv prepares its log), so
/// the page cache holds 4 KiB folios; otherwise with `write`, which leaves
/// large folios, and `msync` writes back the whole folio around the byte.
fn msync_page(dir: &Path, through_map: bool) -> Res<f64> {
    let f = if through_map {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("floor-msync"))?;
        f.set_len(SPAN)?;
        f
    } else {
        written_file(&dir.join("floor-msync"))?
    };
    // SAFETY: a fresh shared mapping of a file we own, SPAN bytes long; it
    // is written only below SPAN and unmapped before return.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SPAN as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let base = map as *mut u8;
    if through_map {
        // SAFETY: advice on the mapping made above, then writes inside it.
        unsafe {
            libc::madvise(map, SPAN as usize, libc::MADV_RANDOM);
            std::ptr::write_bytes(base, 0x5a, SPAN as usize);
            if libc::msync(map, SPAN as usize, libc::MS_SYNC) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    let mut us = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS as u64 {
        let off = (i * 4096 * 17) % SPAN;
        let t = Instant::now();
        // SAFETY: off < SPAN, inside the mapping; page-aligned for msync.
        let rc = unsafe {
            base.add(off as usize).write_volatile(i as u8);
            libc::msync(base.add(off as usize) as *mut _, 4096, libc::MS_SYNC)
        };
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    // SAFETY: unmapping exactly what was mapped.
    unsafe { libc::munmap(map, SPAN as usize) };
    Ok(percentile(&mut us, 0.5))
}

/// A pointer chase through one random cycle over 256 MiB: every load
/// depends on the one before, so this is DRAM latency (plus TLB misses).
fn dram() -> f64 {
    let n = (256usize << 20) / 8;
    let mut next: Vec<u64> = (0..n as u64).collect();
    // Sattolo's shuffle: one cycle through every slot.
    let mut rng = crate::stats::Rng(0x9e37_79b9);
    for i in (1..n).rev() {
        let j = (rng.next() % i as u64) as usize;
        next.swap(i, j);
    }
    let loads = 20_000_000u64;
    let mut at = 0u64;
    let t = Instant::now();
    for _ in 0..loads {
        at = next[at as usize];
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / loads as f64;
    std::hint::black_box(at);
    ns
}

pub fn measure(dir: &Path) -> Res<Floors> {
    std::fs::create_dir_all(dir)?;
    let (inplace_fdatasync_us, inplace_fdatasync_p99_us) = inplace(dir)?;
    let floors = Floors {
        inplace_fdatasync_us,
        inplace_fdatasync_p99_us,
        append_fdatasync_us: append(dir)?,
        msync_page_us: msync_page(dir, false)?,
        msync_page_small_us: msync_page(dir, true)?,
        dram_load_ns: dram(),
    };
    for name in ["floor-inplace", "floor-append", "floor-msync"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(floors)
}

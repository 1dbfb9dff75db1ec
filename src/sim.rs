//! A simulated disk for crash-consistency testing.
//!
//! A [`SimDisk`] is memory standing in for a store file. It keeps two
//! images: the *live* bytes (what a `MAP_SHARED` mapping shows — the page
//! cache) and the *durable* bytes (what the platter holds). Only a flush
//! copies live to durable; growth is durable at once, as the real backend's
//! growth ends with `fdatasync`. A power cut at any instant is then "the
//! durable image, plus any subset of the sectors that differ in the live
//! one" — exactly what can reach a disk that writes back dirty pages in any
//! order and tears writes at 512-byte sectors.
//!
//! A dirty sector need not land as its latest contents, either: the kernel
//! may write a page back while the writer is still changing it, and then
//! again later (an index slot rewritten by several `Eventual` commits).
//! With [`SimDisk::track_versions`] the disk keeps every version a dirty
//! sector had at each of its I/O calls since the sector was last flushed,
//! and [`CrashPoint::image_versions`] lands any of them.
//!
//! ```
//! use mapkv::{Options, sim::SimDisk};
//!
//! let disk = SimDisk::new(64 << 20);
//! let store = Options::new().open_sim(&disk)?;
//! store.put(b"k", b"v")?;
//! disk.cut_at_flush(disk.flush_count()); // capture the state at the next flush
//! store.put(b"k", b"w")?;
//! let cut = disk.take_cut().expect("a flush happened");
//! // Lose every unflushed sector: the store must still open, at some commit.
//! let crashed = SimDisk::from_image(&cut.image(|_| false), 64 << 20);
//! let store = Options::new().open_sim(&crashed)?;
//! assert_eq!(store.get(b"k")?.as_deref(), Some(&b"v"[..]));
//! # Ok::<(), mapkv::Error>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::format::{LIVE_OFFSET, SPACE_WORKING};
use crate::storage::{Backend, LockId, LockMode, Mapping, Owner, Prepare};

/// Sector size of the simulated disk: the unit a power cut can tear.
pub const SECTOR: u64 = 512;

/// Memory standing in for a store file. Cloning gives another handle to the
/// same disk.
#[derive(Clone)]
pub struct SimDisk {
    shared: Arc<Shared>,
}

struct Shared {
    /// The live image: `capacity` bytes, 8-byte aligned, never moved, so
    /// mappings of it stay valid as the simulated file grows.
    buf: Box<[AtomicU64]>,
    capacity: u64,
    state: Mutex<State>,
    cond: Condvar,
    next_handle: AtomicU64,
}

#[derive(Default)]
struct State {
    len: u64,
    durable: Vec<u8>,
    flushes: u64,
    cut_at: Option<u64>,
    /// With [`SimDisk::track_versions`]: for each sector not flushed since
    /// it changed, the versions it had at the disk's I/O calls, oldest
    /// first.
    versions: Option<HashMap<u64, Vec<Vec<u8>>>>,
    cut: Option<CrashPoint>,
    fail_flushes: bool,
    fail_grows: u32,
    hash_seed: u64,
    locks: HashMap<LockId, Vec<(u64, LockMode)>>,
}

/// The state of a disk at one instant: what is durable and what is only in
/// the page cache. See [`CrashPoint::image`].
#[derive(Clone, Debug)]
pub struct CrashPoint {
    /// Bytes that reached the disk.
    pub durable: Vec<u8>,
    /// Bytes the mapping showed (durable plus unflushed writes).
    pub live: Vec<u8>,
    /// Earlier versions of unflushed sectors, oldest first (empty unless
    /// the disk tracked them: [`SimDisk::track_versions`]).
    pub versions: HashMap<u64, Vec<Vec<u8>>>,
}

impl CrashPoint {
    /// Offsets of the sectors whose live and durable contents differ: the
    /// sectors a power cut may or may not have written.
    pub fn dirty_sectors(&self) -> Vec<u64> {
        self.live
            .chunks(SECTOR as usize)
            .zip(self.durable.chunks(SECTOR as usize))
            .enumerate()
            .filter(|(_, (l, d))| l != d)
            .map(|(i, _)| i as u64 * SECTOR)
            .collect()
    }

    /// The disk after a power cut in which each sector that changed since
    /// it was last flushed lands as one of its versions: `pick(sector,
    /// n)` chooses among `n` of them, 0 being the durable contents, then
    /// the tracked versions oldest first, and `n - 1` the live contents.
    pub fn image_versions(&self, mut pick: impl FnMut(u64, usize) -> usize) -> Vec<u8> {
        let mut out = self.durable.clone();
        let mut sectors: Vec<u64> = self.dirty_sectors();
        sectors.extend(self.versions.keys().copied());
        sectors.sort_unstable();
        sectors.dedup();
        let none = Vec::new();
        for off in sectors {
            let (a, b) = (off as usize, ((off + SECTOR) as usize).min(out.len()));
            if a >= b {
                continue;
            }
            let between = self.versions.get(&off).unwrap_or(&none);
            let n = between.len() + 2;
            let chosen = pick(off, n).min(n - 1);
            if chosen == n - 1 {
                out[a..b].copy_from_slice(&self.live[a..b]);
            } else if chosen > 0 {
                let v = &between[chosen - 1];
                out[a..b].copy_from_slice(&v[..b - a]);
            }
        }
        out
    }

    /// The disk after a power cut: the durable image, with each dirty sector
    /// replaced by its live contents where `land(sector_offset)` says so.
    pub fn image(&self, mut land: impl FnMut(u64) -> bool) -> Vec<u8> {
        let mut out = self.durable.clone();
        for off in self.dirty_sectors() {
            if land(off) {
                let (a, b) = (off as usize, ((off + SECTOR) as usize).min(out.len()));
                out[a..b].copy_from_slice(&self.live[a..b]);
            }
        }
        out
    }
}

impl SimDisk {
    /// An empty disk (a zero-length file) that can grow to `capacity` bytes;
    /// growth past it fails with `ENOSPC`.
    pub fn new(capacity: u64) -> SimDisk {
        let words = capacity.div_ceil(8) as usize;
        let buf = zeroed_words(words);
        SimDisk {
            shared: Arc::new(Shared {
                buf,
                capacity: words as u64 * 8,
                state: Mutex::new(State::default()),
                cond: Condvar::new(),
                next_handle: AtomicU64::new(1),
            }),
        }
    }

    /// A disk whose durable and live contents are `image` (a file after a
    /// crash, or a store built elsewhere).
    ///
    /// # Panics
    /// If `image` is longer than `capacity`.
    pub fn from_image(image: &[u8], capacity: u64) -> SimDisk {
        assert!(image.len() as u64 <= capacity, "image larger than the disk");
        let disk = SimDisk::new(capacity);
        for (i, chunk) in image.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            disk.shared.buf[i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        let mut st = disk.state();
        st.len = image.len() as u64;
        st.durable = image.to_vec();
        drop(st);
        disk
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Current length of the simulated file.
    pub fn len(&self) -> u64 {
        self.state().len
    }

    /// Whether the simulated file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flushes so far (successful or failed).
    pub fn flush_count(&self) -> u64 {
        self.state().flushes
    }

    /// Captures a [`CrashPoint`] when flush number `n` (counting from 0, as
    /// [`flush_count`](Self::flush_count) does) starts, before it writes
    /// anything: the state of a power cut anywhere between flush `n - 1`
    /// returning and flush `n` returning.
    pub fn cut_at_flush(&self, n: u64) {
        let mut st = self.state();
        st.cut_at = Some(n);
        st.cut = None;
    }

    /// The crash point captured by [`cut_at_flush`](Self::cut_at_flush), if
    /// that flush happened.
    pub fn take_cut(&self) -> Option<CrashPoint> {
        self.state().cut.take()
    }

    /// The state right now. Waits for any write transaction on this disk to
    /// end, so the live image is not read while it is being written.
    pub fn crash_point(&self) -> CrashPoint {
        let handle = self.handle(false);
        handle
            .lock(LockId::Writer, LockMode::Exclusive, true)
            .expect("simulated locks do not fail");
        let st = self.state();
        CrashPoint {
            durable: st.durable.clone(),
            live: self.shared.copy_live(st.len),
            versions: st.versions.clone().unwrap_or_default(),
        }
    }

    /// Keeps, from now on, the versions each unflushed sector has at every
    /// I/O call of the disk (writes, flushes, zeroing, punching, the end
    /// of each write transaction), for [`CrashPoint::image_versions`].
    /// Each call then compares the whole file: for small stores.
    pub fn track_versions(&self) {
        self.state().versions.get_or_insert_with(HashMap::new);
    }

    /// Makes every flush fail with `EIO` (and write nothing) while `yes`.
    pub fn fail_flushes(&self, yes: bool) {
        self.state().fail_flushes = yes;
    }

    /// The hash seed stores created on this disk get (default 0), so that
    /// a simulated run is the same every time.
    pub fn set_hash_seed(&self, seed: u64) {
        self.state().hash_seed = seed;
    }

    /// Makes the next `n` growths fail with `ENOSPC`.
    pub fn fail_grows(&self, n: u32) {
        self.state().fail_grows = n;
    }

    pub(crate) fn handle(&self, writable: bool) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
            id: self.shared.next_handle.fetch_add(1, Ordering::Relaxed),
            writable,
        }
    }
}

/// `words` zeroed atomics, allocated with `alloc_zeroed` so that a large
/// simulated disk costs only the pages that are touched.
fn zeroed_words(words: usize) -> Box<[AtomicU64]> {
    if words == 0 {
        return Box::new([]);
    }
    let layout = std::alloc::Layout::array::<AtomicU64>(words).expect("disk size overflows");
    // SAFETY: the layout has non-zero size (words > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut AtomicU64;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` is a fresh allocation of `words` AtomicU64 with the
    // layout Box uses for `[AtomicU64]`; all-zero bytes are a valid
    // AtomicU64 (zero); ownership moves into the Box, which frees it with
    // the same layout.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, words)) }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn base(&self) -> *mut u8 {
        self.buf.as_ptr() as *mut u8
    }

    /// With version tracking on: adds the live contents of every sector
    /// that differs from its last recorded version (or, with none, from
    /// the durable contents).
    fn record_versions(&self, st: &mut State) {
        let State {
            durable, versions, ..
        } = st;
        let Some(versions) = versions else {
            return;
        };
        // Sector by sector, in place: only a sector that changed is copied.
        let words = (SECTOR / 8) as usize;
        let mut sector = Vec::with_capacity(SECTOR as usize);
        for (i, d) in durable.chunks(SECTOR as usize).enumerate() {
            let off = i as u64 * SECTOR;
            let seen = versions
                .get(&off)
                .and_then(|v| v.last())
                .map_or(d, |v| &v[..]);
            let live = &self.buf[i * words..i * words + d.len().div_ceil(8)];
            let same = live
                .iter()
                .zip(seen.chunks(8))
                .all(|(w, s)| w.load(Ordering::Acquire).to_le_bytes()[..s.len()] == *s);
            if !same {
                sector.clear();
                for w in live {
                    sector.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
                }
                sector.truncate(d.len());
                versions.entry(off).or_default().push(sector.clone());
            }
        }
    }

    fn copy_live(&self, len: u64) -> Vec<u8> {
        let mut out = vec![0; len as usize];
        load_words(&self.buf[..len.div_ceil(8) as usize], &mut out);
        out
    }
}

/// Copies `words` (little-endian, each loaded atomically) into `out`, which
/// is at most `8 * words.len()` bytes long; the last word may be cut short.
fn load_words(words: &[AtomicU64], out: &mut [u8]) {
    let full = out.len() / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for (dst, w) in (&mut chunks).zip(words) {
        dst.copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if let Some(w) = words.get(full) {
        let n = rest.len();
        rest.copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes()[..n]);
    }
}

/// One open "file description" of a [`SimDisk`]: locks belong to it, as OFD
/// locks belong to a description.
pub(crate) struct SimHandle {
    shared: Arc<Shared>,
    id: u64,
    writable: bool,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        for holders in st.locks.values_mut() {
            holders.retain(|(h, _)| *h != self.id);
        }
        self.shared.cond.notify_all();
    }
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Backend for SimHandle {
    fn path(&self) -> &Path {
        Path::new("<sim>")
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn shared_writable(&self) -> bool {
        true
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.shared.state().len)
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        assert!(len <= self.shared.capacity);
        let owner: Arc<dyn Send + Sync> = self.shared.clone();
        let cap = self.shared.capacity;
        // SAFETY: the buffer is `capacity` bytes of AtomicU64 (8-aligned),
        // never moved or freed while `owner` (an Arc of it) lives, all of
        // it accessible, and `len <= capacity`.
        Ok(unsafe {
            Mapping::new(
                self.shared.base(),
                len,
                cap,
                true,
                Owner::Sim { _keep: owner },
            )
        })
    }

    fn grow(&self, new_len: u64) -> io::Result<u64> {
        let mut st = self.shared.state();
        if st.fail_grows > 0 {
            st.fail_grows -= 1;
            return Err(enospc());
        }
        if new_len > self.shared.capacity {
            return Err(enospc());
        }
        let old = st.len;
        if new_len > old {
            st.len = new_len;
            st.durable.resize(new_len as usize, 0);
        }
        Ok(old)
    }

    fn zero_range(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: `Backend::zero_range`'s contract: a table no state names
        // yet, under the writer lock.
        unsafe { crate::storage::write_zeros(map, off, len) };
        self.shared.record_versions(&mut self.shared.state());
        Ok(())
    }

    fn write(&self, map: &Mapping, off: u64, data: &[u8]) -> io::Result<()> {
        // The buffer is the page cache: a cut keeps what was flushed.
        // SAFETY: `Backend::write`'s contract: the writer's own uncommitted
        // log, which nothing reads or borrows.
        unsafe { map.write(off, data) };
        self.shared.record_versions(&mut self.shared.state());
        Ok(())
    }

    fn prepare(&self, _map: &Mapping, off: u64, len: u64, use_: Prepare) -> io::Result<()> {
        // Grown space already reads as zeros here, and there is no
        // unwritten-extent cost to move. Free space readied for the log
        // gets its zeros as a file does (and as a punch gives them), so
        // that crash cuts see them land at any time: nobody reads it.
        if use_ == Prepare::Reuse {
            return self.punch(off, len);
        }
        Ok(())
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        // The page cache reads zeros at once; the disk may keep the old
        // bytes until a flush, and either is fine: nobody reads free space.
        let mut st = self.shared.state();
        let (from, to) = (off.div_ceil(8), (off + len).min(st.len) / 8);
        for w in &self.shared.buf[from.min(to) as usize..to as usize] {
            w.store(0, Ordering::Release);
        }
        self.shared.record_versions(&mut st);
        Ok(())
    }

    fn reserve(&self, _off: u64, _len: u64) -> io::Result<()> {
        // The simulated disk has its whole capacity: nothing to reserve.
        // (Full disks on reuse are tested on real files, `Faults`.)
        Ok(())
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.shared.state().len)
    }

    fn shrink(&self, new_len: u64) -> io::Result<()> {
        let mut st = self.shared.state();
        if new_len < st.len {
            // A file cut and grown again reads zeros there.
            for w in &self.shared.buf[new_len.div_ceil(8) as usize..st.len.div_ceil(8) as usize] {
                w.store(0, Ordering::Release);
            }
            st.len = new_len;
            st.durable.truncate(new_len as usize);
            if let Some(v) = &mut st.versions {
                v.retain(|&off, _| off < new_len);
            }
        }
        Ok(())
    }

    fn flush(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        let mut st = self.shared.state();
        let n = st.flushes;
        st.flushes += 1;
        self.shared.record_versions(&mut st);
        if st.cut_at == Some(n) {
            st.cut = Some(CrashPoint {
                durable: st.durable.clone(),
                live: self.shared.copy_live(st.len),
                versions: st.versions.clone().unwrap_or_default(),
            });
        }
        if st.fail_flushes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        // msync works on whole pages.
        let start = off & !(crate::format::PAGE_SIZE - 1);
        let end = crate::format::align_page(off + len)
            .min(st.len)
            .min(map.len());
        if start < end {
            // In bulk where only the holder of the writer lock writes, when
            // this handle holds it (every engine flush does): under the
            // fuzzers' coverage instrumentation, copying the file a word at
            // a time was three quarters of the `ops` target's time. The
            // live header and the reader table, which other threads write,
            // are loaded a word at a time (atomically) always.
            let writer = st
                .locks
                .get(&LockId::Writer)
                .is_some_and(|hs| hs.iter().any(|(h, _)| *h == self.id));
            // Three runs: in bulk, word by word, in bulk (only the middle
            // one, the whole range, without the writer lock).
            let (shared_from, shared_to) = if writer {
                (
                    LIVE_OFFSET.clamp(start, end),
                    SPACE_WORKING[0].clamp(start, end),
                )
            } else {
                (start, end)
            };
            let runs = [
                (start, shared_from, true),
                (shared_from, shared_to, false),
                (shared_to, end, true),
            ];
            for (at, next, bulk) in runs {
                let out = &mut st.durable[at as usize..next as usize];
                if out.is_empty() {
                    continue;
                }
                if !bulk {
                    load_words(
                        &self.shared.buf[(at / 8) as usize..next.div_ceil(8) as usize],
                        out,
                    );
                    continue;
                }
                // SAFETY: `[at, next)` lies inside the buffer (`end` is at
                // most the disk's length, which the buffer holds) and does
                // not overlap `durable`, a separate allocation. It holds
                // meta pages, extent tables, log records and index slots:
                // only the holder of the writer lock writes them, and this
                // handle holds it (checked above) with the engine's writer
                // mutex, whose holder is the caller of `flush`, blocked
                // here. Other threads and handles only load these words
                // meanwhile; a plain read beside atomic reads is no data
                // race.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.shared.base().add(at as usize),
                        out.as_mut_ptr(),
                        out.len(),
                    );
                }
            }
            // Flushed whole pages: their sectors' histories start over.
            if let Some(v) = &mut st.versions {
                v.retain(|&off, _| off < start || off >= end);
            }
        }
        Ok(())
    }

    fn lock(&self, id: LockId, mode: LockMode, wait: bool) -> io::Result<bool> {
        let mut st = self.shared.state();
        loop {
            let holders = st.locks.entry(id).or_default();
            if mode == LockMode::Unlock {
                holders.retain(|(h, _)| *h != self.id);
                if id == LockId::Writer {
                    // The end of a write transaction: its index slots
                    // and live header are a version the kernel may write.
                    self.shared.record_versions(&mut st);
                }
                self.shared.cond.notify_all();
                return Ok(true);
            }
            let conflict = holders.iter().any(|&(h, m)| {
                h != self.id && (mode == LockMode::Exclusive || m == LockMode::Exclusive)
            });
            if !conflict {
                holders.retain(|(h, _)| *h != self.id);
                holders.push((self.id, mode));
                if mode == LockMode::Shared {
                    self.shared.cond.notify_all();
                }
                return Ok(true);
            }
            if !wait {
                return Ok(false);
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn new_hash_seed(&self) -> u64 {
        self.shared.state().hash_seed
    }

    fn held_by_others(&self, id: LockId) -> io::Result<bool> {
        let st = self.shared.state();
        Ok(st
            .locks
            .get(&id)
            .is_some_and(|hs| hs.iter().any(|(h, _)| *h != self.id)))
    }
}

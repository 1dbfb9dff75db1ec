//! The real backend: one file, `mmap(MAP_SHARED)`, growth by
//! `fallocate` + zero-fill + `ftruncate` + `fdatasync`, flush by
//! `msync(MS_SYNC)`, and OFD locks.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Backend, LockId, LockMode, Mapping, Owner, Prepare};
use crate::faults::Faults;
use crate::sys::{self, LockKind};

/// What one `POSIX_FADV_WILLNEED` asks for (`FileBackend::warm`).
const WARM_CHUNK: u64 = 2 << 20;

pub(crate) struct FileBackend {
    file: File,
    path: PathBuf,
    /// The handle may write data (a read-write open).
    writable: bool,
    /// The descriptor is open for writing (a read-write open, or a
    /// read-only one on a file this process may write): the mapping is
    /// writable, for the reader table and wait counters.
    fd_writable: bool,
    faults: Faults,
    /// The file is in memory (`/dev/shm`): durability is that of memory,
    /// so flushes and writeback are skipped (`Options::open_shm`).
    memory: bool,
    /// The thread reading a cold store into memory (`warm`), if one runs.
    warmer: Mutex<Option<Warmer>>,
}

/// The warming thread, and how to stop it.
struct Warmer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Drop for FileBackend {
    /// A closed store leaves no thread behind: the warming thread stops at
    /// its next piece (at most one `fadvise` of `WARM_CHUNK`) and is
    /// joined. A detached one outlived the handle; a leak checker that
    /// looked while it exited is the likely cause of the reports of its
    /// thread-local destructor list in fuzzing (fuzz/README.md).
    fn drop(&mut self) {
        let warmer = self.warmer.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(Warmer { stop, thread }) = warmer.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl FileBackend {
    pub(crate) fn new(
        file: File,
        path: PathBuf,
        writable: bool,
        fd_writable: bool,
        faults: Faults,
    ) -> FileBackend {
        debug_assert!(fd_writable || !writable);
        FileBackend {
            file,
            path,
            writable,
            fd_writable,
            faults,
            memory: false,
            warmer: Mutex::new(None),
        }
    }

    /// Allocates the blocks of `[off, off + len)` without changing what it
    /// reads. Where nothing can be reserved, nothing could be punched
    /// either: the blocks are still there.
    fn keep_blocks(&self, off: u64, len: u64) -> io::Result<()> {
        match sys::fallocate_keep_size(&self.file, off, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            r => r,
        }
    }

    /// Marks the file as memory (a tmpfs object): no flushes.
    pub(crate) fn in_memory(mut self) -> FileBackend {
        self.memory = true;
        self
    }
}

/// Lock bytes (offsets from `sys::LOCK_BASE`). docs/FORMAT.md lists them.
pub(super) fn lock_byte(id: LockId) -> u64 {
    match id {
        LockId::Writer => 0,
        LockId::Open => 1,
        LockId::Live => 2,
        LockId::Pin => 3,
        LockId::Chunk(n) => 64 + n as u64,
    }
}

/// Zero-filling chunk: large enough to be sequential, small enough to keep
/// the buffer cheap.
const ZERO_CHUNK: usize = 1 << 20;

/// `prepare` writes zeros over at most this much of new log space (the
/// rest stays reserved but unwritten: it reads as zeros, and its first
/// writeback converts it).
const ZERO_FILL_MAX: u64 = 2 << 20;

/// Address space to map for a file of `len` bytes: room to grow fourfold,
/// and at least 64 GiB (address space is cheap, and a mapping past the end
/// of the file costs nothing until the file covers it; a remap makes the
/// writer and every reader fault all their pages again — measured: a 64 ms
/// commit in a 10M-key bulk load, the index's pages faulted back in, and
/// 16 ms where the file crossed 1 GiB with a 1 GiB minimum). Where the
/// process may not map that much (`ulimit -v`), `map` asks for less.
pub(super) fn reserve_for(len: u64) -> u64 {
    let want = len.saturating_mul(4).max(64 << 30);
    want.min(crate::format::MAX_FILE_LEN).max(len)
}

impl Backend for FileBackend {
    fn path(&self) -> &Path {
        &self.path
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn shared_writable(&self) -> bool {
        self.fd_writable
    }

    fn durable(&self) -> bool {
        !self.memory
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        // Address space for growth: mapping past the end of the file is
        // allowed, and nothing touches it until the file covers it.
        let map_raw = |reserved: u64| {
            let mut opts = memmap2::MmapOptions::new();
            opts.len(reserved as usize);
            if self.fd_writable {
                opts.map_raw(&self.file)
            } else {
                opts.map_raw_read_only(&self.file)
            }
        };
        let mut reserved = reserve_for(len);
        let raw = loop {
            match map_raw(reserved) {
                Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && reserved > len => {
                    reserved = (reserved / 4).max(len);
                }
                r => break r?,
            }
        };
        // Faults bring in one page, not a readahead window: the index is
        // read and dirtied at random, and large page-cache folios would turn
        // one dirty slot into ~160 KiB of writeback (docs/DESIGN.md).
        raw.advise(memmap2::Advice::Random)?;
        let ptr = raw.as_mut_ptr();
        // SAFETY: `raw` maps `reserved` bytes at a page-aligned address and
        // is moved into the Mapping's owner, so the memory lives as long as
        // the Mapping. The file is `len` bytes long and is never truncated
        // below that while another handle maps it (storage module docs), so
        // no access within `len` can fault.
        Ok(unsafe { Mapping::new(ptr, len, reserved, self.fd_writable, Owner::Mmap(raw)) })
    }

    fn grow(&self, new_len: u64) -> io::Result<u64> {
        let old_len = self.file_len()?;
        if new_len <= old_len {
            return Ok(old_len);
        }
        // 1. Reserve the blocks: a full disk fails here, before anything
        //    changed, instead of as SIGBUS on a later write through the map.
        self.faults.fallocate()?;
        let reserved = match sys::fallocate_keep_size(&self.file, old_len, new_len - old_len) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => false,
            Err(e) => return Err(e),
        };
        // 2. Where blocks could not be reserved, write them now: a hole
        //    written through the map fails as SIGBUS when the disk is full.
        //    (Reserved blocks are "unwritten" extents that read as zeros
        //    with no I/O; `prepare` converts the log's next ones.)
        if !reserved {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut off = old_len;
            while off < new_len {
                let n = (new_len - off).min(ZERO_CHUNK as u64) as usize;
                self.file.write_all_at(&zeros[..n], off)?;
                off += n as u64;
            }
        }
        // 3. The exact length. It becomes durable with the first flush that
        //    makes anything in the new space durable: msync is an fsync of
        //    its range, which commits a changed file size with the data
        //    (and a checkpoint flushes the whole file). Not `fdatasync`
        //    here: that would also write every dirty index page of the file
        //    (measured: 55-65 ms per growth during a bulk load).
        self.faults.ftruncate()?;
        self.file.set_len(new_len)?;
        Ok(old_len)
    }

    fn prepare(&self, map: &Mapping, off: u64, len: u64, use_: Prepare) -> io::Result<()> {
        let len = len.min(ZERO_FILL_MAX);
        if self.memory && use_ != Prepare::Table {
            // Shared memory (tmpfs): `grow` (or `reserve`) allocated the
            // pages already; there is no conversion of unwritten blocks to
            // get ahead of. Free space is not kept back from punching for
            // nothing: it is memory.
            return match use_ {
                Prepare::Reuse => Err(io::ErrorKind::Unsupported.into()),
                _ => Ok(()),
            };
        }
        if use_ == Prepare::Reuse {
            // Drop the old page cache (see `reserve`); unsupported where
            // nothing was cached in large folios by a disk file system.
            match sys::zero_range(&self.file, off, len) {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
                r => r?,
            }
        }
        if use_ == Prepare::Table {
            // Through the map, and left dirty: the move that comes then
            // stores slots there with no fault at all (a write-protect
            // fault after writeback cost ~9 µs a page). The kernel's
            // writeback, or the first checkpoint after the move, converts
            // the extents in large runs.
            // SAFETY: `Backend::prepare`'s contract: free space past every
            // allocation, under the writer lock.
            unsafe { crate::storage::write_zeros(map, off, len) };
            return Ok(());
        }
        // The log's: with `pwrite` (see `write`), a page at a time, so each
        // lands in a small folio (the space may yet become an index table,
        // whose slots are dirtied through the map one at a time), then
        // their writeback started without waiting. The unwritten extents
        // are converted when that I/O completes, in the background, instead
        // of in a later commit's msync; the pages stay cached. (Zeros
        // written in large writes would land in large folios, and dropping
        // those made every page fault back from disk: a third of a bulk
        // load's time.)
        let page = [0u8; 4096];
        let mut p = off;
        while p < off + len {
            let n = (off + len - p).min(page.len() as u64) as usize;
            self.file.write_all_at(&page[..n], p)?;
            p += n as u64;
        }
        sys::start_writeback(&self.file, off, len)
    }

    fn zero_range(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        match sys::zero_range(&self.file, off, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // SAFETY: `Backend::zero_range`'s contract: a table no
                // state names yet, under the writer lock.
                unsafe { crate::storage::write_zeros(map, off, len) };
                Ok(())
            }
            r => r,
        }
    }

    fn shrink(&self, new_len: u64) -> io::Result<()> {
        self.faults.ftruncate()?;
        self.file.set_len(new_len)?;
        self.file.sync_data()
    }

    fn warm(&self, ranges: Vec<(u64, u64)>) {
        // A thread of its own: fadvise submits the reads before it returns,
        // which for a whole store takes long enough to show in an open.
        // A new open file description, not a `dup` of ours: OFD locks
        // belong to the description, and while the thread was detached a
        // dup kept this handle's locks (Open, its reader-table chunks,
        // Pin) after it closed. Now close joins the thread; the thread
        // still shares none of the handle's locks. The page cache is the
        // file's either way.
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        let faults = self.faults.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("mapkv-warm".into())
            .spawn(move || {
                faults.point(crate::faults::PausePoint::Warming);
                // The kernel reads at most its readahead window (8 MiB
                // here) per call and ignores the rest: ask in 2 MiB pieces.
                for (off, len) in ranges {
                    let end = off.saturating_add(len);
                    let mut at = off;
                    while at < end {
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                        let n = (end - at).min(WARM_CHUNK);
                        if sys::will_need(&file, at, n).is_err() {
                            return;
                        }
                        at += n;
                    }
                }
            });
        // No thread (resource limits): the store is only colder.
        if let Ok(thread) = spawned {
            let mut slot = self.warmer.lock().unwrap_or_else(|e| e.into_inner());
            // One warming per open; a second would only replace a finished
            // one, which is joined here rather than at close.
            if let Some(old) = slot.replace(Warmer { stop, thread }) {
                let _ = old.thread.join();
            }
        }
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        match sys::punch_hole(&self.file, off, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            r => r,
        }
    }

    fn reserve(&self, off: u64, len: u64) -> io::Result<()> {
        self.faults.fallocate()?;
        // Zeroing reserves as `fallocate` does, and also drops what the
        // page cache holds of the range. Free space not yet punched may
        // still be cached in the large folios of the large writes that
        // filled it, and a small commit's write into one dirtied, and
        // wrote back, all of it: on a probe of the comparison's churned
        // store, 75 KB per one-put commit (12.5 KB with this), in folios
        // of up to 256 KiB (order 6).
        match sys::zero_range(&self.file, off, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.keep_blocks(off, len),
            r => r,
        }
    }

    fn reserve_prepared(&self, off: u64, len: u64) -> io::Result<()> {
        self.faults.fallocate()?;
        // Blocks the prepared zeros already hold make this a no-op; it
        // matters only where the range was punched since.
        self.keep_blocks(off, len)
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn write(&self, _map: &Mapping, off: u64, data: &[u8]) -> io::Result<()> {
        // Not through the map: a page written there is mapped writable,
        // and its writeback must write-protect it again — a TLB flush that
        // interrupts every thread of this process, per page. Readers in the
        // same process ran at 63-73% of their speed during a compaction
        // that way, and at 91% with the log written here.
        self.faults.write()?;
        self.file.write_all_at(data, off)
    }

    fn start_writeback(&self, off: u64, len: u64) {
        if self.memory {
            return;
        }
        // Errors are the flush's to report.
        let _ = sys::start_writeback(&self.file, off, len);
    }

    fn flush(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        if self.memory {
            // Memory is as durable as a shared-memory store gets.
            return Ok(());
        }
        self.faults.msync()?;
        map.msync(off, len)
    }

    fn lock(&self, id: LockId, mode: LockMode, wait: bool) -> io::Result<bool> {
        let kind = match mode {
            LockMode::Shared => LockKind::Read,
            LockMode::Exclusive => LockKind::Write,
            LockMode::Unlock => LockKind::Unlock,
        };
        sys::ofd_lock(&self.file, lock_byte(id), kind, wait)
    }

    fn held_by_others(&self, id: LockId) -> io::Result<bool> {
        sys::ofd_held_by_others(&self.file, lock_byte(id))
    }

    fn new_hash_seed(&self) -> u64 {
        random_hash_seed()
    }
}

/// A per-store random seed: no input can be crafted offline to make every
/// key collide in every store.
pub(super) fn random_hash_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty file in a temporary directory (kept alive by the
    /// first value).
    fn scratch_file() -> (tempfile::TempDir, PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (dir, path, file)
    }

    /// Space reused is zeroed as it is reserved, which drops what the
    /// page cache held of it: a small write into the large folios that
    /// earlier large writes left there dirtied, and wrote back, whole
    /// folios (docs/DESIGN.md, "Holes"). The bytes around it stay.
    #[test]
    fn reserving_free_space_drops_what_it_held() {
        let (dir, path, file) = scratch_file();
        let mib = 1 << 20;
        file.write_all_at(&vec![7u8; mib], 0).unwrap();
        if let Err(e) = sys::zero_range(&file, 0, 4096) {
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
            println!("skipped: the file system of {dir:?} cannot zero a range");
            return;
        }
        file.write_all_at(&[7u8; 4096], 0).unwrap();
        let b = FileBackend::new(file, path, true, true, Faults::default());
        b.reserve(mib as u64 / 4, mib as u64 / 2).unwrap();
        let mut buf = vec![1u8; mib];
        b.file.read_exact_at(&mut buf, 0).unwrap();
        let (before, rest) = buf.split_at(mib / 4);
        let (reserved, after) = rest.split_at(mib / 2);
        assert!(before.iter().all(|&x| x == 7), "the bytes before changed");
        assert!(reserved.iter().all(|&x| x == 0), "the range kept its bytes");
        assert!(after.iter().all(|&x| x == 7), "the bytes after changed");
    }

    /// Free space prepared for the log (`Prepare::Reuse`) is written, not
    /// merely reserved: the log's appends there then cost the file system
    /// no conversion of unwritten blocks, page by page, at the end of
    /// each commit's I/O (docs/DESIGN.md, "Holes"). Reserving it for the
    /// log keeps it so; reserving it as other free space does not.
    #[test]
    fn free_space_prepared_for_the_log_is_written_and_stays_so() {
        let (dir, path, file) = scratch_file();
        let (mib, quarter) = (1u64 << 20, 1u64 << 18);
        file.write_all_at(&vec![7u8; mib as usize], 0).unwrap();
        match (
            sys::punch_hole(&file, quarter, 2 * quarter),
            sys::unwritten_bytes(&file, 0, mib),
        ) {
            (Ok(()), Ok(_)) => {}
            (r, u) => {
                println!("skipped: {dir:?} cannot punch ({r:?}) or map extents ({u:?})");
                return;
            }
        }
        let b = FileBackend::new(file, path, true, true, Faults::default());
        let map = b.map(mib).unwrap();
        assert_eq!(
            sys::unwritten_bytes(&b.file, quarter, 2 * quarter).unwrap(),
            2 * quarter,
            "setup: the hole"
        );
        b.prepare(&map, quarter, 2 * quarter, Prepare::Reuse)
            .unwrap();
        assert_eq!(
            sys::unwritten_bytes(&b.file, quarter, 2 * quarter).unwrap(),
            0,
            "prepared free space is not written"
        );
        b.reserve_prepared(quarter, quarter).unwrap();
        assert_eq!(
            sys::unwritten_bytes(&b.file, quarter, quarter).unwrap(),
            0,
            "reserving prepared space for the log unwrote it"
        );
        b.reserve(2 * quarter, quarter).unwrap();
        let unwritten = sys::unwritten_bytes(&b.file, 2 * quarter, quarter).unwrap();
        println!("a plain reserve left {unwritten} of {quarter} bytes unwritten");
        let mut buf = vec![1u8; mib as usize];
        b.file.read_exact_at(&mut buf, 0).unwrap();
        let q = quarter as usize;
        assert!(buf[..q].iter().all(|&x| x == 7), "the bytes before changed");
        assert!(buf[q..3 * q].iter().all(|&x| x == 0), "not zeros");
        assert!(
            buf[3 * q..].iter().all(|&x| x == 7),
            "the bytes after changed"
        );
    }
}

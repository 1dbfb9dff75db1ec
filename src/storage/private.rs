//! Private views: the file mapped `MAP_PRIVATE` (copy-on-write) and never
//! written (`Options::private`).
//!
//! The view is one region of address space for its whole life: anonymous
//! memory (zeros) with the file mapped privately over its first bytes.
//! Every write the engine makes lands in the view's own copy of the page;
//! growth is the anonymous memory past the file, so the file's length is
//! never touched. Pages the view has not written still show the file's
//! page cache, which another process's writer may change, so:
//!
//! - the view holds the real file's `Open` lock (shared: nobody shrinks
//!   the file under it) and `Pin` lock (no writer frees space: committed
//!   records stay as they are) for its lifetime;
//! - opening copies (`own`) what the engine trusts from the file before it
//!   reads it: the fixed pages here, the index tables the meta page names
//!   in `Shared::open`. The rest it reads is committed log, which `Pin`
//!   keeps still, or its own writes.
//!
//! Opening then recovers from the meta page on the private copy, as after
//! a crash: the locks the engine takes are the view's own (nobody else is
//! in its world), so no live header is trusted.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::file::{lock_byte, reserve_for};
use super::{Backend, LockId, LockMode, Mapping, Owner, Prepare};
use crate::format::{DATA_START, PAGE_SIZE};
use crate::sys::{self, LockKind};

/// `MADV_POPULATE_WRITE` (Linux 5.14): fault pages in as if written, which
/// for a private mapping copies them, without changing a byte.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// The view's address space: unmapped when the last mapping of it goes.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    reserved: u64,
}

// SAFETY: the region is a pointer to memory this struct owns (unmapped
// only in Drop); the bytes are accessed through `Mapping`s under the same
// rules as a shared mapping (storage module docs).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `reserved` bytes of zeros and maps the first `len` bytes
    /// of `file` privately over them.
    fn map(file: &File, len: u64, reserved: u64) -> io::Result<Region> {
        use std::os::fd::AsRawFd;
        let mut reserved = reserved;
        let base = loop {
            // SAFETY: a new anonymous mapping at an address the kernel
            // picks; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    reserved as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                break p;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOMEM) && reserved > len {
                reserved = (reserved / 4).max(len);
                continue;
            }
            return Err(err);
        };
        let region = Region {
            ptr: NonNull::new(base as *mut u8).ok_or_else(|| io::Error::other("mmap gave null"))?,
            reserved,
        };
        let file_part = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if file_part > 0 {
            // SAFETY: `base` starts `reserved >= file_part` bytes of
            // address space this Region owns and nothing references yet;
            // MAP_FIXED replaces that part of it with the file's pages.
            let p = unsafe {
                libc::mmap(
                    base,
                    file_part as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error()); // `region` unmaps
            }
        }
        Ok(region)
    }

    /// Copies the pages of `[off, off + len)` (inside the region) into
    /// the view, leaving their bytes as they are.
    fn own(&self, off: u64, len: u64) {
        let start = off & !(PAGE_SIZE - 1);
        let end = off.saturating_add(len).min(self.reserved);
        if start >= end {
            return;
        }
        // SAFETY: the range lies inside the region (clamped above) and the
        // start is page-aligned; the advice changes no byte.
        let r = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start as usize) as *mut libc::c_void,
                (end - start) as usize,
                MADV_POPULATE_WRITE,
            )
        };
        if r == 0 {
            return;
        }
        // An older kernel: write each page's first word onto itself with
        // an atomic add of zero, which copies the page and changes nothing
        // even if another process changes the word at the same moment.
        let mut p = start;
        while p < end {
            // SAFETY: `p` is a page-aligned (so 8-aligned) offset inside
            // the region; shared words are only ever accessed as atomics.
            let word = unsafe { &*(self.ptr.as_ptr().add(p as usize) as *const AtomicU64) };
            word.fetch_add(0, Ordering::SeqCst);
            p += PAGE_SIZE;
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region was mapped in `Region::map` with this length
        // and the last Mapping borrowing it is gone (they hold the Arc).
        unsafe {
            libc::munmap(
                self.ptr.as_ptr() as *mut libc::c_void,
                self.reserved as usize,
            )
        };
    }
}

pub(crate) struct PrivateBackend {
    /// The real file, read-only: it holds `Open` and `Pin` (shared).
    file: File,
    path: PathBuf,
    region: Arc<Region>,
    /// The view's length.
    len: AtomicU64,
    /// The longest the view has been: past `len` and up to here lie bytes
    /// of a longer past (a shrink), which growth must zero again.
    high: AtomicU64,
}

impl PrivateBackend {
    /// A private view of `file`, with its fixed pages already copied.
    pub(crate) fn new(file: File, path: PathBuf) -> io::Result<PrivateBackend> {
        // First the locks, then the length: a handle that is alone takes
        // `Open` exclusively to shrink the file, so after this it cannot.
        sys::ofd_lock(&file, lock_byte(LockId::Open), LockKind::Read, true)?;
        sys::ofd_lock(&file, lock_byte(LockId::Pin), LockKind::Read, true)?;
        let len = file.metadata()?.len();
        let region = Region::map(&file, len, reserve_for(len))?;
        region.own(0, DATA_START.min(len));
        Ok(PrivateBackend {
            file,
            path,
            region: Arc::new(region),
            len: AtomicU64::new(len),
            high: AtomicU64::new(len),
        })
    }

    fn too_long(&self, len: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "a private view cannot grow to {len} bytes: it reserved {} bytes of address space",
                self.region.reserved
            ),
        )
    }
}

impl Backend for PrivateBackend {
    fn path(&self) -> &Path {
        &self.path
    }

    fn writable(&self) -> bool {
        true
    }

    fn shared_writable(&self) -> bool {
        true
    }

    fn durable(&self) -> bool {
        false
    }

    fn shared_log(&self) -> bool {
        false
    }

    fn own(&self, _map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        self.region.own(
            off,
            len.min(self.len.load(Ordering::Acquire).saturating_sub(off)),
        );
        Ok(())
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        if len > self.region.reserved {
            return Err(self.too_long(len));
        }
        // SAFETY: the region reserves `reserved` bytes at a page-aligned
        // address for as long as the Arc in the owner lives; all of it is
        // mapped (file pages, then zeros), so no access can fault.
        Ok(unsafe {
            Mapping::new(
                self.region.ptr.as_ptr(),
                len,
                self.region.reserved,
                true,
                Owner::Private {
                    _keep: self.region.clone(),
                },
            )
        })
    }

    fn grow(&self, new_len: u64) -> io::Result<u64> {
        let old = self.len.load(Ordering::Acquire);
        if new_len <= old {
            return Ok(old);
        }
        if new_len > self.region.reserved {
            return Err(self.too_long(new_len));
        }
        let stale_end = self.high.load(Ordering::Acquire).min(new_len);
        if stale_end > old {
            // SAFETY: `[old, stale_end)` is inside the region and past the
            // view's length: no state names it and nothing borrows it
            // (the writer lock is held by the caller of `grow`).
            unsafe {
                std::ptr::write_bytes(
                    self.region.ptr.as_ptr().add(old as usize),
                    0,
                    (stale_end - old) as usize,
                )
            };
        }
        self.high.fetch_max(new_len, Ordering::AcqRel);
        self.len.store(new_len, Ordering::Release);
        Ok(old)
    }

    fn prepare(&self, _map: &Mapping, _off: u64, _len: u64, _use: Prepare) -> io::Result<()> {
        Ok(())
    }

    fn zero_range(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: `Backend::zero_range`'s contract: a table no state names
        // yet, under the writer lock.
        unsafe { super::write_zeros(map, off, len) };
        Ok(())
    }

    fn shrink(&self, new_len: u64) -> io::Result<()> {
        // The memory stays mapped (this process's older mappings may reach
        // past the new end); `grow` zeros it before it is used again.
        self.len.fetch_min(new_len, Ordering::AcqRel);
        Ok(())
    }

    fn warm(&self, _ranges: Vec<(u64, u64)>) {}

    fn punch(&self, _off: u64, _len: u64) -> io::Result<()> {
        // Nothing to give back to a file system; the view's memory for
        // these pages stays until it closes.
        Ok(())
    }

    fn reserve(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        self.file_len()
    }

    fn write(&self, map: &Mapping, off: u64, data: &[u8]) -> io::Result<()> {
        // SAFETY: `Backend::write`'s contract: the caller holds the writer
        // lock and writes uncommitted log of its own, which nothing reads
        // or borrows yet.
        unsafe { map.write(off, data) };
        Ok(())
    }

    fn start_writeback(&self, _off: u64, _len: u64) {}

    fn flush(&self, _map: &Mapping, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn lock(&self, _id: LockId, _mode: LockMode, _wait: bool) -> io::Result<bool> {
        // The view is alone in its world: its own threads are ordered by
        // the engine's mutexes, and no other handle sees its copy. (The
        // real file's `Open` and `Pin` are held by `file` since `new`.)
        let _ = &self.file;
        Ok(true)
    }

    fn held_by_others(&self, _id: LockId) -> io::Result<bool> {
        Ok(false)
    }

    fn new_hash_seed(&self) -> u64 {
        super::file::random_hash_seed()
    }
}

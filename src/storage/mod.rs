//! Storage: the bytes of a store and the operations on them that can fail.
//!
//! The engine sees a store as a [`Mapping`] (a window of bytes it reads and
//! writes in place) plus a [`Backend`] that can grow the file, flush a range
//! and take locks. Two backends exist: [`file::FileBackend`] (the real one:
//! `mmap(MAP_SHARED)`, `fallocate`, `msync`, OFD locks) and
//! [`crate::sim::SimDisk`] (memory that records what was flushed, for
//! power-loss simulation and fault injection).
//!
//! # Why handing out `&[u8]` into a shared mapping is sound here
//!
//! A `MAP_SHARED` mapping can be written by this thread, another thread, or
//! another process at any time. A Rust reference promises the bytes behind
//! it do not change while it lives; the engine keeps that promise by
//! splitting the file into three kinds of bytes and accessing each kind in
//! only one way:
//!
//! 1. **Shared mutable words** — the meta pages, the live header, the
//!    reader table and the index slots. They change while others read them,
//!    so they are *only* read and written through `AtomicU64` (8-byte
//!    aligned: all of them are page-aligned structures of whole words). No
//!    reference to their bytes is ever formed. Meta pages are copied out word by word and then
//!    checked by CRC, so a copy torn by a concurrent write is rejected, not
//!    trusted.
//! 2. **Committed log records** — written once by the writer *before* the
//!    commit that contains them is published, and not written again while
//!    any snapshot that can reach them is open: compaction retires an
//!    extent, and its space is freed (punched) and reused only once every
//!    snapshot older than the retiring commit has ended, in every process
//!    (docs/DESIGN.md, "Reclamation rules"; "What frees space or moves what
//!    the state names: the audit" lists every place that frees space). A reader only reaches a record through an index slot or a
//!    commit it loaded with `Acquire` ordering after the writer's `Release`
//!    store, so the bytes are complete and stable for as long as the mapping
//!    lives. `&[u8]` borrows are handed out only for these bytes, and only
//!    with a lifetime tied to a transaction that holds the mapping (`Arc`).
//! 3. **The log beyond the published tail** — written only by the holder of
//!    the writer lock (one per store across processes), read only by it (for
//!    its own uncommitted records and for recovery). Nobody else forms a
//!    reference to these bytes.
//!
//! The boundary is in the types: [`Mapping::bytes`] borrows only a
//! [`Span`], which is made only for a range its [`Fence`] admits (at or
//! past `DATA_START`, outside the state's index tables), so no offset read
//! from the file is borrowed unchecked; writing through the map
//! ([`Mapping::write`], [`write_zeros`]) is `unsafe`.
//!
//! Growth never moves bytes under a reader: a grown file is mapped anew and
//! the old [`Mapping`] stays alive (`Arc`) until the last transaction using
//! it ends. The file is cut shorter only by a handle that holds it alone
//! (no other process maps it), only by free space that no snapshot of this
//! process can read, and only after a state with the shorter length is
//! published (`Shared::shrink`): this process's older mappings extend past
//! the new end, but nothing they can reach lies there. What this cannot defend
//! against is another program writing the file outside mapkv's protocol; as
//! with every `mmap` database (LMDB included), that is outside the contract
//! (see the crate's *Caveats*).

pub(crate) mod file;
pub(crate) mod private;

use std::io;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::format::DATA_START;

/// Which advisory lock (see `docs/DESIGN.md`, "Locks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LockId {
    /// Exclusive: held by the one writer for the length of a write
    /// transaction (and during open-time recovery).
    Writer,
    /// Shared by every open store; exclusive means "this handle is alone".
    Open,
    /// Shared by every handle whose live header is valid; nobody holding it
    /// means the live header may be stale (left from before a reboot).
    Live,
    /// Shared by every handle that reads without registering its snapshots
    /// in the reader table (it cannot write the file, or opened with no
    /// live header): while anyone holds it, no log space may be reused.
    Pin,
    /// Exclusive: the owner of chunk `n` of the reader table; held for as
    /// long as the handle lives, so a chunk whose lock is free is dead.
    Chunk(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
    Unlock,
}

/// What the engine needs from the thing that holds the bytes.
///
/// Contract, one line each:
/// - `file_len`: the current length of the underlying file.
/// - `map`: a mapping of the first `len` bytes (`len` ≤ `file_len`).
/// - `grow`: make `[file_len, new_len)` real (allocated, zero) and the new
///   length durable, or fail leaving the length as it was.
/// - `write`: put bytes into the file at `off` (inside it) so that `map`
///   reads them — for the file, `pwrite` into the page cache the map
///   shares, which leaves the pages mapped read-only (docs/DESIGN.md,
///   "Writing the log").
/// - `flush`: make `[off, off + len)` of `map` durable (`msync(MS_SYNC)`).
/// - `lock`: take, convert or release an advisory lock held by this handle;
///   `false` when `wait` is false and another handle holds a conflicting one.
/// - `held_by_others`: whether another handle holds `id` in any mode.
/// - `shared_writable`: whether this handle may write the shared words a
///   reader writes (reader table, wait counters) — true unless the file
///   could only be opened for reading.
/// - `new_hash_seed`: the hash seed for a store being created.
pub(crate) trait Backend: Send + Sync {
    fn path(&self) -> &Path;
    fn writable(&self) -> bool;
    fn shared_writable(&self) -> bool;
    /// Whether a flush makes anything outlive a reboot: false for a store
    /// in shared memory or a private view, whose commits are
    /// `Durability::Memory` whatever was asked.
    fn durable(&self) -> bool {
        true
    }
    /// Whether another handle's commits can appear in this handle's log:
    /// a writer that dies leaves commits past the published tail, which
    /// the next writer adopts. False for a private view, where what lies
    /// past its tail in pages it has not copied is another process's
    /// work in the real file, not its own.
    fn shared_log(&self) -> bool {
        true
    }
    /// Makes `[off, off + len)` this handle's own before the engine trusts
    /// it: a private view copies the pages now, so that another process
    /// writing the file later does not show through. Nothing to do for
    /// the others.
    fn own(&self, _map: &Mapping, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn file_len(&self) -> io::Result<u64>;
    fn map(&self, len: u64) -> io::Result<Mapping>;
    /// Grows the file to `new_len` with blocks reserved (unwritten: they
    /// read as zeros with no I/O). The new length becomes durable with the
    /// next flush that covers any of the new space. Returns the length
    /// the file had (if that was `new_len` or more, nothing changed).
    fn grow(&self, new_len: u64) -> io::Result<u64>;
    /// Readies `[off, off + len)` of fresh space (grown, past everything
    /// allocated, seen by nobody else): writes zeros there, so that a
    /// later commit's writes do not pay the page faults, and for the log
    /// starts writing them out, so that its flush does not pay the file
    /// system's conversion of unwritten blocks (docs/DESIGN.md, "Growth",
    /// "Preparing ahead"). May do less than `len`; nothing depends on it
    /// for correctness. An error says nothing was prepared: a range
    /// prepared for reuse is kept back from punching, and one that is not
    /// should not be (`Unsupported`: there is nothing to gain, as in a
    /// store in shared memory). `use_` says whether the space is meant
    /// for the log or for an index table.
    ///
    /// Callers hold the writer lock, and `[off, off + len)` is free space
    /// (past every allocation, or for `Prepare::Reuse` a free range of the
    /// extent table): no snapshot reaches it and nothing borrows it.
    fn prepare(&self, map: &Mapping, off: u64, len: u64, use_: Prepare) -> io::Result<()>;
    /// Makes `[off, off + len)` (inside the file) read as zeros, cheaply
    /// where the file system can; durable with the next flush of the map.
    /// Callers hold the writer lock, and the range is an index table no
    /// published state names yet: nothing reads or borrows it.
    fn zero_range(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()>;
    /// Cuts the file to `new_len` bytes and makes the length durable.
    /// Only called by a handle that holds the store alone, after a
    /// checkpoint that names nothing past `new_len`.
    fn shrink(&self, new_len: u64) -> io::Result<()>;
    /// Starts reading `ranges` into the page cache in the background (a
    /// store opened on a cold cache), in order, without blocking the
    /// caller. A hint: nothing depends on it. The default does nothing.
    fn warm(&self, _ranges: Vec<(u64, u64)>) {}
    /// Gives the disk blocks of `[off, off + len)` back to the file system
    /// without changing the file's length (`FALLOC_FL_PUNCH_HOLE`): free
    /// space, which no snapshot, no index slot and no recovery reads. It
    /// reads as zeros afterwards. A hint: `Ok` where the file system
    /// cannot, and errors change nothing the store relies on.
    fn punch(&self, off: u64, len: u64) -> io::Result<()>;
    /// Makes sure `[off, off + len)` (inside the file; free space about to
    /// be reused, perhaps punched) has blocks, before anything is written
    /// there: a full disk fails here (`ENOSPC`), never as SIGBUS on a write
    /// through the map. What the range held may read as zeros afterwards
    /// (nobody reads free space).
    fn reserve(&self, off: u64, len: u64) -> io::Result<()>;
    /// [`reserve`](Self::reserve) for a range `prepare` readied for reuse
    /// (`Prepare::Reuse`): its blocks are made sure of without dropping
    /// the zeros prepared there.
    fn reserve_prepared(&self, off: u64, len: u64) -> io::Result<()> {
        self.reserve(off, len)
    }
    /// Bytes of disk the file holds (`st_blocks × 512`): less than its
    /// length where free space was punched.
    fn allocated_bytes(&self) -> io::Result<u64>;
    /// Writes `data` at `off` (`pwrite` for a file). Callers hold the
    /// writer lock, and the range is their own uncommitted log (rule 3)
    /// or an index table that no published state names yet (read by
    /// nobody until the publish that names it, then only through atomics,
    /// rule 1): no snapshot reaches it and nothing borrows it.
    fn write(&self, map: &Mapping, off: u64, data: &[u8]) -> io::Result<()>;
    /// Starts writing `[off, off + len)` out without waiting, so that a
    /// later flush of it finds less to do. A hint: nothing depends on it.
    fn start_writeback(&self, _off: u64, _len: u64) {}
    fn flush(&self, map: &Mapping, off: u64, len: u64) -> io::Result<()>;
    fn lock(&self, id: LockId, mode: LockMode, wait: bool) -> io::Result<bool>;
    fn held_by_others(&self, id: LockId) -> io::Result<bool>;
    fn new_hash_seed(&self) -> u64;
}

/// What prepared space is meant for (`Backend::prepare`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prepare {
    /// The log, written with `pwrite`: zeros written the same way, so the
    /// pages are never mapped writable (docs/DESIGN.md, "Writing the log").
    Log,
    /// An index table, whose slots are stored through the map: zeros
    /// written through the map too and left dirty, so that the pages are
    /// mapped writable when its move starts and a slot store costs no
    /// fault.
    Table,
    /// A free range inside the file that the log takes next (reused
    /// space, unwritten): what the page cache still holds of it is dropped
    /// first (the large folios of the writes that filled it before, which
    /// a small write would dirty whole), then as `Log`.
    Reuse,
}

/// What keeps a mapping's memory alive.
pub(crate) enum Owner {
    Mmap(memmap2::MmapRaw),
    /// A private view's region (`private::Region`), shared by all its
    /// mappings.
    Private {
        _keep: Arc<private::Region>,
    },
    /// Only held: the Arc keeps the simulated disk's buffer alive.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Sim {
        _keep: Arc<dyn Send + Sync>,
    },
}

/// A window onto the first `len` bytes of a store.
///
/// All raw-pointer access of the crate happens in this impl. See the module
/// docs for the rules each method relies on. The mapping may reserve more
/// address space than the file has (`reserved`): only the first `len`
/// bytes, which the file is known to cover, are ever accessed, and `len`
/// grows (`extend`) as the file does, so most growths need no new mapping
/// (a new mapping starts with no pages mapped: every reader faults them
/// all in again).
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: AtomicU64,
    reserved: u64,
    writable: bool,
    owner: Owner,
}

// SAFETY: a Mapping is a pointer into memory owned by `owner` (an mmap or a
// heap buffer kept alive by an Arc), which lives as long as the Mapping. The
// pointer itself is never mutated. Concurrent access to the bytes follows
// the three rules in the module docs: atomics for shared words, immutable
// committed records, writer-only uncommitted log. None of these depend on
// which thread holds the Mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes atomics, reads of immutable
// bytes, and writes that the writer lock makes exclusive.
unsafe impl Sync for Mapping {}

/// The ranges of the file that no borrow of mapped bytes may cover: the
/// fixed pages below `DATA_START` (meta pages, live header, reader table,
/// extent tables) and the index tables a state names, whose slots are
/// stored atomically while others read (rule 1). Offsets read from the
/// file are checked against it before anything is borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fence {
    tables: [(u64, u64); 2],
}

impl Fence {
    /// A fence around `tables` (`(offset, length)`; a length of 0 is none).
    pub(crate) fn new(tables: [(u64, u64); 2]) -> Fence {
        Fence {
            tables: tables.map(|(off, len)| (off, off.saturating_add(len))),
        }
    }

    /// The tables, as `(start, end)`; `(x, x)` is none.
    pub(crate) fn tables(&self) -> [(u64, u64); 2] {
        self.tables
    }

    /// Whether `[off, off + len)` lies in the data area and outside every
    /// table.
    #[inline]
    pub(crate) fn admits(&self, off: u64, len: u64) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        off >= DATA_START
            && self
                .tables
                .iter()
                .all(|&(start, stop)| end <= start || off >= stop)
    }
}

/// A range of log bytes that passed a [`Fence`]: the only way to borrow
/// mapped bytes ([`Mapping::bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    off: u64,
    len: u64,
}

impl Span {
    /// `[off, off + len)` if `fence` admits it.
    #[inline]
    pub(crate) fn new(off: u64, len: u64, fence: &Fence) -> Option<Span> {
        fence.admits(off, len).then_some(Span { off, len })
    }

    /// The part `[off, off + len)` of this span, if it lies inside it (no
    /// new check needed: the span was checked whole).
    #[inline]
    pub(crate) fn part(self, off: u64, len: u64) -> Option<Span> {
        let end = off.checked_add(len)?;
        (off >= self.off && end <= self.off + self.len).then_some(Span { off, len })
    }
}

impl Mapping {
    /// # Safety
    /// `ptr` must point to `reserved` bytes of address space, 8-byte
    /// aligned, that stay mapped as long as `owner` lives, of which the
    /// first `len` are backed by the file (accessible without a fault).
    pub(crate) unsafe fn new(
        ptr: *mut u8,
        len: u64,
        reserved: u64,
        writable: bool,
        owner: Owner,
    ) -> Mapping {
        assert!(len <= reserved);
        let ptr = NonNull::new(ptr).expect("mapping pointer is null");
        assert_eq!(
            ptr.as_ptr() as usize % 8,
            0,
            "mapping is not 8-byte aligned"
        );
        Mapping {
            ptr,
            len: AtomicU64::new(len),
            reserved,
            writable,
            owner,
        }
    }

    /// Bytes that may be accessed: the file covered them when last checked.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Asks the CPU to bring the cache line at `off` in, without waiting:
    /// lets loops that know their next random accesses (index slots,
    /// record headers) overlap the misses. A hint; it reads nothing.
    #[inline]
    pub(crate) fn prefetch(&self, off: u64) {
        if off < self.len() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint that never faults and has no
            // architectural effect, whatever the address; SSE is part of
            // the x86_64 baseline. The address is inside the mapping anyway.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(
                    self.ptr.as_ptr().wrapping_add(off as usize) as *const i8
                );
            }
        }
    }

    /// Whether the page holding `off` is in the page cache (`mincore`):
    /// one system call, no fault, nothing read. `false` outside the map or
    /// if the call fails.
    pub(crate) fn resident(&self, off: u64) -> bool {
        if !self.in_bounds(off, 1) || matches!(self.owner, Owner::Sim { .. }) {
            return false;
        }
        let page = off & !(crate::format::PAGE_SIZE - 1);
        let mut vec = 0u8;
        // SAFETY: `page` is page-aligned and inside the mapping (checked
        // above; the base is page-aligned), so the one-page range is mapped
        // address space; `vec` has room for the one byte one page needs.
        // mincore reads no memory of the range and writes only `vec`.
        let r = unsafe {
            libc::mincore(
                self.ptr.as_ptr().add(page as usize) as *mut libc::c_void,
                crate::format::PAGE_SIZE as usize,
                &mut vec,
            )
        };
        r == 0 && vec & 1 == 1
    }

    /// Address space mapped (at least `len`).
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Lets the first `len` bytes (at most `reserved`) be accessed. The
    /// caller has checked that the file is at least that long; the file
    /// never shrinks while another handle maps it, nor below what a
    /// snapshot of this handle can reach.
    pub(crate) fn extend(&self, len: u64) {
        self.len.fetch_max(len.min(self.reserved), Ordering::AcqRel);
    }

    fn in_bounds(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len())
    }

    /// The bytes of `span`, or `None` if they are outside the map. A
    /// [`Span`] is only made for a range that passed its [`Fence`]: in the
    /// data area and outside every index table the caller's state names,
    /// so the borrow never covers a shared word (rule 1).
    pub(crate) fn bytes(&self, span: Span) -> Option<&[u8]> {
        let Span { off, len } = span;
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above), which
        // lives as long as `self`. It lies at or past `DATA_START` and
        // outside the index tables of the state it was checked against
        // (`Span::new`), so no atomic word of this process's writer or
        // readers lies in it; callers borrow only committed records (rule
        // 2) or their own uncommitted log (rule 3), which nobody writes
        // while the borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(off as usize), len as usize)
        })
    }

    /// The shared word at `off` (rule 1). `None` if unaligned or outside.
    pub(crate) fn atomic(&self, off: u64) -> Option<&AtomicU64> {
        if off % 8 != 0 || !self.in_bounds(off, 8) {
            return None;
        }
        // SAFETY: in bounds and 8-byte aligned (the base is 8-aligned, see
        // `new`); AtomicU64 has the size and alignment of u64, and every
        // access to shared words goes through atomics (rule 1), so there is
        // no mixed atomic/non-atomic access to race with.
        Some(unsafe { &*(self.ptr.as_ptr().add(off as usize) as *const AtomicU64) })
    }

    /// Loads a little-endian shared word. Panics if `off` is not a valid
    /// word: callers pass constants or offsets validated on open.
    pub(crate) fn load(&self, off: u64, order: Ordering) -> u64 {
        u64::from_le(self.word(off).load(order))
    }

    /// Stores a little-endian shared word (writer only).
    pub(crate) fn store(&self, off: u64, v: u64, order: Ordering) {
        assert!(self.writable, "store into a read-only mapping");
        self.word(off).store(v.to_le(), order)
    }

    /// A shared word used as a native-endian counter (the wait counters of
    /// the live header): process-local meaning, never persisted as data.
    pub(crate) fn counter(&self, off: u64) -> &AtomicU64 {
        self.word(off)
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        match self.atomic(off) {
            Some(w) => w,
            None => panic!(
                "shared word at {off} is outside the {}-byte map",
                self.len()
            ),
        }
    }

    /// Copies shared words out (rule 1) — for meta pages, which a writer in
    /// another process may be rewriting; the caller checks the copy's CRC.
    pub(crate) fn read_words(&self, off: u64, out: &mut [u8]) {
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let w = self
                .load(off + 8 * i as u64, Ordering::Acquire)
                .to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    /// Writes shared words (rule 1): meta pages. `data.len()` must be a
    /// multiple of 8.
    pub(crate) fn write_words(&self, off: u64, data: &[u8]) {
        assert_eq!(data.len() % 8, 0);
        for (i, chunk) in data.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.store(off + 8 * i as u64, u64::from_le_bytes(w), Ordering::Release);
        }
    }

    /// Writes log bytes beyond the published tail (rule 3). Panics when out
    /// of bounds: the writer sizes the map before writing.
    ///
    /// # Safety
    /// The caller holds the writer lock and `[off, off + data.len())` is
    /// uncommitted log of its own: no snapshot can reach it and no borrow
    /// of it ([`Mapping::bytes`]) is alive.
    pub(crate) unsafe fn write(&self, off: u64, data: &[u8]) {
        assert!(self.writable, "write into a read-only mapping");
        assert!(
            self.in_bounds(off, data.len() as u64),
            "write at {off} outside the map"
        );
        assert!(off >= DATA_START, "log write at {off}, below the data area");
        // SAFETY: in bounds (checked); the mapping is writable; the range is
        // uncommitted log that only the writer-lock holder touches and no
        // borrow of it is alive (the caller's contract, rule 3).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(off as usize),
                data.len(),
            )
        }
    }

    /// Maps the pages of `[off, off + len)` into this process without
    /// writing them (`MADV_POPULATE_READ`): bytes just written to the file
    /// with `pwrite` are in the page cache but not in this process's page
    /// tables, and the first read of each page would fault (measured: the
    /// first commit of a 10M-key index move faulted ~3,000 log pages in,
    /// 32 ms). The pages are mapped read-only, so their writeback needs no
    /// TLB flush. A hint: failures (an older kernel) are ignored.
    pub(crate) fn populate(&self, off: u64, len: u64) {
        if let Owner::Mmap(raw) = &self.owner {
            if self.in_bounds(off, len) {
                let _ = raw.advise_range(memmap2::Advice::PopulateRead, off as usize, len as usize);
            }
        }
    }

    /// `msync(MS_SYNC)` of a range, for the file backend.
    pub(crate) fn msync(&self, off: u64, len: u64) -> io::Result<()> {
        match &self.owner {
            Owner::Mmap(m) => {
                let len = len.min(self.len().saturating_sub(off));
                m.flush_range(off as usize, len as usize)
            }
            Owner::Private { .. } => Ok(()),
            Owner::Sim { .. } => Err(io::Error::other("msync on a simulated mapping")),
        }
    }

    /// The address the kernel's futex word of the shared `u64` at `off`
    /// has: its low 32 bits. Panics like [`load`](Self::load).
    fn futex_addr(&self, off: u64) -> *const u32 {
        let word = self.word(off) as *const AtomicU64 as *const u32;
        if cfg!(target_endian = "big") {
            word.wrapping_add(1)
        } else {
            word
        }
    }

    /// Sleeps while the low 32 bits of the (native-endian) counter word at
    /// `off` equal `expected`, at most `timeout`; woken by
    /// [`wake`](Self::wake) on the same word from any process. May return
    /// early: callers re-check their condition.
    pub(crate) fn wait(&self, off: u64, expected: u32, timeout: Option<std::time::Duration>) {
        let addr = self.futex_addr(off);
        // SAFETY: `addr` is 4-aligned inside this mapping (an 8-aligned
        // word checked by `word`), which stays mapped while `self` lives;
        // the kernel only reads it. Rust code accesses the word only as an
        // AtomicU64 (rule 1); the kernel's read is not a Rust access.
        unsafe { crate::sys::futex_wait(addr, expected, timeout) }
    }

    /// Wakes every process and thread waiting on the counter word at `off`.
    pub(crate) fn wake(&self, off: u64) {
        let addr = self.futex_addr(off);
        // SAFETY: as in `wait`.
        unsafe { crate::sys::futex_wake(addr) }
    }
}

/// Writes zeros over `[off, off + len)` through the map: space the writer
/// just allocated (rule 3: nobody else can see it yet).
///
/// # Safety
/// As [`Mapping::write`]: the caller holds the writer lock and nothing
/// reads or borrows the range (free space, or a table no state names yet).
pub(crate) unsafe fn write_zeros(map: &Mapping, off: u64, len: u64) {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut p = off;
    while p < off + len {
        let n = (off + len - p).min(zeros.len() as u64);
        // SAFETY: the caller's contract, passed on.
        unsafe { map.write(p, &zeros[..n as usize]) };
        p += n;
    }
}

//! The reader table: the snapshots every process has open, in pages 3..15
//! of the file, so that a writer in any process knows the oldest one.
//!
//! The table is 208 *chunks* of 256 bytes. A handle claims a chunk by
//! taking its lock byte exclusively (`LockId::Chunk`) and keeps the lock
//! until it closes; the kernel drops it when the process dies. So a chunk
//! whose word 0 (the owner's pid) is set but whose lock nobody holds
//! belongs to a dead process: whoever looks next ignores its slots and,
//! if it can write the file, clears it. Liveness never rests on a pid,
//! which the system reuses.
//!
//! A chunk holds 15 slots of two words: `seq + 1` of an open snapshot
//! (0: idle) and when it began (µs since the Unix epoch). Only the chunk's
//! owner writes them. Registering and releasing a snapshot are a few atomic
//! operations on slots the handle already owns; only claiming a chunk (the
//! first snapshot of a handle, or its 16th at once) takes system calls.
//!
//! Registration races the writer (Dekker style, both sides `SeqCst`): the
//! reader stores its seq into its slot, then reads the published state
//! again; if a newer commit appeared meanwhile it registers that one
//! instead. A writer that reclaims space publishes first and scans the
//! table after. Either the scan sees the slot, or the reader sees the
//! newer commit and does not use the older snapshot.

use std::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::{PAGE_SIZE, SPACE_WORKING};
use crate::storage::{Backend, LockId, LockMode, Mapping};

/// Where the table starts: page 3.
pub(crate) const TABLE_OFFSET: u64 = 3 * PAGE_SIZE;
const CHUNK_BYTES: u64 = 256;
/// Chunks in the table: at most this many handles register at once.
pub(crate) const CHUNKS: u32 = ((SPACE_WORKING[0] - TABLE_OFFSET) / CHUNK_BYTES) as u32;
/// Snapshot slots per chunk.
pub(crate) const SLOTS_PER_CHUNK: u32 = 15;

fn chunk_off(chunk: u32) -> u64 {
    TABLE_OFFSET + chunk as u64 * CHUNK_BYTES
}

fn slot_off(chunk: u32, slot: u32) -> u64 {
    chunk_off(chunk) + 16 + slot as u64 * 16
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A registered snapshot, as [`Store::readers`](crate::Store::readers)
/// lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Process id of the owner (informational: liveness is checked with a
    /// lock, not with this pid).
    pub pid: u32,
    /// The commit the snapshot shows.
    pub seq: u64,
    /// How long the snapshot has been open.
    pub age: Duration,
}

/// What one look at the table found.
#[derive(Default)]
pub(crate) struct Scan {
    pub snapshots: Vec<SnapshotInfo>,
    /// Chunks of dead processes cleared by this look (one that this
    /// handle cannot clear — it cannot write the file, or another process
    /// is clearing it — is only skipped).
    pub cleared: u32,
}

/// A slot this handle owns, holding one open snapshot.
pub(crate) struct Slot {
    pos: usize,
    bit: u32,
    off: u64,
}

/// One chunk this handle owns.
#[derive(Default)]
struct Owned {
    chunk: AtomicU32,
    /// Bit `i` set: slot `i` holds an open snapshot of this handle.
    used: AtomicU32,
}

/// This handle's chunks.
pub(crate) struct Registry {
    owned: Box<[Owned]>,
    /// `owned[..count]` are claimed; only grows while the handle lives.
    count: AtomicUsize,
    claim: Mutex<()>,
}

/// Why a snapshot could not be registered.
pub(crate) enum RegisterError {
    Full,
    Io(std::io::Error),
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            owned: (0..CHUNKS).map(|_| Owned::default()).collect(),
            count: AtomicUsize::new(0),
            claim: Mutex::new(()),
        }
    }

    fn owns(&self, chunk: u32) -> bool {
        let n = self.count.load(Ordering::Acquire);
        self.owned[..n]
            .iter()
            .any(|o| o.chunk.load(Ordering::Relaxed) == chunk)
    }

    /// A free slot of this handle, claiming a new chunk if all are in use.
    pub(crate) fn acquire(
        &self,
        backend: &dyn Backend,
        map: &Mapping,
    ) -> Result<Slot, RegisterError> {
        loop {
            if let Some(s) = self.take_free() {
                return Ok(s);
            }
            let _g = self.claim.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = self.take_free() {
                return Ok(s);
            }
            let n = self.count.load(Ordering::Acquire);
            let chunk = claim_chunk(backend, map, |c| self.owns(c))?;
            self.owned[n].chunk.store(chunk, Ordering::Relaxed);
            self.count.store(n + 1, Ordering::Release);
        }
    }

    fn take_free(&self) -> Option<Slot> {
        let n = self.count.load(Ordering::Acquire);
        for (pos, o) in self.owned[..n].iter().enumerate() {
            let mut used = o.used.load(Ordering::Relaxed);
            while used != (1 << SLOTS_PER_CHUNK) - 1 {
                let bit = (!used).trailing_zeros();
                match o.used.compare_exchange_weak(
                    used,
                    used | 1 << bit,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let chunk = o.chunk.load(Ordering::Relaxed);
                        return Some(Slot {
                            pos,
                            bit,
                            off: slot_off(chunk, bit),
                        });
                    }
                    Err(now) => used = now,
                }
            }
        }
        None
    }

    /// Says in the shared table that `slot` reads snapshot `seq`; the
    /// caller then re-reads the published state (module docs).
    pub(crate) fn set(&self, map: &Mapping, slot: &Slot, seq: u64) {
        map.store(slot.off + 8, now_micros(), Ordering::Relaxed);
        map.store(slot.off, seq + 1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Ends the snapshot held in `slot`.
    pub(crate) fn release(&self, map: &Mapping, slot: Slot) {
        map.store(slot.off, 0, Ordering::Release);
        self.owned[slot.pos]
            .used
            .fetch_and(!(1 << slot.bit), Ordering::Release);
    }

    /// Gives every chunk back (the handle is closing; no snapshot is open).
    pub(crate) fn close(&self, backend: &dyn Backend, map: &Mapping) {
        let n = self.count.swap(0, Ordering::AcqRel);
        for o in &self.owned[..n] {
            let chunk = o.chunk.load(Ordering::Relaxed);
            map.store(chunk_off(chunk), 0, Ordering::SeqCst);
            let _ = backend.lock(LockId::Chunk(chunk), LockMode::Unlock, false);
        }
    }
}

/// Claims a chunk nobody holds: takes its lock, clears whatever a dead
/// owner left, and writes our pid.
fn claim_chunk(
    backend: &dyn Backend,
    map: &Mapping,
    mine: impl Fn(u32) -> bool,
) -> Result<u32, RegisterError> {
    // Chunks with no owner recorded first: they are almost always free,
    // so a claim usually takes one system call.
    let unowned = (0..CHUNKS).filter(|&c| map.load(chunk_off(c), Ordering::Acquire) == 0);
    let owned = (0..CHUNKS).filter(|&c| map.load(chunk_off(c), Ordering::Acquire) != 0);
    for chunk in unowned.chain(owned) {
        if mine(chunk) {
            continue;
        }
        let got = backend
            .lock(LockId::Chunk(chunk), LockMode::Exclusive, false)
            .map_err(RegisterError::Io)?;
        if got {
            clear_chunk(map, chunk);
            map.store(chunk_off(chunk) + 8, now_micros(), Ordering::Relaxed);
            map.store(
                chunk_off(chunk),
                std::process::id() as u64,
                Ordering::SeqCst,
            );
            return Ok(chunk);
        }
    }
    Err(RegisterError::Full)
}

/// Zeroes a chunk whose lock the caller holds exclusively.
fn clear_chunk(map: &Mapping, chunk: u32) {
    for s in 0..SLOTS_PER_CHUNK {
        map.store(slot_off(chunk, s), 0, Ordering::SeqCst);
        map.store(slot_off(chunk, s) + 8, 0, Ordering::Relaxed);
    }
    map.store(chunk_off(chunk), 0, Ordering::SeqCst);
}

/// Looks at the whole table: the open snapshots of live owners (this
/// handle's own included), clearing chunks of dead owners when it can.
pub(crate) fn scan(backend: &dyn Backend, map: &Mapping, reg: &Registry) -> Scan {
    // The writer's half of the Dekker pair: whatever it published before
    // this scan is ordered before the loads below, so a reader the scan
    // misses re-reads the state after that publish (`Registry::set`).
    fence(Ordering::SeqCst);
    let mut out = Scan::default();
    let now = now_micros();
    for chunk in 0..CHUNKS {
        let pid = map.load(chunk_off(chunk), Ordering::SeqCst);
        if pid == 0 {
            continue;
        }
        if !reg.owns(chunk) && !backend.held_by_others(LockId::Chunk(chunk)).unwrap_or(true) {
            // Dead owner. Clearing needs its lock, so a new owner that is
            // claiming the chunk right now is never undone.
            let cleared = backend.shared_writable()
                && backend
                    .lock(LockId::Chunk(chunk), LockMode::Exclusive, false)
                    .unwrap_or(false);
            if cleared {
                clear_chunk(map, chunk);
                let _ = backend.lock(LockId::Chunk(chunk), LockMode::Unlock, false);
                out.cleared += 1;
            }
            continue;
        }
        for s in 0..SLOTS_PER_CHUNK {
            let seq1 = map.load(slot_off(chunk, s), Ordering::SeqCst);
            if seq1 == 0 {
                continue;
            }
            let began = map.load(slot_off(chunk, s) + 8, Ordering::Relaxed);
            out.snapshots.push(SnapshotInfo {
                pid: pid as u32,
                seq: seq1 - 1,
                age: Duration::from_micros(now.saturating_sub(began)),
            });
        }
    }
    out
}

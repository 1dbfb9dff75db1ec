//! The engine: the shared state behind a [`Store`](crate::Store) and the
//! jobs done on it, one module each. Transactions (`crate::txn`) call down
//! into it; it never calls back up.
//!
//! The commit protocol and the crash analysis for every step are in
//! `docs/DESIGN.md`; comments here name the step they implement.

mod alloc;
mod apply;
mod checkpoint;
mod flush;
mod idle;
mod index_move;
mod mapping;
mod meta;
mod open;
mod read;
mod reclaim;
mod recovery;
mod snapshot;
mod writer;

use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::live::State;
use crate::options::Durability;
use crate::readers::Registry;
use crate::space::Space;
use crate::storage::{Backend, LockId, LockMode, Mapping};
use arc_swap::ArcSwap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use self::alloc::{extent_size, log_reuse};
pub(crate) use self::apply::Finals;
pub(crate) use self::idle::{start as start_idle, IdleGuard};
pub(crate) use self::meta::pick_meta;
pub(crate) use self::snapshot::SnapshotRecords;

/// How many keys ahead loops over known keys prefetch their index slots
/// and records (`Mapping::prefetch`).
pub(crate) const PREFETCH_AHEAD: usize = 8;

/// The longest [`Shared::yield_writer`] waits for a blocked writer to
/// take its turn.
const YIELD_MAX: Duration = Duration::from_millis(20);

/// What every handle of one store shares: the backend, the current mapping
/// and the writer's state.
pub(crate) struct Shared {
    pub backend: Box<dyn Backend>,
    pub path: PathBuf,
    map: ArcSwap<Mapping>,
    remap: Mutex<()>,
    pub seed: u64,
    pub durability: Durability,
    /// Compaction runs inside commits (`Options::auto_compact`), once this
    /// fraction of the sealed log is dead.
    pub auto_compact: bool,
    pub compact_threshold: f64,
    /// A read-only handle that found no live header: the snapshot it shows
    /// is the clean checkpoint in the meta page, until a writer sets up a
    /// live header (`try_join`).
    offline: Option<State>,
    /// The live header's incarnation when this handle opened offline.
    offline_incarnation: u64,
    /// The live header is trusted (this handle holds `Live`).
    joined: AtomicBool,
    /// This handle's chunks of the reader table.
    pub registry: Registry,
    pub writer: Mutex<Writer>,
    /// Threads of this process blocked on `writer` right now: long jobs
    /// that take the lock many times over (`compact()`, punching) let
    /// them in between turns ([`yield_writer`](Self::yield_writer)).
    waiting: AtomicUsize,
    /// Idle-time work (`idle.rs`): what the idle thread and the write
    /// transactions tell each other.
    pub idle: idle::Idle,
    /// Injected failures and test pause points (`Options::faults`).
    pub faults: Faults,
    /// `close` ran (by `Store::close`, or when the last handle dropped).
    closed: AtomicBool,
}

/// The writer's private state (in this process).
pub(crate) struct Writer {
    /// The state this process last published or saw published.
    pub state: State,
    /// Log ranges committed `Eventual`ly by this handle and not flushed yet.
    pub unsynced: Vec<(u64, u64)>,
    /// Another handle left unflushed commits whose ranges we do not know:
    /// the next durable flush covers the whole file.
    pub full_flush: bool,
    /// A flush failed: refuse writes until reopened (`Error::Poisoned`).
    pub poisoned: bool,
    /// The extent table as of `state` (published with it).
    pub space: Space,
    /// `space` changed since it was last written to a working copy.
    pub space_dirty: bool,
    /// A checkpoint being taken a slice at a time (this process only).
    pub fuzzy: Option<Fuzzy>,
    /// What this process knows of the file past the allocated area.
    pub tail: Tail,
    /// The turn of the writer lock (`live::writer_turn`) after this
    /// handle's last one: `tail` holds only while nobody took a turn in
    /// between. (`u64::MAX`: none yet.)
    pub next_turn: u64,
    /// The meta page generation this handle wrote and flushed itself (0:
    /// none). The meta pages in the map may say more than the disk does:
    /// a handle whose flush of them failed (and the page cache that then
    /// marked them clean unwritten, as Linux does after `EIO`) left a
    /// "dirty" meta page that no disk has. Trusting it, a later writer
    /// would skip `mark_dirty`, and a power cut would then find the old
    /// clean meta page and ignore every commit after it.
    pub meta_flushed: u64,
    /// Ranges freed but not punched yet: a write transaction punches at
    /// most `PUNCH_PER_TXN` of them (docs/DESIGN.md, "Holes").
    pub to_punch: Vec<(u64, u64)>,
    /// The last start of a write transaction did some of the work a
    /// transaction's start does (a checkpoint slice, freeing, punching):
    /// how the idle thread knows whether another turn is worth it.
    pub chores_done: bool,
}

/// What the writer knows of the space at the end of the file, to prepare
/// the next index table before its move starts (docs/DESIGN.md, "Index
/// growth"). In memory only, and forgotten whenever another handle may
/// have written — published or not, as a writer that aborts or dies
/// leaves its bytes past the allocated area: recovery and a new writer
/// know nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail {
    /// Every byte from here to the end of the file is zero: the file grew
    /// by it and no allocation has reached it since. (`u64::MAX`: nothing
    /// known.)
    pub zeros_from: u64,
    /// The zeros up to here (from `zeros_from`) are prepared: written
    /// again, their extents converted or being converted.
    pub prepared_to: u64,
    /// `[reuse_at, reuse_to)`: the start of the free range the log takes
    /// next, prepared for it (`Prepare::Reuse`); empty if none.
    pub reuse_at: u64,
    pub reuse_to: u64,
}

impl Tail {
    pub const UNKNOWN: Tail = Tail {
        zeros_from: u64::MAX,
        prepared_to: 0,
        reuse_at: 0,
        reuse_to: 0,
    };
}

/// A fuzzy checkpoint in progress: the state (and extent table) it will
/// name, and how far the sweep that flushes the file after it has got.
/// Once every byte of the file up to `st`'s allocation end was flushed
/// after `st` was current, all that `st` refers to is durable (nothing it
/// names lies past that end) — slots only ever move forward, so pages
/// flushed later hold slots at least as new — and a meta page naming `st`
/// may be written; replay from `st` re-applies the later commits, which is
/// idempotent (docs/DESIGN.md, "Checkpoints").
pub(crate) struct Fuzzy {
    st: State,
    space: Space,
    next: u64,
}

pub(crate) fn io_error(path: &Path, op: impl Into<String>, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        op: op.into(),
        source,
    }
}

pub(crate) fn corrupted(path: &Path, offset: u64, what: impl Into<String>) -> Error {
    Error::Corrupted {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    }
}

/// Whether `e` says the disk is full.
pub(crate) fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
}

impl Shared {
    pub(super) fn lock(&self, id: LockId, mode: LockMode, wait: bool) -> Result<bool> {
        self.backend
            .lock(id, mode, wait)
            .map_err(|e| io_error(&self.path, format!("lock ({id:?} {mode:?})"), e))
    }

    pub(crate) fn io(&self, op: impl Into<String>, e: io::Error) -> Error {
        io_error(&self.path, op, e)
    }

    pub(crate) fn corrupted(&self, offset: u64, what: impl Into<String>) -> Error {
        corrupted(&self.path, offset, what)
    }

    pub(crate) fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic in a transaction leaves the Writer as it was before the
        // commit's publish step; its fields stay meaningful.
        match self.writer.try_lock() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// Called between the turns of a long job, with the writer lock let
    /// go: waits (up to `YIELD_MAX`) until the threads of this process
    /// that were blocked on the lock have had it. The mutex does not queue
    /// its waiters: the job, running, took the lock back before a woken
    /// waiter could, and a commit beside `compact()` waited 0.1-0.6 s
    /// (the comparison's "commits while `compact()` runs").
    pub(crate) fn yield_writer(&self) {
        let start = Instant::now();
        while self.waiting.load(Ordering::SeqCst) > 0 && start.elapsed() < YIELD_MAX {
            std::thread::yield_now();
        }
    }

    pub(crate) fn writable(&self) -> bool {
        self.backend.writable()
    }
}

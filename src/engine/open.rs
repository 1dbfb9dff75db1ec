//! Opening a store: creating a new file, joining the live header, warming a cold cache.

use super::alloc::MIN_GROWTH;
use super::meta::{pick_meta, SpaceRef};
use super::{corrupted, io_error, Shared, Tail, Writer};
use crate::error::{Error, Result};
use crate::faults::PausePoint;
use crate::format::*;
use crate::live::{self, State};
use crate::options::{Durability, Options};
use crate::readers::Registry;
use crate::space::{Space, Use};
use crate::storage::{Backend, LockId, LockMode, Mapping, Prepare};
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Length of a new store: the fixed pages, the first extent, the first
/// index table, rounded up to the growth unit.
const CREATE_LEN: u64 =
    (DATA_START + LOG_EXTENT + (8 << MIN_INDEX_LOG2)).div_ceil(MIN_GROWTH) * MIN_GROWTH;

/// Whether the file holds nothing but what a cut-short creation leaves:
/// zeros, except perhaps the first extent table (written before the meta
/// page).
fn is_all_zero(map: &Mapping) -> bool {
    let table = SPACE_CHECKPOINT[1]..SPACE_CHECKPOINT[1] + PAGE_SIZE;
    (0..map.len() / 8)
        .map(|i| i * 8)
        .filter(|off| !table.contains(off))
        .all(|off| map.load(off, std::sync::atomic::Ordering::Relaxed) == 0)
}

/// Initialises an empty (or all-zero, interrupted) file as a store;
/// returns its length.
fn create(backend: &dyn Backend, path: &Path) -> Result<u64> {
    let table_off = DATA_START + LOG_EXTENT;
    let len = CREATE_LEN;
    backend
        .grow(len)
        .map_err(|e| io_error(path, format!("grow the new file to {len} bytes"), e))?;
    let map = backend
        .map(len)
        .map_err(|e| io_error(path, "map the new file", e))?;
    let st = State {
        tail: DATA_START,
        tail_end: DATA_START + LOG_EXTENT,
        alloc_end: table_off + (8u64 << MIN_INDEX_LOG2),
        index_off: table_off,
        index_log2: MIN_INDEX_LOG2 as u64,
        file_len: len,
        ..State::default()
    };
    let mut space = Space::default();
    let first = Use::Log {
        live: 0,
        sealed: false,
        last_seq: 0,
    };
    space.insert(DATA_START, LOG_EXTENT, first);
    let at = SPACE_CHECKPOINT[1];
    let (count, crc) = space.store(&map, at, true);
    // The extent table first, then the meta page that names it: a cut
    // between the two leaves no valid meta page (creation starts over).
    let flush = |off, len| {
        backend
            .flush(&map, off, len)
            .map_err(|e| io_error(path, "flush the new file", e))
    };
    flush(at, PAGE_SIZE)?;
    let meta = st.to_meta(
        backend.new_hash_seed(),
        1,
        true,
        SpaceRef { at, count, crc },
    );
    map.write_words(META_OFFSETS[1], bytemuck::bytes_of(&meta));
    flush(0, len)?;
    // The first log extent, like every later one ("Growth"): its first
    // commits must not pay the conversion of unwritten blocks.
    let _ = backend.prepare(&map, DATA_START, LOG_EXTENT, Prepare::Log);
    Ok(len)
}

impl Shared {
    /// Opens a store on `backend`: creates it if empty, checks the meta
    /// pages, and either joins the live state other handles publish or
    /// recovers from the last checkpoint.
    pub(crate) fn open(backend: Box<dyn Backend>, opts: &Options) -> Result<Shared> {
        let path = backend.path().to_path_buf();
        let lock = |id, mode| {
            backend
                .lock(id, mode, true)
                .map_err(|e| io_error(&path, format!("lock ({id:?} {mode:?})"), e))
        };
        let writable = backend.writable();
        lock(LockId::Open, LockMode::Shared)?;
        // A live header is trustworthy only while some handle that
        // validated it is alive (it holds `Live`); otherwise it may be left
        // from before a reboot, and the checkpoint is the truth.
        let held = |b: &dyn Backend| b.held_by_others(LockId::Live).unwrap_or(false);
        let mut join = held(&*backend);
        if writable && !join {
            // Creation and recovery run under the writer lock, so two
            // handles opening at once never both initialise the file. Only
            // then: joining a live store must not wait for another
            // process's write transaction.
            lock(LockId::Writer, LockMode::Exclusive)?;
            join = held(&*backend);
            if join {
                // Another opener recovered while we waited: join it, and
                // let go of the lock we will not use.
                lock(LockId::Writer, LockMode::Unlock)?;
            }
        }
        let locked_writer = writable && !join;
        let mut file_len = backend
            .file_len()
            .map_err(|e| io_error(&path, "read the file length", e))?;
        if file_len == 0 {
            if !locked_writer || !opts.create {
                return Err(Error::NotAStore {
                    path,
                    reason: "empty file".into(),
                });
            }
            file_len = create(&*backend, &path)?;
        }
        if file_len < DATA_START {
            return Err(Error::NotAStore {
                path,
                reason: format!(
                    "file is {file_len} bytes, shorter than the {DATA_START}-byte header"
                ),
            });
        }
        let mut map = backend
            .map(file_len)
            .map_err(|e| io_error(&path, "map the file", e))?;
        if locked_writer && opts.create && file_len <= CREATE_LEN && is_all_zero(&map) {
            // A creation that was cut short (it writes the meta page last,
            // in its one flush): nothing was ever committed, start again.
            drop(map);
            file_len = create(&*backend, &path)?;
            map = backend
                .map(file_len)
                .map_err(|e| io_error(&path, "map the file", e))?;
        }
        let meta = pick_meta(&path, &map)?;
        let meta_at = META_OFFSETS[(meta.generation.get() % 2) as usize];
        if meta.log_first.get() != DATA_START {
            return Err(corrupted(
                &path,
                meta_at,
                "meta page: log does not start at the first data page",
            ));
        }
        let from_meta = State::from_meta(&meta, file_len);
        from_meta.validate(&path, meta_at, "meta page")?;
        // A private view copies the tables it is about to trust (no-op
        // for the other backends; storage/private.rs).
        for (start, end) in from_meta.fence().tables() {
            if end > start {
                backend
                    .own(&map, start, end - start)
                    .map_err(|e| io_error(&path, "copy the index into the view", e))?;
            }
        }
        let mut shared = Shared {
            path: path.clone(),
            map: ArcSwap::from_pointee(map),
            remap: Mutex::new(()),
            seed: meta.hash_seed.get(),
            durability: if backend.durable() {
                opts.durability
            } else {
                Durability::Memory
            },
            auto_compact: opts.auto_compact,
            compact_threshold: opts.compact_threshold,
            offline: None,
            offline_incarnation: 0,
            joined: AtomicBool::new(false),
            registry: Registry::new(),
            faults: opts.faults.clone(),
            // Until the open succeeds: a failed open closes nothing.
            closed: AtomicBool::new(true),
            waiting: AtomicUsize::new(0),
            idle: Default::default(),
            writer: Mutex::new(Writer {
                state: from_meta,
                unsynced: Vec::new(),
                full_flush: false,
                poisoned: false,
                space: Space::default(),
                space_dirty: false,
                fuzzy: None,
                tail: Tail::UNKNOWN,
                next_turn: u64::MAX,
                meta_flushed: 0,
                to_punch: Vec::new(),
                chores_done: false,
            }),
            backend,
        };
        let live_state = if join {
            live::read(&shared.map.load())
        } else {
            None
        };
        if writable {
            let (state, space) = match live_state {
                // The extent table is read under the writer lock, the first
                // time this handle writes (a publish may be rewriting the
                // copy an older state names): a state no publish has
                // makes `refresh_writer` load it.
                Some(_) => (State::default(), Space::default()),
                None if locked_writer => {
                    let (mut st, space) = shared.recover(&meta)?;
                    let map = shared.map.load();
                    let (n, _) = space.store(&map, SPACE_WORKING[0], false);
                    st.space_at = 0;
                    st.space_n = n as u64;
                    live::init(&map, &st);
                    (st, space)
                }
                None => {
                    return Err(corrupted(&path, LIVE_OFFSET, "live header never settles"));
                }
            };
            let set_up = live_state.is_none();
            let w = shared.writer.get_mut().unwrap_or_else(|e| e.into_inner());
            w.state = state;
            w.space = space;
            if set_up {
                opts.faults.point(PausePoint::LiveHeaderSetUp);
            }
            shared.lock(LockId::Live, LockMode::Shared, true)?;
            if set_up {
                // Only now, with `Live` held: a handle that opened offline
                // meanwhile sees the change and joins, and one that reads
                // the new incarnation finds `Live` held (below).
                live::new_incarnation(&shared.map.load());
            }
            shared.joined = AtomicBool::new(true);
            if locked_writer {
                shared.lock(LockId::Writer, LockMode::Unlock, true)?;
            }
        } else if live_state.is_some() {
            shared.lock(LockId::Live, LockMode::Shared, true)?;
            shared.joined = AtomicBool::new(true);
        } else if meta.is_clean() {
            // No live handle when `join` was decided. A writer may have set
            // up the header since: read the incarnation, then look again.
            // A writer bumps it only once it holds `Live`, so either this
            // handle sees `Live` held now, or it sees the bump later.
            opts.faults.point(PausePoint::OpeningOffline);
            let map = shared.map.load_full();
            let incarnation = live::incarnation(&map);
            let live_now = shared.backend.held_by_others(LockId::Live).unwrap_or(false);
            if live_now && live::read(&map).is_some() {
                shared.lock(LockId::Live, LockMode::Shared, true)?;
                shared.joined = AtomicBool::new(true);
            } else {
                shared.offline = Some(from_meta);
                shared.offline_incarnation = incarnation;
            }
        } else {
            return Err(Error::NeedsRecovery { path });
        }
        // A handle whose snapshots cannot be registered says so with the
        // pin lock, for as long as it lives (docs/DESIGN.md, "Readers").
        if shared.offline.is_some() || !shared.backend.shared_writable() {
            shared.lock(LockId::Pin, LockMode::Shared, true)?;
        }
        if opts.warm_on_open {
            shared.warm_if_cold();
        }
        shared.closed = AtomicBool::new(false);
        Ok(shared)
    }

    /// A store opened on a cold page cache (its index's first page is not
    /// resident: one `mincore`) is read in the background: the index
    /// tables first, which every get needs, then the whole file if it
    /// fits in a quarter of the memory available. With `MADV_RANDOM`
    /// alone each cold get paid two 4 KiB reads from disk, and a cold
    /// store warmed one page per fault (docs/DESIGN.md, "Cold reads").
    fn warm_if_cold(&self) {
        let Ok((st, map)) = self.snapshot() else {
            return;
        };
        let t = st.table();
        if map.resident(t.off) {
            return;
        }
        let mut ranges: Vec<(u64, u64)> = st.tables().map(|t| (t.off, t.bytes())).collect();
        if crate::sys::mem_available().is_some_and(|m| st.file_len <= m / 4) {
            ranges.push((DATA_START, st.file_len.saturating_sub(DATA_START)));
        }
        self.backend.warm(ranges);
    }

    /// An offline handle joins the live header once a writer (in any
    /// process) has set one up since this handle opened: the header's
    /// incarnation changed. One atomic load when nothing changed.
    pub(super) fn try_join(&self) -> Result<bool> {
        if live::incarnation(&self.map.load()) == self.offline_incarnation {
            return Ok(false);
        }
        let _g = self.remap.lock().unwrap_or_else(|e| e.into_inner());
        if self.joined.load(Ordering::Acquire) {
            return Ok(true);
        }
        // Holding `Live` vouches for the header from now on; it was set up
        // by a writer that recovered the store, in this boot.
        self.lock(LockId::Live, LockMode::Shared, true)?;
        if live::read(&self.map.load()).is_none() {
            self.lock(LockId::Live, LockMode::Unlock, true)?;
            return Ok(false);
        }
        self.joined.store(true, Ordering::Release);
        Ok(true)
    }
}

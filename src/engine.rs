//! The engine: opening and recovering a store, the shared state behind a
//! [`Store`](crate::Store), applying commits to the index, growing the file
//! and the index, checkpoints, and the read path.
//!
//! The commit protocol and the crash analysis for every step are in
//! `docs/DESIGN.md`; comments here name the step they implement.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::cpu;
use crate::error::{Error, Result};
use crate::faults::{Faults, PausePoint};
use crate::format::*;
use crate::index::{BadSlot, Probe, Quick, Records, Table, MAX_LOAD_EIGHTHS};
use crate::live::{self, State};
use crate::log::{self, Cursor, ExtentRules, IndexMove, Record, ScannedCommit};
use crate::options::{Durability, Options};
use crate::readers::{self, RegisterError, Registry, Slot};
use crate::space::{Space, Use};
use crate::storage::{Backend, LockId, LockMode, Mapping, Prepare};
use bytemuck::Zeroable;

/// Take a checkpoint (flush the index, write a meta page) at the start of a
/// write transaction once this much log was committed since the last one.
/// It bounds how much log recovery replays after a crash.
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
/// A fuzzy checkpoint flushes this much of an index table per write
/// transaction, 8 times as much of the rest (a whole-file flush at once
/// stalled a commit ~0.2 s with a 128 MB index dirty; 4 MiB slices of it
/// cost 30-45 ms, and a 64 MiB slice of clean log ~50 ms:
/// `cargo bench --bench space -- bulk` lists its slowest commits).
const CHECKPOINT_SLICE: u64 = 1 << 20;
/// Retired extents are reused only after a checkpoint: take one early once
/// this much (or a 32nd of the file) waits for it.
const RECLAIM_CHECKPOINT_MIN: u64 = 1 << 20;
/// The file grows by a quarter of its size, within these bounds, rounded up
/// to `MIN_GROWTH`: few growths, little slack, and no growth long enough
/// to stall a commit (zero-filling costs ~5 ms per MiB here:
/// `cargo bench --bench space -- bulk`).
const MIN_GROWTH: u64 = 1 << 20;
const MAX_GROWTH: u64 = 4 << 20;
/// How many keys ahead loops over known keys prefetch their index slots
/// and records (`Mapping::prefetch`).
pub(crate) const PREFETCH_AHEAD: usize = 8;
/// Index slots moved per commit while the index moves to a new table: at
/// least `MIGRATE_MIN`, and `MIGRATE_PER_KEY` per key the commit writes,
/// so the move always ends before the new table could fill (it starts at
/// most half full). Twelve, not four: while the index moves, the file
/// holds both tables, and the old one is reused only after the move and
/// then a checkpoint. At 4 per key a load of 1M keys in commits of 1,000
/// still moved at 1M keys, its file 1.45x the raw bytes; at 12 the move
/// ends at 870K and the file is 1.38x. The move's work is the same,
/// packed into a third of the commits (`cargo bench --bench space --
/// bulk`, 10M keys: p99 commit 3.2-3.4 ms at 4, 3.5-4.1 ms at 12)...
const MIGRATE_MIN: u64 = 256;
const MIGRATE_PER_KEY: u64 = 12;
/// ... and at least this fraction of the old table, so that a move ends
/// within this many commits however small they are...
const MIGRATE_COMMITS: u64 = 2048;
/// ... but no more than half the slots moved so far, and at least this,
/// if that pace is at most `1 / MIGRATE_RAMP_SHARE` of the old table. The
/// first commits of a move read records from all over the log, which no
/// one may have read since they were written, and a first read of a cold
/// page is slow (up to ~0.1 ms here: on these VMs the host unmaps idle
/// guest memory). A 10M-key bulk load's first move commit read ~3,000
/// records over 860 MiB of log and took 8-22 ms, 6-16x the median commit;
/// ramping up spreads those first reads over a dozen commits. The ramp
/// (under 20 commits) then costs the move under a sixth of the table's
/// slots of progress, which the pace per key makes up long before
/// the new table could fill; commits too large for that do not ramp.
const MIGRATE_RAMP_MIN: u64 = 32;
const MIGRATE_RAMP_SHARE: u64 = 128;
/// `prepare_ahead` prepares tables at least this large (the 128 pages of
/// a smaller one cost its move under 2 ms of first-touch faults; those of
/// a 2-4 MiB table cost the first commit of its move 6-23 ms)...
const PREPARE_TABLE_MIN: u64 = 1 << 20;
/// ... twice what a commit logged, within these bounds.
const PREPARE_AHEAD_MIN: u64 = 64 << 10;
const PREPARE_AHEAD_MAX: u64 = 2 << 20;

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
    /// Injected failures and test pause points (`Options::faults`).
    pub faults: Faults,
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
}

/// What the writer knows of the space at the end of the file, to prepare
/// the next index table before its move starts (docs/DESIGN.md, "Index
/// growth"). In memory only, and forgotten whenever another handle may
/// have written: recovery and a new writer know nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail {
    /// Every byte from here to the end of the file is zero: the file grew
    /// by it and no allocation has reached it since. (`u64::MAX`: nothing
    /// known.)
    pub zeros_from: u64,
    /// The zeros up to here (from `zeros_from`) are prepared: written
    /// again, their extents converted or being converted.
    pub prepared_to: u64,
}

impl Tail {
    pub const UNKNOWN: Tail = Tail {
        zeros_from: u64::MAX,
        prepared_to: 0,
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

impl State {
    pub(crate) fn table(&self) -> Table {
        Table {
            off: self.index_off,
            log2: self.index_log2 as u32,
        }
    }

    /// The table the index is moving from, while it moves.
    pub(crate) fn old_table(&self) -> Option<Table> {
        (self.old_index_log2 != 0).then_some(Table {
            off: self.old_index_off,
            log2: self.old_index_log2 as u32,
        })
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            pos: self.tail,
            end: self.tail_end,
        }
    }

    fn from_meta(m: &Meta, file_len: u64) -> State {
        State {
            seq: m.seq.get(),
            tail: m.tail.get(),
            tail_end: m.tail_end.get(),
            alloc_end: m.alloc_end.get(),
            index_off: m.index_offset.get(),
            index_log2: m.index_log2.get() as u64,
            index_used: m.index_used.get(),
            key_count: m.key_count.get(),
            live_bytes: m.live_bytes.get(),
            log_bytes: m.log_bytes.get(),
            file_len,
            synced_tail: m.tail.get(),
            ckpt_log_bytes: m.log_bytes.get(),
            meta_gen: m.generation.get(),
            meta_clean: m.is_clean() as u64,
            old_index_off: m.old_index_offset.get(),
            old_index_log2: m.old_index_log2.get() as u64,
            migrate_next: m.migrate_next.get(),
            migrate_left: m.migrate_left.get(),
            last_compact_seq: m.last_compact_seq.get(),
            retired_total: m.retired_total.get(),
            moved_total: m.moved_total.get(),
            ckpt_seq: m.seq.get(),
            history_seq: m.history_seq.get(),
            ..State::default()
        }
    }

    fn to_meta(self, seed: u64, generation: u64, clean: bool, space: SpaceRef) -> Meta {
        let mut m = Meta::zeroed();
        m.magic = MAGIC;
        m.version = Le32::new(FORMAT_VERSION);
        m.page_size = Le32::new(PAGE_SIZE as u32);
        m.hash_id = Le32::new(HASH_XXH3);
        m.flags = Le32::new(if clean { META_CLEAN } else { 0 });
        m.hash_seed = Le64::new(seed);
        m.generation = Le64::new(generation);
        m.seq = Le64::new(self.seq);
        m.tail = Le64::new(self.tail);
        m.tail_end = Le64::new(self.tail_end);
        m.alloc_end = Le64::new(self.alloc_end);
        m.log_first = Le64::new(DATA_START);
        m.index_offset = Le64::new(self.index_off);
        m.index_log2 = Le32::new(self.index_log2 as u32);
        m.index_used = Le64::new(self.index_used);
        m.key_count = Le64::new(self.key_count);
        m.live_bytes = Le64::new(self.live_bytes);
        m.log_bytes = Le64::new(self.log_bytes);
        m.old_index_offset = Le64::new(self.old_index_off);
        m.old_index_log2 = Le32::new(self.old_index_log2 as u32);
        m.migrate_next = Le64::new(self.migrate_next);
        m.space_at = Le64::new(space.at);
        m.space_count = Le32::new(space.count);
        m.space_crc = Le32::new(space.crc);
        m.history_seq = Le64::new(self.history_seq);
        m.migrate_left = Le64::new(self.migrate_left);
        m.last_compact_seq = Le64::new(self.last_compact_seq);
        m.retired_total = Le64::new(self.retired_total);
        m.moved_total = Le64::new(self.moved_total);
        m.seal();
        m
    }

    /// Checks that every offset in the state lies where the format allows,
    /// so that nothing derived from it can index outside the file. `what`
    /// and `at` name the source (a meta page or the live header).
    fn validate(&self, path: &Path, at: u64, what: &str) -> Result<()> {
        let t = self.table();
        let bad = |msg: &str| Err(corrupted(path, at, format!("{what}: {msg}")));
        if !(MIN_INDEX_LOG2 as u64..=40).contains(&self.index_log2) {
            return bad("index size out of range");
        }
        if self.alloc_end > self.file_len || self.file_len > MAX_FILE_LEN {
            return bad("allocated space extends past the end of the file");
        }
        if self.tail % RECORD_ALIGN != 0
            || self.tail < DATA_START
            || self.tail > self.tail_end
            || self.tail_end - self.tail < NEXT_RECORD_SIZE
            || self.tail_end > self.alloc_end
        {
            return bad("log tail outside its extent");
        }
        if t.off % PAGE_SIZE != 0
            || t.off < DATA_START
            || t.off
                .checked_add(t.bytes())
                .is_none_or(|e| e > self.alloc_end)
        {
            return bad("index table outside the file");
        }
        if self.index_used > t.cap() {
            return bad("index claims more used slots than it has");
        }
        if let Some(o) = self.old_table() {
            let inside = o.off % PAGE_SIZE == 0
                && o.off >= DATA_START
                && o.off
                    .checked_add(o.bytes())
                    .is_some_and(|e| e <= self.alloc_end)
                && o.log2 <= 40
                && self.migrate_next <= o.cap();
            if !inside {
                return bad("old index table outside the file");
            }
        }
        Ok(())
    }
}

/// Where a checkpoint's extent table was written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpaceRef {
    pub at: u64,
    pub count: u32,
    pub crc: u32,
}

/// Reads both meta pages and picks the newest valid one.
pub(crate) fn pick_meta(path: &Path, map: &Mapping) -> Result<Meta> {
    let mut checks = Vec::new();
    for off in META_OFFSETS {
        let mut b = [0u8; META_SIZE];
        map.read_words(off, &mut b);
        checks.push((off, check_meta(&b)));
    }
    if let Some((_, MetaCheck::NewerVersion(found))) = checks
        .iter()
        .find(|(_, c)| matches!(c, MetaCheck::NewerVersion(_)))
    {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: *found,
            supported: FORMAT_VERSION,
        });
    }
    let best = checks
        .iter()
        .filter_map(|(_, c)| match c {
            MetaCheck::Ok(m) => Some(**m),
            _ => None,
        })
        .max_by_key(|m| m.generation.get());
    if let Some(m) = best {
        return Ok(m);
    }
    if checks.iter().all(|(_, c)| matches!(c, MetaCheck::BadMagic)) {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "bad magic at offset 0".into(),
        });
    }
    let why: Vec<String> = checks
        .iter()
        .map(|(off, c)| {
            let what = match c {
                MetaCheck::BadMagic => "bad magic".to_string(),
                MetaCheck::BadVersion(v) => format!("unknown format version {v}"),
                MetaCheck::BadParams(p) => p.to_string(),
                MetaCheck::BadChecksum => "checksum mismatch".to_string(),
                MetaCheck::NewerVersion(_) | MetaCheck::Ok(_) => unreachable!("handled above"),
            };
            format!("meta page at {off}: {what}")
        })
        .collect();
    Err(corrupted(
        path,
        0,
        format!("no valid meta page ({})", why.join("; ")),
    ))
}

impl Shared {
    fn lock(&self, id: LockId, mode: LockMode, wait: bool) -> Result<bool> {
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
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn writable(&self) -> bool {
        self.backend.writable()
    }

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
        let mut shared = Shared {
            path: path.clone(),
            map: ArcSwap::from_pointee(map),
            remap: Mutex::new(()),
            seed: meta.hash_seed.get(),
            durability: opts.durability,
            auto_compact: opts.auto_compact,
            compact_threshold: opts.compact_threshold,
            offline: None,
            offline_incarnation: 0,
            joined: AtomicBool::new(false),
            registry: Registry::new(),
            faults: opts.faults.clone(),
            writer: Mutex::new(Writer {
                state: from_meta,
                unsynced: Vec::new(),
                full_flush: false,
                poisoned: false,
                space: Space::default(),
                space_dirty: false,
                fuzzy: None,
                tail: Tail::UNKNOWN,
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
            let w = shared.writer.get_mut().unwrap_or_else(|e| e.into_inner());
            w.state = state;
            w.space = space;
            shared.lock(LockId::Live, LockMode::Shared, true)?;
            shared.joined = AtomicBool::new(true);
            if locked_writer {
                shared.lock(LockId::Writer, LockMode::Unlock, true)?;
            }
        } else if live_state.is_some() {
            shared.lock(LockId::Live, LockMode::Shared, true)?;
            shared.joined = AtomicBool::new(true);
        } else if meta.is_clean() {
            shared.offline = Some(from_meta);
            shared.offline_incarnation = live::incarnation(&shared.map.load());
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
        let mut ranges: Vec<(u64, u64)> = [Some(t), st.old_table()]
            .into_iter()
            .flatten()
            .map(|t| (t.off, t.bytes()))
            .collect();
        if crate::sys::mem_available().is_some_and(|m| st.file_len <= m / 4) {
            ranges.push((DATA_START, st.file_len.saturating_sub(DATA_START)));
        }
        self.backend.warm(ranges);
    }

    /// A mapping that covers at least `len` bytes, remapping if the file
    /// grew (in this process or another).
    pub(crate) fn map_covering(&self, len: u64) -> Result<Arc<Mapping>> {
        let m = self.map.load_full();
        if m.len() >= len {
            return Ok(m);
        }
        let _g = self.remap.lock().unwrap_or_else(|e| e.into_inner());
        let m = self.map.load_full();
        if m.len() >= len {
            return Ok(m);
        }
        let file_len = self
            .backend
            .file_len()
            .map_err(|e| self.io("read the file length", e))?;
        if file_len < len {
            return Err(self.corrupted(
                file_len,
                format!("file is {file_len} bytes but the store needs {len}: truncated?"),
            ));
        }
        if m.reserved() >= len {
            // The file grew into the address space already mapped.
            m.extend(file_len);
            return Ok(m);
        }
        let m = Arc::new(
            self.backend
                .map(file_len)
                .map_err(|e| self.io("map the grown file", e))?,
        );
        self.map.store(m.clone());
        Ok(m)
    }

    /// The extent table published with `st` (in the working copy it
    /// names). Exact under the writer lock; without it, a writer may be
    /// rewriting that copy (two publishes later), so `space_of` checks.
    pub(crate) fn working_space(&self, map: &Mapping, st: &State) -> Result<Space> {
        let at = SPACE_WORKING[(st.space_at & 1) as usize];
        Space::load(map, at, st.space_n, None, st.alloc_end)
            .map_err(|why| self.corrupted(at, format!("live extent table: {why}")))
    }

    /// The newest state and the extent table that goes with it: the
    /// working copy it names, or for a handle showing a checkpoint
    /// (offline), the checkpoint's. Read without the writer lock, so
    /// seqlock style: a writer rewrites a copy only two publishes later.
    pub(crate) fn space_of(&self, map: &Mapping) -> Result<(State, Space)> {
        if !self.joined.load(Ordering::Acquire) && !self.try_join()? {
            let meta = pick_meta(&self.path, map)?;
            return Ok((self.current()?, self.checkpoint_space(map, &meta)?));
        }
        for _ in 0..1000 {
            let gen = live::generation(map);
            let cur = self.current()?;
            let space = self.working_space(map, &cur);
            if live::generation(map) == gen {
                return Ok((cur, space?));
            }
            std::thread::yield_now();
        }
        Err(self.corrupted(LIVE_OFFSET, "live extent table never settles"))
    }

    /// Publishes `st` (and the extent table, if it changed) to every
    /// reader: the table goes to the working copy the current state does
    /// not name, then one publish makes both current.
    pub(crate) fn publish(&self, w: &mut Writer, map: &Mapping, st: &mut State) {
        if w.space_dirty {
            let at = 1 - (st.space_at & 1);
            let (n, _) = w.space.store(map, SPACE_WORKING[at as usize], false);
            st.space_at = at;
            st.space_n = n as u64;
            w.space_dirty = false;
        }
        live::publish(map, st);
        w.state = *st;
    }

    /// The newest committed state: from the live header, or for a handle
    /// that opened with none, the checkpoint it opened — until a writer
    /// sets up a live header, which it then joins.
    pub(crate) fn current(&self) -> Result<State> {
        if !self.joined.load(Ordering::Acquire) && !self.try_join()? {
            if let Some(st) = self.offline {
                return Ok(st);
            }
        }
        live::read(&self.map.load())
            .ok_or_else(|| self.corrupted(LIVE_OFFSET, "live header never settles"))
    }

    /// An offline handle joins the live header once a writer (in any
    /// process) has set one up since this handle opened: the header's
    /// incarnation changed. One atomic load when nothing changed.
    fn try_join(&self) -> Result<bool> {
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

    /// The newest committed state and a mapping that covers it.
    pub(crate) fn snapshot(&self) -> Result<(State, Arc<Mapping>)> {
        let st = self.current()?;
        let map = self.map_covering(st.file_len)?;
        st.validate(&self.path, LIVE_OFFSET, "live header")?;
        Ok((st, map))
    }

    /// What a new read transaction sees: like [`snapshot`](Self::snapshot),
    /// registered in the reader table when this handle can register
    /// (`readers` module docs: register, then re-read the state).
    pub(crate) fn begin_snapshot(&self) -> Result<(State, Arc<Mapping>, Option<Slot>)> {
        if !self.joined.load(Ordering::Acquire) || !self.backend.shared_writable() {
            let (st, map) = self.snapshot()?;
            return Ok((st, map, None));
        }
        let head = self.map.load_full();
        let slot = self
            .registry
            .acquire(&*self.backend, &head)
            .map_err(|e| match e {
                RegisterError::Full => Error::TooManyReaders {
                    path: self.path.clone(),
                    max: readers::CHUNKS,
                },
                RegisterError::Io(e) => self.io("claim a reader-table chunk", e),
            })?;
        let registered = (|| loop {
            let st = self.current()?;
            self.registry.set(&head, &slot, st.seq);
            let again = self.current()?;
            if again.seq == st.seq {
                let map = self.map_covering(again.file_len)?;
                again.validate(&self.path, LIVE_OFFSET, "live header")?;
                return Ok((again, map));
            }
        })();
        match registered {
            Ok((st, map)) => Ok((st, map, Some(slot))),
            Err(e) => {
                self.registry.release(&head, slot);
                Err(e)
            }
        }
    }

    /// Ends a registered snapshot.
    pub(crate) fn end_snapshot(&self, slot: Slot) {
        self.registry.release(&self.map.load(), slot);
    }

    /// Looks at the reader table (clearing chunks of dead processes).
    pub(crate) fn scan_readers(&self) -> readers::Scan {
        readers::scan(&*self.backend, &self.map.load(), &self.registry)
    }

    /// Whether a handle that cannot register its snapshots is open (this
    /// one or another): the `Pin` lock.
    pub(crate) fn pinned(&self) -> bool {
        self.offline.is_some()
            || !self.backend.shared_writable()
            || self.backend.held_by_others(LockId::Pin).unwrap_or(true)
    }

    /// Whether this handle's waiters can be counted in the live header (so
    /// a publish wakes them): it trusts the header and can write it.
    pub(crate) fn counts_waiters(&self) -> bool {
        self.joined.load(Ordering::Acquire) && self.backend.shared_writable()
    }

    /// The current mapping (any mapping covers the fixed pages).
    pub(crate) fn head_map(&self) -> Arc<Mapping> {
        self.map.load_full()
    }

    pub(crate) fn bad_slot(&self, b: BadSlot) -> Error {
        self.corrupted(
            b.target,
            format!(
                "index slot at {} names offset {}: {}",
                b.slot_off, b.target, b.why
            ),
        )
    }

    /// Reads the record at `off` (header checks only), as a corruption error
    /// if it is not one.
    pub(crate) fn header(&self, map: &Mapping, off: u64, what: &str) -> Result<Record> {
        log::read_header(map, off, map.len())
            .map_err(|e| self.corrupted(off, format!("{what}: {e}")))
    }

    /// From the newest version `head` of a key, the version a snapshot at
    /// `seq` sees (`None`: the key did not exist then or was deleted).
    /// Walks the chain through `recs`; the record returned lies in `base`
    /// (everything a snapshot can see is inside its own mapping) and is
    /// fully verified there. `key` is `head`'s key (every caller probed
    /// for it or read it from `head`), so only an older version's key is
    /// compared.
    pub(crate) fn resolve(
        &self,
        recs: &impl Records,
        base: &Mapping,
        head: Record,
        seq: u64,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let mut rec = head;
        let walked = rec.seq > seq;
        while rec.seq > seq {
            if rec.prev == 0 {
                return Ok(None);
            }
            let older = recs
                .header(rec.prev)
                .map_err(|e| self.corrupted(rec.prev, format!("previous version: {e}")))?;
            if older.seq >= rec.seq || !matches!(older.kind, KIND_PUT | KIND_DELETE) {
                return Err(self.corrupted(
                    rec.prev,
                    format!(
                        "version chain from {} goes to a record that is not older",
                        rec.off
                    ),
                ));
            }
            rec = older;
        }
        if rec.kind == KIND_DELETE {
            return Ok(None);
        }
        log::check_crc(base, &rec).map_err(|e| self.corrupted(rec.off, e.to_string()))?;
        if walked && rec.key(base) != key {
            return Err(self.corrupted(rec.off, "version chain leads to another key's record"));
        }
        Ok(Some(rec))
    }

    /// The newest version of `key` in the index of `st`, if any: while the
    /// index moves, in the new table, else in the old one.
    pub(crate) fn head(
        &self,
        map: &Mapping,
        recs: &impl Records,
        st: &State,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let hash = hash_key(self.seed, key);
        for table in [Some(st.table()), st.old_table()].into_iter().flatten() {
            if let Probe::Found { head, .. } = table
                .probe(map, recs, hash, key)
                .map_err(|b| self.bad_slot(b))?
            {
                return Ok(Some(head));
            }
        }
        Ok(None)
    }

    /// The value of `key` in the snapshot `st` whose mapping is `map`.
    pub(crate) fn lookup<'m>(
        &self,
        map: &'m Mapping,
        st: &State,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        check_key(key)?;
        // A short key is read once, a byte at a time, so that the hash's
        // wide loads never wait on the caller's narrow stores (see
        // `cpu::short_key_copy`).
        let copy;
        let key = if key.len() <= cpu::SHORT_KEY {
            copy = cpu::short_key_copy(key);
            &copy[..key.len()]
        } else {
            key
        };
        let hash = hash_key(self.seed, key);
        match st.table().quick_lookup(map, hash, key, st.seq) {
            Quick::Value(v) => Ok(Some(v)),
            Quick::Deleted => Ok(None),
            // While the index moves, the key may still be in the old table.
            Quick::Vacant if st.old_table().is_none() => Ok(None),
            Quick::Vacant | Quick::Checked => self.lookup_checked(map, st, key),
        }
    }

    /// [`lookup`](Self::lookup) through every check, for what
    /// `Table::quick_lookup` leaves to it.
    #[cold]
    #[inline(never)]
    pub(crate) fn lookup_checked<'m>(
        &self,
        map: &'m Mapping,
        st: &State,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        let recs = SnapshotRecords {
            shared: self,
            base: map,
        };
        let Some(head) = self.head(map, &recs, st, key)? else {
            return Ok(None);
        };
        Ok(self
            .resolve(&recs, map, head, st.seq, key)?
            .map(|r| r.value(map)))
    }

    // ---- writer side: everything below runs under the writer lock ----

    /// Flushes a range; a failure poisons the writer (a second flush after
    /// a failed one may "succeed" without the data on disk).
    pub(crate) fn flush(&self, w: &mut Writer, map: &Mapping, off: u64, len: u64) -> Result<()> {
        self.backend.flush(map, off, len).map_err(|e| {
            w.poisoned = true;
            self.io(format!("flush {len} bytes at offset {off}"), e)
        })
    }

    /// Flushes every committed but unflushed log range, and marks the log
    /// durable up to `st.tail`.
    pub(crate) fn flush_unsynced(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        extra: &[(u64, u64)],
    ) -> Result<()> {
        if w.full_flush {
            self.flush(w, map, 0, map.len())?;
        } else {
            let ranges: Vec<(u64, u64)> = w.unsynced.iter().chain(extra).copied().collect();
            for (a, b) in ranges {
                self.flush(w, map, a, b - a)?;
            }
        }
        w.unsynced.clear();
        w.full_flush = false;
        st.synced_tail = st.tail;
        Ok(())
    }

    /// Makes every commit so far durable (those made `Eventual`ly), and
    /// publishes that; nothing to do in the common case.
    pub(crate) fn sync_writer(&self, w: &mut Writer, map: &Mapping) -> Result<()> {
        let mut st = w.state;
        if st.synced_tail == st.tail && !w.full_flush && w.unsynced.is_empty() {
            return Ok(());
        }
        self.flush_unsynced(w, map, &mut st, &[])?;
        self.publish(w, map, &mut st);
        Ok(())
    }

    /// Hands out `size` bytes (page-aligned): the lowest free range that
    /// fits, else space at the end of the allocated area, growing the file
    /// first if needed. The range is listed in `space` as `use_` (`None`:
    /// an index table, which the state names instead). On `ENOSPC`
    /// nothing changed.
    pub(crate) fn allocate(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        tail: &mut Tail,
        size: u64,
        use_: Option<Use>,
    ) -> Result<u64> {
        self.allocate_zeroed(map, st, space, tail, size, use_)
            .map(|(off, _)| off)
    }

    /// [`allocate`](Self::allocate), also saying from where on the range
    /// is known to hold zeros (its end if nowhere): space the file grew by
    /// that no allocation reached since (`tail`).
    pub(crate) fn allocate_zeroed(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        tail: &mut Tail,
        size: u64,
        use_: Option<Use>,
    ) -> Result<(u64, u64)> {
        let size = align_page(size);
        let full = || Error::StoreFull {
            path: self.path.clone(),
        };
        if space.list.len() + 2 > SPACE_ENTRIES {
            return Err(full());
        }
        if let Some(off) = self.take_reserved(space, size, use_)? {
            return Ok((off, off + size));
        }
        let off = align_page(st.alloc_end);
        let end = off
            .checked_add(size)
            .filter(|&e| e <= MAX_FILE_LEN)
            .ok_or_else(full)?;
        if end > st.file_len {
            let step = (st.file_len / 4).clamp(MIN_GROWTH, MAX_GROWTH);
            let want = end.max(st.file_len + step);
            // Not prepared here: `prepare_ahead` does it a slice per
            // commit (2 MiB prepared in the commit that grew a small file
            // cost it 7-30 ms).
            match self.grow_file(map, st, tail, want) {
                // A nearly full disk may still hold what this needs: grow
                // by that alone (a compaction that frees space needs a
                // little to log it).
                Err(e) if want > end && is_enospc(&e) => self.grow_file(map, st, tail, end)?,
                r => r?,
            }
        }
        let zeros = tail.zeros_from.clamp(off, end);
        // Whatever is written here from now on (even by a transaction that
        // aborts) is no longer known to be zero.
        tail.zeros_from = tail.zeros_from.max(end);
        st.alloc_end = end;
        if let Some(u) = use_ {
            space.insert(off, size, u);
        }
        Ok((off, zeros))
    }

    /// Grows the file to at least `want` bytes (whole growth units) and
    /// maps it; the new space reads as zeros.
    fn grow_file(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        tail: &mut Tail,
        want: u64,
    ) -> Result<()> {
        let new_len = want.div_ceil(MIN_GROWTH) * MIN_GROWTH;
        self.backend
            .grow(new_len)
            .map_err(|e| self.io(format!("grow the file to {new_len} bytes"), e))?;
        tail.zeros_from = tail.zeros_from.min(st.file_len);
        st.file_len = new_len;
        *map = self.map_covering(new_len)?;
        Ok(())
    }

    /// Prepares, a slice per commit, the space at the end of the file
    /// that the log's next extent and the index's next table will take
    /// (when no free range can hold them): the zeros past the allocation
    /// end are kept prepared (zeros written again: the log's with their
    /// writeback started, the table's left dirty; `Prepare`) for
    /// - the log's next extent: in a small file (minimum extents, under
    ///   128 MiB) only as far as the file already reaches, unless the next
    ///   table is prepared (the commit that starts the move may need an
    ///   extent before the table); past that the file grows for it (the
    ///   space prepared early is then at most a 128th of the file);
    /// - the index's next table, once it is at least `PREPARE_TABLE_MIN`
    ///   and the table is past two thirds of its load limit: its size
    ///   times how far the table is on its way from there to the limit.
    ///   (From a third, as before, a 1M-key store held 14.5 MiB of the
    ///   next table, 9% of its file, half a table's life early.)
    ///
    /// The log's appends and the move then find their pages in memory
    /// with their extents converted, instead of adding them to the page
    /// cache (~14 µs a page here, most of it zeroing a new page) and
    /// converting them a thousand at a time in the commits that first
    /// write there (a 2 MiB preparation in one commit cost it 7-10 ms). A
    /// commit prepares at most twice the bytes it logged (`logged`) plus
    /// twice the table's share of the keys it added (`added`), so the cost
    /// is spread as evenly as the writes that make it necessary. Failing
    /// only costs speed later, so errors are ignored.
    pub(crate) fn prepare_ahead(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &Space,
        tail: &mut Tail,
        logged: u64,
        added: u64,
    ) {
        let mut table = 0;
        let mut budget = 2 * logged;
        if st.old_table().is_none() {
            let t = st.table();
            let limit = t.cap() * MAX_LOAD_EIGHTHS / 8;
            let from = limit / 3 * 2;
            let next = 2 * t.bytes();
            if next >= PREPARE_TABLE_MIN
                && st.index_used > from
                && space.lowest_free(next).is_none()
            {
                let per_key =
                    |keys: u64| (next as u128 * keys as u128 / (limit - from) as u128) as u64;
                table = per_key((st.index_used - from).min(limit - from));
                budget += 2 * per_key(added);
            }
        }
        let extent = extent_size(st, 0);
        let log_part = if space.lowest_free(extent).is_none() {
            extent
        } else {
            0
        };
        if table + log_part == 0 {
            return;
        }
        let base = align_page(st.alloc_end).max(tail.zeros_from.min(st.file_len));
        let mut want = base.saturating_add(table + log_part);
        if table == 0 && extent == LOG_EXTENT {
            // A small file is not grown for its log: it would grow ahead of
            // a compaction that may yet make room. What it grew by is
            // prepared.
            want = want.min(st.file_len);
        }
        let start = tail.prepared_to.max(base);
        if start >= want || want > MAX_FILE_LEN {
            return;
        }
        let budget = budget.clamp(PREPARE_AHEAD_MIN, PREPARE_AHEAD_MAX);
        let end = align_page(want.min(start + budget));
        if end > st.file_len && self.grow_file(map, st, tail, end).is_err() {
            return;
        }
        // The log's next extent as the log writes (`pwrite`), the table's
        // space through the map (`Prepare`).
        let mid = base.saturating_add(log_part).clamp(start, end);
        let parts = [(start, mid, Prepare::Log), (mid, end, Prepare::Table)];
        for (from, to, use_) in parts {
            if to > from && self.backend.prepare(map, from, to - from, use_).is_err() {
                return;
            }
        }
        tail.prepared_to = end;
    }

    /// Whether the index must start moving to a new table for `extra` new
    /// keys: when the table would pass its load limit, or holds more
    /// deleted keys than live ones (and over a quarter). While a move is
    /// under way, only if the new table would fill before it ends (then it
    /// is finished at once first). The decision rests on `index_used`,
    /// which replay may count differently, so it is logged (an index
    /// record) and replay follows the log (docs/DESIGN.md, "Index growth").
    pub(crate) fn index_move_needed(&self, st: &State, extra: u64) -> Result<Option<IndexMove>> {
        let mut finish = false;
        if st.old_table().is_some() {
            if st.table().fits(st.index_used + st.migrate_left, extra) {
                return Ok(None);
            }
            finish = true;
        } else {
            let t = st.table();
            let deleted = st.index_used.saturating_sub(st.key_count);
            let grow = !t.fits(st.index_used, extra);
            let clean = t.log2 > MIN_INDEX_LOG2 && deleted > t.cap() / 4 && deleted > st.key_count;
            if !grow && !clean {
                return Ok(None);
            }
        }
        let keys = st.key_count + extra;
        let mut log2 = MIN_INDEX_LOG2;
        while (1u64 << log2) < keys.saturating_mul(2) {
            log2 += 1;
        }
        if log2 > 40 {
            return Err(Error::StoreFull {
                path: self.path.clone(),
            });
        }
        Ok(Some(IndexMove { log2, finish }))
    }

    /// Space for the table of an index move, zeroed: allocated before the
    /// commit record (a full disk fails there, with nothing committed).
    pub(crate) fn index_table(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        tail: &mut Tail,
        log2: u32,
    ) -> Result<u64> {
        let bytes = 8u64 << log2;
        let (off, zeros) = self.allocate_zeroed(map, st, space, tail, bytes, None)?;
        // Allocated space may hold bytes of an aborted transaction or of
        // a reclaimed extent; space the file grew by is zeros already (and
        // writing it through the map would fault every page in now, in
        // this commit, instead of slot by slot as the move fills it, or
        // ahead of it: `prepare_ahead`).
        if zeros > off {
            let len = zeros - off;
            self.backend
                .zero_range(map, off, len)
                .map_err(|e| self.io(format!("zero {len} bytes at {off} for an index table"), e))?;
        }
        Ok(off)
    }

    /// Starts the index move a commit logged, into the (zeroed) table at
    /// `off`, after finishing the move under way if it says so.
    fn start_move(
        &self,
        map: &Mapping,
        st: &mut State,
        space: &mut Space,
        mv: IndexMove,
        off: u64,
        seq: u64,
    ) -> Result<()> {
        if mv.finish {
            self.migrate(map, st, space, u64::MAX, seq)?;
        }
        if mv.log2 == 0 {
            return Ok(()); // only finish (compaction waits for no move)
        }
        if st.old_table().is_some() {
            return Err(self.corrupted(off, "an index move starts while another is under way"));
        }
        st.old_index_off = st.index_off;
        st.old_index_log2 = st.index_log2;
        st.migrate_next = 0;
        st.migrate_left = st.key_count;
        st.index_off = off;
        st.index_log2 = mv.log2 as u64;
        st.index_used = 0;
        Ok(())
    }

    /// Moves up to `budget` slots of the old table into the new one, in
    /// slot order; the move ends (and the old table is retired by commit
    /// `seq`) after its last slot. A key already in the new table (written
    /// since the move began) stays as it is; a deleted key is dropped: no
    /// snapshot that reads only the new table can see its older versions.
    /// Deterministic, so replay makes the same moves at the same commits.
    fn migrate(
        &self,
        map: &Mapping,
        st: &mut State,
        space: &mut Space,
        budget: u64,
        seq: u64,
    ) -> Result<()> {
        let Some(old) = st.old_table() else {
            return Ok(());
        };
        let new = st.table();
        let end = old.cap().min(st.migrate_next.saturating_add(budget));
        // Each slot names a record to read (its key decides the new home):
        // prefetch the record of a slot a little ahead, so misses overlap.
        for i in st.migrate_next..end {
            old.prefetch_record(map, i + 2 * PREFETCH_AHEAD as u64);
            let v = old.load(map, i);
            if v == SLOT_EMPTY {
                continue;
            }
            let h = self.header(map, slot_offset(v), "old index slot target")?;
            if !matches!(h.kind, KIND_PUT | KIND_DELETE) {
                return Err(
                    self.corrupted(old.slot_off(i), "old index slot names a non-key record")
                );
            }
            let key = h.key(map);
            let hash = hash_key(self.seed, key);
            let probe = new
                .probe(map, map, hash, key)
                .map_err(|b| self.bad_slot(b))?;
            if let (Probe::Vacant { slot }, KIND_PUT) = (probe, h.kind) {
                new.store(map, slot, v);
                st.index_used += 1;
            }
            if h.kind == KIND_PUT {
                st.migrate_left = st.migrate_left.saturating_sub(1);
            }
        }
        st.migrate_next = end;
        if end == old.cap() {
            space.insert(old.off, old.bytes(), Use::Retired { seq });
            st.old_index_off = 0;
            st.old_index_log2 = 0;
            st.migrate_next = 0;
            st.migrate_left = 0;
        }
        Ok(())
    }

    /// The version `rec` replaces (its `prev`), if any.
    fn replaced(&self, map: &Mapping, rec: &Record) -> Result<Option<Record>> {
        if rec.prev == 0 {
            return Ok(None);
        }
        let prev = self.header(map, rec.prev, "previous version")?;
        if prev.seq >= rec.seq || !matches!(prev.kind, KIND_PUT | KIND_DELETE) {
            return Err(self.corrupted(rec.off, "previous version is not an older key record"));
        }
        Ok(Some(prev))
    }

    /// Points the index at a commit's records (the newest record of each
    /// key it wrote) and updates the counters; moves some of the index if
    /// it is moving. Used by `commit` after the commit is durable, and by
    /// recovery for each replayed commit: the two cannot disagree about
    /// what a commit means.
    pub(crate) fn apply(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        finals: &[(u64, Record)],
        seq: u64,
        index_move: Option<(IndexMove, u64)>,
    ) -> Result<()> {
        if let Some((mv, off)) = index_move {
            self.start_move(map, st, space, mv, off, seq)?;
        }
        let old_cap = st.old_table().map_or(0, |o| o.cap());
        let pace = MIGRATE_MIN
            .max(MIGRATE_PER_KEY * finals.len() as u64)
            .max(old_cap / MIGRATE_COMMITS);
        let budget = if pace <= old_cap / MIGRATE_RAMP_SHARE {
            pace.min(MIGRATE_RAMP_MIN.max(st.migrate_next / 2))
        } else {
            pace
        };
        self.migrate(map, st, space, budget, seq)?;
        let table = st.table();
        for (i, &(hash, rec)) in finals.iter().enumerate() {
            // The slots and replaced records a few keys ahead: their cache
            // misses overlap instead of queueing one after another.
            if let Some(&(h, r)) = finals.get(i + PREFETCH_AHEAD) {
                table.prefetch(map, h);
                if r.prev != 0 {
                    map.prefetch(r.prev);
                }
            }
            if rec.kind == KIND_DELETE && rec.prev == 0 {
                continue; // deleted a key that no commit had: nothing to index
            }
            let prev = self.replaced(map, &rec)?;
            let replaced = prev.filter(|p| p.kind == KIND_PUT).map_or(0, |p| p.size());
            let slot = match table
                .probe(map, &**map, hash, rec.key(map))
                .map_err(|b| self.bad_slot(b))?
            {
                Probe::Found { slot, .. } => slot,
                Probe::Vacant { slot } => {
                    st.index_used += 1;
                    slot
                }
            };
            table.store(map, slot, slot_encode(rec.off, hash));
            if replaced > 0 {
                space.add_live(rec.prev, -(replaced as i64));
            }
            if rec.kind == KIND_PUT {
                space.add_live(rec.off, rec.size() as i64);
                st.key_count += (replaced == 0) as u64;
                st.live_bytes = (st.live_bytes + rec.size()).saturating_sub(replaced);
            } else if replaced > 0 {
                st.key_count = st.key_count.saturating_sub(1);
                st.live_bytes = st.live_bytes.saturating_sub(replaced);
            }
        }
        Ok(())
    }

    /// Marks the extents a commit retires (compaction copied every record
    /// in them that was the newest version of its key). Commits whose
    /// records were there are no longer listed by `changes_since`.
    pub(crate) fn retire(
        &self,
        st: &mut State,
        space: &mut Space,
        retired: &[(u64, u64)],
        seq: u64,
    ) {
        for &(off, len) in retired {
            if let Some(last) = space.retire(off, seq) {
                st.history_seq = st.history_seq.max(last);
                st.retired_total += len;
                st.last_compact_seq = seq;
            }
            if st.victim_off == off {
                st.victim_off = 0;
                st.victim_pos = 0;
            }
        }
    }

    /// Applies a commit found in the log by recovery.
    fn apply_scanned(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        c: &ScannedCommit,
    ) -> Result<()> {
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut finals: Vec<(u64, Record)> = Vec::new();
        let mut moved = 0;
        for rec in &c.records {
            if rec.moved() {
                moved += rec.size();
            }
            let key = rec.key(map);
            match last.get(key) {
                Some(&i) => finals[i].1 = *rec,
                None => {
                    last.insert(key, finals.len());
                    finals.push((hash_key(self.seed, key), *rec));
                }
            }
        }
        drop(last);
        let index_move = match c.index {
            Some(mv) if mv.log2 == 0 => Some((mv, 0)),
            Some(mv) => {
                let mut tail = Tail::UNKNOWN; // the original commit's may differ
                Some((mv, self.index_table(map, st, space, &mut tail, mv.log2)?))
            }
            None => None,
        };
        self.apply(map, st, space, &finals, c.seq, index_move)?;
        self.retire(st, space, &c.retired, c.seq);
        st.moved_total += moved;
        st.seq = c.seq;
        st.tail = c.after.pos;
        st.tail_end = c.after.end;
        st.log_bytes += c.bytes;
        Ok(())
    }

    /// Every complete commit in the log after `st`'s tail.
    fn scan_tail(&self, map: &Mapping, st: &State) -> Vec<ScannedCommit> {
        let t = st.table();
        let o = st.old_table().unwrap_or(Table { off: 0, log2: 0 });
        let rules = ExtentRules {
            file_len: st.file_len.min(map.len()),
            forbidden: [(t.off, t.off + t.bytes()), (o.off, o.off + o.bytes())],
        };
        let mut out: Vec<ScannedCommit> = Vec::new();
        let mut cur = st.cursor();
        let mut seq = st.seq;
        while let Some(c) = log::scan_commit(map, cur, seq + 1, &rules) {
            cur = c.after;
            seq = c.seq;
            out.push(c);
        }
        out
    }

    /// The extent table a checkpoint names, checked.
    fn checkpoint_space(&self, map: &Mapping, meta: &Meta) -> Result<Space> {
        let at = meta.space_at.get();
        let meta_at = META_OFFSETS[(meta.generation.get() % 2) as usize];
        if !SPACE_CHECKPOINT.contains(&at) {
            return Err(self.corrupted(meta_at, format!("meta page: extent table at {at}")));
        }
        Space::load(
            map,
            at,
            meta.space_count.get() as u64,
            Some(meta.space_crc.get()),
            meta.alloc_end.get(),
        )
        .map_err(|why| self.corrupted(at, format!("checkpoint extent table: {why}")))
    }

    /// Recovery from the newest checkpoint (the meta page), when no live
    /// header can be trusted: after a reboot, a power loss, or when every
    /// handle of the store has closed. See docs/DESIGN.md, "Recovery".
    fn recover(&self, meta: &Meta) -> Result<(State, Space)> {
        let mut map = self.map.load_full();
        let mut st = State::from_meta(meta, map.len());
        let mut space = self.checkpoint_space(&map, meta)?;
        // After a clean close nothing follows the tail: the first commit
        // after one clears the flag, durably, before it writes its commit
        // record (`mark_dirty`). Not looking spares the open a fault on
        // the tail's page and a page table for it (15-16.5 µs instead of
        // 17.5-20.5 for the 1M-key store).
        let commits = if meta.is_clean() {
            Vec::new()
        } else {
            let commits = self.scan_tail(&map, &st);
            let recovered: HashSet<u64> = commits
                .iter()
                .flat_map(|c| c.records.iter().map(|r| r.off))
                .collect();
            if self.has_lost_slot(&map, meta, &space, &recovered) {
                return self.rebuild(meta, space, commits);
            }
            commits
        };
        if !commits.is_empty() {
            self.settle(&mut self.writer(), &map, &mut st, &mut space, &commits)?;
            self.apply_all(&mut map, &mut st, &mut space, &commits)?;
        }
        if !meta.is_clean() {
            // Replay decides "new slot" from the table it finds, where some
            // of the lost process's slot writes may already be: count.
            let t = st.table();
            st.index_used = (0..t.cap())
                .filter(|&i| t.load(&map, i) != SLOT_EMPTY)
                .count() as u64;
        }
        Ok((st, space))
    }

    /// Makes scanned commits durable before the index points at them (they
    /// may exist only in the page cache of a process that died), and lists
    /// every extent they entered (sealing the one each left), so no
    /// allocation lands there.
    fn settle(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        space: &mut Space,
        commits: &[ScannedCommit],
    ) -> Result<()> {
        self.flush(w, map, 0, map.len())?;
        let mut pos = st.tail;
        for c in commits {
            for &(off, len) in &c.extents {
                space.seal(pos, c.seq);
                self.claim_extent(st, space, off, len)?;
                pos = off;
            }
            pos = c.after.pos;
        }
        Ok(())
    }

    /// Lists an extent the log entered: carved out of free space, or past
    /// the allocation end (the gap before it becomes free space).
    fn claim_extent(&self, st: &mut State, space: &mut Space, off: u64, len: u64) -> Result<()> {
        let end = off + len;
        if end > st.alloc_end {
            let from = st.alloc_end.max(DATA_START);
            space.insert(from, end - from, Use::Free);
            st.alloc_end = end;
        }
        let fresh = Use::Log {
            live: 0,
            sealed: false,
            last_seq: 0,
        };
        space
            .claim(off, len, Some(fresh), true)
            .map_err(|why| self.corrupted(off, format!("log extent: {why}")))
    }

    /// Applies settled commits in log order.
    fn apply_all(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        space: &mut Space,
        commits: &[ScannedCommit],
    ) -> Result<()> {
        for c in commits {
            self.apply_scanned(map, st, space, c)?;
        }
        st.synced_tail = st.tail;
        Ok(())
    }

    /// Whether the checkpointed index has a slot naming a record that is
    /// neither in a log extent of the checkpoint nor among the recovered
    /// commits: an `Eventual` commit's slot that reached the disk while its
    /// record did not. Only such a slot's old value is unknowable.
    fn has_lost_slot(
        &self,
        map: &Mapping,
        meta: &Meta,
        space: &Space,
        recovered: &HashSet<u64>,
    ) -> bool {
        let mut tables = vec![Table {
            off: meta.index_offset.get(),
            log2: meta.index_log2.get(),
        }];
        if meta.old_index_log2.get() != 0 {
            tables.push(Table {
                off: meta.old_index_offset.get(),
                log2: meta.old_index_log2.get(),
            });
        }
        let (tail, tail_end) = (meta.tail.get(), meta.tail_end.get());
        tables.iter().any(|table| {
            (0..table.cap()).any(|i| {
                let v = table.load(map, i);
                if v == SLOT_EMPTY {
                    return false;
                }
                let t = slot_offset(v);
                // Log extents of the checkpoint, except the unwritten rest
                // of the tail extent, held only records from before it.
                let in_log = space
                    .find(t)
                    .is_some_and(|i| matches!(space.list[i].use_, Use::Log { .. }));
                let before_checkpoint = in_log && !(tail..tail_end).contains(&t);
                !before_checkpoint && !recovered.contains(&t)
            })
        })
    }

    /// Rebuilds the index from the log into a fresh table, then
    /// checkpoints: the newest record of each key in the checkpoint's log
    /// extents, then the commits found after it. Neither the checkpointed
    /// tables nor its extent table are touched, so a crash in the middle
    /// leaves the store as it was and recovery starts over.
    fn rebuild(
        &self,
        meta: &Meta,
        mut space: Space,
        commits: Vec<ScannedCommit>,
    ) -> Result<(State, Space)> {
        let mut map = self.map.load_full();
        let mut st = State::from_meta(meta, map.len());
        let (seq, tail) = (meta.seq.get(), meta.tail.get());
        let mut newest: HashMap<&[u8], Record> = HashMap::new();
        let heads = map.clone();
        for e in space.list.iter_mut() {
            let Use::Log { live, .. } = &mut e.use_ else {
                continue;
            };
            *live = 0;
            for rec in log::extent_records(&heads, e.off, e.end(), tail) {
                let Ok(rec) = rec else {
                    break;
                };
                if rec.seq > seq {
                    break;
                }
                if matches!(rec.kind, KIND_PUT | KIND_DELETE) {
                    let slot = newest.entry(rec.key(&heads)).or_insert(rec);
                    if rec.seq > slot.seq || (rec.seq == slot.seq && rec.off > slot.off) {
                        *slot = rec;
                    }
                }
            }
        }
        let keys: Vec<Record> = newest
            .into_values()
            .filter(|r| r.kind == KIND_PUT)
            .collect();
        let mut log2 = MIN_INDEX_LOG2;
        while (1u64 << log2) < (keys.len() as u64).saturating_mul(2) {
            log2 += 1;
        }
        let mut w = self.writer();
        // The extents of the commits after the checkpoint are taken before
        // the new table is placed.
        self.settle(&mut w, &map, &mut st, &mut space, &commits)?;
        // The checkpoint's tables become free once the new checkpoint is
        // written (they are unlisted until then, so nothing lands there).
        let old_tables: Vec<Table> = [Some(st.table()), st.old_table()]
            .into_iter()
            .flatten()
            .collect();
        st.index_off = self.allocate(
            &mut map,
            &mut st,
            &mut space,
            &mut w.tail,
            8u64 << log2,
            None,
        )?;
        st.index_log2 = log2 as u64;
        st.old_index_off = 0;
        st.old_index_log2 = 0;
        st.migrate_next = 0;
        st.migrate_left = 0;
        let bytes = 8u64 << log2;
        self.backend
            .zero_range(&map, st.index_off, bytes)
            .map_err(|e| self.io(format!("zero {bytes} bytes for an index table"), e))?;
        let table = st.table();
        st.index_used = 0;
        st.key_count = 0;
        st.live_bytes = 0;
        for rec in keys {
            let hash = hash_key(self.seed, rec.key(&map));
            if !table.insert_new(&map, hash, slot_encode(rec.off, hash)) {
                return Err(self.corrupted(table.off, "rebuilt index is full"));
            }
            st.index_used += 1;
            st.key_count += 1;
            st.live_bytes += rec.size();
            space.add_live(rec.off, rec.size() as i64);
        }
        self.apply_all(&mut map, &mut st, &mut space, &commits)?;
        for t in old_tables {
            space.insert(t.off, t.bytes(), Use::Retired { seq: st.seq });
        }
        w.space = space;
        self.checkpoint(&mut w, &map, &mut st, false)?;
        Ok((st, std::mem::take(&mut w.space)))
    }

    /// Commits found after the published tail: a writer (in any process)
    /// died after its commit record was written but before it published.
    /// They are committed; make them durable and publish them.
    pub(crate) fn adopt_orphan_commits(
        &self,
        w: &mut Writer,
        map: &mut Arc<Mapping>,
        st: &mut State,
    ) -> Result<()> {
        let commits = self.scan_tail(map, st);
        if commits.is_empty() {
            return Ok(());
        }
        let mut space = std::mem::take(&mut w.space);
        let r = self
            .settle(w, map, st, &mut space, &commits)
            .and_then(|()| self.apply_all(map, st, &mut space, &commits));
        w.space = space;
        r?;
        w.space_dirty = true;
        self.publish(w, map, st);
        Ok(())
    }

    /// Writes a meta page describing `st` after flushing everything it
    /// refers to. Two flushes: data, index and extent table first, then
    /// the meta page, so a meta page never names bytes that are not on
    /// disk. The extent table goes to the checkpoint copy the newest meta
    /// page does not name.
    pub(crate) fn checkpoint(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        clean: bool,
    ) -> Result<()> {
        let newest = pick_meta(&self.path, map)?;
        let at = other_space_copy(&newest);
        let (count, crc) = w.space.store(map, at, true);
        self.flush(w, map, 0, map.len())?;
        let generation = newest.generation.get().max(st.meta_gen) + 1;
        self.write_meta(w, map, st, SpaceRef { at, count, crc }, generation, clean)?;
        w.fuzzy = None;
        st.meta_gen = generation;
        st.meta_clean = clean as u64;
        st.ckpt_log_bytes = st.log_bytes;
        st.ckpt_seq = st.seq;
        st.synced_tail = st.tail;
        w.unsynced.clear();
        w.full_flush = false;
        Ok(())
    }

    /// One step of a fuzzy checkpoint: flushes the next slice of the file;
    /// after the last one, writes the meta page naming the state saved at
    /// its start. Returns whether a meta page was written. Abandoned if a
    /// newer checkpoint appeared meanwhile (another process's writer).
    fn checkpoint_slice(&self, w: &mut Writer, map: &Mapping, st: &mut State) -> Result<bool> {
        let Some(f) = w.fuzzy.as_mut() else {
            return Ok(false);
        };
        let tables = [
            Some(st.table()),
            st.old_table(),
            Some(f.st.table()),
            f.st.old_table(),
        ];
        // Everything `f.st` names lies below its allocation end; past it,
        // prepared space may wait dirty for its table (`prepare_ahead`).
        let end = f.st.alloc_end.min(map.len());
        let off = f.next.min(end);
        let next = slice_end(off, end, tables.iter().flatten());
        f.next = next;
        let done = next >= end;
        self.flush(w, map, off, next - off)?;
        if !done {
            return Ok(false);
        }
        let f = w.fuzzy.take().expect("checked above");
        let newest = pick_meta(&self.path, map)?;
        if newest.seq.get() > f.st.seq {
            return Ok(false);
        }
        let generation = newest.generation.get() + 1;
        let at = other_space_copy(&newest);
        let (count, crc) = f.space.store(map, at, true);
        self.flush(w, map, at, SPACE_ENTRIES as u64 * SPACE_ENTRY_SIZE)?;
        self.write_meta(
            w,
            map,
            &f.st,
            SpaceRef { at, count, crc },
            generation,
            false,
        )?;
        st.meta_gen = generation;
        st.meta_clean = 0;
        st.ckpt_log_bytes = f.st.log_bytes;
        st.ckpt_seq = f.st.seq;
        Ok(true)
    }

    /// Writes and flushes the meta page of `generation` describing `st`
    /// and naming the (flushed) checkpoint extent table `space`.
    fn write_meta(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &State,
        space: SpaceRef,
        generation: u64,
        clean: bool,
    ) -> Result<()> {
        let meta = st.to_meta(self.seed, generation, clean, space);
        let page = META_OFFSETS[(generation % 2) as usize];
        map.write_words(page, bytemuck::bytes_of(&meta));
        self.flush(w, map, page, PAGE_SIZE)
    }

    /// Rewrites the newest meta page with the clean flag cleared, before
    /// the first slot changes after a clean close: from then on a crash
    /// must check the index for slots naming lost records.
    pub(crate) fn mark_dirty(&self, w: &mut Writer, map: &Mapping, st: &mut State) -> Result<()> {
        let mut meta = pick_meta(&self.path, map)?;
        let generation = meta.generation.get() + 1;
        meta.flags = Le32::new(meta.flags.get() & !META_CLEAN);
        meta.generation = Le64::new(generation);
        meta.seal();
        let at = META_OFFSETS[(generation % 2) as usize];
        map.write_words(at, bytemuck::bytes_of(&meta));
        self.flush(w, map, at, PAGE_SIZE)?;
        st.meta_gen = generation;
        st.meta_clean = 0;
        Ok(())
    }

    /// `Poisoned` if a write or flush of this handle failed: what it left
    /// in the file is unknown until the store is reopened (and recovered).
    pub(crate) fn refuse_poisoned(&self, w: &Writer) -> Result<()> {
        if w.poisoned {
            return Err(Error::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Takes the writer lock (this process's mutex, then the file lock),
    /// brings the writer's state up to date with what any process
    /// published, and finishes what a dead writer left. For a write
    /// transaction (`for_txn`) it also takes a checkpoint if one is due.
    /// Returns `None` if `wait` is false and another writer holds the lock.
    pub(crate) fn begin_writer(
        &self,
        wait: bool,
        for_txn: bool,
    ) -> Result<Option<(MutexGuard<'_, Writer>, Arc<Mapping>)>> {
        if !self.writable() {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut w = if wait {
            self.writer()
        } else {
            match self.writer.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            }
        };
        self.refuse_poisoned(&w)?;
        if !self.lock(LockId::Writer, LockMode::Exclusive, wait)? {
            return Ok(None);
        }
        match self.refresh_writer(&mut w, for_txn) {
            Ok(map) => Ok(Some((w, map))),
            Err(e) => {
                let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
                Err(e)
            }
        }
    }

    fn refresh_writer(&self, w: &mut Writer, for_txn: bool) -> Result<Arc<Mapping>> {
        let (mut st, mut map) = self.snapshot()?;
        if st != w.state {
            // Another handle committed since we last wrote: our list of
            // unflushed ranges is stale, and it may have left its own.
            w.unsynced.clear();
            w.full_flush = st.synced_tail != st.tail;
            w.space = self.working_space(&map, &st)?;
            w.space_dirty = false;
            w.tail = Tail::UNKNOWN;
        }
        // A checkpoint is found by generation: trust the pages, not the header.
        let meta = pick_meta(&self.path, &map)?;
        st.meta_gen = meta.generation.get();
        st.meta_clean = meta.is_clean() as u64;
        self.adopt_orphan_commits(w, &mut map, &mut st)?;
        if for_txn {
            // Checkpoint here, before the transaction writes anything: the
            // meta page then never names space the transaction hands out.
            // Also when retired extents wait for one to be reused.
            let log_due =
                st.log_bytes - st.ckpt_log_bytes.min(st.log_bytes) >= CHECKPOINT_LOG_BYTES;
            let waiting: u64 = w
                .space
                .list
                .iter()
                .filter(|e| matches!(e.use_, Use::Retired { seq } if seq > st.ckpt_seq))
                .map(|e| e.len)
                .sum();
            let space_due = waiting >= (st.file_len / 32).max(RECLAIM_CHECKPOINT_MIN);
            if w.fuzzy.is_none() && (log_due || space_due) {
                w.fuzzy = Some(Fuzzy {
                    st,
                    space: w.space.clone(),
                    next: 0,
                });
            }
            if w.fuzzy.is_some() && self.checkpoint_slice(w, &map, &mut st)? {
                self.publish(w, &map, &mut st);
            }
            self.release_retired(w, &st);
        }
        w.state = st;
        Ok(map)
    }

    /// Frees retired ranges that nobody can read any more: retired by a
    /// commit no later than the last checkpoint (so no durable index slot
    /// or meta page names them) and no later than the oldest snapshot
    /// open in any process (so no reader does). Nothing is freed while a
    /// handle that cannot register its snapshots is open (`Pin`).
    pub(crate) fn release_retired(&self, w: &mut Writer, st: &State) -> u64 {
        let Some(oldest_retired) = w.space.oldest_retired() else {
            return 0;
        };
        if oldest_retired > st.ckpt_seq || self.pinned() {
            return 0;
        }
        let oldest = self
            .scan_readers()
            .snapshots
            .iter()
            .map(|s| s.seq)
            .min()
            .unwrap_or(u64::MAX);
        let freed = self.free_retired(w, st.ckpt_seq.min(oldest));
        if freed > 0 {
            w.space_dirty = true;
        }
        freed
    }

    /// Frees every range retired by a commit `<= upto` (the caller has
    /// checked that no snapshot, index slot or recovery can read them) and
    /// punches them, so their disk blocks go back to the file system even
    /// while other processes map the file (docs/DESIGN.md, "Holes").
    /// Returns the bytes freed.
    fn free_retired(&self, w: &mut Writer, upto: u64) -> u64 {
        let mut freed = 0;
        for (off, len) in w.space.release(upto) {
            // A hint: blocks not given back only cost disk space.
            let _ = self.backend.punch(off, len);
            freed += len;
        }
        freed
    }

    /// Takes the lowest free range that holds `size` bytes, with its
    /// blocks reserved first (it may have been punched): a full disk is an
    /// `Io` error here and the range stays free.
    fn take_reserved(
        &self,
        space: &mut Space,
        size: u64,
        use_: Option<Use>,
    ) -> Result<Option<u64>> {
        let Some(e) = space.lowest_free(size) else {
            return Ok(None);
        };
        self.backend.reserve(e.off, size).map_err(|err| {
            self.io(
                format!(
                    "reserve {size} bytes of free space at offset {} for reuse",
                    e.off
                ),
                err,
            )
        })?;
        Ok(space.take_free(size, use_))
    }

    /// After compaction: a checkpoint (retired extents are reused only
    /// after one), then frees what no snapshot reads; with `shrink`, and
    /// when this handle holds the store alone, also cuts free space off the
    /// end of the file. Returns the bytes freed and the file length.
    pub(crate) fn reclaim(&self, shrink: bool) -> Result<(u64, u64)> {
        let Some((mut w, mut map)) = self.begin_writer(true, false)? else {
            unreachable!("a waiting begin_writer always gets the lock");
        };
        let r = (|| {
            let mut st = w.state;
            self.checkpoint(&mut w, &map, &mut st, false)?;
            let freed = self.release_retired(&mut w, &st);
            self.publish(&mut w, &map, &mut st);
            if shrink && self.lock(LockId::Open, LockMode::Exclusive, false)? {
                let r = (|| {
                    if self.relocate_index(&mut w, &map, &mut st)? {
                        self.checkpoint(&mut w, &map, &mut st, false)?;
                        // Publish the new table *before* looking for
                        // readers. The move keeps `seq`, so a snapshot's
                        // re-check in `begin_snapshot` cannot tell the two
                        // states apart; only this order (Dekker with its
                        // register-then-re-read) makes a snapshot that the
                        // scan misses read the new table. Scanning first
                        // freed the old table under such a snapshot, and
                        // `shrink` then cut it off the file: a SIGBUS
                        // (tests/compact_readers.rs).
                        self.publish(&mut w, &map, &mut st);
                        // Alone, no snapshot open, the checkpoint names the
                        // new table: nothing can read the old one.
                        if !self.pinned() && self.scan_readers().snapshots.is_empty() {
                            self.faults.point(PausePoint::BeforeOldIndexFreed);
                            self.free_retired(&mut w, u64::MAX);
                            w.space_dirty = true;
                            self.publish(&mut w, &map, &mut st);
                        }
                    }
                    self.shrink(&mut w, &mut map, &mut st)
                })();
                let _ = self.lock(LockId::Open, LockMode::Shared, true);
                r?;
            }
            Ok((freed, st.file_len))
        })();
        self.end_writer();
        r
    }

    /// Moves the index table down into the lowest free range that holds
    /// it, if there is one below it (so the end of the file can be cut).
    /// A copy of the slots, word by word: same size, same positions. The
    /// old table stays as it was for snapshots that read it, retired by the
    /// next commit; recovery from an older checkpoint still finds it intact
    /// (retired space is reused only after a newer checkpoint).
    fn relocate_index(&self, w: &mut Writer, map: &Mapping, st: &mut State) -> Result<bool> {
        if st.old_table().is_some() {
            return Ok(false);
        }
        let t = st.table();
        let below = w
            .space
            .lowest_free(t.bytes())
            .is_some_and(|e| e.off < t.off);
        if !below || w.space.list.len() + 2 > SPACE_ENTRIES {
            return Ok(false);
        }
        let off = match self.take_reserved(&mut w.space, t.bytes(), None) {
            Ok(Some(off)) => off,
            Ok(None) => return Ok(false),
            // On a full disk the table stays where it is.
            Err(e) if is_enospc(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let new = Table { off, log2: t.log2 };
        for i in 0..t.cap() {
            new.store(map, i, t.load(map, i));
        }
        w.space
            .insert(t.off, t.bytes(), Use::Retired { seq: st.seq + 1 });
        st.index_off = off;
        w.space_dirty = true;
        Ok(true)
    }

    /// Cuts the free space at the end of the allocated area off the file
    /// (whole growth units). Only for a handle that holds the store alone
    /// (the `Open` lock, exclusively): no other process maps the file, and
    /// the snapshots of this process read nothing there (it is free). The
    /// checkpoint that no longer names the space comes first, then the cut.
    fn shrink(&self, w: &mut Writer, map: &mut Arc<Mapping>, st: &mut State) -> Result<()> {
        let end = w.space.trim_end(st.alloc_end);
        let new_len = end.div_ceil(MIN_GROWTH) * MIN_GROWTH;
        if new_len >= st.file_len {
            return Ok(());
        }
        st.alloc_end = end;
        w.space_dirty = true;
        self.checkpoint(w, map, st, false)?;
        st.file_len = new_len;
        w.tail.zeros_from = w.tail.zeros_from.min(new_len);
        w.tail.prepared_to = w.tail.prepared_to.min(new_len);
        self.publish(w, map, st);
        self.backend
            .shrink(new_len)
            .map_err(|e| self.io(format!("shrink the file to {new_len} bytes"), e))?;
        let m = Arc::new(
            self.backend
                .map(new_len)
                .map_err(|e| self.io("map the shrunk file", e))?,
        );
        self.map.store(m.clone());
        *map = m;
        Ok(())
    }

    /// Releases the cross-process writer lock (the mutex guard is dropped
    /// by the caller).
    pub(crate) fn end_writer(&self) {
        // Unlocking cannot fail for a lock we hold; if it did, closing the
        // file releases it.
        let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
    }

    /// On close: if this handle is the last one and can write, checkpoint
    /// and mark the store clean, so the next open neither replays the log
    /// nor scans the index. A store still clean (nothing was written since
    /// the last clean checkpoint) is left alone.
    pub(crate) fn close(&self) -> Result<()> {
        self.registry.close(&*self.backend, &self.map.load());
        if !self.writable() || self.offline.is_some() {
            return Ok(());
        }
        if !self.lock(LockId::Open, LockMode::Exclusive, false)? {
            return Ok(());
        }
        let result = match self.begin_writer(false, false)? {
            None => Ok(()),
            Some((w, _)) if w.state.meta_clean != 0 => {
                self.end_writer();
                Ok(())
            }
            Some((mut w, map)) => {
                let mut st = w.state;
                let r = self.checkpoint(&mut w, &map, &mut st, true);
                if r.is_ok() {
                    self.publish(&mut w, &map, &mut st);
                }
                self.end_writer();
                r
            }
        };
        let _ = self.lock(LockId::Open, LockMode::Shared, true);
        result
    }
}

/// The checkpoint copy of the extent table that `newest` does not name
/// (the one a new checkpoint may overwrite).
fn other_space_copy(newest: &Meta) -> u64 {
    if newest.space_at.get() == SPACE_CHECKPOINT[0] {
        SPACE_CHECKPOINT[1]
    } else {
        SPACE_CHECKPOINT[0]
    }
}

/// Where the checkpoint sweep's slice from `off` ends (at most `end`).
/// Dirty pages are in the index `tables` (log ranges were flushed by their
/// commits): a slice there is `CHECKPOINT_SLICE`; elsewhere it is 8 times
/// that but stops where a table starts (a slice that ran 7 MiB into a
/// table cost its commit 5-7 ms, 4-5x the median of a bulk load).
fn slice_end<'t>(off: u64, end: u64, tables: impl IntoIterator<Item = &'t Table>) -> u64 {
    let mut next = off + 8 * CHECKPOINT_SLICE;
    for t in tables {
        let range = t.off..t.off + t.bytes();
        if range.contains(&off) {
            next = off + CHECKPOINT_SLICE;
            break;
        }
        if range.start > off {
            next = next.min(range.start);
        }
    }
    next.min(end)
}

/// Size of a new log extent for a record of `need` bytes: a 128th of the
/// file, between 1 MiB and 1 GiB (whole MiB), so that the extent table
/// stays short however large the store grows.
pub(crate) fn extent_size(st: &State, need: u64) -> u64 {
    let scaled = (st.file_len / 128).clamp(LOG_EXTENT, 1 << 30);
    align_page(need).max(scaled.div_ceil(LOG_EXTENT) * LOG_EXTENT)
}

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

/// Records as a snapshot reads them: from its own mapping, or — for records
/// committed after the snapshot, past the end of its mapping when the file
/// grew — from the newest mapping. Only headers and key comparisons come
/// from the newer mapping, as copies; no borrow of it escapes.
pub(crate) struct SnapshotRecords<'a> {
    pub shared: &'a Shared,
    pub base: &'a Mapping,
}

impl<'a> SnapshotRecords<'a> {
    fn newer(&self, end: u64) -> Option<Arc<Mapping>> {
        let m = self.shared.map.load_full();
        if m.len() >= end {
            return Some(m);
        }
        let len = self.shared.backend.file_len().ok()?;
        self.shared.map_covering(len.max(end)).ok()
    }

    /// `rec`'s key: borrowed from the snapshot's mapping when it lies
    /// there (the common case, no allocation), else copied from the newer
    /// mapping. `None` if the file cannot be mapped that far.
    pub(crate) fn key(&self, rec: &Record) -> Option<Cow<'a, [u8]>> {
        let end = rec.key_off() + rec.key_len as u64;
        if end <= self.base.len() {
            return Some(Cow::Borrowed(rec.key(self.base)));
        }
        self.newer(end).map(|m| Cow::Owned(rec.key(&m).to_vec()))
    }
}

impl Records for SnapshotRecords<'_> {
    fn header(&self, off: u64) -> Result<Record, log::Invalid> {
        match log::read_header(self.base, off, self.base.len()) {
            Err(log::Invalid::OutOfBounds) => {
                let m = self
                    .newer(off.saturating_add(HEADER_SIZE as u64))
                    .ok_or(log::Invalid::Unmapped)?;
                log::read_header(&m, off, m.len())
            }
            r => r,
        }
    }

    fn key_is(&self, rec: &Record, key: &[u8]) -> bool {
        if rec.key_len != key.len() {
            return false;
        }
        let end = rec.key_off() + rec.key_len as u64;
        if end <= self.base.len() {
            return rec.key(self.base) == key;
        }
        self.newer(end).is_some_and(|m| rec.key(&m) == key)
    }
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

/// Rejects keys outside the 1 byte ..= 64 KiB range.
/// Whether `e` says the disk is full.
pub(crate) fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Rejects values over 1 GiB.
pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_slice_is_small_inside_a_table_and_stops_where_one_starts() {
        let mib = 1 << 20;
        let table = Table {
            off: 100 * mib,
            log2: 24, // 128 MiB
        };
        let tables = [table];
        // Far from any table: a large slice.
        assert_eq!(
            slice_end(10 * mib, u64::MAX, &tables),
            10 * mib + 8 * CHECKPOINT_SLICE
        );
        // A large slice would run into the table: it stops at its start.
        assert_eq!(slice_end(99 * mib, u64::MAX, &tables), 100 * mib);
        // Inside the table: a small one.
        assert_eq!(
            slice_end(150 * mib, u64::MAX, &tables),
            150 * mib + CHECKPOINT_SLICE
        );
        // Past it, large again; and never past the end.
        assert_eq!(
            slice_end(228 * mib, u64::MAX, &tables),
            228 * mib + 8 * CHECKPOINT_SLICE
        );
        assert_eq!(
            slice_end(99 * mib, 99 * mib + 4096, &tables),
            99 * mib + 4096
        );
    }
}

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

use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{BadSlot, Probe, Records, Table};
use crate::live::{self, State};
use crate::log::{self, Cursor, ExtentRules, Record, ScannedCommit};
use crate::options::{Durability, Options};
use crate::readers::{self, RegisterError, Registry, Slot};
use crate::storage::{Backend, LockId, LockMode, Mapping};
use bytemuck::Zeroable;

/// Take a checkpoint (flush the index, write a meta page) at the start of a
/// write transaction once this much log was committed since the last one.
/// It bounds how much log recovery replays after a crash.
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
/// The file grows by a quarter of its size, within these bounds, rounded up
/// to `MIN_GROWTH`: few growths (each costs an `fdatasync`), little slack.
const MIN_GROWTH: u64 = 1 << 20;
const MAX_GROWTH: u64 = 256 << 20;

/// What every handle of one store shares: the backend, the current mapping
/// and the writer's state.
pub(crate) struct Shared {
    pub backend: Box<dyn Backend>,
    pub path: PathBuf,
    map: ArcSwap<Mapping>,
    remap: Mutex<()>,
    pub seed: u64,
    pub durability: Durability,
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
        }
    }

    fn to_meta(self, seed: u64, generation: u64, clean: bool) -> Meta {
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
        if self.tail % 8 != 0
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
        Ok(())
    }
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
            offline: None,
            offline_incarnation: 0,
            joined: AtomicBool::new(false),
            registry: Registry::new(),
            writer: Mutex::new(Writer {
                state: from_meta,
                unsynced: Vec::new(),
                full_flush: false,
                poisoned: false,
            }),
            backend,
        };
        let live_state = if join {
            live::read(&shared.map.load())
        } else {
            None
        };
        if writable {
            let state = match live_state {
                Some(st) => st,
                None if locked_writer => {
                    let st = shared.recover(&meta)?;
                    live::init(&shared.map.load(), &st);
                    st
                }
                None => {
                    return Err(corrupted(&path, LIVE_OFFSET, "live header never settles"));
                }
            };
            shared
                .writer
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .state = state;
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
        Ok(shared)
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
        let m = Arc::new(
            self.backend
                .map(file_len)
                .map_err(|e| self.io("map the grown file", e))?,
        );
        self.map.store(m.clone());
        Ok(m)
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

    /// The oldest seq whose later changes the log still holds: this
    /// version never reclaims log space, so every commit since the first.
    pub(crate) fn oldest_history(&self) -> u64 {
        0
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
    /// fully verified there.
    pub(crate) fn resolve(
        &self,
        recs: &impl Records,
        base: &Mapping,
        head: Record,
        seq: u64,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let mut rec = head;
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
        if rec.key(base) != key {
            return Err(self.corrupted(rec.off, "version chain leads to another key's record"));
        }
        Ok(Some(rec))
    }

    /// The newest version of `key` in `table`, if any.
    pub(crate) fn head(
        &self,
        map: &Mapping,
        recs: &impl Records,
        table: Table,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let hash = hash_key(self.seed, key);
        match table
            .probe(map, recs, hash, key)
            .map_err(|b| self.bad_slot(b))?
        {
            Probe::Found { head, .. } => Ok(Some(head)),
            Probe::Vacant { .. } => Ok(None),
        }
    }

    /// The value of `key` in the snapshot `st` whose mapping is `map`.
    pub(crate) fn lookup<'m>(
        &self,
        map: &'m Mapping,
        st: &State,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        check_key(key)?;
        let recs = SnapshotRecords {
            shared: self,
            base: map,
        };
        let Some(head) = self.head(map, &recs, st.table(), key)? else {
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
        live::publish(map, &st);
        w.state = st;
        Ok(())
    }

    /// Hands out `size` bytes (page-aligned) at the end of the allocated
    /// space, growing the file first if needed. On `ENOSPC` nothing changed.
    pub(crate) fn allocate(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        size: u64,
    ) -> Result<u64> {
        let off = align_page(st.alloc_end);
        let end = off
            .checked_add(align_page(size))
            .filter(|&e| e <= MAX_FILE_LEN)
            .ok_or_else(|| Error::StoreFull {
                path: self.path.clone(),
            })?;
        if end > st.file_len {
            let step = (st.file_len / 4).clamp(MIN_GROWTH, MAX_GROWTH);
            let want = end.max(st.file_len + step);
            let new_len = want.div_ceil(MIN_GROWTH) * MIN_GROWTH;
            self.backend
                .grow(new_len)
                .map_err(|e| self.io(format!("grow the file to {new_len} bytes"), e))?;
            st.file_len = new_len;
            *map = self.map_covering(new_len)?;
        }
        st.alloc_end = end;
        Ok(off)
    }

    /// Makes room in the index for `extra` new keys, moving to a table
    /// twice as large (or more) when the load limit would be passed.
    ///
    /// The new table is built in fresh space and only then named in the
    /// state, so readers of the old one and a crash in between both see a
    /// complete table. The old table is left as it was (readers whose
    /// snapshot names it keep using it).
    pub(crate) fn ensure_index(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        extra: u64,
    ) -> Result<()> {
        let old = st.table();
        if old.fits(st.index_used, extra) {
            return Ok(());
        }
        let mut log2 = old.log2 + 1;
        while !(Table { off: 0, log2 }).fits(st.index_used, extra) {
            log2 += 1;
        }
        if log2 > 40 {
            return Err(Error::StoreFull {
                path: self.path.clone(),
            });
        }
        let bytes = 8u64 << log2;
        let off = self.allocate(map, st, bytes)?;
        // Allocated space may hold bytes of an aborted transaction.
        zero(map, off, bytes);
        let new = Table { off, log2 };
        for i in 0..old.cap() {
            let v = old.load(map, i);
            if v == SLOT_EMPTY {
                continue;
            }
            let rec = self.header(map, slot_offset(v), "index slot target")?;
            let hash = hash_key(self.seed, rec.key(map));
            if !new.insert_new(map, hash, v) {
                return Err(self.corrupted(old.off, "index has more keys than slots"));
            }
        }
        st.index_off = off;
        st.index_log2 = log2 as u64;
        Ok(())
    }

    /// Size of the version `rec` replaces if that version is a live value
    /// (0 if there was none or it was a delete).
    fn replaced_live_size(&self, map: &Mapping, rec: &Record) -> Result<u64> {
        if rec.prev == 0 {
            return Ok(0);
        }
        let prev = self.header(map, rec.prev, "previous version")?;
        if prev.seq >= rec.seq {
            return Err(self.corrupted(rec.off, "previous version is not older"));
        }
        Ok(if prev.kind == KIND_PUT {
            prev.size()
        } else {
            0
        })
    }

    /// Points the index at a commit's records (the newest record of each
    /// key it wrote) and updates the counters. Used by `commit` after the
    /// commit is durable, and by recovery for each replayed commit: the two
    /// cannot disagree about what a commit means.
    pub(crate) fn apply(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        finals: &[(u64, Record)],
    ) -> Result<()> {
        let extra = finals
            .iter()
            .filter(|(_, r)| r.kind == KIND_PUT && r.prev == 0)
            .count() as u64;
        self.ensure_index(map, st, extra)?;
        let table = st.table();
        for &(hash, rec) in finals {
            if rec.kind == KIND_DELETE && rec.prev == 0 {
                continue; // deleted a key that no commit had: nothing to index
            }
            let replaced = self.replaced_live_size(map, &rec)?;
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
            if rec.kind == KIND_PUT {
                st.key_count += (replaced == 0) as u64;
                st.live_bytes = (st.live_bytes + rec.size()).saturating_sub(replaced);
            } else if replaced > 0 {
                st.key_count = st.key_count.saturating_sub(1);
                st.live_bytes = st.live_bytes.saturating_sub(replaced);
            }
        }
        Ok(())
    }

    /// Applies a commit found in the log by recovery.
    fn apply_scanned(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        c: &ScannedCommit,
    ) -> Result<()> {
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut finals: Vec<(u64, Record)> = Vec::new();
        for rec in &c.records {
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
        self.apply(map, st, &finals)?;
        st.seq = c.seq;
        st.tail = c.after.pos;
        st.tail_end = c.after.end;
        st.log_bytes += c.bytes;
        Ok(())
    }

    /// Every complete commit in the log after `st`'s tail.
    fn scan_tail(&self, map: &Mapping, st: &State) -> Vec<ScannedCommit> {
        let t = st.table();
        let rules = ExtentRules {
            file_len: st.file_len.min(map.len()),
            forbidden: (t.off, t.off + t.bytes()),
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

    /// Recovery from the newest checkpoint (the meta page), when no live
    /// header can be trusted: after a reboot, a power loss, or when every
    /// handle of the store has closed. See docs/DESIGN.md, "Recovery".
    fn recover(&self, meta: &Meta) -> Result<State> {
        let mut map = self.map.load_full();
        let mut st = State::from_meta(meta, map.len());
        let commits = self.scan_tail(&map, &st);
        if !meta.is_clean() {
            let recovered: HashSet<u64> = commits
                .iter()
                .flat_map(|c| c.records.iter().map(|r| r.off))
                .collect();
            if self.has_lost_slot(&map, meta, &recovered) {
                return self.rebuild(meta);
            }
        }
        if !commits.is_empty() {
            self.settle(&mut self.writer(), &map, &mut st, &commits)?;
            self.apply_all(&mut map, &mut st, &commits)?;
        }
        Ok(st)
    }

    /// Makes scanned commits durable before the index points at them (they
    /// may exist only in the page cache of a process that died), and moves
    /// `alloc_end` past every extent they use so no allocation lands there.
    fn settle(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        commits: &[ScannedCommit],
    ) -> Result<()> {
        self.flush(w, map, 0, map.len())?;
        for c in commits {
            st.alloc_end = st.alloc_end.max(c.max_extent_end);
        }
        Ok(())
    }

    /// Applies settled commits in log order.
    fn apply_all(
        &self,
        map: &mut Arc<Mapping>,
        st: &mut State,
        commits: &[ScannedCommit],
    ) -> Result<()> {
        for c in commits {
            self.apply_scanned(map, st, c)?;
        }
        st.synced_tail = st.tail;
        Ok(())
    }

    /// Whether the checkpointed index has a slot naming a record that is
    /// neither from before the checkpoint nor among the recovered commits:
    /// an `Eventual` commit's slot that reached the disk while its record
    /// did not. Only such a slot's old value is unknowable.
    fn has_lost_slot(&self, map: &Mapping, meta: &Meta, recovered: &HashSet<u64>) -> bool {
        let table = Table {
            off: meta.index_offset.get(),
            log2: meta.index_log2.get(),
        };
        let (alloc_end, tail, tail_end) =
            (meta.alloc_end.get(), meta.tail.get(), meta.tail_end.get());
        (0..table.cap()).any(|i| {
            let v = table.load(map, i);
            if v == SLOT_EMPTY {
                return false;
            }
            let t = slot_offset(v);
            // Space handed out before the checkpoint, except the unwritten
            // rest of the tail extent, held only records from before it.
            let before_checkpoint =
                t >= DATA_START && t < alloc_end && !(tail..tail_end).contains(&t);
            !before_checkpoint && !recovered.contains(&t)
        })
    }

    /// Rebuilds the index from the whole log into a fresh table, then
    /// checkpoints. The checkpointed table is not touched, so a crash in
    /// the middle leaves the store as it was and recovery starts over.
    fn rebuild(&self, meta: &Meta) -> Result<State> {
        let mut map = self.map.load_full();
        let first = State {
            seq: 0,
            tail: DATA_START,
            tail_end: DATA_START + LOG_EXTENT,
            alloc_end: meta.alloc_end.get(),
            index_off: meta.index_offset.get(),
            index_log2: meta.index_log2.get() as u64,
            file_len: map.len(),
            meta_gen: meta.generation.get(),
            ..State::default()
        };
        // Every commit of the log, held in memory (this path is rare: a
        // power cut that lost Eventual commits whose slots were written).
        let commits = self.scan_tail(&map, &first);
        let mut st = first;
        let mut w = self.writer();
        self.settle(&mut w, &map, &mut st, &commits)?;
        // A fresh, empty table sized for the keys the checkpoint knew.
        st.index_used = 0;
        let want = meta.key_count.get().max(1);
        let mut log2 = MIN_INDEX_LOG2;
        while !(Table { off: 0, log2 }).fits(0, want) && log2 < 40 {
            log2 += 1;
        }
        st.index_off = self.allocate(&mut map, &mut st, 8u64 << log2)?;
        st.index_log2 = log2 as u64;
        zero(&map, st.index_off, 8u64 << log2);
        self.apply_all(&mut map, &mut st, &commits)?;
        self.checkpoint(&mut w, &map, &mut st, false)?;
        Ok(st)
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
        self.settle(w, map, st, &commits)?;
        self.apply_all(map, st, &commits)?;
        live::publish(map, st);
        Ok(())
    }

    /// Writes a meta page describing `st` after flushing everything it
    /// refers to. Two flushes: data and index first, then the meta page, so
    /// a meta page never names bytes that are not on disk.
    pub(crate) fn checkpoint(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        clean: bool,
    ) -> Result<()> {
        self.flush(w, map, 0, map.len())?;
        let generation = st.meta_gen + 1;
        let meta = st.to_meta(self.seed, generation, clean);
        let at = META_OFFSETS[(generation % 2) as usize];
        map.write_words(at, bytemuck::bytes_of(&meta));
        self.flush(w, map, at, PAGE_SIZE)?;
        st.meta_gen = generation;
        st.meta_clean = clean as u64;
        st.ckpt_log_bytes = st.log_bytes;
        st.synced_tail = st.tail;
        w.unsynced.clear();
        w.full_flush = false;
        Ok(())
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
        if w.poisoned {
            return Err(Error::Poisoned {
                path: self.path.clone(),
            });
        }
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
        }
        // A checkpoint is found by generation: trust the pages, not the header.
        let meta = pick_meta(&self.path, &map)?;
        st.meta_gen = meta.generation.get();
        st.meta_clean = meta.is_clean() as u64;
        self.adopt_orphan_commits(w, &mut map, &mut st)?;
        // Checkpoint here, before the transaction writes anything: the
        // meta page then never names space the transaction hands out.
        let due = st.log_bytes - st.ckpt_log_bytes.min(st.log_bytes) >= CHECKPOINT_LOG_BYTES;
        if for_txn && due {
            self.checkpoint(w, &map, &mut st, false)?;
            live::publish(&map, &st);
        }
        w.state = st;
        Ok(map)
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
                    live::publish(&map, &st);
                    w.state = st;
                }
                self.end_writer();
                r
            }
        };
        let _ = self.lock(LockId::Open, LockMode::Shared, true);
        result
    }
}

/// Length of a new store: the fixed pages, the first extent, the first
/// index table, rounded up to the growth unit.
const CREATE_LEN: u64 =
    (DATA_START + LOG_EXTENT + (8 << MIN_INDEX_LOG2)).div_ceil(MIN_GROWTH) * MIN_GROWTH;

fn is_all_zero(map: &Mapping) -> bool {
    (0..map.len() / 8).all(|i| map.load(i * 8, std::sync::atomic::Ordering::Relaxed) == 0)
}

/// Zeroes `[off, off + len)` of space the writer just allocated (rule 3 of
/// the storage module: nobody else can see it yet).
fn zero(map: &Mapping, off: u64, len: u64) {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut p = off;
    while p < off + len {
        let n = (off + len - p).min(zeros.len() as u64);
        map.write(p, &zeros[..n as usize]);
        p += n;
    }
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
        rec.key_len == key.len() && self.key(rec).is_some_and(|k| *k == *key)
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
    let meta = st.to_meta(backend.new_hash_seed(), 1, true);
    map.write_words(META_OFFSETS[1], bytemuck::bytes_of(&meta));
    backend
        .flush(&map, 0, len)
        .map_err(|e| io_error(path, "flush the new file", e))?;
    Ok(len)
}

/// Rejects keys outside the 1 byte ..= 64 KiB range.
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

//! Read and write transactions.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, MutexGuard};

use hashbrown::HashTable;

use crate::changes::Changes;
use crate::engine::{
    check_key, check_value, extent_size, Shared, SnapshotRecords, Writer, PREFETCH_AHEAD,
};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::Records;
use crate::live::State;
use crate::log::{self, Cursor};
use crate::options::Durability;
use crate::readers::Slot;
use crate::space::{Space, Use};
use crate::storage::Mapping;

/// A snapshot: one committed state of the store, for as long as it lives.
///
/// Reads take no lock and make no system call; [`get`](Self::get) returns a
/// slice of the mapped file itself (no copy, no allocation), valid while the
/// transaction lives. Commits made after
/// [`Store::begin_read`](crate::Store::begin_read) — by this process or
/// any other — are not visible; begin a new `ReadTxn` to see them.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
/// store.put(b"a", b"1")?;
/// let snap = store.begin_read()?;
/// store.put(b"a", b"2")?;
/// assert_eq!(snap.get(b"a")?, Some(&b"1"[..])); // still the old state
/// assert_eq!(store.begin_read()?.get(b"a")?, Some(&b"2"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReadTxn<'s> {
    shared: &'s Shared,
    pub(crate) map: Arc<Mapping>,
    pub(crate) st: State,
    /// Its entry in the reader table (none for a handle that cannot
    /// register; it holds the pin lock instead).
    slot: Option<Slot>,
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.end_snapshot(slot);
        }
    }
}

impl<'s> ReadTxn<'s> {
    pub(crate) fn new(shared: &'s Shared) -> Result<ReadTxn<'s>> {
        let (st, map, slot) = shared.begin_snapshot()?;
        Ok(ReadTxn {
            shared,
            map,
            st,
            slot,
        })
    }

    /// The value of `key` in this snapshot, borrowed from the mapped file.
    ///
    /// # Errors
    /// `EmptyKey`/`KeyTooLarge` for an invalid key; `Corrupted` if the
    /// index or the record fails its checks (the record's CRC is verified
    /// on every read).
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.shared.lookup(&self.map, &self.st, key)
    }

    /// Whether `key` has a value in this snapshot.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Number of keys in this snapshot.
    pub fn len(&self) -> u64 {
        self.st.key_count
    }

    /// Whether this snapshot has no keys.
    pub fn is_empty(&self) -> bool {
        self.st.key_count == 0
    }

    /// The sequence number of the commit this snapshot shows (0: the empty
    /// store before any commit).
    pub fn seq(&self) -> u64 {
        self.st.seq
    }

    /// What the commits after `seq`, up to this snapshot's, changed: one
    /// `(seq, key, Some(value))` per key a commit put and `(seq, key, None)`
    /// per key it deleted, commits in order, and within a commit each key
    /// once (its final write) in the order it was first written. Borrowed
    /// from the mapped file, like [`get`](Self::get). Empty when `seq` is
    /// not older than this snapshot.
    ///
    /// Built for following a store: remember the last seq seen, wait with
    /// [`Store::wait_for_commit`](crate::Store::wait_for_commit), then list
    /// the changes since.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// let seen = store.begin_read()?.seq();
    /// store.put(b"a", b"1")?;
    /// store.delete(b"a")?;
    /// let snap = store.begin_read()?;
    /// let changes = snap.changes_since(seen)?.collect::<Result<Vec<_>, _>>()?;
    /// assert_eq!(
    ///     changes,
    ///     vec![(seen + 1, &b"a"[..], Some(&b"1"[..])), (seen + 2, &b"a"[..], None)]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `HistoryReclaimed` if the log no longer holds those commits;
    /// `Corrupted` if a commit or record on the way fails its checks (the
    /// iterator yields that error and stops).
    pub fn changes_since(&self, seq: u64) -> Result<Changes<'_>> {
        Changes::new(self.shared, &self.map, &self.st, seq)
    }

    /// Every key and value of the snapshot, in no particular order.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"x", b"1")?;
    /// store.put(b"y", b"2")?;
    /// let snap = store.begin_read()?;
    /// let mut all = snap.iter().collect::<Result<Vec<_>, _>>()?;
    /// all.sort();
    /// assert_eq!(all, vec![(&b"x"[..], &b"1"[..]), (&b"y"[..], &b"2"[..])]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            txn: self,
            slot: 0,
            old: false,
        }
    }

    /// The entry whose newest record is at `head_off`, as this snapshot
    /// sees it. From the old table of a moving index (`old`), only a key
    /// the new table does not have (else it was listed from there).
    fn entry<'m>(
        &self,
        map: &'m Mapping,
        head_off: u64,
        old: bool,
    ) -> Result<Option<(&'m [u8], &'m [u8])>> {
        let recs = SnapshotRecords {
            shared: self.shared,
            base: map,
        };
        let head = recs.header(head_off).map_err(|e| {
            self.shared
                .corrupted(head_off, format!("index slot target: {e}"))
        })?;
        // The head may lie past this snapshot's mapping (the file grew).
        let key = recs.key(&head).ok_or_else(|| {
            self.shared.corrupted(
                head.off,
                "record lies past the mapping and remapping failed",
            )
        })?;
        if old {
            let hash = hash_key(self.shared.seed, &key);
            if let crate::index::Probe::Found { .. } = self
                .st
                .table()
                .probe(map, &recs, hash, &key)
                .map_err(|b| self.shared.bad_slot(b))?
            {
                return Ok(None);
            }
        }
        Ok(self
            .shared
            .resolve(&recs, map, head, self.st.seq, &key)?
            .map(|r| (r.key(map), r.value(map))))
    }
}

/// Iterator over a snapshot's entries; see [`ReadTxn::iter`]. A damaged
/// entry yields an `Err` and iteration goes on with the next one.
pub struct Iter<'t> {
    txn: &'t ReadTxn<'t>,
    slot: u64,
    /// Walking the old table of an index that is moving (keys not yet in
    /// the new one).
    old: bool,
}

impl<'t> Iterator for Iter<'t> {
    type Item = Result<(&'t [u8], &'t [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let txn = self.txn;
        let map = &*txn.map;
        loop {
            let table = if self.old {
                txn.st.old_table()?
            } else {
                txn.st.table()
            };
            while self.slot < table.cap() {
                // The record of a slot a little ahead: slots are read in
                // order, their records are scattered, so overlap the misses.
                table.prefetch_record(map, self.slot + 2 * PREFETCH_AHEAD as u64);
                let v = table.load(map, self.slot);
                self.slot += 1;
                if v == SLOT_EMPTY {
                    continue;
                }
                let found = txn.entry(map, slot_offset(v), self.old);
                match found {
                    Ok(Some(kv)) => return Some(Ok(kv)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.old {
                return None;
            }
            self.old = true;
            self.slot = 0;
        }
    }
}

/// Log bytes the transaction wrote that are not in the file yet: one run
/// of consecutive records from `off`. A run reaches the file with one
/// `Backend::write` (a `pwrite`) when it is full, when the log moves to
/// another extent, and at commit — not through the map, so no log page is
/// ever mapped writable (docs/DESIGN.md, "Writing the log").
struct Staged {
    off: u64,
    buf: Vec<u8>,
    /// Some of the transaction's bytes reached the file.
    wrote: bool,
}

/// A run is written out once it holds this much; a record larger than
/// this is written on its own.
const STAGE_MAX: usize = 1 << 20;

impl Staged {
    /// `len` bytes at `off` as the transaction wrote them: from the run
    /// if it holds them, else from the map. (Records never straddle the
    /// run's start.)
    fn bytes<'a>(&'a self, map: &'a Mapping, off: u64, len: u64) -> Option<&'a [u8]> {
        let end = self.off + self.buf.len() as u64;
        if off >= self.off && off < end {
            let at = (off - self.off) as usize;
            return self.buf.get(at..at.checked_add(len as usize)?);
        }
        map.bytes(off, len)
    }

    /// Whether the transaction's own record `p` is for `key`.
    fn key_is(&self, map: &Mapping, p: &Pending, key: &[u8]) -> bool {
        self.bytes(map, p.off + HEADER_SIZE as u64, u64::from(p.key_len)) == Some(key)
    }
}

/// A key written by the transaction: its newest record so far, with the
/// header fields commit needs (it applies them without reading the log
/// back: a pass over 140 MB of records for their headers was ~15% of a
/// 1M-key transaction). `WriteTxn::pending` keeps them in the order of
/// each key's first record.
#[derive(Clone, Copy)]
struct Pending {
    hash: u64,
    off: u64,
    prev: u64,
    key_len: u32,
    val_len: u32,
    crc: u32,
    kind: u8,
    flags: u8,
}

impl Pending {
    /// The record's header as [`log::read_header`] would return it.
    fn record(&self, seq: u64) -> log::Record {
        log::Record {
            off: self.off,
            kind: self.kind,
            seq,
            prev: self.prev,
            key_len: self.key_len as usize,
            val_len: self.val_len as usize,
            crc: self.crc,
            flags: self.flags,
        }
    }

    /// A put of a key no commit has (counted in `fresh_keys`: the keys
    /// this commit adds to the index).
    fn fresh(&self) -> bool {
        self.kind == KIND_PUT && self.prev == 0 && self.flags & FLAG_MOVED == 0
    }
}

/// An entry of the transaction's table of keys: the high half of the
/// key's hash and the key's index in `pending`. Eight bytes: with whole
/// `Pending`s in the table, a transaction of 1M keys wrote a 32 MiB table
/// at random, and had to sort it by first write at commit.
#[derive(Clone, Copy)]
struct KeyRef {
    hash_hi: u32,
    index: u32,
}

/// The hash the key table files a `KeyRef` under, from its high half alone
/// (the table rehashes from what it holds).
fn key_table_hash(hash_hi: u32) -> u64 {
    (u64::from(hash_hi) << 32) | u64::from(hash_hi)
}

/// Whether a key table entry is `key` (whose hash's high half is `hi`):
/// the transaction's newest record of it is `key`'s.
fn is_key<'a>(
    map: &'a Mapping,
    staged: &'a Staged,
    pending: &'a [Pending],
    hi: u32,
    key: &'a [u8],
) -> impl Fn(&KeyRef) -> bool + 'a {
    move |k| k.hash_hi == hi && staged.key_is(map, &pending[k.index as usize], key)
}

/// How compaction picks the extent to empty.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Choose {
    /// The sealed extent with the most dead bytes, at least this fraction.
    Dead(f64),
    /// The highest sealed extent above free space that could hold a log
    /// extent (moving live data down, so the end of the file can go).
    Relocate,
}

/// What one compaction step did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Step {
    pub bytes: u64,
    pub records: u64,
    /// An extent was being emptied (false: nothing to do).
    pub active: bool,
}

/// The smallest free range the log fills as an extent of its own.
const MIN_HOLE: u64 = 64 << 10;

/// Automatic compaction waits until sealed extents hold this much.
const AUTO_COMPACT_MIN: u64 = 2 << 20;

/// An automatic compaction step walks and copies at most this many times
/// the bytes of the commit it rides in (docs/DESIGN.md, "Compaction"): the
/// log then shrinks whenever the victim is more than a quarter dead.
const AUTO_COMPACT_FACTOR: u64 = 4;
/// ... and at least this much, so that a commit of one small put still
/// passes a few records.
const AUTO_COMPACT_FLOOR: u64 = 1 << 10;

/// The one write transaction of the store (across threads and processes).
///
/// Puts and deletes go into the log, beyond the committed tail, where no
/// reader looks (staged in memory in runs of up to 1 MiB, each written to
/// the file with one `pwrite`); [`get`](Self::get) sees them.
/// [`commit`](Self::commit) makes them visible to everyone at once;
/// dropping the transaction without committing discards them.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = mapkv::Store::open(dir.path().join("bank.kv"))?;
/// let mut tx = store.begin_write()?;
/// tx.put(b"alice", b"70")?;
/// tx.put(b"bob", b"30")?;
/// assert_eq!(tx.get(b"bob")?, Some(&b"30"[..]));
/// let seq = tx.commit()?; // both or neither, durably
/// assert_eq!(store.begin_read()?.seq(), seq);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WriteTxn<'s> {
    shared: &'s Shared,
    w: MutexGuard<'s, Writer>,
    map: Arc<Mapping>,
    /// The committed state the transaction builds on. Space it allocates
    /// moves `alloc_end`/`file_len` forward here.
    base: State,
    /// Where the next record goes.
    cur: Cursor,
    txn_start: u64,
    /// The keys written, in the order of their first record.
    pending: Vec<Pending>,
    /// Finds a key in `pending`, once built: while every key put so far
    /// is greater than the one before (`ascending`), no key can repeat and
    /// a key above the greatest is not in `pending`, so a load in key
    /// order never builds it (its inserts miss the cache at random: a
    /// fifth of a 1M-key load's time).
    key_table: RefCell<HashTable<KeyRef>>,
    /// The greatest key so far, while `pending` holds its keys in strictly
    /// ascending order; `None` once a key came out of order (from then on
    /// every key is in `key_table`).
    ascending: Option<Vec<u8>>,
    /// While `ascending`: how many keys of `pending` are in `key_table`
    /// (a lookup of a key not above the greatest files them).
    filed: Cell<usize>,
    n_records: u64,
    /// Keys whose newest record here is a put of a key no commit has.
    fresh_keys: u64,
    chain: crc32fast::Hasher,
    bytes: u64,
    /// Log ranges this transaction wrote, to flush at commit.
    dirty: Vec<(u64, u64)>,
    /// Records not written to the file yet.
    staged: Staged,
    durability: Durability,
    done: bool,
    /// The writer's extent table (and its dirty flag) before this
    /// transaction first changed it: restored if it does not commit.
    space_undo: Option<(Space, bool)>,
    /// Extents this transaction retires (compaction emptied them).
    retired: Vec<(u64, u64)>,
    /// Bytes of records compaction copied in this transaction.
    moved: u64,
    /// Skip automatic compaction at commit (a compaction step of its own).
    pub(crate) no_auto: bool,
    /// Step 1 ran: the index move this commit starts, if any (its new
    /// table's offset).
    index_prepared: bool,
    index_move: Option<(log::IndexMove, u64)>,
}

impl<'s> WriteTxn<'s> {
    pub(crate) fn begin(shared: &'s Shared, wait: bool) -> Result<Option<WriteTxn<'s>>> {
        let Some((w, map)) = shared.begin_writer(wait, true)? else {
            return Ok(None);
        };
        let base = w.state;
        Ok(Some(WriteTxn {
            shared,
            w,
            map,
            base,
            cur: Cursor {
                pos: base.tail,
                end: base.tail_end,
            },
            txn_start: base.tail,
            pending: Vec::new(),
            key_table: RefCell::new(HashTable::new()),
            ascending: Some(Vec::new()),
            filed: Cell::new(0),
            n_records: 0,
            fresh_keys: 0,
            chain: crc32fast::Hasher::new(),
            bytes: 0,
            dirty: Vec::new(),
            staged: Staged {
                off: base.tail,
                buf: Vec::new(),
                wrote: false,
            },
            durability: shared.durability,
            done: false,
            space_undo: None,
            retired: Vec::new(),
            moved: 0,
            no_auto: false,
            index_prepared: false,
            index_move: None,
        }))
    }

    /// Sets the durability of this transaction's commit (the store's
    /// default comes from [`Options::durability`](crate::Options::durability)).
    pub fn set_durability(&mut self, d: Durability) {
        self.durability = d;
    }

    fn seq(&self) -> u64 {
        self.base.seq + 1
    }

    /// While keys ascend, whether `key` is above every key so far (and so
    /// not in `pending`). Keys are at least a byte: above the empty start.
    fn above_all(&self, key: &[u8]) -> bool {
        self.ascending
            .as_ref()
            .is_some_and(|last| key > last.as_slice())
    }

    /// The transaction's newest record of `key`, if it wrote one.
    fn pending_of(&self, hash: u64, key: &[u8]) -> Option<Pending> {
        if self.above_all(key) {
            return None;
        }
        if self.ascending.is_some() {
            self.build_key_table();
        }
        let hi = (hash >> 32) as u32;
        let eq = is_key(&self.map, &self.staged, &self.pending, hi, key);
        self.key_table
            .borrow()
            .find(key_table_hash(hi), eq)
            .map(|k| self.pending[k.index as usize])
    }

    /// Files the keys of `pending` not yet in the key table (while
    /// `ascending` holds, all of them are distinct).
    fn build_key_table(&self) {
        let from = self.filed.get();
        if from == self.pending.len() {
            return;
        }
        let mut table = self.key_table.borrow_mut();
        table.reserve(self.pending.len() - from, |k| key_table_hash(k.hash_hi));
        for (index, p) in self.pending.iter().enumerate().skip(from) {
            let hash_hi = (p.hash >> 32) as u32;
            // Below u32::MAX: `append_flags` checks.
            let k = KeyRef {
                hash_hi,
                index: index as u32,
            };
            table.insert_unique(key_table_hash(hash_hi), k, |k| key_table_hash(k.hash_hi));
        }
        self.filed.set(self.pending.len());
    }

    /// Writes a record at `at` (reserved) with header `h` (its CRC still
    /// to be computed: `log::unsealed_header`), staged or on its own if
    /// large, and counts it in the transaction's run; returns its CRC. A
    /// staged record's CRC is computed over its bytes in the run.
    /// A failed write poisons the handle, as a failed flush does: the
    /// transaction's bytes in the file are then unknown.
    fn write_record(
        &mut self,
        at: u64,
        mut h: RecordHeader,
        key: &[u8],
        val: &[u8],
    ) -> Result<u32> {
        let size = record_size(key.len(), val.len());
        let crc = if self.stage(at, size)? {
            let start = self.staged.buf.len();
            log::encode_record(&mut self.staged.buf, &h, key, val);
            let rec = &mut self.staged.buf[start..];
            let crc = record_crc_contiguous(&rec[..HEADER_SIZE + key.len() + val.len()]);
            rec[..4].copy_from_slice(&crc.to_le_bytes());
            crc
        } else {
            let crc = record_crc(&h, key, val);
            h.crc = Le32::new(crc);
            self.write_large(at, &h, key, val)?;
            crc
        };
        self.wrote(at, size, crc);
        Ok(crc)
    }

    /// Writes a keyless record of this commit (next, index, retire,
    /// commit) with `body` as its value, like [`write_record`](Self::write_record).
    fn write_body_record(&mut self, at: u64, kind: u8, body: &[u8]) -> Result<u32> {
        let h = log::unsealed_header(kind, 0, self.seq(), 0, &[], body);
        self.write_record(at, h, &[], body)
    }

    /// Makes the staged run end at `at`, writing it out first if it ends
    /// elsewhere or has no room; whether a record of `size` bytes goes
    /// into it (larger ones are written from where they are).
    fn stage(&mut self, at: u64, size: u64) -> Result<bool> {
        let run_end = self.staged.off + self.staged.buf.len() as u64;
        let size = size as usize;
        if !self.staged.buf.is_empty()
            && (run_end != at || self.staged.buf.len() + size > STAGE_MAX)
        {
            let run_start = self.staged.off;
            self.write_staged()?;
            // A run written before the commit (full, or cut short where
            // the log moves to another extent) starts on its way to the
            // disk now: a large transaction's bytes then go out while it
            // writes the rest, not all in the commit's msync. Whole pages
            // only: the last one is written again with the next run.
            let end = run_end & !(PAGE_SIZE - 1);
            if end > run_start {
                self.shared
                    .backend
                    .start_writeback(run_start, end - run_start);
            }
        }
        if self.staged.buf.is_empty() {
            self.staged.off = at;
        }
        Ok(size <= STAGE_MAX)
    }

    /// Writes a record too large to stage: a large value is written from
    /// where it is, not copied first.
    fn write_large(&mut self, at: u64, h: &RecordHeader, key: &[u8], val: &[u8]) -> Result<()> {
        let size = record_size(key.len(), val.len()) as usize;
        let mut head = Vec::with_capacity(HEADER_SIZE + key.len());
        log::encode_record(&mut head, h, key, &[]);
        head.truncate(HEADER_SIZE + key.len());
        let pad = size - head.len() - val.len();
        let parts: [(u64, &[u8]); 3] = [
            (at, &head),
            (at + head.len() as u64, val),
            (at + (size - pad) as u64, &[0u8; 8][..pad]),
        ];
        for (off, bytes) in parts {
            self.write_out(off, bytes)?;
        }
        Ok(())
    }

    /// Writes the staged run to the file.
    fn write_staged(&mut self) -> Result<()> {
        if self.staged.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.staged.buf);
        let r = self.write_out(self.staged.off, &buf);
        self.staged.off += buf.len() as u64;
        self.staged.buf = buf;
        self.staged.buf.clear();
        r
    }

    fn write_out(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.staged.wrote = true;
        self.shared
            .backend
            .write(&self.map, off, bytes)
            .map_err(|e| {
                self.w.poisoned = true;
                self.shared
                    .io(format!("write {} log bytes at {off}", bytes.len()), e)
            })?;
        self.map.populate(off, bytes.len() as u64);
        Ok(())
    }

    /// The value of `key` as this transaction sees it: its own writes over
    /// the newest commit.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        check_key(key)?;
        let hash = hash_key(self.shared.seed, key);
        match self.pending_of(hash, key) {
            Some(p) => {
                let rec = p.record(self.seq());
                if rec.kind != KIND_PUT {
                    return Ok(None);
                }
                let value = self
                    .staged
                    .bytes(&self.map, rec.val_off(), rec.val_len as u64);
                Ok(Some(value.ok_or_else(|| {
                    self.shared
                        .corrupted(rec.off, "own record lies past the map")
                })?))
            }
            None => self.shared.lookup(&self.map, &self.base, key),
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// `EmptyKey`, `KeyTooLarge`, `ValueTooLarge`; `Io` (`ENOSPC`) if the
    /// file cannot grow — the transaction is unchanged and can go on;
    /// `Unsupported` past 4,294,967,294 distinct keys in one transaction.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        let hash = hash_key(self.shared.seed, key);
        let pending = self.pending_of(hash, key);
        let prev = self
            .committed_version(pending, key)?
            .map_or(0, |(off, _)| off);
        self.append(KIND_PUT, hash, prev, key, value)
    }

    /// Removes `key`. Returns whether it had a value.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let hash = hash_key(self.shared.seed, key);
        let pending = self.pending_of(hash, key);
        let committed = self.committed_version(pending, key)?;
        let exists = match pending {
            Some(p) => p.kind == KIND_PUT,
            None => committed.is_some_and(|(_, live)| live),
        };
        if !exists {
            return Ok(false);
        }
        let prev = committed.map_or(0, |(off, _)| off);
        self.append(KIND_DELETE, hash, prev, key, &[])?;
        Ok(true)
    }

    /// The newest committed record of `key` (offset, and whether it is a
    /// value rather than a delete). A record this transaction already wrote
    /// for the key (`pending`) names it as `prev`, which saves a probe.
    fn committed_version(
        &self,
        pending: Option<Pending>,
        key: &[u8],
    ) -> Result<Option<(u64, bool)>> {
        let off = match pending {
            Some(p) => p.prev,
            None => match self.shared.head(&self.map, &*self.map, &self.base, key)? {
                Some(head) => return Ok(Some((head.off, head.kind == KIND_PUT))),
                None => 0,
            },
        };
        if off == 0 {
            return Ok(None);
        }
        let rec = self.shared.header(&self.map, off, "previous version")?;
        Ok(Some((off, rec.kind == KIND_PUT)))
    }

    fn append(&mut self, kind: u8, hash: u64, prev: u64, key: &[u8], value: &[u8]) -> Result<()> {
        self.append_flags(kind, 0, hash, prev, key, value)
    }

    fn append_flags(
        &mut self,
        kind: u8,
        flags: u8,
        hash: u64,
        prev: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if self.pending.len() >= u32::MAX as usize {
            return Err(Error::Unsupported {
                what: "a transaction of more than 4,294,967,294 keys",
            });
        }
        let size = record_size(key.len(), value.len());
        let pos = self.reserve(size)?;
        let h = log::unsealed_header(kind, flags, self.seq(), prev, key, value);
        let crc = self.write_record(pos, h, key, value)?;
        let new = Pending {
            hash,
            off: pos,
            prev,
            // At most 65,536 and 2^30: `put` checked.
            key_len: key.len() as u32,
            val_len: value.len() as u32,
            crc,
            kind,
            flags,
        };
        if self.above_all(key) {
            if let Some(last) = &mut self.ascending {
                last.clear();
                last.extend_from_slice(key);
            }
            self.pending.push(new);
            self.fresh_keys += new.fresh() as u64;
            return Ok(());
        }
        if self.ascending.is_some() {
            self.build_key_table();
            self.ascending = None;
        }
        let hi = (hash >> 32) as u32;
        let eq = is_key(&self.map, &self.staged, &self.pending, hi, key);
        let mut table = self.key_table.borrow_mut();
        let entry = table.entry(key_table_hash(hi), eq, |k| key_table_hash(k.hash_hi));
        match entry {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let p = &mut self.pending[o.get().index as usize];
                self.fresh_keys = self.fresh_keys - p.fresh() as u64 + new.fresh() as u64;
                *p = new;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                // Below u32::MAX: checked above.
                let index = self.pending.len() as u32;
                v.insert(KeyRef { hash_hi: hi, index });
                self.pending.push(new);
                self.fresh_keys += new.fresh() as u64;
            }
        }
        Ok(())
    }

    fn wrote(&mut self, pos: u64, size: u64, crc: u32) {
        self.chain.update(&crc.to_le_bytes());
        self.n_records += 1;
        self.bytes += size;
        match self.dirty.last_mut() {
            Some((_, end)) if *end == pos => *end = pos + size,
            _ => self.dirty.push((pos, pos + size)),
        }
    }

    /// Room for a record of `size` bytes at the tail. When the extent is
    /// full, a next record (always kept room for) moves the log to a new
    /// extent. On `ENOSPC` nothing was written.
    fn reserve(&mut self, size: u64) -> Result<u64> {
        if self.cur.pos + size + NEXT_RECORD_SIZE > self.cur.end {
            // A free range lower in the file that holds the record (and at
            // least 64 KiB) is used whole even if smaller than an extent:
            // holes left by reuse fill up, and data drifts to the start.
            let need = align_page(size + NEXT_RECORD_SIZE);
            let len = match self.w.space.lowest_free(need.max(MIN_HOLE)) {
                Some(e) => e.len.min(extent_size(&self.base, need)),
                None => extent_size(&self.base, need),
            };
            self.next_extent(len)?;
        }
        let pos = self.cur.pos;
        self.cur.pos += size;
        Ok(pos)
    }

    /// Ends the current extent with a next record naming a new one of
    /// `len` bytes (the lowest free range that fits, or new space).
    fn next_extent(&mut self, len: u64) -> Result<()> {
        let fresh = Use::Log {
            live: 0,
            sealed: false,
            last_seq: 0,
        };
        let mut space = std::mem::take(self.space_mut());
        let got = self.shared.allocate(
            &mut self.map,
            &mut self.base,
            &mut space,
            &mut self.w.tail,
            len,
            Some(fresh),
        );
        // The extent the log leaves is sealed: a compaction candidate once
        // this commit is older than the one choosing it.
        if got.is_ok() {
            space.seal(self.cur.pos, self.seq());
        }
        self.w.space = space;
        let off = got?;
        let body = NextBody {
            offset: Le64::new(off),
            len: Le64::new(len),
        };
        let at = self.cur.pos;
        self.write_body_record(at, KIND_NEXT, bytemuck::bytes_of(&body))?;
        self.cur = Cursor {
            pos: off,
            end: off + len,
        };
        Ok(())
    }

    /// Makes room in the index for the keys this transaction adds (commit
    /// step 1): if the index must move to a new table, allocates and zeroes
    /// it and logs an index record (the move starts when the commit is
    /// applied). Runs before any compaction step of the transaction: an
    /// extent must not be retired while an old table naming its records is
    /// frozen. Once per transaction.
    fn prepare_index(&mut self) -> Result<()> {
        if self.index_prepared {
            return Ok(());
        }
        if let Some(mv) = self.shared.index_move_needed(&self.base, self.fresh_keys)? {
            let mut space = std::mem::take(self.space_mut());
            let got = self.shared.index_table(
                &mut self.map,
                &mut self.base,
                &mut space,
                &mut self.w.tail,
                mv.log2,
            );
            self.w.space = space;
            let off = got?;
            self.log_index_move(mv, off)?;
        }
        self.index_prepared = true;
        Ok(())
    }

    /// Appends the index record of a move this commit starts (or, with
    /// `log2 == 0`, only finishes).
    fn log_index_move(&mut self, mv: log::IndexMove, off: u64) -> Result<()> {
        let body = NextBody {
            offset: Le64::new(mv.log2 as u64),
            len: Le64::new(mv.finish as u64),
        };
        let at = self.reserve(NEXT_RECORD_SIZE)?;
        self.write_body_record(at, KIND_INDEX, bytemuck::bytes_of(&body))?;
        self.index_move = Some((mv, off));
        Ok(())
    }

    /// The writer's extent table, saved first so that an abort restores it.
    fn space_mut(&mut self) -> &mut Space {
        if self.space_undo.is_none() {
            self.space_undo = Some((self.w.space.clone(), self.w.space_dirty));
        }
        self.w.space_dirty = true;
        &mut self.w.space
    }

    /// Puts the writer's extent table back as it was before this
    /// transaction changed it (it does not commit).
    fn undo_space(&mut self) {
        if let Some((space, dirty)) = self.space_undo.take() {
            self.w.space = space;
            self.w.space_dirty = dirty;
        }
    }

    /// One step of compaction, inside this transaction: copies up to
    /// `budget` bytes of the records that are the newest version of their
    /// key out of the extent being emptied (choosing the sealed extent
    /// with the most dead bytes, at least `min_dead` of it, if none is),
    /// and retires the extent once all are copied. A key this transaction
    /// wrote is not copied (its new record supersedes). Returns the bytes
    /// copied and whether an extent was being emptied at all.
    ///
    /// A record that does not read back ends the step with an error
    /// (`strict`), or takes the extent out of the candidates.
    pub(crate) fn compact_step(
        &mut self,
        budget: u64,
        choose: Choose,
        strict: bool,
    ) -> Result<Step> {
        let mut step = Step::default();
        self.prepare_index()?;
        if self.base.old_index_log2 != 0 && self.index_move.is_none() && strict {
            // `compact()` does not wait for the move: this commit ends it.
            let finish = log::IndexMove {
                log2: 0,
                finish: true,
            };
            self.log_index_move(finish, 0)?;
            step.active = true;
            return Ok(step);
        }
        if self.index_move.is_some() {
            // This commit starts a move (a grown or, after mass deletes, a
            // cleaner table). `compact()` commits it and finishes the move
            // with its next step; dropping it instead made `compact()` stop
            // at once, with nothing compacted, on every store whose deletes
            // call for a cleaner table.
            step.active = strict;
            return Ok(step);
        }
        if self.base.old_index_log2 != 0 {
            return Ok(step); // not while the index moves (DESIGN.md)
        }
        let seq = self.seq();
        if self.base.victim_off == 0 {
            let chosen = match choose {
                Choose::Dead(min_dead) => self.w.space.victim(min_dead, seq),
                Choose::Relocate => self
                    .w
                    .space
                    .relocation_victim(seq, extent_size(&self.base, 0)),
            };
            let Some(e) = chosen else {
                return Ok(step);
            };
            self.base.victim_off = e.off;
            self.base.victim_pos = e.off;
        }
        let victim = self.base.victim_off;
        let e = match self.w.space.find(victim).map(|i| self.w.space.list[i]) {
            Some(e) if e.off == victim && matches!(e.use_, Use::Log { sealed: true, .. }) => e,
            _ => {
                self.base.victim_off = 0;
                return Ok(step);
            }
        };
        step.active = true;
        let map = self.map.clone();
        let mut pos = self.base.victim_pos.clamp(e.off, e.end());
        let mut buf = Vec::new();
        // The index slots of the next few records are prefetched (`lead`
        // records from `pos` to `ahead`): each record's check is a random
        // slot read, and overlapping those misses is most of the speed.
        let table = self.base.table();
        let (mut ahead, mut lead) = (pos, 0);
        // `compact()` (strict) bounds a step by what it copies. A step
        // inside a user's commit also counts what it walks: each record
        // passed is a header read and an index probe, and a wholly dead
        // extent would otherwise be walked to its end in one commit.
        let mut walked = 0;
        while step.bytes + if strict { 0 } else { walked } < budget {
            ahead = ahead.max(pos);
            while lead < PREFETCH_AHEAD {
                // (A next record or an unreadable one: the loop below decides.)
                let Ok(r) = log::read_header(&map, ahead, e.end()) else {
                    break;
                };
                if r.kind == KIND_NEXT {
                    break;
                }
                if matches!(r.kind, KIND_PUT | KIND_DELETE) {
                    table.prefetch(&map, hash_key(self.shared.seed, r.key(&map)));
                }
                ahead += r.size();
                lead += 1;
            }
            lead = lead.saturating_sub(1);
            let rec = match log::read_record(&map, pos, e.end()) {
                Ok(r) if r.seq < seq => r,
                Ok(_) | Err(_) => {
                    let e2 = self
                        .shared
                        .corrupted(pos, "compaction: unreadable record in a sealed log extent");
                    if strict {
                        return Err(e2);
                    }
                    // Leave the extent alone from now on; verify reports it.
                    if let Some(Use::Log { sealed, .. }) = self
                        .space_mut()
                        .find(victim)
                        .map(|i| &mut self.w.space.list[i].use_)
                    {
                        *sealed = false;
                    }
                    self.base.victim_off = 0;
                    return Ok(step);
                }
            };
            if rec.kind == KIND_NEXT {
                let body = NextBody {
                    offset: Le64::new(e.off),
                    len: Le64::new(e.len),
                };
                let at = self.reserve(NEXT_RECORD_SIZE)?;
                self.write_body_record(at, KIND_RETIRE, bytemuck::bytes_of(&body))?;
                self.retired.push((e.off, e.len));
                return Ok(step);
            }
            if matches!(rec.kind, KIND_PUT | KIND_DELETE) {
                let key = rec.key(&map);
                let hash = hash_key(self.shared.seed, key);
                let newest = self.pending_of(hash, key).is_none()
                    && self
                        .shared
                        .head(&map, &*map, &self.base, key)?
                        .is_some_and(|h| h.off == rec.off);
                if newest {
                    buf.clear();
                    buf.extend_from_slice(key);
                    buf.extend_from_slice(rec.value(&map));
                    let (k, v) = buf.split_at(rec.key_len);
                    self.append_flags(rec.kind, FLAG_MOVED, hash, rec.off, k, v)?;
                    step.bytes += rec.size();
                    step.records += 1;
                    self.moved += rec.size();
                }
            }
            pos += rec.size();
            walked += rec.size();
            self.base.victim_pos = pos;
        }
        Ok(step)
    }

    /// Moves the log on to the lowest free range that can hold a log
    /// extent, if that lies below the extent the log is in (compaction,
    /// so the extent it leaves can be relocated). Returns whether it did.
    pub(crate) fn jump_down(&mut self) -> Result<bool> {
        let len = extent_size(&self.base, 0);
        let tail_extent = self
            .w
            .space
            .find(self.cur.pos)
            .map_or(0, |i| self.w.space.list[i].off);
        let lower = self
            .w
            .space
            .lowest_free(len)
            .is_some_and(|e| e.off < tail_extent);
        if !lower {
            return Ok(false);
        }
        self.next_extent(len)?;
        Ok(true)
    }

    /// Makes the transaction's writes visible to every reader at once and,
    /// with [`Durability::Immediate`], durable before returning. Returns
    /// the new commit's sequence number (the current one if nothing was
    /// written).
    ///
    /// The steps and what a crash between any two leaves behind are in
    /// `docs/DESIGN.md`, "Commit".
    ///
    /// # Errors
    /// `Io` if the file cannot grow (`ENOSPC`: nothing was committed) or a
    /// flush fails. After a failed flush the commit did not happen in this
    /// process's view, but it may reach the disk anyway (the kernel may
    /// have written some pages): it is indeterminate after a crash, and this
    /// handle refuses further writes (`Poisoned`) until reopened. `Poisoned`
    /// at once if writing this transaction's log bytes failed earlier (the
    /// `put` or `delete` that hit it returned the `Io` error): nothing of
    /// it is committed.
    pub fn commit(mut self) -> Result<u64> {
        // A write of this transaction may have failed: its bytes in the
        // file are then unknown, so it must not commit.
        self.shared.refuse_poisoned(&self.w)?;
        if self.n_records > 0 && self.shared.auto_compact && !self.no_auto {
            self.auto_compact()?;
        }
        if self.n_records == 0 {
            self.undo_space();
            // Nothing to write, but the caller learns seq `base.seq` is
            // durable: flush what `Eventual` commits left, if anything.
            if self.durability == Durability::Immediate {
                self.shared.sync_writer(&mut self.w, &self.map)?;
            }
            self.finish();
            return Ok(self.base.seq);
        }
        // Keys in the order of their first record in the log: recovery
        // replays a commit in that order, and must make the same probe
        // decisions on a table where only some of these slot writes reached
        // the disk (docs/DESIGN.md, "Why replay finds the same slots").
        let seq = self.seq();
        let finals: Vec<(u64, log::Record)> = self
            .pending
            .iter()
            .map(|p| (p.hash, p.record(seq)))
            .collect();
        // 0. After a clean close the meta page says the index on disk is
        //    the checkpoint's; say otherwise before any slot changes.
        if self.base.meta_clean != 0 {
            self.shared
                .mark_dirty(&mut self.w, &self.map, &mut self.base)?;
        }
        // 1. Room in the index, before anything is committed: a full disk
        //    fails here and leaves the store as it was. (Done already if
        //    compaction ran: it must know whether the index moves.)
        self.prepare_index()?;
        // 2. The commit record closes the run of records.
        let pos = self.reserve(COMMIT_RECORD_SIZE)?;
        let body = CommitBody {
            txn_start: Le64::new(self.txn_start),
            n_records: Le64::new(self.n_records),
            chain_crc: Le32::new(self.chain.clone().finalize()),
            _pad: Le32::new(0),
        };
        self.write_body_record(pos, KIND_COMMIT, bytemuck::bytes_of(&body))?;
        self.write_staged()?;
        let mut st = self.base;
        st.seq = self.seq();
        st.tail = self.cur.pos;
        st.tail_end = self.cur.end;
        st.log_bytes += self.bytes;
        // 3. Durable: one msync of the ranges written (plus any earlier
        //    Eventual commits, which must not be lost behind this one).
        if self.durability == Durability::Immediate {
            let dirty = std::mem::take(&mut self.dirty);
            if let Err(e) = self
                .shared
                .flush_unsynced(&mut self.w, &self.map, &mut st, &dirty)
            {
                // Keep this process (and the next writer) from adopting a
                // commit whose durability is unknown.
                let _ = self
                    .shared
                    .backend
                    .write(&self.map, pos, &[0u8; HEADER_SIZE]);
                return Err(e);
            }
        } else {
            let dirty = std::mem::take(&mut self.dirty);
            self.w.unsynced.extend(dirty);
        }
        // 4. Index: point each key at its new record (atomic stores).
        let mut map = self.map.clone();
        let mut space = std::mem::take(self.space_mut());
        let seq = st.seq;
        let applied =
            self.shared
                .apply(&mut map, &mut st, &mut space, &finals, seq, self.index_move);
        self.shared.retire(&mut st, &mut space, &self.retired, seq);
        st.moved_total += self.moved;
        self.w.space = space;
        if let Err(e) = applied {
            // Only a damaged index gets here. The commit is in the log and
            // may be durable: it must not be cleaned up like an abort (the
            // next writer replays it from the log).
            self.w.poisoned = true;
            self.finish();
            return Err(e);
        }
        // 5. The space the log and the index's next table will take, a
        //    slice ahead.
        let w = &mut *self.w;
        self.shared.prepare_ahead(
            &mut map,
            &mut st,
            &w.space,
            &mut w.tail,
            self.bytes,
            self.fresh_keys,
        );
        // 6. Publish: readers that begin from now on see the commit.
        self.shared.publish(&mut self.w, &map, &mut st);
        self.finish();
        Ok(st.seq)
    }

    /// Automatic compaction (docs/DESIGN.md, "Compaction"): when dead
    /// bytes pass the store's threshold, each commit walks and copies up to
    /// four times its own bytes (at least 1 KiB) of the deadest extent.
    fn auto_compact(&mut self) -> Result<()> {
        let t = self.w.space.totals();
        let dead = t.sealed_bytes - t.sealed_live;
        let working = self.base.victim_off != 0;
        let due = t.sealed_bytes >= AUTO_COMPACT_MIN
            && dead as f64 >= self.shared.compact_threshold * t.sealed_bytes as f64;
        if working || due {
            let budget = (AUTO_COMPACT_FACTOR * self.bytes).max(AUTO_COMPACT_FLOOR);
            let choose = Choose::Dead(self.shared.compact_threshold);
            self.compact_step(budget, choose, false)?;
        }
        Ok(())
    }

    /// Discards the transaction's writes (as dropping it does).
    pub fn abort(self) {}

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.end_writer();
        }
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.undo_space();
            if self.staged.wrote {
                // Make the first record unreadable, so no one scanning the
                // tail reads through the discarded run. (A run never
                // written out left the file as it was.)
                let zeros = [0u8; HEADER_SIZE];
                let _ = self.shared.backend.write(&self.map, self.txn_start, &zeros);
            }
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::format::hash_key;
    use crate::index::Quick;
    use crate::Store;

    use super::ReadTxn;

    /// How `Table::quick_lookup` answered a snapshot's reads.
    #[derive(Default, Debug)]
    struct Answers {
        value: u64,
        deleted: u64,
        vacant: u64,
        checked: u64,
    }

    /// Reads `keys` through the quick path and through the checked one,
    /// and fails on any answer of the quick path that the checked path
    /// does not give.
    fn compare(r: &ReadTxn, keys: impl Iterator<Item = Vec<u8>>) -> Answers {
        let mut a = Answers::default();
        for key in keys {
            let hash = hash_key(r.shared.seed, &key);
            let quick = r.st.table().quick_lookup(&r.map, hash, &key, r.st.seq);
            let checked = r.shared.lookup_checked(&r.map, &r.st, &key).unwrap();
            assert_eq!(r.get(&key).unwrap(), checked, "get of {key:?}");
            match quick {
                Quick::Value(v) => {
                    a.value += 1;
                    assert_eq!(checked, Some(v), "quick value of {key:?}");
                }
                Quick::Deleted => {
                    a.deleted += 1;
                    assert_eq!(checked, None, "quick delete of {key:?}");
                }
                Quick::Vacant => {
                    a.vacant += 1;
                    if r.st.old_table().is_none() {
                        assert_eq!(checked, None, "quick vacancy of {key:?}");
                    }
                }
                Quick::Checked => a.checked += 1,
            }
        }
        a
    }

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i:06}").into_bytes()
    }

    #[test]
    fn the_quick_lookup_answers_the_common_case_as_the_checked_path_does() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("q.kv")).unwrap();
        const N: u32 = 24_000;
        let mut moving = 0;
        for c in 0..N / 1000 {
            let mut w = s.begin_write().unwrap();
            for i in c * 1000..(c + 1) * 1000 {
                w.put(&key(i), &i.to_le_bytes()).unwrap();
            }
            w.commit().unwrap();
            let r = s.begin_read().unwrap();
            // Present keys, absent ones past them; while the index moves,
            // a vacancy in the new table is not an answer.
            let a = compare(&r, (0..(c + 1) * 1000 + 500).map(key));
            // A slot of another key with the same 24-bit tag (the seed is
            // random) sends a lookup to the checked path: rarely.
            assert!(a.checked <= 2, "{a:?}");
            if r.st.old_table().is_some() {
                // Keys not moved yet are vacant in the new table.
                moving += 1;
                assert!(a.value > 0 && a.vacant > 500, "{a:?}");
            } else {
                let present = u64::from((c + 1) * 1000);
                assert!(a.value + a.checked >= present, "{a:?}");
                assert!(a.vacant + a.checked >= 500, "{a:?}");
            }
        }
        assert!(moving > 0, "no snapshot saw the index move");

        // Overwrite the even keys, delete every third, under a snapshot.
        let before = s.begin_read().unwrap();
        let mut w = s.begin_write().unwrap();
        for i in (0..N).step_by(2) {
            w.put(&key(i), b"new").unwrap();
        }
        for i in (0..N).step_by(3) {
            w.delete(&key(i)).unwrap();
        }
        w.commit().unwrap();

        let r = s.begin_read().unwrap();
        let a = compare(&r, (0..N).map(key));
        assert!(a.checked <= 2, "{a:?}");
        assert!(a.deleted + a.checked >= u64::from(N.div_ceil(3)), "{a:?}");
        assert_eq!(a.value + a.deleted + a.checked, u64::from(N), "{a:?}");

        // The snapshot from before: a changed key's head is too new for
        // it, and only the checked path walks to the older version.
        let a = compare(&before, (0..N).map(key));
        assert!(a.checked >= u64::from(N / 2), "{a:?}");
        assert_eq!(before.get(&key(0)).unwrap(), Some(&0u32.to_le_bytes()[..]));
        assert_eq!(r.get(&key(0)).unwrap(), None);
        assert_eq!(r.get(&key(2)).unwrap(), Some(&b"new"[..]));

        // Keys on both sides of the short-key copy (16 bytes), and a
        // long one.
        let long = |len: usize| -> Vec<u8> { (0..len).map(|j| (j * 7 + len) as u8).collect() };
        let lens = (1..=40).chain([1000]);
        let mut w = s.begin_write().unwrap();
        for len in lens.clone() {
            w.put(&long(len), &len.to_le_bytes()).unwrap();
        }
        w.commit().unwrap();
        let r = s.begin_read().unwrap();
        let a = compare(&r, lens.clone().map(long));
        assert!(a.value + a.checked == 41 && a.checked <= 2, "{a:?}");
        for len in lens {
            assert_eq!(r.get(&long(len)).unwrap(), Some(&len.to_le_bytes()[..]));
        }
    }
}

//! The write transaction's life: begin, get, put, delete, commit or abort.

use super::keyset::{OwnFinals, Pending};
use super::stage::Staged;
use super::{check_key, check_value, WriteTxn};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::faults::PausePoint;
use crate::format::*;
use crate::index::Fenced;
use crate::log::{self, Cursor};
use crate::options::Durability;
use hashbrown::HashTable;
use std::cell::{Cell, RefCell};

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
            killed: 0,
            dirty: Vec::new(),
            staged: Staged {
                off: base.tail,
                buf: Vec::new(),
                wrote: false,
                fence: base.fence(),
            },
            durability: shared.durability,
            done: false,
            space_undo: None,
            retired: Vec::new(),
            forgotten: Vec::new(),
            moved: 0,
            no_auto: false,
            index_prepared: false,
            index_move: None,
        }))
    }

    /// Sets the durability of this transaction's commit (the store's
    /// default comes from [`Options::durability`](crate::Options::durability)).
    /// A store in memory ([`Store::durability`](crate::Store::durability)
    /// is [`Durability::Memory`]) has no other: asking changes nothing.
    pub fn set_durability(&mut self, d: Durability) {
        if self.shared.durability != Durability::Memory {
            self.durability = d;
        }
    }

    pub(super) fn seq(&self) -> u64 {
        self.base.seq + 1
    }

    /// The value of `key` as this transaction sees it: its own writes over
    /// the newest commit.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<&[u8]>> {
        self.get_bytes(key.as_ref())
    }

    fn get_bytes(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        check_key(key)?;
        let hash = hash_key(self.shared.seed, key);
        match self.pending_of(hash, key) {
            Some(p) => {
                if p.kind != KIND_PUT {
                    return Ok(None);
                }
                let val_off = p.off + HEADER_SIZE as u64 + u64::from(p.key_len);
                let value = self.staged.bytes(&self.map, val_off, u64::from(p.val_len));
                Ok(Some(value.ok_or_else(|| {
                    self.shared
                        .corrupted(val_off, "own record lies past the map")
                })?))
            }
            None => self
                .shared
                .lookup(&self.map, &self.base, &self.staged.fence, key),
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// `EmptyKey`, `KeyTooLarge`, `ValueTooLarge`; `Io` (`ENOSPC`) if the
    /// file cannot grow — the transaction is unchanged and can go on;
    /// `Unsupported` past 4,294,967,294 distinct keys in one transaction.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put_bytes(key.as_ref(), value.as_ref())
    }

    fn put_bytes(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_aligned(key, value, 1)
    }

    /// Sets `key` to the bytes of `value`, placed so that
    /// [`ReadTxn::get_pod`](crate::ReadTxn::get_pod) can borrow them in
    /// place as a `&T`: the value starts at a multiple of `T`'s alignment
    /// in the file, and its copies (compaction, backup, salvage) keep it.
    /// A struct that lives in the mapped file and is read where it lies.
    ///
    /// ```
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    /// #[repr(C)]
    /// struct Counter { hits: u64, misses: u64 }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// let mut tx = store.begin_write()?;
    /// tx.put_pod(b"ctr0", &Counter { hits: 3, misses: 1 })?;
    /// tx.commit()?;
    /// let snap = store.begin_read()?;
    /// let c: &Counter = snap.get_pod(b"ctr0")?.unwrap(); // no copy
    /// assert_eq!((c.hits, c.misses), (3, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`put`](Self::put); `Unsupported` if `T` is aligned to more
    /// than 128 bytes, or to 4 or more with a key whose length is not a
    /// multiple of 4 (records start at multiples of 4, and a value right
    /// after its key).
    pub fn put_pod<T: bytemuck::NoUninit>(
        &mut self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<()> {
        let key = key.as_ref();
        let align = std::mem::align_of::<T>() as u64;
        if align > MAX_VALUE_ALIGN {
            return Err(Error::Unsupported {
                what: "put_pod of a type aligned to more than 128 bytes",
            });
        }
        if key.len() as u64 % align.min(RECORD_ALIGN) != 0 {
            return Err(Error::Unsupported {
                what: "put_pod of a type aligned to 2 or more bytes with a key whose length \
                       is not a multiple of that alignment (or of 4)",
            });
        }
        self.put_aligned(key, bytemuck::bytes_of(value), align)
    }

    /// A put whose value starts at a multiple of `align` (1: anywhere).
    /// An alignment the key's length cannot give (flags read from a
    /// damaged file, copied by backup or salvage) is dropped: the value is
    /// then written anywhere, and `get_pod` refuses it.
    pub(crate) fn put_aligned(&mut self, key: &[u8], value: &[u8], align: u64) -> Result<()> {
        let fits = align.is_power_of_two()
            && align <= MAX_VALUE_ALIGN
            && key.len() as u64 % align.min(RECORD_ALIGN) == 0;
        let align = if fits { align } else { 1 };
        check_key(key)?;
        check_value(value)?;
        let hash = hash_key(self.shared.seed, key);
        let pending = self.pending_of(hash, key);
        let committed = self.committed_version(pending, key)?;
        self.count_killed(pending, committed, 0);
        let prev = committed.map_or(0, |r| r.off);
        if align > 1 {
            self.append_aligned(0, hash, prev, key, value, align)
        } else {
            self.append(KIND_PUT, hash, prev, key, value)
        }
    }

    /// Removes `key`. Returns whether it had a value.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.delete_bytes(key.as_ref())
    }

    fn delete_bytes(&mut self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let hash = hash_key(self.shared.seed, key);
        let pending = self.pending_of(hash, key);
        let committed = self.committed_version(pending, key)?;
        let exists = match pending {
            Some(p) => p.kind == KIND_PUT,
            None => committed.is_some_and(|r| r.kind == KIND_PUT),
        };
        if !exists {
            return Ok(false);
        }
        // The delete record itself is dead too once compaction forgets it.
        self.count_killed(pending, committed, record_size(key.len(), 0));
        let prev = committed.map_or(0, |r| r.off);
        self.append(KIND_DELETE, hash, prev, key, &[])?;
        Ok(true)
    }

    /// Counts the committed value a first write of a key in this
    /// transaction makes dead (automatic compaction's budget).
    fn count_killed(&mut self, pending: Option<Pending>, committed: Option<log::Record>, own: u64) {
        if pending.is_none() {
            if let Some(r) = committed.filter(|r| r.kind == KIND_PUT) {
                self.killed += r.size() + own;
            }
        }
    }

    /// The newest committed record of `key` (offset, and whether it is a
    /// value rather than a delete). A record this transaction already wrote
    /// for the key (`pending`) names it as `prev`, which saves a probe.
    /// The committed log as this transaction reads it: behind its base
    /// state's fence.
    fn fenced(&self) -> Fenced<'_> {
        Fenced {
            map: &self.map,
            fence: self.staged.fence,
        }
    }

    fn committed_version(
        &self,
        pending: Option<Pending>,
        key: &[u8],
    ) -> Result<Option<log::Record>> {
        let off = match pending {
            Some(p) => p.prev,
            None => return self.shared.head(&self.map, &self.fenced(), &self.base, key),
        };
        if off == 0 {
            return Ok(None);
        }
        let rec = self
            .shared
            .header(&self.map, &self.staged.fence, off, "previous version")?;
        Ok(Some(rec))
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
        let fence = self.staged.fence;
        // Checked here, before anything is committed; `apply` derives the
        // records again as it goes.
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.record(seq, &fence).is_none())
        {
            return Err(self.shared.corrupted(p.off, "own record outside the log"));
        }
        // 0. After a clean close the meta page says the index on disk is
        //    the checkpoint's; say otherwise, on disk, before any slot
        //    changes.
        self.shared
            .meta_dirty_on_disk(&mut self.w, &self.map, &mut self.base)?;
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
            if self.no_auto {
                for &(a, b) in &dirty {
                    self.shared.backend.start_writeback(a, b - a);
                }
            }
            self.w.unsynced.extend(dirty);
        }
        // 4. Index: point each key at its new record (atomic stores).
        let mut map = self.map.clone();
        let mut space = std::mem::take(self.space_mut());
        let seq = st.seq;
        let applied = self
            .shared
            .apply(
                &mut map,
                &mut st,
                &mut space,
                &OwnFinals {
                    pending: &self.pending,
                    seq,
                    fence,
                },
                seq,
                self.index_move,
            )
            .and_then(|()| self.shared.forget(&map, &st, &self.forgotten, seq));
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
        self.shared.prepare_reuse(
            &map,
            &st,
            &w.space,
            &mut w.tail,
            &mut w.to_punch,
            self.bytes,
        );
        // 6. Publish: readers that begin from now on see the commit.
        self.shared.faults.hot_point(PausePoint::BeforePublish);
        self.shared.publish(&mut self.w, &map, &mut st);
        self.finish();
        Ok(st.seq)
    }

    /// Discards the transaction's writes (as dropping it does).
    pub fn abort(self) {}

    pub(super) fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.end_writer();
        }
    }
}

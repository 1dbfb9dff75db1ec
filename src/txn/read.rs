//! Read transactions: snapshot reads and iteration.

use super::check_key;
use super::snapshot::Handle;
use crate::changes::Changes;
use crate::engine::{Shared, SnapshotRecords, PREFETCH_AHEAD};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{Find, Records};
use crate::live::State;
use crate::readers::Slot;
use crate::storage::{Fence, Mapping};
use std::sync::Arc;

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
    shared: Handle<'s>,
    pub(crate) map: Arc<Mapping>,
    pub(crate) st: State,
    /// `st.fence()`, computed once: every read checks offsets against it.
    pub(crate) fence: Fence,
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
        ReadTxn::with(Handle::Borrowed(shared))
    }

    pub(super) fn with(shared: Handle<'s>) -> Result<ReadTxn<'s>> {
        let (st, map, slot) = shared.begin_snapshot()?;
        Ok(ReadTxn {
            shared,
            map,
            fence: st.fence(),
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
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<&[u8]>> {
        self.get_bytes(key.as_ref())
    }

    fn get_bytes(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        check_key(key)?;
        self.shared.lookup(&self.map, &self.st, &self.fence, key)
    }

    /// The values of many keys at once, in the order asked (`None` for an
    /// absent key): what a loop of [`get`](Self::get)s returns, faster.
    /// A random get waits on two memory misses one after the other (its
    /// index slot, then its record); here the misses of many keys
    /// overlap — every key's hash first, slots loaded a few keys ahead,
    /// records a few keys behind them — as RocksDB's `MultiGet` does.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"a", b"1")?;
    /// store.put(b"c", b"3")?;
    /// let snap = store.begin_read()?;
    /// let got = snap.get_many(&[&b"a"[..], b"b", b"c"])?;
    /// assert_eq!(got, vec![Some(&b"1"[..]), None, Some(&b"3"[..])]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get), for the first key that fails.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<&[u8]>>> {
        let mut out = Vec::with_capacity(keys.len());
        self.get_many_into(keys, &mut out)?;
        Ok(out)
    }

    /// [`get_many`](Self::get_many) into a caller's vector (cleared
    /// first), so a loop of batches allocates once.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"a", b"1")?;
    /// let snap = store.begin_read()?;
    /// let mut out = Vec::new();
    /// for batch in [[&b"a"[..], b"x"], [b"x", b"a"]] {
    ///     snap.get_many_into(&batch, &mut out)?;
    ///     assert_eq!(out.iter().flatten().count(), 1);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get), for the first key that fails; `out` then
    /// holds the values before it.
    pub fn get_many_into<'a, K: AsRef<[u8]>>(
        &'a self,
        keys: &[K],
        out: &mut Vec<Option<&'a [u8]>>,
    ) -> Result<()> {
        // Slots are loaded `2 * AHEAD` keys ahead of the key answered, and
        // records `AHEAD` keys ahead: enough misses in flight to fill the
        // memory system, few enough to stay in the cache.
        const AHEAD: usize = 8;
        out.clear();
        let map = &*self.map;
        let table = self.st.table();
        let mut hashes = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.as_ref();
            check_key(key)?;
            hashes.push(hash_key(self.shared.seed, key));
        }
        let mut finds = vec![Find::Checked; keys.len()];
        let find = |i: usize, finds: &mut [Find]| {
            let f = table.quick_find(map, hashes[i]);
            if let Find::Record(off) = f {
                map.prefetch(off);
            }
            finds[i] = f;
        };
        for &h in hashes.iter().take(2 * AHEAD) {
            table.prefetch(map, h);
        }
        for i in 0..AHEAD.min(keys.len()) {
            find(i, &mut finds);
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(&h) = hashes.get(i + 2 * AHEAD) {
                table.prefetch(map, h);
            }
            if i + AHEAD < keys.len() {
                find(i + AHEAD, &mut finds);
            }
            let key = key.as_ref();
            let quick = finds[i].quick(map, &self.fence, key, self.st.seq);
            out.push(self.shared.answer(quick, map, &self.st, &self.fence, key)?);
        }
        Ok(())
    }

    /// The value of `key` as a `&T`, borrowed in place from the mapped
    /// file: no copy. For values written with
    /// [`WriteTxn::put_pod`](crate::WriteTxn::put_pod) (example there).
    ///
    /// # Errors
    /// As [`get`](Self::get); `ValueLayout` if the value is not
    /// `size_of::<T>()` bytes or does not start at a multiple of
    /// `align_of::<T>()` (a value written with `put`, or for another type).
    /// Never undefined behaviour: the checks are `bytemuck`'s.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// let mut tx = store.begin_write()?;
    /// tx.put_pod(b"hits", &41u64)?;
    /// tx.commit()?;
    /// let snap = store.begin_read()?;
    /// let hits: &u64 = snap.get_pod(b"hits")?.unwrap();
    /// assert_eq!(*hits, 41);
    /// assert!(snap.get_pod::<u32>(b"hits").is_err()); // 8 bytes, not 4
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_pod<T: bytemuck::AnyBitPattern>(&self, key: impl AsRef<[u8]>) -> Result<Option<&T>> {
        let Some(v) = self.get(key)? else {
            return Ok(None);
        };
        bytemuck::try_from_bytes(v)
            .map(Some)
            .map_err(|_| layout::<T>(v))
    }

    /// The value of `key` copied out as a `T`, wherever it lies (any
    /// alignment; the size must be `T`'s).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"odd key", 7u32.to_ne_bytes())?; // written with put: any alignment
    /// let n: u32 = store.begin_read()?.get_pod_copy(b"odd key")?.unwrap();
    /// assert_eq!(n, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get); `ValueLayout` if the value is not
    /// `size_of::<T>()` bytes.
    pub fn get_pod_copy<T: bytemuck::AnyBitPattern>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>> {
        let Some(v) = self.get(key)? else {
            return Ok(None);
        };
        bytemuck::try_pod_read_unaligned(v)
            .map(Some)
            .map_err(|_| layout::<T>(v))
    }

    /// Whether `key` has a value in this snapshot.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
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
        Changes::new(&self.shared, &self.map, &self.st, seq)
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
            old: self.st.old_table().is_some(),
        }
    }

    /// The entry whose newest record is at `head_off`, as this snapshot
    /// sees it. From the old table of a moving index (`old`), only a key
    /// the new table does not have (else it was listed from there).
    fn entry<'m>(&self, map: &'m Mapping, head_off: u64, old: bool) -> Result<Option<Entry<'m>>> {
        let recs = SnapshotRecords {
            shared: &self.shared,
            base: map,
            fence: self.fence,
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
        // During an index move the old table is walked first, whole: a
        // commit writes only the new table, and migration copies slots
        // into it without emptying the old, so the old table's keys stay
        // put while this walk runs. The new table's do not (a slot the
        // walk has passed can be filled by migration behind it), so its
        // walk skips the keys the old one has, which were listed already.
        let head = if old {
            // Newest version first: a commit updates the new table only.
            self.shared
                .head(map, &recs, &self.st, &key)?
                .unwrap_or(head)
        } else if let Some(old_table) = self.st.old_table() {
            let hash = hash_key(self.shared.seed, &key);
            if let crate::index::Probe::Found { .. } = old_table
                .probe(map, &recs, hash, &key)
                .map_err(|b| self.shared.bad_slot(b))?
            {
                return Ok(None);
            }
            head
        } else {
            head
        };
        Ok(self
            .shared
            .resolve(&recs, map, head, self.st.seq, &key)?
            .map(|r| (r.key(map), r.value(map), value_align(r.flags))))
    }
}

/// A key, its value, and the alignment the value was written at (1:
/// none).
pub(crate) type Entry<'m> = (&'m [u8], &'m [u8], u64);

/// Why `v` cannot be read in place as a `T`.
fn layout<T>(v: &[u8]) -> Error {
    let align = std::mem::align_of::<T>();
    Error::ValueLayout {
        len: v.len(),
        aligned: (v.as_ptr() as usize) % align == 0,
        size: std::mem::size_of::<T>(),
        align,
    }
}

/// Iterator over a snapshot's entries; see [`ReadTxn::iter`]. A damaged
/// entry yields an `Err` and iteration goes on with the next one.
pub struct Iter<'t> {
    txn: &'t ReadTxn<'t>,
    slot: u64,
    /// Walking the old table of an index that is moving (first, then the
    /// new one; see `ReadTxn::entry`).
    old: bool,
}

impl<'t> Iterator for Iter<'t> {
    type Item = Result<(&'t [u8], &'t [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_aligned()
            .map(|r| r.map(|(key, value, _)| (key, value)))
    }
}

impl<'t> Iter<'t> {
    /// The next entry with the alignment its value was written at
    /// (`put_pod`; 1 for none), for copies that keep it (backup).
    pub(crate) fn next_aligned(&mut self) -> Option<Result<Entry<'t>>> {
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
                if !slot_names_record(v) {
                    continue; // empty or forgotten
                }
                let found = txn.entry(map, slot_offset(v), self.old);
                match found {
                    Ok(Some(kv)) => return Some(Ok(kv)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if !self.old {
                return None;
            }
            self.old = false;
            self.slot = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::format::hash_key;
    use crate::index::Quick;
    use crate::sim::SimDisk;
    use crate::Options;

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
        let keys: Vec<Vec<u8>> = keys.collect();
        // The batched path answers as the single one, key by key.
        let many = r.get_many(&keys).unwrap();
        assert_eq!(many.len(), keys.len());
        for (key, got) in keys.iter().zip(&many) {
            assert_eq!(*got, r.get(key).unwrap(), "get_many of {key:?}");
        }
        for key in keys {
            let hash = hash_key(r.shared.seed, &key);
            let quick =
                r.st.table()
                    .quick_lookup(&r.map, &r.fence, hash, &key, r.st.seq);
            let checked = r
                .shared
                .lookup_checked(&r.map, &r.st, &r.fence, &key)
                .unwrap();
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

    /// Seeds of the hash, fixed so that a failure replays: the checked
    /// path's share depends on which keys share a 24-bit tag.
    #[test]
    fn the_quick_lookup_answers_the_common_case_as_the_checked_path_does() {
        for seed in [0x5eed, 0xdead_beef] {
            eprintln!("hash seed {seed:#x}");
            quick_lookup_matches_the_checked_path(seed);
        }
    }

    fn quick_lookup_matches_the_checked_path(seed: u64) {
        let disk = SimDisk::new(256 << 20);
        disk.set_hash_seed(seed);
        let s = Options::new().open_sim(&disk).unwrap();
        const N: u32 = 24_000;
        let mut moving = 0;
        for c in 0..N / 1000 {
            let mut w = s.begin_write().unwrap();
            for i in c * 1000..(c + 1) * 1000 {
                w.put(key(i), i.to_le_bytes()).unwrap();
            }
            w.commit().unwrap();
            let r = s.begin_read().unwrap();
            // Present keys, absent ones past them; while the index moves,
            // a vacancy in the new table is not an answer.
            let a = compare(&r, (0..(c + 1) * 1000 + 500).map(key));
            // A slot of another key with the same 24-bit tag sends a
            // lookup to the checked path: rarely.
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
            w.put(key(i), b"new").unwrap();
        }
        for i in (0..N).step_by(3) {
            w.delete(key(i)).unwrap();
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
        assert_eq!(before.get(key(0)).unwrap(), Some(&0u32.to_le_bytes()[..]));
        assert_eq!(r.get(key(0)).unwrap(), None);
        assert_eq!(r.get(key(2)).unwrap(), Some(&b"new"[..]));

        // Keys on both sides of the short-key copy (16 bytes), and a
        // long one.
        let long = |len: usize| -> Vec<u8> { (0..len).map(|j| (j * 7 + len) as u8).collect() };
        let lens = (1..=40).chain([1000]);
        let mut w = s.begin_write().unwrap();
        for len in lens.clone() {
            w.put(long(len), len.to_le_bytes()).unwrap();
        }
        w.commit().unwrap();
        let r = s.begin_read().unwrap();
        let a = compare(&r, lens.clone().map(long));
        assert!(a.value + a.checked == 41 && a.checked <= 2, "{a:?}");
        for len in lens {
            assert_eq!(r.get(long(len)).unwrap(), Some(&len.to_le_bytes()[..]));
        }
    }
}

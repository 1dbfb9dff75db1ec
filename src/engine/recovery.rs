//! Recovery: replaying the log after the last checkpoint, or rebuilding the index.

use super::Shared;
use super::Writer;
use crate::error::Result;
use crate::format::*;
use crate::index::Table;
use crate::live::State;
use crate::log::{self, ExtentRules, Record, ScannedCommit};
use crate::space::{Space, Use};
use crate::storage::Mapping;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl Shared {
    /// Every complete commit in the log after `st`'s tail, in extents
    /// that end by `file_len`.
    fn scan_tail(&self, map: &Mapping, st: &State, file_len: u64) -> Vec<ScannedCommit> {
        let rules = ExtentRules {
            file_len: file_len.min(map.len()),
            fence: st.fence(),
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
    pub(super) fn checkpoint_space(&self, map: &Mapping, meta: &Meta) -> Result<Space> {
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
    pub(super) fn recover(&self, meta: &Meta) -> Result<(State, Space)> {
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
            let commits = self.scan_tail(&map, &st, st.file_len);
            let recovered: HashSet<u64> = commits
                .iter()
                .flat_map(|c| c.records.iter().map(|r| r.off))
                .collect();
            if self.has_lost_slot(&map, &st, &space, &recovered) {
                return self.rebuild(meta, space, commits, &recovered);
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
    /// `ckpt` is the checkpoint's state (`State::from_meta`).
    fn has_lost_slot(
        &self,
        map: &Mapping,
        ckpt: &State,
        space: &Space,
        recovered: &HashSet<u64>,
    ) -> bool {
        ckpt.tables().any(|table| {
            (0..table.cap()).any(|i| {
                let v = table.load(map, i);
                slot_names_record(v) && !record_survives(ckpt, space, recovered, slot_offset(v))
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
        recovered: &HashSet<u64>,
    ) -> Result<(State, Space)> {
        let mut map = self.map.load_full();
        let mut st = State::from_meta(meta, map.len());
        let (seq, tail) = (meta.seq.get(), meta.tail.get());
        let mut newest: HashMap<&[u8], Record> = HashMap::new();
        let heads = map.clone();
        let fence = st.fence();
        // What the checkpoint says each log extent holds of newest puts.
        let ckpt_live: HashMap<u64, u64> = space
            .list
            .iter()
            .filter_map(|e| match e.use_ {
                Use::Log { live, .. } => Some((e.off, live)),
                _ => None,
            })
            .collect();
        for e in space.list.iter_mut() {
            let Use::Log { live, .. } = &mut e.use_ else {
                continue;
            };
            *live = 0;
            for rec in log::extent_records(&heads, fence, e.off, e.end(), tail) {
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
        let keys = self.live_at_checkpoint(&heads, &st, &space, recovered, &ckpt_live, newest);
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
        let old_tables: Vec<Table> = st.tables().collect();
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

    /// Of the newest put of each key found in the checkpoint's log
    /// extents, the ones the checkpoint's index named: the rebuild's keys.
    ///
    /// A put can be the newest record of its key left in the log and yet
    /// dead: an index move dropped the key's delete, and compaction then
    /// retired the delete's extent, while the put's extent lives on. Taking
    /// every such put brought deleted keys back after a power cut
    /// (`tests/crash.rs`). The checkpointed table decides, probed for the
    /// key: a surviving slot of the key whose version at the checkpoint is
    /// this put keeps it; a chain that ends without the key drops it. A
    /// lost slot with the key's tag (the one whose record is gone, for
    /// which the rebuild runs) leaves it unsure, and the extent's `live`
    /// bytes in the checkpoint's extent table decide: the newest puts of an
    /// extent add up to its `live` plus the dead ones.
    /// `ckpt` is the checkpoint's state (`State::from_meta`).
    fn live_at_checkpoint(
        &self,
        map: &Mapping,
        ckpt: &State,
        space: &Space,
        recovered: &HashSet<u64>,
        ckpt_live: &HashMap<u64, u64>,
        newest: HashMap<&[u8], Record>,
    ) -> Vec<Record> {
        let tables: Vec<Table> = ckpt.tables().collect();
        let fence = ckpt.fence();
        let ckpt_seq = ckpt.seq;
        let extent_of = |off: u64| space.find(off).map(|i| space.list[i].off);
        let mut keep = Vec::new();
        // Per extent: the bytes of every newest put, of those known dead,
        // and the puts left unsure.
        let mut all: HashMap<u64, u64> = HashMap::new();
        let mut dead: HashMap<u64, u64> = HashMap::new();
        let mut unsure: HashMap<u64, Vec<Record>> = HashMap::new();
        for (key, rec) in newest {
            if rec.kind != KIND_PUT {
                continue;
            }
            let Some(e) = extent_of(rec.off) else {
                keep.push(rec);
                continue;
            };
            *all.entry(e).or_default() += rec.size();
            let hash = hash_key(self.seed, key);
            let mut lost_tag = false;
            let mut found = None;
            for t in &tables {
                match probe_surviving(map, &fence, t, hash, key, |off| {
                    record_survives(ckpt, space, recovered, off)
                }) {
                    (Some(h), _) => {
                        found = Some(h);
                        break;
                    }
                    (None, lost) => lost_tag |= lost,
                }
            }
            let named = match found {
                // Its version at the checkpoint: back along `prev` past the
                // recovered commits. None: put in after the checkpoint, by
                // a commit that found no version of it.
                Some(mut h) => loop {
                    if h.seq <= ckpt_seq {
                        // (Another record than the newest: not a state the
                        // writer leaves; keep the put, as before.)
                        break Some(true);
                    }
                    if h.prev == 0 {
                        break Some(false);
                    }
                    match log::read_header(map, &fence, h.prev, map.len()) {
                        Ok(p) => h = p,
                        Err(_) => break Some(true),
                    }
                },
                None if lost_tag => None,
                None => Some(false),
            };
            match named {
                Some(true) => keep.push(rec),
                Some(false) => *dead.entry(e).or_default() += rec.size(),
                None => unsure.entry(e).or_default().push(rec),
            }
        }
        for (e, recs) in unsure {
            let live = ckpt_live.get(&e).copied().unwrap_or(0);
            let surplus = all[&e]
                .checked_sub(live)
                .and_then(|s| s.checked_sub(dead.get(&e).copied().unwrap_or(0)));
            match surplus.and_then(|s| dead_subset(&recs, s)) {
                Some(is_dead) => keep.extend(
                    recs.into_iter()
                        .zip(is_dead)
                        .filter(|(_, d)| !d)
                        .map(|(r, _)| r),
                ),
                // The bytes do not tell: keep them all (as before).
                None => keep.extend(recs),
            }
        }
        keep
    }

    /// Commits found after the published tail: a writer (in any process)
    /// died after its commit record was written but before it published.
    /// They are committed; make them durable and publish them. `others`:
    /// another handle took the writer lock since this one last had it.
    pub(crate) fn adopt_orphan_commits(
        &self,
        w: &mut Writer,
        map: &mut Arc<Mapping>,
        st: &mut State,
        others: bool,
    ) -> Result<()> {
        if !self.backend.shared_log() {
            return Ok(());
        }
        // A dead writer may have grown the file for its commit's extents
        // before it died: the published length is not the limit. (Looking
        // only as far as that, the commit went unadopted while the index
        // slots it had stored named its records: found by `kvctl
        // torture`.) If nobody else wrote since this handle, it is.
        let file_len = if others {
            let len = self.real_file_len()?.max(st.file_len);
            *map = self.map_covering(len)?;
            len
        } else {
            st.file_len
        };
        let commits = self.scan_tail(map, st, file_len);
        if commits.is_empty() {
            return Ok(());
        }
        st.file_len = file_len;
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
}

/// Whether the record a slot names at `off` is still there after a crash:
/// in a log extent of the checkpoint (not the unwritten rest of its tail
/// extent, which held nothing then) or among the recovered commits.
fn record_survives(ckpt: &State, space: &Space, recovered: &HashSet<u64>, off: u64) -> bool {
    let in_log = space
        .find(off)
        .is_some_and(|i| matches!(space.list[i].use_, Use::Log { .. }));
    (in_log && !(ckpt.tail..ckpt.tail_end).contains(&off)) || recovered.contains(&off)
}

/// Probes `table` for `key` through the slots whose records survived:
/// the key's record if one names it, and whether a slot with its tag
/// named a lost record on the way (it might have been the key's).
fn probe_surviving(
    map: &Mapping,
    fence: &crate::storage::Fence,
    table: &Table,
    hash: u64,
    key: &[u8],
    survives: impl Fn(u64) -> bool,
) -> (Option<Record>, bool) {
    let mask = table.cap() - 1;
    let mut i = slot_home(hash, table.log2);
    let mut lost = false;
    for _ in 0..table.cap() {
        let v = table.load(map, i);
        if v == SLOT_EMPTY {
            break;
        }
        if slot_matches(v, hash) {
            let off = slot_offset(v);
            if !survives(off) {
                lost = true;
            } else if let Ok(h) = log::read_header(map, fence, off, map.len()) {
                if h.key_len == key.len() && h.key(map) == key {
                    return (Some(h), lost);
                }
            }
        }
        i = (i + 1) & mask;
    }
    (None, lost)
}

/// Which of `recs` add up to exactly `dead` bytes, if one choice does
/// (tried over at most 16 records; more, or two choices: `None`).
fn dead_subset(recs: &[Record], dead: u64) -> Option<Vec<bool>> {
    if recs.len() > 16 {
        return None;
    }
    let mut found = None;
    for mask in 0u32..1 << recs.len() {
        let sum: u64 = (0..recs.len())
            .filter(|&i| mask & 1 << i != 0)
            .map(|i| recs[i].size())
            .sum();
        if sum == dead {
            if found.is_some() {
                return None;
            }
            found = Some(mask);
        }
    }
    found.map(|m| (0..recs.len()).map(|i| m & 1 << i != 0).collect())
}

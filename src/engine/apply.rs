//! Applying a commit's records to the index, and retiring what they replace.

use super::index_move::{
    MIGRATE_COMMITS, MIGRATE_MIN, MIGRATE_PER_KEY, MIGRATE_RAMP_MIN, MIGRATE_RAMP_SHARE,
};
use super::Shared;
use super::{Tail, PREFETCH_AHEAD};
use crate::error::Result;
use crate::format::*;
use crate::index::{Fenced, Probe};
use crate::live::State;
use crate::log::{IndexMove, Record, ScannedCommit};
use crate::space::Space;
use crate::storage::{Fence, Mapping};
use std::collections::HashMap;
use std::sync::Arc;

/// The newest record of each key a commit wrote, in the order of their
/// first record in the log: what [`Shared::apply`] points the index at.
/// Recovery has them in a slice; a commit derives each from what its
/// transaction kept of it, so that a 1M-put commit does not build 80 MB of
/// records to read them once: in page faults and copies, that was a
/// quarter of the commit of 1M puts in key order (133 ms, now 100 ms) and
/// 15% of the whole transaction.
pub(crate) trait Finals {
    fn len(&self) -> usize;
    /// The `i`th key's hash and record, or the offset of a record the
    /// fence does not admit (`i < len()`).
    fn get(&self, i: usize) -> std::result::Result<(u64, Record), u64>;
}

impl Finals for [(u64, Record)] {
    fn len(&self) -> usize {
        <[(u64, Record)]>::len(self)
    }
    fn get(&self, i: usize) -> std::result::Result<(u64, Record), u64> {
        Ok(self[i])
    }
}

impl Shared {
    /// The version `rec` replaces (its `prev`), if any.
    fn replaced(&self, map: &Mapping, fence: &Fence, rec: &Record) -> Result<Option<Record>> {
        if rec.prev == 0 {
            return Ok(None);
        }
        let prev = self.header(map, fence, rec.prev, "previous version")?;
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
        finals: &(impl Finals + ?Sized),
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
        let fence = st.fence();
        let outside = |off| self.corrupted(off, "committed record outside the log");
        for i in 0..finals.len() {
            let (hash, rec) = finals.get(i).map_err(outside)?;
            // The slots and replaced records a few keys ahead: their cache
            // misses overlap instead of queueing one after another.
            if i + PREFETCH_AHEAD < finals.len() {
                let (h, r) = finals.get(i + PREFETCH_AHEAD).map_err(outside)?;
                table.prefetch(map, h);
                if r.prev != 0 {
                    map.prefetch(r.prev);
                }
            }
            if rec.kind == KIND_DELETE && rec.prev == 0 {
                continue; // deleted a key that no commit had: nothing to index
            }
            let prev = self.replaced(map, &fence, &rec)?;
            let replaced = prev.filter(|p| p.kind == KIND_PUT).map_or(0, |p| p.size());
            let slot = match table
                .probe(map, &Fenced { map, fence }, hash, rec.key(map))
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

    /// Forgets the keys of the delete records at `forgotten` (a forget
    /// record of commit `seq`): each key whose slot in the table still
    /// names that delete gets [`SLOT_FORGOTTEN`]. Its readers see no key
    /// either way; compaction then has no delete to copy. Nothing is
    /// counted: the slot stays occupied (`index_used`), and deleted keys
    /// are not in `key_count` or `live_bytes`.
    ///
    /// The deletes are still in the file: they lie in the extent being
    /// compacted, retired at this commit or later and reused only after a
    /// checkpoint as new (docs/DESIGN.md, "Reclamation rules"), so replay
    /// reads them too.
    pub(crate) fn forget(
        &self,
        map: &Mapping,
        st: &State,
        forgotten: &[u64],
        seq: u64,
    ) -> Result<()> {
        if forgotten.is_empty() {
            return Ok(());
        }
        let table = st.table();
        let fence = st.fence();
        for &off in forgotten {
            let rec = self.header(map, &fence, off, "forgotten delete")?;
            if rec.kind != KIND_DELETE || rec.seq >= seq {
                return Err(self.corrupted(off, "forget record names no older delete record"));
            }
            let key = rec.key(map);
            let hash = hash_key(self.seed, key);
            if let Probe::Found { slot, head } = table
                .probe(map, &Fenced { map, fence }, hash, key)
                .map_err(|b| self.bad_slot(b))?
            {
                if head.off == off {
                    table.store(map, slot, SLOT_FORGOTTEN);
                }
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
    pub(super) fn apply_scanned(
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
        self.apply(map, st, space, finals.as_slice(), c.seq, index_move)?;
        self.forget(map, st, &c.forgotten, c.seq)?;
        self.retire(st, space, &c.retired, c.seq);
        st.moved_total += moved;
        st.seq = c.seq;
        st.tail = c.after.pos;
        st.tail_end = c.after.end;
        st.log_bytes += c.bytes;
        Ok(())
    }
}

//! Index moves: starting a move to a new table and migrating slots a commit at a time.

use super::Shared;
use super::{Tail, PREFETCH_AHEAD};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{Fenced, Probe};
use crate::live::State;
use crate::log::IndexMove;
use crate::space::{Space, Use};
use crate::storage::Mapping;
use std::sync::Arc;

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
pub(super) const MIGRATE_MIN: u64 = 256;

pub(super) const MIGRATE_PER_KEY: u64 = 12;

/// ... and at least this fraction of the old table, so that a move ends
/// within this many commits however small they are...
pub(super) const MIGRATE_COMMITS: u64 = 2048;

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
pub(super) const MIGRATE_RAMP_MIN: u64 = 32;

pub(super) const MIGRATE_RAMP_SHARE: u64 = 128;

impl Shared {
    /// Whether the index must start moving to a new table for `extra` new
    /// keys: when the table would pass its load limit, or holds more
    /// deleted keys than live ones (and over a quarter). While a move is
    /// under way, only if the new table would fill before it ends (then it
    /// is finished at once first). With `smaller_too` (a step of
    /// `compact()`), also when deletes left the table twice the size the
    /// live keys need or more. The decision rests on `index_used`,
    /// which replay may count differently, so it is logged (an index
    /// record) and replay follows the log (docs/DESIGN.md, "Index growth").
    pub(crate) fn index_move_needed(
        &self,
        st: &State,
        extra: u64,
        smaller_too: bool,
    ) -> Result<Option<IndexMove>> {
        let keys = st.key_count + extra;
        let mut log2 = MIN_INDEX_LOG2;
        while (1u64 << log2) < keys.saturating_mul(2) {
            log2 += 1;
        }
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
            // Commits leave a table that half the keys were deleted from
            // as it is (it shrinks once deleted keys outnumber live ones):
            // a move costs every commit of it slots to copy. `compact()`
            // was asked for the space, and finishes a move in its next
            // step: on the comparison's churned store (1M keys, half
            // deleted) the table was 0.29x the live data, 16 MiB of it
            // twice what the keys need.
            let smaller = smaller_too && deleted > 0 && log2 < t.log2;
            if !grow && !clean && !smaller {
                return Ok(None);
            }
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
    pub(super) fn start_move(
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
    pub(super) fn migrate(
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
        let fence = st.fence();
        let end = old.cap().min(st.migrate_next.saturating_add(budget));
        // Each slot names a record to read (its key decides the new home):
        // prefetch the record of a slot a little ahead, so misses overlap.
        for i in st.migrate_next..end {
            old.prefetch_record(map, i + 2 * PREFETCH_AHEAD as u64);
            let v = old.load(map, i);
            if !slot_names_record(v) {
                continue; // empty, or a forgotten key: dropped too
            }
            let h = self.header(map, &fence, slot_offset(v), "old index slot target")?;
            if !matches!(h.kind, KIND_PUT | KIND_DELETE) {
                return Err(
                    self.corrupted(old.slot_off(i), "old index slot names a non-key record")
                );
            }
            let key = h.key(map);
            let hash = hash_key(self.seed, key);
            let probe = new
                .probe(map, &Fenced { map, fence }, hash, key)
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
}

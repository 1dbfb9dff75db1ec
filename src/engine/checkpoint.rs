//! Checkpoints: fuzzy flushes of the index a slice at a time, and the meta page that ends them.

use super::meta::{pick_meta, SpaceRef};
use super::Shared;
use super::Writer;
use crate::error::Result;
use crate::format::*;
use crate::index::Table;
use crate::live::State;
use crate::storage::Mapping;

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

impl Shared {
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

    /// Flushes the file a slice at a time (as a fuzzy checkpoint does),
    /// taking the writer lock for each and letting waiting writers in
    /// between, so that a checkpoint taken next under one hold of the lock
    /// finds little left to write. Before `compact()`'s checkpoints: with
    /// a churned store's index and compaction's unflushed copies dirty,
    /// each held the lock ~0.1 s while commits beside it waited.
    pub(crate) fn flush_in_slices(&self) -> Result<()> {
        let mut off = 0;
        self.in_turns(|w, map| {
            let st = w.state;
            let end = st.alloc_end.min(map.len());
            let tables: Vec<Table> = st.tables().collect();
            let next = slice_end(off, end, &tables);
            if off < next {
                self.flush(w, map, off, next - off)?;
            }
            off = next;
            Ok(next < end)
        })
    }

    /// One step of a fuzzy checkpoint: flushes the next slice of the file;
    /// after the last one, writes the meta page naming the state saved at
    /// its start. Returns whether a meta page was written. Abandoned if a
    /// newer checkpoint appeared meanwhile (another process's writer).
    pub(super) fn checkpoint_slice(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
    ) -> Result<bool> {
        let Some(f) = w.fuzzy.as_mut() else {
            return Ok(false);
        };
        let tables: Vec<Table> = st.tables().chain(f.st.tables()).collect();
        // Everything `f.st` names lies below its allocation end; past it,
        // prepared space may wait dirty for its table (`prepare_ahead`).
        let end = f.st.alloc_end.min(map.len());
        let off = f.next.min(end);
        let next = slice_end(off, end, &tables);
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
        self.flush(w, map, page, PAGE_SIZE)?;
        w.meta_flushed = generation;
        Ok(())
    }

    /// Before a commit's first slot changes: the meta page must say, on
    /// disk, that the index may hold slots past the checkpoint. After a
    /// clean close it says the opposite, and `mark_dirty` rewrites it. If
    /// it already says so in the map but this handle did not flush that
    /// generation itself, it is flushed now: another handle's flush of it
    /// may have failed (`Writer::meta_flushed`). Once per generation.
    pub(crate) fn meta_dirty_on_disk(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
    ) -> Result<()> {
        if st.meta_clean != 0 {
            return self.mark_dirty(w, map, st);
        }
        if w.meta_flushed != st.meta_gen {
            self.flush(w, map, 0, 2 * PAGE_SIZE)?;
            w.meta_flushed = st.meta_gen;
        }
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
        w.meta_flushed = generation;
        st.meta_gen = generation;
        st.meta_clean = 0;
        Ok(())
    }
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

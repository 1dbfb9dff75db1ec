//! Allocation: space for extents and index tables, growing the file, preparing ahead.

use super::Shared;
use super::{is_enospc, Tail};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::MAX_LOAD_EIGHTHS;
use crate::live::State;
use crate::space::{Space, Use};
use crate::storage::{Mapping, Prepare};
use std::sync::Arc;

/// The file grows by a quarter of its size, within these bounds, rounded up
/// to `MIN_GROWTH`: few growths, little slack, and no growth long enough
/// to stall a commit (zero-filling costs ~5 ms per MiB here:
/// `cargo bench --bench space -- bulk`).
pub(super) const MIN_GROWTH: u64 = 1 << 20;

const MAX_GROWTH: u64 = 4 << 20;

/// `prepare_ahead` prepares tables at least this large (the 128 pages of
/// a smaller one cost its move under 2 ms of first-touch faults; those of
/// a 2-4 MiB table cost the first commit of its move 6-23 ms)...
const PREPARE_TABLE_MIN: u64 = 1 << 20;

/// ... twice what a commit logged, within these bounds.
const PREPARE_AHEAD_MIN: u64 = 64 << 10;

const PREPARE_AHEAD_MAX: u64 = 2 << 20;

/// The smallest free range the log fills as an extent of its own.
const MIN_HOLE: u64 = 64 << 10;

/// `prepare_reuse` prepares after commits that logged less than this,
/// `REUSE_SLICE` at a time: a larger commit's flush converts its pages
/// in one I/O anyway, and zeros written ahead of it only doubled what the
/// disk wrote for it (the comparison's overwrite pass, commits of 1,000
/// puts: 911 bytes per put instead of 672).
const REUSE_SMALL_COMMIT: u64 = 16 << 10;

const REUSE_SLICE: u64 = 64 << 10;

/// Size of a new log extent for a record of `need` bytes: a 128th of the
/// file, between 1 MiB and 1 GiB (whole MiB), so that the extent table
/// stays short however large the store grows.
pub(crate) fn extent_size(st: &State, need: u64) -> u64 {
    let scaled = (st.file_len / 128).clamp(LOG_EXTENT, 1 << 30);
    align_page(need).max(scaled.div_ceil(LOG_EXTENT) * LOG_EXTENT)
}

/// The free range a new log extent for a record of `need` bytes takes,
/// as (offset, length): the lowest free range that holds it and at least
/// `MIN_HOLE`, used whole if smaller than an extent (holes left by reuse
/// fill up, and data drifts to the start), else an extent of it. `None`:
/// the extent comes from new space.
pub(crate) fn log_reuse(space: &Space, st: &State, need: u64) -> Option<(u64, u64)> {
    space
        .lowest_free(need.max(MIN_HOLE))
        .map(|e| (e.off, e.len.min(extent_size(st, need))))
}

impl Shared {
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
        if let Some(off) = self.take_reserved(space, tail, size, use_)? {
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
        // The file may be longer than the state says: a writer that died
        // or aborted (in any process) grew it and wrote there. Only what
        // this growth adds is known to be zeros.
        let was = self
            .backend
            .grow(new_len)
            .map_err(|e| self.io(format!("grow the file to {new_len} bytes"), e))?;
        tail.zeros_from = tail.zeros_from.min(was.max(st.file_len));
        st.file_len = new_len.max(was);
        *map = self.map_covering(st.file_len)?;
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

    /// Prepares, a slice per commit, the free range the log takes next
    /// (`log_reuse`, for a small record), as `prepare_ahead` prepares new space for
    /// it. Reused space is unwritten (punched, or zeroed by `reserve`),
    /// and each page the log's appends first wrote there was converted on
    /// its own: a work item of the file system's at the end of its I/O,
    /// on the CPU that took the disk's interrupt, preempting whatever ran
    /// there (a reader), and an extent-tree block written by the next
    /// flush. Prepared, the range is converted a slice at a time in the
    /// background and the log's pages are in the page cache, small. Only
    /// small commits (`REUSE_SMALL_COMMIT`) do it: they are the ones that
    /// touch a page or less each.
    /// A range prepared and then passed over (a lower one was freed, or
    /// something else took part of it) is queued to be punched again
    /// wherever it is still free.
    pub(crate) fn prepare_reuse(
        &self,
        map: &Arc<Mapping>,
        st: &State,
        space: &Space,
        tail: &mut Tail,
        to_punch: &mut Vec<(u64, u64)>,
        logged: u64,
    ) {
        let next = log_reuse(space, st, 0).map(|(at, len)| (at, at + len));
        let at = next.map_or(0, |(at, _)| at);
        if tail.reuse_at != at {
            if tail.reuse_to > tail.reuse_at {
                to_punch.push((tail.reuse_at, tail.reuse_to - tail.reuse_at));
            }
            tail.reuse_at = at;
            tail.reuse_to = at;
        }
        let Some((at, end)) = next else {
            return;
        };
        let from = tail.reuse_to.max(at);
        if from >= end || logged >= REUSE_SMALL_COMMIT {
            return;
        }
        let to = align_page(end.min(from + REUSE_SLICE));
        if self
            .backend
            .prepare(map, from, to - from, Prepare::Reuse)
            .is_ok()
        {
            tail.reuse_to = to;
        }
    }
}

//! The log cursor: room for the next record, moving to a new extent, the index table a commit prepares, and undoing extent-table changes.

use super::WriteTxn;
use crate::engine::{extent_size, log_reuse};
use crate::error::Result;
use crate::format::*;
use crate::log::{self, Cursor};
use crate::space::{Space, Use};

impl<'s> WriteTxn<'s> {
    /// Room for a record of `size` bytes at the tail. When the extent is
    /// full, a next record (always kept room for) moves the log to a new
    /// extent. On `ENOSPC` nothing was written.
    pub(super) fn reserve(&mut self, size: u64) -> Result<u64> {
        if self.base.meta_clean != 0 {
            // The first record after a clean close (or a creation): say,
            // on disk, that the index may change (commit step 0) now,
            // while nothing else is dirty. At the commit of a bulk load
            // that one-page flush waited for the file system's journal,
            // and with it for the load's data (0.14-0.17 s of a 0.55 s
            // load of 1M keys). An empty transaction still leaves the
            // store clean.
            self.shared
                .meta_dirty_on_disk(&mut self.w, &self.map, &mut self.base)?;
        }
        self.room(size)?;
        let pos = self.cur.pos;
        self.cur.pos += size;
        Ok(pos)
    }

    /// Makes room for `size` bytes of records at the cursor, in this
    /// extent or (when it is full) a new one, without taking it.
    pub(super) fn room(&mut self, size: u64) -> Result<()> {
        if self.cur.pos + size + NEXT_RECORD_SIZE > self.cur.end {
            // A free range lower in the file, or new space.
            let need = align_page(size + NEXT_RECORD_SIZE);
            let len = match log_reuse(&self.w.space, &self.base, need) {
                Some((_, len)) => len,
                None => extent_size(&self.base, need),
            };
            self.next_extent(len)?;
        }
        Ok(())
    }

    /// Ends the current extent with a next record naming a new one of
    /// `len` bytes (the lowest free range that fits, or new space).
    pub(super) fn next_extent(&mut self, len: u64) -> Result<()> {
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
    pub(super) fn prepare_index(&mut self) -> Result<()> {
        if self.index_prepared {
            return Ok(());
        }
        let wanted = self
            .shared
            .index_move_needed(&self.base, self.fresh_keys, self.no_auto)?;
        if let Some(mv) = wanted {
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
    pub(super) fn log_index_move(&mut self, mv: log::IndexMove, off: u64) -> Result<()> {
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
    pub(super) fn space_mut(&mut self) -> &mut Space {
        if self.space_undo.is_none() {
            self.space_undo = Some((self.w.space.clone(), self.w.space_dirty));
        }
        self.w.space_dirty = true;
        &mut self.w.space
    }

    /// Puts the writer's extent table back as it was before this
    /// transaction changed it (it does not commit).
    pub(super) fn undo_space(&mut self) {
        if let Some((space, dirty)) = self.space_undo.take() {
            self.w.space = space;
            self.w.space_dirty = dirty;
        }
    }
}

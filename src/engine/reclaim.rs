//! Reclaiming space: reusing retired extents, relocating the index, shrinking the file, closing.

use super::alloc::MIN_GROWTH;
use super::{is_enospc, Shared, Tail, Writer};
use crate::error::Result;
use crate::faults::PausePoint;
use crate::format::*;
use crate::live::State;
use crate::space::{Space, Use};
use crate::storage::{LockId, LockMode, Mapping};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What [`Shared::punch_queued`] punches under one hold of the writer lock.
const PUNCH_SLICE: u64 = 4 << 20;

impl Shared {
    /// Frees retired ranges that nobody can read any more: retired by a
    /// commit no later than the last checkpoint (so no durable index slot
    /// or meta page names them) and no later than the oldest snapshot
    /// open in any process (so no reader does). Nothing is freed while a
    /// handle that cannot register its snapshots is open (`Pin`).
    /// The freed ranges wait in the writer's queue to be punched
    /// ([`punch_some`](Self::punch_some)).
    pub(crate) fn release_retired(&self, w: &mut Writer, st: &State) -> u64 {
        let Some(oldest_retired) = w.space.oldest_retired() else {
            return 0;
        };
        if oldest_retired > st.ckpt_seq {
            return 0;
        }
        let oldest = self.oldest_snapshot();
        if oldest == 0 {
            return 0; // pinned
        }
        let freed = self.free_retired(w, st.ckpt_seq.min(oldest));
        if freed > 0 {
            w.space_dirty = true;
        }
        freed
    }

    /// Frees every range retired by a commit `<= upto` (the caller has
    /// checked that no snapshot, index slot or recovery can read them) and
    /// queues them to be punched, so their disk blocks go back to the file
    /// system even while other processes map the file (docs/DESIGN.md,
    /// "Holes"). Returns the bytes freed.
    fn free_retired(&self, w: &mut Writer, upto: u64) -> u64 {
        let mut freed = 0;
        for (off, len) in w.space.release(upto) {
            w.to_punch.push((off, len));
            freed += len;
        }
        freed
    }

    /// Punches up to `budget` bytes of the queued ranges, only where they
    /// are still free (the writer may have handed part of one out again,
    /// reserving its blocks: that part must keep them). Punching costs
    /// about 1 ms per MiB on ext4 here: a commit after a wave of deletes
    /// that freed 23 MiB at once took 24 ms, so a write transaction punches
    /// `PUNCH_PER_TXN`, and `compact()` all.
    pub(crate) fn punch_some(&self, w: &mut Writer, mut budget: u64) -> u64 {
        let all = budget;
        while budget > 0 {
            let Some((off, len)) = w.to_punch.pop() else {
                break;
            };
            let take = len.min(budget);
            if take < len {
                w.to_punch.push((off + take, len - take));
            }
            budget -= take;
            let end = off + take;
            // Not what is prepared for the log's next extent: it would be
            // unwritten again (queued again if the log passes it over).
            let (keep_at, keep_to) = (w.tail.reuse_at, w.tail.reuse_to);
            for e in &w.space.list {
                if e.end() <= off || e.off >= end || !matches!(e.use_, Use::Free) {
                    continue;
                }
                let (a, b) = (e.off.max(off), e.end().min(end));
                for (a, b) in [(a, b.min(keep_at)), (a.max(keep_to), b)] {
                    if a < b {
                        // A hint: blocks not given back only cost disk space.
                        let _ = self.backend.punch(a, b - a);
                    }
                }
            }
        }
        all - budget
    }

    /// Takes the lowest free range that holds `size` bytes, with its
    /// blocks reserved first (it may have been punched): a full disk is an
    /// `Io` error here and the range stays free. A log extent keeps what
    /// was prepared for it (`tail`, `prepare_reuse`).
    pub(super) fn take_reserved(
        &self,
        space: &mut Space,
        tail: &mut Tail,
        size: u64,
        use_: Option<Use>,
    ) -> Result<Option<u64>> {
        let Some(e) = space.lowest_free(size) else {
            return Ok(None);
        };
        let end = e.off + size;
        let kept = match use_ {
            Some(Use::Log { .. }) if tail.reuse_at == e.off => tail.reuse_to.min(end),
            _ => e.off,
        };
        let reserved = (|| {
            if kept > e.off {
                self.backend.reserve_prepared(e.off, kept - e.off)?;
            }
            if end > kept {
                self.backend.reserve(kept, end - kept)?;
            }
            Ok(())
        })();
        reserved.map_err(|err| {
            self.io(
                format!(
                    "reserve {size} bytes of free space at offset {} for reuse",
                    e.off
                ),
                err,
            )
        })?;
        if kept > e.off {
            (tail.reuse_at, tail.reuse_to) = (0, 0);
        }
        Ok(space.take_free(size, use_))
    }

    /// After compaction: a checkpoint (retired extents are reused only
    /// after one), then frees what no snapshot reads; with `shrink`, and
    /// when this handle holds the store alone, also cuts free space off the
    /// end of the file. Returns the bytes freed and the file length.
    pub(crate) fn reclaim(&self, shrink: bool) -> Result<(u64, u64)> {
        self.flush_in_slices()?;
        let Some((mut w, mut map)) = self.begin_writer(true, false)? else {
            unreachable!("a waiting begin_writer always gets the lock");
        };
        let r = (|| -> Result<(u64, u64)> {
            let mut st = w.state;
            self.checkpoint(&mut w, &map, &mut st, false)?;
            let freed = self.release_retired(&mut w, &st);
            self.publish(&mut w, &map, &mut st);
            if shrink && self.lock(LockId::Open, LockMode::Exclusive, false)? {
                let r = (|| {
                    if self.relocate_index(&mut w, &map, &mut st)? {
                        self.checkpoint(&mut w, &map, &mut st, false)?;
                        // Publish the new table *before* looking for
                        // readers. The move keeps `seq`, so a snapshot's
                        // re-check in `begin_snapshot` cannot tell the two
                        // states apart; only this order (Dekker with its
                        // register-then-re-read) makes a snapshot that the
                        // scan misses read the new table. Scanning first
                        // freed the old table under such a snapshot, and
                        // `shrink` then cut it off the file: a SIGBUS
                        // (tests/compact_readers.rs).
                        self.publish(&mut w, &map, &mut st);
                        // Alone, no snapshot open, the checkpoint names the
                        // new table: nothing can read the old one.
                        let alone = !self.pinned() && self.scan_readers().snapshots.is_empty();
                        self.faults.point(PausePoint::AfterRelocationScan);
                        if alone {
                            self.faults.point(PausePoint::BeforeOldIndexFreed);
                            // (Punched below, unless `shrink` cuts it off.)
                            self.free_retired(&mut w, u64::MAX);
                            w.space_dirty = true;
                            self.publish(&mut w, &map, &mut st);
                        }
                    }
                    self.shrink(&mut w, &mut map, &mut st)
                })();
                let _ = self.lock(LockId::Open, LockMode::Shared, true);
                r?;
            }
            Ok((freed, st.file_len))
        })();
        self.end_writer();
        drop(w);
        let r = r?;
        self.punch_queued()?;
        Ok(r)
    }

    /// Punches the queued ranges a slice at a time, taking the writer lock
    /// for each, so that other threads' and processes' commits go on in
    /// between: a `compact()` that freed 143 MB had held the lock for the
    /// whole punch (~1 ms per MiB).
    fn punch_queued(&self) -> Result<()> {
        self.in_turns(|w, _| {
            self.punch_some(w, PUNCH_SLICE);
            Ok(!w.to_punch.is_empty())
        })
    }

    /// Whether `reclaim(true)` could cut the file now: no other handle,
    /// in any process, has the store open. (A hint: one may open or close
    /// before then; `reclaim` takes the lock that decides.)
    pub(crate) fn may_shrink(&self) -> bool {
        !self.backend.held_by_others(LockId::Open).unwrap_or(true)
    }

    /// Moves the index table down into the lowest free range that holds
    /// it, if there is one below it (so the end of the file can be cut).
    /// A copy of the slots, word by word: same size, same positions. The
    /// old table stays as it was for snapshots that read it, retired by the
    /// next commit; recovery from an older checkpoint still finds it intact
    /// (retired space is reused only after a newer checkpoint).
    fn relocate_index(&self, w: &mut Writer, map: &Mapping, st: &mut State) -> Result<bool> {
        if st.old_table().is_some() {
            return Ok(false);
        }
        let t = st.table();
        let below = w
            .space
            .lowest_free(t.bytes())
            .is_some_and(|e| e.off < t.off);
        if !below || w.space.list.len() + 2 > SPACE_ENTRIES {
            return Ok(false);
        }
        let off = match self.take_reserved(&mut w.space, &mut w.tail, t.bytes(), None) {
            Ok(Some(off)) => off,
            Ok(None) => return Ok(false),
            // On a full disk the table stays where it is.
            Err(e) if is_enospc(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        // Copied a MiB at a time with `write`, each MiB's writeback started
        // at once: through the map, every page of the new table was a
        // first-touch fault (42 ms for a 16 MiB table, under the lock that
        // commits beside `compact()` wait for), and the checkpoint that
        // must make the copy durable before a meta page names it then
        // found it all still to write. No snapshot reads the new range
        // before the publish below; the old table does not change under
        // the writer lock.
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK.min(t.bytes()) as usize];
        let mut at = 0;
        while at < t.bytes() {
            let len = CHUNK.min(t.bytes() - at);
            let part = &mut buf[..len as usize];
            map.read_words(t.off + at, part);
            self.backend.write(map, off + at, part).map_err(|e| {
                w.poisoned = true;
                self.io(format!("copy the index table to offset {}", off + at), e)
            })?;
            self.backend.start_writeback(off + at, len);
            at += len;
        }
        w.space
            .insert(t.off, t.bytes(), Use::Retired { seq: st.seq + 1 });
        st.index_off = off;
        w.space_dirty = true;
        Ok(true)
    }

    /// Cuts the free space at the end of the allocated area off the file
    /// (whole growth units). Only for a handle that holds the store alone
    /// (the `Open` lock, exclusively): no other process maps the file, and
    /// the snapshots of this process read nothing there (it is free). The
    /// checkpoint that no longer names the space comes first, then the cut.
    fn shrink(&self, w: &mut Writer, map: &mut Arc<Mapping>, st: &mut State) -> Result<()> {
        let end = w.space.trim_end(st.alloc_end);
        let new_len = end.div_ceil(MIN_GROWTH) * MIN_GROWTH;
        if new_len >= st.file_len {
            return Ok(());
        }
        st.alloc_end = end;
        w.space_dirty = true;
        self.checkpoint(w, map, st, false)?;
        st.file_len = new_len;
        w.tail.zeros_from = w.tail.zeros_from.min(new_len);
        w.tail.prepared_to = w.tail.prepared_to.min(new_len);
        self.publish(w, map, st);
        self.backend
            .shrink(new_len)
            .map_err(|e| self.io(format!("shrink the file to {new_len} bytes"), e))?;
        let m = Arc::new(
            self.backend
                .map(new_len)
                .map_err(|e| self.io("map the shrunk file", e))?,
        );
        self.map.store(m.clone());
        *map = m;
        Ok(())
    }

    /// On close: if this handle is the last one and can write, checkpoint
    /// and mark the store clean, so the next open neither replays the log
    /// nor scans the index. A store still clean (nothing was written since
    /// the last clean checkpoint) is left alone.
    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
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
                self.punch_some(&mut w, u64::MAX);
                let mut st = w.state;
                let r = self.checkpoint(&mut w, &map, &mut st, true);
                if r.is_ok() {
                    self.publish(&mut w, &map, &mut st);
                }
                self.end_writer();
                r
            }
        };
        let _ = self.lock(LockId::Open, LockMode::Shared, true);
        result
    }
}

impl Drop for Shared {
    /// The last handle of a store (every clone of its `Store`, every
    /// `Snapshot`) closes it, ignoring errors (`Store::close` reports them).
    fn drop(&mut self) {
        let _ = self.close();
    }
}

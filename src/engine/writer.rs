//! The writer's lifecycle: taking the writer lock, refreshing its state, letting go.

use super::checkpoint::CHECKPOINT_LOG_BYTES;
use super::meta::pick_meta;
use super::Shared;
use super::{Fuzzy, Tail, Writer};
use crate::error::{Error, Result};
use crate::live;
use crate::space::Use;
use crate::storage::{LockId, LockMode, Mapping};
use std::sync::{Arc, MutexGuard};

/// Retired extents are reused only after a checkpoint: take one early once
/// this much (or a 32nd of the file) waits for it.
const RECLAIM_CHECKPOINT_MIN: u64 = 1 << 20;
/// The most freed space a write transaction punches (the rest waits for
/// the next ones): about 2 ms on ext4 here.
const PUNCH_PER_TXN: u64 = 2 << 20;

impl Shared {
    /// `Poisoned` if a write or flush of this handle failed: what it left
    /// in the file is unknown until the store is reopened (and recovered).
    pub(crate) fn refuse_poisoned(&self, w: &Writer) -> Result<()> {
        if w.poisoned {
            return Err(Error::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Takes the writer lock (this process's mutex, then the file lock),
    /// brings the writer's state up to date with what any process
    /// published, and finishes what a dead writer left. For a write
    /// transaction (`for_txn`) it also takes a checkpoint if one is due.
    /// Returns `None` if `wait` is false and another writer holds the lock.
    pub(crate) fn begin_writer(
        &self,
        wait: bool,
        for_txn: bool,
    ) -> Result<Option<(MutexGuard<'_, Writer>, Arc<Mapping>)>> {
        if !self.writable() {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut w = if wait {
            self.writer()
        } else {
            match self.writer.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            }
        };
        self.refuse_poisoned(&w)?;
        if !self.lock(LockId::Writer, LockMode::Exclusive, wait)? {
            return Ok(None);
        }
        match self.refresh_writer(&mut w, for_txn) {
            Ok(map) => Ok(Some((w, map))),
            Err(e) => {
                let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
                Err(e)
            }
        }
    }

    fn refresh_writer(&self, w: &mut Writer, for_txn: bool) -> Result<Arc<Mapping>> {
        let (mut st, mut map) = self.snapshot()?;
        // Another handle held the lock since our last turn: it may have
        // written past the allocated area (a transaction it aborted, or
        // died in) without publishing anything.
        let turn = live::writer_turn(&map);
        let others = turn != w.next_turn;
        if others {
            w.tail = Tail::UNKNOWN;
        }
        w.next_turn = turn.wrapping_add(1);
        if st != w.state {
            // Another handle committed since we last wrote: our list of
            // unflushed ranges is stale, and it may have left its own.
            w.unsynced.clear();
            w.full_flush = st.synced_tail != st.tail;
            w.space = self.working_space(&map, &st)?;
            w.space_dirty = false;
            w.tail = Tail::UNKNOWN;
        }
        // A checkpoint is found by generation: trust the pages, not the header.
        let meta = pick_meta(&self.path, &map)?;
        st.meta_gen = meta.generation.get();
        st.meta_clean = meta.is_clean() as u64;
        self.adopt_orphan_commits(w, &mut map, &mut st, others)?;
        if for_txn {
            // Checkpoint here, before the transaction writes anything: the
            // meta page then never names space the transaction hands out.
            // Also when retired extents wait for one to be reused.
            let log_due =
                st.log_bytes - st.ckpt_log_bytes.min(st.log_bytes) >= CHECKPOINT_LOG_BYTES;
            let waiting: u64 = w
                .space
                .list
                .iter()
                .filter(|e| matches!(e.use_, Use::Retired { seq } if seq > st.ckpt_seq))
                .map(|e| e.len)
                .sum();
            let space_due = waiting >= (st.file_len / 32).max(RECLAIM_CHECKPOINT_MIN);
            if w.fuzzy.is_none() && (log_due || space_due) {
                w.fuzzy = Some(Fuzzy {
                    st,
                    space: w.space.clone(),
                    next: 0,
                });
            }
            if w.fuzzy.is_some() && self.checkpoint_slice(w, &map, &mut st)? {
                self.publish(w, &map, &mut st);
            }
            self.release_retired(w, &st);
            self.punch_some(w, PUNCH_PER_TXN);
        }
        w.state = st;
        Ok(map)
    }

    /// Releases the cross-process writer lock (the mutex guard is dropped
    /// by the caller).
    pub(crate) fn end_writer(&self) {
        // Unlocking cannot fail for a lock we hold; if it did, closing the
        // file releases it.
        let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
    }
}

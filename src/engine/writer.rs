//! The writer's lifecycle: taking the writer lock, refreshing its state, letting go.

use super::checkpoint::CHECKPOINT_LOG_BYTES;
use super::meta::pick_meta;
use super::Shared;
use super::{Fuzzy, Tail, Writer};
use crate::error::{Error, Result};
use crate::faults::PausePoint;
use crate::live;
use crate::space::Use;
use crate::storage::{LockId, LockMode, Mapping};
use std::sync::{Arc, MutexGuard};

/// Retired extents are reused only after a checkpoint: take one early once
/// this much (or a 32nd of the file) waits for it.
const RECLAIM_CHECKPOINT_MIN: u64 = 1 << 20;
/// The most freed space a write transaction punches (the rest waits for
/// the next ones): 5-9 ms on ext4 here (a punch costs ~0.3 ms and then
/// ~0.7-1.3 ms per MiB). 2 MiB until 2026-12-04: after the comparison's
/// delete wave and a 60 ms gap, ~35 commits then punched what was left,
/// at 2.5-3.5 ms each (p99 of 2,000 commits 2.5-3.4 ms); at 6 MiB 9-14
/// commits do, at 7-17 ms (p99 0.5-1.2 ms; max 7.6-17 ms against
/// 3.7-6.9; docs/DESIGN.md, "Holes").
const PUNCH_PER_TXN: u64 = 6 << 20;

/// Why the writer lock is taken: what its taker does first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// A write transaction: checkpoint slices, freeing and punching first.
    Txn,
    /// The same, in idle time (`idle.rs`), starting a checkpoint for any
    /// retired space.
    Idle,
    /// Something else (compaction's reclaim, close): none of that.
    Other,
}

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
        self.idle.writing();
        let r = self.take_writer(wait, if for_txn { Turn::Txn } else { Turn::Other });
        if !matches!(r, Ok(Some(_))) {
            self.idle.wrote();
        }
        r
    }

    fn take_writer(
        &self,
        wait: bool,
        turn: Turn,
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
        match self.refresh_writer(&mut w, turn) {
            Ok(map) => Ok(Some((w, map))),
            Err(e) => {
                let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
                Err(e)
            }
        }
    }

    fn refresh_writer(&self, w: &mut Writer, turn: Turn) -> Result<Arc<Mapping>> {
        let (mut st, mut map) = self.snapshot()?;
        // Another handle held the lock since our last turn: it may have
        // written past the allocated area (a transaction it aborted, or
        // died in) without publishing anything.
        let lock_turn = live::writer_turn(&map);
        let others = lock_turn != w.next_turn;
        if others {
            w.tail = Tail::UNKNOWN;
        }
        w.next_turn = lock_turn.wrapping_add(1);
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
        if turn != Turn::Other {
            // Checkpoint here, before the transaction writes anything: the
            // meta page then never names space the transaction hands out.
            // Also when retired extents wait for one to be reused (any, in
            // idle time).
            let log_due =
                st.log_bytes - st.ckpt_log_bytes.min(st.log_bytes) >= CHECKPOINT_LOG_BYTES;
            let waiting: u64 = w
                .space
                .list
                .iter()
                .filter(|e| matches!(e.use_, Use::Retired { seq } if seq > st.ckpt_seq))
                .map(|e| e.len)
                .sum();
            let space_due = waiting >= (st.file_len / 32).max(RECLAIM_CHECKPOINT_MIN)
                || (turn == Turn::Idle && waiting > 0);
            if w.fuzzy.is_none() && (log_due || space_due) {
                w.fuzzy = Some(Fuzzy {
                    st,
                    space: w.space.clone(),
                    next: 0,
                });
            }
            let sliced = w.fuzzy.is_some();
            if sliced && self.checkpoint_slice(w, &map, &mut st)? {
                self.publish(w, &map, &mut st);
            }
            let freed = self.release_retired(w, &st);
            let punched = self.punch_some(w, PUNCH_PER_TXN);
            w.chores_done = sliced || freed > 0 || punched > 0;
            let waiting =
                w.fuzzy.is_some() || !w.to_punch.is_empty() || w.space.oldest_retired().is_some();
            self.idle.set_due(waiting);
        }
        w.state = st;
        Ok(map)
    }

    /// Does a long job a turn at a time: each turn takes the writer lock
    /// (waiting for it), runs `turn`, lets go, and lets the threads of
    /// this process blocked on the lock have it before the next
    /// ([`yield_writer`](Self::yield_writer)), until `turn` says it is
    /// done (`false`) or fails.
    pub(crate) fn in_turns(
        &self,
        mut turn: impl FnMut(&mut Writer, &Mapping) -> Result<bool>,
    ) -> Result<()> {
        loop {
            let Some((mut w, map)) = self.begin_writer(true, false)? else {
                unreachable!("a waiting begin_writer always gets the lock");
            };
            let more = turn(&mut w, &map);
            self.end_writer();
            drop(w);
            if !more? {
                return Ok(());
            }
            self.yield_writer();
        }
    }

    /// One turn of idle-time work (`idle.rs`): what the start of a write
    /// transaction does (a checkpoint slice, freeing, punching), if the
    /// writer lock is free. Returns false if it was not. A turn that
    /// found nothing to do says so (`Idle::due`) before letting go.
    pub(crate) fn idle_turn(&self) -> Result<bool> {
        let Some((mut w, map)) = self.take_writer(false, Turn::Idle)? else {
            return Ok(false);
        };
        if w.space_dirty {
            // What it freed, for `stats()` and other processes' writers
            // (a write transaction would publish it with its commit).
            let mut st = w.state;
            self.publish(&mut w, &map, &mut st);
        }
        self.faults.point(PausePoint::IdleTurn);
        if !w.chores_done {
            self.idle.set_due(false);
        }
        // (Not `end_writer`: this turn was never counted as writing.)
        let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
        drop(w);
        Ok(true)
    }

    /// Releases the cross-process writer lock (the mutex guard is dropped
    /// by the caller).
    pub(crate) fn end_writer(&self) {
        // Unlocking cannot fail for a lock we hold; if it did, closing the
        // file releases it.
        let _ = self.lock(LockId::Writer, LockMode::Unlock, true);
        self.idle.wrote();
    }
}

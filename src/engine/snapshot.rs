//! The published state and the reader table: how snapshots begin, end and read newer records.

use super::{Shared, Writer};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::Records;
use crate::live::{self, State};
use crate::log::{self, Record};
use crate::readers::{self, RegisterError, Slot};
use crate::storage::{Fence, LockId, Mapping};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Records as a snapshot reads them: from its own mapping, or — for records
/// committed after the snapshot, past the end of its mapping when the file
/// grew — from the newest mapping. Only headers and key comparisons come
/// from the newer mapping, as copies; no borrow of it escapes.
pub(crate) struct SnapshotRecords<'a> {
    pub shared: &'a Shared,
    pub base: &'a Mapping,
    /// The snapshot's state's fence: slots name nothing outside it.
    pub fence: Fence,
}

impl<'a> SnapshotRecords<'a> {
    fn newer(&self, end: u64) -> Option<Arc<Mapping>> {
        let m = self.shared.map.load_full();
        if m.len() >= end {
            return Some(m);
        }
        let len = self.shared.backend.file_len().ok()?;
        self.shared.map_covering(len.max(end)).ok()
    }

    /// `rec`'s key: borrowed from the snapshot's mapping when it lies
    /// there (the common case, no allocation), else copied from the newer
    /// mapping. `None` if the file cannot be mapped that far.
    pub(crate) fn key(&self, rec: &Record) -> Option<Cow<'a, [u8]>> {
        let end = rec.key_off() + rec.key_len as u64;
        if end <= self.base.len() {
            return Some(Cow::Borrowed(rec.key(self.base)));
        }
        self.newer(end).map(|m| Cow::Owned(rec.key(&m).to_vec()))
    }
}

impl Records for SnapshotRecords<'_> {
    fn header(&self, off: u64) -> Result<Record, log::Invalid> {
        match log::read_header(self.base, &self.fence, off, self.base.len()) {
            Err(log::Invalid::OutOfBounds) => {
                let m = self
                    .newer(off.saturating_add(HEADER_SIZE as u64))
                    .ok_or(log::Invalid::Unmapped)?;
                log::read_header(&m, &self.fence, off, m.len())
            }
            r => r,
        }
    }

    fn key_is(&self, rec: &Record, key: &[u8]) -> bool {
        if rec.key_len != key.len() {
            return false;
        }
        let end = rec.key_off() + rec.key_len as u64;
        if end <= self.base.len() {
            return rec.key(self.base) == key;
        }
        self.newer(end).is_some_and(|m| rec.key(&m) == key)
    }
}

impl Shared {
    /// Publishes `st` (and the extent table, if it changed) to every
    /// reader: the table goes to the working copy the current state does
    /// not name, then one publish makes both current.
    pub(crate) fn publish(&self, w: &mut Writer, map: &Mapping, st: &mut State) {
        if w.space_dirty {
            let at = 1 - (st.space_at & 1);
            let (n, _) = w.space.store(map, SPACE_WORKING[at as usize], false);
            st.space_at = at;
            st.space_n = n as u64;
            w.space_dirty = false;
        }
        live::publish(map, st);
        w.state = *st;
    }

    /// The newest committed state: from the live header, or for a handle
    /// that opened with none, the checkpoint it opened — until a writer
    /// sets up a live header, which it then joins.
    pub(crate) fn current(&self) -> Result<State> {
        if !self.joined.load(Ordering::Acquire) && !self.try_join()? {
            if let Some(st) = self.offline {
                return Ok(st);
            }
        }
        live::read(&self.map.load())
            .ok_or_else(|| self.corrupted(LIVE_OFFSET, "live header never settles"))
    }

    /// The newest committed state and a mapping that covers it.
    pub(crate) fn snapshot(&self) -> Result<(State, Arc<Mapping>)> {
        let st = self.current()?;
        let map = self.map_covering(st.file_len)?;
        st.validate(&self.path, LIVE_OFFSET, "live header")?;
        Ok((st, map))
    }

    /// What a new read transaction sees: like [`snapshot`](Self::snapshot),
    /// registered in the reader table when this handle can register
    /// (`readers` module docs: register, then re-read the state).
    pub(crate) fn begin_snapshot(&self) -> Result<(State, Arc<Mapping>, Option<Slot>)> {
        if !self.joined.load(Ordering::Acquire) || !self.backend.shared_writable() {
            let (st, map) = self.snapshot()?;
            return Ok((st, map, None));
        }
        let head = self.map.load_full();
        let slot = self
            .registry
            .acquire(&*self.backend, &head)
            .map_err(|e| match e {
                RegisterError::Full => Error::TooManyReaders {
                    path: self.path.clone(),
                    max: readers::CHUNKS,
                },
                RegisterError::Io(e) => self.io("claim a reader-table chunk", e),
            })?;
        let registered = (|| loop {
            let st = self.current()?;
            self.registry.set(&head, &slot, st.seq);
            let again = self.current()?;
            if again.seq == st.seq {
                let map = self.map_covering(again.file_len)?;
                again.validate(&self.path, LIVE_OFFSET, "live header")?;
                return Ok((again, map));
            }
        })();
        match registered {
            Ok((st, map)) => Ok((st, map, Some(slot))),
            Err(e) => {
                self.registry.release(&head, slot);
                Err(e)
            }
        }
    }

    /// Ends a registered snapshot.
    pub(crate) fn end_snapshot(&self, slot: Slot) {
        self.registry.release(&self.map.load(), slot);
    }

    /// Looks at the reader table (clearing chunks of dead processes).
    pub(crate) fn scan_readers(&self) -> readers::Scan {
        readers::scan(&*self.backend, &self.map.load(), &self.registry)
    }

    /// The seq of the oldest snapshot open in any process (`u64::MAX` if
    /// none; 0 while a handle that cannot register its snapshots is open):
    /// every snapshot that begins from now on is at least as new as the
    /// published state, so a record no newer than this is the past of
    /// every snapshot there will be.
    pub(crate) fn oldest_snapshot(&self) -> u64 {
        if self.pinned() {
            return 0;
        }
        self.scan_readers()
            .snapshots
            .iter()
            .map(|s| s.seq)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether a handle that cannot register its snapshots is open (this
    /// one or another): the `Pin` lock.
    pub(crate) fn pinned(&self) -> bool {
        self.offline.is_some()
            || !self.backend.shared_writable()
            || self.backend.held_by_others(LockId::Pin).unwrap_or(true)
    }

    /// Whether this handle's waiters can be counted in the live header (so
    /// a publish wakes them): it trusts the header and can write it.
    pub(crate) fn counts_waiters(&self) -> bool {
        self.joined.load(Ordering::Acquire) && self.backend.shared_writable()
    }

    /// The current mapping (any mapping covers the fixed pages).
    pub(crate) fn head_map(&self) -> Arc<Mapping> {
        self.map.load_full()
    }
}

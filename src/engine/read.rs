//! The read path: from a key to its newest record visible in a snapshot.

use super::snapshot::SnapshotRecords;
use super::Shared;
use crate::cpu;
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{BadSlot, Probe, Quick, Records};
use crate::live::State;
use crate::log::{self, Record};
use crate::storage::{Fence, Mapping};

impl Shared {
    pub(crate) fn bad_slot(&self, b: BadSlot) -> Error {
        self.corrupted(
            b.target,
            format!(
                "index slot at {} names offset {}: {}",
                b.slot_off, b.target, b.why
            ),
        )
    }

    /// Reads the record at `off` (header checks only), as a corruption error
    /// if it is not one.
    pub(crate) fn header(
        &self,
        map: &Mapping,
        fence: &Fence,
        off: u64,
        what: &str,
    ) -> Result<Record> {
        log::read_header(map, fence, off, map.len())
            .map_err(|e| self.corrupted(off, format!("{what}: {e}")))
    }

    /// From the newest version `head` of a key, the version a snapshot at
    /// `seq` sees (`None`: the key did not exist then or was deleted).
    /// Walks the chain through `recs`; the record returned lies in `base`
    /// (everything a snapshot can see is inside its own mapping) and is
    /// fully verified there. `key` is `head`'s key (every caller probed
    /// for it or read it from `head`), so only an older version's key is
    /// compared.
    pub(crate) fn resolve(
        &self,
        recs: &impl Records,
        base: &Mapping,
        head: Record,
        seq: u64,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let mut rec = head;
        let walked = rec.seq > seq;
        while rec.seq > seq {
            if rec.prev == 0 {
                return Ok(None);
            }
            let older = recs
                .header(rec.prev)
                .map_err(|e| self.corrupted(rec.prev, format!("previous version: {e}")))?;
            if older.seq >= rec.seq || !matches!(older.kind, KIND_PUT | KIND_DELETE) {
                return Err(self.corrupted(
                    rec.prev,
                    format!(
                        "version chain from {} goes to a record that is not older",
                        rec.off
                    ),
                ));
            }
            rec = older;
        }
        if rec.kind == KIND_DELETE {
            return Ok(None);
        }
        log::check_crc(base, &rec).map_err(|e| self.corrupted(rec.off, e.to_string()))?;
        if walked && rec.key(base) != key {
            return Err(self.corrupted(rec.off, "version chain leads to another key's record"));
        }
        Ok(Some(rec))
    }

    /// The newest version of `key` in the index of `st`, if any: while the
    /// index moves, in the new table, else in the old one.
    pub(crate) fn head(
        &self,
        map: &Mapping,
        recs: &impl Records,
        st: &State,
        key: &[u8],
    ) -> Result<Option<Record>> {
        let hash = hash_key(self.seed, key);
        for table in st.tables() {
            if let Probe::Found { head, .. } = table
                .probe(map, recs, hash, key)
                .map_err(|b| self.bad_slot(b))?
            {
                return Ok(Some(head));
            }
        }
        Ok(None)
    }

    /// The value of `key` in the snapshot `st` whose mapping is `map`.
    pub(crate) fn lookup<'m>(
        &self,
        map: &'m Mapping,
        st: &State,
        fence: &Fence,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        // A short key is read once, a byte at a time, so that the hash's
        // wide loads never wait on the caller's narrow stores (see
        // `cpu::short_key_copy`).
        let copy;
        let key = if key.len() <= cpu::SHORT_KEY {
            copy = cpu::short_key_copy(key);
            &copy[..key.len()]
        } else {
            key
        };
        let hash = hash_key(self.seed, key);
        let quick = st.table().quick_lookup(map, fence, hash, key, st.seq);
        self.answer(quick, map, st, fence, key)
    }

    /// The value a quick lookup's answer gives: its own, or the checked
    /// path's for what it leaves (`ReadTxn::get_many` shares it).
    #[inline]
    pub(crate) fn answer<'m>(
        &self,
        quick: Quick<'m>,
        map: &'m Mapping,
        st: &State,
        fence: &Fence,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        match quick {
            Quick::Value(v) => Ok(Some(v)),
            Quick::Deleted => Ok(None),
            // While the index moves, the key may still be in the old table.
            Quick::Vacant if st.old_table().is_none() => Ok(None),
            Quick::Vacant | Quick::Checked => self.lookup_checked(map, st, fence, key),
        }
    }

    /// [`lookup`](Self::lookup) through every check, for what
    /// `Table::quick_lookup` leaves to it.
    #[cold]
    #[inline(never)]
    pub(crate) fn lookup_checked<'m>(
        &self,
        map: &'m Mapping,
        st: &State,
        fence: &Fence,
        key: &[u8],
    ) -> Result<Option<&'m [u8]>> {
        let recs = SnapshotRecords {
            shared: self,
            base: map,
            fence: *fence,
        };
        let Some(head) = self.head(map, &recs, st, key)? else {
            return Ok(None);
        };
        Ok(self
            .resolve(&recs, map, head, st.seq, key)?
            .map(|r| r.value(map)))
    }
}

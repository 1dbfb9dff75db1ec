//! The persistent hash index: an open-addressing table with linear probing,
//! living in the mapping. One `u64` slot per key (see
//! [`slot_encode`](crate::format::slot_encode)); slots are only ever changed
//! by single atomic stores, from empty to a record or from one record of a
//! key to a newer one, so a reader probing concurrently sees each slot
//! either old or new and never loses a key that its snapshot contains.
//! Slots are never emptied, so a probe chain never breaks under a reader.

use std::sync::atomic::Ordering;

use crate::format::*;
use crate::log::{self, Invalid, Record};
use crate::storage::{Fence, Mapping, Span};

/// Grow the table before it is fuller than this (numerator / 8).
pub(crate) const MAX_LOAD_EIGHTHS: u64 = 6;

/// Where a table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    pub off: u64,
    pub log2: u32,
}

/// What a probe for a key found.
pub(crate) enum Probe {
    /// The key's slot, and the record it points to (the newest version).
    Found { slot: u64, head: Record },
    /// The key is absent; this is the first empty slot of its chain.
    Vacant { slot: u64 },
}

/// Where a probe reads the records that slots name. A snapshot's own
/// mapping may end before records committed after it (the file grew), so
/// a snapshot reads those headers through a newer mapping; see
/// `engine::SnapshotRecords`.
pub(crate) trait Records {
    /// The header at `off`, with kind, lengths and bounds checked.
    fn header(&self, off: u64) -> Result<Record, Invalid>;
    /// Whether `rec`'s key is `key`.
    fn key_is(&self, rec: &Record, key: &[u8]) -> bool;
}

/// Records read from one mapping, behind the fence of the state whose
/// slots name them (the writer's records; a snapshot's are
/// `engine::SnapshotRecords`).
pub(crate) struct Fenced<'m> {
    pub map: &'m Mapping,
    pub fence: Fence,
}

impl Records for Fenced<'_> {
    fn header(&self, off: u64) -> Result<Record, Invalid> {
        log::read_header(self.map, &self.fence, off, self.map.len())
    }
    fn key_is(&self, rec: &Record, key: &[u8]) -> bool {
        rec.key_len == key.len() && rec.key(self.map) == key
    }
}

/// What [`Table::quick_lookup`] found.
pub(crate) enum Quick<'m> {
    /// The key's value, from a verified record.
    Value(&'m [u8]),
    /// A vacant slot ends the key's chain: it is not in this table.
    Vacant,
    /// The key's newest version in this table is a delete.
    Deleted,
    /// Not the common case: ask the checked path.
    Checked,
}

/// Where the first slot of `hash`'s chain with its tag leads
/// ([`Table::quick_find`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Find {
    /// An empty slot ends the chain first.
    Vacant,
    /// A slot with `hash`'s tag names a record here.
    Record(u64),
    /// The whole table was walked: ask the checked path.
    Checked,
}

impl Find {
    /// What [`Table::quick_lookup`] answers for this slot: the second half
    /// of a quick lookup, once the slot is known.
    #[inline]
    pub(crate) fn quick<'m>(
        self,
        map: &'m Mapping,
        fence: &Fence,
        key: &[u8],
        seq: u64,
    ) -> Quick<'m> {
        match self {
            Find::Record(off) => quick_record(map, fence, off, key, seq),
            Find::Vacant => Quick::Vacant,
            Find::Checked => Quick::Checked,
        }
    }
}

/// The value of the record at `off` if it is the common case (see
/// [`Table::quick_lookup`]).
#[inline]
fn quick_record<'m>(map: &'m Mapping, fence: &Fence, off: u64, key: &[u8], seq: u64) -> Quick<'m> {
    // The header's fields are read straight from the map (not copied into
    // a `RecordHeader` first), so each check waits only for its bytes.
    let Some(head) = Span::new(off, HEADER_SIZE as u64, fence).and_then(|s| map.bytes(s)) else {
        return Quick::Checked;
    };
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    // Bytes 4..12: val_len (4), key_len_m1 (2), kind, flags.
    let lengths = word(4);
    let val_len = lengths as u32 as usize;
    let shape = (lengths >> 32) & 0xff_ffff;
    let key_len_m1 = (key.len() as u64).wrapping_sub(1);
    let put = shape == key_len_m1 | (KIND_PUT as u64) << 16 && val_len <= MAX_VALUE_LEN;
    let delete = shape == key_len_m1 | (KIND_DELETE as u64) << 16 && val_len == 0;
    if !(put || delete) || word(12) & Le48::MAX > seq {
        return Quick::Checked;
    }
    // Only now, with the lengths known to be `key`'s, is the key borrowed:
    // a borrow past the record could reach log the writer is writing.
    let len = HEADER_SIZE + key.len() + val_len;
    // The padding too: the checked path wants the whole record inside.
    let Some(rec) = Span::new(off, align_record(len as u64), fence)
        .and_then(|s| map.bytes(s))
        .and_then(|r| r.get(..len))
    else {
        return Quick::Checked;
    };
    if rec[HEADER_SIZE..HEADER_SIZE + key.len()] != *key {
        return Quick::Checked;
    }
    if !put {
        // A delete: no CRC check (the checked path makes none either).
        return Quick::Deleted;
    }
    if record_crc_contiguous(rec) != word(0) as u32 {
        return Quick::Checked;
    }
    Quick::Value(&rec[HEADER_SIZE + key.len()..])
}

/// A slot whose record is unreadable: the index names bytes that are not a
/// record of any key.
pub(crate) struct BadSlot {
    pub slot_off: u64,
    pub target: u64,
    pub why: Invalid,
}

impl Table {
    pub fn cap(&self) -> u64 {
        1 << self.log2
    }
    pub fn bytes(&self) -> u64 {
        self.cap() * 8
    }
    pub fn slot_off(&self, i: u64) -> u64 {
        self.off + 8 * i
    }
    /// Starts loading the home slot of `hash` into the cache.
    pub fn prefetch(&self, map: &Mapping, hash: u64) {
        map.prefetch(self.slot_off(slot_home(hash, self.log2)));
    }
    /// Starts loading the record slot `i` names (nothing for an empty slot
    /// or one past the end): for loops that walk the slots in order, whose
    /// records are scattered.
    pub fn prefetch_record(&self, map: &Mapping, i: u64) {
        if i < self.cap() {
            let v = self.load(map, i);
            if slot_names_record(v) {
                map.prefetch(slot_offset(v));
            }
        }
    }
    pub fn load(&self, map: &Mapping, i: u64) -> u64 {
        map.load(self.slot_off(i), Ordering::Acquire)
    }
    pub fn store(&self, map: &Mapping, i: u64, v: u64) {
        map.store(self.slot_off(i), v, Ordering::Release)
    }

    /// Whether `used + extra` slots stay within the load limit.
    pub fn fits(&self, used: u64, extra: u64) -> bool {
        (used + extra) * 8 <= self.cap() * MAX_LOAD_EIGHTHS
    }

    /// Probes for `key`, reading slots from `map` and records from `recs`.
    /// Compares full keys only on tag matches.
    pub fn probe(
        &self,
        map: &Mapping,
        recs: &impl Records,
        hash: u64,
        key: &[u8],
    ) -> Result<Probe, BadSlot> {
        let mask = self.cap() - 1;
        let mut i = slot_home(hash, self.log2);
        for _ in 0..self.cap() {
            let v = self.load(map, i);
            if v == SLOT_EMPTY {
                return Ok(Probe::Vacant { slot: i });
            }
            if slot_matches(v, hash) {
                let target = slot_offset(v);
                // The record's next lines (the rest of a small value, which
                // a get checks the CRC of): fetched alongside its first.
                map.prefetch(target + 64);
                map.prefetch(target + 128);
                let bad = |why| BadSlot {
                    slot_off: self.slot_off(i),
                    target,
                    why,
                };
                let head = recs.header(target).map_err(bad)?;
                if !matches!(head.kind, KIND_PUT | KIND_DELETE) {
                    return Err(bad(Invalid::BadKind(head.kind)));
                }
                if recs.key_is(&head, key) {
                    return Ok(Probe::Found { slot: i, head });
                }
            }
            i = (i + 1) & mask;
        }
        // A full table: only a corrupt file gets here (the writer grows the
        // table long before), and the key is not in it.
        Err(BadSlot {
            slot_off: self.off,
            target: 0,
            why: Invalid::OutOfBounds,
        })
    }

    /// The first slot of `hash`'s chain that has its tag: the first half
    /// of [`quick_lookup`](Self::quick_lookup), for callers that overlap
    /// many lookups (`ReadTxn::get_many`).
    #[inline]
    pub fn quick_find(&self, map: &Mapping, hash: u64) -> Find {
        let mask = self.cap() - 1;
        let mut i = slot_home(hash, self.log2);
        for _ in 0..self.cap() {
            let v = self.load(map, i);
            if v == SLOT_EMPTY {
                return Find::Vacant;
            }
            if slot_matches(v, hash) {
                return Find::Record(slot_offset(v));
            }
            i = (i + 1) & mask;
        }
        Find::Checked
    }

    /// The common case of a lookup, in as few instructions as it can be.
    ///
    /// A random get waits on two cache misses, the slot and then the
    /// record, and the next get's slot load can start early only if
    /// everything this get does after its record arrives fits in the CPU's
    /// window with it. [`probe`](Self::probe) and `Shared::resolve` run
    /// ~520 instructions there (a `Result` and a copied `Record` per layer,
    /// error closures); this runs ~180, ~75 of them the CRC (docs/DESIGN.md,
    /// "Speed").
    ///
    /// It answers only for the head record of `key` in this table, inside
    /// `map`, visible at `seq`, a put or a delete of exactly `key` with
    /// lengths in bounds, whose CRC (for a put) matches; or for a vacant
    /// slot. Everything else — an older version to walk to, a tag shared
    /// with another key, a record past `map`, any failed check — is
    /// [`Quick::Checked`]: the checked path then answers or names what is
    /// corrupt. So it never answers differently from that path.
    #[inline]
    pub fn quick_lookup<'m>(
        &self,
        map: &'m Mapping,
        fence: &Fence,
        hash: u64,
        key: &[u8],
        seq: u64,
    ) -> Quick<'m> {
        self.quick_find(map, hash).quick(map, fence, key, seq)
    }

    /// Puts `v` into the first empty slot of `hash`'s chain, for a key known
    /// to be absent (rebuilding a table). Returns false if the table is full.
    pub fn insert_new(&self, map: &Mapping, hash: u64, v: u64) -> bool {
        let mask = self.cap() - 1;
        let mut i = slot_home(hash, self.log2);
        for _ in 0..self.cap() {
            if self.load(map, i) == SLOT_EMPTY {
                self.store(map, i, v);
                return true;
            }
            i = (i + 1) & mask;
        }
        false
    }
}

//! The write transaction's set of keys: its newest record of each key, and how a key is found.

use super::stage::Staged;
use super::WriteTxn;
use crate::format::*;
use crate::log::{self};
use crate::storage::{Fence, Mapping, Span};

/// A key written by the transaction: its newest record so far, with the
/// header fields commit needs (it applies them without reading the log
/// back: a pass over 140 MB of records for their headers was ~15% of a
/// 1M-key transaction). `WriteTxn::pending` keeps them in the order of
/// each key's first record.
#[derive(Clone, Copy)]
pub(super) struct Pending {
    pub(super) hash: u64,
    pub(super) off: u64,
    pub(super) prev: u64,
    pub(super) key_len: u32,
    pub(super) val_len: u32,
    pub(super) crc: u32,
    pub(super) kind: u8,
    pub(super) flags: u8,
}

impl Pending {
    /// The record's header as [`log::read_header`] would return it
    /// (`None` if `fence` does not admit it: never, for offsets the
    /// transaction reserved in its base state's log).
    pub(super) fn record(&self, seq: u64, fence: &Fence) -> Option<log::Record> {
        let size = record_size(self.key_len as usize, self.val_len as usize);
        Some(log::Record {
            span: Span::new(self.off, size, fence)?,
            off: self.off,
            kind: self.kind,
            seq,
            prev: self.prev,
            key_len: self.key_len as usize,
            val_len: self.val_len as usize,
            crc: self.crc,
            flags: self.flags,
        })
    }

    /// A put of a key no commit has (counted in `fresh_keys`: the keys
    /// this commit adds to the index).
    pub(super) fn fresh(&self) -> bool {
        self.kind == KIND_PUT && self.prev == 0 && self.flags & FLAG_MOVED == 0
    }
}

/// A commit's final records (`engine::Finals`), derived from its
/// `pending` one at a time as the index takes them.
pub(super) struct OwnFinals<'a> {
    pub(super) pending: &'a [Pending],
    pub(super) seq: u64,
    pub(super) fence: Fence,
}

impl crate::engine::Finals for OwnFinals<'_> {
    fn len(&self) -> usize {
        self.pending.len()
    }
    fn get(&self, i: usize) -> Result<(u64, log::Record), u64> {
        let p = &self.pending[i];
        p.record(self.seq, &self.fence)
            .map(|r| (p.hash, r))
            .ok_or(p.off)
    }
}

/// An entry of the transaction's table of keys: the high half of the
/// key's hash and the key's index in `pending`. Eight bytes: with whole
/// `Pending`s in the table, a transaction of 1M keys wrote a 32 MiB table
/// at random, and had to sort it by first write at commit.
#[derive(Clone, Copy)]
pub(super) struct KeyRef {
    pub(super) hash_hi: u32,
    pub(super) index: u32,
}

/// The hash the key table files a `KeyRef` under, from its high half alone
/// (the table rehashes from what it holds).
pub(super) fn key_table_hash(hash_hi: u32) -> u64 {
    (u64::from(hash_hi) << 32) | u64::from(hash_hi)
}

/// Whether a key table entry is `key` (whose hash's high half is `hi`):
/// the transaction's newest record of it is `key`'s.
pub(super) fn is_key<'a>(
    map: &'a Mapping,
    staged: &'a Staged,
    pending: &'a [Pending],
    hi: u32,
    key: &'a [u8],
) -> impl Fn(&KeyRef) -> bool + 'a {
    move |k| k.hash_hi == hi && staged.key_is(map, &pending[k.index as usize], key)
}

impl<'s> WriteTxn<'s> {
    /// While keys ascend, whether `key` is above every key so far (and so
    /// not in `pending`). Keys are at least a byte: above the empty start.
    pub(super) fn above_all(&self, key: &[u8]) -> bool {
        self.ascending
            .as_ref()
            .is_some_and(|last| key > last.as_slice())
    }

    /// The transaction's newest record of `key`, if it wrote one.
    pub(super) fn pending_of(&self, hash: u64, key: &[u8]) -> Option<Pending> {
        if self.above_all(key) {
            return None;
        }
        if self.ascending.is_some() {
            self.build_key_table();
        }
        let hi = (hash >> 32) as u32;
        let eq = is_key(&self.map, &self.staged, &self.pending, hi, key);
        self.key_table
            .borrow()
            .find(key_table_hash(hi), eq)
            .map(|k| self.pending[k.index as usize])
    }

    /// Files the keys of `pending` not yet in the key table (while
    /// `ascending` holds, all of them are distinct).
    pub(super) fn build_key_table(&self) {
        let from = self.filed.get();
        if from == self.pending.len() {
            return;
        }
        let mut table = self.key_table.borrow_mut();
        table.reserve(self.pending.len() - from, |k| key_table_hash(k.hash_hi));
        for (index, p) in self.pending.iter().enumerate().skip(from) {
            let hash_hi = (p.hash >> 32) as u32;
            // Below u32::MAX: `append_flags` checks.
            let k = KeyRef {
                hash_hi,
                index: index as u32,
            };
            table.insert_unique(key_table_hash(hash_hi), k, |k| key_table_hash(k.hash_hi));
        }
        self.filed.set(self.pending.len());
    }
}

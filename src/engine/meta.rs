//! Meta pages: choosing the newest valid one, and the state they record.

use super::corrupted;
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::Table;
use crate::live::State;
use crate::log::Cursor;
use crate::storage::{Fence, Mapping};
use bytemuck::Zeroable;
use std::path::Path;

impl State {
    pub(crate) fn table(&self) -> Table {
        Table {
            off: self.index_off,
            log2: self.index_log2 as u32,
        }
    }

    /// The table the index is moving from, while it moves.
    pub(crate) fn old_table(&self) -> Option<Table> {
        (self.old_index_log2 != 0).then_some(Table {
            off: self.old_index_off,
            log2: self.old_index_log2 as u32,
        })
    }

    /// The index tables this state names: the table, then the one it is
    /// moving from while a move lasts.
    pub(crate) fn tables(&self) -> impl Iterator<Item = Table> {
        [Some(self.table()), self.old_table()].into_iter().flatten()
    }

    /// What no record of this state can overlap: the fixed pages and its
    /// index tables. Offsets from the file are checked against it before
    /// any byte there is borrowed.
    pub(crate) fn fence(&self) -> Fence {
        let range = |off: u64, log2: u64| {
            let bytes = u32::try_from(log2)
                .ok()
                .and_then(|l| 1u64.checked_shl(l))
                .and_then(|cap| cap.checked_mul(8));
            (off, bytes.unwrap_or(u64::MAX))
        };
        let old = match self.old_index_log2 {
            0 => (0, 0),
            log2 => range(self.old_index_off, log2),
        };
        Fence::new([range(self.index_off, self.index_log2), old])
    }

    pub(super) fn cursor(&self) -> Cursor {
        Cursor {
            pos: self.tail,
            end: self.tail_end,
        }
    }

    pub(super) fn from_meta(m: &Meta, file_len: u64) -> State {
        State {
            seq: m.seq.get(),
            tail: m.tail.get(),
            tail_end: m.tail_end.get(),
            alloc_end: m.alloc_end.get(),
            index_off: m.index_offset.get(),
            index_log2: m.index_log2.get() as u64,
            index_used: m.index_used.get(),
            key_count: m.key_count.get(),
            live_bytes: m.live_bytes.get(),
            log_bytes: m.log_bytes.get(),
            file_len,
            synced_tail: m.tail.get(),
            ckpt_log_bytes: m.log_bytes.get(),
            meta_gen: m.generation.get(),
            meta_clean: m.is_clean() as u64,
            old_index_off: m.old_index_offset.get(),
            old_index_log2: m.old_index_log2.get() as u64,
            migrate_next: m.migrate_next.get(),
            migrate_left: m.migrate_left.get(),
            last_compact_seq: m.last_compact_seq.get(),
            retired_total: m.retired_total.get(),
            moved_total: m.moved_total.get(),
            ckpt_seq: m.seq.get(),
            history_seq: m.history_seq.get(),
            ..State::default()
        }
    }

    pub(super) fn to_meta(self, seed: u64, generation: u64, clean: bool, space: SpaceRef) -> Meta {
        let mut m = Meta::zeroed();
        m.magic = MAGIC;
        m.version = Le32::new(FORMAT_VERSION);
        m.page_size = Le32::new(PAGE_SIZE as u32);
        m.hash_id = Le32::new(HASH_XXH3);
        m.flags = Le32::new(if clean { META_CLEAN } else { 0 });
        m.hash_seed = Le64::new(seed);
        m.generation = Le64::new(generation);
        m.seq = Le64::new(self.seq);
        m.tail = Le64::new(self.tail);
        m.tail_end = Le64::new(self.tail_end);
        m.alloc_end = Le64::new(self.alloc_end);
        m.log_first = Le64::new(DATA_START);
        m.index_offset = Le64::new(self.index_off);
        m.index_log2 = Le32::new(self.index_log2 as u32);
        m.index_used = Le64::new(self.index_used);
        m.key_count = Le64::new(self.key_count);
        m.live_bytes = Le64::new(self.live_bytes);
        m.log_bytes = Le64::new(self.log_bytes);
        m.old_index_offset = Le64::new(self.old_index_off);
        m.old_index_log2 = Le32::new(self.old_index_log2 as u32);
        m.migrate_next = Le64::new(self.migrate_next);
        m.space_at = Le64::new(space.at);
        m.space_count = Le32::new(space.count);
        m.space_crc = Le32::new(space.crc);
        m.history_seq = Le64::new(self.history_seq);
        m.migrate_left = Le64::new(self.migrate_left);
        m.last_compact_seq = Le64::new(self.last_compact_seq);
        m.retired_total = Le64::new(self.retired_total);
        m.moved_total = Le64::new(self.moved_total);
        m.seal();
        m
    }

    /// Checks that every offset in the state lies where the format allows,
    /// so that nothing derived from it can index outside the file. `what`
    /// and `at` name the source (a meta page or the live header).
    pub(super) fn validate(&self, path: &Path, at: u64, what: &str) -> Result<()> {
        let t = self.table();
        let bad = |msg: &str| Err(corrupted(path, at, format!("{what}: {msg}")));
        if !(MIN_INDEX_LOG2 as u64..=40).contains(&self.index_log2) {
            return bad("index size out of range");
        }
        if self.alloc_end > self.file_len || self.file_len > MAX_FILE_LEN {
            return bad("allocated space extends past the end of the file");
        }
        if self.tail % RECORD_ALIGN != 0
            || self.tail < DATA_START
            || self.tail > self.tail_end
            || self.tail_end - self.tail < NEXT_RECORD_SIZE
            || self.tail_end > self.alloc_end
        {
            return bad("log tail outside its extent");
        }
        if t.off % PAGE_SIZE != 0
            || t.off < DATA_START
            || t.off
                .checked_add(t.bytes())
                .is_none_or(|e| e > self.alloc_end)
        {
            return bad("index table outside the file");
        }
        if self.index_used > t.cap() {
            return bad("index claims more used slots than it has");
        }
        if let Some(o) = self.old_table() {
            // The size first: `bytes()` and `cap()` overflow past 2^61.
            let inside = self.old_index_log2 <= 40
                && o.off % PAGE_SIZE == 0
                && o.off >= DATA_START
                && o.off
                    .checked_add(o.bytes())
                    .is_some_and(|e| e <= self.alloc_end)
                && self.migrate_next <= o.cap();
            if !inside {
                return bad("old index table outside the file");
            }
        }
        Ok(())
    }
}

/// Where a checkpoint's extent table was written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpaceRef {
    pub at: u64,
    pub count: u32,
    pub crc: u32,
}

/// Reads both meta pages and picks the newest valid one.
pub(crate) fn pick_meta(path: &Path, map: &Mapping) -> Result<Meta> {
    let mut checks = Vec::new();
    for off in META_OFFSETS {
        let mut b = [0u8; META_SIZE];
        map.read_words(off, &mut b);
        checks.push((off, check_meta(&b)));
    }
    if let Some((_, MetaCheck::NewerVersion(found))) = checks
        .iter()
        .find(|(_, c)| matches!(c, MetaCheck::NewerVersion(_)))
    {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: *found,
            supported: FORMAT_VERSION,
        });
    }
    let best = checks
        .iter()
        .filter_map(|(_, c)| match c {
            MetaCheck::Ok(m) => Some(**m),
            _ => None,
        })
        .max_by_key(|m| m.generation.get());
    if let Some(m) = best {
        return Ok(m);
    }
    if checks.iter().all(|(_, c)| matches!(c, MetaCheck::BadMagic)) {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "bad magic at offset 0".into(),
        });
    }
    let why: Vec<String> = checks
        .iter()
        .map(|(off, c)| {
            let what = match c {
                MetaCheck::BadMagic => "bad magic".to_string(),
                MetaCheck::BadVersion(v) => format!("unknown format version {v}"),
                MetaCheck::BadParams(p) => p.to_string(),
                MetaCheck::BadChecksum => "checksum mismatch".to_string(),
                MetaCheck::NewerVersion(_) | MetaCheck::Ok(_) => unreachable!("handled above"),
            };
            format!("meta page at {off}: {what}")
        })
        .collect();
    Err(corrupted(
        path,
        0,
        format!("no valid meta page ({})", why.join("; ")),
    ))
}

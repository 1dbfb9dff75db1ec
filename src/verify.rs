//! The checker behind [`Store::verify`](crate::Store::verify), and stats.
//! It collects every problem instead of stopping at the first.

use std::collections::HashSet;
use std::fmt;

use crate::engine::{pick_meta, Shared};
use crate::format::*;
use crate::index::{Fenced, Probe};
use crate::live::State;
use crate::log;
use crate::space::{Space, Use};
use crate::storage::Mapping;

/// Counters of one committed state, from [`Store::stats`](crate::Store::stats).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
#[must_use]
pub struct Stats {
    /// The newest commit.
    pub seq: u64,
    /// Keys with a value.
    pub keys: u64,
    /// Bytes of the records holding current values.
    pub live_bytes: u64,
    /// Bytes of every record ever committed (current and superseded,
    /// including those compaction reclaimed since).
    pub log_bytes: u64,
    /// Bytes of the log extents in use, written so far.
    pub log_extent_bytes: u64,
    /// `log_extent_bytes - live_bytes`: superseded records, deletes,
    /// commit records — what compaction can reclaim.
    pub dead_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// Disk space the file holds (its allocated blocks): below
    /// `file_bytes` by the free space whose blocks were given back (punched
    /// holes; all of it but the free range the log takes next, up to one
    /// log extent, which is kept written for it), above it by blocks
    /// reserved past its end. 0 where unknown.
    pub allocated_bytes: u64,
    /// `file_bytes / live_bytes` (0 when there is no live data).
    pub space_amplification: f64,
    /// Log extents in use (segments).
    pub segments_in_use: u64,
    /// Free ranges, ready for reuse.
    pub segments_free: u64,
    /// Bytes in them.
    pub free_bytes: u64,
    /// Extents compaction emptied that wait for old snapshots (or the next
    /// checkpoint) before they are reused.
    pub segments_retired: u64,
    /// Bytes in them.
    pub retired_bytes: u64,
    /// The last commit that retired an extent (`None`: never).
    pub last_compaction: Option<u64>,
    /// Bytes of log extents retired since the store was created.
    pub reclaimed_total: u64,
    /// Bytes of records compaction copied since the store was created.
    pub moved_total: u64,
    /// `ReadTxn::changes_since` can list changes after this commit (older
    /// ones were reclaimed).
    pub history_from: u64,
    /// The index is moving to a new table: slots of the old one still to
    /// move (0 when it is not moving).
    pub index_moving: u64,
    /// Slots in the index table.
    pub index_slots: u64,
    /// Slots in use.
    pub index_used: u64,
    /// `index_used / index_slots`.
    pub index_load: f64,
    /// Snapshots registered in the reader table, in every process (this
    /// handle's included).
    pub open_snapshots: u64,
    /// The oldest of them (`None` when none is open).
    pub oldest_snapshot: Option<u64>,
    /// A handle that cannot register its snapshots (it could not open the
    /// file for writing, or opened with no live writer) is open: while it
    /// is, no space may be reused.
    pub unregistered_readers: bool,
}

pub(crate) fn stats(st: &State, space: &Space) -> Stats {
    // Saturating: a caller may pass a state it has not validated (a
    // damaged file's); figures from it are wrong, never a panic.
    let slots = u32::try_from(st.index_log2)
        .ok()
        .and_then(|l| 1u64.checked_shl(l))
        .unwrap_or(u64::MAX);
    let t = space.totals();
    let in_use: u64 = space
        .list
        .iter()
        .filter(|e| matches!(e.use_, Use::Log { .. }))
        .map(|e| e.len)
        .sum::<u64>()
        .saturating_sub(st.tail_end.saturating_sub(st.tail));
    Stats {
        seq: st.seq,
        keys: st.key_count,
        live_bytes: st.live_bytes,
        log_bytes: st.log_bytes,
        log_extent_bytes: in_use,
        dead_bytes: in_use.saturating_sub(st.live_bytes),
        file_bytes: st.file_len,
        segments_in_use: t.log_extents,
        segments_free: t.free_ranges,
        free_bytes: t.free_bytes,
        segments_retired: t.retired_extents,
        retired_bytes: t.retired_bytes,
        last_compaction: (st.last_compact_seq > 0).then_some(st.last_compact_seq),
        reclaimed_total: st.retired_total,
        moved_total: st.moved_total,
        history_from: st.history_seq,
        index_moving: st
            .old_table()
            .map_or(0, |o| o.cap().saturating_sub(st.migrate_next)),
        space_amplification: if st.live_bytes == 0 {
            0.0
        } else {
            st.file_len as f64 / st.live_bytes as f64
        },
        index_slots: slots,
        index_used: st.index_used,
        index_load: st.index_used as f64 / slots as f64,
        ..Stats::default()
    }
}

/// One thing [`Store::verify`](crate::Store::verify) found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// File offset of the damaged structure.
    pub offset: u64,
    /// What is wrong there.
    pub what: String,
}

/// What [`Store::verify`](crate::Store::verify) checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct VerifyReport {
    /// The commit that was checked.
    pub seq: u64,
    /// Commits walked in the log.
    pub commits: u64,
    /// Put and delete records whose checksums were verified.
    pub records: u64,
    /// Keys with a value, counted from the index.
    pub keys: u64,
    /// Every problem found, in file order within each check.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the store passed every check.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "offset {}: {}", p.offset, p.what)?;
        }
        write!(
            f,
            "checked commit {}: {} commits, {} records, {} keys; {} problems found",
            self.seq,
            self.commits,
            self.records,
            self.keys,
            self.problems.len()
        )
    }
}

pub(crate) fn verify(shared: &Shared, map: &Mapping, st: &State) -> VerifyReport {
    let mut r = VerifyReport {
        seq: st.seq,
        ..VerifyReport::default()
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut push = |offset, what| problems.push(Problem { offset, what });

    // Meta pages: a copy with the magic but a bad checksum is damage (the
    // other copy is in use, so the store still opens).
    for off in META_OFFSETS {
        let mut b = [0u8; META_SIZE];
        map.read_words(off, &mut b);
        match check_meta(&b) {
            MetaCheck::Ok(_) | MetaCheck::BadMagic => {}
            MetaCheck::BadChecksum => push(off, "meta page checksum mismatch".into()),
            MetaCheck::BadParams(p) => push(off, format!("meta page: {p}")),
            MetaCheck::BadVersion(v) | MetaCheck::NewerVersion(v) => {
                push(off, format!("meta page: format version {v}"))
            }
        }
    }
    if let Err(e) = pick_meta(&shared.path, map) {
        push(0, e.to_string());
    }

    // The log: every record of every log extent, up to the snapshot's
    // tail, reads back with its checksum.
    // The extent table of this very state (if a commit came meanwhile,
    // the extent checks are skipped: verify a quiet store for all of them).
    let space = match shared.space_of(map) {
        Ok((cur, s)) if cur.seq == st.seq => s,
        Ok(_) => Space::default(),
        Err(e) => {
            push(SPACE_WORKING[0], e.to_string());
            Space::default()
        }
    };
    let mut records = HashSet::new();
    let mut live = 0u64;
    for e in &space.list {
        let Use::Log {
            live: l, sealed, ..
        } = e.use_
        else {
            continue;
        };
        live += l;
        let holds_tail = (e.off..e.end()).contains(&st.tail);
        for item in log::extent_records(map, st.fence(), e.off, e.end(), st.tail) {
            let rec = match item {
                Ok(rec) if rec.seq <= st.seq => rec,
                Ok(rec) => {
                    push(
                        rec.off,
                        format!(
                            "record of commit {} in a log extent of commit {}",
                            rec.seq, st.seq
                        ),
                    );
                    break;
                }
                Err((pos, err)) => {
                    if sealed || holds_tail {
                        push(pos, format!("log extent {}+{}: {err}", e.off, e.len));
                    }
                    break;
                }
            };
            match rec.kind {
                KIND_PUT | KIND_DELETE => {
                    r.records += 1;
                    records.insert(rec.off);
                }
                KIND_COMMIT => r.commits += 1,
                _ => {}
            }
        }
    }
    if !space.list.is_empty() && live != st.live_bytes {
        push(
            SPACE_WORKING[0],
            format!(
                "log extents hold {live} live bytes but the store counts {}",
                st.live_bytes
            ),
        );
    }

    // The index: every slot names a record, is where a probe for its key
    // lands, and the keys it resolves to add up to the key count. While
    // the index moves, a key of the old table counts if the new one does
    // not have it.
    let fence = st.fence();
    let recs = Fenced { map, fence };
    for (n, table) in st.tables().enumerate() {
        for i in 0..table.cap() {
            let v = table.load(map, i);
            let slot_off = table.slot_off(i);
            if !slot_names_record(v) {
                if v != SLOT_EMPTY && v != SLOT_FORGOTTEN {
                    push(
                        slot_off,
                        format!(
                            "index slot {v:#018x} has tag 0 but is neither empty nor forgotten"
                        ),
                    );
                }
                continue;
            }
            let target = slot_offset(v);
            if !space.list.is_empty() && !records.contains(&target) {
                push(
                    slot_off,
                    format!("index slot names offset {target}, which is not a record in the log"),
                );
                continue;
            }
            let head = match shared.header(map, &fence, target, "index slot target") {
                Ok(h) => h,
                Err(e) => {
                    push(slot_off, e.to_string());
                    continue;
                }
            };
            let key = head.key(map);
            let hash = hash_key(shared.seed, key);
            if !slot_matches(v, hash) {
                push(slot_off, "index slot tag does not match its key".into());
                continue;
            }
            match table.probe(map, &recs, hash, key) {
                Ok(Probe::Found { slot, .. }) if slot == i => {}
                Ok(_) => push(
                    slot_off,
                    "key is unreachable from its home slot or indexed twice".into(),
                ),
                Err(b) => push(b.slot_off, shared.bad_slot(b).to_string()),
            }
            if n == 1
                && matches!(
                    st.table().probe(map, &recs, hash, key),
                    Ok(Probe::Found { .. })
                )
            {
                continue; // listed from the new table
            }
            match shared.resolve(&recs, map, head, st.seq, key) {
                Ok(Some(_)) => r.keys += 1,
                Ok(None) => {}
                Err(e) => push(slot_off, e.to_string()),
            }
        }
    }
    if r.keys != st.key_count {
        push(
            crate::format::LIVE_OFFSET,
            format!(
                "index holds {} keys but the store counts {}",
                r.keys, st.key_count
            ),
        );
    }
    r.problems = problems;
    r
}

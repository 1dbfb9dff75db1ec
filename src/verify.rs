//! The checker behind [`Store::verify`](crate::Store::verify), and stats.
//! It collects every problem instead of stopping at the first.

use std::collections::HashSet;
use std::fmt;

use crate::engine::{pick_meta, Shared};
use crate::format::*;
use crate::index::Probe;
use crate::live::State;
use crate::log::{self, Cursor, ExtentRules};
use crate::storage::Mapping;

/// Counters of one committed state, from [`Store::stats`](crate::Store::stats).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The newest commit.
    pub seq: u64,
    /// Keys with a value.
    pub keys: u64,
    /// Bytes of the records holding current values.
    pub live_bytes: u64,
    /// Bytes of every committed record (current and superseded).
    pub log_bytes: u64,
    /// `log_bytes - live_bytes`: space compaction could reclaim.
    pub dead_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// `file_bytes / live_bytes` (0 when there is no live data).
    pub space_amplification: f64,
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

pub(crate) fn stats(st: &State) -> Stats {
    let slots = 1u64 << st.index_log2;
    Stats {
        seq: st.seq,
        keys: st.key_count,
        live_bytes: st.live_bytes,
        log_bytes: st.log_bytes,
        dead_bytes: st.log_bytes.saturating_sub(st.live_bytes),
        file_bytes: st.file_len,
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
pub struct Problem {
    /// File offset of the damaged structure.
    pub offset: u64,
    /// What is wrong there.
    pub what: String,
}

/// What [`Store::verify`](crate::Store::verify) checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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

    // The log, from its first record to the snapshot's commit.
    let table = st.table();
    let rules = ExtentRules {
        file_len: st.file_len.min(map.len()),
        forbidden: (table.off, table.off + table.bytes()),
    };
    let mut cur = Cursor {
        pos: DATA_START,
        end: DATA_START + LOG_EXTENT,
    };
    let mut records = HashSet::new();
    let mut seq = 0;
    while seq < st.seq {
        match log::scan_commit(map, cur, seq + 1, &rules) {
            Some(c) => {
                r.commits += 1;
                r.records += c.records.len() as u64;
                records.extend(c.records.iter().map(|x| x.off));
                cur = c.after;
                seq = c.seq;
            }
            None => {
                let why = match log::read_record(map, cur.pos, cur.end) {
                    Err(e) => e.to_string(),
                    Ok(rec) if rec.seq != seq + 1 => {
                        format!(
                            "expected a record of commit {}, found commit {}",
                            seq + 1,
                            rec.seq
                        )
                    }
                    Ok(_) => format!("commit {} is incomplete or inconsistent", seq + 1),
                };
                push(
                    cur.pos,
                    format!("log ends at commit {seq} of {}: {why}", st.seq),
                );
                break;
            }
        }
    }
    let log_complete = seq == st.seq;
    if log_complete && cur.pos != st.tail {
        push(
            cur.pos,
            format!(
                "log ends at {} but the store's tail is {}",
                cur.pos, st.tail
            ),
        );
    }

    // The index: every slot names a record, is where a probe for its key
    // lands, and the keys it resolves to add up to the key count.
    for i in 0..table.cap() {
        let v = table.load(map, i);
        if v == SLOT_EMPTY {
            continue;
        }
        let slot_off = table.slot_off(i);
        let target = slot_offset(v);
        if log_complete && !records.contains(&target) {
            push(
                slot_off,
                format!("index slot names offset {target}, which is not a record"),
            );
            continue;
        }
        let head = match shared.header(map, target, "index slot target") {
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
        match table.probe(map, map, hash, key) {
            Ok(Probe::Found { slot, .. }) if slot == i => {}
            Ok(_) => push(
                slot_off,
                "key is unreachable from its home slot or indexed twice".into(),
            ),
            Err(b) => push(b.slot_off, shared.bad_slot(b).to_string()),
        }
        match shared.resolve(map, map, head, st.seq, key) {
            Ok(Some(_)) => r.keys += 1,
            Ok(None) => {}
            Err(e) => push(slot_off, e.to_string()),
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

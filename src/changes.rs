//! What commits changed: [`ReadTxn::changes_since`](crate::ReadTxn::changes_since).
//!
//! The log already holds it. A commit record ends exactly where the next
//! transaction starts, and names its own transaction's first record, so
//! the commits after `from` are found by walking back from the snapshot's
//! tail, one commit record per step, and then listed forward, each
//! transaction's records in log order (following next-extent records).

use std::collections::HashMap;
use std::vec;

use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::format::*;
use crate::live::State;
use crate::log::{self, ExtentRules, Record};
use crate::storage::{Fence, Mapping};

/// The changes of the commits after some seq, up to a snapshot; see
/// [`ReadTxn::changes_since`](crate::ReadTxn::changes_since). Each item is
/// `(seq, key, Some(value))` for a put and `(seq, key, None)` for a
/// delete, borrowed from the mapped file.
pub struct Changes<'t> {
    shared: &'t Shared,
    map: &'t Mapping,
    /// Where the snapshot's log may lie: a next record naming anything
    /// else is corrupt, and nothing outside it is borrowed.
    rules: ExtentRules,
    /// Commits still to list, oldest first: (seq, first record, records).
    commits: vec::IntoIter<(u64, u64, u64)>,
    /// The current commit's changes, in order.
    current: vec::IntoIter<Record>,
    seq: u64,
    failed: bool,
}

/// One commit found walking back: its seq, its first record and how many
/// records it has (next records included).
fn commit_before(
    shared: &Shared,
    map: &Mapping,
    fence: &Fence,
    end: u64,
    seq: u64,
) -> Result<(u64, u64)> {
    let at = end
        .checked_sub(COMMIT_RECORD_SIZE)
        .filter(|&a| a >= DATA_START);
    let bad = |off: u64, what: String| shared.corrupted(off, what);
    let Some(at) = at else {
        return Err(bad(
            end,
            format!("no commit record before {end} for commit {seq}"),
        ));
    };
    let rec = log::read_record(map, fence, at, end)
        .map_err(|e| bad(at, format!("commit record of commit {seq}: {e}")))?;
    let body = rec
        .commit_body(map)
        .filter(|_| rec.seq == seq)
        .ok_or_else(|| bad(at, format!("expected the commit record of commit {seq}")))?;
    let start = body.txn_start.get();
    if start < DATA_START || start % RECORD_ALIGN != 0 {
        return Err(bad(
            at,
            format!("commit {seq} starts at {start}, outside the log"),
        ));
    }
    Ok((start, body.n_records.get()))
}

impl<'t> Changes<'t> {
    pub(crate) fn new(
        shared: &'t Shared,
        map: &'t Mapping,
        st: &State,
        from: u64,
    ) -> Result<Changes<'t>> {
        let oldest = st.history_seq;
        if from < oldest {
            return Err(Error::HistoryReclaimed {
                path: shared.path.clone(),
                requested: from,
                oldest,
            });
        }
        let mut commits = Vec::new();
        let (mut seq, mut end) = (st.seq, st.tail);
        let fence = st.fence();
        while seq > from {
            let (start, n) = commit_before(shared, map, &fence, end, seq)?;
            commits.push((seq, start, n));
            end = start;
            seq -= 1;
        }
        commits.reverse();
        Ok(Changes {
            shared,
            map,
            rules: ExtentRules {
                file_len: st.file_len.min(map.len()),
                fence,
            },
            commits: commits.into_iter(),
            current: Vec::new().into_iter(),
            seq: 0,
            failed: false,
        })
    }

    /// The changes of one transaction: the last record of each key, keys
    /// in the order they were first written (the order commit applies).
    fn load(&self, seq: u64, start: u64, n_records: u64) -> Result<Vec<Record>> {
        let map = self.map;
        let mut order: Vec<Record> = Vec::new();
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut pos = start;
        let fence = &self.rules.fence;
        // One more than the records it has: the commit record itself.
        for _ in 0..=n_records {
            let rec = log::read_record(map, fence, pos, map.len()).map_err(|e| {
                self.shared
                    .corrupted(pos, format!("record of commit {seq}: {e}"))
            })?;
            if rec.seq != seq {
                return Err(self.shared.corrupted(
                    pos,
                    format!("record of commit {} inside commit {seq}", rec.seq),
                ));
            }
            match rec.kind {
                KIND_COMMIT => return Ok(order),
                KIND_NEXT => {
                    let next = rec.next_body(map).map(|b| (b.offset.get(), b.len.get()));
                    pos = match next {
                        Some((off, len)) if self.rules.allows(off, len) => off,
                        _ => {
                            return Err(self.shared.corrupted(
                                pos,
                                format!("next record of commit {seq} names no valid extent"),
                            ))
                        }
                    };
                    continue;
                }
                // Compaction's copies, retirements and forgotten deletes
                // change no value.
                KIND_RETIRE | KIND_INDEX | KIND_FORGET => {
                    pos += rec.size();
                    continue;
                }
                _ if rec.moved() => {
                    pos += rec.size();
                    continue;
                }
                _ => {}
            }
            let key = rec.key(map);
            match last.get(key) {
                Some(&i) => order[i] = rec,
                None => {
                    last.insert(key, order.len());
                    order.push(rec);
                }
            }
            pos += rec.size();
        }
        Err(self.shared.corrupted(
            start,
            format!("commit {seq} has more records than its commit record says"),
        ))
    }
}

impl<'t> Iterator for Changes<'t> {
    type Item = Result<(u64, &'t [u8], Option<&'t [u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(rec) = self.current.next() {
                let map = self.map;
                let value = (rec.kind == KIND_PUT).then(|| rec.value(map));
                return Some(Ok((self.seq, rec.key(map), value)));
            }
            let (seq, start, n) = self.commits.next()?;
            match self.load(seq, start, n) {
                Ok(recs) => {
                    self.seq = seq;
                    self.current = recs.into_iter();
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

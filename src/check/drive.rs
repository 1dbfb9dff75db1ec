//! Driving a store and the model through a sequence of operations,
//! checking every result.

use super::{check_view, fail, key_of, long_key, value_of, History, Model, Op};
use crate::sim::SimDisk;
use crate::{Durability, Error, Options, ReadTxn, Store, WriteTxn};

/// Runs `ops` against a store and the model. With `disk`, the store lives
/// on that simulated disk; otherwise on a fresh simulated disk.
/// `on_boundary` is called after each operation that leaves no write
/// transaction open, with the disk, the history so far and the step.
pub(super) fn drive(
    ops: &[Op],
    disk: &SimDisk,
    history: &mut History,
    thorough: bool,
    mut on_boundary: impl FnMut(&SimDisk, &History, usize),
) -> Result<(), String> {
    let mut i = 0;
    while i < ops.len() {
        let store = Options::new()
            .open_sim(disk)
            .map_err(|e| fail(i, &ops[i], format!("open: {e}")))?;
        let (next, poisoned) =
            drive_session(ops, i, &store, disk, history, thorough, &mut on_boundary)?;
        i = next;
        if poisoned {
            // Dropped, not closed: a poisoned handle cannot checkpoint.
            drop(store);
            continue;
        }
        store
            .close()
            .map_err(|e| format!("close before step {i}: {e}"))?;
        let seq = history.states.len() as u64 - 1;
        history.durable.push((disk.flush_count(), seq));
    }
    Ok(())
}

/// Runs ops from `start` until a `Reopen` or a `FailFlush` (returns the
/// index after it, and whether the handle is poisoned) or the end.
fn drive_session(
    ops: &[Op],
    start: usize,
    store: &Store,
    disk: &SimDisk,
    history: &mut History,
    thorough: bool,
    on_boundary: &mut impl FnMut(&SimDisk, &History, usize),
) -> Result<(usize, bool), String> {
    let mut txn: Option<(WriteTxn<'_>, Model)> = None;
    let mut snaps: Vec<(ReadTxn<'_>, Model)> = Vec::new();
    let committed = |h: &History| h.states.last().cloned().unwrap_or_default();
    for (step, op) in ops.iter().enumerate().skip(start) {
        let err = |what: String| fail(step, op, what);
        match op {
            Op::Put { key, .. } | Op::BigPut { key, .. } => {
                let len = match op {
                    Op::Put { len, .. } => (*len % 512) as usize,
                    Op::BigPut { len, .. } => (300 << 10) + *len as usize,
                    _ => unreachable!(),
                };
                if txn.is_none() {
                    let t = store.begin_write().map_err(|e| err(e.to_string()))?;
                    txn = Some((t, committed(history)));
                }
                let (t, m) = txn.as_mut().expect("just opened");
                let v = value_of(step, len);
                t.put(key_of(*key), &v).map_err(|e| err(e.to_string()))?;
                m.insert(key_of(*key), v);
            }
            Op::LongKey { key, len } => {
                if txn.is_none() {
                    let t = store.begin_write().map_err(|e| err(e.to_string()))?;
                    txn = Some((t, committed(history)));
                }
                let (t, m) = txn.as_mut().expect("just opened");
                let (k, vlen) = long_key(*key, *len);
                let v = value_of(step, vlen);
                t.put(&k, &v).map_err(|e| err(e.to_string()))?;
                m.insert(k, v);
            }
            Op::Changes { back } => {
                if txn.is_none() {
                    let latest = history.states.len() as u64 - 1;
                    let from = latest.saturating_sub(u64::from(back % 4) + 1);
                    let snap = store.begin_read().map_err(|e| err(e.to_string()))?;
                    match snap.changes_since(from) {
                        Err(Error::HistoryReclaimed { .. }) => {}
                        Err(e) => return Err(err(format!("changes_since({from}): {e}"))),
                        Ok(changes) => {
                            let mut m = history.states[from as usize].clone();
                            let mut last = from;
                            for c in changes {
                                let (seq, k, v) = c.map_err(|e| err(format!("changes: {e}")))?;
                                if seq <= from || seq > latest || seq < last {
                                    return Err(err(format!("change of seq {seq} after {last}")));
                                }
                                last = seq;
                                match v {
                                    Some(v) => m.insert(k.to_vec(), v.to_vec()),
                                    None => m.remove(k),
                                };
                            }
                            if m != committed(history) {
                                return Err(err(format!(
                                    "the changes since {from}, replayed, do not give commit {latest}"
                                )));
                            }
                        }
                    }
                }
            }
            Op::SecondHandle | Op::ReadOnlyHandle => {
                let read_only = *op == Op::ReadOnlyHandle;
                let other = Options::new()
                    .read_only(read_only)
                    .open_sim(disk)
                    .map_err(|e| err(format!("second handle: {e}")))?;
                if read_only && !matches!(other.put(b"k", b"v"), Err(Error::ReadOnly { .. })) {
                    return Err(err("a read-only handle took a write".into()));
                }
                let snap = other.begin_read().map_err(|e| err(e.to_string()))?;
                check_view(&snap, &committed(history))
                    .map_err(|e| err(format!("second handle: {e}")))?;
                drop(snap);
                other
                    .close()
                    .map_err(|e| err(format!("second handle close: {e}")))?;
            }
            Op::Backup => {
                if txn.is_none() {
                    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let dir = std::env::temp_dir()
                        .join(format!("mapkv-check-{}-{n}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
                    let path = dir.join("copy.kv");
                    let checked = (|| {
                        let report = store.backup_to(&path).map_err(|e| format!("backup: {e}"))?;
                        let copy = Store::open(&path).map_err(|e| format!("open backup: {e}"))?;
                        let snap = copy.begin_read().map_err(|e| e.to_string())?;
                        let want = history
                            .states
                            .get(report.seq as usize)
                            .ok_or(format!("backup of seq {}", report.seq))?;
                        check_view(&snap, want).map_err(|e| format!("backup: {e}"))
                    })();
                    let _ = std::fs::remove_dir_all(&dir);
                    checked.map_err(err)?;
                }
            }
            Op::Many { base } => {
                if txn.is_none() {
                    let t = store.begin_write().map_err(|e| err(e.to_string()))?;
                    txn = Some((t, committed(history)));
                }
                let (t, m) = txn.as_mut().expect("just opened");
                for i in 0..150 {
                    let k = format!("many-{}-{i:03}", base % 8).into_bytes();
                    let v = value_of(step * 1000 + i, 8 + i % 24);
                    t.put(&k, &v).map_err(|e| err(e.to_string()))?;
                    m.insert(k, v);
                }
            }
            Op::Delete { key } => {
                if txn.is_none() {
                    let t = store.begin_write().map_err(|e| err(e.to_string()))?;
                    txn = Some((t, committed(history)));
                }
                let (t, m) = txn.as_mut().expect("just opened");
                let existed = t.delete(key_of(*key)).map_err(|e| err(e.to_string()))?;
                let model_existed = m.remove(&key_of(*key)).is_some();
                if existed != model_existed {
                    return Err(err(format!("delete said {existed}, model {model_existed}")));
                }
            }
            Op::TxnGet { key } => {
                if let Some((t, m)) = &txn {
                    let got = t.get(key_of(*key)).map_err(|e| err(e.to_string()))?;
                    if got != m.get(&key_of(*key)).map(Vec::as_slice) {
                        return Err(err("transaction does not see its own writes".into()));
                    }
                }
            }
            Op::CommitBesideReader => {
                if let Some((t, m)) = txn.take() {
                    let before = history.states.len() as u64 - 1;
                    let (states, pending) = (&history.states, &m);
                    let (seq, seen) = std::thread::scope(|s| {
                        let reader = s.spawn(|| -> Result<Vec<u64>, String> {
                            let mut seen = Vec::new();
                            for _ in 0..4 {
                                let snap = store.begin_read().map_err(|e| e.to_string())?;
                                let seq = snap.seq();
                                let want = match states.get(seq as usize) {
                                    Some(w) => w,
                                    None if seq == before + 1 => pending,
                                    None => return Err(format!("a snapshot of seq {seq}")),
                                };
                                check_view(&snap, want).map_err(|e| format!("seq {seq}: {e}"))?;
                                seen.push(seq);
                            }
                            Ok(seen)
                        });
                        let seq = t.commit();
                        (seq, reader.join())
                    });
                    let seq = seq.map_err(|e| err(e.to_string()))?;
                    let seen = seen
                        .map_err(|_| err("the reader thread panicked".into()))?
                        .map_err(|e| err(format!("reader thread: {e}")))?;
                    if seen.windows(2).any(|w| w[1] < w[0]) || seen.iter().any(|&s| s > seq) {
                        return Err(err(format!(
                            "reader thread saw seqs {seen:?}, commit {seq}"
                        )));
                    }
                    if seq != before && seq != before + 1 {
                        return Err(err(format!("commit returned seq {seq} after {before}")));
                    }
                    if seq != before {
                        history.states.push(m);
                    }
                    history.durable.push((disk.flush_count(), seq));
                }
            }
            Op::Commit | Op::CommitEventual => {
                if let Some((mut t, m)) = txn.take() {
                    let eventual = *op == Op::CommitEventual;
                    if eventual {
                        t.set_durability(Durability::Eventual);
                    }
                    let before = history.states.len() as u64 - 1;
                    let seq = t.commit().map_err(|e| err(e.to_string()))?;
                    let wrote = m != *history.states.last().expect("never empty") || seq != before;
                    if wrote {
                        if seq != before + 1 {
                            return Err(err(format!(
                                "commit returned seq {seq}, expected {}",
                                before + 1
                            )));
                        }
                        history.states.push(m);
                    } else if seq != before {
                        return Err(err(format!(
                            "empty commit returned {seq}, expected {before}"
                        )));
                    }
                    if !eventual {
                        history.durable.push((disk.flush_count(), seq));
                    }
                }
            }
            Op::Abort => {
                if let Some((t, _)) = txn.take() {
                    t.abort();
                }
            }
            Op::Snapshot => {
                let s = store.begin_read().map_err(|e| err(e.to_string()))?;
                snaps.push((s, committed(history)));
            }
            Op::DropSnapshot => {
                if !snaps.is_empty() {
                    snaps.remove(0);
                }
            }
            Op::Sync => {
                if txn.is_none() {
                    store.sync().map_err(|e| err(e.to_string()))?;
                    let seq = history.states.len() as u64 - 1;
                    history.durable.push((disk.flush_count(), seq));
                }
            }
            Op::Compact => {
                if txn.is_none() {
                    let seq = |s: &Store| s.begin_read().map(|r| r.seq());
                    let before = seq(store).map_err(|e| err(e.to_string()))?;
                    store.compact().map_err(|e| err(format!("compact: {e}")))?;
                    let after = seq(store).map_err(|e| err(e.to_string()))?;
                    if before != history.states.len() as u64 - 1 {
                        return Err(err(format!("compact began at seq {before}")));
                    }
                    let same = committed(history);
                    for _ in before..after {
                        history.states.push(same.clone());
                    }
                    history.durable.push((disk.flush_count(), after));
                }
            }
            Op::Reopen => {
                drop(txn.take());
                drop(snaps);
                return Ok((step + 1, false));
            }
            Op::FailFlush => {
                let (flushes, before) = (disk.flush_count(), history.states.len() as u64 - 1);
                disk.fail_flushes(true);
                let (failed, model) = match txn.take() {
                    Some((t, m)) => (t.commit().map(drop), Some(m)),
                    None => (store.sync(), None),
                };
                disk.fail_flushes(false);
                if let Some(m) = model {
                    history
                        .failed
                        .push((flushes..disk.flush_count(), before + 1, m));
                }
                if disk.flush_count() == flushes {
                    // Nothing needed a flush (an empty commit, nothing
                    // unsynced): there was no failure to see.
                    let seq = store.begin_read().map_err(|e| err(e.to_string()))?.seq();
                    if failed.is_err() || seq != before {
                        return Err(err(format!("no flush, yet {failed:?} at seq {seq}")));
                    }
                    continue;
                }
                if failed.is_ok() {
                    return Err(err("a commit or sync whose flush failed returned Ok".into()));
                }
                match store.put(b"after a failed flush", b"x") {
                    Err(Error::Poisoned { .. }) => {}
                    other => {
                        return Err(err(format!("a write after a failed flush gave {other:?}")))
                    }
                }
                // What this handle's readers see: the last commit before.
                let now = store.begin_read().map_err(|e| err(e.to_string()))?;
                check_view(&now, &committed(history))
                    .map_err(|e| err(format!("after a failed flush: {e}")))?;
                drop(now);
                drop(snaps);
                return Ok((step + 1, true));
            }
        }
        // After every step: the newest commit, every held snapshot.
        if !thorough {
            if txn.is_none() {
                on_boundary(disk, history, step);
            }
            continue;
        }
        let now = store.begin_read().map_err(|e| err(e.to_string()))?;
        check_view(&now, &committed(history)).map_err(|e| err(format!("latest: {e}")))?;
        if now.seq() != history.states.len() as u64 - 1 {
            return Err(err(format!(
                "latest seq {} but {} commits",
                now.seq(),
                history.states.len() - 1
            )));
        }
        for (n, (s, m)) in snaps.iter().enumerate() {
            check_view(s, m).map_err(|e| err(format!("snapshot {n}: {e}")))?;
        }
        if txn.is_none() {
            on_boundary(disk, history, step);
        }
    }
    Ok((ops.len(), false))
}

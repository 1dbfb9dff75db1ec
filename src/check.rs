//! Model-based and crash-consistency checking, shipped with the store.
//!
//! These are the bodies of the project's fuzz targets (`fuzz/`), and of the
//! seeded runs `cargo test` makes of them. Each takes a list of [`Op`]s,
//! runs it against a store and a `BTreeMap` model, and returns `Err` with a
//! description of the first divergence.
//!
//! - [`run_ops`]: every operation's result and the whole visible state
//!   checked after every step, including snapshots held across commits and
//!   reopens.
//! - [`power_loss`]: the same operations on a [`SimDisk`], then a power cut
//!   at a chosen flush or between two operations, with each unflushed
//!   sector landing or not as `land` decides; the reopened store must show
//!   exactly the state after some commit `k`, with `k` at least the last
//!   commit that was acknowledged as durable before the cut.
//! - [`open_file`]: arbitrary bytes as a store file must open, verify, read
//!   and write with `Ok` or a clean `Err`, never a panic.
//!
//! ```
//! use mapkv::check::{run_ops, Op};
//! let ops = [Op::Put { key: 1, len: 10 }, Op::Commit, Op::Reopen, Op::Delete { key: 1 }, Op::Commit];
//! run_ops(&ops, 0).unwrap();
//! ```

use std::collections::BTreeMap;

use crate::sim::{CrashPoint, SimDisk};
use crate::{Durability, Error, Options, ReadTxn, Store, WriteTxn};

/// One step of a checked run. Keys are drawn from a small space so that
/// overwrites, deletes of present keys and hash collisions in small tables
/// are common.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Put key `key % 64` with a value of `len % 512` bytes (in the open
    /// transaction, beginning one if needed).
    Put {
        /// Key number.
        key: u8,
        /// Value length (mod 512).
        len: u16,
    },
    /// Put a value of 300 KiB + `len` bytes: forces extents to fill.
    BigPut {
        /// Key number.
        key: u8,
        /// Extra length.
        len: u16,
    },
    /// Put 150 more keys (`many-{base % 8}-{i}`, small values): enough of
    /// them make the index move to larger tables over several commits.
    Many {
        /// Which group of keys.
        base: u8,
    },
    /// Delete key `key % 64`.
    Delete {
        /// Key number.
        key: u8,
    },
    /// Read key `key % 64` inside the open transaction (own writes).
    TxnGet {
        /// Key number.
        key: u8,
    },
    /// Commit the open transaction durably.
    Commit,
    /// Commit the open transaction with `Durability::Eventual`.
    CommitEventual,
    /// Abort the open transaction.
    Abort,
    /// Open a snapshot and keep it.
    Snapshot,
    /// Drop the oldest held snapshot.
    DropSnapshot,
    /// `Store::sync`.
    Sync,
    /// Close the store (cleanly) and open it again.
    Reopen,
    /// `Store::compact` (between transactions): its commits change no
    /// value, and it ends with a checkpoint.
    Compact,
    /// Put a key of 1 byte to 64 KiB (`len % 5` picks 1, 7, 255, 4,096 or
    /// 65,536 bytes, `key % 4` its byte) with a value of `len / 5 % 300`
    /// bytes.
    LongKey {
        /// Which byte the key repeats.
        key: u8,
        /// Picks the key's length and the value's.
        len: u16,
    },
    /// List what the last `back % 4 + 1` commits changed
    /// (`ReadTxn::changes_since`, between transactions) and replay it on
    /// the model of the commit before them: it must give the newest model.
    /// A history compaction reclaimed is an allowed answer.
    Changes {
        /// How many commits back.
        back: u8,
    },
    /// Open a second handle on the same disk (another process, in
    /// effect), check that it shows the newest commit, and close it.
    SecondHandle,
    /// The same with a read-only handle, which must also refuse a write.
    ReadOnlyHandle,
    /// `Store::backup_to` a temporary file (between transactions): the
    /// copy must open and show exactly the commit it reports.
    Backup,
    /// Commit the open transaction durably while another thread of the
    /// same handle begins snapshots: each must show exactly the commit
    /// before or this one.
    CommitBesideReader,
    /// The disk fails the next flush (`EIO`): the open transaction's
    /// durable commit (or, with none open, `Store::sync`) must fail, the
    /// handle must refuse writes from then on (`Poisoned`), and the
    /// handle is dropped without a clean close. The next session must
    /// show the last commit before it: a commit whose flush failed is
    /// never adopted.
    FailFlush,
}

const KEYS: u8 = 64;

fn key_of(k: u8) -> Vec<u8> {
    format!("key-{:02}", k % KEYS).into_bytes()
}

/// The key and value length of an [`Op::LongKey`].
fn long_key(k: u8, len: u16) -> (Vec<u8>, usize) {
    let key_len = [1, 7, 255, 4096, 65_536][usize::from(len % 5)];
    (vec![b'A' + k % 4; key_len], usize::from(len / 5 % 300))
}

/// A deterministic value: its bytes say which put made it, so a value from
/// the wrong commit never compares equal by accident.
fn value_of(step: usize, len: usize) -> Vec<u8> {
    let tag = (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (tag >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn fail(step: usize, op: &Op, what: impl std::fmt::Display) -> String {
    format!("step {step} ({op:?}): {what}")
}

/// Checks that `snap` shows exactly `model`: every key of the key space by
/// `get`, the whole map by `iter`, and `len`.
fn check_view(snap: &ReadTxn<'_>, model: &Model) -> Result<(), String> {
    for k in 0..KEYS {
        let key = key_of(k);
        let got = snap.get(&key).map_err(|e| format!("get {k}: {e}"))?;
        if got != model.get(&key).map(Vec::as_slice) {
            return Err(format!(
                "key {k}: store has {:?} bytes, model {:?} bytes",
                got.map(<[u8]>::len),
                model.get(&key).map(Vec::len)
            ));
        }
    }
    let mut all = BTreeMap::new();
    for item in snap.iter() {
        let (k, v) = item.map_err(|e| format!("iter: {e}"))?;
        if all.insert(k.to_vec(), v.to_vec()).is_some() {
            return Err(format!(
                "iter yields {:?} twice",
                String::from_utf8_lossy(k)
            ));
        }
    }
    if &all != model {
        return Err(format!(
            "iter shows {} keys, model has {}",
            all.len(),
            model.len()
        ));
    }
    if snap.len() != model.len() as u64 {
        return Err(format!("len {} but model has {}", snap.len(), model.len()));
    }
    Ok(())
}

/// The state of a run: the model after every commit, and which commits are
/// known durable at which flush count.
struct History {
    /// `states[s]` is the model after commit `s`.
    states: Vec<Model>,
    /// `(flush count when acknowledged, seq)`: after that many flushes had
    /// started, commit `seq` (and all before it) is durable.
    durable: Vec<(u64, u64)>,
    /// Commits whose flush failed (`Op::FailFlush`): the flushes that
    /// failed, the seq the commit had and its model. A power cut *during*
    /// one of those flushes may find the commit complete on disk: it was
    /// in flight, as any commit is while its flush runs.
    failed: Vec<(std::ops::Range<u64>, u64, Model)>,
}

impl History {
    fn new() -> History {
        History {
            states: vec![Model::new()],
            durable: vec![(0, 0)],
            failed: Vec::new(),
        }
    }

    /// The newest commit durable before flush `n` started.
    fn min_seq_before_flush(&self, n: u64) -> u64 {
        self.durable
            .iter()
            .filter(|(f, _)| *f <= n)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
    }
}

/// An empty simulated disk whose stores hash keys with `hash_seed`.
fn fresh_disk(hash_seed: u64) -> SimDisk {
    let disk = SimDisk::new(1 << 30);
    disk.set_hash_seed(hash_seed);
    disk
}

/// Runs `ops` against a store and the model. With `disk`, the store lives
/// on that simulated disk; otherwise on a fresh simulated disk.
/// `on_boundary` is called after each operation that leaves no write
/// transaction open, with the disk, the history so far and the step.
fn drive(
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

/// Runs `ops` against a fresh store (hashing keys with `hash_seed`) on a
/// simulated disk, checking every
/// result and the whole visible state after every step, then reopens and
/// checks the final state once more.
pub fn run_ops(ops: &[Op], hash_seed: u64) -> Result<RunReport, String> {
    let disk = fresh_disk(hash_seed);
    let mut history = History::new();
    drive(ops, &disk, &mut history, true, |_, _, _| {})?;
    let store = Options::new()
        .open_sim(&disk)
        .map_err(|e| format!("final open: {e}"))?;
    let snap = store.begin_read().map_err(|e| e.to_string())?;
    check_view(&snap, history.states.last().expect("never empty"))
        .map_err(|e| format!("after final reopen: {e}"))?;
    let report = store.verify().map_err(|e| e.to_string())?;
    if !report.is_ok() {
        return Err(format!("verify after final reopen: {report}"));
    }
    Ok(RunReport {
        commits: history.states.len() as u64 - 1,
        index_slots: store.stats().map_err(|e| e.to_string())?.index_slots,
    })
}

/// What [`run_ops`] did, for tests that must show a run did real work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Commits that took a sequence number (compaction's included).
    pub commits: u64,
    /// Slots of the index table at the end (it started at the minimum).
    pub index_slots: u64,
}

/// Where a power cut happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Cut {
    /// While flush number `n` (counting from 0) is in progress: any subset
    /// of everything written since the previous flush may be on disk.
    AtFlush(u64),
    /// Right after operation `n` (counting from 0), if no transaction is
    /// open then; otherwise the cut is not reached.
    AfterOp(u64),
}

/// Outcome of one [`power_loss`] run, for coverage accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Whether the cut point was reached.
    pub reached: bool,
    /// Sectors that differed between the live and durable images.
    pub dirty_sectors: usize,
    /// Versions of unflushed sectors older than the live one
    /// ([`power_loss_versions`]; 0 otherwise).
    pub between_versions: usize,
    /// Commit the store recovered to.
    pub recovered_seq: u64,
    /// The lowest commit it was allowed to recover to.
    pub min_seq: u64,
}

/// Runs `ops`, cuts power at `cut`, lands each dirty sector where
/// `land(sector_offset)` says so, reopens and checks promise 3: the store
/// opens, shows exactly the model after some commit `k ≥ min_seq`, passes
/// `verify`, and accepts a new commit.
pub fn power_loss(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    land: impl FnMut(u64) -> bool,
) -> Result<CutReport, String> {
    cut_and_check(ops, hash_seed, cut, false, |p| p.image(land))
}

/// [`power_loss`] on a disk that keeps every version a dirty sector had
/// since its last flush ([`SimDisk::track_versions`]): each sector lands
/// as the version `pick(sector_offset, n)` chooses (see
/// [`CrashPoint::image_versions`]), so a sector may hold a state between
/// its durable and its latest contents — an index slot as one `Eventual`
/// commit left it, overwritten by a later one that never reached the disk.
pub fn power_loss_versions(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    pick: impl FnMut(u64, usize) -> usize,
) -> Result<CutReport, String> {
    cut_and_check(ops, hash_seed, cut, true, |p| p.image_versions(pick))
}

fn cut_and_check(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    track: bool,
    image: impl FnOnce(&CrashPoint) -> Vec<u8>,
) -> Result<CutReport, String> {
    let disk = fresh_disk(hash_seed);
    if track {
        disk.track_versions();
    }
    let mut history = History::new();
    if let Cut::AtFlush(n) = cut {
        disk.cut_at_flush(n);
    }
    let mut boundary: Option<(CrashPoint, u64)> = None;
    drive(ops, &disk, &mut history, false, |d, h, step| {
        if cut == Cut::AfterOp(step as u64) {
            boundary = Some((d.crash_point(), last_durable(h)));
        }
    })?;
    let (point, min_seq) = match cut {
        Cut::AtFlush(n) => match disk.take_cut() {
            Some(p) => (p, history.min_seq_before_flush(n)),
            None => return Ok(CutReport::default()),
        },
        Cut::AfterOp(_) => match boundary {
            Some(b) => b,
            None => return Ok(CutReport::default()),
        },
    };
    let dirty_sectors = point.dirty_sectors().len();
    let between = point.versions.values().map(Vec::len).sum();
    let image = image(&point);
    // A cut during a flush that failed may find that commit complete.
    let in_flight = match cut {
        Cut::AtFlush(n) => history
            .failed
            .iter()
            .find(|(flushes, _, _)| flushes.contains(&n))
            .map(|(_, seq, m)| (*seq, m)),
        Cut::AfterOp(_) => None,
    };
    let recovered_seq = check_recovered(&image, &history, min_seq, in_flight)?;
    Ok(CutReport {
        reached: true,
        dirty_sectors,
        between_versions: between,
        recovered_seq,
        min_seq,
    })
}

fn last_durable(h: &History) -> u64 {
    h.durable.iter().map(|(_, s)| *s).max().unwrap_or(0)
}

fn check_recovered(
    image: &[u8],
    history: &History,
    min_seq: u64,
    in_flight: Option<(u64, &Model)>,
) -> Result<u64, String> {
    let disk = SimDisk::from_image(image, 1 << 30);
    let store = Options::new()
        .open_sim(&disk)
        .map_err(|e| format!("open after power cut: {e}"))?;
    let snap = store.begin_read().map_err(|e| e.to_string())?;
    let seq = snap.seq();
    let flying = in_flight.filter(|&(s, m)| s == seq && check_view(&snap, m).is_ok());
    let Some(model) = flying
        .map(|(_, m)| m)
        .or_else(|| history.states.get(seq as usize))
    else {
        return Err(format!(
            "recovered seq {seq}, but only {} commits happened",
            history.states.len() - 1
        ));
    };
    if seq < min_seq {
        return Err(format!(
            "recovered to commit {seq}, but commit {min_seq} was acknowledged durable"
        ));
    }
    check_view(&snap, model).map_err(|e| format!("recovered commit {seq}: {e}"))?;
    drop(snap);
    let report = store.verify().map_err(|e| e.to_string())?;
    if !report.is_ok() {
        return Err(format!("verify after power cut (commit {seq}): {report}"));
    }
    let key = key_of(0);
    store
        .put(&key, b"after")
        .map_err(|e| format!("write after recovery: {e}"))?;
    if store.get(&key).map_err(|e| e.to_string())?.as_deref() != Some(&b"after"[..]) {
        return Err("write after recovery is not visible".into());
    }
    Ok(seq)
}

/// Total flushes `ops` cause on a fresh simulated disk (for enumerating
/// every [`Cut::AtFlush`]).
pub fn count_flushes(ops: &[Op], hash_seed: u64) -> Result<u64, String> {
    let disk = fresh_disk(hash_seed);
    let mut history = History::new();
    drive(ops, &disk, &mut history, false, |_, _, _| {})?;
    Ok(disk.flush_count())
}

/// Treats `bytes` as a store file: opening, verifying, reading every key,
/// iterating, listing changes and writing must each return `Ok` or an
/// `Err` — never panic — and a put that committed must read back as
/// written (it panics if not, so the fuzzer reports it).
/// Returns the error that stopped it, if any (for statistics).
pub fn open_file(bytes: &[u8]) -> Option<Error> {
    open_checked(bytes, None)
}

/// [`open_file`]; with `committed`, every value a get or the iteration
/// reads back must be one that some commit gave its key (it panics if
/// not): damage may lose values, never invent them.
fn open_checked(
    bytes: &[u8],
    committed: Option<&BTreeMap<Vec<u8>, Vec<Vec<u8>>>>,
) -> Option<Error> {
    let disk = SimDisk::from_image(bytes, (bytes.len() as u64).max(1 << 20) * 4);
    let store = match Options::new().create(false).open_sim(&disk) {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    let _ = store.verify();
    let _ = store.stats();
    let was_committed = |k: &[u8], v: &[u8]| {
        if let Some(c) = committed {
            let ok = c.get(k).is_some_and(|vs| vs.iter().any(|x| x == v));
            assert!(
                ok,
                "a damaged store read back a value no commit gave key {:?} ({} bytes)",
                String::from_utf8_lossy(&k[..k.len().min(40)]),
                v.len()
            );
        }
    };
    if let Ok(snap) = store.begin_read() {
        for k in 0..KEYS {
            if let Ok(Some(v)) = snap.get(key_of(k)) {
                was_committed(&key_of(k), v);
            }
        }
        for (k, v) in snap.iter().take(10_000).flatten() {
            was_committed(k, v);
        }
        if let Ok(changes) = snap.changes_since(snap.seq().saturating_sub(20)) {
            for item in changes.take(10_000) {
                let _ = item;
            }
        }
    }
    if let Err(e) = store.put(b"fuzz", b"value") {
        return Some(e);
    }
    // A put that committed reads back as itself, or the read says what is
    // damaged: never another value, never absent.
    match store.get(b"fuzz") {
        Ok(Some(v)) if v == b"value" => {}
        Ok(other) => panic!("a committed put reads back as {other:?}"),
        Err(e) => return Some(e),
    }
    match store.delete(b"fuzz") {
        Ok(true) => {}
        Ok(false) => panic!("a committed put was not there to delete"),
        Err(e) => return Some(e),
    }
    None
}

/// A real store built by `ops`, then damaged: each `(offset, xor)` flips
/// bits at `offset % len`, and `truncate` cuts the file to
/// `truncate % len` bytes. Then as [`open_file`], and every value read
/// back must be one that a commit of `ops` gave its key. This reaches what raw
/// bytes rarely do: recovery, `verify` and probing over a store that is
/// almost right.
pub fn damaged_store(
    ops: &[Op],
    hash_seed: u64,
    flips: &[(u32, u8)],
    truncate: Option<u32>,
) -> Option<Error> {
    let disk = fresh_disk(hash_seed);
    let mut history = History::new();
    // Build it; a run that fails here is a bug the other targets report.
    drive(ops, &disk, &mut history, false, |_, _, _| {}).ok()?;
    let mut image = disk.crash_point().live;
    let len = image.len();
    if len == 0 {
        return open_file(&image); // no operation created the store
    }
    for &(off, xor) in flips {
        image[off as usize % len] ^= xor;
    }
    if let Some(t) = truncate {
        image.truncate(t as usize % len);
    }
    let mut committed: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for state in &history.states {
        for (k, v) in state {
            let vs = committed.entry(k.clone()).or_default();
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    open_checked(&image, Some(&committed))
}

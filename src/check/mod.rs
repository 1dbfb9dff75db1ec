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

mod drive;
mod files;
mod power;

use self::drive::drive;
use crate::sim::SimDisk;
use crate::{Options, ReadTxn};
use std::collections::BTreeMap;

pub use self::files::{damaged_store, open_file};
pub use self::power::{count_flushes, power_loss, power_loss_versions, Cut, CutReport};

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

pub(super) const KEYS: u8 = 64;

pub(super) fn key_of(k: u8) -> Vec<u8> {
    format!("key-{:02}", k % KEYS).into_bytes()
}

/// The key and value length of an [`Op::LongKey`].
pub(super) fn long_key(k: u8, len: u16) -> (Vec<u8>, usize) {
    let key_len = [1, 7, 255, 4096, 65_536][usize::from(len % 5)];
    (vec![b'A' + k % 4; key_len], usize::from(len / 5 % 300))
}

/// A deterministic value: its bytes say which put made it, so a value from
/// the wrong commit never compares equal by accident.
pub(super) fn value_of(step: usize, len: usize) -> Vec<u8> {
    let tag = (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (tag >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

pub(super) fn fail(step: usize, op: &Op, what: impl std::fmt::Display) -> String {
    format!("step {step} ({op:?}): {what}")
}

/// Checks that `snap` shows exactly `model`: every key of the key space by
/// `get`, the whole map by `iter`, and `len`.
pub(super) fn check_view(snap: &ReadTxn<'_>, model: &Model) -> Result<(), String> {
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
pub(super) struct History {
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
pub(super) fn fresh_disk(hash_seed: u64) -> SimDisk {
    let disk = SimDisk::new(1 << 30);
    disk.set_hash_seed(hash_seed);
    disk
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

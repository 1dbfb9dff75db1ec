//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod procs;
pub mod shm;

use mapkv::check::Op;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sets its flag when dropped, a panic's unwinding included: helper
/// threads of a `thread::scope` that loop until the flag is set then stop
/// when the scope's own thread fails, and the test fails instead of
/// hanging (the scope waits for every thread it spawned).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A random operation sequence. `big` allows 300 KiB values (which fill
/// extents quickly); `reopen` allows clean reopens.
pub fn random_ops(rng: &mut ChaCha8Rng, n: usize, big: bool, reopen: bool) -> Vec<Op> {
    let keys: u8 = if rng.gen_bool(0.5) { 8 } else { 64 };
    (0..n)
        .map(|_| {
            let key = rng.gen_range(0..keys);
            match rng.gen_range(0..100) {
                0..=31 => Op::Put {
                    key,
                    len: rng.gen(),
                },
                32 => Op::LongKey {
                    key,
                    len: rng.gen(),
                },
                33 => Op::Changes { back: rng.gen() },
                34 => match rng.gen_range(0..4) {
                    0 => Op::Backup,
                    1 => Op::ReadOnlyHandle,
                    _ => Op::SecondHandle,
                },
                35..=36 if big => Op::BigPut {
                    key,
                    len: rng.gen(),
                },
                37..=49 => Op::Delete { key },
                50..=54 => Op::TxnGet { key },
                55..=66 => Op::Commit,
                67..=69 => Op::CommitBesideReader,
                70..=77 => Op::CommitEventual,
                78..=81 => Op::Abort,
                82..=86 => Op::Snapshot,
                87..=89 => Op::DropSnapshot,
                90..=92 => Op::Sync,
                93..=95 if reopen => Op::Reopen,
                96..=97 => Op::Compact,
                // 150 more keys: enough of them grow (and, with deletes,
                // shrink) the index over several commits.
                98 => Op::Many { base: rng.gen() },
                99 if reopen && rng.gen_bool(0.5) => Op::FailFlush,
                _ => Op::Commit,
            }
        })
        .collect()
}

/// One change as `ReadTxn::changes_since` lists it, owned.
pub type Change = (u64, Vec<u8>, Option<Vec<u8>>);

/// Every change after `from` in `snap`, copied out (panics on an error).
pub fn owned_changes(snap: &mapkv::ReadTxn<'_>, from: u64) -> Vec<Change> {
    snap.changes_since(from)
        .unwrap()
        .map(|c| {
            let (s, k, v) = c.unwrap();
            (s, k.to_vec(), v.map(<[u8]>::to_vec))
        })
        .collect()
}

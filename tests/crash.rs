//! Power-loss simulation: cut at every flush and between operations, let
//! each unflushed sector land or not, reopen, and check promise 3 — the
//! store shows exactly the state after some commit `k`, with `k` at least
//! the last commit acknowledged as durable before the cut.

mod common;

use mapkv::check::{count_flushes, power_loss, Cut, Op};
use mapkv::sim::SimDisk;
use mapkv::Options;
use rand::Rng;

/// Every flush of `ops`, with `choices` landing patterns each (none, all,
/// and random subsets at sector granularity), and cuts between operations
/// (every one for short runs, a sample for long ones). Returns
/// (flushes, images checked).
fn every_cut(ops: &[Op], choices: u64, seed: u64, hash_seed: u64) -> (u64, u64) {
    let flushes = count_flushes(ops, hash_seed).unwrap();
    let mut images = 0;
    for n in 0..flushes {
        for c in 0..choices {
            let mut rng = common::rng(seed ^ (n << 16) ^ c);
            let p: f64 = rng.gen();
            let report = power_loss(ops, hash_seed, Cut::AtFlush(n), |_| match c {
                0 => false,
                1 => true,
                _ => rng.gen_bool(p),
            })
            .unwrap_or_else(|e| panic!("cut at flush {n}, choice {c}: {e}\nops: {ops:?}"));
            assert!(report.reached, "flush {n} of {flushes} never happened");
            images += 1;
        }
    }
    let flush_images = images;
    // Cuts right after the operations that close a transaction: a cut
    // after one that leaves a transaction open is not taken (no commit
    // boundary there), and sampling every k-th operation had taken only 4
    // of 168 cuts in the index-growth test.
    let closing: Vec<u64> = (0..ops.len() as u64)
        .filter(|&n| {
            matches!(
                ops[n as usize],
                Op::Commit | Op::CommitEventual | Op::CommitBesideReader | Op::Abort
            )
        })
        .collect();
    let step = (closing.len() / 40).max(1);
    let mut tried = 0;
    for &n in closing.iter().step_by(step) {
        for c in 0..choices.min(4) {
            let mut rng = common::rng(seed ^ (n << 20) ^ c);
            let report = power_loss(ops, hash_seed, Cut::AfterOp(n), |_| {
                c == 1 || (c > 1 && rng.gen_bool(0.5))
            })
            .unwrap_or_else(|e| panic!("cut after op {n}, choice {c}: {e}\nops: {ops:?}"));
            // A cut after an operation that leaves a transaction open is
            // not taken (there is no commit boundary there).
            images += report.reached as u64;
            tried += 1;
        }
    }
    assert_eq!(
        images - flush_images,
        tried,
        "a cut right after a transaction closed did not happen"
    );
    eprintln!(
        "{} ops, hash seed {hash_seed}: {flushes} flush cuts x {choices} landings = {flush_images} images, \
         {} images cut between operations",
        ops.len(),
        images - flush_images
    );
    (flushes, images)
}

#[test]
fn every_flush_of_a_durable_sequence_recovers_a_committed_prefix() {
    let ops = [
        Op::Put { key: 1, len: 100 },
        Op::Put { key: 2, len: 10 },
        Op::Commit,
        Op::Put { key: 1, len: 200 },
        Op::Delete { key: 2 },
        Op::Commit,
        Op::Put { key: 3, len: 0 },
        Op::Commit,
        Op::Reopen,
        Op::Delete { key: 1 },
        Op::Put { key: 4, len: 7 },
        Op::Commit,
    ];
    for hash_seed in 0..4 {
        let (cuts, images) = every_cut(&ops, 8, 1, hash_seed);
        assert!(cuts >= 8, "only {cuts} flushes");
        assert!(images > 100);
    }
}

#[test]
fn eventual_commits_lost_by_a_power_cut_never_damage_older_ones() {
    // Eventual commits write index slots that may reach the disk before
    // their records: recovery must notice and rebuild.
    let mut ops = vec![Op::Put { key: 1, len: 10 }, Op::Commit];
    for k in 2..12 {
        ops.push(Op::Put { key: k, len: 50 });
        ops.push(Op::Delete { key: k - 1 });
        ops.push(Op::CommitEventual);
    }
    ops.push(Op::Put { key: 40, len: 3 });
    ops.push(Op::Commit);
    ops.push(Op::Put { key: 41, len: 3 });
    ops.push(Op::CommitEventual);
    for hash_seed in 0..3 {
        every_cut(&ops, 12, 2, hash_seed);
    }
}

#[test]
fn cuts_inside_index_growth_and_extent_changes_recover() {
    // Three rounds over 64 keys with 300 KiB values: commits that span two
    // extents, flushed range by range, with Eventual commits between them.
    // (Hash seed 29 once left a key in two slots when a commit's slot
    // writes were applied in a different order than replay applies them.)
    let mut ops = Vec::new();
    for round in 0..3u16 {
        for k in 0..64u8 {
            ops.push(Op::Put {
                key: k,
                len: round * 7 + k as u16,
            });
        }
        ops.push(Op::BigPut {
            key: round as u8,
            len: round,
        });
        ops.push(Op::BigPut { key: 60, len: 1 });
        ops.push(Op::Commit);
        ops.push(Op::BigPut { key: 61, len: 1 });
        ops.push(Op::CommitEventual);
    }
    for hash_seed in [29, 0, 1, 2, 3, 4, 5] {
        every_cut(&ops, 6, 3, hash_seed);
    }
}

#[test]
fn random_sequences_survive_random_cuts() {
    let (mut flush_cuts, mut op_cuts, mut op_tries) = (0, 0, 0);
    for seed in 0..60 {
        let mut rng = common::rng(1000 + seed);
        let ops = common::random_ops(&mut rng, 40, seed % 5 == 0, true);
        let flushes = count_flushes(&ops, seed).unwrap();
        for _ in 0..6 {
            let cut = if flushes > 0 && rng.gen_bool(0.7) {
                Cut::AtFlush(rng.gen_range(0..flushes))
            } else {
                Cut::AfterOp(rng.gen_range(0..ops.len() as u64))
            };
            let p: f64 = rng.gen();
            let mut r2 = common::rng(seed * 77);
            let report = power_loss(&ops, seed, cut, |_| r2.gen_bool(p))
                .unwrap_or_else(|e| panic!("seed {seed}, {cut:?}: {e}\nops: {ops:?}"));
            match cut {
                // Counted by the same operations: it must happen.
                Cut::AtFlush(n) => {
                    assert!(report.reached, "seed {seed}: flush {n} never happened");
                    flush_cuts += 1;
                }
                // Not taken after an operation that leaves a transaction open.
                Cut::AfterOp(_) => {
                    op_cuts += report.reached as u32;
                    op_tries += 1;
                }
            }
        }
    }
    assert!(flush_cuts >= 180, "only {flush_cuts} cuts at a flush");
    assert!(
        op_cuts * 3 >= op_tries,
        "only {op_cuts} of {op_tries} cuts between operations happened"
    );
}

#[test]
fn an_index_slot_that_reached_the_disk_without_its_record_forces_a_rebuild() {
    // Eventual commits change slots in place; here a power cut writes the
    // index table's sectors but none of the log's. Without the lost-slot
    // check, the reopened store would follow slots into zeroed log space.
    let table = 65536 + (1 << 20); // the first table, after the first extent
    let mut ops = vec![Op::Put { key: 1, len: 10 }, Op::Commit];
    for k in 2..6 {
        ops.push(Op::Put { key: k, len: 20 });
        ops.push(Op::Put {
            key: 1,
            len: 30 + k as u16,
        });
        ops.push(Op::CommitEventual);
    }
    let last = ops.len() as u64 - 1;
    for hash_seed in 0..8 {
        let report = power_loss(&ops, hash_seed, Cut::AfterOp(last), |off| {
            (table..table + 4096).contains(&off)
        })
        .unwrap_or_else(|e| panic!("hash seed {hash_seed}: {e}"));
        assert!(report.reached && report.dirty_sectors > 0);
        // Only the durable commit survives: the Eventual ones were lost.
        assert_eq!((report.min_seq, report.recovered_seq), (1, 1));
    }
}

#[test]
fn cuts_inside_compaction_and_index_moves_recover() {
    // Extents fill with 300 KiB values that are overwritten (dead space),
    // a held snapshot keeps old extents alive across a compaction, and
    // 1,200 small keys make the index move to larger tables over several
    // commits; cuts land at every flush of all of it.
    let mut ops = Vec::new();
    for round in 0..3u8 {
        for k in 0..3u8 {
            ops.push(Op::BigPut {
                key: k,
                len: round as u16,
            });
        }
        ops.push(Op::Many { base: 2 * round });
        ops.push(Op::Commit);
        ops.push(Op::Many {
            base: 2 * round + 1,
        });
        ops.push(Op::Delete { key: round });
        ops.push(Op::CommitEventual);
        if round == 1 {
            ops.push(Op::Snapshot);
        }
        ops.push(Op::Compact);
    }
    ops.push(Op::DropSnapshot);
    ops.push(Op::Many { base: 7 });
    ops.push(Op::Commit);
    ops.push(Op::Compact);
    for hash_seed in [0, 29] {
        every_cut(&ops, 3, 11, hash_seed);
    }
}

#[test]
fn cuts_while_commits_compact_and_reuse_extents_recover() {
    // 300 KiB values over 4 keys, overwritten round after round: past
    // 4 MiB of sealed log with a fifth dead, every commit also copies live
    // records out of the deadest extent, retires it, and later commits
    // reuse it once a checkpoint has passed.
    let mut ops = Vec::new();
    for round in 0..8u16 {
        for k in 0..4u8 {
            ops.push(Op::BigPut { key: k, len: round });
            ops.push(Op::Put {
                key: 10 + k,
                len: round,
            });
            ops.push(if k % 2 == 0 {
                Op::Commit
            } else {
                Op::CommitEventual
            });
        }
    }
    every_cut(&ops, 3, 13, 0);
}

/// Loads keys into a simulated disk until the index moves from 2^15 to
/// 2^16 slots, then goes on in commits of 10 keys (small enough against
/// the old table for the move to ramp up). Returns, per commit, the keys
/// committed so far, the flush count once it returned, the index's slots
/// and the slots a move had left.
fn ramping_move(disk: &SimDisk) -> Vec<(u32, u64, u64, u64)> {
    let store = Options::new().open_sim(disk).unwrap();
    let mut done = Vec::new();
    let mut next = 0u32;
    let mut after_start = 0;
    while after_start < 14 {
        let s = store.stats().unwrap();
        let batch = if s.index_used + 1_010 < (1 << 15) * 3 / 4 && s.index_moving == 0 {
            1_000
        } else {
            10
        };
        let mut tx = store.begin_write().unwrap();
        for _ in 0..batch {
            tx.put(ramp_key(next), next.to_le_bytes()).unwrap();
            next += 1;
        }
        tx.commit().unwrap();
        let s = store.stats().unwrap();
        if s.index_slots == 1 << 16 && s.index_moving > 0 {
            after_start += 1;
        }
        done.push((next, disk.flush_count(), s.index_slots, s.index_moving));
    }
    done
}

fn ramp_key(i: u32) -> Vec<u8> {
    format!("ramp-{i:06}").into_bytes()
}

#[test]
fn an_index_move_ramps_up_and_cuts_inside_the_ramp_recover() {
    // The first commits of a move move few slots (32, 32, 32, 48, 72, ...:
    // FORMAT.md, "Index table"), and replay after a cut among them must
    // move exactly the same slots, or a key could land in two slots.
    let disk = SimDisk::new(64 << 20);
    let done = ramping_move(&disk);
    let start = done.iter().position(|d| d.2 == 1 << 16).unwrap();
    let moved: Vec<u64> = done[start..]
        .iter()
        .scan(1u64 << 15, |left, d| {
            let m = *left - d.3;
            *left = d.3;
            Some(m)
        })
        .collect();
    assert_eq!(
        moved[..9],
        [32, 32, 32, 48, 72, 108, 162, 243, 256],
        "{moved:?}"
    );
    let first = done[start - 1].1;
    let last = done.last().unwrap().1;
    let mut rng = common::rng(7);
    for n in (first..last).step_by(((last - first) / 12).max(1) as usize) {
        let disk = SimDisk::new(64 << 20);
        disk.cut_at_flush(n);
        ramping_move(&disk);
        let cut = disk.take_cut().expect("the cut flush happened");
        let p: f64 = rng.gen();
        let image = cut.image(|_| rng.gen_bool(p));
        let store = Options::new()
            .open_sim(&SimDisk::from_image(&image, 64 << 20))
            .unwrap();
        let keys = store.stats().unwrap().keys as u32;
        // The durable commits (their flushes all returned before flush n
        // began) survive; at most the one in flight is lost or kept.
        let durable = done.iter().filter(|d| d.1 <= n).map(|d| d.0).max().unwrap();
        assert!(
            keys >= durable && done.iter().any(|d| d.0 == keys),
            "cut at flush {n}: {keys} keys, {durable} durable"
        );
        let snap = store.begin_read().unwrap();
        for i in 0..keys + 10 {
            let want = (i < keys).then(|| i.to_le_bytes());
            assert_eq!(
                snap.get(ramp_key(i)).unwrap(),
                want.as_ref().map(|w| &w[..]),
                "cut at flush {n}: key {i}"
            );
        }
        drop(snap);
        assert!(store.verify().unwrap().is_ok(), "cut at flush {n}");
    }
}

/// Dirty sectors landing as any version they had since their last flush,
/// not only their durable or latest contents: index slots rewritten by
/// several `Eventual` commits, then a cut at a later flush where each
/// sector picks a random version. Every image must recover to a committed
/// state at least as new as the last durable commit.
#[test]
fn sectors_landing_as_in_between_versions_recover() {
    use mapkv::check::power_loss_versions;
    let mut ops = Vec::new();
    for round in 0..12u8 {
        // The same few keys rewritten: their slots and records share
        // sectors, each commit leaving another version of them.
        for k in 0..6u8 {
            ops.push(Op::Put {
                key: k,
                len: u16::from(round) * 7 + u16::from(k),
            });
        }
        if round % 3 == 1 {
            ops.push(Op::Delete { key: round % 6 });
        }
        ops.push(if round % 4 == 3 {
            Op::Commit
        } else {
            Op::CommitEventual
        });
        if round == 7 {
            ops.push(Op::Sync);
        }
    }
    let (mut images, mut between) = (0u64, 0usize);
    for hash_seed in [0u64, 7] {
        let flushes = count_flushes(&ops, hash_seed).unwrap();
        for n in 0..flushes {
            for c in 0..3u64 {
                let mut rng = common::rng(hash_seed ^ (n << 8) ^ c);
                let report = power_loss_versions(&ops, hash_seed, Cut::AtFlush(n), |_, k| {
                    rng.gen_range(0..k)
                })
                .unwrap_or_else(|e| panic!("hash seed {hash_seed}, flush {n}, pick {c}: {e}"));
                assert!(report.reached, "flush {n} of {flushes} never happened");
                images += 1;
                between += report.between_versions;
            }
        }
    }
    eprintln!("{images} images, {between} in-between sector versions offered");
    assert!(images >= 30, "only {images} images");
    // The model is exercised: sectors had versions between durable and
    // latest to land.
    assert!(between > 0, "no sector ever had an in-between version");
}

/// A flush that fails, then a new handle commits durably, then power is
/// cut. Found by the model's FailFlush op: the failed handle had written
/// its "index may be past the checkpoint" meta page into the page cache
/// only; the next writer read it there, skipped rewriting it, and a cut
/// then found the old clean meta page on disk and ignored every later
/// commit ("recovered to commit 0, but commit 2 was acknowledged
/// durable"). A writer now flushes the meta page it did not flush itself
/// before its first slot changes.
#[test]
fn durable_commits_after_a_failed_flush_survive_a_power_cut() {
    let ops = vec![
        Op::Put { key: 1, len: 100 },
        Op::FailFlush,
        Op::Put { key: 2, len: 10 },
        Op::Commit,
        Op::Put { key: 3, len: 10 },
        Op::Commit,
        Op::Put { key: 4, len: 10 },
        Op::CommitEventual,
        Op::Put { key: 5, len: 10 },
        Op::Commit,
    ];
    let mut checked_durable = 0;
    for hash_seed in [10, 11] {
        let flushes = count_flushes(&ops, hash_seed).unwrap();
        for n in 0..flushes {
            for c in 0..3u64 {
                let mut rng = common::rng(n ^ (c << 8));
                let report = power_loss(&ops, hash_seed, Cut::AtFlush(n), |_| match c {
                    0 => false,
                    1 => true,
                    _ => rng.gen_bool(0.5),
                })
                .unwrap_or_else(|e| {
                    panic!("hash seed {hash_seed}, cut at flush {n}, landing {c}: {e}")
                });
                assert!(report.reached);
                checked_durable += (report.min_seq >= 2) as u32;
            }
        }
    }
    assert!(checked_durable > 0, "no cut came after a durable commit");
}

#[test]
fn a_rebuild_after_a_power_cut_does_not_bring_back_keys_an_index_move_dropped() {
    // The first extent holds puts of keys 1..=10 among live data, so
    // automatic compaction leaves it alone and those puts stay in the log.
    // Their deletes go to the second extent, mostly dead big values; the
    // index then grows (a move drops deleted keys), and compaction retires
    // the second extent: no record of the deletes is left. A checkpoint,
    // then an Eventual commit whose index slot reaches the disk without
    // its record makes recovery rebuild the index from the log.
    let mut ops = Vec::new();
    for k in 1..=10 {
        ops.push(Op::Put { key: k, len: 20 });
    }
    for k in 50..53 {
        ops.push(Op::BigPut { key: k, len: 0 });
    }
    ops.push(Op::Commit);
    for base in 0..4 {
        ops.push(Op::Many { base });
        ops.push(Op::Commit);
    }
    ops.push(Op::BigPut { key: 60, len: 0 });
    for k in 1..=10 {
        ops.push(Op::Delete { key: k });
    }
    ops.push(Op::Commit);
    for len in 1..3 {
        ops.push(Op::BigPut { key: 60, len });
        ops.push(Op::Commit);
    }
    for base in 4..6 {
        ops.push(Op::Many { base });
        ops.push(Op::Commit);
    }
    for len in 0..6 {
        ops.push(Op::Put { key: 30, len });
        ops.push(Op::Commit);
    }
    for len in 0..3 {
        ops.push(Op::BigPut { key: 60, len });
        ops.push(Op::Commit);
    }
    ops.push(Op::Reopen);
    // A new key, a key put back whose old put is still in the log (its
    // slot, if it lands alone, leaves recovery unsure of it), and an
    // update.
    ops.push(Op::Put { key: 31, len: 7 });
    ops.push(Op::Put { key: 1, len: 8 });
    ops.push(Op::Put { key: 30, len: 9 });
    ops.push(Op::CommitEventual);
    let last = ops.len() as u64 - 1;
    for hash_seed in 0..4 {
        for c in 0..40u64 {
            let mut rng = common::rng(c);
            let p = c as f64 / 40.0;
            power_loss(&ops, hash_seed, Cut::AfterOp(last), |_| rng.gen_bool(p))
                .unwrap_or_else(|e| panic!("hash seed {hash_seed}, choice {c}: {e}"));
        }
    }
}

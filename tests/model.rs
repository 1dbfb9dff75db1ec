//! The API against a `BTreeMap` model: random puts, deletes, overwrites,
//! aborts, snapshots and reopens from a seeded generator; every result and
//! the whole visible state are checked after every step.

mod common;

use mapkv::check::{run_ops, Op};

#[test]
fn random_operations_match_the_model() {
    let mut commits = 0;
    for seed in 0..40 {
        let mut rng = common::rng(seed);
        let ops = common::random_ops(&mut rng, 150, seed % 4 == 0, true);
        match run_ops(&ops, seed) {
            Ok(r) => commits += r.commits,
            Err(e) => panic!("seed {seed}: {e}\nops: {ops:?}"),
        }
    }
    // About a fifth of the operations commit, many of them non-empty: a
    // harness whose commits stopped landing would check nothing.
    assert!(commits >= 40 * 10, "only {commits} commits in 40 runs");
}

#[test]
fn a_long_run_crosses_extents_and_grows_the_index() {
    // 5,000 steps over 64 keys plus big values: many extents, several index
    // growths, snapshots held across all of it.
    let mut rng = common::rng(4242);
    let mut ops = common::random_ops(&mut rng, 5000, true, true);
    ops.push(Op::Commit);
    let report = run_ops(&ops, 7).unwrap();
    assert!(
        report.index_slots > 512, // the first table (format: MIN_INDEX_LOG2 = 9)
        "the index never grew: {report:?}"
    );
}

#[test]
fn own_writes_then_abort_leave_no_trace() {
    run_ops(
        &[
            Op::Put { key: 1, len: 5 },
            Op::Commit,
            Op::Put { key: 1, len: 9 },
            Op::Delete { key: 2 },
            Op::Put { key: 2, len: 3 },
            Op::TxnGet { key: 1 },
            Op::TxnGet { key: 2 },
            Op::Abort,
            Op::TxnGet { key: 1 },
            Op::Reopen,
            Op::Delete { key: 1 },
            Op::Commit,
        ],
        0,
    )
    .unwrap();
}

#[test]
fn put_then_delete_of_a_new_key_in_one_transaction_commits_nothing_visible() {
    run_ops(
        &[
            Op::Snapshot,
            Op::Put { key: 3, len: 5 },
            Op::Delete { key: 3 },
            Op::Commit,
            Op::Reopen,
            Op::Put { key: 3, len: 1 },
            Op::Commit,
        ],
        0,
    )
    .unwrap();
}

#[test]
fn keys_of_every_length_changes_readers_second_handles_and_backups_match_the_model() {
    // Every key length the long-key op makes (1 B to 64 KiB), commits of
    // both kinds, compaction, and after each commit: the changes replayed
    // over the commit before, a second handle's view, and a backup's.
    let mut ops = Vec::new();
    for i in 0..15u16 {
        ops.push(Op::LongKey {
            key: i as u8,
            len: i * 5 + i % 5,
        });
        ops.push(Op::Put {
            key: i as u8,
            len: i * 11,
        });
        if i % 3 == 0 {
            ops.push(Op::Delete { key: i as u8 / 2 });
        }
        ops.push(match i % 3 {
            0 => Op::Commit,
            1 => Op::CommitEventual,
            _ => Op::CommitBesideReader,
        });
        ops.push(Op::Changes { back: i as u8 });
        ops.push(if i % 2 == 0 {
            Op::SecondHandle
        } else {
            Op::ReadOnlyHandle
        });
        if i % 4 == 3 {
            ops.push(Op::Backup);
            ops.push(Op::Compact);
        }
    }
    let report = run_ops(&ops, 5).unwrap();
    assert!(report.commits >= 15, "{report:?}");
}

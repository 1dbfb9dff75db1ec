//! Space coming back: compaction inside commits and on demand, reuse only
//! after every snapshot that could read an extent has ended, the index
//! moving to new tables over several commits, hot backup, and shrinking
//! the file when alone. (Crash cuts inside all of it: tests/crash.rs.)

mod common;

use std::collections::BTreeMap;

use mapkv::{Error, Options, Store};
use rand::Rng;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// Overwrites `keys` keys with `len`-byte values tagged `round`, in
/// commits of 100.
fn overwrite(store: &Store, keys: u32, len: usize, round: u8) {
    overwrite_in(store, keys, len, round, 100);
}

#[test]
fn commits_reclaim_space_and_every_snapshot_keeps_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a.kv")).unwrap();
    let mut rng = common::rng(1);
    let mut model = Model::new();
    let mut held: Vec<(mapkv::ReadTxn<'_>, Model)> = Vec::new();
    let mut peak = 0;
    for c in 0..400u32 {
        let mut tx = store.begin_write().unwrap();
        for _ in 0..50 {
            let k = key(rng.gen_range(0..2_000));
            if rng.gen_bool(0.1) {
                tx.delete(&k).unwrap();
                model.remove(&k);
            } else {
                let v = vec![c as u8; rng.gen_range(50..400)];
                tx.put(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
        tx.commit().unwrap();
        if c % 50 == 25 {
            held.push((store.begin_read().unwrap(), model.clone()));
        }
        if c % 50 == 45 && held.len() > 2 {
            held.remove(0);
        }
        peak = peak.max(store.stats().unwrap().file_bytes);
    }
    let stats = store.stats().unwrap();
    assert!(stats.reclaimed_total >= 2 << 20, "{stats:?}");
    // Live data is ~500 KB; without reuse the log would pass 4.9 MB (and
    // the file 7 MiB) — even with two snapshots pinning old extents.
    assert!(peak <= 5 << 20, "file grew to {peak} bytes");
    // Snapshots held across compaction read exactly their state.
    for (snap, want) in &held {
        let got: Model = snap
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert!(&got == want, "snapshot {} changed", snap.seq());
    }
    drop(held);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
    store.close().unwrap();
    let store = Store::open(dir.path().join("a.kv")).unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), model.len() as u64);
    for (k, v) in &model {
        assert_eq!(snap.get(k).unwrap(), Some(&v[..]));
    }
}

#[test]
fn an_extent_is_reused_only_after_the_snapshots_that_read_it_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .auto_compact(false)
        .open(dir.path().join("b.kv"))
        .unwrap();
    overwrite(&store, 3_000, 400, 1);
    let old = store.begin_read().unwrap();
    for round in 2..6 {
        overwrite(&store, 3_000, 400, round);
    }
    let report = store.compact().unwrap();
    assert!(report.bytes_retired > 0, "{report:?}");
    // The old snapshot pins what it reads: retired, not free.
    let pinned = store.stats().unwrap();
    assert!(pinned.retired_bytes > 0, "{pinned:?}");
    for i in (0..3_000).step_by(97) {
        assert_eq!(old.get(key(i)).unwrap(), Some(&[1u8; 400][..]));
    }
    drop(old);
    // Its end frees them at the next write.
    store.put(b"x", b"y").unwrap();
    let after = store.stats().unwrap();
    assert_eq!(after.retired_bytes, 0, "{after:?}");
    assert!(after.free_bytes >= pinned.retired_bytes, "{after:?}");
    assert_eq!(store.get(key(5)).unwrap(), Some(vec![5u8; 400]));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn compact_packs_the_file_and_shrinks_it_only_when_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.kv");
    let store = Options::new().auto_compact(false).open(&db).unwrap();
    for round in 0..8 {
        overwrite(&store, 2_000, 1_000, round);
    }
    let before = store.stats().unwrap();
    // Another handle is open: space is reclaimed, the file keeps its size.
    let other = Store::open(&db).unwrap();
    let shared = store.compact().unwrap();
    assert_eq!(shared.bytes_after, before.file_bytes, "{shared:?}");
    assert!(shared.records_moved > 0);
    assert_eq!(std::fs::metadata(&db).unwrap().len(), before.file_bytes);
    drop(other);
    // Alone: the free space at the end is cut off.
    let alone = store.compact().unwrap();
    let after = store.stats().unwrap();
    assert!(alone.bytes_after < before.file_bytes / 3, "{alone:?}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), alone.bytes_after);
    assert_eq!(after.file_bytes, alone.bytes_after);
    // Live records (2 MB), their extents and the fixed 512 KiB header.
    assert!(after.file_bytes <= 3 << 20, "after compact: {after:?}");
    assert!(store.verify().unwrap().is_ok());
    // It still grows and works after the cut, and reopens.
    overwrite(&store, 2_000, 1_000, 9);
    store.close().unwrap();
    let store = Store::open(&db).unwrap();
    assert_eq!(store.get(key(1_999)).unwrap(), Some(vec![9u8; 1_000]));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn the_index_moves_to_a_larger_table_over_several_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("d.kv")).unwrap();
    let mut moving_seen = 0;
    let mut slots = Vec::new();
    let mut next = 0u32;
    for _ in 0..100 {
        let mut tx = store.begin_write().unwrap();
        for _ in 0..500 {
            tx.put(key(next), next.to_le_bytes()).unwrap();
            next += 1;
        }
        tx.commit().unwrap();
        let s = store.stats().unwrap();
        if s.index_moving > 0 {
            moving_seen += 1;
            // Mid-move, every key is found (new table, then old).
            let snap = store.begin_read().unwrap();
            for i in (0..next).step_by(37) {
                assert_eq!(snap.get(key(i)).unwrap(), Some(&i.to_le_bytes()[..]));
            }
            assert_eq!(snap.iter().count() as u32, next);
        }
        slots.push(s.index_slots);
    }
    assert!(
        moving_seen >= 3,
        "the index never stayed mid-move: {moving_seen}"
    );
    assert!(slots.last().unwrap() >= &65_536);
    assert!(store.verify().unwrap().is_ok());
    // Mass deletes: the index moves to a smaller table and drops them.
    let big = store.stats().unwrap().index_slots;
    for chunk in (0..next - 1_000).collect::<Vec<_>>().chunks(5_000) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            tx.delete(key(i)).unwrap();
        }
        tx.commit().unwrap();
    }
    // Small commits finish the moves (each moves at least 256 slots).
    for _ in 0..1_000 {
        store.put(b"tick", b"").unwrap();
    }
    let s = store.stats().unwrap();
    assert!(
        s.index_slots < big / 8,
        "{} slots after deletes (was {big})",
        s.index_slots
    );
    assert_eq!(s.keys, 1_001);
    assert_eq!(
        store.get(key(next - 1)).unwrap(),
        Some((next - 1).to_le_bytes().to_vec())
    );
    assert_eq!(store.get(key(3)).unwrap(), None);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn the_next_index_table_is_prepared_ahead_and_starts_out_zeroed() {
    // While a table fills, the commits prepare the space at the end of the
    // file where the next table will go, so the commit that starts the
    // move into a table (of 2 MiB, and of 8 MiB) does not grow the file by
    // the table. An aborted transaction that wrote records past the
    // allocation end just before leaves bytes where the new table lands:
    // they must be zeroed, not taken for prepared zeros.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.kv");
    let store = Store::open(&path).unwrap();
    let mut next = 0u32;
    let mut aborted = false;
    let mut started = None;
    let mut started_small = None;
    while next < 600_000 {
        let before = store.stats().unwrap();
        // The commit after this one starts the move (at 3/4 load).
        let moves_next = before.index_used + 10_000 > (1 << 19) * 3 / 4;
        if before.index_slots == 1 << 19 && before.index_moving == 0 && moves_next && !aborted {
            let mut tx = store.begin_write().unwrap();
            for i in 0..30_000u32 {
                tx.put(i.to_be_bytes(), [0xAB; 100]).unwrap();
            }
            tx.abort();
            aborted = true;
        }
        let mut tx = store.begin_write().unwrap();
        for _ in 0..10_000 {
            tx.put(key(next), next.to_le_bytes()).unwrap();
            next += 1;
        }
        tx.commit().unwrap();
        let after = store.stats().unwrap();
        if before.index_slots == 1 << 17 && after.index_slots == 1 << 18 {
            started_small = Some(after.file_bytes - before.file_bytes);
        }
        if before.index_slots == 1 << 19 && after.index_slots == 1 << 20 {
            started = Some(after.file_bytes - before.file_bytes);
        }
        if started.is_some() && after.index_moving == 0 {
            break;
        }
    }
    assert!(aborted, "no aborted transaction before the move");
    let check = |store: &Store| {
        let snap = store.begin_read().unwrap();
        for i in (0..next).step_by(7) {
            assert_eq!(
                snap.get(key(i)).unwrap(),
                Some(&i.to_le_bytes()[..]),
                "key {i}"
            );
        }
        assert_eq!(snap.get(7u32.to_be_bytes()).unwrap(), None);
        assert_eq!(store.stats().unwrap().keys, next as u64);
        assert!(store.verify().unwrap().is_ok());
    };
    check(&store);
    drop(store);
    check(&Store::open(&path).unwrap());
    let grew = started_small.expect("the index never moved to 2^18 slots");
    assert!(
        grew < 2 << 20,
        "the commit that started the move grew the file by {grew} bytes: its 2 MiB table was not prepared"
    );
    let grew = started.expect("the index never moved to 2^20 slots");
    assert!(
        grew < 4 << 20,
        "the commit that started the move grew the file by {grew} bytes: its 8 MiB table was not prepared"
    );
}

#[test]
fn one_commit_sizes_the_index_for_exactly_the_keys_it_adds() {
    // A commit counts the keys it adds as it writes: a key put and then
    // deleted in the same transaction adds none, a key put twice adds one.
    // The new table is the smallest power of two at most half full.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("d.kv")).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..20_000 {
        tx.put(key(i), b"v").unwrap();
    }
    for i in 0..10_000 {
        assert!(tx.delete(key(i)).unwrap());
    }
    for i in 0..5_000 {
        tx.put(key(i), b"again").unwrap();
    }
    for i in 15_000..20_000 {
        tx.put(key(i), b"twice").unwrap();
    }
    tx.commit().unwrap();
    let s = store.stats().unwrap();
    assert_eq!(s.keys, 15_000);
    // 15,000 keys: 32,768 slots (counting the 20,000 ever put: 65,536).
    assert_eq!(s.index_slots, 32_768);
    assert_eq!(s.index_used, 15_000);
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.get(key(4_999)).unwrap(), Some(&b"again"[..]));
    assert_eq!(snap.get(key(5_000)).unwrap(), None);
    assert_eq!(snap.get(key(12_000)).unwrap(), Some(&b"v"[..]));
    assert_eq!(snap.get(key(19_999)).unwrap(), Some(&b"twice"[..]));
    drop(snap);
    assert!(store.verify().unwrap().is_ok());
}

/// The copy is exactly the snapshot it began from, though the writer
/// commits, deletes and compacts in the middle of it (from the progress
/// callback, after the first batch: during the copy by construction, not
/// by timing) while reader threads check the bank total.
#[test]
fn a_backup_equals_its_snapshot_though_commits_and_compact_run_during_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src.kv")).unwrap();
    const ACCOUNTS: u32 = 25_000; // more than one batch of the backup
    let mut before = BTreeMap::new();
    {
        let mut tx = store.begin_write().unwrap();
        for i in 0..ACCOUNTS {
            let v = (100 + u64::from(i % 7)).to_le_bytes();
            tx.put(key(i), v).unwrap();
            before.insert(key(i), v.to_vec());
        }
        tx.commit().unwrap();
    }
    let total: u64 = before
        .values()
        .map(|v| u64::from_le_bytes(v[..].try_into().unwrap()))
        .sum();
    let seq0 = store.begin_read().unwrap().seq();
    let reclaimed0 = store.stats().unwrap().reclaimed_total;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut during, mut compacted) = (None, None);
    let report = std::thread::scope(|s| {
        for t in 0..2 {
            let (store, stop) = (&store, &stop);
            s.spawn(move || {
                let mut checks = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || checks == 0 {
                    let snap = store.begin_read().unwrap();
                    let sum: u64 = snap
                        .iter()
                        .map(|r| u64::from_le_bytes(r.unwrap().1.try_into().unwrap()))
                        .sum();
                    assert_eq!(sum, total, "reader {t}, seq {}", snap.seq());
                    checks += 1;
                }
            });
        }
        let _stop_readers = common::StopOnDrop(&stop);
        let r = store
            .backup_to_with_progress(dir.path().join("copy.kv"), |copied, all| {
                if copied >= all || during.is_some() {
                    return;
                }
                let mut rng = common::rng(41);
                for _ in 0..200 {
                    let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                    let mut tx = store.begin_write().unwrap();
                    let get = |tx: &mapkv::WriteTxn<'_>, k| {
                        u64::from_le_bytes(tx.get(key(k)).unwrap().unwrap().try_into().unwrap())
                    };
                    let (ba, bb) = (get(&tx, a), get(&tx, b));
                    if a != b {
                        tx.put(key(a), (ba - 1).to_le_bytes()).unwrap();
                        tx.put(key(b), (bb + 1).to_le_bytes()).unwrap();
                    }
                    tx.commit().unwrap();
                }
                // Rewrite every account (the same totals): the first
                // extents go dead, and compaction has work.
                for chunk in (0..ACCOUNTS).collect::<Vec<_>>().chunks(5_000) {
                    let mut tx = store.begin_write().unwrap();
                    for &i in chunk {
                        let v = tx.get(key(i)).unwrap().unwrap().to_vec();
                        tx.put(key(i), &v).unwrap();
                    }
                    tx.commit().unwrap();
                }
                compacted = Some(store.compact().unwrap());
                during = Some(store.begin_read().unwrap().seq());
            })
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let during = during.expect("the progress callback ran mid-copy");
    let compacted = compacted.unwrap();
    assert_eq!(
        report.seq, seq0,
        "the backup's snapshot is the state it began at"
    );
    assert!(during > seq0 + 200, "the writer committed during the copy");
    // Extents the snapshot reads were retired during the copy: by the
    // rewrite's own compaction (`compact()` leaves alone extents newer
    // than the oldest snapshot, the backup's), or by `compact()`.
    let retired = store.stats().unwrap().reclaimed_total - reclaimed0;
    assert!(
        retired + compacted.bytes_retired > 0,
        "nothing retired during the copy: {compacted:?}"
    );
    let copy = Store::open(dir.path().join("copy.kv")).unwrap();
    assert!(copy.verify().unwrap().is_ok());
    let snap = copy.begin_read().unwrap();
    let got: BTreeMap<Vec<u8>, Vec<u8>> = snap
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect();
    assert!(
        got == before,
        "the copy differs from the snapshot it began from"
    );
}

#[test]
fn a_backup_is_one_consistent_snapshot_while_a_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("e.kv")).unwrap();
    const ACCOUNTS: u32 = 2_000;
    {
        let mut tx = store.begin_write().unwrap();
        for i in 0..ACCOUNTS {
            tx.put(key(i), 100u64.to_le_bytes()).unwrap();
        }
        tx.commit().unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = common::rng(3);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut tx = store.begin_write().unwrap();
                let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                let get = |tx: &mapkv::WriteTxn<'_>, k| {
                    u64::from_le_bytes(tx.get(key(k)).unwrap().unwrap().try_into().unwrap())
                };
                let (ba, bb) = (get(&tx, a), get(&tx, b));
                if a != b && ba > 0 {
                    tx.put(key(a), (ba - 1).to_le_bytes()).unwrap();
                    tx.put(key(b), (bb + 1).to_le_bytes()).unwrap();
                }
                tx.commit().unwrap();
            }
        });
        let _stop_writer = common::StopOnDrop(&stop);
        let r = store.backup_to(dir.path().join("copy.kv")).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    assert_eq!(report.keys, ACCOUNTS as u64);
    // The destination is never overwritten.
    assert!(matches!(
        store.backup_to(dir.path().join("copy.kv")),
        Err(Error::Io { .. })
    ));
    let copy = Store::open(dir.path().join("copy.kv")).unwrap();
    assert!(copy.verify().unwrap().is_ok());
    let snap = copy.begin_read().unwrap();
    let total: u64 = snap
        .iter()
        .map(|r| u64::from_le_bytes(r.unwrap().1.try_into().unwrap()))
        .sum();
    assert_eq!(total, 100 * ACCOUNTS as u64);
    assert_eq!(snap.len(), ACCOUNTS as u64);
    // A compacted copy: no dead records.
    let stats = copy.stats().unwrap();
    assert!(stats.dead_bytes < stats.live_bytes / 4, "{stats:?}");
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn changes_of_reclaimed_commits_are_reported_as_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .auto_compact(false)
        .open(dir.path().join("f.kv"))
        .unwrap();
    for round in 0..6 {
        overwrite(&store, 2_000, 500, round);
    }
    store.compact().unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.history_from > 0, "{stats:?}");
    let snap = store.begin_read().unwrap();
    match snap.changes_since(0) {
        Err(Error::HistoryReclaimed { oldest, .. }) => assert_eq!(oldest, stats.history_from),
        other => panic!("{:?}", other.map(|c| c.count())),
    }
    // Later commits are listed, and compaction's copies are not.
    store.put(b"new", b"1").unwrap();
    let now = store.begin_read().unwrap();
    let listed: Vec<_> = now
        .changes_since(stats.history_from)
        .unwrap()
        .map(|c| c.unwrap().1.to_vec())
        .collect();
    assert_eq!(listed, vec![b"new".to_vec()]);
}

/// After mass deletes the first compaction step also starts a move to a
/// smaller, cleaner table. `compact()` used to drop that transaction and
/// stop, compacting nothing, so a store that had deleted most of its keys
/// could never get its space back.
#[test]
fn compact_after_mass_deletes_moves_the_index_and_packs_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .auto_compact(false)
        .durability(mapkv::Durability::Eventual)
        .open(dir.path().join("d.kv"))
        .unwrap();
    for round in 0..3 {
        overwrite_in(&store, 40_000, 60, round, 5_000);
    }
    let mut tx = store.begin_write().unwrap();
    for i in 1_000..40_000 {
        assert!(tx.delete(key(i)).unwrap());
    }
    tx.commit().unwrap();
    let before = store.stats().unwrap();
    assert!(
        before.dead_bytes > 20 * before.live_bytes,
        "setup: mostly dead {before:?}"
    );
    let report = store.compact().unwrap();
    let after = store.stats().unwrap();
    assert!(report.records_moved >= 1_000, "{report:?}");
    assert!(
        after.file_bytes * 4 < before.file_bytes,
        "file {} -> {} bytes",
        before.file_bytes,
        after.file_bytes
    );
    assert!(
        after.index_slots < before.index_slots,
        "index not moved to a smaller table"
    );
    assert!(after.dead_bytes < after.live_bytes, "{after:?}");
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), 1_000);
    for i in 0..1_000 {
        assert_eq!(snap.get(key(i)).unwrap(), Some(&[2u8; 60][..]), "key {i}");
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// Deleting half the keys leaves the index twice the size they need: too
/// few deleted keys for commits to move it (they would pay for the move),
/// but `compact()` was asked for the space and moves it to a table half
/// the size, which it finishes in its next step.
#[test]
fn compact_moves_an_index_twice_too_big_to_a_table_half_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = compact_by_hand(&dir.path().join("h.kv"));
    // 25,000 keys: the table grew to 65,536 slots at 24,576 (3/4 of
    // 32,768); the second round lets its move finish.
    overwrite_in(&store, 25_000, 60, 1, 5_000);
    overwrite_in(&store, 25_000, 60, 1, 5_000);
    // A snapshot from before the deletes reads the table it began with.
    let old = store.begin_read().unwrap();
    delete_odd(&store, 25_000);
    let before = store.stats().unwrap();
    assert_eq!(before.index_moving, 0, "setup: the deletes moved the index");
    assert!(
        before.index_slots >= 4 * before.keys,
        "setup: the table is not twice too big {before:?}"
    );
    store.compact().unwrap();
    let after = store.stats().unwrap();
    assert_eq!(after.index_slots, before.index_slots / 2, "{after:?}");
    assert_eq!(after.index_moving, 0, "the move was left unfinished");
    assert_eq!(
        after.index_used, after.keys,
        "deleted keys kept their slots"
    );
    for i in 0..25_000 {
        assert_eq!(
            old.get(key(i)).unwrap(),
            Some(&[1u8; 60][..]),
            "old snapshot, key {i}"
        );
    }
    drop(old);
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), 12_500);
    for i in 0..25_000 {
        let want = (i % 2 == 0).then_some(&[1u8; 60][..]);
        assert_eq!(snap.get(key(i)).unwrap(), want, "key {i}");
    }
    drop(snap);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// Deletes compaction may not forget (a snapshot from before them is open)
/// count as dead, so the extents holding their copies look dead too.
/// Compaction chose those again and again: `compact()` copied 65x the
/// live bytes and grew the file 11x, automatic compaction beside a
/// long-lived snapshot copied 60x more than it does now. It now leaves
/// alone extents newer than the oldest snapshot (what it would retire
/// there is not freed before that snapshot ends anyway).
#[test]
fn compaction_beside_an_old_snapshot_does_not_copy_its_own_copies_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = compact_by_hand(&dir.path().join("o.kv"));
    overwrite_in(&store, 40_000, 60, 1, 5_000);
    overwrite_in(&store, 40_000, 60, 2, 5_000);
    let old = store.begin_read().unwrap();
    delete_odd(&store, 40_000);
    let before = store.stats().unwrap();
    let report = store.compact().unwrap();
    let after = store.stats().unwrap();
    // At most one copy of each record of the log as it was.
    assert!(
        report.bytes_moved <= before.log_extent_bytes,
        "{report:?} {before:?}"
    );
    assert!(after.file_bytes <= 2 * before.file_bytes, "{after:?}");
    for i in 0..40_000 {
        assert_eq!(old.get(key(i)).unwrap(), Some(&[2u8; 60][..]), "key {i}");
    }
    drop(old);
    // The snapshot gone, the next compaction packs the store.
    let report = store.compact().unwrap();
    let packed = store.stats().unwrap();
    assert!(
        packed.file_bytes < before.file_bytes / 2,
        "{report:?} {packed:?}"
    );
    assert_eq!(store.begin_read().unwrap().len(), 20_000);
    assert!(store.verify().unwrap().is_ok());

    // Automatic compaction, rounds of deletes and puts beside a snapshot
    // that lives through all of them.
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .durability(mapkv::Durability::Eventual)
        .open(dir.path().join("a.kv"))
        .unwrap();
    overwrite_in(&store, 40_000, 60, 1, 5_000);
    let old = store.begin_read().unwrap();
    let start = store.stats().unwrap();
    for round in 0..10u8 {
        let mut tx = store.begin_write().unwrap();
        for i in (0..40_000).filter(|i| i % 2 == (round % 2) as u32) {
            tx.delete(key(i)).unwrap();
        }
        tx.commit().unwrap();
        overwrite_in(&store, 40_000, 60, round, 5_000);
    }
    let end = store.stats().unwrap();
    let written = end.log_bytes - start.log_bytes;
    assert!(
        (end.moved_total - start.moved_total) * 10 < written,
        "compaction copied {} bytes beside {written} written: {end:?}",
        end.moved_total - start.moved_total
    );
    assert_eq!(old.get(key(1)).unwrap(), Some(&[1u8; 60][..]));
    drop(old);
    assert!(store.verify().unwrap().is_ok());
}

/// A store that compacts only when asked, with `Eventual` commits.
fn compact_by_hand(path: &std::path::Path) -> Store {
    Options::new()
        .auto_compact(false)
        .durability(mapkv::Durability::Eventual)
        .open(path)
        .unwrap()
}

/// Deletes the odd keys below `keys`, in one commit.
fn delete_odd(store: &Store, keys: u32) {
    let mut tx = store.begin_write().unwrap();
    for i in (0..keys).filter(|i| i % 2 == 1) {
        assert!(tx.delete(key(i)).unwrap());
    }
    tx.commit().unwrap();
}

/// Like `overwrite`, in commits of `batch`.
fn overwrite_in(store: &Store, keys: u32, len: usize, round: u8, batch: usize) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(batch) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            tx.put(key(i), vec![round; len]).unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Automatic compaction rides in commits in proportion to their own bytes:
/// on a churned store a one-put commit moves at most a few records (it
/// used to copy at least 64 KiB, which made it ~4× slower than on a fresh
/// store), and many such commits still empty extents.
#[test]
fn a_small_commit_on_a_churned_store_compacts_in_proportion_to_its_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .durability(mapkv::Durability::Eventual)
        .auto_compact(false)
        .open(dir.path().join("c.kv"))
        .unwrap();
    overwrite_in(&store, 20_000, 100, 1, 1_000);
    overwrite_in(&store, 20_000, 100, 2, 1_000);
    let mut tx = store.begin_write().unwrap();
    for i in (0..20_000).step_by(2) {
        tx.delete(key(i)).unwrap();
    }
    tx.commit().unwrap();
    drop(store);
    let store = Options::new()
        .durability(mapkv::Durability::Eventual)
        .open(dir.path().join("c.kv"))
        .unwrap();
    let start = store.stats().unwrap();
    assert!(
        start.dead_bytes as f64 > 0.5 * start.log_extent_bytes as f64,
        "setup: not churned {start:?}"
    );
    let mut before = start.clone();
    let mut most = 0;
    for c in 0..3_000u32 {
        store.put(key(2 * (c % 10_000)), [3; 100]).unwrap();
        let now = store.stats().unwrap();
        most = most.max(now.moved_total - before.moved_total);
        before = now;
    }
    assert!(
        most <= 2 << 10,
        "a one-put commit moved {most} bytes of other records"
    );
    assert!(
        before.reclaimed_total > start.reclaimed_total,
        "3,000 commits emptied no extent: {before:?}"
    );
    for c in 0..3_000u32 {
        let i = 2 * (c % 10_000);
        assert_eq!(store.get(key(i)).unwrap(), Some(vec![3; 100]), "key {i}");
        assert_eq!(
            store.get(key(i + 1)).unwrap(),
            Some(vec![2; 100]),
            "key {}",
            i + 1
        );
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// `changes_since` in reader threads while commits and `compact()` reclaim
/// the history it lists: every call lists each change in order with the
/// value its commit wrote, or says `HistoryReclaimed` (with an oldest seq
/// past the one asked for); never a damaged or a wrong record.
#[test]
fn changes_since_beside_compaction_lists_every_change_or_says_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .auto_compact(false)
        .open(dir.path().join("history.kv"))
        .unwrap();
    const KEYS: u32 = 2_000;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (listed, reclaimed) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2u64)
            .map(|t| {
                let (store, stop) = (&store, &stop);
                s.spawn(move || {
                    let mut rng = common::rng(t);
                    let (mut listed, mut reclaimed) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let snap = store.begin_read().unwrap();
                        let from = rng.gen_range(0..=snap.seq());
                        match snap.changes_since(from) {
                            Err(Error::HistoryReclaimed { oldest, .. }) => {
                                assert!(oldest > from, "reclaimed {oldest} <= {from}");
                                reclaimed += 1;
                            }
                            Err(e) => panic!("changes_since({from}) at {}: {e}", snap.seq()),
                            Ok(changes) => {
                                let mut last = from;
                                for c in changes {
                                    let (seq, _, v) = c.unwrap_or_else(|e| {
                                        panic!("changes since {from} at {}: {e}", snap.seq())
                                    });
                                    assert!(seq > from && seq <= snap.seq() && seq >= last);
                                    last = seq;
                                    // Each commit writes its own seq as every value.
                                    assert_eq!(v, Some(&seq.to_le_bytes()[..]), "at seq {seq}");
                                }
                                listed += 1;
                            }
                        }
                    }
                    (listed, reclaimed)
                })
            })
            .collect();
        let _stop_readers = common::StopOnDrop(&stop);
        for _ in 0..40 {
            let seq = store.begin_read().unwrap().seq() + 1;
            let mut tx = store.begin_write().unwrap();
            for i in 0..KEYS {
                tx.put(key(i), seq.to_le_bytes()).unwrap();
            }
            assert_eq!(tx.commit().unwrap(), seq);
            store.compact().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    println!("{listed} listings, {reclaimed} answered HistoryReclaimed");
    assert!(
        listed > 0 && reclaimed > 0,
        "{listed} listed, {reclaimed} reclaimed"
    );
}

/// A delete that the index names and that no open snapshot can see past
/// is forgotten by compaction (its key's slot marked forgotten), not
/// copied; while a snapshot from before the deletes is open, compaction
/// leaves their extents alone (newer than that snapshot), forgets none,
/// and that snapshot still reads the values they deleted.
#[test]
fn compaction_forgets_the_deletes_no_snapshot_can_see_past() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.kv");
    let store = Options::new()
        .auto_compact(false)
        .durability(mapkv::Durability::Eventual)
        .open(&path)
        .unwrap();
    overwrite_in(&store, 20_000, 100, 1, 1_000);
    let before_deletes = store.begin_read().unwrap();
    for chunk in (0..20_000).step_by(2).collect::<Vec<u32>>().chunks(1_000) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            assert!(tx.delete(key(i)).unwrap());
        }
        tx.commit().unwrap();
    }
    // Some overwrites, so the deletes' extents are not all there is.
    for chunk in (1..2_000).step_by(2).collect::<Vec<u32>>().chunks(500) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            tx.put(key(i), [2; 100]).unwrap();
        }
        tx.commit().unwrap();
    }
    let held = store.compact().unwrap();
    for i in 0..20_000 {
        assert_eq!(
            before_deletes.get(key(i)).unwrap(),
            Some(&[1u8; 100][..]),
            "key {i} in the snapshot from before the deletes"
        );
    }
    assert_eq!(held.deletes_forgotten, 0, "{held:?}");
    drop(before_deletes);
    let after_deletes = store.begin_read().unwrap();
    let log_before = store.stats().unwrap().log_bytes;
    let freed = store.compact().unwrap();
    // (The newest deletes may share the log's open extent, which
    // compaction leaves alone.)
    assert!(freed.deletes_forgotten >= 9_000, "{freed:?}");
    let stats = store.stats().unwrap();
    assert_eq!(stats.keys, 10_000);
    // The deletes are gone from the log: it holds little besides the puts.
    assert!(
        stats.dead_bytes < 10_000 * 20,
        "{} dead bytes left (log {} before)",
        stats.dead_bytes,
        log_before
    );
    let check = |snap: &mapkv::ReadTxn<'_>| {
        for i in 0..20_000u32 {
            let want = match i {
                _ if i % 2 == 0 => None,
                _ if i < 2_000 => Some(&[2u8; 100][..]),
                _ => Some(&[1u8; 100][..]),
            };
            assert_eq!(snap.get(key(i)).unwrap(), want, "key {i}");
        }
        assert_eq!(snap.len(), 10_000);
        assert_eq!(snap.iter().count(), 10_000);
    };
    check(&after_deletes);
    check(&store.begin_read().unwrap());
    drop(after_deletes);
    // Forgotten keys put back, deleted again, and a reopen.
    let mut tx = store.begin_write().unwrap();
    for i in (0..400).step_by(2) {
        assert!(!tx.delete(key(i)).unwrap(), "forgotten key {i} was there");
        tx.put(key(i), [7; 10]).unwrap();
    }
    tx.commit().unwrap();
    assert!(store.delete(key(0)).unwrap());
    drop(store);
    let store = Store::open(&path).unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.get(key(0)).unwrap(), None);
    for i in (2..400).step_by(2) {
        assert_eq!(snap.get(key(i)).unwrap(), Some(&[7u8; 10][..]), "key {i}");
    }
    assert_eq!(snap.len(), 10_000 + 199);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// A wave of deletes (or overwrites) pays for the garbage it makes as it
/// makes it: automatic compaction's budget grows with the bytes a commit
/// kills, so the dead share of the log stays near the threshold through
/// the wave instead of waiting for later commits to catch up.
#[test]
fn a_wave_of_deletes_keeps_the_dead_share_of_the_log_near_the_threshold() {
    // The default threshold (0.2), then 0.3 (the default until 2026-12-04).
    for (threshold, limit) in [(None, 0.35), (Some(0.3), 0.45)] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::new().durability(mapkv::Durability::Eventual);
        if let Some(t) = threshold {
            opts = opts.compact_threshold(t);
        }
        let store = opts.open(dir.path().join("wave.kv")).unwrap();
        let keys = 40_000;
        overwrite_in(&store, keys, 100, 1, 1_000);
        overwrite_in(&store, keys, 100, 2, 1_000);
        overwrite_in(&store, keys, 100, 3, 1_000);
        let dead_share = |s: &mapkv::Stats| s.dead_bytes as f64 / s.log_extent_bytes as f64;
        let mut worst: f64 = 0.0;
        let order: Vec<u32> = (0..keys).filter(|i| i % 2 == 0).collect();
        for chunk in order.chunks(1_000) {
            let mut tx = store.begin_write().unwrap();
            for &i in chunk {
                assert!(tx.delete(key(i)).unwrap());
            }
            tx.commit().unwrap();
            worst = worst.max(dead_share(&store.stats().unwrap()));
        }
        println!("threshold {threshold:?}: worst dead share during the wave: {worst:.3}");
        assert!(
            worst < limit,
            "threshold {threshold:?}: the dead share reached {worst:.3}"
        );
        for i in 0..keys {
            let want = (i % 2 == 1).then(|| vec![3; 100]);
            assert_eq!(store.get(key(i)).unwrap(), want, "key {i}");
        }
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{report}");
    }
}

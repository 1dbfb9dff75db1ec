//! The reader table, change listing and commit waits, within one process
//! (the cross-process versions are in `multiprocess.rs`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mapkv::faults::{Faults, PausePoint};
use mapkv::{Error, Options, Store};
use rand::Rng;

#[test]
fn snapshots_are_registered_while_open_and_released_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"k", b"1").unwrap();
    let a = store.begin_read().unwrap();
    store.put(b"k", b"2").unwrap();
    let b = store.begin_read().unwrap();
    // A read-only handle on a file it may write registers too.
    let ro = Options::new().read_only(true).open(&db).unwrap();
    let c = ro.begin_read().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.open_snapshots, 3);
    assert_eq!(stats.oldest_snapshot, Some(a.seq()));
    assert!(!stats.unregistered_readers);
    let mut seqs: Vec<u64> = store.readers().unwrap().iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![a.seq(), b.seq(), c.seq()]);
    drop(a);
    assert_eq!(store.stats().unwrap().oldest_snapshot, Some(b.seq()));
    drop((b, c));
    let stats = store.stats().unwrap();
    assert_eq!((stats.open_snapshots, stats.oldest_snapshot), (0, None));
    // A closed handle gives its chunk back: nothing left to clear.
    drop(ro);
    assert_eq!(store.clear_stale_readers().unwrap(), 0);
}

#[test]
fn a_full_reader_table_is_an_error_not_a_hang_and_frees_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("full.kv")).unwrap();
    let mut snaps = Vec::new();
    let err = loop {
        match store.begin_read() {
            Ok(s) => snaps.push(s),
            Err(e) => break e,
        }
        assert!(snaps.len() <= 10_000, "the table never filled");
    };
    assert!(matches!(err, Error::TooManyReaders { .. }), "{err}");
    assert_eq!(snaps.len(), 208 * 15, "every slot of every chunk was used");
    assert!(err.to_string().contains("reader table is full"), "{err}");
    snaps.pop();
    let again = store.begin_read().unwrap();
    assert_eq!(store.stats().unwrap().open_snapshots, 208 * 15);
    drop(again);
}

/// Changes listed from every starting point match what the transactions
/// did, across extents (large values) and with keys written twice in one
/// transaction.
#[test]
fn changes_since_lists_exactly_what_each_commit_did() {
    let dir = tempfile::tempdir().unwrap();
    // Every commit's changes stay listable only while nothing reclaims
    // them (tests/compaction.rs covers `HistoryReclaimed`).
    let store = Options::new()
        .auto_compact(false)
        .open(dir.path().join("c.kv"))
        .unwrap();
    let mut rng = common::rng(11);
    // Per commit: its net changes in first-write order.
    type Net = Vec<(Vec<u8>, Option<Vec<u8>>)>;
    let mut history: BTreeMap<u64, Net> = BTreeMap::new();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for _ in 0..120 {
        let mut tx = store.begin_write().unwrap();
        let mut net: Net = Vec::new();
        for _ in 0..rng.gen_range(1..12) {
            let key = format!("key-{}", rng.gen_range(0..30)).into_bytes();
            let value = if rng.gen_bool(0.25) {
                None
            } else {
                let len = if rng.gen_bool(0.03) {
                    400_000
                } else {
                    rng.gen_range(0..300)
                };
                Some(vec![rng.gen::<u8>(); len])
            };
            let effective = match &value {
                Some(v) => {
                    tx.put(&key, v).unwrap();
                    true
                }
                None => tx.delete(&key).unwrap(),
            };
            if !effective {
                continue;
            }
            match net.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => e.1 = value,
                None => net.push((key, value)),
            }
        }
        let had_records = !net.is_empty();
        let seq = tx.commit().unwrap();
        if had_records {
            for (k, v) in &net {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
            history.insert(seq, net);
        }
    }
    let snap = store.begin_read().unwrap();
    assert!(snap.seq() > 60);
    for from in [
        0,
        1,
        snap.seq() / 2,
        snap.seq() - 1,
        snap.seq(),
        snap.seq() + 5,
    ] {
        let got = common::owned_changes(&snap, from);
        let want: Vec<common::Change> = history
            .range(from + 1..)
            .flat_map(|(s, net)| net.iter().map(move |(k, v)| (*s, k.clone(), v.clone())))
            .collect();
        assert_eq!(got.len(), want.len(), "from {from}");
        assert!(got == want, "changes since {from} differ");
    }
    // Replaying every change rebuilds the state.
    let mut replayed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for c in snap.changes_since(0).unwrap() {
        let (_, k, v) = c.unwrap();
        match v {
            Some(v) => replayed.insert(k.to_vec(), v.to_vec()),
            None => replayed.remove(k),
        };
    }
    assert_eq!(replayed, model);
}

#[test]
fn changes_since_reports_a_damaged_commit_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.kv");
    let (seq, tail) = {
        let store = Store::open(&db).unwrap();
        store.put(b"a", b"1").unwrap();
        store.put(b"b", b"2").unwrap();
        let seq = store.begin_read().unwrap().seq();
        // The second commit's records: header (24) + key + value, padded,
        // then its commit record (48), ending at the tail.
        let log_end = 512 * 1024 + 2 * (32 + 48); // the log starts at 512 KiB
        store.close().unwrap();
        (seq, log_end)
    };
    // Flip a byte inside the last commit record's body.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[tail - 10] ^= 0xff;
    std::fs::write(&db, &bytes).unwrap();
    let store = Options::new().read_only(true).open(&db).unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.seq(), seq);
    let err = snap
        .changes_since(0)
        .err()
        .expect("a damaged commit record");
    assert!(err.is_corruption(), "{err}");
    assert!(
        err.to_string().contains("commit record of commit 2"),
        "{err}"
    );
}

#[test]
fn wait_for_commit_returns_at_once_wakes_on_a_commit_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"k", b"1").unwrap();
    let seq = store.begin_read().unwrap().seq();
    // Already newer: no wait.
    assert_eq!(
        store
            .wait_for_commit(seq - 1, Some(Duration::ZERO))
            .unwrap(),
        seq
    );
    // Nothing new: the timeout, and the current seq back.
    let t = Instant::now();
    assert_eq!(
        store
            .wait_for_commit(seq, Some(Duration::from_millis(100)))
            .unwrap(),
        seq
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    // Woken by another handle's commit (no timeout at all). The commit
    // comes only once the waiter found nothing newer and went to sleep:
    // by that condition, not by a guess at how long a thread takes.
    drop(store);
    let faults = Faults::new();
    let store = Options::new().faults(faults.clone()).open(&db).unwrap();
    let other = Store::open(&db).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| store.wait_for_commit(seq, None).unwrap());
        while faults.times_reached(PausePoint::CommitWaitSleeps) == 0 {
            assert!(!waiter.is_finished(), "returned without a new commit");
            std::thread::yield_now();
        }
        other.put(b"k", b"2").unwrap();
        assert_eq!(waiter.join().unwrap(), seq + 1);
    });
}

/// A read-only handle that opens on a clean store with no live handle
/// shows the checkpoint, and joins the live header once a writer sets one
/// up: it notices the header's incarnation change. A writer that set the
/// header up between this open's look for a live handle and its read of
/// the incarnation left nothing to notice: the handle showed the
/// checkpoint for good (found as a hang in CI: a read-only probe that
/// never saw a writer process's commits).
#[test]
fn a_read_only_handle_joins_a_writer_that_sets_up_while_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("join.kv");
    Store::open(&db).unwrap().put(b"k", b"checkpoint").unwrap();

    let faults = Faults::new();
    faults.pause_at(PausePoint::OpeningOffline);
    let opening = {
        let (db, faults) = (db.clone(), faults.clone());
        std::thread::spawn(move || {
            Options::new()
                .read_only(true)
                .faults(faults)
                .open(db)
                .unwrap()
        })
    };
    assert!(faults.wait_paused(Duration::from_secs(30)));
    let writer = Store::open(&db).unwrap();
    writer.put(b"k", b"live").unwrap();
    faults.resume();
    let reader = opening.join().unwrap();
    assert_eq!(reader.get(b"k").unwrap().as_deref(), Some(&b"live"[..]));
    writer.put(b"k", b"later").unwrap();
    assert_eq!(reader.get(b"k").unwrap().as_deref(), Some(&b"later"[..]));
}

/// The same race from the writer's side: a read-only handle that opens
/// while a writer has set up the live header but does not hold `Live` yet
/// (so the reader finds no live handle) must still join it.
#[test]
fn a_read_only_handle_opening_while_a_writer_sets_up_joins_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("setup.kv");
    Store::open(&db).unwrap().put(b"k", b"checkpoint").unwrap();

    let faults = Faults::new();
    faults.pause_at(PausePoint::LiveHeaderSetUp);
    let setting_up = {
        let (db, faults) = (db.clone(), faults.clone());
        std::thread::spawn(move || Options::new().faults(faults).open(db).unwrap())
    };
    assert!(faults.wait_paused(Duration::from_secs(30)));
    let reader = Options::new().read_only(true).open(&db).unwrap();
    assert_eq!(
        reader.get(b"k").unwrap().as_deref(),
        Some(&b"checkpoint"[..])
    );
    faults.resume();
    let writer = setting_up.join().unwrap();
    writer.put(b"k", b"live").unwrap();
    assert_eq!(reader.get(b"k").unwrap().as_deref(), Some(&b"live"[..]));
}

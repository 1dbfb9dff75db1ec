//! Private views (`Options::private`): transactions that never reach the
//! file. Every test compares the file's bytes, length and modification
//! time before and after; the views must see their own commits and
//! nothing else may.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use mapkv::{Durability, Options, Store};

/// Everything about the file a private view must not change.
#[derive(Debug, PartialEq)]
struct FileImage {
    bytes: Vec<u8>,
    len: u64,
    modified: SystemTime,
}

fn image(path: &Path) -> FileImage {
    let meta = std::fs::metadata(path).unwrap();
    FileImage {
        bytes: std::fs::read(path).unwrap(),
        len: meta.len(),
        modified: meta.modified().unwrap(),
    }
}

fn contents(store: &Store) -> Map {
    let snap = store.begin_read().unwrap();
    snap.iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect()
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Asserts two contents are equal, naming the first key that differs
/// (not printing thousands of them).
#[track_caller]
fn same(got: &Map, want: &Map, what: &str) {
    if got == want {
        return;
    }
    let show = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
    let diff = got
        .keys()
        .chain(want.keys())
        .find(|k| got.get(*k) != want.get(*k))
        .expect("maps differ somewhere");
    panic!(
        "{what}: {} keys against {}; first difference at {:?}: {:?} against {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(diff),
        show(got.get(diff)),
        show(want.get(diff))
    );
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// A closed store of `n` keys whose values are `value(i)`.
fn make_store(path: &Path, n: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let store = Store::open(path).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..n {
        tx.put(key(i), value(i, 0)).unwrap();
    }
    tx.commit().unwrap();
    let all = contents(&store);
    store.close().unwrap();
    all
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value-{i}-{round}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[test]
fn a_view_commits_grows_and_compacts_while_the_file_stays_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.kv");
    let original = make_store(&path, 5_000);
    let before = image(&path);

    let view = Options::new().private(true).open(&path).unwrap();
    assert_eq!(view.durability(), Durability::Memory);
    same(&contents(&view), &original, "a view starts as the file");
    let mut model = original.clone();
    // Enough to grow the view well past the file (large values), then
    // churn and compaction, which reuse and release space inside it.
    for round in 1..=4u32 {
        let mut tx = view.begin_write().unwrap();
        tx.set_durability(Durability::Immediate); // means nothing here
        for i in (0..5_000).filter(|i| i % 3 != 0) {
            let v = value(i, round);
            tx.put(key(i), &v).unwrap();
            model.insert(key(i), v);
        }
        for i in (0..5_000).filter(|i| i % 7 == round) {
            tx.delete(key(i)).unwrap();
            model.remove(&key(i));
        }
        let big = vec![round as u8; 3 << 20];
        tx.put(format!("big-{round}"), &big).unwrap();
        model.insert(format!("big-{round}").into_bytes(), big);
        tx.commit().unwrap();
    }
    view.compact().unwrap();
    assert!(
        view.stats().unwrap().file_bytes > before.len,
        "the view grew"
    );
    same(&contents(&view), &model, "the view shows its own commits");
    assert!(view.verify().unwrap().is_ok());
    // Another handle, opened now, sees the file, not the view.
    {
        let peek = Options::new().read_only(true).open(&path).unwrap();
        same(&contents(&peek), &original, "contents");
    }
    view.close().unwrap();
    assert!(image(&path) == before, "a private view changed the file");
    let store = Store::open(&path).unwrap();
    same(&contents(&store), &original, "contents");
}

#[test]
fn a_what_if_transaction_is_tried_read_and_thrown_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.kv");
    {
        let store = Store::open(&path).unwrap();
        store.put(b"alice", 100u64.to_le_bytes()).unwrap();
        store.put(b"bob", 50u64.to_le_bytes()).unwrap();
        // Left open by a live handle below: the view must not need a
        // clean close.
        std::mem::forget(store);
    }
    let live = Store::open(&path).unwrap();
    let balance = |s: &Store, who: &[u8]| {
        u64::from_le_bytes(s.get(who).unwrap().unwrap().try_into().unwrap())
    };
    // (The live handle's first read claims its reader-table chunk, a write
    // of its own: done before the image is taken.)
    assert_eq!(balance(&live, b"bob"), 50);
    let before = image(&path);
    let what_if = Options::new().private(true).open(&path).unwrap();
    let mut tx = what_if.begin_write().unwrap();
    tx.put(b"alice", 30u64.to_le_bytes()).unwrap();
    tx.put(b"bob", 120u64.to_le_bytes()).unwrap();
    tx.commit().unwrap();
    assert_eq!(balance(&what_if, b"alice") + balance(&what_if, b"bob"), 150);
    assert_eq!(balance(&what_if, b"bob"), 120);
    drop(what_if);
    assert!(image(&path) == before, "a what-if changed the file");
    assert_eq!(balance(&live, b"bob"), 50, "the live store never saw it");
}

#[test]
fn a_damaged_store_is_repaired_in_a_view_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.kv");
    let original = make_store(&path, 200);
    // Flip a byte inside the value of key 77.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = [key(77), value(77, 0)].concat();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("record in the file");
    bytes[at + needle.len() - 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let before = image(&path);

    let view = Options::new().private(true).open(&path).unwrap();
    let report = view.verify().unwrap();
    assert!(!report.is_ok(), "the damage is seen in the view");
    assert!(
        view.get(key(77)).is_err(),
        "reading the damaged value fails"
    );
    // Work on it read-write: drop the damaged key, put it back, check.
    assert!(view.delete(key(77)).unwrap());
    view.put(key(77), b"repaired").unwrap();
    view.compact().unwrap(); // moves the live records away from the damage
    let mut want = original;
    want.insert(key(77), b"repaired".to_vec());
    same(&contents(&view), &want, "contents");
    drop(view);
    assert!(image(&path) == before, "the damaged file was written");
}

#[test]
fn a_view_of_a_store_whose_writer_died_recovers_privately() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crashed.kv");
    let store = Options::new()
        .durability(Durability::Eventual)
        .open(&path)
        .unwrap();
    for i in 0..300 {
        store.put(key(i), value(i, 1)).unwrap();
    }
    store.sync().unwrap();
    // A writer that never closes (as if killed): the file is not clean.
    std::mem::forget(store);
    let before = image(&path);
    let view = Options::new().private(true).open(&path).unwrap();
    assert_eq!(view.get(key(299)).unwrap(), Some(value(299, 1)));
    view.put(key(5), b"in the view").unwrap();
    drop(view);
    assert!(image(&path) == before);
}

#[test]
fn a_view_keeps_its_snapshot_while_a_writer_commits_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.kv");
    let writer = Options::new().auto_compact(true).open(&path).unwrap();
    for i in 0..2_000 {
        writer.put(key(i % 500), value(i, 0)).unwrap();
    }
    let at_open = contents(&writer);
    let view = Options::new().private(true).open(&path).unwrap();
    same(&contents(&view), &at_open, "contents");
    assert!(
        writer.stats().unwrap().unregistered_readers,
        "the writer knows a view pins its space"
    );
    // The writer overwrites everything many times and compacts; the view
    // keeps showing what it saw, with its own commits on top.
    for round in 1..=5 {
        let mut tx = writer.begin_write().unwrap();
        for i in 0..500 {
            tx.put(key(i), value(i, round)).unwrap();
        }
        tx.commit().unwrap();
        writer.compact().unwrap();
        view.put(b"view-round", [round as u8]).unwrap();
        let mut want = at_open.clone();
        want.insert(b"view-round".to_vec(), vec![round as u8]);
        same(&contents(&view), &want, &format!("round {round}"));
        assert!(view.verify().unwrap().is_ok());
    }
    assert_eq!(writer.get(b"view-round").unwrap(), None);
    assert_eq!(writer.get(key(3)).unwrap(), Some(value(3, 5)));
    drop(view);
    assert!(writer.verify().unwrap().is_ok());
}

#[test]
fn a_view_refuses_an_empty_or_missing_file_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.kv");
    assert!(Options::new().private(true).open(&missing).is_err());
    assert!(!missing.exists(), "a view created the file");
    let empty = dir.path().join("empty.kv");
    std::fs::write(&empty, b"").unwrap();
    match Options::new().private(true).open(&empty) {
        Err(mapkv::Error::NotAStore { .. }) => {}
        other => panic!("a view of an empty file: {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
}

#[test]
fn index_pages_the_view_never_wrote_do_not_show_a_writers_later_slots() {
    // A clean store: opening the view replays nothing, so it writes no
    // slot, and only the copy made at open keeps its index its own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clean.kv");
    let original = make_store(&path, 30_000);
    let writer = Store::open(&path).unwrap();
    let view = Options::new().private(true).open(&path).unwrap();
    let mut tx = writer.begin_write().unwrap();
    for i in 0..30_000 {
        tx.put(key(i), value(i, 9)).unwrap();
    }
    tx.commit().unwrap();
    same(
        &contents(&view),
        &original,
        "the view after a writer's commit",
    );
    for i in (0..30_000).step_by(7) {
        assert_eq!(view.get(key(i)).unwrap(), Some(value(i, 0)), "key {i}");
    }
}

//! Writers that die or abort at exact points, and the writer after them.
//!
//! A writer (in any process) may leave bytes the published state does not
//! name: records of a transaction it aborted or died in, a file it grew,
//! and — killed between writing a commit and publishing it — a complete
//! commit whose index slots it had already stored. The next writer must
//! adopt that commit, and must never take the other bytes for zeros.
//! Each test sets up the instant with a pause point or an abort, so it
//! fails every time on code that gets it wrong (`kvctl torture` found the
//! first two only now and then).

mod common;

use std::path::Path;
use std::time::Duration;

use common::procs::{say, Proc};
use mapkv::faults::{Faults, PausePoint};
use mapkv::{Durability, Options, Store};

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("value {i} of round {round}").into_bytes()
}

/// A large value that is not zeros anywhere: read as index slots, every
/// word would name a record far past the end of the file.
fn junk(len: usize) -> Vec<u8> {
    vec![0xa5; len]
}

fn big(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

/// A new store holding `n` small keys, with compaction left to the test.
fn store_with_keys(db: &Path, n: u32) -> Store {
    let store = Options::new().auto_compact(false).open(db).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..n {
        tx.put(key(i), value(i, 0)).unwrap();
    }
    tx.commit().unwrap();
    store
}

/// Keys that bring a new store's 512-slot index to just under its load
/// limit (3/4): the next transaction that adds `MOVE_KEYS` starts a move
/// to a new table.
const NEAR_FULL: u32 = 370;
const MOVE_KEYS: u32 = 30;

/// Adds `MOVE_KEYS` new keys (and `also`, if given) in one commit, which
/// moves the index to a new table; checks that it did.
fn commit_an_index_move(store: &Store, also: Option<(&[u8], &[u8])>) {
    let slots = store.stats().unwrap().index_slots;
    let mut tx = store.begin_write().unwrap();
    if let Some((k, v)) = also {
        tx.put(k, v).unwrap();
    }
    for i in NEAR_FULL..NEAR_FULL + MOVE_KEYS {
        tx.put(key(i), value(i, 0)).unwrap();
    }
    tx.commit().expect("the commit that moves the index");
    assert!(
        store.stats().unwrap().index_slots > slots,
        "the test's premise: this commit moved the index to a new table"
    );
}

fn assert_sound(store: &Store, keys: u32) {
    let snap = store.begin_read().unwrap();
    for i in 0..keys {
        assert_eq!(snap.get(key(i)).unwrap(), Some(&value(i, 0)[..]), "key {i}");
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// A writer killed after its commit record and its slot stores, before
/// it published, grew the file for the commit's second extent. With a
/// live handle left, the next writer scanned past the published tail only
/// as far as the published file length: it did not adopt the commit,
/// whose slots then named records of a commit the store did not have.
/// Without a live handle, recovery must find it too.
#[test]
fn a_commit_left_unpublished_by_a_killed_writer_is_adopted_though_it_grew_the_file() {
    for keep_open in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("adopt.kv");
        let store = store_with_keys(&db, 100);
        let file_before = std::fs::metadata(&db).unwrap().len();
        let held = if keep_open {
            Some(store)
        } else {
            drop(store);
            None
        };

        let mut child = Proc::spawn("commit-then-die", &db, &[]);
        child.expect("paused");
        let file_now = std::fs::metadata(&db).unwrap().len();
        assert!(
            file_now > file_before,
            "the test's premise: the commit grew the file ({file_before} -> {file_now})"
        );
        drop(child); // SIGKILL, before the publish

        let store = Store::open(&db).unwrap();
        store.begin_write().unwrap().commit().unwrap();
        drop(held);
        let check = |store: &Store| {
            let snap = store.begin_read().unwrap();
            let got = snap.get(b"big").unwrap();
            assert!(
                got == Some(&big(3 << 20, 1)[..]),
                "keep_open {keep_open}: the dead writer's complete commit was not adopted \
                 (its value: {:?} bytes)",
                got.map(<[u8]>::len)
            );
            for i in 0..100 {
                let want = if i < 20 { value(i, 1) } else { value(i, 0) };
                assert_eq!(snap.get(key(i)).unwrap(), Some(&want[..]), "key {i}");
            }
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "keep_open {keep_open}: {report}");
        };
        check(&store);
        drop(store);
        check(&Store::open(&db).unwrap());
    }
}

/// A writer killed mid-transaction had grown the file and filled the new
/// space with a value. The next writer's own growth told it that
/// everything past the *published* length was new zeros, so the index
/// table it placed there was not zeroed: its slots were the dead
/// writer's bytes.
#[test]
fn what_a_killed_writer_wrote_past_the_published_end_never_becomes_an_index_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grown.kv");
    let store = store_with_keys(&db, NEAR_FULL);
    let mut child = Proc::spawn("write-then-die", &db, &[]);
    child.expect("wrote");
    let published = store.stats().unwrap().file_bytes;
    let file_now = std::fs::metadata(&db).unwrap().len();
    assert!(
        file_now > published,
        "the test's premise: the dead writer grew the file ({published} -> {file_now})"
    );
    drop(child);

    // A value that needs an extent past the published end (so this
    // writer grows the file, as far as it knows), then the index move,
    // whose table lands right after that extent.
    commit_an_index_move(&store, Some((b"big", &big(1 << 20, 2))));
    assert_sound(&store, NEAR_FULL + MOVE_KEYS);
    assert_eq!(store.get(b"junk").unwrap(), None);
}

/// The same without a growth: a writer that knew the space past the
/// allocated area held zeros (it had grown the file itself) kept that
/// belief while another handle wrote there and aborted, publishing
/// nothing, and placed an index table on the other's bytes.
#[test]
fn what_an_aborted_writer_wrote_inside_the_file_never_becomes_an_index_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aborted.kv");
    let a = Options::new().auto_compact(false).open(&db).unwrap();
    // A first extent filled by one large value, then the keys in a second
    // one that this handle grew the file for: it knows the rest is zeros.
    a.put(b"big", big(3 << 20, 3)).unwrap();
    let mut tx = a.begin_write().unwrap();
    for i in 0..NEAR_FULL {
        tx.put(key(i), value(i, 0)).unwrap();
    }
    tx.commit().unwrap();
    let grown = a.stats().unwrap().file_bytes;

    // Another handle writes a value past the allocated area, and aborts.
    let b = Store::open(&db).unwrap();
    let mut tx = b.begin_write().unwrap();
    tx.put(b"junk", junk(2 << 20)).unwrap();
    drop(tx);
    drop(b);

    // The move's table goes at the allocated end, inside the file.
    commit_an_index_move(&a, None);
    assert_eq!(
        a.stats().unwrap().file_bytes,
        grown,
        "the test's premise: the commit that moved the index did not grow the file"
    );
    assert_sound(&a, NEAR_FULL + MOVE_KEYS);
    assert!(a.get(b"big").unwrap() == Some(big(3 << 20, 3)));
}

#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let db = std::env::var("MAPKV_DB").expect("run as a child");
    match std::env::var("MAPKV_ROLE").unwrap().as_str() {
        // Commits a value that needs new space (the file grows) and new
        // values of 20 keys; stops before the publish, to be killed.
        "commit-then-die" => {
            let faults = Faults::new();
            let store = Options::new()
                .auto_compact(false)
                .faults(faults.clone())
                .open(&db)
                .unwrap();
            faults.pause_at(PausePoint::BeforePublish);
            std::thread::spawn(move || {
                let mut tx = store.begin_write().unwrap();
                tx.set_durability(Durability::Immediate);
                tx.put(b"big", big(3 << 20, 1)).unwrap();
                for i in 0..20 {
                    tx.put(key(i), value(i, 1)).unwrap();
                }
                tx.commit().unwrap();
                panic!("the commit was published: the pause point did not hold it");
            });
            assert!(faults.wait_paused(Duration::from_secs(60)));
            say("paused");
        }
        // Writes a large value (the file grows for it) and never commits.
        "write-then-die" => {
            let store = Store::open(&db).unwrap();
            let mut tx = store.begin_write().unwrap();
            tx.put(b"junk", junk(6 << 20)).unwrap();
            say("wrote");
            std::thread::sleep(Duration::from_secs(120));
            drop(tx);
        }
        other => panic!("unknown role {other}"),
    }
    std::thread::sleep(Duration::from_secs(120));
}

//! Corruption: flip every byte of a small store file, and truncate it at
//! every page boundary. `open`, `verify`, reads and a write must return `Ok`
//! or a clear `Err` (never panic), and any value a read returns must be one
//! that was committed for that key. A version chain bent to another key's
//! record is an error, not that key's value.

use std::collections::{HashMap, HashSet};

use mapkv::sim::SimDisk;
use mapkv::{Options, Store};

/// Every value ever committed, per key, and each key's last one (`None`:
/// deleted).
#[derive(Default)]
struct Committed {
    any: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    last: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// The key `exercise` writes into a damaged store.
const WRITTEN: &[u8] = b"k\x01";

/// A small store (as file bytes) and every value ever committed per key.
fn small_store() -> (Vec<u8>, Committed) {
    let disk = SimDisk::new(64 << 20);
    let store = Options::new().open_sim(&disk).unwrap();
    let mut committed = Committed::default();
    for round in 0..3u8 {
        let mut tx = store.begin_write().unwrap();
        for k in 0..12u8 {
            let key = vec![b'k', k];
            let val = vec![round ^ k; 20 + k as usize];
            tx.put(&key, &val).unwrap();
            committed
                .any
                .entry(key.clone())
                .or_default()
                .insert(val.clone());
            committed.last.insert(key, Some(val));
        }
        tx.delete([b'k', round]).unwrap();
        committed.last.insert(vec![b'k', round], None);
        tx.commit().unwrap();
    }
    store.close().unwrap();
    (disk.crash_point().live, committed)
}

/// Exercises a damaged image; returns `None` if it did not open, else
/// whether it verified clean (and so was checked to hold exactly the last
/// committed state).
fn exercise(image: &[u8], committed: &Committed) -> Option<bool> {
    let disk = SimDisk::from_image(image, 64 << 20);
    let store = match Options::new().create(false).open_sim(&disk) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return None;
        }
    };
    check_values(&store, committed, false);
    // A store that verifies clean has lost nothing: every key reads its
    // last committed value, not an older one, and none has vanished. (A
    // damaged one may refuse reads, never make up a value.)
    let clean = store.verify().is_ok_and(|r| r.is_ok());
    if clean {
        check_exact(&store, committed);
    }
    if let Ok(stats) = store.stats() {
        assert!(
            stats.keys <= 64,
            "stats: {} keys in a 12-key store",
            stats.keys
        );
    }
    // A write either works or fails cleanly; reads stay sound after it,
    // and a write that committed reads back.
    let wrote = store.put(WRITTEN, b"new").is_ok();
    check_values(&store, committed, wrote);
    Some(clean)
}

/// Every value a read returns was committed for that key (or, once the
/// `WRITTEN` put committed, is its value).
fn check_values(store: &Store, committed: &Committed, wrote: bool) {
    let Ok(snap) = store.begin_read() else { return };
    let fine = |k: &[u8], v: &[u8]| {
        committed.any.get(k).is_some_and(|vs| vs.contains(v))
            || (wrote && k == WRITTEN && v == b"new")
    };
    for key in committed.any.keys() {
        if let Ok(Some(v)) = snap.get(key) {
            assert!(
                fine(key, v),
                "key {key:?} read a value never committed: {v:?}"
            );
        }
    }
    if wrote {
        match snap.get(WRITTEN) {
            Ok(Some(v)) => assert_eq!(v, b"new", "the put that committed reads back wrong"),
            Ok(None) => panic!("the put that committed reads back as absent"),
            Err(_) => {} // damage found on the way: an error is an answer
        }
    }
    for (k, v) in snap.iter().flatten() {
        assert!(fine(k, v), "iter: key {k:?} has a value never committed");
    }
}

/// The store holds exactly each key's last committed value.
fn check_exact(store: &Store, committed: &Committed) {
    let snap = store.begin_read().expect("a verified store reads");
    for (key, last) in &committed.last {
        let got = snap
            .get(key)
            .unwrap_or_else(|e| panic!("verified store: key {key:?}: {e}"));
        assert_eq!(got, last.as_deref(), "verified store: key {key:?}");
    }
    let live = committed.last.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(snap.len(), live, "verified store: key count");
}

/// Offsets worth flipping: the meta pages, the live header, the log and
/// the index — every byte that holds data, skipping long zero runs.
fn interesting_offsets(image: &[u8]) -> Vec<usize> {
    // The meta pages, the live header, and the whole first index table
    // (right after the first 1 MiB extent): flipping an empty slot makes a
    // slot that names garbage.
    let table = 65536 + (1 << 20);
    let mut out: Vec<usize> = (0..256)
        .chain(4096..4096 + 256)
        .chain(8192..8192 + 320)
        .chain(table..table + 4096)
        .collect();
    for (i, b) in image.iter().enumerate().skip(64 * 1024) {
        let in_table = (table..table + 4096).contains(&i);
        if !in_table && (*b != 0 || image.get(i.wrapping_sub(1)).is_some_and(|p| *p != 0)) {
            out.push(i);
        }
    }
    out
}

#[test]
fn flipping_any_byte_gives_ok_or_a_clear_error() {
    let (image, committed) = small_store();
    let offsets = interesting_offsets(&image);
    assert!(offsets.len() > 2000, "only {} offsets", offsets.len());
    let (mut opened, mut clean) = (0, 0);
    for &off in &offsets {
        let mut bad = image.clone();
        bad[off] ^= 0x5a;
        if let Some(verified) = exercise(&bad, &committed) {
            opened += 1;
            clean += verified as usize;
        }
    }
    // Most single flips land in data that open does not read; some of
    // those verify clean (and held exactly the committed state), others
    // are found by verify.
    assert!(
        opened > offsets.len() / 2,
        "{opened} of {} opened",
        offsets.len()
    );
    assert!(
        clean > 0 && clean < opened,
        "{clean} of {opened} verified clean"
    );
}

#[test]
fn truncating_at_every_page_gives_ok_or_a_clear_error() {
    let (image, committed) = small_store();
    for len in (0..image.len()).step_by(4096).chain([1, 7, 100, 4095]) {
        exercise(&image[..len], &committed);
    }
}

#[test]
fn a_damaged_record_is_reported_by_verify_and_by_the_read() {
    let (image, _) = small_store();
    let disk = SimDisk::from_image(&image, 64 << 20);
    let store = Options::new().open_sim(&disk).unwrap();
    assert!(store.verify().unwrap().is_ok());
    drop(store);
    // Find the newest value of key "k\x05" (round 2: bytes 2^5 = 7) and flip
    // a byte inside it.
    let needle = vec![7u8; 25];
    let pos = image
        .windows(needle.len())
        .rposition(|w| w == needle.as_slice())
        .expect("value in the file");
    let mut bad = image.clone();
    bad[pos + 3] ^= 1;
    let disk = SimDisk::from_image(&bad, 64 << 20);
    let store = Options::new().open_sim(&disk).unwrap();
    let report = store.verify().unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| p.what.contains("checksum")),
        "{report}"
    );
    match store.get(b"k\x05") {
        Err(e) => assert!(e.is_corruption(), "{e}"),
        Ok(v) => panic!("read a damaged value: {v:?}"),
    }
}

#[test]
fn a_version_chain_that_leads_to_another_keys_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.kv");
    let store = Store::open(&path).unwrap();
    store.put(b"key-a", b"value-a-1").unwrap();
    store.put(b"key-b", b"value-b-1").unwrap();
    let old = store.begin_read().unwrap();
    store.put(b"key-a", b"value-a-2").unwrap();
    // Point the newest version of key-a (its `prev`: header bytes 18..24)
    // at key-b's record, which is as old as the snapshot: the walk from
    // the head stops there.
    let bytes = std::fs::read(&path).unwrap();
    let record_of = |key: &[u8], val: &[u8]| {
        let needle = [key, val].concat();
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .expect("record in the file");
        (at - 24) as u64
    };
    let (head, b) = (
        record_of(b"key-a", b"value-a-2"),
        record_of(b"key-b", b"value-b-1"),
    );
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &b.to_le_bytes()[..6], head + 18).unwrap();
    // The snapshot must not take key-b's value for key-a's.
    match old.get(b"key-a") {
        Err(e) => assert!(
            e.is_corruption() && e.to_string().contains("another key"),
            "{e}"
        ),
        Ok(v) => panic!("key-a read through a broken chain: {v:?}"),
    }
    // A current read resolves to the head, whose checksum covers `prev`.
    match store.get(b"key-a") {
        Err(e) => assert!(e.to_string().contains("checksum"), "{e}"),
        Ok(v) => panic!("read a damaged record: {v:?}"),
    }
}

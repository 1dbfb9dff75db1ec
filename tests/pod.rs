//! Typed values read in place: `put_pod` places a value at its type's
//! alignment, `get_pod` borrows it without a copy, and compaction, backup
//! and salvage keep the alignment. A misplaced or wrong-sized value is an
//! error, never undefined behaviour.

mod common;

use bytemuck::{Pod, Zeroable};
use mapkv::{Error, Options, Store};

/// 64 bytes aligned to 8, as a persistent record of counters.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Counters {
    hits: u64,
    misses: u64,
    bytes: [u64; 6],
}

/// A type aligned to 16.
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C, align(16))]
struct Wide {
    a: u128,
    b: u128,
}

fn counters(i: u64) -> Counters {
    Counters {
        hits: i,
        misses: i * 3,
        bytes: [i ^ 0x55; 6],
    }
}

/// Keys whose lengths are multiples of 4, shifted by odd-sized plain
/// values between them so that log positions land everywhere.
fn pod_key(i: u64) -> Vec<u8> {
    let mut k = format!("pod-{i:07}").into_bytes(); // 11 bytes
    k.push(b'!'); // 12
    if i % 2 == 1 {
        k.extend_from_slice(b"more"); // 16
    }
    k
}

fn fill(store: &Store, n: u64) {
    let mut tx = store.begin_write().unwrap();
    for i in 0..n {
        tx.put_pod(pod_key(i), &counters(i)).unwrap();
        // A plain value of odd length after each: the next record starts
        // at another offset modulo 8 and 16.
        tx.put(format!("odd{i}"), vec![7u8; (i % 13) as usize + 1])
            .unwrap();
        if i % 5 == 0 {
            tx.put_pod(format!("w{i:07}"), &Wide { a: i.into(), b: 1 })
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn check_all(store: &Store, n: u64) {
    let snap = store.begin_read().unwrap();
    for i in 0..n {
        let c: &Counters = snap
            .get_pod(pod_key(i))
            .unwrap_or_else(|e| panic!("key {i}: {e}"))
            .unwrap();
        assert_eq!(*c, counters(i));
        assert_eq!(c as *const Counters as usize % 8, 0);
        if i % 5 == 0 {
            let w: &Wide = snap.get_pod(format!("w{i:07}")).unwrap().unwrap();
            assert_eq!((w.a, w.b), (i.into(), 1));
            assert_eq!(w as *const Wide as usize % 16, 0);
        }
    }
}

#[test]
fn pods_are_read_in_place_at_their_alignment_whatever_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("pod.kv")).unwrap();
    fill(&store, 2_000);
    check_all(&store, 2_000);
    let snap = store.begin_read().unwrap();
    // The copy reads the same bytes, aligned or not.
    let c: Counters = snap.get_pod_copy(pod_key(7)).unwrap().unwrap();
    assert_eq!(c, counters(7));
    // The fillers that moved values into place are invisible: one key
    // each, counted once, listed once by changes_since.
    assert_eq!(snap.len(), 2_000 * 2 + 400);
    let changes = snap.changes_since(0).unwrap();
    let pods = changes
        .map(|r| r.unwrap())
        .filter(|(_, k, _)| k.starts_with(b"pod-"))
        .count();
    assert_eq!(pods, 2_000);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn a_value_of_another_size_or_place_is_an_error_not_a_cast() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("bad.kv")).unwrap();
    // A key of 5 bytes: its value starts at an odd offset.
    store.put(b"five!", [0u8; 64]).unwrap();
    store.put(b"short", [0u8; 10]).unwrap();
    let snap = store.begin_read().unwrap();
    match snap.get_pod::<Counters>(b"five!") {
        Err(Error::ValueLayout {
            len: 64,
            aligned: false,
            size: 64,
            align: 8,
        }) => {}
        other => panic!("{other:?}"),
    }
    match snap.get_pod::<Counters>(b"short") {
        Err(e @ Error::ValueLayout { len: 10, .. }) => {
            assert!(e.to_string().contains("put_pod"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Copied out, only the size matters.
    assert!(snap.get_pod_copy::<Counters>(b"five!").unwrap().is_some());
    assert!(snap.get_pod::<Counters>(b"absent").unwrap().is_none());
    drop(snap);
    // A key whose length cannot give the alignment is refused up front.
    let mut tx = store.begin_write().unwrap();
    assert!(matches!(
        tx.put_pod(b"odd", &counters(1)),
        Err(Error::Unsupported { .. })
    ));
    // Byte-aligned types go anywhere.
    tx.put_pod(b"odd", &[1u8; 3]).unwrap();
    tx.commit().unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.get_pod::<[u8; 3]>(b"odd").unwrap(), Some(&[1u8; 3]));
}

#[test]
fn compaction_backup_and_salvage_keep_pods_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moving.kv");
    let store = Options::new().auto_compact(false).open(&path).unwrap();
    fill(&store, 3_000);
    // Churn the plain keys so that compaction copies the pods.
    for round in 0..3u8 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..3_000u64 {
            tx.put(format!("odd{i}"), vec![round; (i % 17) as usize + 400])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let report = store.compact().unwrap();
    assert!(report.records_moved > 1_000, "{report:?}");
    check_all(&store, 3_000);
    let verified = store.verify().unwrap();
    assert!(verified.is_ok(), "{verified}");

    store.backup_to(dir.path().join("copy.kv")).unwrap();
    let copy = Store::open(dir.path().join("copy.kv")).unwrap();
    check_all(&copy, 3_000);

    drop(store);
    let salvaged = dir.path().join("salvaged.kv");
    mapkv::salvage(&path, &salvaged).unwrap();
    let s = Store::open(&salvaged).unwrap();
    check_all(&s, 3_000);
}

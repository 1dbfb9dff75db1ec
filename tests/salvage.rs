//! Salvage: everything committed comes back from a healthy store; from a
//! damaged one, everything but what the damage destroyed, reported.

mod common;

use std::collections::BTreeMap;

use mapkv::Store;
use rand::Rng;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn contents(path: &std::path::Path) -> Model {
    let store = Store::open(path).unwrap();
    let snap = store.begin_read().unwrap();
    snap.iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect()
}

/// Random commits (with overwrites, deletes, aborts and values large
/// enough to cross extents); returns the final state.
fn fill(store: &Store, seed: u64) -> Model {
    let mut rng = common::rng(seed);
    let mut model = Model::new();
    for _ in 0..150 {
        let mut tx = store.begin_write().unwrap();
        let mut staged = model.clone();
        for _ in 0..rng.gen_range(1..8) {
            let k = format!("key-{}", rng.gen_range(0..60)).into_bytes();
            if rng.gen_bool(0.2) {
                tx.delete(&k).unwrap();
                staged.remove(&k);
            } else {
                let len = if rng.gen_bool(0.02) {
                    300_000
                } else {
                    rng.gen_range(0..100)
                };
                let v = vec![rng.gen::<u8>(); len];
                tx.put(&k, &v).unwrap();
                staged.insert(k, v);
            }
        }
        if rng.gen_bool(0.1) {
            tx.abort();
        } else {
            tx.commit().unwrap();
            model = staged;
        }
    }
    model
}

#[test]
fn a_healthy_store_is_salvaged_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.kv");
    let model = {
        let store = Store::open(&src).unwrap();
        fill(&store, 1)
    };
    let before = std::fs::read(&src).unwrap();
    let dest = dir.path().join("dest.kv");
    let r = mapkv::salvage(&src, &dest).unwrap();
    assert_eq!(r.lost_commits, vec![]);
    assert_eq!(r.damaged_records, 0);
    assert_eq!(r.keys, model.len() as u64);
    assert_eq!(contents(&dest), model);
    assert_eq!(
        std::fs::read(&src).unwrap(),
        before,
        "salvage wrote the source"
    );
    // It refuses to overwrite.
    assert!(mapkv::salvage(&src, &dest).is_err());
}

#[test]
fn a_damaged_store_gives_up_everything_but_the_damaged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.kv");
    let (model_without_k, k) = {
        let store = Store::open(&src).unwrap();
        let mut model = fill(&store, 2);
        let before_k = model.clone();
        // Commit k: two keys; one record will be damaged. It is 52 bytes
        // (24 + 12 + 16), so the records after it start 4 bytes off a
        // multiple of 8, as records may since format 4.
        let mut tx = store.begin_write().unwrap();
        tx.put(b"victim-key-1", b"DAMAGE-ME-PLEASE").unwrap();
        tx.put(b"bystander", b"fine").unwrap();
        let k = tx.commit().unwrap();
        // Later commits still count.
        store.put(b"after", b"1").unwrap();
        model.insert(b"after".to_vec(), b"1".to_vec());
        let mut without = before_k;
        without.insert(b"after".to_vec(), b"1".to_vec());
        store.close().unwrap();
        (without, k)
    };
    let mut bytes = std::fs::read(&src).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == b"DAMAGE-ME-PLEASE")
        .expect("the value is in the file");
    bytes[at] ^= 0xff;
    // And both meta pages, so the store does not even open.
    bytes[0] ^= 0xff;
    bytes[4096] ^= 0xff;
    std::fs::write(&src, &bytes).unwrap();
    assert!(Store::open(&src).is_err());

    let dest = dir.path().join("dest.kv");
    let r = mapkv::salvage(&src, &dest).unwrap();
    assert_eq!(r.lost_commits, vec![(k, k)]);
    assert_eq!(r.damaged_records, 1);
    assert_eq!(r.newest_seq, k + 1);
    assert_eq!(r.keys_maybe_stale, vec![b"bystander".to_vec()]);
    assert_eq!(contents(&dest), model_without_k);
}

//! Large values, many keys, and persistence across close and reopen.

use mapkv::{Options, Store};

#[test]
fn a_64_mib_value_round_trips_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.kv");
    let value: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        let store = Store::open(&path).unwrap();
        store.put(b"big", &value).unwrap();
        store.put(b"small", b"after").unwrap();
        let snap = store.begin_read().unwrap();
        assert_eq!(
            snap.get(b"big").unwrap().map(<[u8]>::len),
            Some(value.len())
        );
        assert!(snap.get(b"big").unwrap() == Some(&value[..]));
    }
    let store = Store::open(&path).unwrap();
    assert!(store.get(b"big").unwrap().as_deref() == Some(&value[..]));
    assert_eq!(store.get(b"small").unwrap(), Some(b"after".to_vec()));
    assert!(store.verify().unwrap().is_ok());
    // Overwrite it with a short value; the old snapshot keeps the big one.
    let old = store.begin_read().unwrap();
    store.put(b"big", b"tiny").unwrap();
    assert_eq!(store.get(b"big").unwrap(), Some(b"tiny".to_vec()));
    assert_eq!(old.get(b"big").unwrap().map(<[u8]>::len), Some(64 << 20));
}

fn key(i: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(b"key-");
    k[4..8].copy_from_slice(&i.to_be_bytes());
    k[8..].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

#[test]
fn a_million_keys_survive_reopen_and_grow_the_index_many_times() {
    const N: u32 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.kv");
    {
        let store = Store::open(&path).unwrap();
        for batch in 0..10 {
            let mut tx = store.begin_write().unwrap();
            for i in batch * (N / 10)..(batch + 1) * (N / 10) {
                tx.put(key(i), i.to_le_bytes()).unwrap();
            }
            tx.commit().unwrap();
        }
        let stats = store.stats().unwrap();
        assert_eq!(stats.keys, N as u64);
        // 512 slots at creation; the table doubled at least 11 times.
        assert!(stats.index_slots >= 2 << 20, "{stats:?}");
        assert!(stats.index_load <= 0.75, "{stats:?}");
    }
    let store = Store::open(&path).unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), N as u64);
    for i in (0..N).step_by(997) {
        assert_eq!(
            snap.get(key(i)).unwrap(),
            Some(&i.to_le_bytes()[..]),
            "key {i}"
        );
    }
    assert_eq!(snap.get(key(N)).unwrap(), None);
    assert_eq!(snap.iter().count(), N as usize);
    drop(snap);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys, N as u64);
}

#[test]
fn many_small_commits_persist_across_many_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.kv");
    for round in 0..20u32 {
        let store = Options::new().open(&path).unwrap();
        assert_eq!(store.begin_read().unwrap().len(), round as u64 * 50);
        for i in 0..50u32 {
            store
                .put((round * 50 + i).to_le_bytes(), round.to_le_bytes())
                .unwrap();
        }
        assert!(store.delete((round * 50).to_le_bytes()).unwrap());
        store.put((round * 50).to_le_bytes(), b"back").unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.begin_read().unwrap().len(), 1000);
    assert_eq!(
        store.get(950u32.to_le_bytes()).unwrap(),
        Some(b"back".to_vec())
    );
    assert_eq!(
        store.get(951u32.to_le_bytes()).unwrap(),
        Some(19u32.to_le_bytes().to_vec())
    );
    assert!(store.verify().unwrap().is_ok());
}

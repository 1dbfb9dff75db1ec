//! The `open_file` fuzz target's body, run with seeded inputs: the
//! checked-in seed files, random bytes, and random mutations of real store
//! files must all give `Ok` or a clean `Err`.

mod common;

use std::fs;

use mapkv::check::open_file;
use rand::{Rng, RngCore};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/open_file");
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_seed_files_open_or_fail_cleanly() {
    let seeds = seeds();
    assert!(seeds.len() >= 6);
    for (name, bytes) in &seeds {
        let err = open_file(bytes);
        // The real stores open (and take a write); the junk does not.
        if name.starts_with("seed-store") {
            assert!(err.is_none(), "{name}: {err:?}");
        } else {
            assert!(err.is_some(), "{name} opened");
        }
    }
}

#[test]
fn mutated_store_files_open_or_fail_cleanly() {
    let stores: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(n, _)| n.starts_with("seed-store"))
        .map(|(_, b)| b)
        .collect();
    let mut rng = common::rng(99);
    let (mut opened, mut runs) = (0, 0);
    for _ in 0..300 {
        let mut bytes = stores[rng.gen_range(0..stores.len())].clone();
        // Mutations: flip bytes in the used part (headers, log, index),
        // overwrite a run with random bytes, or cut the file short.
        for _ in 0..rng.gen_range(1..8) {
            // Meta page, live header, the extent tables (working and
            // checkpoint), the start of the log, the first index table.
            let region = match rng.gen_range(0..6) {
                0 => 0..256usize,
                1 => 8192..8192 + 576,
                2 => 65536..65536 + 256,
                3 => 196_608..196_608 + 256,
                4 => 524_288..524_288 + 2048,
                _ => 1_572_864..1_572_864 + 4096,
            };
            let at = rng.gen_range(region);
            let len = bytes.len();
            if at >= len {
                continue; // an earlier mutation cut the file before here
            }
            match rng.gen_range(0..3) {
                0 => bytes[at] ^= 1 << rng.gen_range(0..8),
                1 => rng.fill_bytes(&mut bytes[at..(at + 16).min(len)]),
                _ => bytes.truncate(at),
            }
        }
        runs += 1;
        if open_file(&bytes).is_none() {
            opened += 1;
        }
    }
    assert!(opened > 0, "no mutation left a usable store");
    assert!(
        opened < runs,
        "no mutation was ever rejected: {runs} all opened"
    );
}

#[test]
fn random_bytes_never_open() {
    let mut rng = common::rng(5);
    for len in [0usize, 1, 100, 4096, 65535, 65536, 70_000, 1 << 20] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        assert!(open_file(&bytes).is_some(), "{len} random bytes opened");
    }
}

#[test]
fn damaged_real_stores_open_or_fail_cleanly() {
    use mapkv::check::damaged_store;
    let mut rng = common::rng(31);
    let mut opened = 0;
    for round in 0..150 {
        let ops = common::random_ops(&mut rng, 30, round % 10 == 0, true);
        let flips: Vec<(u32, u8)> = (0..rng.gen_range(1..6))
            .map(|_| {
                // Mostly where the structure is: meta, log start, first table.
                let base = [0u32, 4096, 65536, 65536 + (1 << 20)][rng.gen_range(0..4)];
                (base + rng.gen_range(0..4096), 1 << rng.gen_range(0..8))
            })
            .collect();
        let truncate = rng.gen_bool(0.1).then(|| rng.gen());
        if damaged_store(&ops, round, &flips, truncate).is_none() {
            opened += 1;
        }
    }
    assert!(opened > 0);
    // Found by the open_file fuzzer: no operations, so no file at all.
    assert!(damaged_store(&[], 0, &[(5, 1)], Some(3)).is_some());
}

/// Writes the two real-store seeds (`cargo test --test hostile_files --
/// --ignored regenerate`): needed again when the format version changes.
#[test]
#[ignore]
fn regenerate_seed_stores() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/open_file");
    let tmp = tempfile::tempdir().unwrap();
    for (name, rounds) in [("seed-store-small", 1u8), ("seed-store-overwrites", 6)] {
        let db = tmp.path().join(name);
        let store = mapkv::Store::open(&db).unwrap();
        for round in 0..rounds {
            let mut tx = store.begin_write().unwrap();
            for k in 0..40u8 {
                tx.put(&[b'k', k], &vec![round; 10 + k as usize * 3])
                    .unwrap();
            }
            if round % 2 == 1 {
                tx.delete(&[b'k', round]).unwrap();
            }
            tx.commit().unwrap();
        }
        store.close().unwrap();
        fs::copy(&db, format!("{dir}/{name}")).unwrap();
    }
}

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
                // Mostly where the structure is: the meta pages, the
                // extent tables, the log's first records (DATA_START) and
                // the first index table after the first extent.
                let base = [0u32, 4096, 65536, 524_288, 524_288 + (1 << 20)][rng.gen_range(0..5)];
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
                tx.put([b'k', k], vec![round; 10 + k as usize * 3]).unwrap();
            }
            if round % 2 == 1 {
                tx.delete([b'k', round]).unwrap();
            }
            tx.commit().unwrap();
        }
        store.close().unwrap();
        fs::copy(&db, format!("{dir}/{name}")).unwrap();
    }
}

/// Mutated real stores as files, in the test profile (overflow checks
/// on: Cargo.toml says so): salvage, then open and run every reading API — stats, verify,
/// gets, iteration, changes — each must give `Ok` or a clean `Err`.
#[test]
fn damaged_files_salvage_and_read_cleanly_with_overflow_checks() {
    let stores: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(n, _)| n.starts_with("seed-store"))
        .map(|(_, b)| b)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng(1234);
    let (mut opened, mut salvaged, mut errors) = (0, 0, 0);
    for round in 0..60 {
        let mut bytes = stores[round % stores.len()].clone();
        for _ in 0..rng.gen_range(1..6) {
            let region = match rng.gen_range(0..4) {
                0 => 0..8192usize,
                1 => 524_288..524_288 + 8192,
                _ => 1_572_864..1_572_864 + 4096,
            };
            let at = rng.gen_range(region);
            if at < bytes.len() {
                bytes[at] ^= 1 << rng.gen_range(0..8);
            }
        }
        let path = dir.path().join(format!("damaged-{round}.kv"));
        fs::write(&path, &bytes).unwrap();
        let dest = dir.path().join(format!("salvaged-{round}.kv"));
        match mapkv::salvage(&path, &dest) {
            Ok(_) => salvaged += 1,
            Err(_) => errors += 1,
        }
        let Ok(store) = mapkv::Options::new().create(false).open(&path) else {
            errors += 1;
            continue;
        };
        opened += 1;
        let _ = store.stats();
        let mut failed = !store.verify().is_ok_and(|r| r.is_ok());
        if let Ok(snap) = store.begin_read() {
            for k in 0..40u8 {
                failed |= snap.get([b'k', k]).is_err();
            }
            for item in snap.iter() {
                failed |= item.is_err();
            }
            if let Ok(changes) = snap.changes_since(0) {
                for item in changes {
                    failed |= item.is_err();
                }
            }
        };
        errors += failed as u32;
    }
    assert!(
        opened > 0 && salvaged > 0,
        "{opened} opened, {salvaged} salvaged"
    );
    assert!(errors > 0, "no damage was ever noticed");
}

/// A live header damaged while the store is open (another program wrote
/// the file): every API refuses it cleanly, with overflow checks on. The
/// old table's size used to be turned into a byte count before its range
/// was checked (a shift overflow panic in a debug build).
#[test]
fn a_damaged_live_header_is_refused_not_a_panic() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.kv");
    let store = mapkv::Store::open(&path).unwrap();
    store.put(b"k", b"v").unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&path)
        .unwrap();
    // The live header (page 2): magic, current generation, ..., then two
    // slots of 32 words from byte 64, each a generation and the state;
    // word 16 of the state is the old index table's log2 size.
    const LIVE: u64 = 2 * 4096;
    let mut gen = [0u8; 8];
    file.read_exact_at(&mut gen, LIVE + 8).unwrap();
    let gen = u64::from_le_bytes(gen);
    let slot = LIVE + 64 + (gen & 1) * 32 * 8;
    // An old table at the start of the data area, of 2^100 and 2^63
    // slots; an index of 2^70 slots.
    let damages: [&[(u64, u64)]; 3] = [
        &[(15, 128 * 4096), (16, 100)],
        &[(15, 128 * 4096), (16, 63)],
        &[(5, 70)],
    ];
    for damage in damages {
        let mut old = Vec::new();
        for &(word, value) in damage {
            let at = slot + 8 * (word + 1);
            let mut w = [0u8; 8];
            file.read_exact_at(&mut w, at).unwrap();
            old.push((at, w));
            file.write_all_at(&value.to_le_bytes(), at).unwrap();
        }
        let refused = |r: mapkv::Result<()>, what: &str| match r {
            Err(mapkv::Error::Corrupted { .. }) => {}
            other => panic!("{what} with {damage:?}: {other:?}"),
        };
        refused(store.stats().map(drop), "stats");
        refused(store.begin_read().map(drop), "begin_read");
        refused(store.get(b"k").map(drop), "get");
        refused(store.verify().map(drop), "verify");
        for (at, w) in old {
            file.write_all_at(&w, at).unwrap();
        }
        assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}

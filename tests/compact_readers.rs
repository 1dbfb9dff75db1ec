//! Compaction under readers: `compact()` moves the index table down,
//! frees the old one and cuts the end of the file while snapshots of this
//! process and of others come and go. No snapshot may ever read space that
//! was freed under it (a SIGBUS once the file is cut, a wrong value once
//! the space is reused).
//!
//! Bodies that may die of a signal run in a child process (this test binary
//! run again, `child`, told its role by `MAPKV_ROLE`), so a SIGBUS fails
//! the test with a message instead of killing the whole test binary.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mapkv::faults::{Faults, PausePoint};
use mapkv::{Durability, Options, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Keys that stay live through the churn, and their values.
const LIVE: u32 = 1_000;

fn key(i: u32) -> [u8; 8] {
    let mut k = *b"key00000";
    k[3..].copy_from_slice(format!("{:05}", i % 100_000).as_bytes());
    k
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("{i}:{round}:").into_bytes().repeat(6)
}

/// Runs this test binary again as `role`; fails the test if it failed.
fn run_child(role: &str, db: &Path, extra: &[(&str, String)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child", "--nocapture"])
        .arg("--test-threads=1")
        .env("MAPKV_ROLE", role)
        .env("MAPKV_DB", db)
        .stdin(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    let status = out.status;
    assert!(
        status.success(),
        "child {role} failed: {}{}\n--- its output ---\n{}{}",
        status,
        match status.signal() {
            // SIGBUS is 7 on Linux.
            Some(7) => " (SIGBUS: a snapshot read a page cut off the file)",
            Some(_) => " (killed by a signal)",
            None => "",
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // What the child counted (shown with --nocapture).
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains("rounds") || line.contains(" ok") {
            println!("child {role}: {line}");
        }
    }
}

/// The store of the report: 40,000 keys written three times over,
/// all but `LIVE` deleted, nothing compacted yet. Its index table sits
/// above the dead log, so `compact()` moves the table down and cuts the
/// file.
fn churned(path: &Path, faults: &Faults) -> Store {
    let store = Options::new()
        .durability(Durability::Eventual)
        .auto_compact(false)
        .faults(faults.clone())
        .open(path)
        .unwrap();
    for round in 0..3 {
        for chunk in (0..40_000u32).collect::<Vec<_>>().chunks(5_000) {
            let mut tx = store.begin_write().unwrap();
            for &i in chunk {
                tx.put(key(i), value(i, round)).unwrap();
            }
            tx.commit().unwrap();
        }
    }
    let mut tx = store.begin_write().unwrap();
    for i in LIVE..40_000 {
        assert!(tx.delete(key(i)).unwrap());
    }
    tx.commit().unwrap();
    store
}

/// Every live key of `snap` reads as the last round wrote it.
fn check_live(snap: &mapkv::ReadTxn<'_>, round: u32, what: &str) {
    for i in 0..LIVE {
        let got = snap
            .get(key(i))
            .unwrap_or_else(|e| panic!("{what}: key {i}: {e}"));
        assert_eq!(
            got,
            Some(&value(i, round)[..]),
            "{what}: key {i} reads wrong"
        );
    }
    assert_eq!(snap.len(), u64::from(LIVE), "{what}: key count");
}

/// The race of the lived-in-stores issue, made deterministic: a snapshot
/// begins at the instant `compact()` has moved the index table down and
/// looked for snapshots before freeing the old one (the pause point goes
/// with the look, so the test holds wherever the publish is moved). It must read the new table (or keep the old
/// one from being freed): after `compact()` returns, and after later
/// commits reuse the freed space, it reads every key as committed.
#[test]
fn a_snapshot_begun_as_compact_frees_the_old_index_never_reads_freed_space() {
    let dir = tempfile::tempdir().unwrap();
    run_child("pause-race", &dir.path().join("race.kv"), &[]);
}

fn pause_race_child(db: &Path) {
    let faults = Faults::new();
    let store = churned(db, &faults);
    let before = store.stats().unwrap().file_bytes;
    faults.pause_at(PausePoint::AfterRelocationScan);
    let snap = std::thread::scope(|s| {
        let compactor = s.spawn(|| store.compact().unwrap());
        assert!(
            faults.wait_paused(Duration::from_secs(120)),
            "compact() never moved the index table down: the race was not set up"
        );
        let snap = store.begin_read().unwrap();
        faults.resume();
        compactor.join().unwrap();
        snap
    });
    let after = store.stats().unwrap().file_bytes;
    assert!(
        after < before,
        "compact() did not shrink the file ({before} -> {after})"
    );
    check_live(&snap, 2, "snapshot begun during compact, after it");
    // Reuse whatever was freed: new values into free space, then look again.
    for round in 3..6 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..LIVE {
            tx.put(key(i), value(i, round)).unwrap();
        }
        tx.commit().unwrap();
    }
    check_live(&snap, 2, "snapshot begun during compact, after reuse");
    drop(snap);
    check_live(&store.begin_read().unwrap(), 5, "a new snapshot");
    println!("pause-race ok");
}

/// Reader threads of the compacting handle and a reader process check a
/// bank (a constant total over `LIVE` accounts, and every account a value
/// some commit wrote) in snapshots they hold across commits, while the
/// main thread churns and compacts, round after round: relocations and
/// shrinks with the threads alone, plain compactions while the process
/// also has the store open.
#[test]
fn bank_readers_in_threads_and_a_process_survive_rounds_of_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("MAPKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (MAPKV_SEED={seed} replays the writer's choices)");
    run_child(
        "bank",
        &dir.path().join("bank.kv"),
        &[("MAPKV_SEED", seed.to_string())],
    );
}

const ACCOUNTS: u32 = 200;
const START: u64 = 1_000;

fn account(i: u32) -> Vec<u8> {
    format!("acct{i:04}").into_bytes()
}

fn balance(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_le_bytes(b)
}

fn encode(b: u64) -> Vec<u8> {
    let mut v = b.to_le_bytes().to_vec();
    v.resize(100, 0xa5);
    v
}

/// Sums the bank in `snap`; panics on a missing account or a bad value.
fn bank_total(snap: &mapkv::ReadTxn<'_>) -> u64 {
    (0..ACCOUNTS)
        .map(|i| {
            let v = snap
                .get(account(i))
                .unwrap_or_else(|e| panic!("account {i}: {e}"))
                .unwrap_or_else(|| panic!("account {i} missing at seq {}", snap.seq()));
            assert_eq!(v.len(), 100, "account {i}: value length");
            assert!(v[8..].iter().all(|&b| b == 0xa5), "account {i}: padding");
            balance(v)
        })
        .sum()
}

/// Reads the bank in snapshots until `stop`; each snapshot is checked, held
/// for a while (commits and compactions go on), and checked again.
fn bank_reader(store: &Store, stop: &AtomicBool, checks: &AtomicU64) {
    let total = u64::from(ACCOUNTS) * START;
    while !stop.load(Ordering::Relaxed) {
        let snap = store.begin_read().unwrap();
        assert_eq!(bank_total(&snap), total, "bank total at seq {}", snap.seq());
        let until = Instant::now() + Duration::from_micros(500);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        assert_eq!(
            bank_total(&snap),
            total,
            "bank total again at seq {}",
            snap.seq()
        );
        drop(snap);
        checks.fetch_add(1, Ordering::Relaxed);
        // Idle as long as it read: `compact()` frees the old index table
        // only when its scan finds no snapshot open, and the race is with a
        // snapshot that begins right then.
        let until = Instant::now() + Duration::from_micros(700);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

fn bank_child(db: &Path, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let faults = Faults::new();
    let store = Options::new()
        .durability(Durability::Eventual)
        .auto_compact(false)
        .faults(faults.clone())
        .open(db)
        .unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..ACCOUNTS {
        tx.put(account(i), encode(START)).unwrap();
    }
    tx.commit().unwrap();
    let stop = AtomicBool::new(false);
    let checks = AtomicU64::new(0);
    // At least 30 rounds, and on until compact() shrank the file three
    // times and relocated the index once (at most 90): on a loaded machine
    // the reader threads hold their snapshots longer, and fewer rounds
    // find the store free to shrink.
    let mut rounds = 0;
    let mut shrinks = 0;
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| bank_reader(&store, &stop, &checks)))
            .collect();
        // If this thread panics, the readers must stop too: the scope
        // waits for them, and the test would hang instead of failing.
        let _stop_readers = common::StopOnDrop(&stop);
        for round in 0..90 {
            let relocated = faults.times_reached(PausePoint::BeforeOldIndexFreed) >= 1;
            if round >= 30 && shrinks >= 3 && relocated {
                break;
            }
            rounds += 1;
            // A reader process in every third round: the store is then
            // shared, and compact() may not relocate or shrink.
            let other = (round % 3 == 2).then(|| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--ignored", "--exact", "child", "--nocapture"])
                    .env("MAPKV_ROLE", "bank-reader")
                    .env("MAPKV_DB", db)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            });
            // Churn: filler keys written and deleted (dead log), the bank's
            // transfers in between (live keys moving through the log).
            let filler = rng.gen_range(5_000..30_000u32);
            for chunk in (0..filler).collect::<Vec<_>>().chunks(2_500) {
                let mut tx = store.begin_write().unwrap();
                for &i in chunk {
                    tx.put(format!("fill{i}").as_bytes(), [round as u8; 90])
                        .unwrap();
                }
                transfer(&mut tx, &mut rng);
                tx.commit().unwrap();
            }
            let mut tx = store.begin_write().unwrap();
            for i in 0..filler {
                tx.delete(format!("fill{i}").as_bytes()).unwrap();
            }
            transfer(&mut tx, &mut rng);
            tx.commit().unwrap();
            let before = store.stats().unwrap().file_bytes;
            let report = store.compact().unwrap();
            if report.bytes_after < before {
                shrinks += 1;
            }
            if let Some(mut p) = other {
                let status = p.wait().unwrap();
                assert!(status.success(), "reader process failed: {status}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
    let relocations = faults.times_reached(PausePoint::BeforeOldIndexFreed);
    println!(
        "rounds {rounds}, shrinks {shrinks}, index relocations {relocations}, \
         reader checks {}",
        checks.load(Ordering::Relaxed)
    );
    // How many rounds end with free space at the end of the file depends
    // on the seed (8 to 18 of 30 in 11 seeds) and on the load: the reader
    // threads' snapshots keep retired space from being freed, and with
    // both cores busy one run in 30 shrank in only 2 of its 90 rounds. The
    // point is that shrinks happened under the readers.
    assert!(shrinks >= 1, "compact() never shrank the file");
    assert!(
        relocations >= 1,
        "compact() never moved the index table down"
    );
    assert!(
        checks.load(Ordering::Relaxed) >= 2 * rounds as u64,
        "readers barely ran"
    );
    assert_eq!(
        bank_total(&store.begin_read().unwrap()),
        u64::from(ACCOUNTS) * START
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// Moves a random amount between two random accounts.
fn transfer(tx: &mut mapkv::WriteTxn<'_>, rng: &mut ChaCha8Rng) {
    let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
    let va = balance(tx.get(account(a)).unwrap().unwrap());
    let amount = rng.gen_range(0..=va);
    tx.put(account(a), encode(va - amount)).unwrap();
    let vb = balance(tx.get(account(b)).unwrap().unwrap());
    tx.put(account(b), encode(vb + amount)).unwrap();
}

/// A reader in another process: checks the bank in snapshots for a while.
fn bank_reader_process(db: &Path) {
    let store = Options::new().read_only(true).open(db).unwrap();
    let stop = AtomicBool::new(false);
    let checks = AtomicU64::new(0);
    std::thread::scope(|s| {
        let r = s.spawn(|| bank_reader(&store, &stop, &checks));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        r.join().unwrap();
    });
    assert!(
        checks.load(Ordering::Relaxed) > 0,
        "the reader process read nothing"
    );
}

fn env_seed() -> u64 {
    std::env::var("MAPKV_SEED").unwrap().parse().unwrap()
}

/// Not a test on its own: the body of every child process above.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let db = std::env::var("MAPKV_DB").expect("run as a child");
    let db = Path::new(&db);
    match std::env::var("MAPKV_ROLE").unwrap().as_str() {
        "pause-race" => pause_race_child(db),
        "bank" => bank_child(db, env_seed()),
        "bank-reader" => bank_reader_process(db),
        other => panic!("unknown role {other}"),
    }
}

//! Many processes, one store: snapshot readers in other processes while a
//! writer commits and grows the file, the reader table across kills,
//! waiting for commits across processes, and read-only files.
//!
//! Children are this test binary run again (`child`, ignored on its own),
//! told their role by `MAPKV_ROLE`. They talk to the parent in lines on
//! standard output and take orders on standard input.

mod common;

use std::time::{Duration, Instant};

use common::procs::{hear, say, spawn_as_nobody, Proc};

use mapkv::{Error, Options, Store};
use rand::{Rng, SeedableRng};

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Voluntary context switches of the calling thread so far: a thread that
/// sleeps in one futex wait adds one (or a few), a thread that polls adds
/// one per poll.
fn voluntary_switches() -> u64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_nvcsw as u64
}

/// Microseconds on the system-wide monotonic clock, comparable between
/// processes.
fn mono_micros() -> u64 {
    // SAFETY: clock_gettime only writes the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

// ---- the bank ----

const ACCOUNTS: u64 = 10_000;
const START_BALANCE: u64 = 1_000;
/// Every value carries padding, so the transfers grow the file.
const PAD: usize = 500;

fn account(i: u64) -> Vec<u8> {
    format!("acct-{i:05}").into_bytes()
}

fn balance_value(amount: u64, salt: u64) -> Vec<u8> {
    let mut v = amount.to_le_bytes().to_vec();
    v.resize(8 + PAD, salt as u8);
    v
}

fn balance_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

/// A new store at `db` with every account at the starting balance;
/// returns the seq of that commit.
fn new_bank(db: &std::path::Path) -> u64 {
    let store = Store::open(db).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..ACCOUNTS {
        tx.put(account(i), balance_value(START_BALANCE, 0)).unwrap();
    }
    tx.commit().unwrap()
}

/// The writer: `commits` transactions, each moving money between random
/// accounts. Reports how many times it saw the file grow.
fn bank_writer(store: &Store, commits: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut lens = vec![store.stats().unwrap().file_bytes];
    let mut seqs = Vec::new();
    for c in 0..commits {
        let mut tx = store.begin_write().unwrap();
        for _ in 0..rng.gen_range(1..9) {
            let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
            if a == b {
                continue;
            }
            let ba = balance_of(tx.get(account(a)).unwrap().unwrap());
            let bb = balance_of(tx.get(account(b)).unwrap().unwrap());
            let amount = rng.gen_range(0..=ba);
            tx.put(account(a), balance_value(ba - amount, c)).unwrap();
            tx.put(account(b), balance_value(bb + amount, c)).unwrap();
        }
        let seq = tx.commit().unwrap();
        seqs.push(seq.to_string());
        let len = store.stats().unwrap().file_bytes;
        if len != *lens.last().unwrap() {
            lens.push(len);
        }
    }
    say(format!(
        "done {} {} {}",
        store.begin_read().unwrap().seq(),
        lens.len() - 1,
        store.stats().unwrap().reclaimed_total
    ));
    // The seq of every commit, for a parent that checks what ran when.
    say(format!("seqs {}", seqs.join(" ")));
}

/// A reader: snapshots until it sees `final_seq`; every snapshot must hold
/// all the money, and seqs never go back.
fn bank_reader(store: &Store, final_seq: u64) {
    let (mut last, mut snapshots, mut distinct) = (0u64, 0u64, 0u64);
    loop {
        let snap = store.begin_read().unwrap();
        let seq = snap.seq();
        if seq < last {
            say(format!("FAIL seq went back from {last} to {seq}"));
            return;
        }
        distinct += (seq != last) as u64;
        last = seq;
        let mut total = 0;
        let mut n = 0;
        for kv in snap.iter() {
            let (_, v) = kv.unwrap();
            total += balance_of(v);
            n += 1;
        }
        if total != ACCOUNTS * START_BALANCE || n != ACCOUNTS {
            say(format!("FAIL snapshot {seq}: {n} accounts, total {total}"));
            return;
        }
        snapshots += 1;
        if seq >= final_seq {
            break;
        }
    }
    say(format!("checked {snapshots} {distinct}"));
}

#[test]
fn bank_invariant_holds_in_every_snapshot_of_three_reader_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.kv");
    let start_seq = new_bank(&db);
    const COMMITS: u64 = 3_000;
    let final_seq = start_seq + COMMITS;
    let mut readers: Vec<Proc> = (0..3)
        .map(|_| {
            Proc::spawn(
                "bank-reader",
                &db,
                &[("MAPKV_FINAL", final_seq.to_string())],
            )
        })
        .collect();
    let mut writer = Proc::spawn(
        "bank-writer",
        &db,
        &[("MAPKV_COMMITS", COMMITS.to_string())],
    );
    let done = writer.expect("done");
    assert_eq!(done[0].parse::<u64>().unwrap(), final_seq);
    let growths: u64 = done[1].parse().unwrap();
    let reclaimed: u64 = done[2].parse().unwrap();
    // The readers followed remaps, and compaction moving records and
    // reusing extents under them.
    assert!(growths >= 1, "the file never grew");
    assert!(reclaimed > 0, "compaction never retired an extent");
    println!("writer: {COMMITS} commits, the file grew {growths} times, compaction retired {reclaimed} bytes");
    for r in &mut readers {
        let checked = r.expect("checked");
        let (snaps, distinct): (u64, u64) =
            (checked[0].parse().unwrap(), checked[1].parse().unwrap());
        println!("reader: {snaps} snapshots checked, {distinct} distinct states");
        // Each reader saw many states, not one before and one after.
        assert!(
            snaps >= 5 && distinct >= 5,
            "reader saw {snaps} snapshots, {distinct} states"
        );
    }
    writer.finish();
    for r in readers {
        r.finish();
    }
    let store = Store::open(&db).unwrap();
    assert!(store.verify().unwrap().is_ok());
}

/// `compact()` in this process while a writer in another commits: every
/// snapshot between compactions holds all the money, the writer's commits
/// land between the compaction's own (proven from their seqs, not by
/// timing), and the store verifies at the end.
#[test]
fn compact_in_one_process_beside_a_writer_in_another_keeps_the_bank() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("side.kv");
    let store = Store::open(&db).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..ACCOUNTS {
        tx.put(account(i), balance_value(START_BALANCE, 0)).unwrap();
    }
    tx.commit().unwrap();
    // Dead log to compact: every account rewritten twice.
    for salt in 1..3 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..ACCOUNTS {
            tx.put(account(i), balance_value(START_BALANCE, salt))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let mut writer = Proc::spawn("bank-writer", &db, &[("MAPKV_COMMITS", "1500".into())]);
    let total = |s: &Store| -> (u64, u64) {
        let snap = s.begin_read().unwrap();
        let sum = snap.iter().map(|kv| balance_of(kv.unwrap().1)).sum();
        (snap.seq(), sum)
    };
    let (mut spans, mut moved) = (Vec::new(), 0);
    let started = Instant::now();
    // Compact until the writer's last commits are in (its file grows, so
    // compaction always finds sealed extents to look at).
    loop {
        let (before, sum) = total(&store);
        assert_eq!(sum, ACCOUNTS * START_BALANCE, "bank total at seq {before}");
        let report = store.compact().unwrap();
        moved += report.records_moved;
        let (after, _) = total(&store);
        spans.push((before, after));
        if after >= 3 + 1500 + spans.len() as u64 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let done = writer.expect("done");
    let seqs: Vec<u64> = writer
        .expect("seqs")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    writer.finish();
    assert_eq!(seqs.len(), 1500);
    // A writer commit strictly inside a compact() call: the two ran at
    // the same time, taking turns at the writer lock.
    let inside = seqs
        .iter()
        .filter(|&&s| spans.iter().any(|&(a, b)| a < s && s < b))
        .count();
    println!(
        "{} compact() calls moved {moved} records; {inside} of the writer's commits \
         landed inside one; writer done at {}",
        spans.len(),
        done[0]
    );
    assert!(
        inside > 0,
        "no writer commit landed inside a compact() call: {spans:?}"
    );
    assert!(moved > 0, "compact() never moved a record");
    let (_, sum) = total(&store);
    assert_eq!(sum, ACCOUNTS * START_BALANCE);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

/// The bank by `get` alone (other keys may be in the store): the total
/// of every account in one snapshot, or why not.
fn bank_by_gets(snap: &mapkv::ReadTxn<'_>) -> Result<u64, String> {
    let mut total = 0;
    for i in 0..ACCOUNTS {
        match snap.get(account(i)) {
            Ok(Some(v)) => total += balance_of(v),
            Ok(None) => return Err(format!("account {i} missing at seq {}", snap.seq())),
            Err(e) => return Err(format!("account {i} at seq {}: {e}", snap.seq())),
        }
    }
    Ok(total)
}

/// A reader process for the index-move test: snapshots by `get` until
/// `final_seq`.
fn bank_getter_child(store: &Store, final_seq: u64) {
    let mut snapshots = 0u64;
    let last = loop {
        let snap = store.begin_read().unwrap();
        match bank_by_gets(&snap) {
            Ok(t) if t == ACCOUNTS * START_BALANCE => {}
            Ok(t) => return say(format!("FAIL total {t} at seq {}", snap.seq())),
            Err(e) => return say(format!("FAIL {e}")),
        }
        snapshots += 1;
        if snap.seq() >= final_seq {
            break snap.seq();
        }
    };
    say(format!("checked {snapshots} {last}"));
}

/// The index grows through several moves (each ramping up its pace) and
/// then shrinks back, while two reader threads and a reader process check
/// every account in their snapshots: a key is in the new table, the old
/// one, or both, never neither.
#[test]
fn growing_and_shrinking_index_moves_under_reader_threads_and_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("moves.kv");
    let store = Options::new().auto_compact(false).open(&db).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..ACCOUNTS {
        tx.put(account(i), balance_value(START_BALANCE, 0)).unwrap();
    }
    let start = tx.commit().unwrap();
    const COMMITS: u64 = 60;
    let mut reader = Proc::spawn(
        "bank-getter",
        &db,
        &[("MAPKV_FINAL", (start + COMMITS).to_string())],
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut slots, mut moving_seen) = (vec![store.stats().unwrap().index_slots], 0);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let snap = store.begin_read().unwrap();
                        assert_eq!(bank_by_gets(&snap), Ok(ACCOUNTS * START_BALANCE));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let _stop_threads = common::StopOnDrop(&stop);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for c in 0..COMMITS {
            let mut tx = store.begin_write().unwrap();
            // 30 commits add 8,000 filler keys each; 30 delete them.
            let (grow, batch) = (c < COMMITS / 2, c % (COMMITS / 2));
            for j in 0..8_000u64 {
                let k = format!("filler-{batch:02}-{j:05}");
                if grow {
                    tx.put(k.as_bytes(), [c as u8; 20]).unwrap();
                } else {
                    tx.delete(k.as_bytes()).unwrap();
                }
            }
            let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
            if a != b {
                let ba = balance_of(tx.get(account(a)).unwrap().unwrap());
                let bb = balance_of(tx.get(account(b)).unwrap().unwrap());
                let amount = rng.gen_range(0..=ba);
                tx.put(account(a), balance_value(ba - amount, c)).unwrap();
                tx.put(account(b), balance_value(bb + amount, c)).unwrap();
            }
            tx.commit().unwrap();
            let st = store.stats().unwrap();
            moving_seen += (st.index_moving > 0) as u64;
            if st.index_slots != *slots.last().unwrap() {
                slots.push(st.index_slots);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            assert!(t.join().unwrap() > 0);
        }
    });
    let checked = reader.expect("checked");
    reader.finish();
    println!("index sizes {slots:?}; {moving_seen} commits left a move under way; reader process: {checked:?}");
    let peak = *slots.iter().max().unwrap();
    assert!(
        slots.iter().position(|&s| s == peak).unwrap() >= 2,
        "the index grew at least twice: {slots:?}"
    );
    assert!(
        *slots.last().unwrap() < peak,
        "the index never shrank: {slots:?}"
    );
    assert!(moving_seen >= 4, "moves always ended within their commit");
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report}");
}

// ---- a reader across growth ----

#[test]
fn a_reader_process_keeps_its_snapshot_while_the_file_grows_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grow.kv");
    let store = Store::open(&db).unwrap();
    for i in 0..200u32 {
        store.put(i.to_le_bytes(), [1u8; 100]).unwrap();
    }
    let mut reader = Proc::spawn("old-snapshot", &db, &[]);
    let held: u64 = reader.expect("holding")[0].parse().unwrap();
    let len0 = store.stats().unwrap().file_bytes;
    // Several growths: overwrite every key with large values.
    let mut growths = 0;
    let mut len = len0;
    for round in 0..6u8 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..200u32 {
            tx.put(i.to_le_bytes(), vec![round + 2; 8_000]).unwrap();
        }
        tx.commit().unwrap();
        let now = store.stats().unwrap().file_bytes;
        growths += (now != len) as u32;
        len = now;
    }
    assert!(growths >= 3, "grew {growths} times");
    // The reader's snapshot is registered, so the table shows it.
    let stats = store.stats().unwrap();
    assert_eq!(stats.oldest_snapshot, Some(held));
    reader.tell("check");
    let after = reader.expect("ok");
    // A new snapshot in the reader saw the newest values.
    assert_eq!(
        after[0].parse::<u64>().unwrap(),
        store.begin_read().unwrap().seq()
    );
    reader.finish();
}

#[test]
fn a_reader_process_keeps_its_old_values_while_compaction_reclaims_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("compact.kv");
    let store = Store::open(&db).unwrap();
    for i in 0..200u32 {
        store.put(i.to_le_bytes(), [1u8; 100]).unwrap();
    }
    // A value larger than an extent moves the log on, sealing the extent
    // of the reader's values before its snapshot: compaction leaves alone
    // extents newer than the oldest snapshot, not older ones.
    store.put(b"filler", vec![0u8; 2 << 20]).unwrap();
    assert!(store.delete(b"filler").unwrap());
    let mut reader = Proc::spawn("old-snapshot", &db, &[("MAPKV_LIVE_BELOW", "100".into())]);
    let held: u64 = reader.expect("holding")[0].parse().unwrap();
    // Overwrite everything six times, compacting after each round: the
    // extents holding the reader's values are emptied and retired.
    for round in 0..6u8 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..200u32 {
            tx.put(i.to_le_bytes(), vec![round + 2; 8_000]).unwrap();
        }
        tx.commit().unwrap();
        let report = store.compact().unwrap();
        // Another process has the store open: the file is never cut.
        assert!(report.bytes_after >= report.bytes_before, "{report:?}");
    }
    // Deletes newer than the reader's snapshot, then rounds that seal and
    // compact their extent: compaction must copy them, not forget them,
    // or the reader's keys would read as absent.
    let mut tx = store.begin_write().unwrap();
    for i in 100..200u32 {
        tx.delete(i.to_le_bytes()).unwrap();
    }
    tx.commit().unwrap();
    let mut forgotten = 0;
    for _ in 0..3 {
        let mut tx = store.begin_write().unwrap();
        for i in 0..100u32 {
            tx.put(i.to_le_bytes(), [7u8; 8_000]).unwrap();
        }
        tx.commit().unwrap();
        forgotten += store.compact().unwrap().deletes_forgotten;
    }
    let stats = store.stats().unwrap();
    assert!(stats.reclaimed_total > 0, "{stats:?}");
    // The reader's snapshot still needs the first extents: not reused.
    assert!(stats.retired_bytes > 0, "{stats:?}");
    assert_eq!(stats.oldest_snapshot, Some(held));
    reader.tell("check");
    reader.expect("ok");
    reader.finish();
    assert_eq!(forgotten, 0, "deletes forgotten under an older snapshot");
    // Once it is gone, they are freed, and alone the file shrinks.
    let report = store.compact().unwrap();
    let after = store.stats().unwrap();
    assert_eq!(after.retired_bytes, 0, "{after:?}");
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    assert!(store.verify().unwrap().is_ok());
}

fn old_snapshot_child(store: &Store) {
    let snap = store.begin_read().unwrap();
    let len0 = store.stats().unwrap().file_bytes;
    say(format!("holding {}", snap.seq()));
    assert_eq!(hear(), "check");
    for i in 0..200u32 {
        assert_eq!(snap.get(i.to_le_bytes()).unwrap(), Some(&[1u8; 100][..]));
    }
    assert_eq!(snap.iter().count(), 200);
    let fresh = store.begin_read().unwrap();
    assert!(
        store.stats().unwrap().file_bytes > len0,
        "did not see the growth"
    );
    // Keys from this one on were deleted after the snapshot (if set).
    let live_below = std::env::var("MAPKV_LIVE_BELOW").map_or(200, |v| v.parse().unwrap());
    for i in 0..200u32 {
        let want = (i < live_below).then_some(&[7u8; 8_000][..]);
        assert_eq!(fresh.get(i.to_le_bytes()).unwrap(), want);
    }
    say(format!("ok {}", fresh.seq()));
}

// ---- killed readers ----

#[test]
fn a_killed_reader_process_stops_pinning_the_oldest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"k", b"1").unwrap();
    let mut readers: Vec<Proc> = (0..2).map(|_| Proc::spawn("hold", &db, &[])).collect();
    let pids: Vec<u32> = readers.iter().map(|r| r.child.id()).collect();
    let held: Vec<u64> = readers
        .iter_mut()
        .map(|r| r.expect("holding")[0].parse().unwrap())
        .collect();
    for i in 0..5u8 {
        store.put(b"k", [i]).unwrap();
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.open_snapshots, 4, "two snapshots per reader");
    assert_eq!(stats.oldest_snapshot, Some(held[0].min(held[1])));
    let listed = store.readers().unwrap();
    assert!(pids.iter().all(|p| listed.iter().any(|r| r.pid == *p)));

    // SIGKILL both: no chance to release anything.
    drop(readers);
    let mine = store.begin_read().unwrap();
    assert_eq!(store.clear_stale_readers().unwrap(), 2);
    let stats = store.stats().unwrap();
    assert_eq!(stats.open_snapshots, 1);
    assert_eq!(stats.oldest_snapshot, Some(mine.seq()));
    assert!(store
        .readers()
        .unwrap()
        .iter()
        .all(|r| r.pid == std::process::id()));
}

fn hold_child(store: &Store) {
    let a = store.begin_read().unwrap();
    store.put(b"child", b"x").unwrap();
    let b = store.begin_read().unwrap();
    say(format!("holding {} {}", a.seq(), b.seq()));
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

// ---- waiting for commits ----

#[test]
fn wait_for_commit_wakes_another_process_without_polling_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wait.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"k", b"0").unwrap();
    let mut waiter = Proc::spawn("waiter", &db, &[]);
    let seen: u64 = waiter.expect("waiting")[0].parse().unwrap();
    // A second of nothing to wait for: long enough for a poll to show.
    std::thread::sleep(Duration::from_secs(1));
    let committed_at = mono_micros();
    store.put(b"k", b"1").unwrap();
    let woke = waiter.expect("woke");
    let (seq, woke_at, cpu_us, switches): (u64, u64, u64, u64) = (
        woke[0].parse().unwrap(),
        woke[1].parse().unwrap(),
        woke[2].parse().unwrap(),
        woke[3].parse().unwrap(),
    );
    assert_eq!(seq, seen + 1);
    let latency = woke_at.saturating_sub(committed_at);
    println!(
        "woken {latency} µs after the commit began, {cpu_us} µs of CPU and \
         {switches} voluntary context switches while waiting"
    );
    // Woken by the commit, not by a timer that happened to fire.
    assert!(latency < 500_000, "woke {latency} µs after the commit");
    // It slept through the second: a busy poll would have burnt it, and a
    // sleeping poll (even every 250 ms) would have switched out per poll.
    assert!(cpu_us < 100_000, "waiting used {cpu_us} µs of CPU");
    assert!(switches <= 3, "{switches} context switches: it polled");
    let timed_out = waiter.expect("timeout");
    let (seq, waited_ms): (u64, u64) =
        (timed_out[0].parse().unwrap(), timed_out[1].parse().unwrap());
    assert_eq!(seq, seen + 1, "a timeout returns the current seq");
    assert!(
        (300..3_000).contains(&waited_ms),
        "waited {waited_ms} ms for a 300 ms timeout"
    );
    waiter.finish();
}

fn waiter_child(store: &Store) {
    let seen = store.begin_read().unwrap().seq();
    let cpu0 = cpu_time();
    say(format!("waiting {seen}"));
    let switches0 = voluntary_switches();
    let seq = store
        .wait_for_commit(seen, Some(Duration::from_secs(20)))
        .unwrap();
    let switches = voluntary_switches() - switches0;
    let woke_at = mono_micros();
    let cpu = cpu_time() - cpu0;
    say(format!(
        "woke {seq} {woke_at} {} {switches}",
        cpu.as_micros()
    ));
    let t = Instant::now();
    let again = store
        .wait_for_commit(seq, Some(Duration::from_millis(300)))
        .unwrap();
    say(format!("timeout {again} {}", t.elapsed().as_millis()));
}

// ---- changes across processes ----

#[test]
fn changes_made_in_another_process_are_listed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("changes.kv");
    let store = Store::open(&db).unwrap();
    let from = store.begin_read().unwrap().seq();
    let writer = Proc::spawn("change-writer", &db, &[]);
    writer.finish();
    let snap = store.begin_read().unwrap();
    let got = common::owned_changes(&snap, from);
    let want = vec![
        (from + 1, b"a".to_vec(), Some(b"1".to_vec())),
        (from + 1, b"b".to_vec(), Some(b"2".to_vec())),
        (from + 2, b"a".to_vec(), None),
        (from + 2, b"b".to_vec(), Some(b"3".to_vec())),
    ];
    assert_eq!(got, want);
}

fn change_writer_child(store: &Store) {
    let mut tx = store.begin_write().unwrap();
    tx.put(b"a", b"0").unwrap();
    tx.put(b"b", b"2").unwrap();
    tx.put(b"a", b"1").unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin_write().unwrap();
    tx.delete(b"a").unwrap();
    tx.put(b"b", b"3").unwrap();
    tx.commit().unwrap();
}

// ---- private views ----

/// The money in a snapshot, and how many accounts hold it.
fn bank_total(snap: &mapkv::ReadTxn<'_>) -> (u64, u64) {
    snap.iter().fold((0, 0), |(total, n), kv| {
        let (_, v) = kv.unwrap();
        (total + balance_of(v), n + 1)
    })
}

/// Private views opened again and again while a writer in another process
/// commits and compacts: each view holds all the money, keeps the state it
/// opened on while the writer goes on, takes its own transfers, and never
/// shows them to the writer.
#[test]
fn private_views_beside_a_writer_in_another_process_keep_their_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("viewed.kv");
    let start_seq = new_bank(&db);
    const COMMITS: u64 = 2_000;
    let mut writer = Proc::spawn(
        "bank-writer",
        &db,
        &[("MAPKV_COMMITS", COMMITS.to_string())],
    );
    let probe = Options::new().read_only(true).open(&db).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut views = 0;
    loop {
        let exited = writer.child.try_wait().unwrap();
        let live_seq = probe.begin_read().unwrap().seq();
        // A writer that is gone published all it will: the probe must show
        // its last commit now, or this loop would never end.
        if let Some(status) = exited {
            assert!(
                status.success() && live_seq >= start_seq + COMMITS,
                "the writer exited ({status}); the probe shows commit {live_seq}"
            );
        }
        let view = Options::new().private(true).open(&db).unwrap();
        let opened = view.begin_read().unwrap().seq();
        assert!(opened >= live_seq, "a view older than the store it opened");
        assert_eq!(
            bank_total(&view.begin_read().unwrap()),
            (ACCOUNTS * START_BALANCE, ACCOUNTS)
        );
        // A private transfer of everything account 0 has to account 1.
        let mut tx = view.begin_write().unwrap();
        let a = balance_of(tx.get(account(0)).unwrap().unwrap());
        let b = balance_of(tx.get(account(1)).unwrap().unwrap());
        tx.put(account(0), balance_value(0, 99)).unwrap();
        tx.put(account(1), balance_value(a + b, 99)).unwrap();
        let mine = tx.commit().unwrap();
        assert_eq!(
            mine,
            opened + 1,
            "the view's commit follows what it opened on"
        );
        std::thread::sleep(Duration::from_millis(20)); // the writer goes on
        let snap = view.begin_read().unwrap();
        assert_eq!(snap.seq(), mine, "a view followed another process");
        assert_eq!(bank_total(&snap), (ACCOUNTS * START_BALANCE, ACCOUNTS));
        assert_eq!(balance_of(snap.get(account(0)).unwrap().unwrap()), 0);
        assert!(view.verify().unwrap().is_ok());
        drop(snap);
        drop(view);
        seen.insert(opened);
        views += 1;
        if live_seq >= start_seq + COMMITS {
            break;
        }
    }
    let done = writer.expect("done");
    assert_eq!(done[0].parse::<u64>().unwrap(), start_seq + COMMITS);
    writer.finish();
    println!("{views} views, on {} distinct states", seen.len());
    assert!(seen.len() >= 3, "views saw only {} states", seen.len());
    let store = Store::open(&db).unwrap();
    assert!(store.verify().unwrap().is_ok());
    let snap = store.begin_read().unwrap();
    assert_eq!(bank_total(&snap), (ACCOUNTS * START_BALANCE, ACCOUNTS));
    assert_ne!(
        snap.get(account(0)).unwrap().unwrap()[8],
        99,
        "a view's commit reached the file"
    );
}

// ---- read-only files ----

/// A process that may not write the file: as root, a child running as
/// `nobody`; otherwise permissions alone keep it out.
#[test]
fn a_process_that_may_not_write_the_file_reads_follows_and_waits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.kv");
    {
        let store = Store::open(&db).unwrap();
        store.put(b"k", b"v1").unwrap();
        store.close().unwrap(); // clean: readable with no writer around
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let Some(mut reader) = spawn_as_nobody(dir.path(), "read-only", &db, &[]) else {
        return;
    };
    let opened = reader.expect("opened");
    assert_eq!(opened, vec!["v1".to_string(), "unregistered".to_string()]);

    // A writer comes along (root may write a 0444 file; it recovers the
    // store and sets up the live header), commits, and the reader sees it.
    let writer = Store::open(&db).unwrap();
    assert!(
        writer.stats().unwrap().unregistered_readers,
        "the reader's pin lock is seen"
    );
    writer.put(b"k", b"v2").unwrap();
    let followed = reader.expect("followed");
    assert_eq!(followed, vec!["v2".to_string()]);
    reader.finish();
}

/// A private view by a process that may only read the file (`nobody`,
/// mode 0444): it commits in memory, and the file stays byte for byte.
#[test]
fn a_process_that_may_only_read_the_file_commits_in_a_private_view() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.kv");
    {
        let store = Store::open(&db).unwrap();
        store.put(b"k", b"v1").unwrap();
        store.close().unwrap();
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let modified = std::fs::metadata(&db).unwrap().modified().unwrap();
    let Some(mut child) = spawn_as_nobody(dir.path(), "private-view", &db, &[]) else {
        return;
    };
    let said = child.expect("viewed");
    assert_eq!(said, vec!["v1", "v2", "100"]);
    child.finish();
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the view wrote the file"
    );
    assert_eq!(
        std::fs::metadata(&db).unwrap().modified().unwrap(),
        modified
    );
}

fn private_view_child(db: &str) {
    // A plain open must fail: this user may not write the file.
    assert!(
        Store::open(db).is_err(),
        "nobody opened a 0444 file read-write"
    );
    let view = Options::new().private(true).open(db).unwrap();
    let v1 = view.get(b"k").unwrap().unwrap();
    view.put(b"k", b"v2").unwrap();
    let mut tx = view.begin_write().unwrap();
    for i in 0..100u32 {
        tx.put(i.to_le_bytes(), [7u8; 100]).unwrap();
    }
    tx.commit().unwrap();
    let n = view.begin_read().unwrap().iter().count() - 1;
    say(format!(
        "viewed {} {} {n}",
        String::from_utf8(v1).unwrap(),
        String::from_utf8(view.get(b"k").unwrap().unwrap()).unwrap()
    ));
}

fn read_only_child(store: &Store) {
    let seen = store.begin_read().unwrap().seq();
    assert!(matches!(store.begin_write(), Err(Error::ReadOnly { .. })));
    // A read-write open of a file this user may not write is refused with
    // an error naming it (tests/api.rs can check that only when not root).
    match Store::open(store.path()) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("ro.kv"), "{e}"),
        other => panic!("a read-write open of a 0444 file as nobody: {other:?}"),
    }
    let stats = store.stats().unwrap();
    let value = store.get(b"k").unwrap().unwrap();
    say(format!(
        "opened {} {}",
        String::from_utf8(value).unwrap(),
        if stats.unregistered_readers {
            "unregistered"
        } else {
            "registered"
        }
    ));
    let seq = store
        .wait_for_commit(seen, Some(Duration::from_secs(20)))
        .unwrap();
    assert!(seq > seen, "no commit seen");
    let value = store.get(b"k").unwrap().unwrap();
    say(format!("followed {}", String::from_utf8(value).unwrap()));
}

/// Not a test on its own: the body of every child process above.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child() {
    let db = std::env::var("MAPKV_DB").expect("run as a child");
    let role = std::env::var("MAPKV_ROLE").unwrap();
    let read_only = role == "read-only";
    if role == "private-view" {
        return private_view_child(&db);
    }
    let store = Options::new().read_only(read_only).open(&db).unwrap();
    match role.as_str() {
        "bank-writer" => bank_writer(&store, env_u64("MAPKV_COMMITS")),
        "bank-reader" => bank_reader(&store, env_u64("MAPKV_FINAL")),
        "bank-getter" => bank_getter_child(&store, env_u64("MAPKV_FINAL")),
        "old-snapshot" => old_snapshot_child(&store),
        "hold" => hold_child(&store),
        "waiter" => waiter_child(&store),
        "change-writer" => change_writer_child(&store),
        "read-only" => read_only_child(&store),
        other => panic!("unknown role {other}"),
    }
}

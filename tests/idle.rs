//! Idle-time work (`Options::idle_work`): what a burst leaves behind (a
//! checkpoint, retired extents to free, freed space to punch) is done in
//! the gaps between commits, not by the commits after the burst; and the
//! thread that does it never outlives the store's last handle.

use mapkv::faults::{Faults, PausePoint};
use mapkv::{Options, Stats, Store};

use std::time::{Duration, Instant};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:07}").into_bytes()
}

/// A burst: 60,000 keys with 200-byte values, overwritten once, then all
/// but 1,000 deleted, in commits of 1,000 (automatic compaction retires
/// extents as it goes). Returns the stats right after the last commit.
fn burst(store: &Store) -> Stats {
    for round in 0..2u8 {
        for chunk in (0..60_000).collect::<Vec<u32>>().chunks(1_000) {
            let mut tx = store.begin_write().unwrap();
            for &i in chunk {
                tx.put(key(i), [round; 200]).unwrap();
            }
            tx.commit().unwrap();
        }
    }
    for chunk in (1_000..60_000).collect::<Vec<u32>>().chunks(1_000) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            tx.delete(key(i)).unwrap();
        }
        tx.commit().unwrap();
    }
    store.stats().unwrap()
}

#[test]
fn what_a_burst_leaves_behind_is_done_while_the_store_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let without = Options::new()
        .idle_work(false)
        .open(dir.path().join("off.kv"))
        .unwrap();
    let with = Options::new().open(dir.path().join("on.kv")).unwrap();

    let off = burst(&without);
    assert!(
        off.retired_bytes > 1 << 20,
        "the burst must leave retired extents for this test to mean anything: {off:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let later = without.stats().unwrap();
    assert_eq!(
        (later.retired_bytes, later.allocated_bytes, later.seq),
        (off.retired_bytes, off.allocated_bytes, off.seq),
        "without idle work nothing happens between commits"
    );

    // The same burst with idle work: the retired extents are freed and
    // their blocks given back, with no commit after the burst. (The two
    // stores differ only where the thread found a gap during the burst.)
    let on = burst(&with);
    let start = Instant::now();
    let done = loop {
        let s = with.stats().unwrap();
        if s.retired_bytes == 0 && s.allocated_bytes + off.retired_bytes / 2 <= off.allocated_bytes
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "idle work never finished: without it {off:?}, with it after the burst {on:?}, now {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Nothing was committed meanwhile, and every key reads as it should.
    assert_eq!(done.seq, on.seq);
    for i in (0..60_000).step_by(97) {
        let want = (i < 1_000).then(|| vec![1u8; 200]);
        assert_eq!(with.get(key(i)).unwrap(), want, "key {i}");
    }
    assert!(with.verify().unwrap().is_ok());
}

#[test]
fn the_last_handle_to_drop_waits_for_the_idle_thread_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.kv");
    let faults = Faults::new();
    let store = Options::new()
        .faults(faults.clone())
        .idle_work(true)
        .open(&path)
        .unwrap();
    let clone = store.clone();
    let _ = burst(&store);
    // (Armed only now: a turn in a gap of the burst would hold the lock
    // the burst's next commit waits for.)
    faults.pause_at(PausePoint::IdleTurn);
    assert!(
        faults.wait_paused(Duration::from_secs(20)),
        "the idle thread never took a turn"
    );
    // The idle thread holds the writer lock, paused. Dropping a clone
    // while another lives lets go at once.
    drop(clone);
    let (tx, rx) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(store);
        tx.send(()).unwrap();
    });
    // The last handle waits for the turn to end: were the close left to
    // the idle thread, this drop would return now and the store close
    // later, in the idle thread, after the caller thought it closed.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the last drop returned while the idle thread was inside a turn"
    );
    faults.resume();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the last drop returned after the turn");
    dropper.join().unwrap();
    // Closed, by the dropping thread, cleanly: a read-only open finds no
    // live writer and a checkpoint with nothing to recover.
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.get(key(7)).unwrap(), Some(vec![1u8; 200]));
    assert_eq!(ro.get(key(7_000)).unwrap(), None);
}

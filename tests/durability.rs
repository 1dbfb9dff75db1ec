//! Flushes per commit, and what failures of the flush and of growth do.

use mapkv::sim::SimDisk;
use mapkv::{Durability, Error, Options};

fn store_on(disk: &SimDisk) -> mapkv::Store {
    Options::new().open_sim(disk).unwrap()
}

#[test]
fn an_immediate_commit_costs_one_flush_in_steady_state() {
    let disk = SimDisk::new(256 << 20);
    let store = store_on(&disk);
    store.put(b"warm-up", b"x").unwrap(); // first commit also marks the meta dirty
    let mut per_commit = Vec::new();
    for i in 0..200u32 {
        let before = disk.flush_count();
        let mut tx = store.begin_write().unwrap();
        for j in 0..10u32 {
            tx.put((i * 10 + j).to_le_bytes(), [i as u8; 100]).unwrap();
        }
        tx.commit().unwrap();
        per_commit.push(disk.flush_count() - before);
    }
    // Every commit that stays inside one extent flushes exactly once; the
    // rare one that crosses into a new extent flushes its two ranges.
    let ones = per_commit.iter().filter(|&&n| n == 1).count();
    assert!(ones >= 195, "flushes per commit: {per_commit:?}");
    assert!(
        per_commit.iter().all(|&n| (1..=2).contains(&n)),
        "{per_commit:?}"
    );
}

#[test]
fn eventual_commits_do_not_flush_until_sync() {
    let disk = SimDisk::new(64 << 20);
    let store = Options::new()
        .durability(Durability::Eventual)
        .open_sim(&disk)
        .unwrap();
    store.put(b"a", b"1").unwrap();
    let before = disk.flush_count();
    for i in 0..50u32 {
        store.put(i.to_le_bytes(), b"v").unwrap();
    }
    assert_eq!(disk.flush_count(), before, "Eventual commits flushed");
    store.sync().unwrap();
    let after_sync = disk.flush_count();
    assert!(after_sync > before, "sync did not flush");
    store.sync().unwrap();
    assert_eq!(
        disk.flush_count(),
        after_sync,
        "a second sync had something to flush"
    );
    // After sync, a power cut loses nothing.
    let cut = disk.crash_point();
    let image = cut.image(|_| false);
    let recovered = Options::new()
        .open_sim(&SimDisk::from_image(&image, 64 << 20))
        .unwrap();
    assert_eq!(recovered.begin_read().unwrap().len(), 51);
}

#[test]
fn a_failed_flush_fails_the_commit_and_poisons_the_handle() {
    let disk = SimDisk::new(64 << 20);
    let store = store_on(&disk);
    store.put(b"k", b"old").unwrap();
    disk.fail_flushes(true);
    let err = store.put(b"k", b"new").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    disk.fail_flushes(false);
    // The commit is not visible, and the handle refuses writes even now that
    // flushes work again: a retried flush could report a lost write as done.
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(
        store.put(b"k", b"again"),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(store.begin_write(), Err(Error::Poisoned { .. })));
    drop(store);
    // A new handle starts clean and sees the last good commit.
    let store = store_on(&disk);
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    store.put(b"k", b"newer").unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"newer".to_vec()));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_full_disk_fails_the_commit_and_leaves_the_store_as_it_was() {
    let disk = SimDisk::new(8 << 20);
    let store = store_on(&disk);
    store.put(b"keep", b"me").unwrap();
    let seq = store.begin_read().unwrap().seq();
    // 12 MiB cannot fit on an 8 MiB disk.
    let err = store.put(b"big", vec![1u8; 12 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
    assert!(err.to_string().contains("grow the file"), "{err}");
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.seq(), seq);
    assert_eq!(snap.get(b"keep").unwrap(), Some(&b"me"[..]));
    assert_eq!(snap.get(b"big").unwrap(), None);
    drop(snap);
    // Not poisoned: a write that fits still works, and survives a reopen.
    store.put(b"small", b"ok").unwrap();
    drop(store);
    let store = store_on(&disk);
    assert_eq!(store.get(b"small").unwrap(), Some(b"ok".to_vec()));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn growth_that_fails_once_can_be_retried_in_the_same_transaction() {
    let disk = SimDisk::new(64 << 20);
    let store = store_on(&disk);
    let mut tx = store.begin_write().unwrap();
    disk.fail_grows(1);
    let big = vec![9u8; 3 << 20];
    assert!(tx.put(b"big", &big).is_err());
    tx.put(b"big", &big).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.get(b"big").unwrap().as_deref(), Some(&big[..]));
}

fn libc_eio() -> i32 {
    5
}
fn libc_enospc() -> i32 {
    28
}

#[test]
fn opening_and_closing_a_clean_store_without_writing_flushes_nothing() {
    let disk = SimDisk::new(64 << 20);
    store_on(&disk).put(b"k", b"v").unwrap(); // closes clean
    let before = disk.flush_count();
    for _ in 0..5 {
        let s = store_on(&disk);
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
        s.sync().unwrap();
        assert_eq!(s.begin_write().unwrap().commit().unwrap(), 1);
    }
    assert_eq!(disk.flush_count(), before);
}

#[test]
fn a_clean_meta_page_is_trusted_open_reads_no_log_past_its_tail() {
    // docs/DESIGN.md, "Recovery": a clean store opens without scanning
    // the log. The writer never leaves a commit after a clean meta page's
    // tail (the first commit after a clean close clears the flag, flushed,
    // before it writes its commit record), so this image is made by hand:
    // the meta pages of a clean close, the log of one more commit.
    let disk = SimDisk::new(64 << 20);
    store_on(&disk).put(b"a", b"1").unwrap(); // closes clean
    let clean = disk.crash_point().image(|_| true);
    let store = store_on(&disk);
    store.put(b"b", b"2").unwrap();
    let after = disk.crash_point().image(|_| true);
    drop(store);
    let open = |image: &[u8]| Options::new().open_sim(&SimDisk::from_image(image, 64 << 20));

    // As written (the meta page not clean), open scans and replays it.
    let replayed = open(&after).unwrap();
    assert_eq!(replayed.get(b"b").unwrap(), Some(b"2".to_vec()));
    drop(replayed);

    // Under the clean meta pages, the same log is not looked at.
    let mut forged = after;
    forged[..8192].copy_from_slice(&clean[..8192]);
    let trusted = open(&forged).unwrap();
    let snap = trusted.begin_read().unwrap();
    assert_eq!(snap.seq(), 1);
    assert_eq!(snap.get(b"a").unwrap(), Some(&b"1"[..]));
    assert_eq!(snap.get(b"b").unwrap(), None);
}

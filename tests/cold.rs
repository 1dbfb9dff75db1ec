//! A store opened on a cold page cache is read into memory in the
//! background (`Options::warm_on_open`), so its gets do not each pay two
//! random disk reads; with the option off, nothing is read ahead.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use mapkv::{Options, Store};

/// Bytes of `path` in the page cache, from util-linux's `fincore`.
fn resident(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Writes the file out and drops its pages from the page cache.
fn drop_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: an advice call on an open descriptor; no memory is passed.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

fn build(path: &Path) -> u64 {
    let store = Store::open(path).unwrap();
    for chunk in (0..60_000u32).collect::<Vec<_>>().chunks(5_000) {
        let mut tx = store.begin_write().unwrap();
        for &i in chunk {
            tx.put(format!("key{i:08}").as_bytes(), [i as u8; 200])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let len = store.stats().unwrap().file_bytes;
    store.close().unwrap();
    len
}

#[test]
fn opening_a_cold_store_reads_it_into_memory_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cold.kv");
    let len = build(&path);
    drop_cache(&path);
    assert!(
        resident(&path) < len / 10,
        "setup: the cache was not dropped"
    );

    // Off: an open and a few gets read a few pages, no more.
    let store = Options::new().warm_on_open(false).open(&path).unwrap();
    for i in 0..10u32 {
        assert!(store
            .get(format!("key{:08}", i * 5_000).as_bytes())
            .unwrap()
            .is_some());
    }
    std::thread::sleep(Duration::from_millis(300));
    let off = resident(&path);
    assert!(
        off < len / 10,
        "{off} of {len} bytes resident with warm_on_open(false)"
    );
    drop(store);
    drop_cache(&path);

    // On (the default): the whole file comes in, without a get asking.
    let store = Store::open(&path).unwrap();
    let t = Instant::now();
    while resident(&path) < len * 9 / 10 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "only {} of {len} bytes resident 20 s after a cold open",
            resident(&path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        store.get(b"key00000007").unwrap(),
        Some(vec![7u8; 200]),
        "a warmed store reads as written"
    );
}

/// Closing a handle stops its warming thread and waits for it, so no
/// thread of a closed store is left running (the likely cause of a leak
/// checker's reports in fuzzing: fuzz/README.md); and the thread opens the file anew, so nothing of the
/// handle's OFD locks outlives the close: another handle is alone, and its
/// `compact()` shrinks the file.
#[test]
fn a_handle_closed_while_its_store_warms_stops_the_warming_and_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warm.kv");
    {
        let store = Options::new().auto_compact(false).open(&path).unwrap();
        for round in 0..3u8 {
            let mut tx = store.begin_write().unwrap();
            for i in 0..40_000u32 {
                tx.put(format!("key{i:08}").as_bytes(), [round; 60])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let mut tx = store.begin_write().unwrap();
        for i in 1_000..40_000u32 {
            tx.delete(format!("key{i:08}").as_bytes()).unwrap();
        }
        tx.commit().unwrap();
        store.close().unwrap();
    }
    drop_cache(&path);
    let faults = mapkv::faults::Faults::new();
    faults.pause_at(mapkv::faults::PausePoint::Warming);
    let first = Options::new().faults(faults.clone()).open(&path).unwrap();
    assert!(
        faults.wait_paused(Duration::from_secs(20)),
        "the cold open started no warming"
    );
    let closing = std::thread::spawn(move || drop(first));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !closing.is_finished(),
        "the handle closed while its warming thread still ran"
    );
    faults.resume();
    closing.join().unwrap();
    // Stopped before its first piece; a stop that came late would let
    // one piece (2 MiB) through, where the whole store is 15 MB.
    let cached = resident(&path);
    assert!(
        cached < 2 << 20,
        "the warming thread went on reading after its handle closed: {cached} bytes cached"
    );
    let second = Options::new().auto_compact(false).open(&path).unwrap();
    let report = second.compact().unwrap();
    assert!(
        report.bytes_after < report.bytes_before,
        "compact() could not shrink: the closed handle still holds the store ({report:?})"
    );
    assert_eq!(second.stats().unwrap().keys, 1_000);
}

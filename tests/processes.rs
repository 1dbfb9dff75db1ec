//! One writer across processes: real child processes (this test binary
//! re-executed) hold the write lock, are refused, wait, and are killed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mapkv::{Options, Store};

/// A child process running `child_writer`; killed and reaped when dropped,
/// so a failing test leaves no process behind.
struct ChildWriter {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for ChildWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this binary as a child running `child_writer` on `db`, and waits
/// until it holds the write lock.
fn spawn_writer(db: &Path, keys: u32) -> ChildWriter {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAPKV_CHILD_DB", db)
        .env("MAPKV_CHILD_KEYS", keys.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = child.unwrap();
    let stdout = child.stdout.take();
    let mut w = ChildWriter {
        child,
        out: BufReader::new(stdout.expect("piped stdout")),
    };
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            w.out.read_line(&mut line).unwrap() > 0,
            "child exited before locking"
        );
        if line.trim_end().ends_with("locked") {
            return w;
        }
    }
}

/// Not a test on its own: the child side of the tests below. It opens the
/// store, writes keys in a transaction, says "locked", and commits when
/// its standard input closes.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child_writer() {
    let db = std::env::var("MAPKV_CHILD_DB").expect("run as a child");
    let keys: u32 = std::env::var("MAPKV_CHILD_KEYS").unwrap().parse().unwrap();
    let store = Store::open(db).unwrap();
    let mut tx = store.begin_write().unwrap();
    for i in 0..keys {
        tx.put(format!("child-{i}").as_bytes(), [7u8; 64]).unwrap();
    }
    println!("locked");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    tx.commit().unwrap();
    println!("committed");
}

#[test]
fn a_second_process_is_refused_or_waits_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("two.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"parent-0", b"x").unwrap();

    let mut child = spawn_writer(&db, 100);
    // The child holds the lock: we are told, not blocked.
    assert!(store.try_begin_write().unwrap().is_none());
    // Reads go on while another process writes.
    assert_eq!(store.get(b"parent-0").unwrap(), Some(b"x".to_vec()));
    assert_eq!(store.get(b"child-0").unwrap(), None);

    // A waiting writer gets the lock once the child commits. It asks while
    // the child holds the lock (its try is refused, and the child commits
    // only after that), so its begin_write must wait: no sleep, no clock.
    let (asked, asking) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let store = Store::open(&db).unwrap();
        assert!(
            store.try_begin_write().unwrap().is_none(),
            "the child's lock was not held"
        );
        asked.send(()).unwrap();
        let mut tx = store.begin_write().unwrap();
        // It sees the child's last commit: the lock passed after it.
        assert_eq!(tx.get(b"child-99").unwrap(), Some(&[7u8; 64][..]));
        tx.put(b"parent-1", b"y").unwrap();
        tx.commit().unwrap();
    });
    asking.recv().expect("the waiter asked for the lock");
    drop(child.child.stdin.take()); // let the child commit
    let mut line = String::new();
    child.out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "committed");
    assert!(child.child.wait().unwrap().success());
    waiter.join().unwrap();

    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), 102);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_killed_writer_releases_the_lock_and_its_work_vanishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill.kv");
    let store = Store::open(&db).unwrap();
    store.put(b"before", b"1").unwrap();
    // Enough uncommitted data to grow the file while holding the lock.
    let child = spawn_writer(&db, 30_000);
    assert!(store.try_begin_write().unwrap().is_none());
    drop(child); // SIGKILL, then reap
    let mut tx = store.begin_write().unwrap();
    assert_eq!(tx.get(b"child-0").unwrap(), None);
    tx.put(b"after", b"2").unwrap();
    tx.commit().unwrap();
    let snap = store.begin_read().unwrap();
    assert_eq!(snap.len(), 2);
    drop(snap);
    assert!(store.verify().unwrap().is_ok());
    drop(store);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.begin_read().unwrap().len(), 2);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn two_handles_in_one_process_exclude_each_other_and_survive_closing_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twice.kv");
    let a = Store::open(&db).unwrap();
    let b = Store::open(&db).unwrap();
    let tx = a.begin_write().unwrap();
    assert!(b.try_begin_write().unwrap().is_none());
    drop(tx);
    let mut tb = b.try_begin_write().unwrap().expect("lock passed to b");
    tb.put(b"from-b", b"1").unwrap();
    // Closing another handle of the same file must not drop b's lock (the
    // classic fcntl-lock pitfall).
    drop(a);
    let c = Options::new().open(&db).unwrap();
    assert!(c.try_begin_write().unwrap().is_none());
    tb.commit().unwrap();
    assert_eq!(c.get(b"from-b").unwrap(), Some(b"1".to_vec()));
    // A commit by one handle is seen by the other's new snapshots.
    c.put(b"from-c", b"2").unwrap();
    assert_eq!(b.get(b"from-c").unwrap(), Some(b"2".to_vec()));
}

/// Handles opening at once, while no handle is live: one recovers under
/// the writer lock, the others wait for it and then join. None may keep
/// the writer lock after opening (a bug the multi-process bank test found:
/// a waiter that found the store live on getting the lock never let go).
#[test]
fn handles_opening_at_once_leave_the_writer_lock_free() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("race.kv");
    Store::open(&db).unwrap().put(b"k", b"v").unwrap();
    for _ in 0..10 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let (barrier, tx, db) = (barrier.clone(), tx.clone(), db.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let _ = tx.send(Store::open(&db).unwrap());
            });
        }
        // With the bug, an opener waits forever for the kept lock: fail,
        // do not hang.
        let stores: Vec<Store> = (0..8)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(20))
                    .expect("an open hung")
            })
            .collect();
        for (i, store) in stores.iter().enumerate() {
            let tx = store.try_begin_write().unwrap();
            assert!(
                tx.is_some(),
                "handle {i} cannot write: another kept the lock"
            );
        }
    }
}

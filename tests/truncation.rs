//! A store file cut short by another program while a process has it
//! mapped. Out of contract (docs: *Caveats*; LMDB is the same): no mmap
//! store can keep a reader of the lost pages from `SIGBUS`. What mapkv
//! promises and this test checks is the rest: a new open fails with an
//! error that names the truncation, and the open handle's next snapshot
//! still begins (no system call on that path to notice); touching the
//! cut-off part then kills the process with `SIGBUS`, which the test
//! asserts so that a change in that behaviour is seen.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use mapkv::{Error, Options, Store};

const KEYS: u32 = 3_000;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

#[test]
fn a_file_truncated_under_an_open_store_is_refused_by_a_new_open_and_sigbuses_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cut.kv");
    {
        let store = Store::open(&db).unwrap();
        let mut tx = store.begin_write().unwrap();
        for i in 0..KEYS {
            tx.put(key(i), [i as u8; 1000]).unwrap();
        }
        tx.commit().unwrap();
        store.close().unwrap();
    }
    let full = std::fs::metadata(&db).unwrap().len();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "reader_child", "--nocapture"])
        .env("MAPKV_DB", &db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut hear = |want: &str| loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child ended before {want:?}"
        );
        if let Some(rest) = line.trim().strip_prefix("@@ ") {
            assert!(rest.starts_with(want), "expected {want:?}, got {rest:?}");
            return rest.to_string();
        }
    };
    hear("ready");

    // Another program cuts the file to 1 MiB: the log's first extent
    // survives, the rest and the index table do not.
    let cut = 1 << 20;
    assert!(full > 2 * cut, "the store is {full} bytes");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(cut)
        .unwrap();

    // A new open refuses the file, saying what is wrong with it.
    match Options::new().create(false).read_only(true).open(&db) {
        Err(e @ Error::Corrupted { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("cut.kv"), "{msg}");
            println!("a new open: {msg}");
        }
        Err(e) => panic!("a new open failed, but not as corrupt: {e}"),
        Ok(_) => panic!("a store cut to 1 MiB opened"),
    }

    // The open handle: its next snapshot begins (the state still says the
    // old length, and nothing on that path asks the file); reading the
    // cut-off part is SIGBUS.
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let began = hear("began");
    println!("the open handle: {began}");
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "expected the reader to die of SIGBUS on the cut-off pages, got {status}"
    );
}

/// The child: opens the store, holds a snapshot, waits for the cut, then
/// begins another and reads every key.
#[test]
#[ignore = "run by the test above as a child process"]
fn reader_child() {
    let db = std::env::var("MAPKV_DB").expect("run as a child");
    let store = Options::new().read_only(true).open(&db).unwrap();
    let held = store.begin_read().unwrap();
    assert_eq!(held.len(), u64::from(KEYS));
    println!("@@ ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let snap = store.begin_read();
    println!(
        "@@ began {:?}",
        snap.as_ref().map(|s| s.seq()).map_err(|e| e.to_string())
    );
    for i in 0..KEYS {
        let _ = std::hint::black_box(held.get(key(i)));
    }
    println!("@@ survived");
}

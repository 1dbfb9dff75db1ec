//! kvctl as a user runs it: the real binary, its output and exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kvctl(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

#[test]
fn put_get_del_stats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.kv");
    assert_eq!(code(&kvctl(&db, &["init"])), 0);
    assert_eq!(code(&kvctl(&db, &["put", "greeting", "hello"])), 0);
    let got = kvctl(&db, &["get", "greeting"]);
    assert_eq!((code(&got), got.stdout.as_slice()), (0, &b"hello"[..]));

    // A value from standard input, bytes kept exactly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--db")
        .arg(&db)
        .args(["put", "bin", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\x00\xff\nraw")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(kvctl(&db, &["get", "bin"]).stdout, b"\x00\xff\nraw");

    let del = kvctl(&db, &["del", "greeting", "missing"]);
    assert_eq!(
        (code(&del), String::from_utf8_lossy(&del.stdout).trim()),
        (0, "1")
    );
    let gone = kvctl(&db, &["get", "greeting"]);
    assert_eq!(code(&gone), 1);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("key not found: greeting"));
    assert_eq!(code(&kvctl(&db, &["del", "greeting"])), 1);

    let stats = kvctl(&db, &["stats"]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("keys            1"), "{text}");
    assert_eq!(code(&kvctl(&db, &["verify"])), 0);
    // MAPKV_DB works instead of --db.
    let env = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .env("MAPKV_DB", &db)
        .args(["get", "bin"])
        .output()
        .unwrap();
    assert_eq!(env.stdout, b"\x00\xff\nraw");
}

#[test]
fn errors_are_one_line_with_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // No store given: usage.
    let o = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["get", "k"])
        .env_remove("MAPKV_DB")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    // Bad flag: usage.
    assert_eq!(
        code(&kvctl(&dir.path().join("x.kv"), &["get", "--bogus"])),
        2
    );
    // Not a store: corrupt (4), message names the file and the reason.
    let text = dir.path().join("text.kv");
    std::fs::write(&text, "not a store\n".repeat(10_000)).unwrap();
    let o = kvctl(&text, &["get", "k"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 4, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kvctl: ") && err.contains("text.kv") && err.contains("not a mapkv store"),
        "{err}"
    );
    // Missing store: no store is created by reading commands.
    let missing = dir.path().join("missing.kv");
    assert_eq!(code(&kvctl(&missing, &["get", "k"])), 5);
    assert!(!missing.exists());
}

#[test]
fn no_wait_reports_a_locked_store_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.kv");
    let store = mapkv::Store::open(&db).unwrap();
    let tx = store.begin_write().unwrap();
    let o = kvctl(&db, &["--no-wait", "put", "k", "v"]);
    assert_eq!(code(&o), 3, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another writer"));
    drop(tx);
    assert_eq!(code(&kvctl(&db, &["--no-wait", "put", "k", "v"])), 0);
    assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
}

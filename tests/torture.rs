//! Kill torture with real processes and a real file: a writer child (this
//! test binary re-executed) is SIGKILLed at random moments, many times;
//! after each kill the reopened store is exactly a prefix of the child's
//! transactions, at least up to the last one it acknowledged.

use std::process::Command;
use std::time::Duration;

use mapkv::torture;

/// Not a test on its own: the child side, run by `writer_killed_at_random_moments`.
#[test]
#[ignore = "run by the other test as a child process"]
fn torture_child() {
    if let Some(r) = torture::child_from_env() {
        r.unwrap();
    }
}

#[test]
fn writer_killed_at_random_moments_leaves_a_prefix_of_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("torture.kv");
    let report = torture::run(&db, 40, Duration::from_millis(150), 2026, |db, seed| {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "--ignored",
            "--exact",
            "torture_child",
            "--test-threads=1",
            "--nocapture",
        ]);
        torture::child_command(cmd, db, seed).spawn()
    })
    .unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.rounds, 40);
    // The children got real work done before dying.
    assert!(report.acknowledged > 200, "{report:?}");
    assert!(
        report.compactions >= 5,
        "kills never met compaction: {report:?}"
    );
    let store = mapkv::Store::open(&db).unwrap();
    assert!(store.verify().unwrap().is_ok());
    assert!(
        store.stats().unwrap().file_bytes > 8 << 20,
        "the file never grew"
    );
}

//! Fault injection on the real backend: `fallocate` (ENOSPC), `ftruncate`,
//! the log's `pwrite` and `msync` (EIO) fail where the backend calls the
//! system. The commit fails with an error naming the operation, the store
//! stays at its last commit, and after a failed `pwrite` or `msync` the
//! handle refuses writes until the store is reopened.

use mapkv::faults::Faults;
use mapkv::{Error, Options, Store};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn open(dir: &tempfile::TempDir, faults: &Faults) -> Store {
    Options::new()
        .faults(faults.clone())
        .open(dir.path().join("faults.kv"))
        .unwrap()
}

/// A value too large for the space a new store has, so the commit grows the file.
fn big() -> Vec<u8> {
    vec![0xab; 3 << 20]
}

#[test]
fn enospc_from_fallocate_fails_the_commit_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(&dir, &faults);
    store.put(b"keep", b"1").unwrap();
    let before = store.stats().unwrap();
    faults.fail_fallocate(1);
    let err = store.put(b"big", big()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    assert!(err.to_string().contains("grow the file"), "{err}");
    assert_eq!(store.stats().unwrap(), before);
    assert_eq!(store.get(b"big").unwrap(), None);
    // Not poisoned: nothing reached the disk, so the same write can succeed.
    store.put(b"big", big()).unwrap();
    drop(store);
    let store = open(&dir, &faults);
    assert_eq!(store.get(b"big").unwrap().map(|v| v.len()), Some(3 << 20));
    assert_eq!(store.get(b"keep").unwrap(), Some(b"1".to_vec()));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_failed_ftruncate_fails_the_commit_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(&dir, &faults);
    store.put(b"keep", b"1").unwrap();
    faults.fail_ftruncate(1);
    let err = store.put(b"big", big()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert_eq!(store.get(b"big").unwrap(), None);
    assert_eq!(store.begin_read().unwrap().seq(), 1);
    store.put(b"big", big()).unwrap();
    drop(store);
    let store = open(&dir, &faults);
    assert_eq!(store.begin_read().unwrap().len(), 2);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_failed_msync_fails_the_commit_and_poisons_the_handle_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(&dir, &faults);
    store.put(b"k", b"old").unwrap();
    faults.fail_msync(1);
    let err = store.put(b"k", b"new").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert!(err.to_string().contains("flush"), "{err}");
    // The failed commit is not visible; further writes are refused even
    // though msync would work again (Linux reports a writeback error once).
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(
        store.put(b"k", b"again"),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
    drop(store);
    let store = open(&dir, &faults);
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    store.put(b"k", b"newer").unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(b"newer".to_vec()));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_failed_log_write_fails_the_transaction_and_poisons_the_handle() {
    // The second run of a large transaction fails to reach the file: the
    // put says so, the transaction cannot commit even if later writes
    // work, and the handle refuses writes until reopened.
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(&dir, &faults);
    store.put(b"k", b"old").unwrap();
    let mut tx = store.begin_write().unwrap();
    let mut failed = None;
    for i in 0..20_000u32 {
        if i == 100 {
            faults.fail_write(1);
        }
        if let Err(e) = tx.put(i.to_be_bytes(), [1; 100]) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("no put failed: the runs never reached the file");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert!(err.to_string().contains("write"), "{err}");
    tx.put(b"k", b"new").unwrap();
    assert!(matches!(tx.commit(), Err(Error::Poisoned { .. })));
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert!(matches!(
        store.put(b"k", b"again"),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    let store = open(&dir, &faults);
    assert_eq!(store.get(b"k").unwrap(), Some(b"old".to_vec()));
    assert_eq!(store.get(5u32.to_be_bytes()).unwrap(), None);
    store.put(b"k", b"newer").unwrap();
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_failed_msync_at_close_leaves_a_store_that_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(&dir, &faults);
    for i in 0..100u32 {
        store.put(i.to_le_bytes(), b"v").unwrap();
    }
    faults.fail_msync(1);
    assert!(store.close().is_err());
    let store = open(&dir, &faults);
    assert_eq!(store.begin_read().unwrap().len(), 100);
    assert!(store.verify().unwrap().is_ok());
}

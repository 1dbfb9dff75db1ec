//! The API's contract: limits, errors, read-only handles, transactions.

use mapkv::{Error, Options, ReadTxn, Snapshot, Store, MAX_KEY_LEN, MAX_VALUE_LEN};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("api.kv")).unwrap();
    (dir, s)
}

#[test]
fn keys_must_be_1_byte_to_64_kib() {
    let (_d, s) = store();
    assert!(matches!(s.put(b"", b"v"), Err(Error::EmptyKey)));
    assert!(matches!(s.get(b""), Err(Error::EmptyKey)));
    assert!(matches!(s.delete(b""), Err(Error::EmptyKey)));
    let longest = vec![b'k'; MAX_KEY_LEN];
    assert_eq!(MAX_KEY_LEN, 65536);
    s.put(&longest, b"fits").unwrap();
    assert_eq!(s.get(&longest).unwrap(), Some(b"fits".to_vec()));
    let too_long = vec![b'k'; MAX_KEY_LEN + 1];
    match s.put(&too_long, b"v") {
        Err(
            e @ Error::KeyTooLarge {
                len: 65537,
                max: 65536,
            },
        ) => {
            assert!(e.to_string().contains("65537"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    s.put(b"x", b"").unwrap();
    assert_eq!(s.get(b"x").unwrap(), Some(Vec::new()));
    drop(s);
}

#[test]
fn values_over_1_gib_are_refused_before_anything_is_written() {
    let (_d, s) = store();
    let before = s.stats().unwrap();
    let huge = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        s.put(b"k", &huge),
        Err(Error::ValueTooLarge { len, max }) if len == MAX_VALUE_LEN + 1 && max == MAX_VALUE_LEN
    ));
    assert_eq!(s.stats().unwrap(), before);
}

#[test]
fn a_read_only_handle_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.kv");
    Store::open(&path).unwrap().put(b"k", b"v").unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert!(matches!(ro.put(b"k", b"w"), Err(Error::ReadOnly { .. })));
    assert!(matches!(ro.begin_write(), Err(Error::ReadOnly { .. })));
    assert!(ro.verify().unwrap().is_ok());
    // While a read-write handle is open, the read-only one follows it.
    let rw = Store::open(&path).unwrap();
    let ro2 = Options::new().read_only(true).open(&path).unwrap();
    rw.put(b"k", b"newer").unwrap();
    assert_eq!(ro2.get(b"k").unwrap(), Some(b"newer".to_vec()));
}

#[test]
fn read_only_works_on_a_file_without_write_permission() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perm.kv");
    Store::open(&path).unwrap().put(b"k", b"v").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(ro.get(b"k").unwrap(), Some(b"v".to_vec()));
    // Root ignores permission bits; only check the refusal when it applies.
    // (As root, CI checks it in tests/multiprocess.rs's child run as
    // `nobody`.)
    if std::fs::OpenOptions::new().write(true).open(&path).is_err() {
        match Store::open(&path) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("perm.kv"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn try_begin_write_reports_a_writer_in_another_thread() {
    let (_d, s) = store();
    let tx = s.begin_write().unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| assert!(s.try_begin_write().unwrap().is_none()));
    });
    drop(tx);
    assert!(s.try_begin_write().unwrap().is_some());
}

#[test]
fn dropping_a_write_transaction_aborts_it() {
    let (_d, s) = store();
    s.put(b"a", b"1").unwrap();
    {
        let mut tx = s.begin_write().unwrap();
        tx.put(b"a", b"2").unwrap();
        tx.put(b"b", b"2").unwrap();
        assert!(tx.delete(b"a").unwrap());
        assert!(!tx.delete(b"a").unwrap());
        assert_eq!(tx.get(b"a").unwrap(), None);
    }
    assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.get(b"b").unwrap(), None);
    let seq = s.begin_read().unwrap().seq();
    // An empty commit changes nothing and returns the current seq.
    assert_eq!(s.begin_write().unwrap().commit().unwrap(), seq);
    assert!(!s.delete(b"never").unwrap());
    assert_eq!(s.begin_read().unwrap().seq(), seq);
}

#[test]
fn commit_returns_increasing_seqs_that_snapshots_report() {
    let (_d, s) = store();
    let mut last = s.begin_read().unwrap().seq();
    for i in 0..10u8 {
        let mut tx = s.begin_write().unwrap();
        tx.put([i], [i]).unwrap();
        let seq = tx.commit().unwrap();
        assert_eq!(seq, last + 1);
        assert_eq!(s.begin_read().unwrap().seq(), seq);
        last = seq;
    }
    let snap = s.begin_read().unwrap();
    assert_eq!(snap.len(), 10);
    assert!(!snap.is_empty());
    assert!(snap.contains_key([3]).unwrap());
    assert!(!snap.contains_key([30]).unwrap());
}

#[test]
fn stats_count_live_and_dead_bytes() {
    let (_d, s) = store();
    s.put(b"k", [1u8; 1000]).unwrap();
    let one = s.stats().unwrap();
    assert_eq!(one.keys, 1);
    assert_eq!(one.dead_bytes, 48); // the commit record
    s.put(b"k", [2u8; 1000]).unwrap();
    let two = s.stats().unwrap();
    assert_eq!(two.keys, 1);
    assert_eq!(two.live_bytes, one.live_bytes);
    assert!(two.dead_bytes >= one.live_bytes);
    assert!(s.delete(b"k").unwrap());
    let three = s.stats().unwrap();
    assert_eq!((three.keys, three.live_bytes), (0, 0));
}

#[test]
fn a_record_takes_its_header_key_and_value_padded_to_4_bytes() {
    // docs/FORMAT.md, "Log records": a 24-byte header, then the key and
    // the value, then zeros up to a multiple of 4.
    let (_d, s) = store();
    for (key_len, val_len, size) in [(16, 100, 140), (1, 2, 28), (3, 1, 28), (8, 0, 32)] {
        let before = s.stats().unwrap().live_bytes;
        s.put(vec![key_len as u8; key_len], vec![7u8; val_len])
            .unwrap();
        assert_eq!(
            s.stats().unwrap().live_bytes - before,
            size,
            "{key_len}+{val_len}"
        );
    }
}

#[test]
fn store_is_send_and_sync_and_a_busy_writer_is_an_error_on_request() {
    // Compile-time: what an embedder shares between threads. (`WriteTxn`
    // is neither: it holds the writer's mutex guard, released by the
    // thread that took it, and caches in `RefCell`s; its docs carry a
    // compile_fail example.)
    fn send_sync<T: Send + Sync>() {}
    fn owned<T: 'static + Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<ReadTxn<'_>>();
    send_sync::<mapkv::Iter<'_>>();
    owned::<Snapshot>();
    let (_d, s) = store();
    let tx = s.begin_write().unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| match s.try_write() {
            Err(e @ Error::WriterBusy { .. }) => {
                assert!(e.to_string().contains("write lock"), "{e}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        });
    });
    drop(tx);
    assert!(s.try_write().is_ok());
}

#[test]
fn a_transaction_reads_its_own_writes_whether_staged_or_written_out() {
    // A transaction keeps its newest records in memory and writes them to
    // the file in runs of up to 1 MiB (a larger record on its own).
    // Written out or not, it reads its own writes; an abort leaves
    // nothing; a commit keeps exactly the newest versions.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staged.kv");
    let s = Store::open(&path).unwrap();
    s.put(b"k0", b"committed").unwrap();
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let key = |i: u32| format!("k{i}").into_bytes();
    for commit in [false, true] {
        let mut tx = s.begin_write().unwrap();
        for i in 0..20_000u32 {
            tx.put(key(i), [i as u8; 100]).unwrap();
        }
        // ~2.6 MB: the first records were written out, the last are not.
        assert_eq!(tx.get(b"k0").unwrap(), Some(&[0u8; 100][..]));
        assert_eq!(tx.get(b"k19999").unwrap(), Some(&[19999u32 as u8; 100][..]));
        tx.put(b"k0", b"again").unwrap();
        assert!(tx.delete(b"k19998").unwrap());
        assert!(!tx.delete(b"k19998").unwrap());
        tx.put(b"big", &big).unwrap();
        tx.put(b"after", b"x").unwrap();
        assert_eq!(tx.get(b"big").unwrap(), Some(&big[..]));
        assert_eq!(tx.get(b"after").unwrap(), Some(&b"x"[..]));
        assert_eq!(tx.get(b"k0").unwrap(), Some(&b"again"[..]));
        assert_eq!(tx.get(b"k19998").unwrap(), None);
        if commit {
            tx.commit().unwrap();
        } else {
            tx.abort();
            assert_eq!(s.get(b"k0").unwrap(), Some(b"committed".to_vec()));
            assert_eq!(s.get(b"k5").unwrap(), None);
            assert_eq!(s.stats().unwrap().keys, 1);
        }
    }
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.get(b"k0").unwrap(), Some(b"again".to_vec()));
    assert_eq!(s.get(b"k19998").unwrap(), None);
    assert_eq!(s.get(b"k19997").unwrap(), Some(vec![19997u32 as u8; 100]));
    assert_eq!(s.get(b"big").unwrap(), Some(big));
    assert_eq!(s.get(b"after").unwrap(), Some(b"x".to_vec()));
    assert_eq!(s.stats().unwrap().keys, 20_001);
    assert!(s.verify().unwrap().is_ok());
}

#[test]
fn a_transaction_finds_its_keys_after_puts_in_key_order_and_out_of_it() {
    // Puts in ascending key order are not filed for lookup until a key
    // comes that is not above the greatest so far (or a lookup of one):
    // every key must be found then, also those put in order after an
    // earlier lookup filed the ones before them.
    let (_dir, s) = store();
    s.put(b"b", b"committed").unwrap();
    let key = |i: u32| format!("key{i:05}").into_bytes();
    let mut tx = s.begin_write().unwrap();
    for i in 0..100 {
        tx.put(key(i), b"first").unwrap();
    }
    // A lookup below the greatest key files keys 0..100.
    assert_eq!(tx.get(key(50)).unwrap(), Some(&b"first"[..]));
    assert_eq!(tx.get(b"b").unwrap(), Some(&b"committed"[..]));
    assert_eq!(tx.get(key(100)).unwrap(), None);
    for i in 100..199 {
        tx.put(key(i), b"first").unwrap();
    }
    // The greatest key twice in a row is not in order.
    tx.put(key(199), b"once").unwrap();
    tx.put(key(199), b"first").unwrap();
    // Keys put in order after that lookup are found too, as the greatest
    // and below it.
    assert_eq!(tx.get(key(199)).unwrap(), Some(&b"first"[..]));
    assert_eq!(tx.get(key(150)).unwrap(), Some(&b"first"[..]));
    // Out of order from here: rewriting a key replaces its record.
    for i in (0..200).step_by(3) {
        tx.put(key(i), b"second").unwrap();
    }
    assert!(tx.delete(key(151)).unwrap());
    assert!(!tx.delete(key(151)).unwrap());
    assert_eq!(tx.get(key(198)).unwrap(), Some(&b"second"[..]));
    assert_eq!(tx.get(key(199)).unwrap(), Some(&b"first"[..]));
    tx.commit().unwrap();
    for i in 0..200 {
        let want: Option<&[u8]> = match i {
            151 => None,
            i if i % 3 == 0 => Some(b"second"),
            _ => Some(b"first"),
        };
        assert_eq!(s.get(key(i)).unwrap().as_deref(), want, "key {i}");
    }
    assert_eq!(s.stats().unwrap().keys, 200);
    assert!(s.verify().unwrap().is_ok());
}

#[test]
fn a_snapshot_outlives_every_store_handle_and_crosses_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.kv");
    let store = Store::open(&path).unwrap();
    store.put(b"k", b"old").unwrap();
    let snap = store.snapshot().unwrap();
    let clone = store.clone();
    clone.put(b"k", b"new").unwrap();
    // Closing one clone while another and the snapshot live lets go of
    // that clone only: the others go on.
    store.close().unwrap();
    assert_eq!(clone.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    drop(clone);
    // No Store is left; the snapshot still holds the store and its state.
    let seq = snap.seq();
    let got = std::thread::spawn(move || {
        let v = snap.get(b"k").unwrap().map(<[u8]>::to_vec);
        (v, snap.iter().count(), snap.seq())
    })
    .join()
    .unwrap();
    assert_eq!(got, (Some(b"old".to_vec()), 1, seq));
    // The last of them closed the store cleanly: another handle may now
    // hold it alone, and sees the newest commit.
    let again = Options::new().open(&path).unwrap();
    assert_eq!(again.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    assert!(
        again.readers().unwrap().is_empty(),
        "the snapshot's reader slot was released"
    );
}

//! kvctl as a user runs it: the real binary, its output and exit codes.

mod common;

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
    assert!(text.contains("keys              1"), "{text}");
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
    // Missing store: reading and deleting create nothing, and say what
    // would; a first put creates it, as load does.
    let missing = dir.path().join("missing.kv");
    for args in [&["get", "k"][..], &["del", "k"], &["stats"], &["compact"]] {
        let o = kvctl(&missing, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 5, "{args:?}: {err}");
        assert!(err.contains("kvctl init"), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created the store");
    }
    assert_eq!(code(&kvctl(&missing, &["put", "k", "v"])), 0);
    let o = kvctl(&missing, &["get", "k"]);
    assert_eq!((code(&o), &o.stdout[..]), (0, &b"v"[..]));
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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn keys_scan_and_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("list.kv");
    {
        let store = mapkv::Store::open(&db).unwrap();
        let mut tx = store.begin_write().unwrap();
        for (k, v) in [
            (&b"user:2"[..], &b"bob"[..]),
            (b"user:1", b"ann"),
            (b"item:1", b"x"),
            (b"\x00\xffbin", b"a\tb\n"),
        ] {
            tx.put(k, v).unwrap();
        }
        tx.commit().unwrap();
    }
    // Sorted, filtered, limited; binary bytes escaped in text.
    assert_eq!(
        stdout(&kvctl(&db, &["keys"])),
        "\\x00\\xffbin\nitem:1\nuser:1\nuser:2\n"
    );
    assert_eq!(
        stdout(&kvctl(&db, &["keys", "--prefix", "user:", "--limit", "1"])),
        "user:1\n"
    );
    assert_eq!(
        stdout(&kvctl(&db, &["scan", "--prefix", "user:"])),
        "user:1\tann\nuser:2\tbob\n"
    );
    let lines = json_lines(&kvctl(&db, &["--json", "scan", "--limit", "1"]));
    assert_eq!(lines[0]["key_base64"], "AP9iaW4=");
    assert_eq!(lines[0]["value"], "a\tb\n");
    // --hex for input and output.
    assert_eq!(
        stdout(&kvctl(&db, &["--hex", "get", "00ff62696e"])),
        "6109620a\n"
    );
    assert_eq!(code(&kvctl(&db, &["--hex", "put", "0001", "ff"])), 0);
    let got = kvctl(&db, &["--base64", "get", "AAE="]);
    assert_eq!(stdout(&got), "/w==\n");
    let bad = kvctl(&db, &["--hex", "get", "zz"]);
    assert_eq!(code(&bad), 2);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key is not hex"));
    // --json get; --if-absent leaves an existing key alone.
    let j = json_lines(&kvctl(&db, &["--json", "get", "user:1"]));
    assert_eq!(
        (j[0]["key"].as_str(), j[0]["value"].as_str()),
        (Some("user:1"), Some("ann"))
    );
    let o = kvctl(&db, &["put", "--if-absent", "user:1", "zed"]);
    assert_eq!(code(&o), 1);
    assert_eq!(stdout(&kvctl(&db, &["get", "user:1"])), "ann");
    assert_eq!(
        code(&kvctl(&db, &["put", "--if-absent", "user:3", "cy"])),
        0
    );
    // Scripts' view of stats and verify.
    let s = &json_lines(&kvctl(&db, &["--json", "stats"]))[0];
    assert_eq!(s["keys"], 6);
    assert!(s["file_bytes"].as_u64().unwrap() >= s["live_bytes"].as_u64().unwrap());
    let v = &json_lines(&kvctl(&db, &["--json", "verify"]))[0];
    assert_eq!(
        (v["ok"].as_bool(), v["keys"].as_u64()),
        (Some(true), Some(6))
    );
    let del = json_lines(&kvctl(&db, &["--json", "del", "user:1", "nope"]));
    assert_eq!(del[0]["deleted"], 1);
}

/// Random binary keys and values survive `dump | load` in every format.
#[test]
fn dump_and_load_round_trip_arbitrary_bytes_in_every_format() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.kv");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut model = std::collections::BTreeMap::new();
    {
        let store = mapkv::Store::open(&src).unwrap();
        let mut tx = store.begin_write().unwrap();
        for _ in 0..300 {
            let k: Vec<u8> = (0..rng.gen_range(1..40)).map(|_| rng.gen()).collect();
            let v: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            tx.put(&k, &v).unwrap();
            model.insert(k, v);
        }
        for special in [&b"\\"[..], b"\n", b" ", b"\\5c", b"{\"key\":1}"] {
            tx.put(special, special).unwrap();
            model.insert(special.to_vec(), special.to_vec());
        }
        tx.commit().unwrap();
    }
    for (i, args) in [
        &["dump"][..],
        &["dump", "--format", "mdb"],
        &["dump", "--format", "mdb", "--print"],
    ]
    .iter()
    .enumerate()
    {
        let file = dir.path().join(format!("dump-{i}.txt"));
        let mut a = args.to_vec();
        let f = file.to_str().unwrap();
        a.extend(["--out", f]);
        assert_eq!(code(&kvctl(&src, &a)), 0);
        let dst = dir.path().join(format!("dst-{i}.kv"));
        let format = if args.contains(&"mdb") {
            "mdb"
        } else {
            "jsonl"
        };
        let o = kvctl(&dst, &["load", "--format", format, "--batch", "7", f]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let store = mapkv::Store::open(&dst).unwrap();
        let snap = store.begin_read().unwrap();
        let got: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = snap
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert!(got == model, "{args:?} lost or changed entries");
    }
}

/// Hand-written `mdb_dump` output (tests/data), in both of its forms, with
/// every kind of escape, loads to the same entries.
#[test]
fn mdb_dump_samples_load_in_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let want: Vec<(&[u8], &[u8])> = vec![
        (b"\x00\xff", b"\n"),
        (b"alpha", b"1"),
        (b"back\\slash", b"C:\\dir"),
        (b"caf\xc3\xa9", b"tab\there"),
        (b"key with spaces", b"~end~ \x7f"),
    ];
    for form in ["bytevalue", "print"] {
        let db = dir.path().join(format!("{form}.kv"));
        let sample = format!(
            "{}/tests/data/sample-{form}.mdb.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let o = kvctl(&db, &["load", "--format", "mdb", &sample]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let store = mapkv::Store::open(&db).unwrap();
        let snap = store.begin_read().unwrap();
        assert_eq!(snap.len(), want.len() as u64);
        for (k, v) in &want {
            assert_eq!(snap.get(k).unwrap(), Some(*v), "{form}: {k:?}");
        }
    }
}

#[test]
fn a_bad_dump_is_a_usage_error_naming_the_line_and_atomic_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.kv");
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\"}\n").unwrap();
    let f = input.to_str().unwrap();
    let o = kvctl(&db, &["load", "--atomic", f]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("line 2") && err.contains("no \"value\""),
        "{err}"
    );
    let store = mapkv::Store::open(&db).unwrap();
    assert_eq!(
        store.get(b"a").unwrap(),
        None,
        "--atomic committed part of a bad load"
    );
    drop(store);
    // Without --atomic the batches before the bad line are committed.
    let o = kvctl(&db, &["load", "--batch", "1", f]);
    assert_eq!(code(&o), 2);
    assert_eq!(
        mapkv::Store::open(&db).unwrap().get(b"a").unwrap(),
        Some(b"1".to_vec())
    );
    // A named LMDB database is refused, saying so.
    let named = dir.path().join("named.mdb");
    std::fs::write(
        &named,
        "VERSION=3\nformat=print\ndatabase=users\nHEADER=END\nDATA=END\n",
    )
    .unwrap();
    let o = kvctl(&db, &["load", "--format", "mdb", named.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("only LMDB's main (unnamed) database"));
}

#[test]
fn watch_prints_changes_committed_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("watch.kv");
    let store = mapkv::Store::open(&db).unwrap();
    store.put(b"before", b"0").unwrap();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--db")
        .arg(&db)
        .args(["--json", "watch", "--prefix", "k", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Until watch has opened the store it cannot see commits; its reader
    // table entry is not a signal (it holds no snapshot while waiting), so
    // commit a few times until it has printed.
    let start = std::time::Instant::now();
    let out = loop {
        store.put(b"other", b"ignored").unwrap();
        // One commit, two changes under the prefix: watch sees both or
        // neither, and nothing of the commits around them.
        let mut tx = store.begin_write().unwrap();
        tx.put(b"k1", b"v1").unwrap();
        tx.delete(b"before").unwrap();
        tx.put(b"k2", b"x").unwrap();
        tx.put(b"k2", b"v2").unwrap();
        tx.commit().unwrap();
        store.put(b"before", b"again").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Ok(Some(_)) = watch.try_wait() {
            break watch.wait_with_output().unwrap();
        }
        assert!(start.elapsed().as_secs() < 30, "watch printed nothing");
    };
    assert!(out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["op"].as_str(), lines[0]["key"].as_str()),
        (Some("put"), Some("k1"))
    );
    assert_eq!(lines[0]["value"], "v1");
    assert_eq!(
        (lines[1]["op"].as_str(), lines[1]["key"].as_str()),
        (Some("put"), Some("k2"))
    );
    assert_eq!(
        lines[1]["value"], "v2",
        "a key is listed once, with its final value"
    );
    assert_eq!(lines[1]["seq"], lines[0]["seq"]);
}

#[test]
fn readers_lists_another_process_snapshot_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("readers.kv");
    let store = mapkv::Store::open(&db).unwrap();
    store.put(b"k", b"v").unwrap();
    let snap = store.begin_read().unwrap();
    let r = &json_lines(&kvctl(&db, &["--json", "readers", "--clear-stale"]))[0];
    assert_eq!(r["cleared"], 0);
    let list = r["readers"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["pid"], std::process::id());
    assert_eq!(list[0]["seq"], snap.seq());
    let text = stdout(&kvctl(&db, &["readers"]));
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    let bash = kvctl(&db, &["completions", "bash"]);
    assert_eq!(code(&bash), 0);
    assert!(stdout(&bash).contains("watch") && stdout(&bash).contains("--prefix"));
}

#[test]
fn torture_and_bench_run_on_scratch_stores() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.kv");
    let o = kvctl(
        &unused,
        &["--json", "torture", "--rounds", "4", "--seed", "9"],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let t = &json_lines(&o)[0];
    assert_eq!(
        (t["ok"].as_bool(), t["rounds"].as_u64()),
        (Some(true), Some(4))
    );
    assert!(t["acknowledged"].as_u64().unwrap() > 0, "{t}");
    let o = kvctl(
        &unused,
        &[
            "--json",
            "bench",
            "--keys",
            "3000",
            "--commits",
            "20",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let b = &json_lines(&o)[0];
    for field in ["fill_puts_per_sec", "read_gets_per_sec", "commit_per_sec"] {
        assert!(b[field].as_f64().unwrap() > 0.0, "{field}: {b}");
    }
    assert!(b["commit_us"]["p99"].as_f64().unwrap() >= b["commit_us"]["p50"].as_f64().unwrap());
    // Neither touched --db, and the scratch directories are gone.
    assert!(!unused.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn inspect_decodes_structures_even_when_the_store_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inspect.kv");
    {
        let store = mapkv::Store::open(&db).unwrap();
        store.put(b"hello", b"world").unwrap();
        store.close().unwrap();
    }
    let meta = kvctl(&db, &["inspect", "0"]);
    assert_eq!(code(&meta), 0);
    let text = stdout(&meta);
    assert!(
        text.contains("meta page") && text.contains("(ok)"),
        "{text}"
    );
    let rec = &json_lines(&kvctl(&db, &["--json", "inspect", "524288"]))[0];
    assert_eq!(rec["what"], "log record: put");
    assert_eq!(rec["fields"]["key"], "hello");
    assert_eq!(rec["fields"]["value"], "world");
    // That record takes 34 bytes, padded to 36: the commit record after it
    // starts 4 bytes past a multiple of 8, and an offset inside its first
    // word finds it.
    let commit = &json_lines(&kvctl(&db, &["--json", "inspect", "524326"]))[0];
    assert_eq!(commit["what"], "log record: commit");
    assert_eq!(commit["fields"]["txn_start"], "524288");
    // Damage the value and both meta pages: the store no longer opens,
    // inspect still reads, and says the record is damaged.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[524288 + 24 + 5] ^= 0x20; // "world" -> "World"
    bytes[10] ^= 1;
    bytes[4096 + 10] ^= 1;
    std::fs::write(&db, &bytes).unwrap();
    assert_eq!(code(&kvctl(&db, &["get", "hello"])), 4);
    let o = kvctl(&db, &["inspect", "0x80000"]);
    assert_eq!(code(&o), 1);
    let text = stdout(&o);
    assert!(
        text.contains("DAMAGED") && text.contains("checksum mismatch") && text.contains("World"),
        "{text}"
    );
    assert_eq!(code(&kvctl(&db, &["inspect", "4096"])), 1);
}

#[test]
fn salvage_copies_a_store_that_no_longer_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.kv");
    {
        let store = mapkv::Store::open(&db).unwrap();
        store.put(b"a", b"1").unwrap();
        store.put(b"b", b"2").unwrap();
        store.close().unwrap();
    }
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[0] ^= 0xff;
    bytes[4096] ^= 0xff;
    std::fs::write(&db, &bytes).unwrap();
    assert_eq!(code(&kvctl(&db, &["get", "a"])), 4);
    let out = dir.path().join("rescued.kv");
    let o = kvctl(&db, &["--json", "salvage", "-o", out.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let r = &json_lines(&o)[0];
    assert_eq!(
        (r["keys"].as_u64(), r["newest_seq"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(stdout(&kvctl(&out, &["scan"])), "a\t1\nb\t2\n");
    // The source is left as it was.
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

#[test]
fn compact_and_backup_reclaim_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("space.kv");
    {
        let store = mapkv::Options::new().auto_compact(false).open(&db).unwrap();
        for round in 0..6u8 {
            let mut tx = store.begin_write().unwrap();
            for k in 0..3_000u32 {
                tx.put(k.to_le_bytes(), [round; 300]).unwrap();
            }
            tx.commit().unwrap();
        }
        store.close().unwrap();
    }
    let o = kvctl(&db, &["--json", "compact"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let c = &json_lines(&o)[0];
    let (before, after) = (
        c["bytes_before"].as_u64().unwrap(),
        c["bytes_after"].as_u64().unwrap(),
    );
    assert!(after < before / 2, "{c}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), after);
    let s = &json_lines(&kvctl(&db, &["--json", "stats"]))[0];
    assert_eq!(s["file_bytes"].as_u64(), Some(after));
    assert!(s["last_compaction"].as_u64().is_some(), "{s}");
    assert!(s["reclaimed_total"].as_u64().unwrap() > 0, "{s}");
    assert!(stdout(&kvctl(&db, &["stats"])).contains("last compaction   commit"));

    let dest = dir.path().join("copy.kv");
    let o = kvctl(&db, &["--json", "backup", dest.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_lines(&o)[0]["keys"], 3_000);
    let copy = mapkv::Store::open(&dest).unwrap();
    assert_eq!(copy.get(7u32.to_le_bytes()).unwrap(), Some(vec![5u8; 300]));
    drop(copy);
    // The destination exists now: refused, with a one-line error.
    let again = kvctl(&db, &["backup", dest.to_str().unwrap()]);
    assert_ne!(code(&again), 0);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.starts_with("kvctl: ") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(code(&kvctl(&db, &["verify"])), 0);
}

/// Everything a dry run must leave as it was.
fn file_image(db: &Path) -> (Vec<u8>, std::time::SystemTime) {
    let meta = std::fs::metadata(db).unwrap();
    (std::fs::read(db).unwrap(), meta.modified().unwrap())
}

#[test]
fn dry_runs_report_what_would_change_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dry.kv");
    assert_eq!(code(&kvctl(&db, &["put", "a", "1"])), 0);
    assert_eq!(code(&kvctl(&db, &["put", "b", "2"])), 0);
    // 8 MB in 4,000 values, then all but 50 deleted: dead space to compact.
    let fill = dir.path().join("fill.jsonl");
    let lines: String = (0..4000)
        .map(|i| {
            format!(
                "{{\"key\":\"big{i}\",\"value\":\"{}\"}}\n",
                "x".repeat(2000)
            )
        })
        .collect();
    std::fs::write(&fill, lines).unwrap();
    assert_eq!(code(&kvctl(&db, &["load", fill.to_str().unwrap()])), 0);
    let doomed: Vec<String> = (0..3950).map(|i| format!("big{i}")).collect();
    let mut args = vec!["del"];
    args.extend(doomed.iter().map(String::as_str));
    assert_eq!(code(&kvctl(&db, &args)), 0);
    let before = file_image(&db);
    let json = |o: &Output| -> serde_json::Value {
        assert_eq!(code(o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // put: a change, then an addition.
    let v = json(&kvctl(&db, &["--dry-run", "--json", "put", "a", "9"]));
    assert_eq!(
        (v["changed"].as_u64(), v["added"].as_u64()),
        (Some(1), Some(0))
    );
    let v = json(&kvctl(&db, &["--dry-run", "--json", "put", "new", "9"]));
    assert_eq!(
        (v["added"].as_u64(), v["keys_after"].as_u64()),
        (Some(1), Some(53))
    );
    // del: one there, one not.
    let v = json(&kvctl(&db, &["--dry-run", "--json", "del", "b", "nope"]));
    assert_eq!(
        (v["deleted"].as_u64(), v["absent"].as_u64()),
        (Some(1), Some(1))
    );
    // load: added, changed, unchanged.
    let dump = dir.path().join("in.jsonl");
    std::fs::write(
        &dump,
        "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"two\"}\n{\"key\":\"c\",\"value\":\"3\"}\n",
    )
    .unwrap();
    let v = json(&kvctl(
        &db,
        &["--dry-run", "--json", "load", dump.to_str().unwrap()],
    ));
    assert_eq!(
        (
            v["added"].as_u64(),
            v["changed"].as_u64(),
            v["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{v}"
    );
    // compact: the file would shrink.
    let v = json(&kvctl(&db, &["--dry-run", "--json", "compact"]));
    let (b, a) = (
        v["bytes_before"].as_u64().unwrap(),
        v["bytes_after"].as_u64().unwrap(),
    );
    assert!(
        a < b,
        "a dry compaction of a store with dead space: {b} -> {a}"
    );
    assert_eq!(v["dry_run"], true);
    // Text output says it is a dry run.
    let o = kvctl(&db, &["--dry-run", "put", "a", "9"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("dry run, nothing written"));

    assert!(file_image(&db) == before, "a dry run wrote the store");
    let got = kvctl(&db, &["get", "a"]);
    assert_eq!(got.stdout, b"1");
    // And where a dry run means nothing, it is refused.
    assert_eq!(code(&kvctl(&db, &["--dry-run", "get", "a"])), 2);
}

#[test]
fn shm_works_wherever_db_does() {
    let shm_name = common::shm::ShmName::new("kvctl");
    let name = shm_name.0.clone();
    let shm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(["--shm", &name])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(code(&shm(&["get", "k"])), 5, "no store yet");
    assert_eq!(code(&shm(&["put", "k", "v"])), 0);
    assert_eq!(shm(&["get", "k"]).stdout, b"v");
    let stats = shm(&["--json", "stats"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["keys"], 1);
    assert_eq!(code(&shm(&["verify"])), 0);
    // A dry run on a shared-memory store leaves it as it was.
    assert_eq!(code(&shm(&["--dry-run", "del", "k"])), 0);
    assert_eq!(shm(&["get", "k"]).stdout, b"v");
    // The library sees the same store.
    let store = mapkv::Store::open_shm(&name).unwrap();
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // --db and --shm together make no sense.
    let both = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--shm", &name, "--db", "/tmp/x.kv", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(code(&both), 2);
}

//! Files that are not stores, or not stores this build can read, are
//! rejected with an error that says what is wrong — never a panic.

use std::fs;

use mapkv::{Error, Options, Store};
use rand::{RngCore, SeedableRng};

fn open(bytes: &[u8]) -> mapkv::Result<Store> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.kv");
    fs::write(&path, bytes).unwrap();
    let r = Options::new().create(false).open(&path);
    // The error names the file.
    if let Err(e) = &r {
        assert!(e.to_string().contains("bad.kv"), "{e}");
    }
    r
}

#[test]
fn an_empty_file_is_not_a_store_unless_created() {
    match open(b"") {
        Err(Error::NotAStore { reason, .. }) => assert!(reason.contains("empty"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // With create (the default) an empty file becomes a store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.kv");
    fs::write(&path, b"").unwrap();
    let s = Store::open(&path).unwrap();
    s.put(b"k", b"v").unwrap();
}

#[test]
fn a_one_byte_file_is_too_short() {
    match open(b"x") {
        Err(Error::NotAStore { reason, .. }) => assert!(reason.contains("shorter"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn random_bytes_are_not_a_store() {
    let mut bytes = vec![0u8; 1 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut bytes);
    match open(&bytes) {
        Err(Error::NotAStore { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_text_file_is_not_a_store() {
    let text = "hello, this is a text file\n".repeat(5000);
    assert!(matches!(
        open(text.as_bytes()),
        Err(Error::NotAStore { .. })
    ));
}

#[test]
fn a_zeroed_large_file_is_not_silently_reinitialised() {
    // Only a file exactly as an interrupted creation leaves it (small and
    // all zero) is created again; a large zero file may be a damaged store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.kv");
    fs::write(&path, vec![0u8; 8 << 20]).unwrap();
    assert!(matches!(Store::open(&path), Err(Error::NotAStore { .. })));
    assert_eq!(fs::metadata(&path).unwrap().len(), 8 << 20);
}

#[test]
fn a_store_from_a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.kv");
    Store::open(&path).unwrap().put(b"k", b"v").unwrap();
    let mut bytes = fs::read(&path).unwrap();
    // Bump the version field (offset 8) of both meta pages.
    for page in [0usize, 4096] {
        if bytes[page..page + 8] == *b"\x89MKV\r\n\x1a\n" {
            bytes[page + 8] = 99;
        }
    }
    fs::write(&path, &bytes).unwrap();
    match Store::open(&path) {
        Err(
            e @ Error::UnsupportedVersion {
                found: 99,
                supported: mapkv::FORMAT_VERSION,
                ..
            },
        ) => {
            assert!(e.to_string().contains("version 99"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Read-only too.
    assert!(matches!(
        Options::new().read_only(true).open(&path),
        Err(Error::UnsupportedVersion { .. })
    ));
}

#[test]
fn a_missing_file_without_create_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.kv");
    match Options::new().create(false).open(&path) {
        Err(e @ Error::Io { .. }) => {
            assert!(e.to_string().contains("missing.kv"), "{e}");
            assert_eq!(e.raw_os_error(), Some(libc_enoent()));
        }
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());
}

fn libc_enoent() -> i32 {
    std::io::Error::from(std::io::ErrorKind::NotFound)
        .raw_os_error()
        .unwrap_or(2)
}

//! Store files as bytes: arbitrary or damaged images must open or fail
//! cleanly, and never invent values.

use super::drive::drive;
use super::{fresh_disk, key_of, History, Op, KEYS};
use crate::sim::SimDisk;
use crate::{Error, Options};
use std::collections::BTreeMap;

/// Treats `bytes` as a store file: opening, verifying, reading every key,
/// iterating, listing changes and writing must each return `Ok` or an
/// `Err` — never panic — and a put that committed must read back as
/// written (it panics if not, so the fuzzer reports it).
/// Returns the error that stopped it, if any (for statistics).
pub fn open_file(bytes: &[u8]) -> Option<Error> {
    open_checked(bytes, None)
}

/// [`open_file`]; with `committed`, every value a get or the iteration
/// reads back must be one that some commit gave its key (it panics if
/// not): damage may lose values, never invent them.
fn open_checked(
    bytes: &[u8],
    committed: Option<&BTreeMap<Vec<u8>, Vec<Vec<u8>>>>,
) -> Option<Error> {
    let disk = SimDisk::from_image(bytes, (bytes.len() as u64).max(1 << 20) * 4);
    let store = match Options::new().create(false).open_sim(&disk) {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    let _ = store.verify();
    let _ = store.stats();
    let was_committed = |k: &[u8], v: &[u8]| {
        if let Some(c) = committed {
            let ok = c.get(k).is_some_and(|vs| vs.iter().any(|x| x == v));
            assert!(
                ok,
                "a damaged store read back a value no commit gave key {:?} ({} bytes)",
                String::from_utf8_lossy(&k[..k.len().min(40)]),
                v.len()
            );
        }
    };
    if let Ok(snap) = store.begin_read() {
        for k in 0..KEYS {
            if let Ok(Some(v)) = snap.get(key_of(k)) {
                was_committed(&key_of(k), v);
            }
        }
        for (k, v) in snap.iter().take(10_000).flatten() {
            was_committed(k, v);
        }
        if let Ok(changes) = snap.changes_since(snap.seq().saturating_sub(20)) {
            for item in changes.take(10_000) {
                let _ = item;
            }
        }
    }
    if let Err(e) = store.put(b"fuzz", b"value") {
        return Some(e);
    }
    // A put that committed reads back as itself, or the read says what is
    // damaged: never another value, never absent.
    match store.get(b"fuzz") {
        Ok(Some(v)) if v == b"value" => {}
        Ok(other) => panic!("a committed put reads back as {other:?}"),
        Err(e) => return Some(e),
    }
    match store.delete(b"fuzz") {
        Ok(true) => {}
        Ok(false) => panic!("a committed put was not there to delete"),
        Err(e) => return Some(e),
    }
    None
}

/// A real store built by `ops`, then damaged: each `(offset, xor)` flips
/// bits at `offset % len`, and `truncate` cuts the file to
/// `truncate % len` bytes. Then as [`open_file`], and every value read
/// back must be one that a commit of `ops` gave its key. This reaches what raw
/// bytes rarely do: recovery, `verify` and probing over a store that is
/// almost right.
pub fn damaged_store(
    ops: &[Op],
    hash_seed: u64,
    flips: &[(u32, u8)],
    truncate: Option<u32>,
) -> Option<Error> {
    let disk = fresh_disk(hash_seed);
    let mut history = History::new();
    // Build it; a run that fails here is a bug the other targets report.
    drive(ops, &disk, &mut history, false, |_, _, _| {}).ok()?;
    let mut image = disk.crash_point().live;
    let len = image.len();
    if len == 0 {
        return open_file(&image); // no operation created the store
    }
    for &(off, xor) in flips {
        image[off as usize % len] ^= xor;
    }
    if let Some(t) = truncate {
        image.truncate(t as usize % len);
    }
    let mut committed: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for state in &history.states {
        for (k, v) in state {
            let vs = committed.entry(k.clone()).or_default();
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    open_checked(&image, Some(&committed))
}

//! Hand-made hostile files: index slots and next records that name bytes
//! outside the log, where a well-formed record was planted. Each must be
//! refused, and the planted bytes never read as data: the fence of the
//! fixed pages, the fence of the index tables, and the extent rules of
//! `changes_since` each have a test here that fails without them.

use crate::format::*;
use crate::log;
use crate::options::Options;
use crate::sim::SimDisk;
use crate::store::Store;
use crate::Error;

const CAP: u64 = 64 << 20;
const EVIL: &[u8] = b"planted";

/// The image of a store built by `build` on a simulated disk and closed
/// cleanly (so its index is trusted on open, as after any clean close).
fn image_of(build: impl FnOnce(&Store)) -> Vec<u8> {
    let disk = SimDisk::new(CAP);
    let store = Options::new()
        .auto_compact(false)
        .open_sim(&disk)
        .expect("create");
    build(&store);
    store.close().expect("close");
    disk.crash_point().live
}

fn open(image: &[u8]) -> Store {
    let disk = SimDisk::from_image(image, CAP);
    Options::new()
        .create(false)
        .open_sim(&disk)
        .expect("a store whose meta pages are intact opens")
}

fn newest_meta(image: &[u8]) -> Meta {
    META_OFFSETS
        .iter()
        .map(|&o| bytemuck::pod_read_unaligned::<Meta>(&image[o as usize..][..META_SIZE]))
        .filter(|m| m.magic == MAGIC)
        .max_by_key(|m| m.generation.get())
        .expect("a meta page")
}

/// The bytes of a well-formed record (CRC right).
fn record(kind: u8, seq: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let h = log::unsealed_header(kind, 0, seq, 0, key, value);
    let mut buf = Vec::new();
    log::encode_record(&mut buf, &h, key, value);
    let crc = record_crc_contiguous(&buf[..HEADER_SIZE + key.len() + value.len()]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn plant(image: &mut [u8], at: u64, bytes: &[u8]) {
    image[at as usize..][..bytes.len()].copy_from_slice(bytes);
}

fn word(image: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(image[at as usize..][..8].try_into().unwrap())
}

/// The index slot (offset in the file, and number) that names `key`.
fn slot_of(image: &[u8], meta: &Meta, key: &[u8]) -> (u64, u64) {
    let hash = hash_key(meta.hash_seed.get(), key);
    let table = meta.index_offset.get();
    (0..1u64 << meta.index_log2.get())
        .map(|i| (table + 8 * i, i))
        .find(|&(s, _)| {
            let v = word(image, s);
            v != SLOT_EMPTY && slot_matches(v, hash)
        })
        .expect("the key's slot")
}

/// A store holding `k`, whose slot now names a put of `k` = [`EVIL`]
/// planted at `at` (`None`: in the index table, away from `k`'s slot).
fn repointed(at: Option<u64>) -> Vec<u8> {
    let mut image = image_of(|s| s.put(b"k", b"good").unwrap());
    let meta = newest_meta(&image);
    let (slot, i) = slot_of(&image, &meta, b"k");
    let half = (8u64 << meta.index_log2.get()) / 2;
    let at = at.unwrap_or_else(|| {
        // The half of the table without `k`'s slot: the planted bytes
        // read as slots there, never on `k`'s probe.
        meta.index_offset.get() + if 8 * i < half { half } else { 0 }
    });
    plant(
        &mut image,
        at,
        &record(KIND_PUT, meta.seq.get(), b"k", EVIL),
    );
    let hash = hash_key(meta.hash_seed.get(), b"k");
    image[slot as usize..][..8].copy_from_slice(&slot_encode(at, hash).to_le_bytes());
    image
}

fn assert_refused(image: &[u8]) {
    let store = open(image);
    let snap = store.begin_read().unwrap();
    match snap.get(b"k") {
        Err(Error::Corrupted { .. }) => {}
        other => panic!("a slot naming bytes outside the log read as {other:?}"),
    }
    assert!(!store.verify().unwrap().is_ok());
}

#[test]
fn a_slot_naming_the_fixed_pages_is_refused() {
    // Page 120: below the data area, past the extent tables; zeros in a
    // real store, free to plant in.
    assert_refused(&repointed(Some(DATA_START - 8 * PAGE_SIZE)));
}

#[test]
fn a_slot_naming_the_index_table_is_refused() {
    assert_refused(&repointed(None));
}

#[test]
fn a_planted_record_in_the_log_area_is_read_so_the_tests_above_can_fail() {
    // The same plant inside the data area, past everything allocated: the
    // fence admits it and the record reads back. Without this, the tests
    // above could pass for a reason other than the fence.
    let image = image_of(|s| s.put(b"k", b"good").unwrap());
    let free = newest_meta(&image).alloc_end.get();
    let store = open(&repointed(Some(free)));
    assert_eq!(store.begin_read().unwrap().get(b"k").unwrap(), Some(EVIL));
}

/// A store whose last commit crosses from one extent to the next, with
/// that commit's next record pointed at `target` (its CRC redone), where a
/// put of `evil` and a commit record of the same seq were planted.
fn next_pointed_at(target: impl FnOnce(&Meta) -> u64) -> Vec<u8> {
    let big = vec![7u8; 200 << 10];
    let mut image = image_of(|s| {
        let mut tx = s.begin_write().unwrap();
        for i in 0..8u32 {
            tx.put(i.to_be_bytes(), &big).unwrap();
        }
        tx.commit().unwrap();
    });
    let meta = newest_meta(&image);
    let seq = meta.seq.get();
    // The first extent's records, in order, to its next record.
    let mut pos = DATA_START;
    let next = loop {
        let h: RecordHeader = bytemuck::pod_read_unaligned(&image[pos as usize..][..HEADER_SIZE]);
        let (key_len, _) = h.lengths().expect("a record");
        if h.kind == KIND_NEXT {
            assert_eq!(h.seq.get(), seq, "the commit crosses extents");
            break pos;
        }
        pos += record_size(key_len, h.val_len.get() as usize);
    };
    let at = target(&meta);
    let put = record(KIND_PUT, seq, b"evil", EVIL);
    let body = CommitBody {
        txn_start: Le64::new(DATA_START),
        n_records: Le64::new(1),
        chain_crc: Le32::new(0),
        ..bytemuck::Zeroable::zeroed()
    };
    let commit = record(KIND_COMMIT, seq, &[], bytemuck::bytes_of(&body));
    plant(&mut image, at, &put);
    plant(&mut image, at + put.len() as u64, &commit);
    let body = NextBody {
        offset: Le64::new(at),
        len: Le64::new(PAGE_SIZE),
    };
    plant(
        &mut image,
        next,
        &record(KIND_NEXT, seq, &[], bytemuck::bytes_of(&body)),
    );
    image
}

/// Whether listing the last commit's changes is refused; panics if it
/// lists the planted key.
fn changes_refused(image: &[u8]) -> bool {
    let store = open(image);
    let snap = store.begin_read().unwrap();
    let listed: Result<Vec<_>, _> = match snap.changes_since(snap.seq() - 1) {
        Ok(c) => c.map(|r| r.map(|(_, k, _)| k.to_vec())).collect(),
        Err(e) => Err(e),
    };
    match listed {
        Err(Error::Corrupted { .. }) => true,
        Err(e) => panic!("unexpected error {e}"),
        Ok(keys) => {
            assert!(!keys.iter().any(|k| k == b"evil"), "listed planted bytes");
            false
        }
    }
}

#[test]
fn changes_since_refuses_a_next_record_into_the_fixed_pages() {
    assert!(changes_refused(&next_pointed_at(
        |_| DATA_START - 8 * PAGE_SIZE
    )));
}

#[test]
fn changes_since_refuses_a_next_record_that_breaks_the_extent_rules() {
    // In the data area, past everything allocated (the fence admits it),
    // but not on a page boundary: no extent starts there.
    assert!(changes_refused(
        &next_pointed_at(|m| m.alloc_end.get() + 64)
    ));
}

#[test]
fn changes_since_follows_a_next_record_to_a_valid_extent() {
    // The control: the same plant on a page boundary in free space is a
    // valid-looking extent, and the planted key is listed. (So the two
    // tests above fail for the rule, not for the plant.)
    let image = next_pointed_at(|m| m.alloc_end.get());
    let store = open(&image);
    let snap = store.begin_read().unwrap();
    let keys: Vec<Vec<u8>> = snap
        .changes_since(snap.seq() - 1)
        .unwrap()
        .map(|r| r.unwrap().1.to_vec())
        .collect();
    assert!(keys.iter().any(|k| k == b"evil"), "{keys:?}");
}

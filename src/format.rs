//! The on-disk format, declared once: every struct that lives in the file,
//! its size, and the constants that place it. Pure code over byte slices —
//! no I/O, no `unsafe`. `docs/FORMAT.md` describes the same bytes in prose.
//!
//! All integers are little-endian and stored through the `Le*` wrappers, so
//! every struct here has alignment 1 and can be viewed from any offset of a
//! mapping with `bytemuck` without an alignment check failing.

use bytemuck::{Pod, Zeroable};

/// PNG-style magic: a high byte (catches 7-bit transfers), the name, CR LF
/// (catches line-ending conversion), SUB (stops `type` on DOS) and LF.
pub const MAGIC: [u8; 8] = *b"\x89MKV\r\n\x1a\n";
/// The format this code reads and writes. Bumped on any change to the layout
/// or to what replay does with it (docs/FORMAT.md, "Versioning").
pub const FORMAT_VERSION: u32 = 6;
/// Unit of alignment for meta pages, extents and index tables.
pub const PAGE_SIZE: u64 = 4096;
/// Hash function id stored in the meta page: xxh3-64 with the store's seed.
pub const HASH_XXH3: u32 = 1;
/// The two meta pages. Each is written whole in its own page, so a torn
/// write of one can never damage the other.
pub const META_OFFSETS: [u64; 2] = [0, PAGE_SIZE];
/// The live header: the published state shared by every process.
pub const LIVE_OFFSET: u64 = 2 * PAGE_SIZE;
/// The extent tables (see [`SpaceEntry`]): two working copies the writer
/// publishes with the live state, then two checkpoint copies named by the
/// meta pages. Each holds up to [`SPACE_ENTRIES`] entries.
pub const SPACE_WORKING: [u64; 2] = [16 * PAGE_SIZE, 32 * PAGE_SIZE];
pub const SPACE_CHECKPOINT: [u64; 2] = [48 * PAGE_SIZE, 64 * PAGE_SIZE];
pub const SPACE_ENTRIES: usize = 2048;
/// First byte of the data area: log extents and index tables.
pub const DATA_START: u64 = 128 * PAGE_SIZE;
/// Default size of a log extent; a record larger than this gets an extent of
/// its own, rounded up to a page.
pub const LOG_EXTENT: u64 = 1 << 20;
/// Index tables start with this many slots (one page).
pub const MIN_INDEX_LOG2: u32 = 9;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// Longest value, in bytes.
pub const MAX_VALUE_LEN: usize = 1 << 30;
/// Records start at multiples of this. Four, not eight: a record of a
/// 16-byte key and a 100-byte value is 140 bytes, which padding to 8 made
/// 144 (3% of the log). Every header field is a byte array, so nothing is
/// read with a wider alignment than 1.
pub const RECORD_ALIGN: u64 = 4;
/// Largest file offset a slot or a record's `prev` can name: slots keep
/// `offset / RECORD_ALIGN` in 40 bits.
pub const MAX_FILE_LEN: u64 = 1 << 42;

macro_rules! le_int {
    ($name:ident, $int:ty, $n:expr) => {
        /// A little-endian integer with alignment 1.
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
        pub struct $name([u8; $n]);
        impl $name {
            pub fn new(v: $int) -> Self {
                Self(v.to_le_bytes())
            }
            pub fn get(self) -> $int {
                <$int>::from_le_bytes(self.0)
            }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.get().fmt(f)
            }
        }
    };
}
le_int!(Le16, u16, 2);
le_int!(Le32, u32, 4);
le_int!(Le64, u64, 8);

/// A 48-bit little-endian integer (sequence numbers and `prev` offsets).
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable, Debug)]
pub struct Le48([u8; 6]);
impl Le48 {
    pub const MAX: u64 = (1 << 48) - 1;
    pub fn new(v: u64) -> Self {
        debug_assert!(v <= Self::MAX);
        let b = v.to_le_bytes();
        Self([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    pub fn get(self) -> u64 {
        let b = self.0;
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], 0, 0])
    }
}

/// Meta flag: the store was closed cleanly, so the index on disk is exactly
/// the checkpointed one and no slot can point at a lost record.
pub const META_CLEAN: u32 = 1;

/// A meta page: the last checkpoint. Two copies, at [`META_OFFSETS`]; open
/// picks the valid one with the highest `generation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Meta {
    pub magic: [u8; 8],
    pub version: Le32,
    pub page_size: Le32,
    pub hash_id: Le32,
    pub flags: Le32,
    pub hash_seed: Le64,
    /// Incremented by every meta write; the higher valid copy wins.
    pub generation: Le64,
    /// Last commit included in the checkpoint.
    pub seq: Le64,
    /// Log position where the record after commit `seq` goes.
    pub tail: Le64,
    /// End of the extent that holds `tail`.
    pub tail_end: Le64,
    /// First byte never handed out by the allocator.
    pub alloc_end: Le64,
    /// Offset of the first log extent (the start of a full replay).
    pub log_first: Le64,
    pub index_offset: Le64,
    pub index_log2: Le32,
    pub _pad0: Le32,
    /// Non-empty slots in the index (for the load factor).
    pub index_used: Le64,
    pub key_count: Le64,
    /// Bytes of records that are the newest version of a live key.
    pub live_bytes: Le64,
    /// Bytes of all committed records ever appended (live + dead).
    pub log_bytes: Le64,
    /// While the index moves to a new table: the old table (0 if none)
    /// and the next of its slots to move.
    pub old_index_offset: Le64,
    pub old_index_log2: Le32,
    pub _pad1: Le32,
    pub migrate_next: Le64,
    /// The checkpoint's extent table: one of [`SPACE_CHECKPOINT`], its
    /// entry count and the CRC32 of its `32 * space_count` bytes.
    pub space_at: Le64,
    pub space_count: Le32,
    pub space_crc: Le32,
    /// Commits up to this one may have records that were reclaimed: the
    /// log holds the changes of every later commit.
    pub history_seq: Le64,
    /// Keys with a value still only in the old table (an upper bound).
    pub migrate_left: Le64,
    /// The last commit that retired an extent; bytes retired and copied
    /// by compaction since the store was created.
    pub last_compact_seq: Le64,
    pub retired_total: Le64,
    pub moved_total: Le64,
    pub _reserved: [u8; 44],
    /// CRC32 of bytes `0..252`.
    pub crc: Le32,
}
pub const META_SIZE: usize = 256;
const _: () = assert!(std::mem::size_of::<Meta>() == META_SIZE);

impl Meta {
    pub fn compute_crc(&self) -> u32 {
        crc32fast::hash(&bytemuck::bytes_of(self)[..META_SIZE - 4])
    }
    pub fn seal(&mut self) {
        self.crc = Le32::new(self.compute_crc());
    }
    pub fn is_clean(&self) -> bool {
        self.flags.get() & META_CLEAN != 0
    }
}

/// What a meta page slot holds, classified in the order the checks run:
/// magic → version → sizes → checksum.
#[derive(Debug, Clone)]
pub enum MetaCheck {
    BadMagic,
    NewerVersion(u32),
    BadVersion(u32),
    BadParams(&'static str),
    BadChecksum,
    Ok(Box<Meta>),
}

pub fn check_meta(bytes: &[u8; META_SIZE]) -> MetaCheck {
    let meta: Meta = bytemuck::pod_read_unaligned(bytes);
    if meta.magic != MAGIC {
        return MetaCheck::BadMagic;
    }
    let v = meta.version.get();
    if v > FORMAT_VERSION {
        return MetaCheck::NewerVersion(v);
    }
    if v != FORMAT_VERSION {
        return MetaCheck::BadVersion(v);
    }
    if meta.crc.get() != meta.compute_crc() {
        return MetaCheck::BadChecksum;
    }
    if meta.page_size.get() as u64 != PAGE_SIZE {
        return MetaCheck::BadParams("page size is not 4096");
    }
    if meta.hash_id.get() != HASH_XXH3 {
        return MetaCheck::BadParams("unknown hash function id");
    }
    if !(MIN_INDEX_LOG2..=40).contains(&meta.index_log2.get()) {
        return MetaCheck::BadParams("index size out of range");
    }
    MetaCheck::Ok(Box::new(meta))
}

/// Record kinds in the log.
pub const KIND_PUT: u8 = 1;
pub const KIND_DELETE: u8 = 2;
/// Closes a transaction; its body is a [`CommitBody`].
pub const KIND_COMMIT: u8 = 3;
/// Ends an extent: the log continues at the extent named by its [`NextBody`].
pub const KIND_NEXT: u8 = 4;
/// Says its commit reclaims the extent named by its [`NextBody`]: no record
/// there is the newest version of its key any more (compaction copied them).
pub const KIND_RETIRE: u8 = 5;

/// Says its commit starts moving the index to a new table of `2^log2`
/// slots (its [`NextBody`] holds `log2` in `offset`, and in `len` 1 if the
/// move under way is first finished at once, else 0). Logged so that
/// replay starts every move at the very commit the original run did.
pub const KIND_INDEX: u8 = 6;

/// Says its commit forgets deleted keys: its body is the offsets (`u64`
/// each, at most [`MAX_FORGET`]) of delete records that the index names
/// as their key's newest version and that no snapshot can see past; each
/// such key's slot becomes [`SLOT_FORGOTTEN`], so compaction need not copy
/// the delete.
pub const KIND_FORGET: u8 = 7;
/// The most offsets one forget record holds.
pub const MAX_FORGET: usize = 8192;

/// Record flag (puts and deletes): a copy compaction made of the key's
/// newest version; the key's value did not change.
pub const FLAG_MOVED: u8 = 1;
/// Record flag bits 1..=3 (puts): log2 of the alignment the value was
/// written at (`WriteTxn::put_pod`); 0 for none. Compaction, backup and
/// salvage write the value's copy at the same alignment. The value's
/// position does not depend on them, so a reader that ignores them reads
/// the record right.
pub const FLAG_ALIGN_MASK: u8 = 0b1110;
const FLAG_ALIGN_SHIFT: u32 = 1;
/// The largest value alignment a record can ask for.
pub const MAX_VALUE_ALIGN: u64 = 128;

/// The alignment a record's flags ask for its value (1: none).
pub fn value_align(flags: u8) -> u64 {
    1 << ((flags & FLAG_ALIGN_MASK) >> FLAG_ALIGN_SHIFT)
}

/// The flag bits that ask for `align` (a power of two, at most
/// [`MAX_VALUE_ALIGN`]).
pub fn align_flags(align: u64) -> u8 {
    debug_assert!(align.is_power_of_two() && align <= MAX_VALUE_ALIGN);
    (align.trailing_zeros() as u8) << FLAG_ALIGN_SHIFT
}

/// One entry of an extent table (32 bytes, little-endian): a page-aligned
/// range of the data area that is a log extent, a retired extent, or free.
/// Index tables are not listed (the state names them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SpaceEntry {
    pub off: Le64,
    pub len: Le64,
    /// Log: bytes of records that are the newest version of their key.
    /// Retired: the commit that retired it.
    pub a: Le64,
    /// Bits 0..8: [`SPACE_LOG`], [`SPACE_RETIRED`] or [`SPACE_FREE`]; bit 8
    /// (log): sealed, the log moved on to another extent; bits 16..64
    /// (log, sealed): the commit whose next record sealed it.
    pub b: Le64,
}
pub const SPACE_ENTRY_SIZE: u64 = 32;
const _: () = assert!(std::mem::size_of::<SpaceEntry>() == SPACE_ENTRY_SIZE as usize);
pub const SPACE_LOG: u32 = 1;
pub const SPACE_RETIRED: u32 = 2;
pub const SPACE_FREE: u32 = 3;

/// Header of every log record. The key follows, then the value (or the
/// body of a commit/next record), then zero padding to a multiple of
/// [`RECORD_ALIGN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RecordHeader {
    /// CRC-32C of header bytes `4..24`, the key and the value (not the
    /// padding). The file's other checksums are CRC-32 (IEEE).
    pub crc: Le32,
    pub val_len: Le32,
    /// Key length minus one for puts and deletes (keys are 1 ..= 65536
    /// bytes); zero for commit and next records, which have no key.
    pub key_len_m1: Le16,
    pub kind: u8,
    pub flags: u8,
    /// The commit this record belongs to.
    pub seq: Le48,
    /// File offset of the previous version of this key (0: none).
    pub prev: Le48,
}
pub const HEADER_SIZE: usize = 24;
const _: () = assert!(std::mem::size_of::<RecordHeader>() == HEADER_SIZE);

/// Body of a commit record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CommitBody {
    /// Log position of the transaction's first record.
    pub txn_start: Le64,
    /// Records of the transaction before this one (puts, deletes, nexts).
    pub n_records: Le64,
    /// CRC32 over the `crc` fields of those records, in log order.
    pub chain_crc: Le32,
    pub _pad: Le32,
}
pub const COMMIT_BODY_SIZE: usize = 24;
const _: () = assert!(std::mem::size_of::<CommitBody>() == COMMIT_BODY_SIZE);

/// Body of a next-extent record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct NextBody {
    pub offset: Le64,
    pub len: Le64,
}
pub const NEXT_BODY_SIZE: usize = 16;
const _: () = assert!(std::mem::size_of::<NextBody>() == NEXT_BODY_SIZE);

impl RecordHeader {
    /// The key length this header implies and whether its lengths fit its
    /// kind; `None` for an unknown kind.
    pub fn lengths(&self) -> Option<(usize, bool)> {
        let (field, val_len) = (self.key_len_m1.get() as usize, self.val_len.get() as usize);
        Some(match self.kind {
            KIND_PUT => (field + 1, val_len <= MAX_VALUE_LEN),
            KIND_DELETE => (field + 1, val_len == 0),
            KIND_COMMIT => (0, field == 0 && val_len == COMMIT_BODY_SIZE),
            KIND_NEXT | KIND_RETIRE | KIND_INDEX => (0, field == 0 && val_len == NEXT_BODY_SIZE),
            KIND_FORGET => (
                0,
                field == 0 && val_len % 8 == 0 && (8..=8 * MAX_FORGET).contains(&val_len),
            ),
            _ => return None,
        })
    }
}

/// Bytes a record occupies in the log, padding included.
pub fn record_size(key_len: usize, val_len: usize) -> u64 {
    align_record((HEADER_SIZE + key_len + val_len) as u64)
}
pub const COMMIT_RECORD_SIZE: u64 = (HEADER_SIZE + COMMIT_BODY_SIZE) as u64;
pub const NEXT_RECORD_SIZE: u64 = (HEADER_SIZE + NEXT_BODY_SIZE) as u64;

pub fn align_record(n: u64) -> u64 {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}
pub fn align_page(n: u64) -> u64 {
    (n + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// [`record_crc`] of a record whose bytes lie together: `bytes` runs from
/// its header to the end of its value (the padding left out).
pub fn record_crc_contiguous(bytes: &[u8]) -> u32 {
    crate::cpu::crc32c(bytes.get(4..).unwrap_or_default())
}

/// The CRC a record header must carry, given its other fields and payload:
/// CRC-32C (see `cpu.rs` for why not CRC-32 as in format 4).
pub fn record_crc(header: &RecordHeader, key: &[u8], val: &[u8]) -> u32 {
    let c = crate::cpu::crc32c(&bytemuck::bytes_of(header)[4..]);
    crate::cpu::crc32c_append(crate::cpu::crc32c_append(c, key), val)
}

/// Index slots: one little-endian `u64` per slot. Zero is empty; otherwise
/// bits 24..64 hold `offset / RECORD_ALIGN` of the newest record of the
/// key and bits 0..24 a tag taken from the key's hash, so a probe can skip
/// most non-matching slots without touching the record.
pub const SLOT_EMPTY: u64 = 0;
const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// A slot whose key was deleted and forgotten (a forget record): occupied,
/// so probe chains run on through it, but naming no record. Its tag is 0,
/// which no key's is, so no probe ever takes it for its key.
pub const SLOT_FORGOTTEN: u64 = 1 << TAG_BITS;

/// A key's tag: the low 24 bits of its hash, 0 taken as 1 (0 is the tag of
/// the empty and the forgotten slot).
pub fn slot_tag(hash: u64) -> u64 {
    (hash & TAG_MASK).max(1)
}
/// Whether a slot names a record (neither empty nor forgotten).
pub fn slot_names_record(slot: u64) -> bool {
    slot & TAG_MASK != 0
}
pub fn slot_encode(offset: u64, hash: u64) -> u64 {
    debug_assert!(offset % RECORD_ALIGN == 0 && offset < MAX_FILE_LEN && offset != 0);
    (offset / RECORD_ALIGN) << TAG_BITS | slot_tag(hash)
}
pub fn slot_offset(slot: u64) -> u64 {
    (slot >> TAG_BITS) * RECORD_ALIGN
}
pub fn slot_matches(slot: u64, hash: u64) -> bool {
    slot & TAG_MASK == slot_tag(hash)
}
/// Home position of a hash in a table of `2^log2` slots: its top bits, so a
/// table's slots are (roughly) in hash order and doubling splits slot `i`
/// into `2i` and `2i + 1`.
pub fn slot_home(hash: u64, log2: u32) -> u64 {
    hash >> (64 - log2)
}

/// Hashes a key with the store's seed.
pub fn hash_key(seed: u64, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le48_round_trips_its_whole_range() {
        for v in [0, 1, 0xfff, Le48::MAX, 0x1234_5678_9abc] {
            assert_eq!(Le48::new(v).get(), v);
        }
    }

    #[test]
    fn slot_encoding_keeps_offset_and_tag() {
        let h = 0xdead_beef_cafe_f00d;
        let off = MAX_FILE_LEN - RECORD_ALIGN;
        let s = slot_encode(off, h);
        assert_ne!(s, SLOT_EMPTY);
        assert_eq!(slot_offset(s), off);
        assert!(slot_matches(s, h));
        assert!(!slot_matches(s, h ^ 1));
        assert!(slot_names_record(s));
    }

    #[test]
    fn no_key_takes_the_forgotten_or_the_empty_slot_for_its_own() {
        // A hash whose low 24 bits are 0 gets tag 1, so the forgotten
        // slot (tag 0) matches no key, whatever its hash.
        for h in [0, 1 << 24, 0xffff_ffff_ff00_0000, 0x1234_5678_9a00_0000] {
            assert_eq!(slot_tag(h), 1);
            assert!(!slot_matches(SLOT_FORGOTTEN, h));
            assert!(!slot_matches(SLOT_EMPTY, h));
            assert!(slot_names_record(slot_encode(4096, h)));
        }
        assert!(!slot_names_record(SLOT_FORGOTTEN) && !slot_names_record(SLOT_EMPTY));
        assert_ne!(SLOT_FORGOTTEN, SLOT_EMPTY);
    }

    #[test]
    fn meta_checks_run_in_order() {
        let mut m = Meta::zeroed();
        let bytes = |m: &Meta| -> [u8; META_SIZE] { bytemuck::cast(*m) };
        assert!(matches!(check_meta(&bytes(&m)), MetaCheck::BadMagic));
        m.magic = MAGIC;
        m.version = Le32::new(FORMAT_VERSION + 1);
        assert!(
            matches!(check_meta(&bytes(&m)), MetaCheck::NewerVersion(v) if v == FORMAT_VERSION + 1)
        );
        m.version = Le32::new(FORMAT_VERSION);
        m.page_size = Le32::new(PAGE_SIZE as u32);
        m.hash_id = Le32::new(HASH_XXH3);
        m.index_log2 = Le32::new(MIN_INDEX_LOG2);
        assert!(matches!(check_meta(&bytes(&m)), MetaCheck::BadChecksum));
        m.seal();
        assert!(matches!(check_meta(&bytes(&m)), MetaCheck::Ok(_)));
        m.page_size = Le32::new(8192);
        m.seal();
        assert!(matches!(check_meta(&bytes(&m)), MetaCheck::BadParams(_)));
    }
}

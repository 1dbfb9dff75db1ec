//! The append log: writing records, reading them back with every length and
//! checksum checked, and scanning for complete commits during recovery.
//!
//! A transaction is a run of records with one sequence number, closed by a
//! commit record whose body names the run's start, its record count and a
//! CRC over the records' CRCs. A run may cross extents: a next record ends
//! an extent and names where the log goes on. Recovery accepts a commit only
//! if every record of the run passes its CRC, carries the expected sequence
//! number, and the commit record agrees on start, count and chained CRC —
//! so stale bytes (an aborted transaction, an old extent) are never mistaken
//! for a commit, whatever order the pages reached the disk in.

use crate::format::*;
use crate::storage::Mapping;

/// A record whose lengths and checksum have been verified.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub off: u64,
    pub kind: u8,
    pub seq: u64,
    pub prev: u64,
    pub key_len: usize,
    pub val_len: usize,
    pub crc: u32,
    pub flags: u8,
}

impl Record {
    pub fn size(&self) -> u64 {
        record_size(self.key_len, self.val_len)
    }
    pub fn key_off(&self) -> u64 {
        self.off + HEADER_SIZE as u64
    }
    pub fn val_off(&self) -> u64 {
        self.key_off() + self.key_len as u64
    }
    pub fn key<'m>(&self, map: &'m Mapping) -> &'m [u8] {
        map.bytes(self.key_off(), self.key_len as u64)
            .unwrap_or(&[])
    }
    pub fn value<'m>(&self, map: &'m Mapping) -> &'m [u8] {
        map.bytes(self.val_off(), self.val_len as u64)
            .unwrap_or(&[])
    }
    pub fn commit_body(&self, map: &Mapping) -> Option<CommitBody> {
        (self.kind == KIND_COMMIT).then(|| bytemuck::pod_read_unaligned(self.value(map)))
    }
    pub fn next_body(&self, map: &Mapping) -> Option<NextBody> {
        (self.kind == KIND_NEXT).then(|| bytemuck::pod_read_unaligned(self.value(map)))
    }
    /// The extent a retire record names.
    pub fn retire_body(&self, map: &Mapping) -> Option<NextBody> {
        (self.kind == KIND_RETIRE).then(|| bytemuck::pod_read_unaligned(self.value(map)))
    }
    /// A copy compaction made (the key's value did not change).
    pub fn moved(&self) -> bool {
        self.flags & FLAG_MOVED != 0
    }
}

/// Why bytes at an offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    OutOfBounds,
    BadKind(u8),
    BadLengths,
    BadChecksum,
    /// The file grew past this process's mapping and remapping failed.
    Unmapped,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::OutOfBounds => write!(f, "record extends past its extent or the file"),
            Invalid::BadKind(k) => write!(f, "unknown record kind {k}"),
            Invalid::BadLengths => write!(f, "record lengths do not fit its kind"),
            Invalid::BadChecksum => write!(f, "record checksum mismatch"),
            Invalid::Unmapped => write!(f, "record lies past the mapping and remapping failed"),
        }
    }
}

/// Reads the header at `off` and checks kind, lengths and bounds (the record
/// must end by `end`), but not the checksum.
pub(crate) fn read_header(map: &Mapping, off: u64, end: u64) -> Result<Record, Invalid> {
    let end = end.min(map.len());
    if off % RECORD_ALIGN != 0 || off.checked_add(HEADER_SIZE as u64).is_none_or(|e| e > end) {
        return Err(Invalid::OutOfBounds);
    }
    let bytes = map
        .bytes(off, HEADER_SIZE as u64)
        .ok_or(Invalid::OutOfBounds)?;
    parse_header(bytes, off, end)
}

/// The header in `bytes` (at least `HEADER_SIZE` of them), of a record at
/// `off` that must end by `end`; checked as [`read_header`] does.
pub(crate) fn parse_header(bytes: &[u8], off: u64, end: u64) -> Result<Record, Invalid> {
    let bytes = bytes.get(..HEADER_SIZE).ok_or(Invalid::OutOfBounds)?;
    let h: RecordHeader = bytemuck::pod_read_unaligned(bytes);
    let val_len = h.val_len.get() as usize;
    let (key_len, lengths_ok) = h.lengths().ok_or(Invalid::BadKind(h.kind))?;
    if !lengths_ok {
        return Err(Invalid::BadLengths);
    }
    let rec = Record {
        off,
        kind: h.kind,
        seq: h.seq.get(),
        prev: h.prev.get(),
        key_len,
        val_len,
        crc: h.crc.get(),
        flags: h.flags,
    };
    if off + rec.size() > end {
        return Err(Invalid::OutOfBounds);
    }
    Ok(rec)
}

/// Checks a record's checksum.
pub(crate) fn check_crc(map: &Mapping, rec: &Record) -> Result<(), Invalid> {
    let len = (HEADER_SIZE + rec.key_len + rec.val_len) as u64;
    let bytes = map.bytes(rec.off, len).ok_or(Invalid::OutOfBounds)?;
    if record_crc_contiguous(bytes) == rec.crc {
        Ok(())
    } else {
        Err(Invalid::BadChecksum)
    }
}

/// Reads and fully verifies the record at `off`.
pub(crate) fn read_record(map: &Mapping, off: u64, end: u64) -> Result<Record, Invalid> {
    let rec = read_header(map, off, end)?;
    check_crc(map, &rec)?;
    Ok(rec)
}

/// A header for the given payload with its CRC still 0
/// (`WriteTxn::write_record` computes it where the record is staged).
pub(crate) fn unsealed_header(
    kind: u8,
    flags: u8,
    seq: u64,
    prev: u64,
    key: &[u8],
    val: &[u8],
) -> RecordHeader {
    RecordHeader {
        crc: Le32::new(0),
        val_len: Le32::new(val.len() as u32),
        key_len_m1: Le16::new(key.len().saturating_sub(1) as u16),
        kind,
        flags,
        seq: Le48::new(seq),
        prev: Le48::new(prev),
    }
}

/// Appends a record's bytes to `out`: header, key, value, zero padding.
pub(crate) fn encode_record(out: &mut Vec<u8>, h: &RecordHeader, key: &[u8], val: &[u8]) {
    let end = out.len() + record_size(key.len(), val.len()) as usize;
    out.extend_from_slice(bytemuck::bytes_of(h));
    out.extend_from_slice(key);
    out.extend_from_slice(val);
    out.resize(end, 0);
}

/// The records of one log extent `[off, end)` from its start: up to `stop`
/// (the tail, when it lies in the extent), or up to and including its next
/// record. Where a record does not read back it yields `Err((offset,
/// why))` once and ends. (Every record of a log extent up to its next
/// record or the tail was committed.)
pub(crate) struct ExtentRecords<'m> {
    map: &'m Mapping,
    pos: u64,
    stop: u64,
    end: u64,
}

pub(crate) fn extent_records(map: &Mapping, off: u64, end: u64, tail: u64) -> ExtentRecords<'_> {
    let stop = if (off..end).contains(&tail) {
        tail
    } else {
        end
    };
    ExtentRecords {
        map,
        pos: off,
        stop,
        end,
    }
}

impl Iterator for ExtentRecords<'_> {
    type Item = Result<Record, (u64, Invalid)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.stop {
            return None;
        }
        let at = self.pos;
        match read_record(self.map, at, self.end) {
            Err(why) => {
                self.pos = self.stop;
                Some(Err((at, why)))
            }
            Ok(rec) => {
                self.pos = if rec.kind == KIND_NEXT {
                    self.stop
                } else {
                    at + rec.size()
                };
                Some(Ok(rec))
            }
        }
    }
}

/// A position in the log: the next record goes at `pos`, and the extent
/// holding it ends at `end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub pos: u64,
    pub end: u64,
}

/// A complete commit found by [`scan_commit`].
#[derive(Debug)]
pub(crate) struct ScannedCommit {
    pub seq: u64,
    /// Put and delete records, in log order.
    pub records: Vec<Record>,
    /// Where the log goes on after the commit record.
    pub after: Cursor,
    /// Bytes of all records of the run, commit record included.
    pub bytes: u64,
    /// Extents the run entered (next records), in order.
    pub extents: Vec<(u64, u64)>,
    /// Extents the commit retires (retire records).
    pub retired: Vec<(u64, u64)>,
    /// The index move the commit starts (an index record).
    pub index: Option<IndexMove>,
}

/// An index move a commit starts: the new table's size, and whether the
/// move under way is finished at once first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexMove {
    pub log2: u32,
    pub finish: bool,
}

/// Which extents a next record may name: inside the file, after the fixed
/// pages, and not over the index tables in use.
pub(crate) struct ExtentRules {
    pub file_len: u64,
    pub forbidden: [(u64, u64); 2],
}

impl ExtentRules {
    fn allows(&self, off: u64, len: u64) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        off >= DATA_START
            && off % PAGE_SIZE == 0
            && len >= PAGE_SIZE
            && end <= self.file_len
            && self
                .forbidden
                .iter()
                .all(|&(fa, fb)| end <= fa || off >= fb)
    }
}

/// Looks for a complete commit with sequence number `seq` at `at`. Returns
/// `None` when there is none — the normal end of the log, or a torn or
/// stale tail — without saying which: recovery treats both the same way.
pub(crate) fn scan_commit(
    map: &Mapping,
    at: Cursor,
    seq: u64,
    rules: &ExtentRules,
) -> Option<ScannedCommit> {
    let mut cur = at;
    let mut records = Vec::new();
    let mut chain = crc32fast::Hasher::new();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut extents = Vec::new();
    let mut retired = Vec::new();
    let mut index = None;
    loop {
        let rec = read_header(map, cur.pos, cur.end).ok()?;
        // Cheap rejection of stale bytes before the checksum.
        if rec.seq != seq {
            return None;
        }
        check_crc(map, &rec).ok()?;
        bytes += rec.size();
        match rec.kind {
            KIND_PUT | KIND_DELETE => {
                chain.update(&rec.crc.to_le_bytes());
                n += 1;
                records.push(rec);
                cur.pos += rec.size();
            }
            KIND_NEXT => {
                let body = rec.next_body(map)?;
                let (off, len) = (body.offset.get(), body.len.get());
                if !rules.allows(off, len) {
                    return None;
                }
                chain.update(&rec.crc.to_le_bytes());
                n += 1;
                cur = Cursor {
                    pos: off,
                    end: off + len,
                };
                extents.push((off, len));
            }
            KIND_INDEX => {
                let body: NextBody = bytemuck::pod_read_unaligned(rec.value(map));
                let log2 = u32::try_from(body.offset.get()).ok()?;
                let finish_only = log2 == 0 && body.len.get() == 1;
                let valid = finish_only || (MIN_INDEX_LOG2..=40).contains(&log2);
                if !valid || body.len.get() > 1 || index.is_some() {
                    return None;
                }
                chain.update(&rec.crc.to_le_bytes());
                n += 1;
                index = Some(IndexMove {
                    log2,
                    finish: body.len.get() == 1,
                });
                cur.pos += rec.size();
            }
            KIND_RETIRE => {
                let body = rec.retire_body(map)?;
                chain.update(&rec.crc.to_le_bytes());
                n += 1;
                retired.push((body.offset.get(), body.len.get()));
                cur.pos += rec.size();
            }
            _ => {
                let body = rec.commit_body(map)?;
                let ok = body.txn_start.get() == at.pos
                    && body.n_records.get() == n
                    && body.chain_crc.get() == chain.finalize();
                if !ok {
                    return None;
                }
                cur.pos += rec.size();
                return Some(ScannedCommit {
                    seq,
                    records,
                    after: cur,
                    bytes,
                    extents,
                    retired,
                    index,
                });
            }
        }
    }
}

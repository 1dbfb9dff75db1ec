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
use crate::storage::{Fence, Mapping, Span};

/// A record whose kind and lengths have been checked (and its checksum,
/// where the reader asked for it: [`check_crc`], [`read_record`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    /// The whole record, checked against a [`Fence`]: its key and value
    /// are borrowed as parts of it.
    pub span: Span,
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
    /// The key's bytes; empty if they lie outside the record's span or
    /// the map (never for a record read through [`read_header`]).
    pub fn key<'m>(&self, map: &'m Mapping) -> &'m [u8] {
        self.part(map, self.key_off(), self.key_len as u64)
    }
    /// The value's bytes; empty as [`key`](Self::key) is.
    pub fn value<'m>(&self, map: &'m Mapping) -> &'m [u8] {
        self.part(map, self.val_off(), self.val_len as u64)
    }
    fn part<'m>(&self, map: &'m Mapping, off: u64, len: u64) -> &'m [u8] {
        self.span
            .part(off, len)
            .and_then(|span| map.bytes(span))
            .unwrap_or(&[])
    }
    /// The body of a commit, next, retire or index record; `None` if its
    /// kind differs or it has not the body's size.
    fn body<T: bytemuck::AnyBitPattern>(&self, map: &Mapping, kind: u8) -> Option<T> {
        let v = self.value(map);
        (self.kind == kind && v.len() == std::mem::size_of::<T>())
            .then(|| bytemuck::pod_read_unaligned(v))
    }
    pub fn commit_body(&self, map: &Mapping) -> Option<CommitBody> {
        self.body(map, KIND_COMMIT)
    }
    pub fn next_body(&self, map: &Mapping) -> Option<NextBody> {
        self.body(map, KIND_NEXT)
    }
    /// The extent a retire record names.
    pub fn retire_body(&self, map: &Mapping) -> Option<NextBody> {
        self.body(map, KIND_RETIRE)
    }
    /// The body of an index record (a `NextBody`: log2 and the finish flag).
    pub fn index_body(&self, map: &Mapping) -> Option<NextBody> {
        self.body(map, KIND_INDEX)
    }
    /// The offsets a forget record names (none for another kind).
    pub fn forget_body<'m>(&self, map: &'m Mapping) -> impl Iterator<Item = u64> + 'm {
        let v = if self.kind == KIND_FORGET {
            self.value(map)
        } else {
            &[]
        };
        v.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
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
    /// The offset lies outside the log area: in the fixed pages or an
    /// index table.
    Fenced,
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
            Invalid::Fenced => write!(f, "record offset lies in the fixed pages or an index table"),
            Invalid::Unmapped => write!(f, "record lies past the mapping and remapping failed"),
        }
    }
}

/// Reads the header at `off` and checks kind, lengths and bounds (the record
/// must end by `end`, and lie where `fence` admits log), but not the
/// checksum. `off` may come from the file: nothing is borrowed before the
/// fence admitted it.
pub(crate) fn read_header(
    map: &Mapping,
    fence: &Fence,
    off: u64,
    end: u64,
) -> Result<Record, Invalid> {
    let end = end.min(map.len());
    if off % RECORD_ALIGN != 0 || off.checked_add(HEADER_SIZE as u64).is_none_or(|e| e > end) {
        return Err(Invalid::OutOfBounds);
    }
    let head = Span::new(off, HEADER_SIZE as u64, fence).ok_or(Invalid::Fenced)?;
    let bytes = map.bytes(head).ok_or(Invalid::OutOfBounds)?;
    let h: RecordHeader = bytemuck::pod_read_unaligned(bytes);
    let val_len = h.val_len.get() as usize;
    let (key_len, lengths_ok) = h.lengths().ok_or(Invalid::BadKind(h.kind))?;
    if !lengths_ok {
        return Err(Invalid::BadLengths);
    }
    let size = record_size(key_len, val_len);
    if off + size > end {
        return Err(Invalid::OutOfBounds);
    }
    let rec = Record {
        span: Span::new(off, size, fence).ok_or(Invalid::Fenced)?,
        off,
        kind: h.kind,
        seq: h.seq.get(),
        prev: h.prev.get(),
        key_len,
        val_len,
        crc: h.crc.get(),
        flags: h.flags,
    };
    Ok(rec)
}

/// Checks a record's checksum.
pub(crate) fn check_crc(map: &Mapping, rec: &Record) -> Result<(), Invalid> {
    let len = (HEADER_SIZE + rec.key_len + rec.val_len) as u64;
    let bytes = rec
        .span
        .part(rec.off, len)
        .and_then(|span| map.bytes(span))
        .ok_or(Invalid::OutOfBounds)?;
    if record_crc_contiguous(bytes) == rec.crc {
        Ok(())
    } else {
        Err(Invalid::BadChecksum)
    }
}

/// Reads and fully verifies the record at `off`.
pub(crate) fn read_record(
    map: &Mapping,
    fence: &Fence,
    off: u64,
    end: u64,
) -> Result<Record, Invalid> {
    let rec = read_header(map, fence, off, end)?;
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
    fence: Fence,
    pos: u64,
    stop: u64,
    end: u64,
}

pub(crate) fn extent_records(
    map: &Mapping,
    fence: Fence,
    off: u64,
    end: u64,
    tail: u64,
) -> ExtentRecords<'_> {
    let stop = if (off..end).contains(&tail) {
        tail
    } else {
        end
    };
    ExtentRecords {
        map,
        fence,
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
        match read_record(self.map, &self.fence, at, self.end) {
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
    /// Delete records whose keys the commit forgets (forget records).
    pub forgotten: Vec<u64>,
}

/// An index move a commit starts: the new table's size, and whether the
/// move under way is finished at once first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexMove {
    pub log2: u32,
    pub finish: bool,
}

/// Which extents a next record may name: whole pages inside the file, after
/// the fixed pages, and not over the index tables in use (`fence`).
pub(crate) struct ExtentRules {
    pub file_len: u64,
    pub fence: Fence,
}

impl ExtentRules {
    pub(crate) fn allows(&self, off: u64, len: u64) -> bool {
        self.fence.admits(off, len)
            && off % PAGE_SIZE == 0
            && len >= PAGE_SIZE
            && off + len <= self.file_len
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
    let mut forgotten = Vec::new();
    loop {
        let rec = read_header(map, &rules.fence, cur.pos, cur.end).ok()?;
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
                let body = rec.index_body(map)?;
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
            KIND_FORGET => {
                chain.update(&rec.crc.to_le_bytes());
                n += 1;
                forgotten.extend(rec.forget_body(map));
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
                    forgotten,
                });
            }
        }
    }
}

//! Writing log records: staged runs, large records on their own, each record's CRC chained.

use super::keyset::{is_key, key_table_hash, KeyRef, Pending};
use super::WriteTxn;
use crate::error::{Error, Result};
use crate::format::*;
use crate::log::{self};
use crate::storage::{Fence, Mapping, Span};

/// Log bytes the transaction wrote that are not in the file yet: one run
/// of consecutive records from `off`. A run reaches the file with one
/// `Backend::write` (a `pwrite`) when it is full, when the log moves to
/// another extent, and at commit — not through the map, so no log page is
/// ever mapped writable (docs/DESIGN.md, "Writing the log").
pub(super) struct Staged {
    pub(super) off: u64,
    pub(super) buf: Vec<u8>,
    /// Some of the transaction's bytes reached the file.
    pub(super) wrote: bool,
    /// The base state's fence: the transaction's own records lie inside
    /// it, as every record its base state names does.
    pub(super) fence: Fence,
}

/// A run is written out once it holds this much; a record larger than
/// this is written on its own.
const STAGE_MAX: usize = 1 << 20;

impl Staged {
    /// `len` bytes at `off` as the transaction wrote them: from the run
    /// if it holds them, else from the map. (Records never straddle the
    /// run's start.)
    pub(super) fn bytes<'a>(&'a self, map: &'a Mapping, off: u64, len: u64) -> Option<&'a [u8]> {
        let end = self.off + self.buf.len() as u64;
        if off >= self.off && off < end {
            let at = (off - self.off) as usize;
            return self.buf.get(at..at.checked_add(len as usize)?);
        }
        map.bytes(Span::new(off, len, &self.fence)?)
    }

    /// Whether the transaction's own record `p` is for `key`.
    pub(super) fn key_is(&self, map: &Mapping, p: &Pending, key: &[u8]) -> bool {
        self.bytes(map, p.off + HEADER_SIZE as u64, u64::from(p.key_len)) == Some(key)
    }
}

impl<'s> WriteTxn<'s> {
    /// Writes a record at `at` (reserved) with header `h` (its CRC still
    /// to be computed: `log::unsealed_header`), staged or on its own if
    /// large, and counts it in the transaction's run; returns its CRC. A
    /// staged record's CRC is computed over its bytes in the run.
    /// A failed write poisons the handle, as a failed flush does: the
    /// transaction's bytes in the file are then unknown.
    fn write_record(
        &mut self,
        at: u64,
        mut h: RecordHeader,
        key: &[u8],
        val: &[u8],
    ) -> Result<u32> {
        let size = record_size(key.len(), val.len());
        let crc = if self.stage(at, size)? {
            let start = self.staged.buf.len();
            log::encode_record(&mut self.staged.buf, &h, key, val);
            let rec = &mut self.staged.buf[start..];
            let crc = record_crc_contiguous(&rec[..HEADER_SIZE + key.len() + val.len()]);
            rec[..4].copy_from_slice(&crc.to_le_bytes());
            crc
        } else {
            let crc = record_crc(&h, key, val);
            h.crc = Le32::new(crc);
            self.write_large(at, &h, key, val)?;
            crc
        };
        self.wrote(at, size, crc);
        Ok(crc)
    }

    /// Writes a keyless record of this commit (next, index, retire,
    /// commit) with `body` as its value, like [`write_record`](Self::write_record).
    pub(super) fn write_body_record(&mut self, at: u64, kind: u8, body: &[u8]) -> Result<u32> {
        let h = log::unsealed_header(kind, 0, self.seq(), 0, &[], body);
        self.write_record(at, h, &[], body)
    }

    /// Makes the staged run end at `at`, writing it out first if it ends
    /// elsewhere or has no room; whether a record of `size` bytes goes
    /// into it (larger ones are written from where they are).
    fn stage(&mut self, at: u64, size: u64) -> Result<bool> {
        let run_end = self.staged.off + self.staged.buf.len() as u64;
        let size = size as usize;
        if !self.staged.buf.is_empty()
            && (run_end != at || self.staged.buf.len() + size > STAGE_MAX)
        {
            let run_start = self.staged.off;
            self.write_staged()?;
            // A run written before the commit (full, or cut short where
            // the log moves to another extent) starts on its way to the
            // disk now: a large transaction's bytes then go out while it
            // writes the rest, not all in the commit's msync. Whole pages
            // only: the last one is written again with the next run.
            let end = run_end & !(PAGE_SIZE - 1);
            if end > run_start {
                self.shared
                    .backend
                    .start_writeback(run_start, end - run_start);
            }
        }
        if self.staged.buf.is_empty() {
            self.staged.off = at;
        }
        Ok(size <= STAGE_MAX)
    }

    /// Writes a record too large to stage: a large value is written from
    /// where it is, not copied first.
    fn write_large(&mut self, at: u64, h: &RecordHeader, key: &[u8], val: &[u8]) -> Result<()> {
        let size = record_size(key.len(), val.len()) as usize;
        let mut head = Vec::with_capacity(HEADER_SIZE + key.len());
        log::encode_record(&mut head, h, key, &[]);
        head.truncate(HEADER_SIZE + key.len());
        let pad = size - head.len() - val.len();
        let parts: [(u64, &[u8]); 3] = [
            (at, &head),
            (at + head.len() as u64, val),
            (at + (size - pad) as u64, &[0u8; 8][..pad]),
        ];
        for (off, bytes) in parts {
            self.write_out(off, bytes)?;
        }
        Ok(())
    }

    /// Writes the staged run to the file.
    pub(super) fn write_staged(&mut self) -> Result<()> {
        if self.staged.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.staged.buf);
        let r = self.write_out(self.staged.off, &buf);
        self.staged.off += buf.len() as u64;
        self.staged.buf = buf;
        self.staged.buf.clear();
        r
    }

    fn write_out(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.staged.wrote = true;
        self.shared
            .backend
            .write(&self.map, off, bytes)
            .map_err(|e| {
                self.w.poisoned = true;
                self.shared
                    .io(format!("write {} log bytes at {off}", bytes.len()), e)
            })?;
        self.map.populate(off, bytes.len() as u64);
        Ok(())
    }

    pub(super) fn append(
        &mut self,
        kind: u8,
        hash: u64,
        prev: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.append_flags(kind, 0, hash, prev, key, value)
    }

    /// Appends a put whose value starts at a multiple of `align` (a power
    /// of two, at most `MAX_VALUE_ALIGN`; the key's length a multiple of
    /// `align.min(4)`, as records start at multiples of 4) and says so in
    /// its flags, so that copies keep it. Where the log's position does
    /// not give that, a filler put of the same key goes first, sized to
    /// move the record there; the record replaces it in this transaction,
    /// so no reader ever sees it (a dead record, as any overwritten one).
    pub(super) fn append_aligned(
        &mut self,
        flags: u8,
        hash: u64,
        prev: u64,
        key: &[u8],
        value: &[u8],
        align: u64,
    ) -> Result<()> {
        if align <= 1 {
            return self.append_flags(KIND_PUT, flags, hash, prev, key, value);
        }
        let head = (HEADER_SIZE + key.len()) as u64;
        debug_assert_eq!(head % align.min(RECORD_ALIGN), 0);
        // Room for the largest filler and the record: neither may move to
        // another extent.
        self.room(head + align + record_size(key.len(), value.len()))?;
        let gap = (align - (self.cur.pos + head) % align) % align;
        if gap != 0 {
            // A filler of `head + len` bytes, `len < align`, that is `gap`
            // bytes past a multiple of `align`.
            let len = (gap + align - head % align) % align;
            const ZEROS: [u8; MAX_VALUE_ALIGN as usize] = [0; MAX_VALUE_ALIGN as usize];
            let moved = flags & FLAG_MOVED;
            self.append_flags(KIND_PUT, moved, hash, prev, key, &ZEROS[..len as usize])?;
        }
        debug_assert_eq!((self.cur.pos + head) % align, 0);
        self.append_flags(KIND_PUT, flags | align_flags(align), hash, prev, key, value)
    }

    pub(super) fn append_flags(
        &mut self,
        kind: u8,
        flags: u8,
        hash: u64,
        prev: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if self.pending.len() >= u32::MAX as usize {
            return Err(Error::Unsupported {
                what: "a transaction of more than 4,294,967,294 keys",
            });
        }
        let size = record_size(key.len(), value.len());
        let pos = self.reserve(size)?;
        let h = log::unsealed_header(kind, flags, self.seq(), prev, key, value);
        let crc = self.write_record(pos, h, key, value)?;
        let new = Pending {
            hash,
            off: pos,
            prev,
            // At most 65,536 and 2^30: `put` checked.
            key_len: key.len() as u32,
            val_len: value.len() as u32,
            crc,
            kind,
            flags,
        };
        if self.above_all(key) {
            if let Some(last) = &mut self.ascending {
                last.clear();
                last.extend_from_slice(key);
            }
            self.pending.push(new);
            self.fresh_keys += new.fresh() as u64;
            return Ok(());
        }
        if self.ascending.is_some() {
            self.build_key_table();
            self.ascending = None;
        }
        let hi = (hash >> 32) as u32;
        let eq = is_key(&self.map, &self.staged, &self.pending, hi, key);
        let mut table = self.key_table.borrow_mut();
        let entry = table.entry(key_table_hash(hi), eq, |k| key_table_hash(k.hash_hi));
        match entry {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let p = &mut self.pending[o.get().index as usize];
                self.fresh_keys = self.fresh_keys - p.fresh() as u64 + new.fresh() as u64;
                *p = new;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                // Below u32::MAX: checked above.
                let index = self.pending.len() as u32;
                v.insert(KeyRef { hash_hi: hi, index });
                self.pending.push(new);
                self.fresh_keys += new.fresh() as u64;
            }
        }
        Ok(())
    }

    pub(super) fn wrote(&mut self, pos: u64, size: u64, crc: u32) {
        self.chain.update(&crc.to_le_bytes());
        self.n_records += 1;
        self.bytes += size;
        match self.dirty.last_mut() {
            Some((_, end)) if *end == pos => *end = pos + size,
            _ => self.dirty.push((pos, pos + size)),
        }
    }
}

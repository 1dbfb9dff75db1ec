//! Salvage: copy what can be trusted out of a damaged store
//! (`kvctl salvage`). Never writes the source.
//!
//! The source is read with plain reads, from the first data page to the
//! end, at every multiple of `RECORD_ALIGN` (4 bytes): whatever passes as
//! a record (kind, lengths, CRC) is noted, so nothing depends on the meta
//! pages, the index or the extent chain being intact. A commit counts when its
//! commit record checks out and the run it names does too: every record
//! from `txn_start` (following next records) has its seq and a good CRC,
//! and the count and chained CRC match — the same rule as recovery. The
//! newest committed version of each key, over all such commits, goes
//! into a fresh store.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::*;
use crate::options::Options;

/// What [`salvage`] recovered and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// Complete commits found.
    pub commits: u64,
    /// The newest of them.
    pub newest_seq: u64,
    /// Runs of commit seqs below `newest_seq` whose commit record was not
    /// found intact: `(first, last)`. Commits that compaction reclaimed
    /// (it copies the newest version of every key out first) are not
    /// listed when a meta page says which they are; when both meta pages
    /// are damaged they are.
    pub lost_commits: Vec<(u64, u64)>,
    /// Commits whose commit record is intact but whose run of records is
    /// not all there (part of it was reclaimed by compaction, or damaged):
    /// the records found at its start and right before its commit record
    /// are used.
    pub partial_commits: u64,
    /// Keys written to the new store.
    pub keys: u64,
    /// Records that failed their checksum where the log runs (right after
    /// an intact record).
    pub damaged_records: u64,
    /// Keys that a lost commit may have changed (its surviving records
    /// name them): their value in the new store may be older than the
    /// newest one.
    pub keys_maybe_stale: Vec<Vec<u8>>,
}

/// A record found by the scan.
#[derive(Clone, Copy)]
struct Found {
    kind: u8,
    seq: u64,
    crc: u32,
    key_len: usize,
    val_len: usize,
    /// The alignment its value was written at (`put_pod`; 1: none).
    align: u64,
}

struct Source {
    file: File,
    len: u64,
}

impl Source {
    fn read(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        if off.checked_add(len as u64)? > self.len {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, off).ok()?;
        Some(buf)
    }
}

/// Window size for the scan's reads.
const WINDOW: u64 = 8 << 20;

/// Copies every committed key of the store at `src` whose newest version
/// can be read intact into a new store at `dest` (which must not exist),
/// and reports what was lost. `src` is only read.
///
/// Salvage reads records, not the index, so a key deleted long ago can
/// come back with an older value: once no snapshot needs it, compaction
/// forgets a delete instead of copying it (and an index move drops it),
/// while the put it deleted may still lie in an extent not yet compacted.
///
/// # Errors
/// `Io` if `src` cannot be read or `dest` exists or cannot be written.
pub fn salvage(src: &Path, dest: &Path) -> Result<SalvageReport> {
    let io = |path: &Path, op: &str, source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        op: op.into(),
        source,
    };
    if dest.exists() {
        return Err(io(
            dest,
            "create the salvage store",
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    // The file ended where the scan had seen bytes: it shrank under us.
    let short = |op: &str| {
        io(
            src,
            op,
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        )
    };
    let file = File::open(src).map_err(|e| io(src, "open the file", e))?;
    let len = file
        .metadata()
        .map_err(|e| io(src, "read the file length", e))?
        .len();
    let source = Source { file, len };
    let mut report = SalvageReport::default();

    // 1. Every record-shaped thing that checks out.
    let mut found: HashMap<u64, Found> = HashMap::new();
    // seq -> offsets of commit records with that seq (an old one can
    // survive past a shorter commit that reused its seq after a crash).
    let mut commits: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut window_at = u64::MAX;
    let mut window: Vec<u8> = Vec::new();
    let mut off = DATA_START;
    // Where the last record found ends: a damaged record counts only when
    // it starts there, inside a run of log. Elsewhere (index tables, free
    // space, the inside of a damaged value) record-shaped bytes with a bad
    // checksum are noise, not lost data.
    let mut last_end = DATA_START;
    // Damaged records where the log runs: (start, end).
    let mut damaged: Vec<(u64, u64)> = Vec::new();
    while off + HEADER_SIZE as u64 <= len {
        if off < window_at || off + HEADER_SIZE as u64 > window_at + window.len() as u64 {
            window_at = off;
            let n = WINDOW.min(len - off) as usize;
            window = source.read(off, n).ok_or_else(|| short("read"))?;
        }
        let at = (off - window_at) as usize;
        let h: RecordHeader = bytemuck::pod_read_unaligned(&window[at..at + HEADER_SIZE]);
        match check_record(&source, off, &h) {
            Some(Ok(f)) => {
                if f.kind == KIND_COMMIT {
                    commits.entry(f.seq).or_default().push(off);
                }
                found.insert(off, f);
                off += record_size(f.key_len, f.val_len);
                last_end = off;
                continue;
            }
            Some(Err(size)) if off == last_end => {
                report.damaged_records += 1;
                damaged.push((off, off + size));
            }
            Some(Err(_)) => {}
            None => {}
        }
        off += RECORD_ALIGN;
    }

    // 2. Commits whose run checks out; the records of the others name
    //    keys that may have lost their newest value.
    let mut complete: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let ends: HashMap<u64, u64> = found
        .iter()
        .map(|(&at, f)| (at + record_size(f.key_len, f.val_len), at))
        .collect();
    for (&seq, ats) in &commits {
        if let Some(run) = ats
            .iter()
            .find_map(|&at| commit_run(&source, &found, seq, at))
        {
            complete.insert(seq, run);
        } else if let Some(&at) = ats.last() {
            // A run that reaches a damaged record is lost whole; one that
            // only runs out (its other extents were reclaimed and reused)
            // gives what is left.
            let (run, stop) = partial_run(&found, &ends, seq, at);
            if !damaged.iter().any(|&(a, b)| a == stop || b == stop) {
                report.partial_commits += 1;
                complete.insert(seq, run);
            }
        }
    }
    report.commits = complete.len() as u64;
    report.newest_seq = complete.keys().next_back().copied().unwrap_or(0);
    // Commits compaction reclaimed (a meta page that still checks out says
    // up to where) are not lost: their live records were copied first.
    let reclaimed = META_OFFSETS
        .iter()
        .filter_map(|&at| {
            let bytes: [u8; META_SIZE] = source.read(at, META_SIZE)?.try_into().ok()?;
            match check_meta(&bytes) {
                MetaCheck::Ok(m) => Some(m.history_seq.get()),
                _ => None,
            }
        })
        .max()
        .unwrap_or(0);
    let mut expect = reclaimed + 1;
    for &seq in complete.keys().filter(|&&s| s > reclaimed) {
        if seq > expect {
            report.lost_commits.push((expect, seq - 1));
        }
        expect = seq + 1;
    }

    // 3. The newest committed version of each key.
    let mut state: BTreeMap<Vec<u8>, Option<(u64, Found)>> = BTreeMap::new();
    for run in complete.values() {
        for &r in run {
            let f = found[&r];
            let key = source
                .read(r + HEADER_SIZE as u64, f.key_len)
                .ok_or_else(|| short("read a key"))?;
            state.insert(key, (f.kind == KIND_PUT).then_some((r, f)));
        }
    }
    let lost_seq = |s: u64| {
        report
            .lost_commits
            .iter()
            .any(|&(a, b)| (a..=b).contains(&s))
    };
    let mut stale: Vec<Vec<u8>> = Vec::new();
    for (&r, f) in &found {
        if matches!(f.kind, KIND_PUT | KIND_DELETE) && lost_seq(f.seq) {
            if let Some(key) = source.read(r + HEADER_SIZE as u64, f.key_len) {
                stale.push(key);
            }
        }
    }
    stale.sort();
    stale.dedup();
    report.keys_maybe_stale = stale;

    // 4. A fresh store with them.
    let out = Options::new().create(true).open(dest)?;
    let mut tx = out.begin_write()?;
    let mut in_batch = 0;
    for (key, v) in &state {
        let Some((r, f)) = v else { continue };
        let value = source
            .read(r + (HEADER_SIZE + f.key_len) as u64, f.val_len)
            .ok_or_else(|| short("read a value"))?;
        // A value written with `put_pod` keeps its alignment.
        tx.put_aligned(key, &value, f.align)?;
        report.keys += 1;
        in_batch += 1;
        if in_batch == 10_000 {
            tx.commit()?;
            tx = out.begin_write()?;
            in_batch = 0;
        }
    }
    tx.commit()?;
    out.close()?;
    Ok(report)
}

/// `None`: not record-shaped here. `Some(Err(size))`: record-shaped but
/// its CRC fails. `Some(Ok)`: a record.
fn check_record(src: &Source, off: u64, h: &RecordHeader) -> Option<Result<Found, u64>> {
    let val_len = h.val_len.get() as usize;
    let (key_len, shape_ok) = h.lengths()?;
    if !shape_ok || h.seq.get() == 0 || h.flags & !(FLAG_MOVED | FLAG_ALIGN_MASK) != 0 {
        return None;
    }
    let payload = src.read(off + HEADER_SIZE as u64, key_len + val_len)?;
    let (key, val) = payload.split_at(key_len);
    if record_crc(h, key, val) != h.crc.get() {
        return Some(Err(record_size(key_len, val_len)));
    }
    Some(Ok(Found {
        kind: h.kind,
        seq: h.seq.get(),
        crc: h.crc.get(),
        key_len,
        val_len,
        align: value_align(h.flags),
    }))
}

/// The put and delete records of commit `seq` (its commit record at
/// `at`), in log order, if the run checks out as recovery checks it.
fn commit_run(src: &Source, found: &HashMap<u64, Found>, seq: u64, at: u64) -> Option<Vec<u64>> {
    let f = found.get(&at)?;
    let body: CommitBody =
        bytemuck::pod_read_unaligned(&src.read(at + HEADER_SIZE as u64, f.val_len)?);
    let (mut pos, n) = (body.txn_start.get(), body.n_records.get());
    let mut chain = crc32fast::Hasher::new();
    let mut run = Vec::new();
    for _ in 0..n {
        let r = found.get(&pos)?;
        if r.seq != seq || r.kind == KIND_COMMIT {
            return None;
        }
        chain.update(&r.crc.to_le_bytes());
        if matches!(r.kind, KIND_RETIRE | KIND_INDEX | KIND_FORGET) {
            pos += record_size(r.key_len, r.val_len);
        } else if r.kind == KIND_NEXT {
            let next: NextBody =
                bytemuck::pod_read_unaligned(&src.read(pos + HEADER_SIZE as u64, NEXT_BODY_SIZE)?);
            pos = next.offset.get();
        } else {
            run.push(pos);
            pos += record_size(r.key_len, r.val_len);
        }
    }
    (pos == at && chain.finalize() == body.chain_crc.get()).then_some(run)
}

/// What can be found of commit `seq`'s run when it does not check out:
/// the records that end exactly where the next begins, back from its
/// commit record at `at` (the part in the commit's own extent; a run ends
/// at the previous commit's records, so stale bytes after an earlier,
/// aborted attempt at the same seq are never reached). Also returns where
/// the walk stopped.
fn partial_run(
    found: &HashMap<u64, Found>,
    ends: &HashMap<u64, u64>,
    seq: u64,
    at: u64,
) -> (Vec<u64>, u64) {
    let mut run = Vec::new();
    let mut pos = at;
    while let Some(&start) = ends.get(&pos) {
        let f = found[&start];
        if f.seq != seq || f.kind == KIND_COMMIT {
            break;
        }
        if matches!(f.kind, KIND_PUT | KIND_DELETE) {
            run.push(start);
        }
        pos = start;
    }
    run.reverse();
    (run, pos)
}

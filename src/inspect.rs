//! Decoding the bytes at one file offset, for people repairing a store
//! (`kvctl inspect`). Reads the file with plain reads: no lock, no map, no
//! open protocol, so it works on a store too damaged to open.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::*;
use crate::readers;

/// What [`inspect`] found at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct Inspection {
    /// The offset asked for.
    pub offset: u64,
    /// What structure is there ("meta page", "log record", ...).
    pub what: String,
    /// Whether it passes its checks (magic, lengths, checksum).
    pub ok: bool,
    /// Its fields, in file order, as (name, value) text.
    pub fields: Vec<(String, String)>,
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "ok" } else { "DAMAGED" };
        writeln!(f, "offset {}: {} ({status})", self.offset, self.what)?;
        for (k, v) in &self.fields {
            writeln!(f, "  {k:<14} {v}")?;
        }
        Ok(())
    }
}

struct Builder {
    fields: Vec<(String, String)>,
}

impl Builder {
    fn add(&mut self, k: &str, v: impl fmt::Display) {
        self.fields.push((k.to_string(), v.to_string()));
    }
}

fn read_at(file: &File, path: &Path, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    op: format!("read {len} bytes at offset {off}"),
                    source,
                })
            }
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn escape(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(64)];
    let mut s: String = shown.escape_ascii().to_string();
    if bytes.len() > shown.len() {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

/// Decodes the structure at `offset` of the store file at `path`: a meta
/// page, the live header, a reader-table chunk, an extent-table entry, or
/// a log record (with its checksum checked); any other offset is shown as the 64-bit word there,
/// read as an index slot.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("data.kv");
/// let store = mapkv::Store::open(&path)?;
/// store.put(b"k", b"v")?;
/// let first = mapkv::inspect(&path, 524288)?; // the first log record
/// assert!(first.ok);
/// assert_eq!(first.what, "log record: put");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// `Io` if the file cannot be read.
pub fn inspect(path: &Path, offset: u64) -> Result<Inspection> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "open the file".into(),
        source,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut b = Builder { fields: Vec::new() };
    let (what, ok) = if offset >= len {
        b.add("file length", len);
        ("past the end of the file".to_string(), false)
    } else if offset < 2 * PAGE_SIZE {
        let at = offset & !(PAGE_SIZE - 1);
        meta(&mut b, &read_at(&file, path, at, META_SIZE)?, at)
    } else if offset < 3 * PAGE_SIZE {
        live(&mut b, &read_at(&file, path, LIVE_OFFSET, 512)?)
    } else if offset < SPACE_WORKING[0] {
        reader_chunk(&mut b, &file, path, offset)?
    } else if offset < DATA_START {
        space_entry(&mut b, &file, path, offset)?
    } else {
        record(&mut b, &file, path, offset & !(RECORD_ALIGN - 1), len)?
    };
    Ok(Inspection {
        offset,
        what,
        ok,
        fields: b.fields,
    })
}

fn meta(b: &mut Builder, bytes: &[u8], at: u64) -> (String, bool) {
    let mut buf = [0u8; META_SIZE];
    let n = bytes.len().min(META_SIZE);
    buf[..n].copy_from_slice(&bytes[..n]);
    let m: Meta = bytemuck::pod_read_unaligned(&buf);
    let check = match check_meta(&buf) {
        MetaCheck::Ok(_) => "ok".to_string(),
        MetaCheck::BadMagic => "bad magic".into(),
        MetaCheck::NewerVersion(v) => format!("newer format version {v}"),
        MetaCheck::BadVersion(v) => format!("unknown format version {v}"),
        MetaCheck::BadParams(p) => p.to_string(),
        MetaCheck::BadChecksum => format!(
            "checksum mismatch (stored {:#010x}, computed {:#010x})",
            m.crc.get(),
            m.compute_crc()
        ),
    };
    let ok = check == "ok";
    b.add("check", check);
    b.add("magic", escape(&m.magic));
    b.add("version", m.version.get());
    b.add("flags", if m.is_clean() { "clean" } else { "-" });
    b.add("generation", m.generation.get());
    b.add("seq", m.seq.get());
    b.add("tail", m.tail.get());
    b.add("tail_end", m.tail_end.get());
    b.add("alloc_end", m.alloc_end.get());
    b.add("index_offset", m.index_offset.get());
    b.add("index_log2", m.index_log2.get());
    b.add("index_used", m.index_used.get());
    b.add("key_count", m.key_count.get());
    b.add("live_bytes", m.live_bytes.get());
    b.add("log_bytes", m.log_bytes.get());
    (format!("meta page {}", at / PAGE_SIZE), ok)
}

fn word(bytes: &[u8], i: usize) -> u64 {
    bytes
        .get(i * 8..i * 8 + 8)
        .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
}

fn live(b: &mut Builder, bytes: &[u8]) -> (String, bool) {
    let magic = &bytes[..8.min(bytes.len())];
    let ok = magic == b"MKVLIVE1";
    b.add("magic", escape(magic));
    b.add("current", word(bytes, 1));
    b.add("notify", word(bytes, 2));
    b.add("waiters", word(bytes, 3));
    b.add("incarnation", word(bytes, 4));
    b.add("writer_turns", word(bytes, 5));
    const NAMES: [&str; 15] = [
        "seq",
        "tail",
        "tail_end",
        "alloc_end",
        "index_off",
        "index_log2",
        "index_used",
        "key_count",
        "live_bytes",
        "log_bytes",
        "file_len",
        "synced_tail",
        "ckpt_log_bytes",
        "meta_gen",
        "meta_clean",
    ];
    let current = word(bytes, 1);
    let base = 8 + (current & 1) as usize * 16;
    b.add("slot gen", word(bytes, base));
    for (i, name) in NAMES.iter().enumerate() {
        b.add(name, word(bytes, base + 1 + i));
    }
    (
        "live header (valid only while a process has the store open)".into(),
        ok,
    )
}

fn reader_chunk(b: &mut Builder, file: &File, path: &Path, offset: u64) -> Result<(String, bool)> {
    let chunk = (offset - readers::TABLE_OFFSET) / 256;
    let bytes = read_at(file, path, readers::TABLE_OFFSET + chunk * 256, 256)?;
    b.add("owner pid", word(&bytes, 0));
    for s in 0..readers::SLOTS_PER_CHUNK as usize {
        let seq1 = word(&bytes, 2 + 2 * s);
        if seq1 != 0 {
            b.add(
                &format!("slot {s}"),
                format!("snapshot at seq {}", seq1 - 1),
            );
        }
    }
    Ok((
        format!("reader table chunk {chunk} (meaningful only while its owner lives)"),
        true,
    ))
}

/// An entry of one of the extent tables (pages 16..80).
fn space_entry(b: &mut Builder, file: &File, path: &Path, offset: u64) -> Result<(String, bool)> {
    let region = [
        SPACE_WORKING[0],
        SPACE_WORKING[1],
        SPACE_CHECKPOINT[0],
        SPACE_CHECKPOINT[1],
    ]
    .into_iter()
    .rposition(|at| offset >= at);
    let region_at = region.map_or(0, |r| {
        [
            SPACE_WORKING[0],
            SPACE_WORKING[1],
            SPACE_CHECKPOINT[0],
            SPACE_CHECKPOINT[1],
        ][r]
    });
    let index = (offset - region_at) / SPACE_ENTRY_SIZE;
    if region.is_none() || index >= SPACE_ENTRIES as u64 {
        return Ok(("reserved header space".into(), true));
    }
    let at = region_at + index * SPACE_ENTRY_SIZE;
    let bytes = read_at(file, path, at, SPACE_ENTRY_SIZE as usize)?;
    let mut buf = [0u8; SPACE_ENTRY_SIZE as usize];
    buf[..bytes.len()].copy_from_slice(&bytes);
    let e: SpaceEntry = bytemuck::pod_read_unaligned(&buf);
    let which = if region < Some(2) {
        "working"
    } else {
        "checkpoint"
    };
    b.add("table", format!("{which} extent table at {region_at}"));
    b.add("entry", index);
    b.add("extent", format!("{}+{}", e.off.get(), e.len.get()));
    let kind = (e.b.get() & 0xff) as u32;
    let ok = match kind {
        SPACE_LOG => {
            b.add("use", "log");
            b.add("live bytes", e.a.get());
            b.add("sealed", e.b.get() & (1 << 8) != 0);
            b.add("sealed by commit", e.b.get() >> 16);
            true
        }
        SPACE_RETIRED => {
            b.add("use", "retired");
            b.add("retired by commit", e.a.get());
            true
        }
        SPACE_FREE => {
            b.add("use", "free");
            true
        }
        0 if e.off.get() == 0 => {
            b.add("use", "unused entry");
            true
        }
        k => {
            b.add("use", format!("unknown ({k})"));
            false
        }
    };
    Ok(("extent table entry".into(), ok))
}

fn record(b: &mut Builder, file: &File, path: &Path, off: u64, len: u64) -> Result<(String, bool)> {
    let hdr = read_at(file, path, off, HEADER_SIZE)?;
    if hdr.len() < HEADER_SIZE {
        b.add("bytes", escape(&hdr));
        return Ok(("truncated record header".into(), false));
    }
    let h: RecordHeader = bytemuck::pod_read_unaligned(&hdr);
    let (kind, key_len) = match h.kind {
        KIND_PUT => ("put", h.key_len_m1.get() as u64 + 1),
        KIND_DELETE => ("delete", h.key_len_m1.get() as u64 + 1),
        KIND_COMMIT => ("commit", 0),
        KIND_NEXT => ("next", 0),
        KIND_RETIRE => ("retire", 0),
        KIND_INDEX => ("index", 0),
        KIND_FORGET => ("forget", 0),
        _ => {
            // Not a record: show the word as an index slot would read it.
            let w = word(&hdr, 0);
            b.add("word", format!("{w:#018x}"));
            if w == SLOT_FORGOTTEN {
                b.add("as index slot", "a forgotten key");
            } else if w != SLOT_EMPTY {
                b.add(
                    "as index slot",
                    format!("record at {}, tag {:#08x}", slot_offset(w), w & 0xff_ffff),
                );
            }
            b.add("kind byte", h.kind);
            return Ok((
                "not a log record (unknown kind); an index slot or free space?".into(),
                false,
            ));
        }
    };
    let val_len = h.val_len.get() as u64;
    b.add("kind", kind);
    b.add("seq", h.seq.get());
    b.add("prev", h.prev.get());
    if h.flags & FLAG_MOVED != 0 {
        b.add("flags", "moved (a copy made by compaction)");
    }
    b.add("key_len", key_len);
    b.add("val_len", val_len);
    let payload_len = key_len + val_len;
    if off + HEADER_SIZE as u64 + payload_len > len
        || payload_len > (MAX_VALUE_LEN + MAX_KEY_LEN) as u64
    {
        b.add("check", "record runs past the end of the file");
        return Ok((format!("log record: {kind}"), false));
    }
    let payload = read_at(file, path, off + HEADER_SIZE as u64, payload_len as usize)?;
    let (key, val) = payload.split_at(key_len as usize);
    let computed = record_crc(&h, key, val);
    let ok = computed == h.crc.get();
    b.add(
        "check",
        if ok {
            format!("checksum ok ({computed:#010x})")
        } else {
            format!(
                "checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                h.crc.get()
            )
        },
    );
    match h.kind {
        KIND_PUT | KIND_DELETE => {
            b.add("key", escape(key));
            if h.kind == KIND_PUT {
                b.add("value", escape(val));
            }
        }
        KIND_COMMIT if val.len() == COMMIT_BODY_SIZE => {
            let c: CommitBody = bytemuck::pod_read_unaligned(val);
            b.add("txn_start", c.txn_start.get());
            b.add("n_records", c.n_records.get());
            b.add("chain_crc", format!("{:#010x}", c.chain_crc.get()));
        }
        KIND_INDEX if val.len() == NEXT_BODY_SIZE => {
            let n: NextBody = bytemuck::pod_read_unaligned(val);
            b.add("new table log2", n.offset.get());
            b.add("finish the move under way first", n.len.get() == 1);
        }
        KIND_FORGET if val.len() % 8 == 0 => {
            let offs: Vec<String> = val
                .chunks_exact(8)
                .take(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()).to_string())
                .collect();
            let more = if val.len() > 64 { ", …" } else { "" };
            b.add("deletes forgotten", val.len() / 8);
            b.add("at", format!("{}{more}", offs.join(", ")));
        }
        KIND_NEXT | KIND_RETIRE if val.len() == NEXT_BODY_SIZE => {
            let n: NextBody = bytemuck::pod_read_unaligned(val);
            let what = if h.kind == KIND_NEXT {
                "next extent"
            } else {
                "retired extent"
            };
            b.add(what, n.offset.get());
            b.add("extent len", n.len.get());
        }
        _ => b.add("body", "wrong length for its kind"),
    }
    b.add(
        "next record",
        off + record_size(key_len as usize, val_len as usize),
    );
    Ok((format!("log record: {kind}"), ok))
}

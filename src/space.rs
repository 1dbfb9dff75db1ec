//! Where everything lives in the data area: which page-aligned ranges are
//! log extents (and how many of their bytes are still the newest version of
//! some key), which were retired by compaction and wait until no snapshot
//! and no checkpoint needs them, and which are free for reuse. Index tables
//! are not listed: the state names them.
//!
//! The writer keeps this list in its own memory, and publishes it with the
//! state (into the working copy the state names) and with each checkpoint
//! (into the copy the meta page names). Recovery starts from the
//! checkpoint's copy and replays what the log says: next records claim
//! extents, retire records retire them. See docs/DESIGN.md, "Space".

use crate::format::*;
use crate::storage::Mapping;

/// What a range is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// A log extent. `live`: bytes of its records that are the newest
    /// version of their key (what compaction would copy). `sealed`: the
    /// log has left it (a next record ends it), with commit `last_seq`.
    Log {
        live: u64,
        sealed: bool,
        last_seq: u64,
    },
    /// Retired by commit `seq`: no snapshot at `seq` or later reads it.
    Retired {
        seq: u64,
    },
    Free,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub off: u64,
    pub len: u64,
    pub use_: Use,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// The list, sorted by offset, ranges never overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Space {
    pub list: Vec<Extent>,
}

/// Why a stored extent table was rejected.
pub(crate) type Bad = String;

impl Space {
    /// The entry containing `off`.
    pub fn find(&self, off: u64) -> Option<usize> {
        let i = self.list.partition_point(|e| e.off <= off);
        (i > 0 && off < self.list[i - 1].end()).then(|| i - 1)
    }

    /// Adds `delta` bytes to the live count of the log extent holding `off`
    /// (nothing for a retired extent).
    pub fn add_live(&mut self, off: u64, delta: i64) {
        if let Some(i) = self.find(off) {
            if let Use::Log { live, .. } = &mut self.list[i].use_ {
                *live = live.saturating_add_signed(delta);
            }
        }
    }

    /// The lowest free range of at least `len` bytes.
    pub fn lowest_free(&self, len: u64) -> Option<Extent> {
        self.list
            .iter()
            .find(|e| e.use_ == Use::Free && e.len >= len)
            .copied()
    }

    /// The lowest free range of at least `len` bytes: it (or its first
    /// `len` bytes) becomes `use_`, or is dropped from the list if `use_`
    /// is `None` (an index table).
    pub fn take_free(&mut self, len: u64, use_: Option<Use>) -> Option<u64> {
        let off = self.lowest_free(len)?.off;
        self.claim(off, len, use_, false).ok()?;
        Some(off)
    }

    /// Marks `[off, off + len)`, which must lie inside one free range (or
    /// past every entry), as `use_` (or unlisted). Replay may also claim
    /// retired space (`retired_ok`): the writer that logged the extent had
    /// freed it, and died before it published that.
    pub fn claim(
        &mut self,
        off: u64,
        len: u64,
        use_: Option<Use>,
        retired_ok: bool,
    ) -> Result<(), Bad> {
        let end = off + len;
        let first = self.list.partition_point(|e| e.end() <= off);
        let last = self.list.partition_point(|e| e.off < end);
        let hit = &self.list[first..last];
        if hit.is_empty() {
            if let Some(u) = use_ {
                self.list.insert(first, Extent { off, len, use_: u });
            }
            return Ok(());
        }
        // The range may span several entries (free and, for replay,
        // retired ones next to each other), with no gap between them.
        let claimable = |e: &Extent| {
            e.use_ == Use::Free || (retired_ok && matches!(e.use_, Use::Retired { .. }))
        };
        let covered = hit[0].off <= off
            && hit[hit.len() - 1].end() >= end
            && hit.windows(2).all(|w| w[0].end() == w[1].off);
        let bad = hit.iter().find(|e| !claimable(e));
        if let Some(e) = bad.or((!covered).then_some(&hit[0])) {
            return Err(format!(
                "extent {off}..{end} is not free space (it overlaps {}..{})",
                e.off,
                e.end()
            ));
        }
        let (head, tail) = (hit[0], hit[hit.len() - 1]);
        let mut parts = Vec::with_capacity(3);
        if head.off < off {
            parts.push(Extent {
                off: head.off,
                len: off - head.off,
                use_: head.use_,
            });
        }
        if let Some(u) = use_ {
            parts.push(Extent { off, len, use_: u });
        }
        if end < tail.end() {
            parts.push(Extent {
                off: end,
                len: tail.end() - end,
                use_: tail.use_,
            });
        }
        self.list.splice(first..last, parts);
        Ok(())
    }

    /// Lists a range that was not listed (space past the old allocation
    /// end, or an index table that was retired).
    pub fn insert(&mut self, off: u64, len: u64, use_: Use) {
        let i = self.list.partition_point(|e| e.off < off);
        self.list.insert(i, Extent { off, len, use_ });
        self.coalesce();
    }

    /// Seals the log extent holding `off` (the log left it in commit `seq`).
    pub fn seal(&mut self, off: u64, seq: u64) {
        if let Some(i) = self.find(off) {
            if let Use::Log {
                sealed, last_seq, ..
            } = &mut self.list[i].use_
            {
                *sealed = true;
                *last_seq = seq;
            }
        }
    }

    /// Retires the log extent starting at `off` (commit `seq`); returns
    /// the last commit it held.
    pub fn retire(&mut self, off: u64, seq: u64) -> Option<u64> {
        let i = self.find(off)?;
        let e = &mut self.list[i];
        match e.use_ {
            Use::Log { last_seq, .. } if e.off == off => {
                e.use_ = Use::Retired { seq };
                Some(last_seq)
            }
            _ => None,
        }
    }

    /// Frees every range retired by a commit `<= upto`; returns them as
    /// `(off, len)`, as they were before joining their free neighbours.
    pub fn release(&mut self, upto: u64) -> Vec<(u64, u64)> {
        let mut freed = Vec::new();
        for e in &mut self.list {
            if matches!(e.use_, Use::Retired { seq } if seq <= upto) {
                e.use_ = Use::Free;
                freed.push((e.off, e.len));
            }
        }
        if !freed.is_empty() {
            self.coalesce();
        }
        freed
    }

    /// The oldest retirement still waiting, if any.
    pub fn oldest_retired(&self) -> Option<u64> {
        self.list
            .iter()
            .filter_map(|e| match e.use_ {
                Use::Retired { seq } => Some(seq),
                _ => None,
            })
            .min()
    }

    fn coalesce(&mut self) {
        let mut out: Vec<Extent> = Vec::with_capacity(self.list.len());
        for e in self.list.drain(..) {
            match out.last_mut() {
                Some(last)
                    if last.use_ == Use::Free && e.use_ == Use::Free && last.end() == e.off =>
                {
                    last.len += e.len;
                }
                _ => out.push(e),
            }
        }
        self.list = out;
    }

    /// Drops free ranges at the very end of the allocated space; returns
    /// the new allocation end.
    pub fn trim_end(&mut self, alloc_end: u64) -> u64 {
        let mut end = alloc_end;
        while let Some(last) = self.list.last() {
            if last.use_ == Use::Free && last.end() == end {
                end = last.off;
                self.list.pop();
            } else {
                break;
            }
        }
        end
    }

    /// Totals for stats and for the compaction trigger.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.list {
            match e.use_ {
                Use::Log { live, sealed, .. } => {
                    t.log_extents += 1;
                    if sealed {
                        t.sealed_bytes += e.len;
                        t.sealed_live += live.min(e.len);
                    }
                }
                Use::Retired { .. } => {
                    t.retired_extents += 1;
                    t.retired_bytes += e.len;
                }
                Use::Free => {
                    t.free_ranges += 1;
                    t.free_bytes += e.len;
                }
            }
        }
        t
    }

    /// The sealed log extent with the most bytes compaction would reclaim,
    /// if at least `min_dead` of its bytes are dead; only extents sealed
    /// by a commit before `seq` (the one choosing: its own records may lie
    /// in an extent it sealed).
    pub fn victim(&self, min_dead: f64, seq: u64) -> Option<Extent> {
        self.list
            .iter()
            .filter(|e| match e.use_ {
                Use::Log {
                    live,
                    sealed,
                    last_seq,
                } => {
                    sealed
                        && last_seq < seq
                        && live < e.len
                        && (e.len - live) as f64 >= min_dead * e.len as f64
                }
                _ => false,
            })
            .max_by_key(|e| match e.use_ {
                Use::Log { live, .. } => e.len - live.min(e.len),
                _ => 0,
            })
            .copied()
    }

    /// The highest sealed log extent (sealed before commit `seq`) that
    /// lies above a free range of at least `min_free` bytes.
    pub fn relocation_victim(&self, seq: u64, min_free: u64) -> Option<Extent> {
        let lowest_free = self.lowest_free(min_free)?.off;
        self.list
            .iter()
            .rev()
            .find(|e| {
                e.off > lowest_free
                    && matches!(e.use_, Use::Log { sealed: true, last_seq, .. } if last_seq < seq)
            })
            .copied()
    }

    /// The entries as stored: retired ranges are written as free when
    /// `retired_free` (a checkpoint: after a restart no snapshot is left
    /// that could read them).
    fn entries(&self, retired_free: bool) -> Vec<SpaceEntry> {
        self.list
            .iter()
            .map(|e| {
                let (kind, a, b) = match e.use_ {
                    Use::Log {
                        live,
                        sealed,
                        last_seq,
                    } => (SPACE_LOG, live, (last_seq << 16) | ((sealed as u64) << 8)),
                    Use::Retired { .. } if retired_free => (SPACE_FREE, 0, 0),
                    Use::Retired { seq } => (SPACE_RETIRED, seq, 0),
                    Use::Free => (SPACE_FREE, 0, 0),
                };
                SpaceEntry {
                    off: Le64::new(e.off),
                    len: Le64::new(e.len),
                    a: Le64::new(a),
                    b: Le64::new(b | kind as u64),
                }
            })
            .collect()
    }

    /// Writes the list at `at` (a table of [`SPACE_ENTRIES`] entries);
    /// returns the entry count and the CRC of the bytes written.
    pub fn store(&self, map: &Mapping, at: u64, retired_free: bool) -> (u32, u32) {
        let mut entries = self.entries(retired_free);
        if retired_free {
            let mut s = Space::default();
            for e in &entries {
                s.list.push(Extent {
                    off: e.off.get(),
                    len: e.len.get(),
                    use_: decode(e).unwrap_or(Use::Free),
                });
            }
            s.coalesce();
            entries = s.entries(false);
        }
        entries.truncate(SPACE_ENTRIES);
        let bytes: &[u8] = bytemuck::cast_slice(&entries);
        map.write_words(at, bytes);
        (entries.len() as u32, crc32fast::hash(bytes))
    }

    /// Reads `count` entries at `at`, checking their CRC if given and that
    /// every range lies in `[DATA_START, alloc_end)`, sorted, disjoint.
    pub fn load(
        map: &Mapping,
        at: u64,
        count: u64,
        crc: Option<u32>,
        alloc_end: u64,
    ) -> Result<Space, Bad> {
        if count > SPACE_ENTRIES as u64 {
            return Err(format!("extent table claims {count} entries"));
        }
        let mut bytes = vec![0u8; (count * SPACE_ENTRY_SIZE) as usize];
        map.read_words(at, &mut bytes);
        if let Some(crc) = crc {
            if crc32fast::hash(&bytes) != crc {
                return Err("extent table checksum mismatch".into());
            }
        }
        let mut s = Space::default();
        let mut prev_end = DATA_START;
        for (i, c) in bytes.chunks_exact(SPACE_ENTRY_SIZE as usize).enumerate() {
            let e: SpaceEntry = bytemuck::pod_read_unaligned(c);
            let (off, len) = (e.off.get(), e.len.get());
            let use_ = decode(&e).ok_or_else(|| format!("extent entry {i}: unknown kind"))?;
            let ok = off >= prev_end
                && off % PAGE_SIZE == 0
                && len > 0
                && len % PAGE_SIZE == 0
                && off.checked_add(len).is_some_and(|end| end <= alloc_end);
            if !ok {
                return Err(format!(
                    "extent entry {i} ({off}+{len}) is out of order or outside the data area"
                ));
            }
            prev_end = off + len;
            s.list.push(Extent { off, len, use_ });
        }
        Ok(s)
    }
}

fn decode(e: &SpaceEntry) -> Option<Use> {
    let b = e.b.get();
    Some(match (b & 0xff) as u32 {
        SPACE_LOG => Use::Log {
            live: e.a.get(),
            sealed: b & (1 << 8) != 0,
            last_seq: b >> 16,
        },
        SPACE_RETIRED => Use::Retired { seq: e.a.get() },
        SPACE_FREE => Use::Free,
        _ => return None,
    })
}

/// Sums over the list.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Totals {
    pub log_extents: u64,
    pub sealed_bytes: u64,
    pub sealed_live: u64,
    pub retired_extents: u64,
    pub retired_bytes: u64,
    pub free_ranges: u64,
    pub free_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn log(live: u64) -> Use {
        Use::Log {
            live,
            sealed: true,
            last_seq: 1,
        }
    }

    #[test]
    fn claims_split_free_ranges_and_release_coalesces() {
        let base = DATA_START;
        let mut s = Space::default();
        s.insert(base, 4 * M, Use::Free);
        assert_eq!(s.take_free(M, Some(log(0))), Some(base));
        assert_eq!(s.take_free(M, None), Some(base + M)); // a table: unlisted
        assert_eq!(s.list.len(), 2);
        assert!(s.claim(base + M / 2, M, Some(log(0)), false).is_err());
        // Replay may claim across a retired range and the free one after.
        let mut r = Space::default();
        r.insert(base, M, Use::Retired { seq: 3 });
        r.insert(base + M, 2 * M, Use::Free);
        assert!(r.claim(base, 2 * M, Some(log(0)), false).is_err());
        r.claim(base, 2 * M, Some(log(0)), true).unwrap();
        assert_eq!(r.list.len(), 2);
        assert_eq!((r.list[1].off, r.list[1].len), (base + 2 * M, M));
        s.insert(base + M, M, Use::Retired { seq: 7 });
        assert_eq!(s.release(6), vec![]);
        assert_eq!(s.release(7), vec![(base + M, M)]);
        // base+M..base+4M is one free range again.
        assert_eq!(s.list.len(), 2);
        assert_eq!(s.list[1].len, 3 * M);
        assert_eq!(s.trim_end(base + 4 * M), base + M);
        assert_eq!(s.list.len(), 1);
    }

    #[test]
    fn victims_are_the_deadest_sealed_extents() {
        let mut s = Space::default();
        s.insert(DATA_START, M, log(M / 2));
        s.insert(DATA_START + M, M, log(M / 10));
        s.insert(
            DATA_START + 2 * M,
            M,
            Use::Log {
                live: 0,
                sealed: false,
                last_seq: 0,
            },
        );
        assert_eq!(s.victim(0.3, 5).map(|e| e.off), Some(DATA_START + M));
        assert_eq!(s.victim(0.95, 5), None);
        assert_eq!(s.victim(0.3, 1), None, "sealed by the choosing commit");
        s.add_live(DATA_START + M + 100, -((M / 10) as i64));
        assert_eq!(s.retire(DATA_START + M, 9), Some(1));
        assert_eq!(s.oldest_retired(), Some(9));
    }
}

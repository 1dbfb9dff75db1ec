//! Compaction steps: emptying an extent by copying its live records to the tail.

use super::WriteTxn;
use crate::engine::{extent_size, PREFETCH_AHEAD};
use crate::error::Result;
use crate::format::*;
use crate::index::Fenced;
use crate::log;
use crate::space::Use;

/// How compaction picks the extent to empty.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Choose {
    /// The sealed extent with the most dead bytes, at least this fraction.
    Dead(f64),
    /// The highest sealed extent above free space that could hold a log
    /// extent (moving live data down, so the end of the file can go).
    Relocate,
}

/// What one compaction step did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Step {
    pub bytes: u64,
    pub records: u64,
    /// An extent was being emptied (false: nothing to do).
    pub active: bool,
    /// Deletes forgotten instead of copied.
    pub forgotten: u64,
}

/// Automatic compaction waits until sealed extents hold this much.
const AUTO_COMPACT_MIN: u64 = 2 << 20;

/// An automatic compaction step walks and copies at most this many times
/// the bytes of the commit it rides in (docs/DESIGN.md, "Compaction"): the
/// log then shrinks whenever the victim is more than a quarter dead.
const AUTO_COMPACT_FACTOR: u64 = 4;

/// ... and at least this much, so that a commit of one small put still
/// passes a few records.
const AUTO_COMPACT_FLOOR: u64 = 1 << 10;

impl<'s> WriteTxn<'s> {
    /// One step of compaction, inside this transaction: copies up to
    /// `budget` bytes of the records that are the newest version of their
    /// key out of the extent being emptied (choosing the sealed extent
    /// with the most dead bytes, at least `min_dead` of it, if none is),
    /// and retires the extent once all are copied. A key this transaction
    /// wrote is not copied (its new record supersedes). Returns the bytes
    /// copied and whether an extent was being emptied at all.
    ///
    /// A record that does not read back ends the step with an error
    /// (`strict`), or takes the extent out of the candidates.
    pub(crate) fn compact_step(
        &mut self,
        budget: u64,
        choose: Choose,
        strict: bool,
    ) -> Result<Step> {
        let from = self.forgotten.len();
        let step = self.compact_walk(budget, choose, strict, from)?;
        if self.forgotten.len() > from {
            let body: Vec<u8> = self.forgotten[from..]
                .iter()
                .flat_map(|off| off.to_le_bytes())
                .collect();
            let at = self.reserve(record_size(0, body.len()))?;
            self.write_body_record(at, KIND_FORGET, &body)?;
        }
        Ok(step)
    }

    /// The walk of [`compact_step`](Self::compact_step); the deletes it
    /// forgets are pushed to `self.forgotten` after `from`.
    fn compact_walk(
        &mut self,
        budget: u64,
        choose: Choose,
        strict: bool,
        from: usize,
    ) -> Result<Step> {
        let mut step = Step::default();
        self.prepare_index()?;
        if self.base.old_index_log2 != 0 && self.index_move.is_none() && strict {
            // `compact()` does not wait for the move: this commit ends it.
            let finish = log::IndexMove {
                log2: 0,
                finish: true,
            };
            self.log_index_move(finish, 0)?;
            step.active = true;
            return Ok(step);
        }
        if self.index_move.is_some() {
            // This commit starts a move (a grown or, after mass deletes, a
            // cleaner table). `compact()` commits it and finishes the move
            // with its next step; dropping it instead made `compact()` stop
            // at once, with nothing compacted, on every store whose deletes
            // call for a cleaner table.
            step.active = strict;
            return Ok(step);
        }
        if self.base.old_index_log2 != 0 {
            return Ok(step); // not while the index moves (DESIGN.md)
        }
        let seq = self.seq();
        // The oldest snapshot any process has open, looked up once it
        // matters: for the choice of an extent, or once a delete could be
        // forgotten (one no snapshot can see past is not copied).
        let mut oldest: Option<u64> = None;
        if self.base.victim_off == 0 {
            let chosen = match choose {
                // Only extents no newer than the oldest snapshot open (none
                // while the store is pinned). What compaction retires is
                // freed only once that snapshot ends, whichever extent it
                // empties; and a newer extent may hold the copies of deletes
                // it could not forget (that snapshot may still need them),
                // which count as dead, so it would copy them again and
                // again. `compact()` beside a snapshot from before half the
                // keys were deleted copied 65x the live bytes and grew the
                // file from 12.6 to 136 MB (tests/compaction.rs).
                Choose::Dead(min_dead) => self.w.space.victim(min_dead, seq).and_then(|_| {
                    let oldest = *oldest.get_or_insert_with(|| self.shared.oldest_snapshot());
                    self.w
                        .space
                        .victim(min_dead, seq.min(oldest.saturating_add(1)))
                }),
                Choose::Relocate => self
                    .w
                    .space
                    .relocation_victim(seq, extent_size(&self.base, 0)),
            };
            let Some(e) = chosen else {
                return Ok(step);
            };
            self.base.victim_off = e.off;
            self.base.victim_pos = e.off;
        }
        let victim = self.base.victim_off;
        let e = match self.w.space.find(victim).map(|i| self.w.space.list[i]) {
            Some(e) if e.off == victim && matches!(e.use_, Use::Log { sealed: true, .. }) => e,
            _ => {
                self.base.victim_off = 0;
                return Ok(step);
            }
        };
        step.active = true;
        let map = self.map.clone();
        let mut pos = self.base.victim_pos.clamp(e.off, e.end());
        let mut buf = Vec::new();
        // The index slots of the next few records are prefetched (`lead`
        // records from `pos` to `ahead`): each record's check is a random
        // slot read, and overlapping those misses is most of the speed.
        let table = self.base.table();
        let fence = self.base.fence();
        let (mut ahead, mut lead) = (pos, 0);
        // `compact()` (strict) bounds a step by what it copies. A step
        // inside a user's commit also counts what it walks: each record
        // passed is a header read and an index probe, and a wholly dead
        // extent would otherwise be walked to its end in one commit.
        let mut walked = 0;
        while step.bytes + if strict { 0 } else { walked } < budget
            && self.forgotten.len() - from < MAX_FORGET
        {
            ahead = ahead.max(pos);
            while lead < PREFETCH_AHEAD {
                // (A next record or an unreadable one: the loop below decides.)
                let Ok(r) = log::read_header(&map, &fence, ahead, e.end()) else {
                    break;
                };
                if r.kind == KIND_NEXT {
                    break;
                }
                if matches!(r.kind, KIND_PUT | KIND_DELETE) {
                    table.prefetch(&map, hash_key(self.shared.seed, r.key(&map)));
                }
                ahead += r.size();
                lead += 1;
            }
            lead = lead.saturating_sub(1);
            let rec = match log::read_record(&map, &fence, pos, e.end()) {
                Ok(r) if r.seq < seq => r,
                Ok(_) | Err(_) => {
                    let e2 = self
                        .shared
                        .corrupted(pos, "compaction: unreadable record in a sealed log extent");
                    if strict {
                        return Err(e2);
                    }
                    // Leave the extent alone from now on; verify reports it.
                    if let Some(Use::Log { sealed, .. }) = self
                        .space_mut()
                        .find(victim)
                        .map(|i| &mut self.w.space.list[i].use_)
                    {
                        *sealed = false;
                    }
                    self.base.victim_off = 0;
                    return Ok(step);
                }
            };
            if rec.kind == KIND_NEXT {
                let body = NextBody {
                    offset: Le64::new(e.off),
                    len: Le64::new(e.len),
                };
                let at = self.reserve(NEXT_RECORD_SIZE)?;
                self.write_body_record(at, KIND_RETIRE, bytemuck::bytes_of(&body))?;
                self.retired.push((e.off, e.len));
                return Ok(step);
            }
            if matches!(rec.kind, KIND_PUT | KIND_DELETE) {
                let key = rec.key(&map);
                let hash = hash_key(self.shared.seed, key);
                let newest = self.pending_of(hash, key).is_none()
                    && self
                        .shared
                        .head(&map, &Fenced { map: &map, fence }, &self.base, key)?
                        .is_some_and(|h| h.off == rec.off);
                let forget = newest
                    && rec.kind == KIND_DELETE
                    && rec.seq <= *oldest.get_or_insert_with(|| self.shared.oldest_snapshot());
                if forget {
                    self.forgotten.push(rec.off);
                    step.forgotten += 1;
                } else if newest {
                    buf.clear();
                    buf.extend_from_slice(key);
                    buf.extend_from_slice(rec.value(&map));
                    let (k, v) = buf.split_at(rec.key_len);
                    // (An alignment the key cannot give is a damaged flag:
                    // the copy goes anywhere.)
                    let align = value_align(rec.flags);
                    let fits = rec.key_len as u64 % align.min(RECORD_ALIGN) == 0;
                    if rec.kind == KIND_PUT && align > 1 && fits {
                        self.append_aligned(FLAG_MOVED, hash, rec.off, k, v, align)?;
                    } else {
                        self.append_flags(rec.kind, FLAG_MOVED, hash, rec.off, k, v)?;
                    }
                    step.bytes += rec.size();
                    step.records += 1;
                    self.moved += rec.size();
                }
            }
            pos += rec.size();
            walked += rec.size();
            self.base.victim_pos = pos;
        }
        Ok(step)
    }

    /// Moves the log on to the lowest free range that can hold a log
    /// extent, if that lies below the extent the log is in (compaction,
    /// so the extent it leaves can be relocated). Returns whether it did.
    pub(crate) fn jump_down(&mut self) -> Result<bool> {
        let len = extent_size(&self.base, 0);
        let tail_extent = self
            .w
            .space
            .find(self.cur.pos)
            .map_or(0, |i| self.w.space.list[i].off);
        let lower = self
            .w
            .space
            .lowest_free(len)
            .is_some_and(|e| e.off < tail_extent);
        if !lower {
            return Ok(false);
        }
        self.next_extent(len)?;
        Ok(true)
    }

    /// Automatic compaction (docs/DESIGN.md, "Compaction"): when dead
    /// bytes pass the store's threshold, each commit walks and copies up to
    /// four times its own bytes (at least 1 KiB) of the deadest extent,
    /// plus enough to give back what it makes dead itself and keep the
    /// dead share at the threshold.
    pub(super) fn auto_compact(&mut self) -> Result<()> {
        let t = self.w.space.totals();
        let dead = t.sealed_bytes - t.sealed_live;
        let working = self.base.victim_off != 0;
        let threshold = self.shared.compact_threshold;
        let due =
            t.sealed_bytes >= AUTO_COMPACT_MIN && dead as f64 >= threshold * t.sealed_bytes as f64;
        if working || due {
            // A victim at least `t` dead gives back `t` of what is walked,
            // and the budget counts copied bytes twice (walked, then
            // copied): `(2 - t) / t` of budget gives back a byte. A commit
            // that kills `K` bytes (the values it replaces or deletes, and
            // its own delete records) gets enough to give back `K / (1 -
            // t)`: what it killed, and enough more that the dead share
            // stays at `t` while the live bytes shrink. So a burst pays
            // for its own garbage as it makes it (a delete wave used to
            // leave it for later commits, in proportion to their size).
            let per_killed = (2.0 - threshold) / (threshold * (1.0 - threshold));
            let for_killed = (self.killed as f64 * per_killed) as u64;
            let budget = (AUTO_COMPACT_FACTOR * self.bytes + for_killed).max(AUTO_COMPACT_FLOOR);
            let choose = Choose::Dead(self.shared.compact_threshold);
            self.compact_step(budget, choose, false)?;
        }
        Ok(())
    }
}

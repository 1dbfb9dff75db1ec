//! The live header: the newest published state, shared by every process
//! through the mapping (page 2 of the file).
//!
//! Two state slots and a `current` generation: the writer fills the slot
//! that is *not* current, then makes it current with one `Release` store.
//! A reader loads `current`, reads that slot and checks (seqlock style) that
//! the slot's generation did not change meanwhile. A writer that dies in the
//! middle of publishing only ever damaged the non-current slot, so readers
//! never block on it and never see a half-written state.

use std::sync::atomic::{fence, Ordering};

use crate::format::LIVE_OFFSET;
use crate::storage::Mapping;

const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"MKVLIVE1");
const OFF_MAGIC: u64 = LIVE_OFFSET;
const OFF_CURRENT: u64 = LIVE_OFFSET + 8;
/// Bumped after every publish; waiters sleep on it (a futex on its low 32
/// bits). Native-endian, meaningful only while processes share the file.
const OFF_NOTIFY: u64 = LIVE_OFFSET + 16;
/// How many waiters may be asleep on `OFF_NOTIFY`: a publish makes the
/// wake system call only when this is not zero.
const OFF_WAITERS: u64 = LIVE_OFFSET + 24;
/// Bumped after every `init`, once its writer holds `Live`: a handle that
/// opened with no live header learns from a change here that a writer has
/// since set one up.
const OFF_INCARNATION: u64 = LIVE_OFFSET + 32;
/// +1 each time a handle takes the writer lock (`writer_turn`).
const OFF_WRITER_TURNS: u64 = LIVE_OFFSET + 40;
const SLOT_BASE: u64 = LIVE_OFFSET + 64;
const SLOT_WORDS: u64 = 32;
const STATE_WORDS: usize = 28;
/// A slot generation that no published state has: "being written".
const WRITING: u64 = u64::MAX;

/// Everything a writer or reader needs to know about the newest commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Last commit.
    pub seq: u64,
    /// Where the next record goes, and the end of its extent.
    pub tail: u64,
    pub tail_end: u64,
    /// First byte never handed out.
    pub alloc_end: u64,
    pub index_off: u64,
    pub index_log2: u64,
    pub index_used: u64,
    pub key_count: u64,
    pub live_bytes: u64,
    pub log_bytes: u64,
    /// Length of the file; a reader remaps before touching more.
    pub file_len: u64,
    /// Log up to here is durable (an `Immediate` commit or a sync ended
    /// here); anything after was committed `Eventual`ly.
    pub synced_tail: u64,
    /// `log_bytes` at the last checkpoint, to space checkpoints.
    pub ckpt_log_bytes: u64,
    /// Generation of the newest meta page, and whether it says "clean".
    pub meta_gen: u64,
    pub meta_clean: u64,
    /// While the index moves to a larger (or cleaner) table: the old
    /// table (`old_index_log2 == 0`: none) and the next slot to move.
    pub old_index_off: u64,
    pub old_index_log2: u64,
    pub migrate_next: u64,
    /// Keys with a value still only in the old table (an upper bound).
    pub migrate_left: u64,
    /// The working extent table (0 or 1) and its entry count.
    pub space_at: u64,
    pub space_n: u64,
    /// The commit of the last checkpoint.
    pub ckpt_seq: u64,
    /// Changes of commits after this one are all in the log.
    pub history_seq: u64,
    /// The extent compaction is emptying (0: none) and how far it got.
    pub victim_off: u64,
    pub victim_pos: u64,
    /// The last commit that retired an extent, and the bytes retired and
    /// copied by compaction since the store was created.
    pub last_compact_seq: u64,
    pub retired_total: u64,
    pub moved_total: u64,
}

impl State {
    fn to_words(self) -> [u64; STATE_WORDS] {
        [
            self.seq,
            self.tail,
            self.tail_end,
            self.alloc_end,
            self.index_off,
            self.index_log2,
            self.index_used,
            self.key_count,
            self.live_bytes,
            self.log_bytes,
            self.file_len,
            self.synced_tail,
            self.ckpt_log_bytes,
            self.meta_gen,
            self.meta_clean,
            self.old_index_off,
            self.old_index_log2,
            self.migrate_next,
            self.space_at,
            self.space_n,
            self.ckpt_seq,
            self.history_seq,
            self.victim_off,
            self.victim_pos,
            self.last_compact_seq,
            self.retired_total,
            self.moved_total,
            self.migrate_left,
        ]
    }
    fn from_words(w: [u64; STATE_WORDS]) -> State {
        State {
            seq: w[0],
            tail: w[1],
            tail_end: w[2],
            alloc_end: w[3],
            index_off: w[4],
            index_log2: w[5],
            index_used: w[6],
            key_count: w[7],
            live_bytes: w[8],
            log_bytes: w[9],
            file_len: w[10],
            synced_tail: w[11],
            ckpt_log_bytes: w[12],
            meta_gen: w[13],
            meta_clean: w[14],
            old_index_off: w[15],
            old_index_log2: w[16],
            migrate_next: w[17],
            space_at: w[18],
            space_n: w[19],
            ckpt_seq: w[20],
            history_seq: w[21],
            victim_off: w[22],
            victim_pos: w[23],
            last_compact_seq: w[24],
            retired_total: w[25],
            moved_total: w[26],
            migrate_left: w[27],
        }
    }
}

fn slot_base(gen: u64) -> u64 {
    SLOT_BASE + (gen & 1) * SLOT_WORDS * 8
}

/// Writes a fresh live header holding `state` (the writer, at open).
pub(crate) fn init(map: &Mapping, state: &State) {
    for g in 0..2 {
        write_slot(map, g, state);
    }
    map.store(OFF_CURRENT, 1, Ordering::Release);
    map.store(OFF_MAGIC, LIVE_MAGIC, Ordering::Release);
    // Waiters counted before this init belong to processes that are gone
    // (no handle held the live header).
    map.counter(OFF_WAITERS).store(0, Ordering::SeqCst);
    notify(map);
}

/// Tells handles that opened offline that a live header is set up: called
/// by the writer that set it up, once it holds the `Live` lock.
pub(crate) fn new_incarnation(map: &Mapping) {
    map.counter(OFF_INCARNATION).fetch_add(1, Ordering::SeqCst);
}

/// The incarnation of the live header: changes whenever a writer sets up a
/// fresh one (after recovery).
pub(crate) fn incarnation(map: &Mapping) -> u64 {
    map.counter(OFF_INCARNATION).load(Ordering::SeqCst)
}

/// Counts a turn of the writer lock, which the caller holds, and returns
/// how many turns came before it. A writer whose turn is not the one right
/// after its own last turn knows another handle (in any process, perhaps
/// dead now) wrote in between, perhaps past the published state.
pub(crate) fn writer_turn(map: &Mapping) -> u64 {
    map.counter(OFF_WRITER_TURNS).fetch_add(1, Ordering::SeqCst)
}

/// Wakes everyone waiting for a commit (they re-check the state).
fn notify(map: &Mapping) {
    map.counter(OFF_NOTIFY).fetch_add(1, Ordering::SeqCst);
    // Dekker with `Waiter`: a waiter counts itself, then reads the notify
    // counter and the state; we bumped the counter after publishing, then
    // read the waiter count. Both sides are SeqCst, so either we see the
    // waiter (and wake it) or it sees the new state (and does not sleep).
    if map.counter(OFF_WAITERS).load(Ordering::SeqCst) != 0 {
        map.wake(OFF_NOTIFY);
    }
}

/// A waiter for the next publish, in any process. Counted in the live
/// header while it lives (when `counted`: the handle can write the file),
/// so that publishes know to wake it.
pub(crate) struct Waiter<'m> {
    map: &'m Mapping,
    counted: bool,
}

impl<'m> Waiter<'m> {
    pub(crate) fn new(map: &'m Mapping, counted: bool) -> Waiter<'m> {
        if counted {
            map.counter(OFF_WAITERS).fetch_add(1, Ordering::SeqCst);
        }
        Waiter { map, counted }
    }

    /// The notify counter, to read *before* checking the state.
    pub(crate) fn ticket(&self) -> u32 {
        self.map.counter(OFF_NOTIFY).load(Ordering::SeqCst) as u32
    }

    /// Sleeps until a publish after `ticket` was taken (or `timeout`, or
    /// spuriously). An uncounted waiter is never woken by a publish, so it
    /// sleeps in short slices and the caller re-checks.
    pub(crate) fn sleep(&self, ticket: u32, timeout: Option<std::time::Duration>) {
        let timeout = if self.counted {
            timeout
        } else {
            Some(timeout.map_or(UNCOUNTED_SLICE, |t| t.min(UNCOUNTED_SLICE)))
        };
        self.map.wait(OFF_NOTIFY, ticket, timeout);
    }
}

/// How often a waiter that cannot count itself (its handle cannot write
/// the file) looks again.
const UNCOUNTED_SLICE: std::time::Duration = std::time::Duration::from_millis(10);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.counted {
            // Saturating: `init` may have reset the count under us.
            let c = self.map.counter(OFF_WAITERS);
            let _ = c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }
}

fn write_slot(map: &Mapping, gen: u64, state: &State) {
    let base = slot_base(gen);
    map.store(base, WRITING, Ordering::Relaxed);
    fence(Ordering::Release);
    for (i, w) in state.to_words().into_iter().enumerate() {
        map.store(base + 8 * (i as u64 + 1), w, Ordering::Relaxed);
    }
    map.store(base, gen, Ordering::Release);
}

/// Publishes `state` as the newest (the writer, under the writer lock).
pub(crate) fn publish(map: &Mapping, state: &State) {
    let next = map.load(OFF_CURRENT, Ordering::Relaxed).wrapping_add(1);
    write_slot(map, next, state);
    map.store(OFF_CURRENT, next, Ordering::Release);
    notify(map);
}

/// The generation of the current state: changes with every publish.
pub(crate) fn generation(map: &Mapping) -> u64 {
    map.load(OFF_CURRENT, Ordering::Acquire)
}

/// The newest published state, or `None` if no live header was ever
/// written to this file (or it is damaged and never settles).
pub(crate) fn read(map: &Mapping) -> Option<State> {
    if map.load(OFF_MAGIC, Ordering::Acquire) != LIVE_MAGIC {
        return None;
    }
    // Bounded: a live writer finishes a publish in nanoseconds; a header
    // that never settles is damaged, and the caller reports it.
    for _ in 0..SPIN_LIMIT {
        let gen = map.load(OFF_CURRENT, Ordering::Acquire);
        let base = slot_base(gen);
        if map.load(base, Ordering::Acquire) != gen {
            std::hint::spin_loop();
            continue;
        }
        let mut w = [0u64; STATE_WORDS];
        for (i, x) in w.iter_mut().enumerate() {
            *x = map.load(base + 8 * (i as u64 + 1), Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if map.load(base, Ordering::Relaxed) == gen {
            return Some(State::from_words(w));
        }
    }
    None
}

const SPIN_LIMIT: u32 = 1 << 24;

//! Idle-time work: a thread per read-write handle that, once no write
//! transaction has begun for a while, does the checkpoint slices and the
//! punching the next write transactions would otherwise do.
//!
//! A burst (a wave of deletes, a bulk load) leaves work behind it: a
//! checkpoint of an index it dirtied all over, then the extents it retired
//! to free and punch. Write transactions do that work a slice at a time
//! (`refresh_writer`), so without this thread the first few dozen commits
//! after a burst each carry 2-3 ms of it. The thread does the same slices,
//! through the same code (a write transaction begun and dropped), in the
//! gaps between the store's commits. It never waits for the writer lock:
//! a commit that arrives while it holds the lock waits for one slice at
//! most, no longer than it would have taken to do that slice itself.

use super::Shared;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The writer counts as idle once no write transaction has begun for this
/// long (commits in a loop begin within microseconds of each other).
const IDLE: Duration = Duration::from_millis(2);

/// While the writer is busy the thread looks again after at most this.
/// At 50 ms the thread slept through a good part of the gap after a burst
/// (the comparison's delete wave leaves ~90 ms of checkpoint and punching,
/// and its gap is 65-100 ms), and the commits after it did the rest: 15-26
/// of them at 2.5-5 ms in three runs of a probe, against 3-12 at 5 ms. A
/// look costs a wakeup: 200 a second at most, and only while work is due.
const RECHECK_MAX: Duration = Duration::from_millis(5);

/// The part of the idle-time work that lives in [`Shared`].
#[derive(Default)]
pub(crate) struct Idle {
    /// The store, for the thread to start with, once the handle is
    /// enabled (`start`): the thread starts the first time work is due,
    /// so a handle that never leaves any (a reader, a `kvctl get`) never
    /// pays for a thread.
    me: OnceLock<Weak<Shared>>,
    /// Work the idle thread could do is waiting (set by write
    /// transactions, cleared by the thread when a turn does nothing).
    due: AtomicBool,
    /// Takers of the writer lock (other than the thread) that have not
    /// let go of it yet, and when one last began or ended, in ns after
    /// `epoch`: the writer is idle once none is active and that was
    /// `IDLE` ago. (A commit that runs longer than `IDLE` is not a gap.)
    active: AtomicUsize,
    last_write: AtomicU64,
    epoch: OnceLock<Instant>,
    stop: AtomicBool,
    /// The thread, once started (taken by the guard that stops it).
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Idle {
    fn now(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    fn enabled(&self) -> bool {
        self.me.get().is_some()
    }

    /// A taker of the writer lock is about to take it.
    pub(crate) fn writing(&self) {
        if self.enabled() {
            self.active.fetch_add(1, Ordering::AcqRel);
            self.last_write.store(self.now(), Ordering::Release);
        }
    }

    /// ... and has let go of it (or never got it).
    pub(crate) fn wrote(&self) {
        if self.enabled() {
            self.last_write.store(self.now(), Ordering::Release);
            // (Saturating, should a take before `start` end after it.)
            let _ = self
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// How long the writer has been idle (zero while someone holds it).
    fn quiet(&self) -> Duration {
        if self.active.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(
            self.now()
                .saturating_sub(self.last_write.load(Ordering::Acquire)),
        )
    }

    /// Whether idle-time work is waiting, as the taker of the writer lock
    /// found it; wakes the thread if it just became so, starting it the
    /// first time.
    pub(crate) fn set_due(&self, due: bool) {
        if !due {
            self.due.store(false, Ordering::Release);
            return;
        }
        if self.due.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.get() else {
            return;
        };
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = thread.as_ref() {
            t.thread().unpark();
        } else if !self.stop.load(Ordering::Acquire) {
            let weak = me.clone();
            // A thread that cannot start leaves the work to write
            // transactions, as with `idle_work(false)`.
            *thread = std::thread::Builder::new()
                .name("mapkv-idle".into())
                .spawn(move || run(weak))
                .ok();
        }
    }
}

/// Stops and joins the idle thread when the last clone of a `Store`
/// drops, before that `Store`'s reference to [`Shared`] goes: the store
/// then closes in the thread that drops it, never later in the idle one.
pub(crate) struct IdleGuard {
    shared: Arc<Shared>,
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        let idle = &self.shared.idle;
        let thread = {
            let mut thread = idle.thread.lock().unwrap_or_else(|e| e.into_inner());
            idle.stop.store(true, Ordering::Release);
            thread.take()
        };
        if let Some(t) = thread {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Enables idle-time work for `shared`: its thread starts when work is
/// first due. The guard goes in the `Store`.
pub(crate) fn start(shared: &Arc<Shared>) -> IdleGuard {
    let _ = shared.idle.me.set(Arc::downgrade(shared));
    IdleGuard {
        shared: shared.clone(),
    }
}

fn run(weak: Weak<Shared>) {
    let mut recheck = IDLE;
    loop {
        // Holds the store only for a turn: the guard joins this thread
        // before the last `Store` lets go of its own reference.
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let idle = &shared.idle;
        if idle.stop.load(Ordering::Acquire) {
            return;
        }
        if !idle.due.load(Ordering::Acquire) {
            drop(shared);
            std::thread::park();
            continue;
        }
        if idle.quiet() < IDLE {
            drop(shared);
            std::thread::park_timeout(recheck);
            recheck = (recheck * 2).min(RECHECK_MAX);
            continue;
        }
        recheck = IDLE;
        // One turn: a write transaction's start, and nothing else. A
        // turn that does nothing clears `due` (under the writer lock, so
        // a commit after it sets it again).
        match shared.idle_turn() {
            Ok(true) => {}
            // Someone holds the writer lock: not idle after all.
            Ok(false) => {
                drop(shared);
                std::thread::park_timeout(IDLE);
            }
            // The next write transaction meets the same error and reports
            // it; until then there is nothing to do here.
            Err(_) => idle.due.store(false, Ordering::Release),
        }
    }
}

//! Fault injection for the real (file) backend: make the next `fallocate`,
//! `ftruncate`, log `pwrite` or `msync` fail, to test what a store does when
//! the system says no. Errors are injected where the backend calls the
//! system, so everything above it — the engine, the commit protocol — runs
//! as it would on a real failure.
//!
//! ```
//! use mapkv::{faults::Faults, Options};
//! # let dir = tempfile::tempdir()?;
//! let faults = Faults::new();
//! let store = Options::new().faults(faults.clone()).open(dir.path().join("f.kv"))?;
//! store.put(b"k", b"v")?;
//! faults.fail_msync(1);
//! assert!(store.put(b"k", b"w").is_err());       // the flush failed
//! assert!(store.put(b"k", b"x").is_err());       // poisoned until reopened
//! assert_eq!(store.get(b"k")?, Some(b"v".to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Public with the `testing` feature; without it the engine keeps its
//! (never armed) points and nothing can inject a failure.

// Without `testing` nothing outside the crate can arm a fault.
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A shared plan of failures; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Plan>);

#[derive(Debug, Default)]
struct Plan {
    fallocate: AtomicU32,
    ftruncate: AtomicU32,
    write: AtomicU32,
    msync: AtomicU32,
    /// Whether a pause point is armed: the engine's check is one load.
    pause_armed: AtomicBool,
    pause: Mutex<PauseState>,
    pause_changed: Condvar,
    /// How often each point was reached, armed or not.
    reached: Mutex<Vec<(PausePoint, u64)>>,
}

/// A place in the engine where a test can hold the thread that reaches it,
/// to run something else at exactly that instant: a race made
/// deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PausePoint {
    /// In `Store::compact()`, when it holds the store alone and has moved
    /// the index table down: after the new table is published and the
    /// reader table scanned, before the old table's space is freed (and
    /// then cut off the file).
    BeforeOldIndexFreed,
    /// In `Store::compact()`, right after it looked for open snapshots
    /// before freeing the index table it moved away from — wherever that
    /// look is, and whatever it found. A snapshot begun here must read the
    /// new table; a publish that came after the look would leave it on
    /// the old one, about to be freed.
    AfterRelocationScan,
    /// In the thread that reads a cold store into memory after an open
    /// (`Options::warm_on_open`), before it reads anything.
    Warming,
    /// In `Store::wait_for_commit`, once it found no newer commit and is
    /// about to sleep (a commit from here on wakes it or makes the sleep
    /// return at once).
    CommitWaitSleeps,
    /// In `WriteTxn::commit`, once the commit is in the log (durable if it
    /// asked to be) and the index points at its records, before it is
    /// published: a writer killed here leaves a complete commit that the
    /// next writer must adopt. Not counted (`times_reached` stays 0): it
    /// is on every commit's path.
    BeforePublish,
    /// In an open that found no live handle and will show the checkpoint
    /// (a read-only handle on a clean store), before it reads the live
    /// header's incarnation: a writer that sets the header up from here on
    /// must still be joined.
    OpeningOffline,
    /// In the idle thread (`Options::idle_work`), holding the writer lock
    /// after a turn's work, before it lets go.
    IdleTurn,
    /// In the open of a writer that set up the live header, before it
    /// takes the `Live` lock.
    LiveHeaderSetUp,
}

#[derive(Debug, Default)]
struct PauseState {
    armed: Option<PausePoint>,
    reached: bool,
    resumed: bool,
}

/// Takes one failure from a counter, if any are left.
fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl Faults {
    /// No failures planned.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The next `n` calls to `fallocate` fail with `ENOSPC`.
    pub fn fail_fallocate(&self, n: u32) {
        self.0.fallocate.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls to `ftruncate` fail with `EIO`.
    pub fn fail_ftruncate(&self, n: u32) {
        self.0.ftruncate.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes of log bytes (`pwrite`) fail with `EIO` (and
    /// write nothing).
    pub fn fail_write(&self, n: u32) {
        self.0.write.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls to `msync` fail with `EIO` (and flush nothing).
    pub fn fail_msync(&self, n: u32) {
        self.0.msync.store(n, Ordering::SeqCst);
    }

    /// Arms `at`: the next thread to reach it stops there until
    /// [`resume`](Self::resume). One point at a time; arming replaces any
    /// other.
    pub fn pause_at(&self, at: PausePoint) {
        let mut p = self.0.pause.lock().unwrap_or_else(|e| e.into_inner());
        *p = PauseState {
            armed: Some(at),
            reached: false,
            resumed: false,
        };
        self.0.pause_armed.store(true, Ordering::SeqCst);
    }

    /// Waits until a thread stopped at the armed point; `false` if none
    /// did within `timeout` (the point was not reached: a test should fail).
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let p = self.0.pause.lock().unwrap_or_else(|e| e.into_inner());
        let (p, _) = self
            .0
            .pause_changed
            .wait_timeout_while(p, timeout, |p| !p.reached)
            .unwrap_or_else(|e| e.into_inner());
        p.reached
    }

    /// Lets the thread stopped at the armed point go on, and disarms it.
    pub fn resume(&self) {
        let mut p = self.0.pause.lock().unwrap_or_else(|e| e.into_inner());
        p.resumed = true;
        p.armed = None;
        self.0.pause_armed.store(false, Ordering::SeqCst);
        self.0.pause_changed.notify_all();
    }

    /// How many times any thread reached `at` (armed or not), for tests
    /// that must show the path they race with was taken.
    pub fn times_reached(&self, at: PausePoint) -> u64 {
        let r = self.0.reached.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().find(|(p, _)| *p == at).map_or(0, |(_, n)| *n)
    }

    /// Called by the engine at `at` (rare paths only: it takes a lock):
    /// counts it, and stops here if a test armed it.
    pub(crate) fn point(&self, at: PausePoint) {
        self.count(at);
        self.pause_here(at);
    }

    /// [`point`](Self::point) for a path every commit takes: one load
    /// when no pause is armed, and not counted.
    pub(crate) fn hot_point(&self, at: PausePoint) {
        self.pause_here(at);
    }

    fn count(&self, at: PausePoint) {
        let mut r = self.0.reached.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|(p, _)| *p == at) {
            Some((_, n)) => *n += 1,
            None => r.push((at, 1)),
        }
    }

    fn pause_here(&self, at: PausePoint) {
        if !self.0.pause_armed.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.0.pause.lock().unwrap_or_else(|e| e.into_inner());
        if p.armed != Some(at) || p.reached {
            return;
        }
        p.reached = true;
        self.0.pause_changed.notify_all();
        let _p = self
            .0
            .pause_changed
            .wait_while(p, |p| !p.resumed)
            .unwrap_or_else(|e| e.into_inner());
    }

    pub(crate) fn fallocate(&self) -> io::Result<()> {
        fail_if(&self.0.fallocate, libc::ENOSPC)
    }

    pub(crate) fn ftruncate(&self) -> io::Result<()> {
        fail_if(&self.0.ftruncate, libc::EIO)
    }

    pub(crate) fn write(&self) -> io::Result<()> {
        fail_if(&self.0.write, libc::EIO)
    }

    pub(crate) fn msync(&self) -> io::Result<()> {
        fail_if(&self.0.msync, libc::EIO)
    }
}

fn fail_if(n: &AtomicU32, errno: i32) -> io::Result<()> {
    if take(n) {
        Err(io::Error::from_raw_os_error(errno))
    } else {
        Ok(())
    }
}

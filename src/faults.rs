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

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A shared plan of failures; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Plan>);

#[derive(Debug, Default)]
struct Plan {
    fallocate: AtomicU32,
    ftruncate: AtomicU32,
    write: AtomicU32,
    msync: AtomicU32,
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

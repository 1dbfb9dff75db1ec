//! How to open a store.

use std::fs::OpenOptions;
use std::path::Path;

use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::faults::Faults;
#[cfg(feature = "testing")]
use crate::sim::SimDisk;
use crate::storage::file::FileBackend;
use crate::Store;

/// See [`Options::compact_threshold`].
const DEFAULT_COMPACT_THRESHOLD: f64 = 0.3;

/// When `commit()` returns, how safe is the commit? (Non-exhaustive: a
/// level may be added, such as the memory-only durability of a store in
/// shared memory.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The commit is on disk: it survives a process kill and a power loss.
    /// Costs one `msync(MS_SYNC)` per commit.
    #[default]
    Immediate,
    /// The commit is visible to every reader and survives a process kill,
    /// but a power loss may lose it (and later `Eventual` commits) until the
    /// next `Immediate` commit or [`Store::sync`]. Older commits are never
    /// damaged.
    Eventual,
}

/// Options for opening a store: a builder.
///
/// ```
/// use mapkv::{Durability, Options};
/// # let dir = tempfile::tempdir()?;
/// let store = Options::new()
///     .durability(Durability::Eventual)
///     .open(dir.path().join("data.kv"))?;
/// store.put(b"k", b"v")?;
/// store.sync()?; // now durable
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) read_only: bool,
    pub(crate) create: bool,
    pub(crate) durability: Durability,
    pub(crate) faults: Faults,
    pub(crate) auto_compact: bool,
    pub(crate) compact_threshold: f64,
    pub(crate) warm_on_open: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// Read-write, create if missing, [`Durability::Immediate`].
    pub fn new() -> Options {
        Options {
            read_only: false,
            create: true,
            durability: Durability::Immediate,
            faults: Faults::new(),
            auto_compact: true,
            compact_threshold: DEFAULT_COMPACT_THRESHOLD,
            warm_on_open: true,
        }
    }

    /// Open read-only: no write transactions, and never creates the file.
    ///
    /// A read-only handle still writes the reader table inside the file
    /// (so writers in other processes know its snapshots), so it opens the
    /// file for writing when it may. On a file it may not write (mode
    /// 0444, a read-only mount) it opens it for reading and still works,
    /// with three differences: its snapshots are not registered (while it
    /// is open no space is reused: [`Stats::unregistered_readers`]); its
    /// [`Store::wait_for_commit`] looks every 10 ms instead of being woken;
    /// and, as for any read-only handle, a store whose last writer crashed
    /// must first be opened read-write once ([`Error::NeedsRecovery`]).
    ///
    /// [`Stats::unregistered_readers`]: crate::Stats::unregistered_readers
    /// [`Store::wait_for_commit`]: crate::Store::wait_for_commit
    /// [`Error::NeedsRecovery`]: crate::Error::NeedsRecovery
    #[must_use]
    pub fn read_only(mut self, yes: bool) -> Options {
        self.read_only = yes;
        self
    }

    /// Create the store if the file does not exist (default `true`).
    #[must_use]
    pub fn create(mut self, yes: bool) -> Options {
        self.create = yes;
        self
    }

    /// The durability of commits made through this handle (default
    /// [`Durability::Immediate`]); a transaction can override it with
    /// [`WriteTxn::set_durability`](crate::WriteTxn::set_durability).
    #[must_use]
    pub fn durability(mut self, d: Durability) -> Options {
        self.durability = d;
        self
    }

    /// Whether commits reclaim space as they go (default `true`): once
    /// the dead bytes of the log pass the
    /// [threshold](Self::compact_threshold), each commit also walks and
    /// copies up to four times its own bytes (at least 1 KiB) of the most
    /// wasteful log extent, moving its live records to the log's end; the
    /// extent is reused once no snapshot needs it. A small commit so pays a
    /// small share; a burst of deletes is reclaimed by the commits after it
    /// in proportion to their size, or at once by
    /// [`Store::compact`](crate::Store::compact).
    /// With `false`, space comes back only from
    /// [`Store::compact`](crate::Store::compact).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Options::new()
    ///     .auto_compact(false)
    ///     .open(dir.path().join("data.kv"))?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    #[must_use]
    pub fn auto_compact(mut self, on: bool) -> Options {
        self.auto_compact = on;
        self
    }

    /// Whether opening a store whose pages are not in memory starts reading
    /// it in the background (default `true`): the index tables, then the
    /// whole file if it fits in a quarter of the available memory. Gets
    /// then mostly find their pages in memory instead of paying two random
    /// disk reads each (the mapping's `MADV_RANDOM`, which keeps index
    /// writes small, also turns off readahead for reads). Costs one
    /// `mincore` on a warm store; a short-lived thread on a cold one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Options::new()
    ///     .warm_on_open(false) // a store far larger than memory, read sparsely
    ///     .open(dir.path().join("data.kv"))?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    #[must_use]
    pub fn warm_on_open(mut self, yes: bool) -> Options {
        self.warm_on_open = yes;
        self
    }

    /// The fraction of dead bytes in the log (overwritten or deleted
    /// versions) at which automatic compaction starts, and the least an
    /// extent must have to be emptied; clamped to `0.05..=0.95`, default
    /// `0.3`. Lower keeps the log smaller and copies more: in
    /// `cargo bench --bench space -- overwrite` (random overwrites of
    /// 100,000 keys), 0.2 copied 0.69 bytes per byte written, 0.3 copied
    /// 0.52 and wrote 30% faster; the file peaked at 1.97× the live records
    /// with either (set by growth steps early on, not by the threshold).
    #[must_use]
    pub fn compact_threshold(mut self, fraction: f64) -> Options {
        self.compact_threshold = if fraction.is_nan() {
            DEFAULT_COMPACT_THRESHOLD
        } else {
            fraction.clamp(0.05, 0.95)
        };
        self
    }

    /// Failures to inject into the file backend (see [`crate::faults`]):
    /// for testing what the store does when the system says no. (Feature
    /// `testing`.)
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn faults(mut self, faults: Faults) -> Options {
        self.faults = faults;
        self
    }

    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// `Io` if the file cannot be opened or mapped; `NotAStore`,
    /// `UnsupportedVersion` or `Corrupted` if its contents are not a store
    /// this build can read; `NeedsRecovery` for a read-only open of a store
    /// whose last writer crashed and that nobody has opened read-write since.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .create(write && self.create && !self.read_only)
                .truncate(false)
                .open(path)
        };
        // A read-only handle still writes the reader table (its snapshots
        // must be visible to writers in other processes), so it asks for a
        // writable descriptor first; a file it may not write (permissions,
        // a read-only mount) is opened for reading and its snapshots are
        // protected by the `Pin` lock instead (docs/DESIGN.md, "Readers").
        let (file, fd_writable) = match open(true) {
            Ok(f) => (Ok(f), true),
            Err(e) if self.read_only && may_not_write(&e) => (open(false), false),
            Err(e) => (Err(e), true),
        };
        let file = file.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            op: "open the file".into(),
            source,
        })?;
        let backend = FileBackend::new(
            file,
            path.to_path_buf(),
            !self.read_only,
            fd_writable,
            self.faults.clone(),
        );
        Ok(Store::from_shared(Shared::open(Box::new(backend), self)?))
    }

    /// Opens a store on a simulated disk (see [`crate::sim`]), for crash
    /// and fault testing. Each call is a separate handle, as if another
    /// process opened the file. (Feature `testing`.)
    #[cfg(feature = "testing")]
    pub fn open_sim(&self, disk: &SimDisk) -> Result<Store> {
        let backend = disk.handle(!self.read_only);
        if disk.is_empty() && (!self.create || self.read_only) {
            return Err(Error::NotAStore {
                path: "<sim>".into(),
                reason: "empty file".into(),
            });
        }
        Ok(Store::from_shared(Shared::open(Box::new(backend), self)?))
    }
}

/// Whether opening for writing failed only because this process may not
/// write the file (so opening it for reading may still work).
fn may_not_write(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::ETXTBSY)
    )
}

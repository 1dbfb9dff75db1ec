//! How to open a store.

use std::fs::OpenOptions;
use std::path::Path;

use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::faults::Faults;
#[cfg(feature = "testing")]
use crate::sim::SimDisk;
use crate::storage::file::FileBackend;
use crate::storage::private::PrivateBackend;
use crate::Store;

/// See [`Options::compact_threshold`].
const DEFAULT_COMPACT_THRESHOLD: f64 = 0.2;

/// When `commit()` returns, how safe is the commit? (Non-exhaustive: a
/// level may be added.)
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
    /// The durability of memory, which is all a store in shared memory
    /// ([`Options::open_shm`]) or a private view ([`Options::private`])
    /// has: the commit is visible to every reader and survives the
    /// process that made it (for a shared-memory store: as long as the
    /// machine runs), but not a reboot. Commits do no flush.
    /// [`Store::durability`] says `Memory` for such stores whatever was
    /// asked; asked of a file store, it means [`Eventual`](Self::Eventual).
    Memory,
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
    pub(crate) mode: Option<u32>,
    pub(crate) private: bool,
    /// `None`: on, unless `faults` were given.
    pub(crate) idle_work: Option<bool>,
    faults_given: bool,
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
            mode: None,
            private: false,
            idle_work: None,
            faults_given: false,
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
    /// wasteful log extent, moving its live records to the log's end, plus
    /// enough to give back about what the commit itself makes dead (the
    /// values it overwrites or deletes); the extent is reused once no
    /// snapshot needs it. A small commit so pays a small share, and a
    /// burst of deletes or overwrites pays for its own garbage as it goes.
    /// [`Store::compact`](crate::Store::compact) reclaims everything at
    /// once.
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

    /// Whether a read-write handle does the work a burst leaves behind
    /// (the checkpoint of an index it dirtied, freeing and punching the
    /// extents it retired) in a thread of its own, once nobody has held
    /// the writer lock for 2 ms (default `true`; `false` if `faults` are
    /// given (feature `testing`), so injected failures and pause points
    /// meet only the caller's threads). The thread starts the first time
    /// a write transaction leaves such work. It never waits for
    /// the writer lock; a commit that arrives while it holds it waits for
    /// one slice of that work at most (~1-3 ms), which the commit would
    /// otherwise have done itself. With `false`, write transactions do
    /// all of it, a slice each, as they begin.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Options::new()
    ///     .idle_work(false) // no thread: every byte of I/O in the caller's
    ///     .open(dir.path().join("data.kv"))?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    #[must_use]
    pub fn idle_work(mut self, on: bool) -> Options {
        self.idle_work = Some(on);
        self
    }

    /// Whether this open starts an idle thread ([`idle_work`](Self::idle_work)).
    fn idle(&self) -> bool {
        self.idle_work.unwrap_or(!self.faults_given)
    }

    /// The fraction of dead bytes in the log (overwritten or deleted
    /// versions) at which automatic compaction starts, and the least an
    /// extent must have to be emptied; clamped to `0.05..=0.95`, default
    /// `0.2`. Lower keeps the log smaller and copies more in bursts of
    /// overwrites and deletes; a small commit walks about 1 KiB at any
    /// threshold. On 1M keys churned (filled, overwritten, half deleted
    /// in random order), the disk held 1.87-1.90× the live key and value bytes
    /// at 0.2 and 2.11× at 0.3, and the delete wave took 1.3-1.5× as long
    /// (docs/DESIGN.md, "Compaction"). In `cargo bench --bench space --
    /// overwrite` (random overwrites of 100,000 keys), 0.2 copied 0.69
    /// bytes per byte written, 0.3 copied 0.52 and wrote 30% faster.
    #[must_use]
    pub fn compact_threshold(mut self, fraction: f64) -> Options {
        self.compact_threshold = if fraction.is_nan() {
            DEFAULT_COMPACT_THRESHOLD
        } else {
            fraction.clamp(0.05, 0.95)
        };
        self
    }

    /// The permission bits a new store is created with, exactly (the
    /// umask does not apply). Unset, a file store follows the umask (mode
    /// `0o666` less the umask, as `open(2)` does) and a shared-memory store
    /// gets `0o600`: `/dev/shm` is visible to every user of the machine.
    /// An existing store keeps its mode.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::os::unix::fs::PermissionsExt;
    /// let path = dir.path().join("data.kv");
    /// let store = mapkv::Options::new().mode(0o640).open(&path)?;
    /// assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o640);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn mode(mut self, mode: u32) -> Options {
        self.mode = Some(mode & 0o7777);
        self
    }

    /// Opens a private, copy-on-write view of a store file (default
    /// `false`): the file is mapped `MAP_PRIVATE` and never written. The
    /// view takes no writer lock and its write transactions commit into
    /// this handle's memory only: the file's bytes, size and modification
    /// time stay as they were, and no other handle or process sees the
    /// view's commits. Dropping the view throws them away. For dry runs
    /// (what would this load change?), what-ifs, and working on a damaged
    /// store without risk.
    ///
    /// What the view shows: the store as of its opening (the newest
    /// commit it finds in the file then, recovered as a read-write open
    /// would recover it, on its private copy), plus its own commits. It
    /// does not follow later commits of other processes. It works on a
    /// file this process may only read, and beside a writer in another
    /// process: while a view is open, the store's writers reuse no log
    /// space (as for a read-only handle on a read-only file: the view
    /// holds the `Pin` lock) and no handle shrinks the file. Its
    /// durability is [`Durability::Memory`] of the process.
    ///
    /// A view always takes write transactions ([`read_only`](Self::read_only)
    /// is ignored: they cannot reach the file anyway).
    ///
    /// Cost: the pages the view changes are copied into its memory, and
    /// opening copies the fixed pages and the index tables (about 8 bytes
    /// per key slot).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("data.kv");
    /// # mapkv::Store::open(&path)?.put(b"k", b"real")?;
    /// let view = mapkv::Options::new().private(true).open(&path)?;
    /// view.put(b"k", b"what if")?;
    /// assert_eq!(view.get(b"k")?.as_deref(), Some(&b"what if"[..]));
    /// drop(view);
    /// assert_eq!(mapkv::Store::open(&path)?.get(b"k")?.as_deref(), Some(&b"real"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn private(mut self, yes: bool) -> Options {
        self.private = yes;
        self
    }

    /// Failures to inject into the file backend (see [`crate::faults`]):
    /// for testing what the store does when the system says no. (Feature
    /// `testing`.)
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn faults(mut self, faults: Faults) -> Options {
        self.faults = faults;
        self.faults_given = true;
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
        if self.private {
            return self.open_private(path);
        }
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            op: "open the file".into(),
            source,
        };
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
        let created = match self.mode {
            Some(mode) if self.create && !self.read_only => {
                create_with_mode(path, mode).map_err(io)?
            }
            _ => None,
        };
        let (file, fd_writable) = match created {
            Some(file) => (Ok(file), true),
            None => match open(true) {
                Ok(f) => (Ok(f), true),
                Err(e) if self.read_only && may_not_write(&e) => (open(false), false),
                Err(e) => (Err(e), true),
            },
        };
        let file = file.map_err(io)?;
        let backend = FileBackend::new(
            file,
            path.to_path_buf(),
            !self.read_only,
            fd_writable,
            self.faults.clone(),
        );
        Ok(Store::from_shared(
            Shared::open(Box::new(backend), self)?,
            self.idle(),
        ))
    }

    /// Opens (or creates) the store in the POSIX shared-memory object
    /// `name` (`shm_open`; on Linux the file `/dev/shm/<name>`), for
    /// processes on one machine that want a transactional map between
    /// them without a disk: caches, registries, work queues. Everything
    /// works as for a file — snapshots, the one writer, the reader table,
    /// [`Store::wait_for_commit`], [`ReadTxn::changes_since`], dead
    /// processes — except durability, which is that of memory
    /// ([`Durability::Memory`]): the store survives processes, not a
    /// reboot, and commits do no flush. A new store gets mode `0o600`
    /// unless [`mode`](Self::mode) says otherwise. `name` is a file name
    /// (1 to 255 bytes, no `/` except an optional leading one, not `.` or
    /// `..`). [`Store::unlink_shm`] removes the store.
    ///
    /// A full `/dev/shm` (it is a `tmpfs` with a size limit) is an
    /// [`Error::Io`] with `ENOSPC` from the commit that needed the room,
    /// and the store stays as it was: space is reserved with `fallocate`
    /// before it is used, never found missing by a write through the map.
    ///
    /// ```
    /// let name = format!("mapkv-doc-{}", std::process::id());
    /// let store = mapkv::Options::new().open_shm(&name)?;
    /// store.put(b"k", b"v")?;
    /// assert_eq!(store.durability(), mapkv::Durability::Memory);
    /// // Another process opening `name` sees the same store.
    /// let again = mapkv::Store::open_shm(&name)?;
    /// assert_eq!(again.get(b"k")?.as_deref(), Some(&b"v"[..]));
    /// mapkv::Store::unlink_shm(&name)?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    ///
    /// [`ReadTxn::changes_since`]: crate::ReadTxn::changes_since
    ///
    /// # Errors
    /// `InvalidName` for a name `shm_open` cannot take; otherwise as
    /// [`open`](Self::open), with `/dev/shm/<name>` as the path.
    pub fn open_shm(&self, name: &str) -> Result<Store> {
        let name = shm_name(name)?;
        let path = Path::new("/dev/shm").join(&name[1..]);
        if self.private {
            return self.open_private(&path);
        }
        let write = true; // a read-only handle still registers its snapshots
        let create = self.create && !self.read_only;
        let mode = self.mode.unwrap_or(0o600);
        let opened = match crate::sys::shm_open(&name, write, create, mode) {
            Err(e) if self.read_only && may_not_write(&e) => {
                crate::sys::shm_open(&name, false, false, mode).map(|f| (f, false))
            }
            r => r.map(|f| (f, true)),
        };
        let (file, fd_writable) = opened.map_err(|source| Error::Io {
            path: path.clone(),
            op: "open the shared-memory object".into(),
            source,
        })?;
        let backend = FileBackend::new(
            file,
            path,
            !self.read_only,
            fd_writable,
            self.faults.clone(),
        )
        .in_memory();
        Ok(Store::from_shared(
            Shared::open(Box::new(backend), self)?,
            self.idle(),
        ))
    }

    /// A private view of the store at `path` ([`private`](Self::private)).
    fn open_private(&self, path: &Path) -> Result<Store> {
        let err = |op: &str, source| Error::Io {
            path: path.to_path_buf(),
            op: op.into(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| err("open the file", e))?;
        // A view creates nothing: an empty file is not a store to view.
        if file
            .metadata()
            .map_err(|e| err("read the file length", e))?
            .len()
            == 0
        {
            return Err(Error::NotAStore {
                path: path.to_path_buf(),
                reason: "empty file".into(),
            });
        }
        // Transient errors are possible while another process writes the
        // store: the view copies its pages while they change, and a copy
        // torn between two checkpoints fails its checks. Try again.
        let mut tries = 0;
        loop {
            let backend = PrivateBackend::new(
                file.try_clone().map_err(|e| err("open the file", e))?,
                path.to_path_buf(),
            )
            .map_err(|e| err("map the file privately", e))?;
            match Shared::open(Box::new(backend), self) {
                Err(Error::Corrupted { .. }) if tries < 3 => tries += 1,
                r => return Ok(Store::from_shared(r?, self.idle())),
            }
        }
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
        // Simulated disks are for deterministic crash tests: no thread.
        Ok(Store::from_shared(
            Shared::open(Box::new(backend), self)?,
            false,
        ))
    }
}

/// Creates `path` with exactly `mode` if it does not exist yet: the new
/// file, or `None` when it existed.
fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => {
            // `open` applied the umask; the caller asked for `mode`.
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok(Some(file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// `name` as `shm_open` takes it (with its leading `/`), or why not.
pub(crate) fn shm_name(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if bare.is_empty() {
        return bad("empty");
    }
    if bare.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if bare.contains('/') {
        return bad("contains '/' (a name, not a path)");
    }
    if bare.contains('\0') {
        return bad("contains a NUL byte");
    }
    if bare == "." || bare == ".." {
        return bad("is '.' or '..'");
    }
    Ok(format!("/{bare}"))
}

/// Whether opening for writing failed only because this process may not
/// write the file (so opening it for reading may still work).
fn may_not_write(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::ETXTBSY)
    )
}

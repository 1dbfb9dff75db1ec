//! The store handle.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{is_enospc, start_idle, IdleGuard, Shared};
use crate::error::{Error, Result};
use crate::faults::PausePoint;
use crate::live;
use crate::options::{Durability, Options};
use crate::readers::SnapshotInfo;
use crate::txn::{Choose, ReadTxn, Snapshot, WriteTxn};
use crate::verify::{self, Stats, VerifyReport};

/// An open store. `Send + Sync`, and `Clone`: clones are one handle (one
/// mapping, one writer lock, one set of reader-table chunks), so share it
/// between threads by cloning it, by `&` or in an `Arc`. The store closes
/// when the last clone and the last [`Snapshot`] of it are gone (or at
/// [`close`](Self::close)).
///
/// Any number of [`ReadTxn`]s may be open at once, in any thread; at most
/// one [`WriteTxn`] exists at a time across all threads and processes.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
/// store.put(b"hello", b"world")?;
/// assert_eq!(store.get(b"hello")?, Some(b"world".to_vec()));
/// assert!(store.delete(b"hello")?);
/// assert_eq!(store.get(b"hello")?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    /// The idle thread of a read-write handle (`Options::idle_work`),
    /// shared by the clones: the last to drop stops it. Declared after
    /// `shared`, so dropped after it: the guard's own reference to the
    /// store is then the last, and the store closes in the dropping
    /// thread.
    _idle: Option<Arc<IdleGuard>>,
}

/// What [`Store::compact`] did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CompactReport {
    /// File size before compaction, in bytes.
    pub bytes_before: u64,
    /// File size after compaction, in bytes.
    pub bytes_after: u64,
    /// Live records copied out of reclaimed space.
    pub records_moved: u64,
    /// Bytes of those records.
    pub bytes_moved: u64,
    /// Deleted keys forgotten: their delete records were left behind
    /// instead of copied, as no snapshot could see past them.
    pub deletes_forgotten: u64,
    /// Bytes of log extents emptied and retired.
    pub bytes_retired: u64,
    /// Bytes freed for reuse now (retired space some snapshot still
    /// reads is freed later, when it ends).
    pub bytes_freed: u64,
    /// Wall time the compaction took.
    pub duration: Duration,
    /// Set when the disk was full: compaction did what it could without
    /// growing the file (freed wholly dead extents, copied into space that
    /// already existed) and this says what it could not do. `None` when it
    /// finished.
    pub unfinished: Option<String>,
}

/// What [`Store::backup_to`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The commit the copy holds.
    pub seq: u64,
    /// Keys copied.
    pub keys: u64,
    /// Size of the new file.
    pub file_bytes: u64,
}

/// Keys per commit of a backup.
const BACKUP_BATCH: u64 = 10_000;
/// Compaction copies at most this much per commit of its own: a commit
/// of another thread waits for at most one step (4 MiB steps took 10-30
/// ms on a churned store; `compact()` as a whole gets slower by the cost
/// of the extra commits, which are `Eventual`).
const COMPACT_STEP: u64 = 1 << 20;
/// `compact()` empties extents with at least this fraction dead.
const COMPACT_MIN_DEAD: f64 = 0.05;

impl Store {
    /// Opens the store at `path` read-write, creating it if missing, with
    /// [`Durability::Immediate`](crate::Durability::Immediate). See
    /// [`Options`] for other ways to open.
    ///
    /// # Errors
    /// As [`Options::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Options::new().open(path)
    }

    /// A handle on `shared`, with an idle thread (`idle`) if it may write.
    pub(crate) fn from_shared(shared: Shared, idle: bool) -> Store {
        let shared = Arc::new(shared);
        let idle = idle && shared.writable();
        Store {
            _idle: idle.then(|| Arc::new(start_idle(&shared))),
            shared,
        }
    }

    /// The file this store lives in (`<sim>` for a simulated disk).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How durable this handle's commits are by default: what
    /// [`Options::durability`] asked, or [`Durability::Memory`] for a store
    /// in shared memory ([`Options::open_shm`]) or a private view
    /// ([`Options::private`]), which have nothing else.
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Opens (or creates) the store in the shared-memory object `name`
    /// with default options: [`Options::open_shm`].
    ///
    /// # Errors
    /// As [`Options::open_shm`].
    pub fn open_shm(name: &str) -> Result<Store> {
        Options::new().open_shm(name)
    }

    /// Removes the shared-memory store `name` (`shm_unlink`). Handles that
    /// have it open keep working on it until they close; a new
    /// [`open_shm`](Self::open_shm) of the name creates a new store.
    ///
    /// # Errors
    /// `InvalidName` for a name `shm_open` cannot take; `Io` (`ENOENT` if
    /// there is no such object) otherwise.
    pub fn unlink_shm(name: &str) -> Result<()> {
        let name = crate::options::shm_name(name)?;
        crate::sys::shm_unlink(&name).map_err(|source| Error::Io {
            path: Path::new("/dev/shm").join(&name[1..]),
            op: "remove the shared-memory object".into(),
            source,
        })
    }

    /// Begins a snapshot of the newest commit. Takes no lock; the only
    /// system call it can make is a remap after the file grew.
    ///
    /// # Errors
    /// `Io` if a remap fails; `Corrupted` if the shared header is damaged.
    pub fn begin_read(&self) -> Result<ReadTxn<'_>> {
        ReadTxn::new(&self.shared)
    }

    /// Begins a snapshot of the newest commit that owns its handle to the
    /// store: [`Snapshot`] is `'static + Send + Sync` and reads like a
    /// [`ReadTxn`]. A `ReadTxn` borrows the `Store` and costs nothing
    /// more; take a `Snapshot` to keep one in a struct or send it to
    /// another thread.
    ///
    /// ```
    /// struct Cache { snap: mapkv::Snapshot } // no lifetime to carry
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"k", b"v")?;
    /// let cache = Cache { snap: store.snapshot()? };
    /// drop(store); // the snapshot keeps the store open
    /// assert_eq!(cache.snap.get(b"k")?, Some(&b"v"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`begin_read`](Self::begin_read).
    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::new(self.shared.clone())
    }

    /// Begins the write transaction, waiting while another thread or
    /// process holds it.
    ///
    /// # Errors
    /// `ReadOnly`; `Poisoned` after a failed flush; `Io` from the lock, or
    /// from a checkpoint or recovery this call had to finish first.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        match WriteTxn::begin(&self.shared, true)? {
            Some(t) => Ok(t),
            None => unreachable!("a waiting begin_write always gets the lock"),
        }
    }

    /// Begins the write transaction if no other thread or process holds it;
    /// `Ok(None)` if one does.
    ///
    /// # Errors
    /// As [`begin_write`](Self::begin_write).
    pub fn try_begin_write(&self) -> Result<Option<WriteTxn<'_>>> {
        WriteTxn::begin(&self.shared, false)
    }

    /// Like [`try_begin_write`](Self::try_begin_write), but a held lock is
    /// an error (`Error::WriterBusy`), for callers that treat it as one.
    pub fn try_write(&self) -> Result<WriteTxn<'_>> {
        self.try_begin_write()?.ok_or_else(|| Error::WriterBusy {
            path: self.shared.path.clone(),
        })
    }

    /// The newest committed value of `key`, copied out.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.begin_read()?.get(key)?.map(<[u8]>::to_vec))
    }

    /// Sets `key` to `value` in a transaction of its own.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut tx = self.begin_write()?;
        tx.put(key, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes `key` in a transaction of its own; returns whether it existed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let mut tx = self.begin_write()?;
        let existed = tx.delete(key)?;
        tx.commit()?;
        Ok(existed)
    }

    /// Makes every commit so far durable (those made with
    /// [`Durability::Eventual`](crate::Durability::Eventual)), with one
    /// flush. Waits for the writer lock.
    pub fn sync(&self) -> Result<()> {
        let Some((mut w, map)) = self.shared.begin_writer(true, false)? else {
            unreachable!("a waiting begin_writer always gets the lock");
        };
        let result = self.shared.sync_writer(&mut w, &map);
        self.shared.end_writer();
        result
    }

    /// Reclaims the space of overwritten and deleted records now, while
    /// readers go on reading and other writers go on committing between
    /// its steps (automatic compaction does the same work a little per
    /// commit; see [`Options::auto_compact`]).
    ///
    /// Copies the newest version of every key out of each log extent with
    /// dead bytes, in steps of at most 1 MiB (each its own commit, and
    /// other threads blocked on the writer lock get it between two), then
    /// moves live data down into free space below it; a checkpoint then
    /// lets the emptied extents be reused, as soon as no snapshot (in any
    /// process) still reads them. When this handle holds the store alone
    /// (no other handle has it open, in any process), free space at the
    /// end of the file is cut off.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Options::new()
    ///     .auto_compact(false)
    ///     .open(dir.path().join("data.kv"))?;
    /// for round in 0..20u8 {
    ///     let mut tx = store.begin_write()?;
    ///     for k in 0..2_000u32 {
    ///         tx.put(&k.to_le_bytes(), &[round; 100])?;
    ///     }
    ///     tx.commit()?;
    /// }
    /// let report = store.compact()?;
    /// assert!(report.bytes_after < report.bytes_before);
    /// assert_eq!(store.get(&7u32.to_le_bytes())?, Some(vec![19; 100]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Io`, `Corrupted` (a record that compaction must copy does not read
    /// back: nothing is retired, the store is as it was), `ReadOnly`.
    pub fn compact(&self) -> Result<CompactReport> {
        self.compact_with_progress(|_| {})
    }

    /// [`compact`](Self::compact), calling `progress` with the bytes copied
    /// so far after each step (for a progress bar).
    pub fn compact_with_progress(&self, mut progress: impl FnMut(u64)) -> Result<CompactReport> {
        let t0 = Instant::now();
        let mut report = CompactReport {
            bytes_before: self.shared.snapshot()?.0.file_len,
            ..CompactReport::default()
        };
        let retired0 = self.shared.snapshot()?.0.retired_total;
        // Wholly dead extents first: they cost no copies, so they free
        // space even on a full disk, and the passes after them copy into
        // that space instead of growing the file.
        let passes = [
            (Choose::Dead(1.0), "freeing wholly dead extents"),
            (
                Choose::Dead(COMPACT_MIN_DEAD),
                "copying live records out of partly dead extents",
            ),
            (
                Choose::Relocate,
                "moving live data down to the start of the file",
            ),
        ];
        let mut full: Option<(Error, &str)> = None;
        for (pass, (choose, what)) in passes.into_iter().enumerate() {
            // Each step ends an extent, copies 4 MiB or forgets
            // `MAX_FORGET` deletes (of 28 bytes at least): bounded by the log.
            let limit = 64
                + 2 * report.bytes_before / COMPACT_STEP
                + report.bytes_before / (28 * crate::format::MAX_FORGET as u64);
            let relocate = matches!(choose, Choose::Relocate);
            if relocate && !self.shared.may_shrink() {
                // Moving live data down only lets the end of the file be
                // cut, which needs the store alone; shared, the freed
                // space is punched wherever it lies. The pass copied a
                // third of all `compact()` copied after a delete wave
                // (292,000 of 823,000 records), for nothing.
                continue;
            }
            if pass > 0 {
                // A checkpoint, then what the last pass retired is freed
                // (and punched): the next one copies into it.
                report.bytes_freed += self.shared.reclaim(false)?.0;
            }
            // A full disk ends the pass, not the compaction: its step is
            // aborted (nothing of it committed) and the next pass may
            // still fit in what was freed.
            let mut disk_full = |e: Error| -> Result<()> {
                if !is_enospc(&e) {
                    return Err(e);
                }
                full = Some((e, what));
                Ok(())
            };
            for _ in 0..limit {
                let mut tx = self.begin_write()?;
                tx.no_auto = true;
                // Durable at the checkpoint that ends compaction; a crash
                // before it loses copies, never data.
                tx.set_durability(Durability::Eventual);
                let tried = tx
                    .compact_step(COMPACT_STEP, choose, true)
                    .and_then(|step| Ok((step, !step.active && relocate && tx.jump_down()?)));
                let (step, jumped) = match tried {
                    Ok(done) => done,
                    Err(e) => {
                        drop(tx);
                        disk_full(e)?;
                        break;
                    }
                };
                if !step.active && !jumped {
                    drop(tx);
                    // Out of candidates: free what relocation retired (a
                    // checkpoint) and look again, until nothing more frees.
                    let freed = if relocate {
                        self.shared.reclaim(false)?.0
                    } else {
                        0
                    };
                    report.bytes_freed += freed;
                    if freed == 0 {
                        break;
                    }
                    continue;
                }
                if let Err(e) = tx.commit() {
                    disk_full(e)?;
                    break;
                }
                report.records_moved += step.records;
                report.bytes_moved += step.bytes;
                report.deletes_forgotten += step.forgotten;
                progress(report.bytes_moved);
                self.shared.yield_writer();
            }
        }
        let (freed, len) = self.shared.reclaim(true)?;
        report.bytes_freed += freed;
        report.bytes_after = len;
        if let Some((e, what)) = full {
            let dead = self.stats()?.dead_bytes;
            report.unfinished = Some(format!(
                "the disk is full ({e}) while {what}: {dead} bytes of dead records remain in \
                 the log; compact again once there is room"
            ));
        }
        let retired = self.shared.snapshot()?.0.retired_total - retired0;
        report.bytes_retired = retired;
        report.duration = t0.elapsed();
        Ok(report)
    }

    /// Writes a compacted copy of the newest snapshot to a new store file
    /// at `dest`, while this handle and others go on reading and writing.
    /// The copy holds exactly one commit's state, is written under a
    /// temporary name and renamed into place once durable, opens as a
    /// normal store and passes [`verify`](Self::verify).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"k", b"v")?;
    /// let report = store.backup_to(dir.path().join("copy.kv"))?;
    /// assert_eq!(report.keys, 1);
    /// let copy = mapkv::Store::open(dir.path().join("copy.kv"))?;
    /// assert_eq!(copy.get(b"k")?, Some(b"v".to_vec()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Io` if `dest` exists (it is never overwritten) or cannot be
    /// written; the source is never changed.
    pub fn backup_to(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        self.backup_to_with_progress(dest, |_, _| {})
    }

    /// [`backup_to`](Self::backup_to), calling `progress(keys copied,
    /// keys in all)` after each batch.
    pub fn backup_to_with_progress(
        &self,
        dest: impl AsRef<Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<BackupReport> {
        let dest = dest.as_ref();
        let io = |op: &str, e: std::io::Error| Error::Io {
            path: dest.to_path_buf(),
            op: op.into(),
            source: e,
        };
        if dest.exists() {
            return Err(io(
                "write a backup",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.backup-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let snap = self.begin_read()?;
        let total = snap.len();
        let result = (|| {
            let out = Options::new()
                .auto_compact(false)
                .durability(Durability::Eventual)
                .open(&tmp)?;
            let mut tx = out.begin_write()?;
            let mut keys = 0;
            let mut entries = snap.iter();
            while let Some(item) = entries.next_aligned() {
                // A value written with `put_pod` keeps its alignment.
                let (k, v, align) = item?;
                tx.put_aligned(k, v, align)?;
                keys += 1;
                if keys % BACKUP_BATCH == 0 {
                    tx.commit()?;
                    progress(keys, total);
                    tx = out.begin_write()?;
                }
            }
            tx.commit()?;
            progress(keys, total);
            out.sync()?;
            let file_bytes = out.stats()?.file_bytes;
            out.close()?;
            Ok::<_, Error>((keys, file_bytes))
        })();
        let (keys, file_bytes) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, dest).map_err(|e| io("rename the backup into place", e))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the backup's directory", e))?;
        }
        Ok(BackupReport {
            seq: snap.seq(),
            keys,
            file_bytes,
        })
    }

    /// Counters describing the newest commit (keys, bytes, index load) and
    /// the snapshots open in every process. Looking at the reader table
    /// clears the entries of processes that died.
    pub fn stats(&self) -> Result<Stats> {
        let (_, map) = self.shared.snapshot()?;
        let (st, space) = self.shared.space_of(&map)?;
        let mut stats = verify::stats(&st, &space);
        let scan = self.shared.scan_readers();
        stats.open_snapshots = scan.snapshots.len() as u64;
        stats.oldest_snapshot = scan.snapshots.iter().map(|s| s.seq).min();
        stats.unregistered_readers = self.shared.pinned();
        stats.allocated_bytes = self
            .shared
            .backend
            .allocated_bytes()
            .map_err(|e| self.shared.io("read the file's allocated size", e))?;
        Ok(stats)
    }

    /// The snapshots open in every process, from the reader table (like
    /// `mdb_reader_list`). Entries of processes that died are skipped, and
    /// cleared when this handle can write the file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"k", b"v")?;
    /// let snap = store.begin_read()?;
    /// let readers = store.readers()?;
    /// assert_eq!(readers.len(), 1);
    /// assert_eq!(readers[0].seq, snap.seq());
    /// assert_eq!(readers[0].pid, std::process::id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn readers(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(self.shared.scan_readers().snapshots)
    }

    /// Clears the reader-table entries of processes that died (like
    /// `mdb_stat -rr`); returns how many handles' entries were cleared.
    /// Every look at the table does this too; this is for a tool to report
    /// it.
    pub fn clear_stale_readers(&self) -> Result<u32> {
        Ok(self.shared.scan_readers().cleared)
    }

    /// Waits until a commit newer than `after_seq` exists — made by any
    /// handle in any process — and returns the newest seq. Returns at once
    /// if there is one already. With a `timeout`, returns the current seq
    /// (`<= after_seq`) when it passes first: compare the result with
    /// `after_seq`.
    ///
    /// The wait sleeps on a futex in the shared mapping; a commit wakes it.
    /// (A handle that could not open the file for writing cannot ask to be
    /// woken: it looks again every 10 ms.)
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// let seen = store.begin_read()?.seq();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| store.put(b"k", b"v"));
    ///     let newer = store.wait_for_commit(seen, None)?;
    ///     assert!(newer > seen);
    ///     Ok::<(), mapkv::Error>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Corrupted` if the shared header is damaged.
    pub fn wait_for_commit(&self, after_seq: u64, timeout: Option<Duration>) -> Result<u64> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let map = self.shared.head_map();
        let waiter = live::Waiter::new(&map, self.shared.counts_waiters());
        loop {
            // The ticket first: a publish after this line changes it, so
            // the sleep below returns at once instead of missing it.
            let ticket = waiter.ticket();
            let seq = self.shared.current()?.seq;
            if seq > after_seq {
                return Ok(seq);
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(seq),
                },
            };
            self.shared.faults.point(PausePoint::CommitWaitSleeps);
            waiter.sleep(ticket, left);
        }
    }

    /// Checks the whole store against one snapshot: every record's
    /// checksum, every commit, every index slot, the key count. Reports
    /// every problem found (with its offset); see [`VerifyReport::is_ok`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = mapkv::Store::open(dir.path().join("data.kv"))?;
    /// store.put(b"k", b"v")?;
    /// let report = store.verify()?;
    /// assert!(report.is_ok(), "{report}");
    /// assert_eq!(report.keys, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Only for failures to read at all (`Io`); damage is in the report.
    pub fn verify(&self) -> Result<VerifyReport> {
        let snap = self.begin_read()?;
        Ok(verify::verify(&self.shared, &snap.map, &snap.st))
    }

    /// Closes the store, reporting errors that dropping it would ignore.
    /// The last handle to close (in any process) writes a checkpoint so the
    /// next open does no recovery work. While other clones of this
    /// `Store` or [`Snapshot`]s of it live, this only lets go of this
    /// clone (`Ok`): the last of them closes the store when dropped.
    pub fn close(self) -> Result<()> {
        let Store { shared, _idle } = self;
        // The last clone stops the idle thread here, and its reference
        // to the store goes with it.
        drop(_idle);
        match Arc::try_unwrap(shared) {
            Ok(shared) => shared.close(),
            Err(_) => Ok(()),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish()
    }
}

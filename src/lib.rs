//! # mapkv
//!
//! An embedded, persistent key-value store in one memory-mapped file.
//!
//! The file holds two meta pages, an append log of checksummed records, and
//! a persistent hash index, all read in place through a `MAP_SHARED`
//! mapping. A commit appends its records and a commit record to the log and
//! makes them durable with one `msync`; recovery after a crash replays the
//! log from the last checkpoint and stops at the first record that fails its
//! check. Readers see snapshots (MVCC through per-key version chains), take
//! no lock and copy nothing: [`ReadTxn::get`] returns a slice of the map.
//!
//! ```
//! use mapkv::Store;
//! # let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("data.kv"))?;
//!
//! let mut tx = store.begin_write()?;
//! tx.put(b"apple", b"red")?;
//! tx.put(b"banana", b"yellow")?;
//! tx.commit()?; // atomic and durable
//!
//! let snap = store.begin_read()?;
//! assert_eq!(snap.get(b"apple")?, Some(&b"red"[..]));
//! assert_eq!(snap.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Features
//!
//! `cli` (default) builds `kvctl` and brings its dependencies; an embedder
//! turns default features off and gets the engine alone. `testing` adds
//! the checking harnesses (`check`, `sim`, `torture`, `faults`,
//! `Options::faults`, `Options::open_sim`); `arbitrary` adds `Arbitrary`
//! for the fuzz targets; `serde` adds typed keys and values (`codec`).
//! See the README's table.
//!
//! ## Promises
//!
//! - **Atomicity**: a transaction's writes become visible together or not
//!   at all, to readers and after any crash.
//! - **Durability**: with [`Durability::Immediate`] (the default) a commit
//!   survives a process kill and a power loss once `commit()` returns.
//! - **Crash consistency**: after a crash at any instant, `open` shows the
//!   state after some commit, at least the last acknowledged durable one.
//! - **Snapshot isolation**: a [`ReadTxn`] sees one commit for its life,
//!   in any process.
//! - **One writer** across threads and processes (an OFD file lock).
//! - **Bad input is an error**: damaged files give an [`Error`] naming the
//!   offset, never a panic or undefined behaviour.
//!
//! ## Many processes
//!
//! Any number of processes open the same file; one writes at a time. Every
//! snapshot is registered in a reader table inside the file, with owner
//! liveness proven by locks, so a reader killed with `SIGKILL` pins
//! nothing ([`Store::readers`], [`Stats::oldest_snapshot`]).
//! [`Store::wait_for_commit`] sleeps on a futex in the shared mapping until
//! any process commits, and [`ReadTxn::changes_since`] lists what the
//! commits since a seq changed — together, a change feed:
//!
//! ```
//! # let dir = tempfile::tempdir()?;
//! # let store = mapkv::Store::open(dir.path().join("feed.kv"))?;
//! # store.put(b"k", b"v")?;
//! let mut seen = 0;
//! // Loop forever in a real follower; here, one round.
//! let newest = store.wait_for_commit(seen, None)?;
//! let snap = store.begin_read()?;
//! for change in snap.changes_since(seen)? {
//!     let (seq, key, value) = change?;
//!     println!("{seq}: {key:?} = {value:?}");
//! }
//! seen = snap.seq();
//! assert!(seen >= newest);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Shared memory and private views
//!
//! [`Options::open_shm`] puts a store in POSIX shared memory
//! (`/dev/shm/<name>`, mode 0600 unless [`Options::mode`] says otherwise)
//! for processes on one machine that want a transactional map between
//! them without a disk. It is the same store — one writer, snapshots,
//! waits and change feeds across processes — with one difference: its
//! durability is that of memory ([`Durability::Memory`]). Commits survive
//! the processes that made them, not a reboot, and do no flush, whatever a
//! transaction asks for. [`Store::unlink_shm`] removes it. A full
//! `/dev/shm` is an `ENOSPC` error, not a `SIGBUS`. `examples/queue.rs`
//! is a work queue built on it.
//!
//! [`Options::private`] opens a file store as a private, copy-on-write
//! view: `MAP_PRIVATE`, no writer lock, transactions that commit into this
//! process's memory and never reach the file (its bytes, size and mtime
//! stay as they were). It shows the store as of its opening plus its own
//! commits: dry runs, what-ifs, a damaged store worked on without risk.
//!
//! ## Caveats
//!
//! - **History is reclaimed with space**: [`ReadTxn::changes_since`] lists
//!   only commits whose records compaction has not reclaimed
//!   (`Error::HistoryReclaimed` otherwise); see [`Options::auto_compact`].
//! - **Other programs must not write the file.** Like every `mmap` database,
//!   mapkv trusts that only mapkv writes the file while it is open; a
//!   concurrent foreign write can change bytes a reader holds a slice of.
//! - **Keep the file on a local file system** with working `fallocate` and
//!   `msync` (ext4, xfs). On btrfs and other copy-on-write file systems
//!   `fallocate` does not reserve space for overwrites, so a full disk can
//!   still raise `SIGBUS` on a write through the map.
//! - **A failed flush poisons the handle**: Linux reports a writeback error
//!   once, so after an `msync` error the handle refuses writes
//!   ([`Error::Poisoned`]) until the store is reopened. The commit that saw
//!   the error is indeterminate after a crash.
//! - **Read-only handles** of a store whose last writer crashed, opened
//!   when no read-write handle is alive, fail with [`Error::NeedsRecovery`].
//!   A read-only handle asks for a writable descriptor to register its
//!   snapshots; on a file it may not write it reads without registering
//!   (and blocks space reuse while open) and waits for commits by looking
//!   every 10 ms ([`Options::read_only`]).
//! - **Limits**: keys 1 byte to 64 KiB, values up to 1 GiB, files up to
//!   4 TiB. Linux only (OFD locks, `fallocate`).

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

// Every mapping reserves at least 64 GiB of address space for growth, and
// file offsets (u64) are cast to `usize` to index the map: neither works
// with 32-bit pointers.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("mapkv needs a target with 64-bit pointers (it maps its file with room to grow)");

mod changes;
#[cfg(feature = "testing")]
pub mod check;
#[cfg(feature = "serde")]
pub mod codec;
#[allow(unsafe_code)]
mod cpu;
mod engine;
mod error;
#[cfg(feature = "testing")]
pub mod faults;
#[cfg(not(feature = "testing"))]
mod faults;
mod format;
#[cfg(all(test, feature = "testing"))]
mod hostile;
mod index;
mod inspect;
mod live;
mod log;
mod options;
mod readers;
mod salvage;
#[cfg(feature = "testing")]
#[allow(unsafe_code)]
pub mod sim;
mod space;
#[allow(unsafe_code)]
mod storage;
mod store;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "testing")]
pub mod torture;
mod txn;
mod verify;

pub use changes::Changes;
pub use error::{Error, Result};
pub use format::{FORMAT_VERSION, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use inspect::{inspect, Inspection};
pub use options::{Durability, Options};
pub use readers::SnapshotInfo;
pub use salvage::{salvage, SalvageReport};
pub use store::{BackupReport, CompactReport, Store};
pub use txn::{Iter, ReadTxn, Snapshot, WriteTxn};
pub use verify::{Problem, Stats, VerifyReport};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Read and write transactions: [`ReadTxn`] and its [`Iter`]; the
//! [`WriteTxn`] state, whose jobs are one module each. A transaction calls
//! down into the engine (`crate::engine`), the index and the log; nothing
//! below calls back up.

mod compact;
mod extents;
mod keyset;
mod read;
mod snapshot;
mod stage;
mod write;

use self::keyset::{KeyRef, Pending};
use self::stage::Staged;
use crate::engine::{Shared, Writer};
use crate::error::{Error, Result};
use crate::format::*;
use crate::live::State;
use crate::log::{self, Cursor};
use crate::options::Durability;
use crate::space::Space;
use crate::storage::Mapping;
use hashbrown::HashTable;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, MutexGuard};

pub(crate) use self::compact::Choose;
pub use self::read::{Iter, ReadTxn};
pub use self::snapshot::Snapshot;

/// The one write transaction of the store (across threads and processes).
///
/// Puts and deletes go into the log, beyond the committed tail, where no
/// reader looks (staged in memory in runs of up to 1 MiB, each written to
/// the file with one `pwrite`); [`get`](Self::get) sees them.
/// [`commit`](Self::commit) makes them visible to everyone at once;
/// dropping the transaction without committing discards them.
///
/// Neither `Send` nor `Sync`: it holds the writer's mutex guard, which the
/// thread that took it must release, and keeps caches in `RefCell`s. Run a
/// write transaction on one thread; share the [`Store`](crate::Store).
///
/// ```compile_fail
/// # let dir = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(dir.path().join("bank.kv")).unwrap();
/// let tx = store.begin_write().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || tx.commit()); // error: `WriteTxn` is not `Send`
/// });
/// ```
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = mapkv::Store::open(dir.path().join("bank.kv"))?;
/// let mut tx = store.begin_write()?;
/// tx.put(b"alice", b"70")?;
/// tx.put(b"bob", b"30")?;
/// assert_eq!(tx.get(b"bob")?, Some(&b"30"[..]));
/// let seq = tx.commit()?; // both or neither, durably
/// assert_eq!(store.begin_read()?.seq(), seq);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a write transaction does nothing until it is committed"]
pub struct WriteTxn<'s> {
    shared: &'s Shared,
    w: MutexGuard<'s, Writer>,
    map: Arc<Mapping>,
    /// The committed state the transaction builds on. Space it allocates
    /// moves `alloc_end`/`file_len` forward here.
    base: State,
    /// Where the next record goes.
    cur: Cursor,
    txn_start: u64,
    /// The keys written, in the order of their first record.
    pending: Vec<Pending>,
    /// Finds a key in `pending`, once built: while every key put so far
    /// is greater than the one before (`ascending`), no key can repeat and
    /// a key above the greatest is not in `pending`, so a load in key
    /// order never builds it (its inserts miss the cache at random: a
    /// fifth of a 1M-key load's time).
    key_table: RefCell<HashTable<KeyRef>>,
    /// The greatest key so far, while `pending` holds its keys in strictly
    /// ascending order; `None` once a key came out of order (from then on
    /// every key is in `key_table`).
    ascending: Option<Vec<u8>>,
    /// While `ascending`: how many keys of `pending` are in `key_table`
    /// (a lookup of a key not above the greatest files them).
    filed: Cell<usize>,
    n_records: u64,
    /// Keys whose newest record here is a put of a key no commit has.
    fresh_keys: u64,
    chain: crc32fast::Hasher,
    bytes: u64,
    /// Bytes of committed values this transaction replaces or deletes
    /// (each key's newest put, counted once), and of its delete records
    /// (dead once compaction forgets them): what it makes dead.
    killed: u64,
    /// Log ranges this transaction wrote, to flush at commit.
    dirty: Vec<(u64, u64)>,
    /// Records not written to the file yet.
    staged: Staged,
    durability: Durability,
    done: bool,
    /// The writer's extent table (and its dirty flag) before this
    /// transaction first changed it: restored if it does not commit.
    space_undo: Option<(Space, bool)>,
    /// Extents this transaction retires (compaction emptied them).
    retired: Vec<(u64, u64)>,
    /// Delete records whose keys this transaction forgets (compaction
    /// passed them; docs/DESIGN.md, "Forgetting deletes").
    forgotten: Vec<u64>,
    /// Bytes of records compaction copied in this transaction.
    moved: u64,
    /// A step of `compact()`: no automatic compaction at commit, and an
    /// `Eventual` commit starts writing its bytes back at once, so the
    /// next durable commit (maybe another thread's, waiting for the lock)
    /// does not find megabytes of copies to flush; and the index moves to
    /// a smaller table once it is twice what the keys need.
    pub(crate) no_auto: bool,
    /// Step 1 ran: the index move this commit starts, if any (its new
    /// table's offset).
    index_prepared: bool,
    index_move: Option<(log::IndexMove, u64)>,
}

/// Rejects keys outside the 1 byte ..= 64 KiB range.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Rejects values over 1 GiB.
pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

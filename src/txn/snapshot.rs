//! Owned snapshots: a read transaction that holds its own handle to the
//! store, so it can outlive the borrow of a `Store` and cross threads.

use super::read::ReadTxn;
use crate::engine::Shared;
use crate::error::Result;
use std::sync::Arc;

/// How a read transaction holds its store: borrowed from a
/// [`Store`](crate::Store) (a `ReadTxn`) or owned (a [`Snapshot`]).
pub(super) enum Handle<'s> {
    Borrowed(&'s Shared),
    Owned(Arc<Shared>),
}

impl std::ops::Deref for Handle<'_> {
    type Target = Shared;
    #[inline]
    fn deref(&self) -> &Shared {
        match self {
            Handle::Borrowed(s) => s,
            Handle::Owned(s) => s,
        }
    }
}

/// A snapshot that owns its handle to the store: `'static`, `Send` and
/// `Sync`, so it can live in a struct or move to another thread, and it
/// keeps its mapping (and the store) open for as long as it lives. Every
/// read method of [`ReadTxn`] works on it (through `Deref`).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let store = mapkv::Store::open(dir.path().join("data.kv"))?;
/// store.put(b"config", b"v1")?;
/// let snap: mapkv::Snapshot = store.snapshot()?;
/// store.put(b"config", b"v2")?;
/// let reader = std::thread::spawn(move || snap.get(b"config").map(|v| v.map(<[u8]>::to_vec)));
/// assert_eq!(reader.join().unwrap()?, Some(b"v1".to_vec()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Snapshot {
    txn: ReadTxn<'static>,
}

impl Snapshot {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Snapshot> {
        Ok(Snapshot {
            txn: ReadTxn::with(Handle::Owned(shared))?,
        })
    }
}

impl std::ops::Deref for Snapshot {
    type Target = ReadTxn<'static>;
    fn deref(&self) -> &ReadTxn<'static> {
        &self.txn
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("seq", &self.seq())
            .finish()
    }
}

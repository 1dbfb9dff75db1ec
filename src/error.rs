//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong. Messages name the file, what is wrong and,
/// for corruption, the byte offset where it was found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed. `ENOSPC` from growing the file
    /// leaves the store exactly as it was.
    Io {
        /// The store file.
        path: PathBuf,
        /// What mapkv was doing ("grow the file to 4194304 bytes", ...).
        op: String,
        /// The error the system returned.
        source: io::Error,
    },
    /// The file is not a mapkv store (empty, too short, or no magic).
    NotAStore {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The file was written by a newer (or unknown) format version.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file is a store, but some bytes fail their checks.
    Corrupted {
        /// The file.
        path: PathBuf,
        /// File offset of the bad structure.
        offset: u64,
        /// What is wrong there.
        what: String,
    },
    /// A key was empty; keys are 1 byte to 64 KiB.
    EmptyKey,
    /// A key was longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value was longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A write on a store opened read-only.
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// Another handle (thread or process) holds the write lock and the
    /// caller asked not to wait: [`Store::try_write`](crate::Store::try_write)
    /// (whereas `try_begin_write` reports it as `Ok(None)`).
    WriterBusy {
        /// The file.
        path: PathBuf,
    },
    /// A flush failed earlier. Linux reports a writeback error only once, so
    /// a later flush could "succeed" without the data reaching the disk;
    /// this handle refuses writes until the store is opened again.
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// The store must be recovered by a read-write open first (its last
    /// writer crashed and no process has repaired it yet).
    NeedsRecovery {
        /// The file.
        path: PathBuf,
    },
    /// The store is full: the file cannot grow past 4 TiB.
    StoreFull {
        /// The file.
        path: PathBuf,
    },
    /// The reader table is full: this many handles (in all processes)
    /// already registered snapshots, so a new one cannot be protected from
    /// space reuse. Close handles, or end snapshots of this one.
    TooManyReaders {
        /// The file.
        path: PathBuf,
        /// Handles that can register at once.
        max: u32,
    },
    /// [`ReadTxn::changes_since`](crate::ReadTxn::changes_since) was asked
    /// for commits whose log records were already reclaimed.
    HistoryReclaimed {
        /// The file.
        path: PathBuf,
        /// The seq asked for (changes after it).
        requested: u64,
        /// The oldest seq whose changes can still be listed (changes after
        /// it are available).
        oldest: u64,
    },
    /// An operation this version does not support yet.
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// A key or value could not be encoded or decoded by a codec
    /// (`codec::Codec`, feature `serde`).
    Codec {
        /// What failed, and why.
        what: String,
    },
    /// A value cannot be read in place as the type asked for
    /// (`ReadTxn::get_pod`): it has another size, or it does not start
    /// at a multiple of the type's alignment (it was not written with
    /// `WriteTxn::put_pod`).
    ValueLayout {
        /// The value's length.
        len: usize,
        /// Whether the value starts at a multiple of `align`.
        aligned: bool,
        /// The type's size.
        size: usize,
        /// The type's alignment.
        align: usize,
    },
    /// A shared-memory store's name is not one `shm_open` can take
    /// ([`Options::open_shm`](crate::Options::open_shm)).
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "{}: cannot {op}: {source}", path.display())
            }
            Error::NotAStore { path, reason } => {
                write!(f, "{}: not a mapkv store ({reason})", path.display())
            }
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{}: format version {found} is not supported (this build reads version {supported})",
                path.display()
            ),
            Error::Corrupted { path, offset, what } => {
                write!(f, "{}: corrupted at offset {offset}: {what}", path.display())
            }
            Error::EmptyKey => write!(f, "empty key (keys are 1 byte to 64 KiB)"),
            Error::KeyTooLarge { len, max } => {
                write!(f, "key of {len} bytes is over the limit of {max} bytes")
            }
            Error::ValueTooLarge { len, max } => {
                write!(f, "value of {len} bytes is over the limit of {max} bytes")
            }
            Error::ReadOnly { path } => write!(f, "{}: store is open read-only", path.display()),
            Error::WriterBusy { path } => write!(
                f,
                "{}: another writer holds the store's write lock",
                path.display()
            ),
            Error::Poisoned { path } => write!(
                f,
                "{}: an earlier flush failed; reopen the store before writing again",
                path.display()
            ),
            Error::NeedsRecovery { path } => write!(
                f,
                "{}: the store was not closed cleanly; open it read-write once to recover it",
                path.display()
            ),
            Error::StoreFull { path } => {
                write!(f, "{}: store is full (the 4 TiB file limit)", path.display())
            }
            Error::TooManyReaders { path, max } => write!(
                f,
                "{}: the reader table is full ({max} handles already hold snapshots)",
                path.display()
            ),
            Error::HistoryReclaimed {
                path,
                requested,
                oldest,
            } => write!(
                f,
                "{}: changes after commit {requested} were reclaimed; the oldest available start is {oldest}",
                path.display()
            ),
            Error::Unsupported { what } => write!(f, "{what} is not supported yet"),
            Error::Codec { what } => write!(f, "codec: {what}"),
            Error::ValueLayout {
                len,
                aligned,
                size,
                align,
            } => write!(
                f,
                "a value of {len} bytes{} cannot be read in place as a type of {size} bytes \
                 aligned to {align} (write it with put_pod)",
                if *aligned { "" } else { " at a misaligned address" }
            ),
            Error::InvalidName { name, reason } => {
                write!(f, "shared-memory store name {name:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// For callers' own `?` on I/O results. The crate never uses it: every
/// I/O error it returns names the file and the operation (this one has an
/// empty path).
impl From<io::Error> for Error {
    fn from(source: io::Error) -> Error {
        Error::Io {
            path: PathBuf::new(),
            op: "complete an I/O operation".into(),
            source,
        }
    }
}

impl Error {
    /// The underlying OS error number, for `Io` errors.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether this error says the data on disk is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupted { .. })
    }
}

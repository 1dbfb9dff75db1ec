//! `kvctl`: the command line for mapkv stores. This file parses and
//! dispatches; each subcommand lives in its own file and uses only the
//! public API.

mod del;
mod get;
mod init;
mod put;
mod stats;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status: success.
const EXIT_OK: u8 = 0;
/// Exit status: key not found, or `verify` found problems.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status: `--no-wait` and another writer holds the store.
const EXIT_LOCKED: u8 = 3;
/// Exit status: the store is corrupted (or not a store).
const EXIT_CORRUPT: u8 = 4;
/// Exit status: any other error (I/O, limits, ...).
const EXIT_ERROR: u8 = 5;

/// Inspect and change a mapkv store.
#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    about,
    after_help = "\
Exit status: 0 ok; 1 key not found or verify found problems; 2 usage error;
3 store locked by another writer (with --no-wait); 4 corrupt store or not a
store; 5 other errors.

Example:
  kvctl --db demo.kv put greeting hello
  kvctl --db demo.kv get greeting"
)]
struct Cli {
    /// The store file.
    #[arg(long, env = "MAPKV_DB", global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Fail (exit 3) instead of waiting when another writer holds the store.
    #[arg(long, global = true)]
    no_wait: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(init::Args),
    Put(put::Args),
    Get(get::Args),
    Del(del::Args),
    Stats(stats::Args),
    Verify(verify::Args),
}

/// What a subcommand returns: an exit status, or an error to report.
type Outcome = Result<u8, mapkv::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(db) = cli.db else {
        eprintln!("kvctl: no store given: use --db PATH or set MAPKV_DB");
        return ExitCode::from(2);
    };
    let wait = !cli.no_wait;
    let outcome = match cli.cmd {
        Command::Init(a) => init::run(&db, a),
        Command::Put(a) => put::run(&db, a, wait),
        Command::Get(a) => get::run(&db, a),
        Command::Del(a) => del::run(&db, a, wait),
        Command::Stats(a) => stats::run(&db, a),
        Command::Verify(a) => verify::run(&db, a),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kvctl: {e}");
            ExitCode::from(match e {
                mapkv::Error::Corrupted { .. }
                | mapkv::Error::NotAStore { .. }
                | mapkv::Error::UnsupportedVersion { .. } => EXIT_CORRUPT,
                mapkv::Error::WriterBusy { .. } => EXIT_LOCKED,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// Opens an existing store (commands other than `init` never create one).
fn open_existing(db: &std::path::Path) -> mapkv::Result<mapkv::Store> {
    mapkv::Options::new().create(false).open(db)
}

/// Begins a write transaction, waiting for the lock or not.
fn begin_write(store: &mapkv::Store, wait: bool) -> mapkv::Result<mapkv::WriteTxn<'_>> {
    if wait {
        store.begin_write()
    } else {
        store.try_write()
    }
}

/// Opens an existing store for reading: read-write if this process may
/// write the file (so that a store left by a crash is recovered), else
/// read-only.
fn open_for_reading(db: &std::path::Path) -> mapkv::Result<mapkv::Store> {
    match open_existing(db) {
        Err(mapkv::Error::Io { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::EACCES | libc::EROFS | libc::EPERM)
            ) =>
        {
            mapkv::Options::new().read_only(true).open(db)
        }
        r => r,
    }
}

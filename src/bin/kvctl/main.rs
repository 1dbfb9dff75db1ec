//! `kvctl`: the command line for mapkv stores. This file parses and
//! dispatches; each subcommand lives in its own file and uses only the
//! public API.

mod backup;
mod bench;
mod codec;
mod compact;
mod del;
mod dryrun;
mod dump;
mod get;
mod init;
mod inspect;
mod list;
mod load;
mod mdb;
mod put;
mod readers;
mod salvage;
mod stats;
#[cfg(feature = "testing")]
mod torture;
mod verify;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use codec::Encoding;

/// Exit status: success.
const EXIT_OK: u8 = 0;
/// Exit status: key not found, or `verify` found problems.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status: bad usage (flags, arguments, input that does not parse).
const EXIT_USAGE: u8 = 2;
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
    /// A store in POSIX shared memory (`/dev/shm/NAME`) instead of a file:
    /// works wherever --db does.
    #[arg(
        long,
        env = "MAPKV_SHM",
        global = true,
        value_name = "NAME",
        conflicts_with = "db"
    )]
    shm: Option<String>,
    /// For put, del, load and compact: do the work in a private view of the
    /// store and report what would change; the store is not written.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Fail (exit 3) instead of waiting when another writer holds the store.
    #[arg(long, global = true)]
    no_wait: bool,
    /// Keys and values on the command line and in text output are hex.
    #[arg(long, global = true, conflicts_with = "base64")]
    hex: bool,
    /// Keys and values on the command line and in text output are base64.
    #[arg(long, global = true)]
    base64: bool,
    /// Output for scripts: one JSON document (or one JSON object per line
    /// for `keys`, `scan` and `watch`); the fields are in docs/kvctl.md.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(init::Args),
    Put(put::Args),
    Get(get::Args),
    Del(del::Args),
    Keys(list::KeysArgs),
    Scan(list::ScanArgs),
    Stats(stats::Args),
    Verify(verify::Args),
    Dump(dump::Args),
    Load(load::Args),
    Watch(watch::Args),
    Readers(readers::Args),
    // Only with the `testing` feature.
    #[cfg(feature = "testing")]
    Torture(torture::Args),
    Bench(bench::Args),
    Inspect(inspect::Args),
    Salvage(salvage::Args),
    Compact(compact::Args),
    Backup(backup::Args),
    Completions(CompletionsArgs),
}

/// Print a shell completion script to standard output.
///
/// Example: kvctl completions bash > /etc/bash_completion.d/kvctl
#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// What every subcommand gets: the store and the global flags.
pub struct Ctx {
    /// The store's file (for --shm, its file in /dev/shm).
    pub db: PathBuf,
    /// --shm: the store's shared-memory name.
    pub shm: Option<String>,
    /// --dry-run: changes go to a private view.
    pub dry_run: bool,
    pub wait: bool,
    pub enc: Encoding,
    pub json: bool,
}

impl Ctx {
    /// Opens the store with `opts` (a file or a shared-memory object).
    fn open_with(&self, opts: mapkv::Options) -> mapkv::Result<mapkv::Store> {
        match &self.shm {
            Some(name) => opts.open_shm(name),
            None => opts.open(&self.db),
        }
    }

    /// Opens the store to change it, creating it if `create` (`init`,
    /// `put`, `load`); with --dry-run, a private view of it instead, which
    /// needs the store to exist.
    pub fn open_for_writing(&self, create: bool) -> mapkv::Result<mapkv::Store> {
        if self.dry_run {
            return self.open_with(mapkv::Options::new().private(true));
        }
        self.open_with(mapkv::Options::new().create(create))
    }

    /// Opens an existing store (only `init`, `put` and `load` create one).
    pub fn open_existing(&self) -> mapkv::Result<mapkv::Store> {
        self.open_for_writing(false)
    }

    /// Opens an existing store for reading: read-write if this process may
    /// write the file (so that a store left by a crash is recovered), else
    /// read-only.
    pub fn open_for_reading(&self) -> mapkv::Result<mapkv::Store> {
        match self.open_existing() {
            Err(mapkv::Error::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM)
                ) =>
            {
                self.open_with(mapkv::Options::new().read_only(true))
            }
            r => r,
        }
    }

    /// Decodes a key given as an argument (and checks it is a valid key).
    pub fn key(&self, arg: &str) -> Result<Vec<u8>, Fail> {
        self.enc.decode("key", arg).map_err(Fail::Usage)
    }
}

/// Why a subcommand failed.
pub enum Fail {
    /// The store said no.
    Store(mapkv::Error),
    /// The command line or its input does not make sense (exit 2).
    Usage(String),
    /// Anything else, already phrased (exit 5).
    Other(String),
}

impl From<mapkv::Error> for Fail {
    fn from(e: mapkv::Error) -> Fail {
        Fail::Store(e)
    }
}

/// An I/O failure on something other than the store, named.
pub fn io_fail(what: &str, e: std::io::Error) -> Fail {
    Fail::Other(format!("{what}: {e}"))
}

/// What a subcommand returns: an exit status, or why it failed.
type Outcome = Result<u8, Fail>;

fn main() -> ExitCode {
    // `kvctl torture` runs kvctl itself as the writer it kills.
    #[cfg(feature = "testing")]
    if let Some(result) = mapkv::torture::child_from_env() {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kvctl: torture child: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        };
    }
    let cli = Cli::parse();
    if let Command::Completions(a) = &cli.cmd {
        let mut script = Vec::new();
        clap_complete::generate(a.shell, &mut Cli::command(), "kvctl", &mut script);
        // A closed pipe (`kvctl completions bash | head`) is not an error.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return ExitCode::SUCCESS;
    }
    // Commands that need no store.
    let dry_runs = matches!(
        cli.cmd,
        Command::Put(_) | Command::Del(_) | Command::Load(_) | Command::Compact(_)
    );
    if cli.dry_run && !dry_runs {
        eprintln!("kvctl: --dry-run applies to put, del, load and compact");
        return ExitCode::from(EXIT_USAGE);
    }
    let shm_file = cli
        .shm
        .as_ref()
        .map(|name| Path::new("/dev/shm").join(name.trim_start_matches('/')));
    let db = match (&cli.cmd, cli.db.or(shm_file)) {
        #[cfg(feature = "testing")]
        (Command::Torture(_), db) => db.unwrap_or_default(),
        (Command::Bench(_), db) => db.unwrap_or_default(),
        (_, Some(db)) => db,
        (_, None) => {
            eprintln!("kvctl: no store given: use --db PATH or --shm NAME (or set MAPKV_DB)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let ctx = Ctx {
        db,
        shm: cli.shm,
        dry_run: cli.dry_run,
        wait: !cli.no_wait,
        enc: if cli.hex {
            Encoding::Hex
        } else if cli.base64 {
            Encoding::Base64
        } else {
            Encoding::Utf8
        },
        json: cli.json,
    };
    let outcome = match cli.cmd {
        Command::Init(a) => init::run(&ctx, a),
        Command::Put(a) => put::run(&ctx, a),
        Command::Get(a) => get::run(&ctx, a),
        Command::Del(a) => del::run(&ctx, a),
        Command::Keys(a) => list::keys(&ctx, a),
        Command::Scan(a) => list::scan(&ctx, a),
        Command::Stats(a) => stats::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Dump(a) => dump::run(&ctx, a),
        Command::Load(a) => load::run(&ctx, a),
        Command::Watch(a) => watch::run(&ctx, a),
        Command::Readers(a) => readers::run(&ctx, a),
        #[cfg(feature = "testing")]
        Command::Torture(a) => torture::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Salvage(a) => salvage::run(&ctx, a),
        Command::Compact(a) => compact::run(&ctx, a),
        Command::Backup(a) => backup::run(&ctx, a),
        Command::Completions(_) => unreachable!("handled above"),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(Fail::Usage(msg)) => {
            eprintln!("kvctl: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Fail::Other(msg)) => {
            eprintln!("kvctl: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Fail::Store(e)) => {
            // One rule: `init`, `put` and `load` create a store; every
            // other command needs one and says so.
            let hint = match &e {
                mapkv::Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    " (no store there: `kvctl init`, `put` or `load` creates one)"
                }
                _ => "",
            };
            eprintln!("kvctl: {e}{hint}");
            ExitCode::from(match e {
                mapkv::Error::Corrupted { .. }
                | mapkv::Error::NotAStore { .. }
                | mapkv::Error::UnsupportedVersion { .. } => EXIT_CORRUPT,
                mapkv::Error::WriterBusy { .. } => EXIT_LOCKED,
                mapkv::Error::EmptyKey
                | mapkv::Error::KeyTooLarge { .. }
                | mapkv::Error::ValueTooLarge { .. } => EXIT_USAGE,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// Begins a write transaction, waiting for the lock or not.
fn begin_write(store: &mapkv::Store, wait: bool) -> mapkv::Result<mapkv::WriteTxn<'_>> {
    if wait {
        store.begin_write()
    } else {
        store.try_write()
    }
}

/// Line output to standard output that stops quietly when the reader
/// goes away (`kvctl keys | head`).
pub struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl Out {
    pub fn stdout() -> Out {
        Out {
            w: std::io::BufWriter::new(std::io::stdout().lock()),
        }
    }

    /// Writes one line; `false` once the output is closed.
    pub fn line(&mut self, line: &str) -> bool {
        use std::io::Write;
        writeln!(self.w, "{line}").is_ok()
    }

    /// Writes one line and flushes it (for output that trickles: `watch`).
    pub fn line_now(&mut self, line: &str) -> bool {
        use std::io::Write;
        self.line(line) && self.w.flush().is_ok()
    }
}

/// A progress bar on standard error, drawn only when it is a terminal
/// (`len` 0: a counter with no end).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = if len == 0 {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message(what.to_string());
    bar
}

/// A new, empty directory `kvctl-NAME-PID` under `base` for a scratch
/// store (`bench`, `torture`); the caller removes it.
pub fn scratch_dir(base: &Path, name: &str) -> Result<PathBuf, Fail> {
    let dir = base.join(format!("kvctl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io_fail(&dir.display().to_string(), e))?;
    Ok(dir)
}

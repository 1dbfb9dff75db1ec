//! `kvctl put`: set a key.

use std::io::Read;
use std::path::PathBuf;

use crate::{begin_write, io_fail, Ctx, Fail, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Set KEY to VALUE (from the argument, `--file`, or standard input with `-`).
/// Creates the store if it does not exist, as `load` does.
///
/// With --if-absent an existing key is left alone (exit 1, "exists" on
/// standard error). With --hex or --base64 KEY and VALUE are in that encoding
/// (a value read from a file or standard input is always raw bytes).
///
/// With --dry-run nothing is written: kvctl says whether the key would be
/// added or changed.
///
/// Examples:
///   kvctl --db data.kv put greeting hello
///   kvctl --db data.kv put photo --file cat.jpg
///   kvctl --db data.kv --hex put 00ff 6869
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The key.
    key: String,
    /// The value; `-` reads standard input.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Do nothing (exit 1) if the key already has a value.
    #[arg(long)]
    if_absent: bool,
    /// Create the store if it does not exist: the default now, kept so
    /// that scripts passing it still work.
    #[arg(long, hide = true)]
    create: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let key = ctx.key(&a.key)?;
    let value = match (&a.value, &a.file) {
        (_, Some(f)) => std::fs::read(f).map_err(|e| io_fail(&f.display().to_string(), e))?,
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| io_fail("standard input", e))?;
            buf
        }
        (Some(v), None) => ctx.enc.decode("value", v).map_err(Fail::Usage)?,
        (None, None) => unreachable!("clap requires a value or --file"),
    };
    let _ = a.create;
    let store = ctx.open_for_writing(true)?;
    let mut tx = begin_write(&store, ctx.wait)?;
    if a.if_absent && tx.get(&key)?.is_some() {
        drop(tx);
        eprintln!("kvctl: key exists, left as it is: {}", ctx.enc.text(&key));
        return Ok(EXIT_NOT_FOUND);
    }
    if ctx.dry_run {
        let before = store.stats()?;
        let mut tally = crate::dryrun::Tally::default();
        tally.put(&tx, &key, &value)?;
        tx.put(&key, &value)?;
        tx.commit()?;
        tally.report(ctx, &before, &store.stats()?);
        return Ok(EXIT_OK);
    }
    tx.put(&key, &value)?;
    tx.commit()?;
    store.close()?;
    Ok(EXIT_OK)
}

//! `kvctl load`: keys and values from a dump into a store.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use serde_json::Value;

use crate::codec::get_bytes;
use crate::dump::Format;
use crate::{begin_write, io_fail, mdb, Ctx, Fail, Outcome, EXIT_OK};

/// Put every key and value of a dump into the store (created if missing).
///
/// Reads what `kvctl dump` writes (jsonl) or LMDB's mdb_dump text (--format
/// mdb; the main database only, both the hex and the -p printable form).
/// Commits every --batch entries, so a failure part-way leaves the
/// batches before it committed; with --atomic everything is one
/// transaction: all or nothing. With --dry-run nothing is written: the
/// load runs in a private view and kvctl says how many keys it would add,
/// change and leave as they are.
///
/// Examples:
///   kvctl --db new.kv load backup.jsonl
///   mdb_dump -n old.lmdb | kvctl --db new.kv load --format mdb -
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The dump: a file, or `-` for standard input.
    #[arg(default_value = "-")]
    input: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Entries per commit.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// One transaction for the whole load.
    #[arg(long)]
    atomic: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let (input, name): (Box<dyn Read>, String) = if a.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), "standard input".into())
    } else {
        let f = std::fs::File::open(&a.input)
            .map_err(|e| io_fail(&a.input.display().to_string(), e))?;
        (Box::new(f), a.input.display().to_string())
    };
    let input = BufReader::new(input);
    let store = ctx.open_for_writing(true)?;
    let before = ctx.dry_run.then(|| store.stats()).transpose()?;
    let mut tally = crate::dryrun::Tally::default();
    let mut tx = Some(begin_write(&store, ctx.wait)?);
    let (mut loaded, mut in_batch) = (0u64, 0u64);
    let bar = crate::progress(0, "load");
    let mut put = |k: Vec<u8>, v: Vec<u8>| -> Result<(), Fail> {
        let t = tx.as_mut().expect("a transaction is open");
        if ctx.dry_run {
            tally.put(t, &k, &v)?;
        }
        t.put(&k, &v)?;
        loaded += 1;
        in_batch += 1;
        bar.inc(1);
        if !a.atomic && in_batch >= a.batch {
            tx.take().expect("open").commit()?;
            tx = Some(begin_write(&store, ctx.wait)?);
            in_batch = 0;
        }
        Ok(())
    };
    // A store error inside the format readers' callbacks comes back out
    // as itself, not as text.
    let mut failed: Option<Fail> = None;
    let mut each = |k: Vec<u8>, v: Vec<u8>| {
        put(k, v).map_err(|e| {
            failed = Some(e);
            String::new()
        })
    };
    let parsed = match a.format {
        Format::Jsonl => read_jsonl(input, &mut each),
        Format::Mdb => mdb::read(input, &mut each),
    };
    bar.finish_and_clear();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Err(msg) = parsed {
        // Nothing of an --atomic load is committed (dropping aborts).
        return Err(Fail::Usage(format!("{name}: {msg}")));
    }
    if let Some(t) = tx.take() {
        t.commit()?;
    }
    drop(tx);
    if let Some(before) = before {
        tally.report(ctx, &before, &store.stats()?);
        return Ok(EXIT_OK);
    }
    store.close()?;
    eprintln!("kvctl: loaded {loaded} entries");
    Ok(EXIT_OK)
}

/// Reads what `dump --format jsonl` writes; errors name the line.
fn read_jsonl(
    input: impl BufRead,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| format!("line {n}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("line {n}: not JSON: {e}"))?;
        let Value::Object(obj) = v else {
            return Err(format!("line {n}: expected a JSON object"));
        };
        let key = get_bytes(&obj, "key")
            .map_err(|e| format!("line {n}: {e}"))?
            .ok_or_else(|| format!("line {n}: no \"key\" or \"key_base64\""))?;
        let value = get_bytes(&obj, "value")
            .map_err(|e| format!("line {n}: {e}"))?
            .ok_or_else(|| format!("line {n}: no \"value\" or \"value_base64\""))?;
        each(key, value)?;
    }
    Ok(())
}

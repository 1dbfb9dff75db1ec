//! `kvctl keys` and `kvctl scan`: list keys (and values) of one snapshot.

use serde_json::{Map, Value};

use crate::codec::put_bytes;
use crate::{Ctx, Outcome, EXIT_OK};

/// List keys, one per line, in byte order.
///
/// Keys are printed in the chosen encoding; in the default (UTF-8) one,
/// what is not printable is escaped (\n, \t, \\, \xNN). With --json each
/// line is {"key":…} (or {"key_base64":…}).
///
/// Examples:
///   kvctl --db data.kv keys --prefix user:
///   kvctl --db data.kv --hex keys --limit 10
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct KeysArgs {
    #[command(flatten)]
    filter: Filter,
}

/// List keys and values, one pair per line (KEY, a tab, VALUE), in key order.
///
/// Encoded as for `keys`; with --json each line is {"key":…,"value":…}.
///
/// Example: kvctl --db data.kv scan --prefix user: --limit 20
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ScanArgs {
    #[command(flatten)]
    filter: Filter,
}

#[derive(clap::Args)]
struct Filter {
    /// Only keys that start with this (in the chosen encoding).
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<usize>,
}

pub fn keys(ctx: &Ctx, a: KeysArgs) -> Outcome {
    list(ctx, &a.filter, false)
}

pub fn scan(ctx: &Ctx, a: ScanArgs) -> Outcome {
    list(ctx, &a.filter, true)
}

/// The entries of `snap` whose key starts with `prefix`, in key order
/// (the snapshot's own order is the hash table's).
pub fn sorted_entries<'t>(
    snap: &'t mapkv::ReadTxn<'_>,
    prefix: &[u8],
) -> mapkv::Result<Vec<(&'t [u8], &'t [u8])>> {
    let mut entries = Vec::new();
    for kv in snap.iter() {
        let (k, v) = kv?;
        if k.starts_with(prefix) {
            entries.push((k, v));
        }
    }
    entries.sort_unstable_by_key(|&(k, _)| k);
    Ok(entries)
}

fn list(ctx: &Ctx, f: &Filter, values: bool) -> Outcome {
    let prefix = match &f.prefix {
        Some(p) => ctx.key(p)?,
        None => Vec::new(),
    };
    let store = ctx.open_for_reading()?;
    let snap = store.begin_read()?;
    let mut entries = sorted_entries(&snap, &prefix)?;
    entries.truncate(f.limit.unwrap_or(usize::MAX));
    let mut out = crate::Out::stdout();
    for (k, v) in entries {
        let line = if ctx.json {
            let mut obj = Map::new();
            put_bytes(&mut obj, "key", k);
            if values {
                put_bytes(&mut obj, "value", v);
            }
            Value::Object(obj).to_string()
        } else if values {
            format!("{}\t{}", ctx.enc.text(k), ctx.enc.text(v))
        } else {
            ctx.enc.text(k)
        };
        if !out.line(&line) {
            break;
        }
    }
    Ok(EXIT_OK)
}

//! `kvctl get`: print a value.

use std::io::Write;

use serde_json::{Map, Value};

use crate::codec::{put_bytes, Encoding};
use crate::{Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Print the value of KEY to standard output; exit 1 if absent.
///
/// The value is written as raw bytes (no newline added), or with --hex or
/// --base64 in that encoding (with a newline), or with --json as
/// {"key":…,"value":…,"seq":N} (binary keys and values as key_base64 and
/// value_base64).
///
/// Examples:
///   kvctl --db data.kv get greeting
///   kvctl --db data.kv --hex get 00ff
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The key.
    key: String,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let key = ctx.key(&a.key)?;
    let store = ctx.open_for_reading()?;
    let snap = store.begin_read()?;
    let Some(v) = snap.get(&key)? else {
        eprintln!("kvctl: key not found: {}", ctx.enc.text(&key));
        return Ok(EXIT_NOT_FOUND);
    };
    let mut out = std::io::stdout().lock();
    let written = if ctx.json {
        let mut obj = Map::new();
        put_bytes(&mut obj, "key", &key);
        put_bytes(&mut obj, "value", v);
        obj.insert("seq".into(), snap.seq().into());
        writeln!(out, "{}", Value::Object(obj))
    } else if ctx.enc == Encoding::Utf8 {
        out.write_all(v)
    } else {
        writeln!(out, "{}", ctx.enc.text(v))
    };
    // A closed pipe (`kvctl get k | head -c1`) is not an error worth a message.
    let _ = written.and_then(|()| out.flush());
    Ok(EXIT_OK)
}

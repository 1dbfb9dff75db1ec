//! `kvctl watch`: print changes as they are committed, by any process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::codec::put_bytes;
use crate::{Ctx, Fail, Out, Outcome, EXIT_OK};

/// Print each change as it is committed (by this or any other process),
/// one line per key a commit put or deleted:
///
///   SEQ put KEY VALUE
///   SEQ del KEY
///
/// (--json: {"seq":N,"op":"put"|"del","key":…,"value":…}). Sleeps until a
/// commit wakes it (no polling of the store); Ctrl-C ends it (exit 0).
///
/// Examples:
///   kvctl --db data.kv watch
///   kvctl --db data.kv watch --prefix user: --json
///   kvctl --db data.kv watch greeting --count 1
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this key.
    #[arg(conflicts_with = "prefix")]
    key: Option<String>,
    /// Only keys that start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Start after this commit instead of the newest (replays history).
    #[arg(long)]
    from: Option<u64>,
    /// Exit after printing this many changes.
    #[arg(long)]
    count: Option<u64>,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let exact = a.key.as_deref().map(|k| ctx.key(k)).transpose()?;
    let prefix = a.prefix.as_deref().map(|p| ctx.key(p)).transpose()?;
    let wanted = |k: &[u8]| match (&exact, &prefix) {
        (Some(e), _) => k == e.as_slice(),
        (None, Some(p)) => k.starts_with(p),
        (None, None) => true,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| Fail::Other(format!("cannot handle Ctrl-C: {e}")))?;
    let store = ctx.open_for_reading()?;
    let mut seen = match a.from {
        Some(s) => s,
        None => store.begin_read()?.seq(),
    };
    let mut out = Out::stdout();
    let mut printed = 0u64;
    while !stop.load(Ordering::SeqCst) && a.count.is_none_or(|c| printed < c) {
        // Short waits so that Ctrl-C is noticed; a commit ends them at once.
        let newest = store.wait_for_commit(seen, Some(Duration::from_millis(200)))?;
        if newest <= seen {
            continue;
        }
        let snap = store.begin_read()?;
        for change in snap.changes_since(seen)? {
            let (seq, key, value) = change?;
            if !wanted(key) {
                continue;
            }
            let line = if ctx.json {
                let mut obj = Map::new();
                obj.insert("seq".into(), seq.into());
                obj.insert(
                    "op".into(),
                    if value.is_some() { "put" } else { "del" }.into(),
                );
                put_bytes(&mut obj, "key", key);
                if let Some(v) = value {
                    put_bytes(&mut obj, "value", v);
                }
                Value::Object(obj).to_string()
            } else {
                match value {
                    Some(v) => format!("{seq} put {} {}", ctx.enc.text(key), ctx.enc.text(v)),
                    None => format!("{seq} del {}", ctx.enc.text(key)),
                }
            };
            if !out.line_now(&line) {
                return Ok(EXIT_OK); // the reader went away
            }
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                return Ok(EXIT_OK);
            }
        }
        seen = snap.seq();
    }
    Ok(EXIT_OK)
}

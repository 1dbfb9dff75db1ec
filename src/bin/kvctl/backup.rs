//! `kvctl backup`: a consistent, compacted copy while writers go on.

use std::path::PathBuf;

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_OK};

/// Write the newest snapshot to a new store file DEST (which must not
/// exist): one version of every key, written under a temporary name and
/// renamed into place once durable. Other processes go on reading and
/// writing meanwhile. The copy opens as a normal store.
///
/// Example: kvctl --db data.kv backup /backups/data-2026-11-22.kv
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The new store file.
    dest: PathBuf,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let store = ctx.open_for_reading()?;
    let bar = crate::progress(store.stats()?.keys, "backup");
    let r = store.backup_to_with_progress(&a.dest, |done, _| bar.set_position(done));
    bar.finish_and_clear();
    let r = r?;
    if ctx.json {
        let v = json!({ "seq": r.seq, "keys": r.keys, "file_bytes": r.file_bytes, "dest": a.dest });
        println!("{v}");
    } else {
        println!(
            "copied commit {} ({} keys) to {} ({} bytes)",
            r.seq,
            r.keys,
            a.dest.display(),
            r.file_bytes
        );
    }
    Ok(EXIT_OK)
}
